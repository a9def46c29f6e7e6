//! The telemetry API: device batches (defined next to the code that writes
//! them, in `edgeml-telemetry`) and what the collector answers operators.

use edgeml_bundle::{Baseline, Dtype};
use edgeml_telemetry::drift::{DriftThresholds, FeatureDrift};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use edgeml_telemetry::wire::*;

/// The reply to `POST /v1/enrol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enrolled {
    /// The device id.
    pub device_id: String,
    /// Always true.
    pub enrolled: bool,
}

/// A device, as listed by `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    /// Device id.
    pub device_id: String,
    /// Hex public key.
    pub public_key: String,
    /// When it enrolled.
    pub enrolled_ms: u64,
    /// Its last accepted batch.
    pub last_seen_ms: Option<u64>,
    /// Records waiting in its spool at its last batch.
    pub pending_records: u64,
    /// Records its spool dropped because it was full (ever).
    pub dropped_records: u64,
    /// Models it reported, with the last time each was seen.
    pub models: Vec<DeviceModel>,
}

/// A model on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceModel {
    /// The model.
    #[serde(flatten)]
    pub model: ModelRef,
    /// Last report.
    pub last_seen_ms: u64,
}

/// A model version the fleet reported (`GET /v1/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelVersionInfo {
    /// The model.
    #[serde(flatten)]
    pub model: ModelRef,
    /// Monitoring feature names.
    pub monitoring_features: Vec<String>,
    /// Labels.
    pub labels: Vec<String>,
    /// Its baseline, if the bundle has one.
    pub baseline: Option<Baseline>,
    /// Devices that reported it.
    pub devices: u64,
    /// First report.
    pub first_seen_ms: u64,
}

/// Throughput, errors and latency of a model version over a time range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetStats {
    /// Windows merged.
    pub windows: u64,
    /// Devices reporting.
    pub devices: u64,
    /// Predictions.
    pub count: u64,
    /// Failed predictions.
    pub errors: u64,
    /// Failed predictions by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// `errors / count` (0 when there were none).
    pub error_rate: f64,
    /// Predictions per second over the covered time, fleet-wide.
    pub throughput_per_s: f64,
    /// Latency quantiles in microseconds (`p50`, `p90`, `p99`), absent without data.
    pub latency_us: BTreeMap<String, f64>,
    /// First window start (ms).
    pub from_ms: Option<u64>,
    /// Last window end (ms).
    pub to_ms: Option<u64>,
}

/// `GET /v1/models/{name}/versions/{version}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsResponse {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// The statistics.
    pub stats: FleetStats,
}

/// Drift of one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriftBucket {
    /// Bucket start (ms).
    pub start_ms: u64,
    /// Bucket end (ms, exclusive).
    pub end_ms: u64,
    /// Predictions in the bucket.
    pub count: u64,
    /// Devices contributing.
    pub devices: u64,
    /// Some feature is in the drift band.
    pub drifted: bool,
    /// Per feature.
    pub features: Vec<FeatureDrift>,
}

/// A feature in the drift or possible-drift band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriftAlert {
    /// Bucket start (ms).
    pub start_ms: u64,
    /// The feature's verdict and metrics.
    #[serde(flatten)]
    pub feature: FeatureDrift,
}

/// Drift over time for a model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriftReport {
    /// Reference examples behind the baseline.
    pub baseline_examples: u64,
    /// The bands used.
    pub thresholds: DriftThresholds,
    /// Bucket length (ms).
    pub bucket_ms: u64,
    /// Buckets with data, oldest first.
    pub buckets: Vec<DriftBucket>,
    /// Features at `possible_drift` or `drift`, oldest first.
    pub alerts: Vec<DriftAlert>,
}

/// `GET /v1/models/{name}/versions/{version}/drift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriftResponse {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// The report.
    pub drift: DriftReport,
}

/// One row of the `.npy` export's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NpyRow {
    /// Row in the array.
    pub row: usize,
    /// Sample record id.
    pub sample_id: String,
    /// Device.
    pub device_id: String,
    /// Model version.
    pub version: String,
    /// Bundle digest.
    pub digest: String,
    /// When (ms).
    pub at_ms: u64,
    /// Why it was kept.
    pub reason: String,
    /// The model's top label then.
    pub prediction: Option<String>,
    /// The prediction's id.
    #[serde(default)]
    pub prediction_id: Option<String>,
    /// The true label, when one was given (on the device or uploaded).
    #[serde(default)]
    pub label: Option<String>,
}

/// Metadata that goes with a `.npy` export (`GET /v1/samples?format=npy-metadata`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NpyMetadata {
    /// The input the array holds.
    pub input_name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Array shape (`[rows, ...sample shape]`).
    pub shape: Vec<u64>,
    /// One entry per row.
    pub rows: Vec<NpyRow>,
    /// Media samples left out (they are not tensors; export Parquet for them).
    pub skipped_media: usize,
}

/// Which windows or samples a query covers. Times are Unix milliseconds;
/// `from_ms` is inclusive and `to_ms` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Range {
    /// Window start or sample time at or after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// ... and before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// One device only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// `GET /v1/models/{name}/accuracy`: measured accuracy per model version,
/// from predictions whose true label is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccuracyResponse {
    /// The model.
    pub model: String,
    /// One entry per version with labelled predictions, in version order.
    pub versions: Vec<VersionAccuracy>,
}

/// How right one model version was on its labelled predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionAccuracy {
    /// The version.
    pub version: String,
    /// Predictions with a true label.
    pub labelled: u64,
    /// Of those, predicted right (top label = true label).
    pub correct: u64,
    /// Measured accuracy, `correct / labelled` (null without labels).
    pub accuracy: Option<f64>,
    /// Mean of the per-class F1 scores over classes that occur (as true or
    /// predicted labels); null without labels.
    pub macro_f1: Option<f64>,
    /// Accuracy estimated from the scores, without labels (CBPE), and
    /// whether the estimate can be trusted; null when the windows carry no
    /// scores.
    pub estimated: Option<EstimatedAccuracy>,
    /// For a model without labels (a regression): the error of its first
    /// output value against true values given as labels; null without any.
    #[serde(default)]
    pub regression: Option<RegressionError>,
    /// Per class, by label.
    pub classes: Vec<ClassMetrics>,
    /// Per device.
    pub devices: Vec<GroupAccuracy>,
    /// Per device tag (`site=berlin`), over the devices carrying it now.
    #[serde(default)]
    pub tags: Vec<GroupAccuracy>,
    /// Per time window of the query's `window_ms` (by prediction time),
    /// oldest first; empty without `window_ms`.
    pub windows: Vec<WindowAccuracy>,
}

/// How far a regression's values were from the true ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegressionError {
    /// Predictions with a numeric true value.
    pub labelled: u64,
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
}

/// Accuracy estimated from confidence: for a classifier whose scores are
/// calibrated probabilities, the expected accuracy is the mean top score
/// (NannyML's confidence-based performance estimation, CBPE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EstimatedAccuracy {
    /// The mean top score over the predictions.
    pub accuracy: f64,
    /// Predictions it comes from.
    pub predictions: u64,
    /// Whether the estimate holds.
    pub validity: EstimateValidity,
    /// Why, in words.
    pub reason: String,
    /// Expected calibration error of the top scores on labelled predictions
    /// (10 bins), when enough of them carry a score.
    pub calibration_error: Option<f64>,
}

/// Whether an [`EstimatedAccuracy`] can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EstimateValidity {
    /// Labelled predictions show the scores are calibrated (ECE at most 0.05).
    Valid,
    /// No (or too few) labels to check calibration: the estimate assumes it.
    Unverified,
    /// Labelled predictions show the scores are not calibrated: the estimate
    /// is biased; do not act on it.
    Miscalibrated,
    /// The top scores are not probabilities in [0, 1] (logits?): no estimate.
    NotProbabilities,
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassMetrics {
    /// The label.
    pub label: String,
    /// Predictions whose true label is this one.
    pub support: u64,
    /// Predictions of this label.
    pub predicted: u64,
    /// Right predictions of this label.
    pub correct: u64,
    /// `correct / predicted` (null when never predicted).
    pub precision: Option<f64>,
    /// `correct / support` (null without support).
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall (null when either is).
    pub f1: Option<f64>,
}

/// Accuracy of one group (a device, or the devices with one tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupAccuracy {
    /// The group (a device id, or a tag as `key=value`).
    pub name: String,
    /// Labelled predictions.
    pub labelled: u64,
    /// Right ones.
    pub correct: u64,
    /// `correct / labelled`.
    pub accuracy: f64,
}

/// Accuracy over one time window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowAccuracy {
    /// Window start (Unix ms, a multiple of `window_ms`).
    pub start_ms: u64,
    /// Labelled predictions made in it.
    pub labelled: u64,
    /// Right ones.
    pub correct: u64,
    /// `correct / labelled` (null without labels).
    pub accuracy: Option<f64>,
    /// Mean top score of the window's predictions (CBPE; null without scores).
    pub estimated: Option<f64>,
}

/// One true label in an upload (`POST /v1/labels`, JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LabelRow {
    /// The prediction's id (a sample's `prediction_id`).
    pub prediction_id: String,
    /// Its true label.
    pub label: String,
}

/// The answer to a label upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LabelsReceived {
    /// Labels in the upload.
    pub received: u64,
    /// Labels that named a stored sample's prediction (now its outcome).
    pub matched: u64,
    /// Labels that named no stored sample, or gave a regression's sample
    /// (one with an output value) a truth that is not a number.
    pub unmatched: u64,
    /// The first 100 unmatched prediction ids.
    pub unmatched_ids: Vec<String>,
}
