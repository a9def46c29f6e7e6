//! The agent's metrics, served at `GET /metrics` on its local API in the
//! Prometheus text format. Names follow Triton's
//! (`nv_inference_request_success`, `nv_inference_request_failure`) and
//! KServe's (`request_predict_seconds`) with an `edgeml_` prefix, labelled
//! by model name and version.
//!
//! With OTLP export on (the `otlp` feature and `[otlp]`), the same metrics,
//! under the same names, are also recorded as OpenTelemetry instruments.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    model: String,
    version: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    outcome: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    success: Family<ModelLabels, Counter>,
    failure: Family<FailureLabels, Counter>,
    latency: Family<ModelLabels, Histogram>,
    serving: Family<ModelLabels, Gauge>,
    polls: Family<PollLabels, Counter>,
    #[cfg(feature = "otlp")]
    otel: Option<Otel>,
}

/// The same metrics as OpenTelemetry instruments.
#[cfg(feature = "otlp")]
struct Otel {
    success: opentelemetry::metrics::Counter<u64>,
    failure: opentelemetry::metrics::Counter<u64>,
    latency: opentelemetry::metrics::Histogram<f64>,
    serving: opentelemetry::metrics::Gauge<i64>,
    polls: opentelemetry::metrics::Counter<u64>,
    /// The version the serving gauge last set to 1.
    served: std::sync::Mutex<Option<(String, String)>>,
}

#[cfg(feature = "otlp")]
impl Otel {
    fn new(otlp: &edgeml_otlp::Otlp) -> Otel {
        let meter = otlp.meter();
        Otel {
            success: meter
                .u64_counter("edgeml_inference_request_success")
                .with_description("Inference requests that succeeded")
                .build(),
            failure: meter
                .u64_counter("edgeml_inference_request_failure")
                .with_description("Inference requests that failed, by error kind")
                .build(),
            latency: meter
                .f64_histogram("edgeml_request_predict_seconds")
                .with_description("Time to answer an inference request, successful or not")
                .with_unit("s")
                .with_boundaries(latency_buckets().collect())
                .build(),
            serving: meter
                .i64_gauge("edgeml_model_serving")
                .with_description("1 for the model version being served")
                .build(),
            polls: meter
                .u64_counter("edgeml_agent_polls")
                .with_description("Polls of the fleet server, by outcome")
                .build(),
            served: std::sync::Mutex::new(None),
        }
    }
}

#[cfg(feature = "otlp")]
fn model_attributes(model: &str, version: &str) -> [edgeml_otlp::Attribute; 2] {
    [
        edgeml_otlp::Attribute::new("model", model.to_string()),
        edgeml_otlp::Attribute::new("version", version.to_string()),
    ]
}

/// Inference latency buckets: 100 µs to about 3.3 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 16)
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(export: &crate::Export) -> Metrics {
        #[cfg(not(feature = "otlp"))]
        let _ = export;
        let mut registry = Registry::with_prefix("edgeml");
        let success = Family::<ModelLabels, Counter>::default();
        registry.register(
            "inference_request_success",
            "Inference requests that succeeded (Triton: nv_inference_request_success)",
            success.clone(),
        );
        let failure = Family::<FailureLabels, Counter>::default();
        registry.register(
            "inference_request_failure",
            "Inference requests that failed, by error kind (Triton: nv_inference_request_failure)",
            failure.clone(),
        );
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "request_predict_seconds",
            "Time to answer an inference request, successful or not (KServe: request_predict_seconds)",
            latency.clone(),
        );
        let serving = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "model_serving",
            "1 for the model version being served",
            serving.clone(),
        );
        let polls = Family::<PollLabels, Counter>::default();
        registry.register(
            "agent_polls",
            "Polls of the fleet server, by outcome",
            polls.clone(),
        );
        Metrics {
            registry,
            success,
            failure,
            latency,
            serving,
            polls,
            #[cfg(feature = "otlp")]
            otel: export.otlp.as_ref().map(Otel::new),
        }
    }

    /// An answered request: `Ok` or the error kind's name.
    pub(crate) fn predicted(
        &self,
        model: &str,
        version: &str,
        took: Duration,
        outcome: Result<(), &'static str>,
    ) {
        #[cfg(feature = "otlp")]
        if let Some(o) = &self.otel {
            let attrs = model_attributes(model, version);
            o.latency.record(took.as_secs_f64(), &attrs);
            match outcome {
                Ok(()) => o.success.add(1, &attrs),
                Err(reason) => {
                    let [m, v] = attrs;
                    o.failure
                        .add(1, &[m, v, edgeml_otlp::Attribute::new("reason", reason)]);
                }
            }
        }
        let labels = ModelLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        match outcome {
            Ok(()) => {
                self.success.get_or_create(&labels).inc();
            }
            Err(reason) => {
                self.failure
                    .get_or_create(&FailureLabels {
                        model: labels.model,
                        version: labels.version,
                        reason,
                    })
                    .inc();
            }
        }
    }

    /// A request refused before any model ran (nothing served, another
    /// model asked for).
    pub(crate) fn refused(&self, model: &str, version: &str, reason: &'static str) {
        #[cfg(feature = "otlp")]
        if let Some(o) = &self.otel {
            let [m, v] = model_attributes(model, version);
            o.failure
                .add(1, &[m, v, edgeml_otlp::Attribute::new("reason", reason)]);
        }
        self.failure
            .get_or_create(&FailureLabels {
                model: model.to_string(),
                version: version.to_string(),
                reason,
            })
            .inc();
    }

    /// The version now served (the previous one's gauge is dropped).
    pub(crate) fn serving(&self, model: &str, version: &str) {
        #[cfg(feature = "otlp")]
        if let Some(o) = &self.otel {
            let mut served = o.served.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((m, v)) = served.take() {
                o.serving.record(0, &model_attributes(&m, &v));
            }
            o.serving.record(1, &model_attributes(model, version));
            *served = Some((model.to_string(), version.to_string()));
        }
        self.serving.clear();
        self.serving
            .get_or_create(&ModelLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .set(1);
    }

    pub(crate) fn polled(&self, outcome: &'static str) {
        #[cfg(feature = "otlp")]
        if let Some(o) = &self.otel {
            o.polls
                .add(1, &[edgeml_otlp::Attribute::new("outcome", outcome)]);
        }
        self.polls.get_or_create(&PollLabels { outcome }).inc();
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// `Content-Type` of [`Metrics::encode`].
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
