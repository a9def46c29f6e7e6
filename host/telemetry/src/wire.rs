//! The JSON records devices send to the collector, shared by both sides.
//! The server's `/openapi.json` describes the same shapes (their schemas are
//! derived behind the `openapi` feature).

use crate::drift::FeatureDrift;
use base64::Engine as _;
use edgeml_bundle::{Baseline, Dtype};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Header naming the sending device.
pub const DEVICE_HEADER: &str = "x-edgeml-device";
/// Header with the hex ed25519 signature of [`signing_message`].
pub const SIGNATURE_HEADER: &str = "x-edgeml-signature";

/// Header with the time (ms since the epoch) a device signed a bodiless
/// request at; see [`get_signing_body`].
pub const TIME_HEADER: &str = "x-edgeml-time";

/// How far a signed bodiless request's time may be from the server's clock.
pub const MAX_REQUEST_SKEW_MS: u64 = 5 * 60 * 1000;

/// What a device signs (as the body of [`signing_message`]) to authenticate
/// a request without a body, such as a bundle download: the method, the
/// path and the time, so a captured signature works for that one path and
/// only for a few minutes.
pub fn get_signing_body(method: &str, path: &str, time_ms: u64) -> Vec<u8> {
    format!("edgeml-request-v1 {method} {path} {time_ms}").into_bytes()
}

/// What a device signs for a batch: a domain tag, its id and the SHA-256 of
/// the request body exactly as sent (gzip-compressed when it is).
pub fn signing_message(device_id: &str, body: &[u8]) -> Vec<u8> {
    let mut m = b"edgeml-telemetry-batch-v1\0".to_vec();
    m.extend(device_id.as_bytes());
    m.push(0);
    m.extend(Sha256::digest(body));
    m
}

/// Device ids are 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A record id derived from what the record is: the same window (device,
/// model, start) or sample rebuilt after a crash gets the same id, and the
/// collector, which stores each id once, counts it once.
pub fn derived_record_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"edgeml-record-v1\0");
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// A fresh record id: 128 random bits, hex.
pub fn new_record_id() -> String {
    let mut b = [0u8; 16];
    // The OS random source failing is not recoverable; fall back to time and
    // a counter so ids stay unique within this process.
    if getrandom::fill(&mut b).is_err() {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&crate::now_ms().to_le_bytes());
        b[8..].copy_from_slice(&n.to_le_bytes());
    }
    hex::encode(b)
}

/// A fresh prediction id: 32 hex digits, a random 64-bit prefix drawn once
/// per process and a counter. Unique across devices and restarts without
/// a random draw per prediction (the hot path).
pub fn new_prediction_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| new_record_id()[..16].to_string());
    format!("{prefix}{:016x}", N.fetch_add(1, Ordering::Relaxed))
}

/// Which model (exact bundle) a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRef {
    /// Model name from the manifest.
    pub name: String,
    /// Model version from the manifest.
    pub version: String,
    /// Hex SHA-256 bundle digest.
    pub digest: String,
}

/// One spooled record. `id` makes ingestion idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Record {
    /// Unique id (32 hex characters).
    pub id: String,
    /// The payload.
    #[serde(flatten)]
    pub body: RecordBody,
}

/// The kinds of record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordBody {
    /// A model the device loaded: its features and baseline.
    Model(ModelRecord),
    /// A closed window of one model's predictions.
    Window(WindowRecord),
    /// A raw input kept for retraining.
    Sample(SampleRecord),
    /// The true answer for one prediction, given on the device (its local
    /// API's feedback endpoint).
    Outcome(OutcomeRecord),
}

/// The true label of one prediction, as a device learnt it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutcomeRecord {
    /// The model that predicted.
    pub model: ModelRef,
    /// The prediction's id (the inference response's `prediction_id`).
    pub prediction_id: String,
    /// When it predicted, Unix milliseconds.
    pub predicted_ms: u64,
    /// Its top label, if the model has labels.
    #[serde(default)]
    pub prediction: Option<String>,
    /// The top label's score.
    #[serde(default)]
    pub score: Option<f32>,
    /// For a model without labels (a regression), its first output value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The true label (for a regression, the true value).
    pub label: String,
    /// When the label was given, Unix milliseconds.
    pub labelled_ms: u64,
}

/// Sent once per model a device loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRecord {
    /// The model.
    pub model: ModelRef,
    /// Names of the guest's monitoring features.
    pub monitoring_features: Vec<String>,
    /// Class labels.
    pub labels: Vec<String>,
    /// The manifest's baseline, if it has one.
    pub baseline: Option<Baseline>,
}

/// Aggregates of one model's predictions over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowRecord {
    /// The model.
    pub model: ModelRef,
    /// Window start, Unix milliseconds.
    pub start_ms: u64,
    /// Window end, Unix milliseconds.
    pub end_ms: u64,
    /// Predictions, successful or not.
    pub count: u64,
    /// Failed predictions by error kind (`invalid_input`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Latency sketch in microseconds (base64, see [`crate::Sketch::to_base64`]).
    pub latency_us: String,
    /// Per numeric feature (monitoring features, `score.<label>`) that the
    /// baseline does not cover, a sketch.
    pub numeric: BTreeMap<String, String>,
    /// Per numeric feature the baseline covers, counts on the baseline's
    /// quantile grid (see [`crate::GridCounts::to_base64`]). Older devices
    /// send sketches in `numeric` instead; the collector takes both. An
    /// older collector ignores this field (no drift for these features):
    /// upgrade the collector before the devices.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binned: BTreeMap<String, String>,
    /// Per categorical feature (`prediction`), counts per category.
    pub categorical: BTreeMap<String, BTreeMap<String, u64>>,
    /// Drift against the baseline, computed on the device: the features
    /// that are not `stable`.
    #[serde(default)]
    pub drift: Vec<FeatureDrift>,
    /// Some feature is in the drift band.
    #[serde(default)]
    pub drifted: bool,
    /// Rebuilt from the journal after a crash (no local drift then).
    #[serde(default)]
    pub recovered: bool,
    /// Samples not kept because the daily budget was spent.
    #[serde(default)]
    pub samples_over_budget: u64,
    /// Sum of the predictions' top scores, over those whose top score is a
    /// probability (in [0, 1]): with calibrated scores, `confidence_sum /
    /// scored` estimates the window's accuracy without labels (CBPE).
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub confidence_sum: f64,
    /// Predictions counted in `confidence_sum`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub scored: u64,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Why a raw input was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SampleReason {
    /// Uniform reservoir sample of the window.
    Reservoir,
    /// The top score was under the configured confidence.
    LowConfidence,
    /// A reservoir sample from a window flagged as drifted.
    DriftedWindow,
}

impl SampleReason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleReason::Reservoir => "reservoir",
            SampleReason::LowConfidence => "low_confidence",
            SampleReason::DriftedWindow => "drifted_window",
        }
    }
}

/// A raw input kept for retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleRecord {
    /// The model it was fed to.
    pub model: ModelRef,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// Why it was kept.
    pub reason: SampleReason,
    /// The model's prediction (top label), if any.
    #[serde(default)]
    pub prediction: Option<String>,
    /// The prediction's id, for labels that arrive later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_id: Option<String>,
    /// For a model without labels, the first value of its first output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The input.
    pub input: SampleInput,
}

/// A raw input: tensors or media bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SampleInput {
    /// Named tensors.
    Tensors {
        /// The tensors.
        tensors: Vec<TensorData>,
    },
    /// Media bytes.
    Media {
        /// Media type.
        media_type: String,
        /// Base64 bytes.
        data: String,
    },
}

impl SampleInput {
    /// Size of the raw data in bytes.
    pub fn raw_len(&self) -> usize {
        match self {
            SampleInput::Tensors { tensors } => tensors.iter().map(|t| t.data.len() * 3 / 4).sum(),
            SampleInput::Media { data, .. } => data.len() * 3 / 4,
        }
    }

    /// Media input from bytes.
    pub fn media(media_type: &str, bytes: &[u8]) -> Self {
        SampleInput::Media {
            media_type: media_type.into(),
            data: b64(bytes),
        }
    }
}

/// A tensor in a sample: little-endian data, base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TensorData {
    /// Input name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Base64 of the little-endian elements.
    pub data: String,
}

impl TensorData {
    /// A tensor from raw little-endian bytes.
    pub fn new(name: &str, dtype: Dtype, shape: &[u64], bytes: &[u8]) -> Self {
        TensorData {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data: b64(bytes),
        }
    }

    /// The raw bytes, checked against dtype and shape.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.data)
            .map_err(|e| format!("tensor `{}` data is not base64: {e}", self.name))?;
        let want = self
            .shape
            .iter()
            .try_fold(self.dtype.size() as u64, |a, &d| a.checked_mul(d));
        if want != Some(bytes.len() as u64) {
            return Err(format!(
                "tensor `{}` has {} bytes, shape {:?} of {} needs {want:?}",
                self.name,
                bytes.len(),
                self.shape,
                self.dtype
            ));
        }
        Ok(bytes)
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Spool state a device reports with each batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpoolStats {
    /// Records waiting to be shipped.
    pub pending_records: u64,
    /// Their size on disk.
    pub pending_bytes: u64,
    /// Records dropped (oldest first) because the spool was full, ever.
    pub dropped_records: u64,
}

/// The body of `POST /v1/ingest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Batch {
    /// The sending device (must match the header and the signature).
    pub device_id: String,
    /// When the batch was sent, Unix milliseconds (device clock).
    pub sent_ms: u64,
    /// The device's spool, not counting the records in this batch (what
    /// will still be waiting once the collector takes it).
    pub spool: SpoolStats,
    /// The records.
    pub records: Vec<Record>,
}

/// The reply to an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResponse {
    /// Records stored now.
    pub accepted: u64,
    /// Records already stored before (not counted again).
    pub duplicates: u64,
}

/// The body of `POST /v1/enrol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrolRequest {
    /// The device id.
    pub device_id: String,
    /// Hex ed25519 public key the device signs batches with.
    pub public_key: String,
}
