//! The agent's metrics, served at `GET /metrics` on its local API in the
//! Prometheus text format. Names follow Triton's
//! (`nv_inference_request_success`, `nv_inference_request_failure`) and
//! KServe's (`request_predict_seconds`) with an `edgeml_` prefix, labelled
//! by model name and version.

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
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
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
            // 100 µs to about 3.3 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
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
        self.serving.clear();
        self.serving
            .get_or_create(&ModelLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .set(1);
    }

    pub(crate) fn polled(&self, outcome: &'static str) {
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
