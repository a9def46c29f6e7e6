//! Optional OTLP export of the agent's metrics and traces (`[otlp]` in
//! `agent.toml`, in agents built with the `otlp` feature).

use crate::{AgentConfig, Error};

/// The agent's OpenTelemetry export: nothing unless `[otlp]` is configured.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Export {
    #[cfg(feature = "otlp")]
    pub(crate) otlp: Option<edgeml_otlp::Otlp>,
}

impl Export {
    /// No export.
    pub fn none() -> Export {
        Export::default()
    }

    /// Start exporting as `config.otlp` says (nothing if it is absent). An
    /// agent built without the `otlp` feature refuses a config that asks
    /// for it, rather than ignore it.
    pub fn start(config: &AgentConfig) -> Result<Export, Error> {
        let Some(settings) = &config.otlp else {
            return Ok(Export::none());
        };
        #[cfg(feature = "otlp")]
        {
            let mut c = edgeml_otlp::OtlpConfig::new(&settings.endpoint, "edgeml-agent");
            c.instance = Some(config.device_id.clone());
            c.interval = settings.interval;
            let otlp = edgeml_otlp::Otlp::start(&c).map_err(|e| Error::Export(e.to_string()))?;
            Ok(Export { otlp: Some(otlp) })
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = settings;
            Err(Error::Config(
                "agent.toml has an [otlp] section, but this agent was built without OTLP export: \
                 build it with `--features otlp`, or remove [otlp] (the Prometheus /metrics \
                 endpoint is always there)"
                    .into(),
            ))
        }
    }

    /// A `tracing` layer exporting the agent's spans (polls, installs,
    /// predictions), if export is on.
    pub fn tracing_layer<S>(&self) -> Option<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        #[cfg(feature = "otlp")]
        {
            use tracing_subscriber::Layer as _;
            self.otlp.as_ref().map(|o| o.tracing_layer().boxed())
        }
        #[cfg(not(feature = "otlp"))]
        None
    }

    /// Push what is buffered and stop (call once the agent has stopped).
    pub fn shutdown(&self) -> Result<(), Error> {
        #[cfg(feature = "otlp")]
        if let Some(o) = &self.otlp {
            o.shutdown().map_err(|e| Error::Export(e.to_string()))?;
        }
        Ok(())
    }
}
