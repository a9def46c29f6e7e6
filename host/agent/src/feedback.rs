//! Ground truth on the device: the agent remembers its recent predictions
//! (id, model version, top label, time) and, when an operator or a
//! downstream system gives the true label for one, ships an outcome record
//! through telemetry. The fleet server joins them into accuracy per model
//! version.

use edgeml_telemetry::wire::ModelRef;
use std::collections::{HashMap, VecDeque};

/// How many recent predictions the agent can take labels for by default.
pub const DEFAULT_REMEMBERED: usize = 10_000;

/// Why a label was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedbackError {
    /// The prediction is not one of the recent ones this agent made.
    #[error("prediction `{0}` is unknown here: it was not made by this agent, or it is older than the last {DEFAULT_REMEMBERED} predictions (labels for older ones go to the server's batch label endpoint)")]
    UnknownPrediction(String),
    /// The label is not one of the model's.
    #[error("`{label}` is not a label of {model}; its labels are {labels}")]
    UnknownLabel {
        /// The label given.
        label: String,
        /// The model.
        model: String,
        /// Its labels, comma-separated.
        labels: String,
    },
    /// A model without labels (a regression) takes a number as its truth.
    #[error(
        "`{label}` is not a number: {model} has no labels, so its true value must be a number"
    )]
    NotANumber {
        /// The label given.
        label: String,
        /// The model.
        model: String,
    },
    /// The label is empty or too long.
    #[error("a label must be 1 to 256 characters")]
    InvalidLabel,
    /// Telemetry is off: there is nowhere to send it.
    #[error("telemetry is off on this device ([runtime] telemetry in agent.toml): labels travel with it")]
    TelemetryOff,
    /// The telemetry spool refused it (disk full, ...).
    #[error("the label could not be queued: {0}")]
    Spool(String),
}

/// The model a prediction came from: one per loaded model, shared by the
/// predictions it made (nothing is copied per prediction but its label).
#[derive(Debug)]
pub(crate) struct Predictor {
    pub model: ModelRef,
    /// The model's labels (empty: any label is taken).
    pub labels: Vec<String>,
}

/// What the agent remembers of one prediction.
#[derive(Debug, Clone)]
pub(crate) struct Remembered {
    pub predictor: std::sync::Arc<Predictor>,
    pub predicted_ms: u64,
    pub prediction: Option<String>,
    pub score: Option<f32>,
    /// For a model without labels, its first output value.
    pub value: Option<f64>,
}

/// The last `capacity` predictions, by id.
pub(crate) struct Recent {
    capacity: usize,
    order: VecDeque<String>,
    by_id: HashMap<String, Remembered>,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            capacity,
            order: VecDeque::with_capacity(capacity.min(1024)),
            by_id: HashMap::new(),
        }
    }

    pub fn remember(&mut self, id: String, r: Remembered) {
        if self.capacity == 0 {
            return;
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.by_id.insert(id, r);
    }

    pub fn get(&self, id: &str) -> Option<&Remembered> {
        self.by_id.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u64) -> Remembered {
        Remembered {
            predictor: std::sync::Arc::new(Predictor {
                model: ModelRef {
                    name: "m".into(),
                    version: "1".into(),
                    digest: "d".into(),
                },
                labels: Vec::new(),
            }),
            predicted_ms: n,
            prediction: None,
            score: None,
            value: None,
        }
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut recent = Recent::new(2);
        for n in 0..3 {
            recent.remember(format!("p{n}"), r(n));
        }
        assert!(recent.get("p0").is_none());
        assert_eq!(recent.get("p2").map(|r| r.predicted_ms), Some(2));
        assert_eq!(recent.by_id.len(), 2);
    }
}
