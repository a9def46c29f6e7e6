//! OpenTelemetry export for the edgeml server and agent: their metrics and
//! traces, pushed over OTLP/HTTP (protobuf) to a collector. Off unless an
//! endpoint is configured; the Prometheus `/metrics` endpoints are the
//! default and stay on.
//!
//! ```no_run
//! use edgeml_otlp::{Otlp, OtlpConfig};
//! # fn main() -> Result<(), edgeml_otlp::OtlpError> {
//! let otlp = Otlp::start(&OtlpConfig::new("http://127.0.0.1:4318", "edgeml-agent"))?;
//! let predictions = otlp.meter().u64_counter("edgeml_inference_request_success").build();
//! predictions.add(1, &[]);
//! otlp.shutdown()?; // flushes what is buffered
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::time::Duration;

pub use opentelemetry::metrics::Meter;
pub use opentelemetry::KeyValue as Attribute;

/// Where and how often to export.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`); `/v1/metrics`
    /// and `/v1/traces` are appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// `service.instance.id` (a device id, a replica id), if any.
    pub instance: Option<String>,
    /// How often metrics are pushed (default 60 s, the SDK's default).
    pub interval: Duration,
    /// How long one export may take before it is abandoned (default 10 s).
    pub timeout: Duration,
}

impl OtlpConfig {
    /// Defaults for a service exporting to `endpoint`.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            instance: None,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why export could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// The endpoint is not an `http://` URL.
    #[error("OTLP endpoint `{0}` must be an http:// URL of an OTLP/HTTP receiver (port 4318 by convention); this build has no TLS: export to a collector on the host or the local network")]
    Endpoint(String),
    /// An exporter could not be built.
    #[error("cannot build the OTLP {signal} exporter: {reason}")]
    Exporter {
        /// `metrics` or `traces`.
        signal: &'static str,
        /// The SDK's reason.
        reason: String,
    },
    /// Flushing or stopping failed (the collector unreachable, say).
    #[error("OTLP {signal} export did not shut down cleanly: {reason}")]
    Shutdown {
        /// `metrics` or `traces`.
        signal: &'static str,
        /// The SDK's reason.
        reason: String,
    },
}

/// Running export: a meter provider pushing every interval and a tracer
/// provider batching spans. Cheap to clone; [`Otlp::shutdown`] (or
/// dropping the last clone) flushes.
#[derive(Debug, Clone)]
pub struct Otlp {
    meters: SdkMeterProvider,
    tracers: SdkTracerProvider,
    service: String,
}

impl Otlp {
    /// Start exporting to `config.endpoint`. Nothing is sent until there is
    /// something to send; an unreachable collector costs a failed request
    /// per interval, never the caller's work.
    pub fn start(config: &OtlpConfig) -> Result<Otlp, OtlpError> {
        let base = config.endpoint.trim_end_matches('/');
        let valid = base
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', '@']));
        if !valid {
            return Err(OtlpError::Endpoint(config.endpoint.clone()));
        }
        let mut resource = Resource::builder().with_service_name(config.service_name.clone());
        if let Some(id) = &config.instance {
            resource = resource.with_attribute(KeyValue::new("service.instance.id", id.clone()));
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| OtlpError::Exporter {
                signal: "metrics",
                reason: e.to_string(),
            })?;
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| OtlpError::Exporter {
                signal: "traces",
                reason: e.to_string(),
            })?;
        let meters = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(metrics)
                    .with_interval(config.interval)
                    .build(),
            )
            .with_resource(resource.clone())
            .build();
        let tracers = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource)
            .build();
        Ok(Otlp {
            meters,
            tracers,
            service: config.service_name.clone(),
        })
    }

    /// The meter to create instruments with (named after the service).
    pub fn meter(&self) -> Meter {
        self.meters.meter_with_scope(
            InstrumentationScope::builder(self.service.clone())
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        )
    }

    /// A `tracing` layer that turns spans into OpenTelemetry spans for
    /// this export; add it to the program's subscriber.
    pub fn tracing_layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracers.tracer(self.service.clone()))
    }

    /// Push what is buffered now (metrics and finished spans).
    pub fn flush(&self) -> Result<(), OtlpError> {
        self.meters.force_flush().map_err(|e| OtlpError::Shutdown {
            signal: "metrics",
            reason: e.to_string(),
        })?;
        self.tracers.force_flush().map_err(|e| OtlpError::Shutdown {
            signal: "traces",
            reason: e.to_string(),
        })
    }

    /// Flush and stop both exporters.
    pub fn shutdown(&self) -> Result<(), OtlpError> {
        let traces = self.tracers.shutdown().map_err(|e| OtlpError::Shutdown {
            signal: "traces",
            reason: e.to_string(),
        });
        self.meters.shutdown().map_err(|e| OtlpError::Shutdown {
            signal: "metrics",
            reason: e.to_string(),
        })?;
        traces
    }
}

/// Make `span` a child of the caller's span named by W3C trace-context
/// headers (`traceparent`, `tracestate`), so a client's trace continues
/// here. Nothing happens without a valid `traceparent`, or when `span` is
/// not recorded (no export).
pub fn adopt_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some(traceparent) = traceparent else {
        return;
    };
    if span.is_disabled() {
        return;
    }
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only if the span is not an OpenTelemetry span: nothing to join.
        let _ = span.set_parent(cx);
    }
}
