//! Device telemetry for edgeml models, and the wire format and drift maths
//! the collector shares.
//!
//! On a device, [`Telemetry::start`] opens a directory and starts two
//! threads: one closes windows, one ships (feature `shipper`). The host
//! runtime registers each loaded model ([`Telemetry::register`]) and records
//! every prediction ([`ModelTelemetry::record`]):
//!
//! - the event goes into a memory-mapped journal before `predict` returns,
//!   so a killed process loses at most the event in flight;
//! - per window (default 60 s) the journal becomes a [`wire::WindowRecord`]:
//!   counts, errors by kind, a latency sketch, a KLL sketch per numeric
//!   feature and counts per predicted label, plus drift against the
//!   bundle's baseline computed on the device;
//! - opt-in raw input samples: a reservoir per window and low-confidence
//!   inputs, within a daily budget;
//! - records wait in a bounded on-disk spool (oldest dropped first, counted)
//!   until the shipper delivers them: batched, gzip, signed with the
//!   device's ed25519 key, retried with exponential backoff and jitter.
//!   Delivery is at least once; record ids make the collector idempotent.

#![deny(missing_docs)]

mod config;
pub mod drift;
mod error;
mod grid;
mod identity;
mod journal;
pub mod npy;
#[cfg(feature = "shipper")]
mod shipper;
mod sketch;
mod spool;
pub mod wire;

pub use config::{CollectorConfig, SampleConfig, TelemetryConfig};
pub use drift::{DriftStatus, DriftThresholds, FeatureDrift};
pub use error::Error;
pub use grid::GridCounts;
pub use identity::DeviceIdentity;
pub use sketch::Sketch;

use edgeml_bundle::Baseline;
use error::IoContext;
use journal::{Event, Journal, JournalMeta};
use serde::{Deserialize, Serialize};
use spool::Spool;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wire::{
    ModelRecord, ModelRef, OutcomeRecord, Record, RecordBody, SampleInput, SampleReason,
    SampleRecord, SpoolStats, WindowRecord,
};

/// The spool of the device configured by `config`, read from disk without
/// starting telemetry (the device may be running): records waiting for the
/// collector, their bytes, and records dropped because the spool was full.
pub fn spool_stats(config: &TelemetryConfig) -> SpoolStats {
    spool::peek(&config.dir.join("spool"))
}

/// Why a prediction failed, as journals store it and windows report it.
///
/// The journal stores the code ([`ErrorKind::code`]); windows and the
/// collector use the name ([`ErrorKind::name`]). Both are stable: the codes
/// are those of the string table older journals were written with, so a
/// journal recovered after an upgrade reads back the same kinds, and an
/// unknown code or name reads as [`ErrorKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// An input is missing, unknown, or of the wrong dtype, shape or size.
    InvalidInput,
    /// The component does not accept this media type.
    UnsupportedMedia,
    /// The media could not be decoded.
    Decode,
    /// The inference backend failed.
    Inference,
    /// The component rejected its configuration.
    GuestConfig,
    /// The call ran past its deadline.
    Timeout,
    /// The guest hit a memory, table or handle limit.
    ResourceLimit,
    /// The guest trapped.
    Trap,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidInput,
        ErrorKind::UnsupportedMedia,
        ErrorKind::Decode,
        ErrorKind::Inference,
        ErrorKind::GuestConfig,
        ErrorKind::Timeout,
        ErrorKind::ResourceLimit,
        ErrorKind::Trap,
        ErrorKind::Other,
    ];

    /// The stable name (`invalid_input`, `trap`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::UnsupportedMedia => "unsupported_media",
            ErrorKind::Decode => "decode",
            ErrorKind::Inference => "inference",
            ErrorKind::GuestConfig => "guest_config",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ResourceLimit => "resource_limit",
            ErrorKind::Trap => "trap",
            ErrorKind::Other => "other",
        }
    }

    /// The kind with this name; unknown names are [`ErrorKind::Other`].
    pub fn from_name(name: &str) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(ErrorKind::Other)
    }

    /// The journal code (1..=9; 0 means success).
    pub fn code(self) -> u8 {
        match self {
            ErrorKind::InvalidInput => 1,
            ErrorKind::UnsupportedMedia => 2,
            ErrorKind::Decode => 3,
            ErrorKind::Inference => 4,
            ErrorKind::GuestConfig => 5,
            ErrorKind::Timeout => 6,
            ErrorKind::ResourceLimit => 7,
            ErrorKind::Trap => 8,
            ErrorKind::Other => 9,
        }
    }

    /// The kind with this journal code; unknown codes are [`ErrorKind::Other`].
    pub fn from_code(code: u8) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.code() == code)
            .unwrap_or(ErrorKind::Other)
    }

    /// Whether the request, not the model, was at fault (invalid input,
    /// unsupported or undecodable media). A health check must never count
    /// these against a model version, or any client could veto an update
    /// by sending garbage.
    pub fn is_client_error(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidInput | ErrorKind::UnsupportedMedia | ErrorKind::Decode
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of the categorical feature holding the top label.
pub const PREDICTION_FEATURE: &str = "prediction";

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A model to register: who it is and what it reports.
#[derive(Debug, Clone)]
pub struct ModelDescriptor {
    /// Name, version and bundle digest.
    pub model: ModelRef,
    /// The component's monitoring feature names.
    pub monitoring_features: Vec<String>,
    /// Class labels.
    pub labels: Vec<String>,
    /// The manifest's baseline.
    pub baseline: Option<Baseline>,
}

/// A successful prediction, as telemetry sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Monitoring feature values, in [`ModelDescriptor::monitoring_features`] order.
    pub monitoring: &'a [f32],
    /// `(label index, score)`, best first.
    pub scores: &'a [(u32, f32)],
    /// For a model without labels, the first value of its first output
    /// (kept with a sample, so a label uploaded later gives an error).
    pub value: Option<f64>,
}

/// Local drift of a model's last closed window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowDrift {
    /// The model.
    pub model: ModelRef,
    /// Window start, Unix ms.
    pub start_ms: u64,
    /// Window end, Unix ms.
    pub end_ms: u64,
    /// Predictions in the window.
    pub count: u64,
    /// Per feature.
    pub features: Vec<FeatureDrift>,
    /// Some feature is in the drift band.
    pub drifted: bool,
}

/// What the telemetry pipeline has done so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TelemetryStats {
    /// The spool.
    pub spool: SpoolStats,
    /// Records the collector refused as malformed (kept under `spool/rejected`).
    pub rejected_records: u64,
    /// Records delivered by this process.
    pub shipped_records: u64,
    /// Bytes of the batches delivered by this process, as sent (gzip).
    pub shipped_bytes: u64,
    /// Windows closed by this process.
    pub windows: u64,
    /// Windows rebuilt from journals left by a crashed process.
    pub recovered_windows: u64,
    /// The last shipping error, if the last attempt failed.
    pub last_error: Option<String>,
    /// The device is enrolled with the collector.
    pub enrolled: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Budget {
    day: u64,
    count: u64,
    bytes: u64,
}

struct Signal {
    state: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    fn notify(&self) {
        *lock(&self.state) += 1;
        self.cv.notify_all();
    }
    fn wait(&self, timeout: Duration) {
        let g = lock(&self.state);
        let seen = *g;
        let _ = self.cv.wait_timeout_while(g, timeout, |n| *n == seen);
    }
}

struct Inner {
    config: TelemetryConfig,
    spool: Spool,
    identity: DeviceIdentity,
    models: Mutex<Vec<Arc<ModelShared>>>,
    budget: Mutex<Budget>,
    stats: Mutex<TelemetryStats>,
    closer: Arc<Signal>,
    shipper: Arc<Signal>,
    shutdown: AtomicBool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    _lock: fs::File,
}

struct ModelShared {
    key: String,
    meta: JournalMeta,
    baseline: Option<Baseline>,
    state: Mutex<ModelState>,
    last_drift: Mutex<Option<WindowDrift>>,
}

struct ModelState {
    active: Journal,
    spares: Vec<Journal>,
    full: Vec<Journal>,
    next_file: u32,
    buf: Vec<u8>,
    seen: u64,
    rng: u64,
}

/// The device side of telemetry. Cheap to clone; all clones share one pipeline.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("device_id", &self.inner.config.device_id)
            .field("dir", &self.inner.config.dir)
            .finish()
    }
}

/// A registered model's recorder (see [`Telemetry::register`]).
#[derive(Clone)]
pub struct ModelTelemetry {
    inner: Arc<Inner>,
    model: Arc<ModelShared>,
}

impl std::fmt::Debug for ModelTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTelemetry")
            .field("model", &self.model.meta.model)
            .finish()
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) | 1
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

impl Telemetry {
    /// Ship the true label of one of `model`'s predictions (an
    /// [`OutcomeRecord`] through the spool, like every record).
    pub fn outcome(&self, model: &ModelRef, outcome: &Outcome<'_>) -> Result<(), Error> {
        self.inner
            .spool
            .push(&Record {
                id: wire::new_record_id(),
                body: RecordBody::Outcome(OutcomeRecord {
                    model: model.clone(),
                    prediction_id: outcome.prediction_id.to_string(),
                    predicted_ms: outcome.predicted_ms,
                    prediction: outcome.prediction.map(str::to_string),
                    score: outcome.score,
                    value: outcome.value,
                    label: outcome.label.to_string(),
                    labelled_ms: now_ms(),
                }),
            })
            .map(drop)
    }

    /// Open (or create) the telemetry directory, recover what a previous
    /// process left (journals become windows, pending samples go to the
    /// spool), and start the window closer and, with a collector, the shipper.
    pub fn start(config: TelemetryConfig) -> Result<Telemetry, Error> {
        config.validate()?;
        let dir = config.dir.clone();
        for sub in ["journal", "samples/pending"] {
            fs::create_dir_all(dir.join(sub)).at(dir.join(sub))?;
        }
        let lock_path = dir.join("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&lock_path),
        }
        let identity = DeviceIdentity::load_or_create(&dir, &config.device_id)?;
        let spool = Spool::open(&dir.join("spool"), config.spool_max_bytes)?;
        let budget = fs::read(dir.join("samples/budget.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            spool,
            identity,
            models: Mutex::new(Vec::new()),
            budget: Mutex::new(budget),
            stats: Mutex::new(TelemetryStats {
                enrolled: dir.join("enrolled").exists(),
                ..Default::default()
            }),
            closer: Arc::new(Signal {
                state: Mutex::new(0),
                cv: Condvar::new(),
            }),
            shipper: Arc::new(Signal {
                state: Mutex::new(0),
                cv: Condvar::new(),
            }),
            shutdown: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            _lock: lock_file,
            config,
        });
        inner.recover()?;
        let weak = Arc::downgrade(&inner);
        let signal = inner.closer.clone();
        let closer = std::thread::Builder::new()
            .name("edgeml-telemetry-windows".into())
            .spawn(move || closer_loop(weak, signal))
            .at(&dir)?;
        lock(&inner.threads).push(closer);
        #[cfg(feature = "shipper")]
        if inner.config.collector.is_some() {
            let weak = Arc::downgrade(&inner);
            let signal = inner.shipper.clone();
            let h = std::thread::Builder::new()
                .name("edgeml-telemetry-shipper".into())
                .spawn(move || shipper::run(weak, signal))
                .at(&dir)?;
            lock(&inner.threads).push(h);
        }
        Ok(Telemetry { inner })
    }

    /// This device's identity (id and public key).
    pub fn identity(&self) -> &DeviceIdentity {
        &self.inner.identity
    }

    /// The configuration in use.
    pub fn config(&self) -> &TelemetryConfig {
        &self.inner.config
    }

    /// Start recording a model. Registering the same bundle again returns
    /// the same recorder.
    pub fn register(&self, desc: ModelDescriptor) -> Result<ModelTelemetry, Error> {
        let mut models = lock(&self.inner.models);
        if let Some(m) = models.iter().find(|m| m.meta.model == desc.model) {
            return Ok(ModelTelemetry {
                inner: self.inner.clone(),
                model: m.clone(),
            });
        }
        let key: String = desc.model.digest.chars().take(16).collect();
        let meta = JournalMeta {
            model: desc.model.clone(),
            monitoring_features: desc.monitoring_features.clone(),
            labels: desc.labels.clone(),
        };
        let path = self.inner.journal_path(&key, 0);
        let active =
            Journal::create(&path, self.inner.config.journal_bytes, &meta, now_ms()).at(&path)?;
        self.inner.spool.push(&Record {
            id: wire::new_record_id(),
            body: RecordBody::Model(ModelRecord {
                model: desc.model,
                monitoring_features: desc.monitoring_features,
                labels: desc.labels,
                baseline: desc.baseline.clone(),
            }),
        })?;
        let shared = Arc::new(ModelShared {
            key,
            meta,
            baseline: desc.baseline,
            state: Mutex::new(ModelState {
                active,
                spares: Vec::new(),
                full: Vec::new(),
                next_file: 1,
                buf: Vec::with_capacity(256),
                seen: 0,
                rng: seed(),
            }),
            last_drift: Mutex::new(None),
        });
        models.push(shared.clone());
        self.inner.shipper.notify();
        Ok(ModelTelemetry {
            inner: self.inner.clone(),
            model: shared,
        })
    }

    /// Close every model's current window now, then wait up to `timeout`
    /// for the shipper to empty the spool (no wait without a collector).
    /// Returns the stats afterwards: `spool.pending_records` is what is left.
    pub fn flush(&self, timeout: Duration) -> TelemetryStats {
        self.inner.close_all(true);
        let deadline = Instant::now() + timeout;
        if self.inner.config.collector.is_some() && cfg!(feature = "shipper") {
            while self.inner.spool.stats().pending_records > 0 && Instant::now() < deadline {
                self.inner.shipper.notify();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.stats()
    }

    /// Counters and the last shipping error.
    pub fn stats(&self) -> TelemetryStats {
        let mut s = lock(&self.inner.stats).clone();
        s.spool = self.inner.spool.stats();
        s.rejected_records = self.inner.spool.quarantined();
        s
    }

    /// Local drift of each model's last closed window (only models with a baseline).
    pub fn drift(&self) -> Vec<WindowDrift> {
        lock(&self.inner.models)
            .iter()
            .filter_map(|m| lock(&m.last_drift).clone())
            .collect()
    }

    /// Stop the threads after closing the current windows into the spool.
    /// Unshipped records stay in the spool for the next start.
    pub fn shutdown(&self) {
        self.inner.close_all(true);
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.closer.notify();
        self.inner.shipper.notify();
        let threads: Vec<_> = lock(&self.inner.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// One prediction's true label, for [`ModelTelemetry::outcome`].
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The prediction's id.
    pub prediction_id: &'a str,
    /// When it was made (Unix ms).
    pub predicted_ms: u64,
    /// Its top label.
    pub prediction: Option<&'a str>,
    /// The top label's score.
    pub score: Option<f32>,
    /// For a model without labels, its first output value.
    pub value: Option<f64>,
    /// The true label (or value).
    pub label: &'a str,
}

impl ModelTelemetry {
    /// Record one prediction: its latency and either what it observed or the
    /// kind of error. `input` is called only when
    /// the input is kept as a sample (samples enabled, and chosen by the
    /// reservoir or below the confidence threshold); a kept sample carries
    /// `prediction_id`, so labels given later can be joined with it.
    pub fn record(
        &self,
        latency: Duration,
        outcome: Result<Observed<'_>, ErrorKind>,
        prediction_id: Option<&str>,
        input: impl FnOnce() -> Option<SampleInput>,
    ) {
        let t_ms = now_ms();
        let latency_us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        let (code, monitoring, scores, value) = match outcome {
            Ok(o) => (0u8, o.monitoring, o.scores, o.value),
            Err(kind) => (kind.code(), &[][..], &[][..], None),
        };
        let samples = self.inner.config.samples.as_ref();
        let mut slot = None;
        let start;
        {
            let mut st = lock(&self.model.state);
            let st = &mut *st;
            Event::encode_into(
                &mut st.buf,
                t_ms,
                latency_us,
                code,
                monitoring,
                scores
                    .iter()
                    .map(|&(i, s)| (i.min(u32::from(u16::MAX)) as u16, s)),
            );
            if !st.active.append(&st.buf) {
                self.inner.swap_full(&self.model.key, &self.model.meta, st);
                st.active.append(&st.buf);
            }
            start = st.active.start_ms();
            if let Some(sc) = samples.filter(|s| s.per_window > 0 && code == 0) {
                st.seen += 1;
                let k = u64::from(sc.per_window);
                slot = if st.seen <= k {
                    Some(st.seen - 1)
                } else {
                    let j = xorshift(&mut st.rng) % st.seen;
                    (j < k).then_some(j)
                };
            }
        }
        let Some(sc) = samples else { return };
        let low = match (sc.low_confidence_below, scores.first()) {
            (Some(t), Some(&(_, s))) => s < t,
            _ => false,
        };
        if slot.is_none() && !low {
            return;
        }
        let Some(input) = input() else { return };
        let prediction = scores
            .first()
            .map(|&(i, _)| label(&self.model.meta.labels, i as u16));
        let sample = SampleRecord {
            model: self.model.meta.model.clone(),
            at_ms: t_ms,
            reason: SampleReason::Reservoir,
            prediction,
            prediction_id: prediction_id.map(str::to_string),
            value,
            input,
        };
        if let Some(slot) = slot {
            let path = self.inner.pending_path(&self.model.key, start, slot);
            if let Ok(json) = serde_json::to_vec(&sample) {
                let _ = write_atomic(&path, &json);
            }
        }
        if low && self.inner.take_budget(sample.input.raw_len()) {
            let _ = self.inner.spool.push(&Record {
                id: wire::new_record_id(),
                body: RecordBody::Sample(SampleRecord {
                    reason: SampleReason::LowConfidence,
                    ..sample
                }),
            });
        }
    }

    /// The model this recorder is for.
    pub fn model(&self) -> &ModelRef {
        &self.model.meta.model
    }
}

/// Builds a [`Baseline`] from predictions on reference data, with the
/// same feature names the device's windows use (monitoring features,
/// `score.<label>`, and the categorical `prediction`).
#[derive(Debug, Clone)]
pub struct BaselineBuilder {
    monitoring_features: Vec<String>,
    labels: Vec<String>,
    numeric: BTreeMap<String, Vec<f32>>,
    predicted: BTreeMap<String, u64>,
    examples: u64,
}

impl BaselineBuilder {
    /// For a model with these monitoring features and labels.
    pub fn new(monitoring_features: Vec<String>, labels: Vec<String>) -> Self {
        BaselineBuilder {
            monitoring_features,
            labels,
            numeric: BTreeMap::new(),
            predicted: BTreeMap::new(),
            examples: 0,
        }
    }

    /// Add one reference prediction.
    pub fn add(&mut self, o: Observed<'_>) {
        self.examples += 1;
        for (i, &v) in o.monitoring.iter().enumerate() {
            let name = self
                .monitoring_features
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("monitoring.{i}"));
            self.numeric.entry(name).or_default().push(v);
        }
        for &(i, v) in o.scores {
            let name = format!(
                "score.{}",
                label(&self.labels, i.min(u32::from(u16::MAX)) as u16)
            );
            self.numeric.entry(name).or_default().push(v);
        }
        if let Some(&(i, _)) = o.scores.first() {
            *self
                .predicted
                .entry(label(&self.labels, i.min(u32::from(u16::MAX)) as u16))
                .or_default() += 1;
        }
    }

    /// Predictions added so far.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// The baseline.
    pub fn build(self) -> Baseline {
        let numeric = self
            .numeric
            .into_iter()
            .filter_map(|(name, mut values)| {
                let count = values.len() as u64;
                drift::baseline_quantiles(&mut values).map(|quantiles| {
                    edgeml_bundle::NumericBaseline {
                        name,
                        count,
                        quantiles,
                    }
                })
            })
            .collect();
        let categorical = if self.predicted.is_empty() {
            Vec::new()
        } else {
            vec![edgeml_bundle::CategoricalBaseline {
                name: PREDICTION_FEATURE.into(),
                counts: self.predicted,
            }]
        };
        Baseline {
            examples: self.examples,
            numeric,
            categorical,
        }
    }
}

fn label(labels: &[String], i: u16) -> String {
    labels
        .get(i as usize)
        .cloned()
        .unwrap_or_else(|| i.to_string())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// A window's aggregates, from journal events.
struct Aggregate {
    count: u64,
    errors: BTreeMap<String, u64>,
    latency: Sketch,
    numeric: BTreeMap<String, Sketch>,
    binned: BTreeMap<String, GridCounts>,
    categorical: BTreeMap<String, BTreeMap<String, u64>>,
    last_ms: u64,
    /// Sum of the top scores that are probabilities (in [0, 1]).
    confidence_sum: f64,
    /// How many predictions gave such a top score.
    scored: u64,
}

/// One numeric feature of a window: counts on the baseline's grid when the
/// baseline has the feature, a KLL sketch otherwise.
enum NumericAgg<'a> {
    Grid(&'a [f64], GridCounts),
    Sketch(Sketch),
}

impl NumericAgg<'_> {
    fn update(&mut self, v: f32) {
        match self {
            NumericAgg::Grid(grid, counts) => counts.add(grid, v),
            NumericAgg::Sketch(s) => s.update(v),
        }
    }
}

fn aggregate(
    meta: &JournalMeta,
    baseline: Option<&Baseline>,
    events: &[Event],
    k: u16,
) -> Aggregate {
    let mut a = Aggregate {
        count: events.len() as u64,
        errors: BTreeMap::new(),
        latency: Sketch::new(k),
        numeric: BTreeMap::new(),
        binned: BTreeMap::new(),
        categorical: BTreeMap::new(),
        last_ms: 0,
        confidence_sum: 0.0,
        scored: 0,
    };
    let new_agg =
        |name: &str| match baseline.and_then(|b| b.numeric.iter().find(|n| n.name == name)) {
            Some(n) => NumericAgg::Grid(&n.quantiles[..], GridCounts::new(n.quantiles.len())),
            None => NumericAgg::Sketch(Sketch::new(k)),
        };
    let mon_name = |i: usize| {
        meta.monitoring_features
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("monitoring.{i}"))
    };
    let mut mon: Vec<(String, NumericAgg<'_>)> = Vec::new();
    let mut score: BTreeMap<u16, (String, NumericAgg<'_>)> = BTreeMap::new();
    let mut predicted: BTreeMap<u16, u64> = BTreeMap::new();
    for e in events {
        a.last_ms = a.last_ms.max(e.t_ms);
        a.latency.update(e.latency_us as f32);
        if e.outcome != 0 {
            let kind = ErrorKind::from_code(e.outcome);
            *a.errors.entry(kind.name().to_string()).or_default() += 1;
            continue;
        }
        while mon.len() < e.monitoring.len() {
            let name = mon_name(mon.len());
            let agg = new_agg(&name);
            mon.push((name, agg));
        }
        for ((_, s), &v) in mon.iter_mut().zip(&e.monitoring) {
            s.update(v);
        }
        for &(i, v) in &e.scores {
            score
                .entry(i)
                .or_insert_with(|| {
                    let name = format!("score.{}", label(&meta.labels, i));
                    let agg = new_agg(&name);
                    (name, agg)
                })
                .1
                .update(v);
        }
        if let Some(&(top, s)) = e.scores.first() {
            *predicted.entry(top).or_default() += 1;
            if (0.0..=1.0).contains(&s) {
                a.confidence_sum += f64::from(s);
                a.scored += 1;
            }
        }
    }
    for (name, agg) in mon.into_iter().chain(score.into_values()) {
        match agg {
            NumericAgg::Grid(_, counts) => {
                a.binned.insert(name, counts);
            }
            NumericAgg::Sketch(s) => {
                a.numeric.insert(name, s);
            }
        }
    }
    if !predicted.is_empty() {
        a.categorical.insert(
            PREDICTION_FEATURE.into(),
            predicted
                .into_iter()
                .map(|(i, n)| (label(&meta.labels, i), n))
                .collect(),
        );
    }
    a
}

/// Drift of a window's aggregates against a baseline: numeric features
/// from their counts on the baseline's grid, categorical ones from counts.
pub fn window_drift(
    baseline: &Baseline,
    binned: &BTreeMap<String, GridCounts>,
    categorical: &BTreeMap<String, BTreeMap<String, u64>>,
    thresholds: &DriftThresholds,
) -> Vec<FeatureDrift> {
    let empty_counts = BTreeMap::new();
    let mut out: Vec<FeatureDrift> = baseline
        .numeric
        .iter()
        .map(|b| match binned.get(&b.name) {
            Some(counts) => drift::grid_drift(b, counts, thresholds),
            None => drift::grid_drift(b, &GridCounts::new(b.quantiles.len()), thresholds),
        })
        .collect();
    out.extend(baseline.categorical.iter().map(|b| {
        drift::categorical_drift(
            b,
            categorical.get(&b.name).unwrap_or(&empty_counts),
            thresholds,
        )
    }));
    out
}

impl Inner {
    fn journal_path(&self, key: &str, n: u32) -> PathBuf {
        self.config.dir.join("journal").join(format!("{key}-{n}.j"))
    }

    fn pending_path(&self, key: &str, start: u64, slot: u64) -> PathBuf {
        self.config
            .dir
            .join("samples/pending")
            .join(format!("{key}-{start}-{slot}.json"))
    }

    /// The active journal is full: park it for the closer and continue in a spare.
    fn swap_full(&self, key: &str, meta: &JournalMeta, st: &mut ModelState) {
        let now = now_ms();
        let next = match st.spares.pop() {
            Some(j) => Ok(j),
            None => {
                let n = st.next_file;
                st.next_file += 1;
                Journal::create(
                    &self.journal_path(key, n),
                    self.config.journal_bytes,
                    meta,
                    now,
                )
            }
        };
        if let Ok(mut next) = next {
            next.reset(now);
            st.seen = 0;
            let full = std::mem::replace(&mut st.active, next);
            st.full.push(full);
            self.closer.notify();
        }
    }

    fn close_all(&self, force: bool) {
        let models: Vec<_> = lock(&self.models).clone();
        for m in models {
            self.close_model(&m, force);
        }
    }

    /// Close `m`'s window if it is due (or `force`), and any full journals.
    fn close_model(&self, m: &ModelShared, force: bool) {
        let now = now_ms();
        let window_ms = self.config.window.as_millis() as u64;
        let closing = {
            let mut st = lock(&m.state);
            let due = now >= st.active.start_ms() + window_ms;
            let mut closing: Vec<Journal> = std::mem::take(&mut st.full);
            if (due || force) && st.active.events > 0 {
                let next = match st.spares.pop() {
                    Some(j) => Ok(j),
                    None => {
                        let n = st.next_file;
                        st.next_file += 1;
                        Journal::create(
                            &self.journal_path(&m.key, n),
                            self.config.journal_bytes,
                            &m.meta,
                            now,
                        )
                    }
                };
                if let Ok(mut next) = next {
                    next.reset(now);
                    st.seen = 0;
                    closing.push(std::mem::replace(&mut st.active, next));
                }
            } else if due {
                // Nothing happened: just move the window on.
                st.active.reset(now);
                st.seen = 0;
            }
            closing
        };
        let mut done = Vec::new();
        let mut retry = Vec::new();
        for mut j in closing {
            let events = j.events();
            let start = j.start_ms();
            match self.emit_window(
                &m.meta,
                m.baseline.as_ref(),
                start,
                &events,
                false,
                Some(&m.key),
            ) {
                Ok(()) => {
                    j.reset(now);
                    done.push(j);
                }
                // The spool could not take it (disk full?): keep the events and try again next tick.
                Err(e) => {
                    lock(&self.stats).last_error = Some(format!("closing a window: {e}"));
                    retry.push(j);
                }
            }
        }
        let mut st = lock(&m.state);
        st.spares.extend(done);
        st.full.extend(retry);
    }

    /// Turn a window's events into records: its samples, then the window.
    fn emit_window(
        &self,
        meta: &JournalMeta,
        baseline: Option<&Baseline>,
        start_ms: u64,
        events: &[Event],
        recovered: bool,
        key: Option<&str>,
    ) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        let agg = aggregate(meta, baseline, events, self.config.sketch_k);
        let drift = baseline
            .map(|b| window_drift(b, &agg.binned, &agg.categorical, &self.config.drift))
            .unwrap_or_default();
        let drifted = drift.iter().any(|d| d.status == DriftStatus::Drift);
        let over_budget = match key {
            Some(key) => self.ship_samples(key, start_ms, drifted)?,
            None => 0,
        };
        let end_ms = agg.last_ms.max(start_ms);
        let record = WindowRecord {
            model: meta.model.clone(),
            start_ms,
            end_ms,
            count: agg.count,
            errors: agg.errors,
            latency_us: agg.latency.to_base64(),
            numeric: agg
                .numeric
                .iter()
                .map(|(k, s)| (k.clone(), s.to_base64()))
                .collect(),
            binned: agg
                .binned
                .iter()
                .map(|(k, g)| (k.clone(), g.to_base64()))
                .collect(),
            categorical: agg.categorical,
            // Stable features are the rule: ship only the ones that are
            // not (the collector recomputes every feature's drift anyway).
            drift: drift
                .iter()
                .filter(|d| d.status != DriftStatus::Stable)
                .cloned()
                .collect(),
            drifted,
            recovered,
            samples_over_budget: over_budget,
            confidence_sum: agg.confidence_sum,
            scored: agg.scored,
        };
        // Window identity is deterministic: a window rebuilt from the
        // journal after a crash between this push and the journal reset
        // gets the same id, and the collector counts it once.
        let id = wire::derived_record_id(&[
            &self.config.device_id,
            "window",
            &meta.model.name,
            &meta.model.version,
            &meta.model.digest,
            &start_ms.to_string(),
        ]);
        self.spool.push(&Record {
            id,
            body: RecordBody::Window(record),
        })?;
        {
            let mut s = lock(&self.stats);
            s.windows += 1;
            if recovered {
                s.recovered_windows += 1;
            }
        }
        if baseline.is_some() {
            let models = lock(&self.models);
            if let Some(m) = models.iter().find(|m| m.meta.model == meta.model) {
                *lock(&m.last_drift) = Some(WindowDrift {
                    model: meta.model.clone(),
                    start_ms,
                    end_ms,
                    count: events.len() as u64,
                    features: drift,
                    drifted,
                });
            }
        }
        self.shipper.notify();
        Ok(())
    }

    /// Move a window's reservoir samples into the spool, within the daily
    /// budget. Returns how many were over budget.
    fn ship_samples(&self, key: &str, start_ms: u64, drifted: bool) -> Result<u64, Error> {
        let prefix = format!("{key}-{start_ms}-");
        self.ship_pending(|name| name.starts_with(&prefix), drifted)
    }

    fn ship_pending(&self, select: impl Fn(&str) -> bool, drifted: bool) -> Result<u64, Error> {
        let dir = self.config.dir.join("samples/pending");
        let mut over = 0;
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .at(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(&select)
            })
            .collect();
        files.sort();
        for path in files {
            let sample: Option<SampleRecord> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(mut sample) = sample {
                if self.take_budget(sample.input.raw_len()) {
                    if drifted {
                        sample.reason = SampleReason::DriftedWindow;
                    }
                    // Named after its pending file: pushed again after a
                    // crash before the file is removed, it is counted once.
                    let name = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default();
                    let id = wire::derived_record_id(&[&self.config.device_id, "sample", name]);
                    self.spool.push(&Record {
                        id,
                        body: RecordBody::Sample(sample),
                    })?;
                } else {
                    over += 1;
                }
            }
            let _ = fs::remove_file(&path);
        }
        Ok(over)
    }

    /// Spend one sample of `bytes` from today's budget, if there is room.
    fn take_budget(&self, bytes: usize) -> bool {
        let Some(sc) = &self.config.samples else {
            return false;
        };
        let day = now_ms() / 86_400_000;
        let mut b = lock(&self.budget);
        if b.day != day {
            *b = Budget {
                day,
                count: 0,
                bytes: 0,
            };
        }
        if b.count + 1 > sc.max_per_day || b.bytes + bytes as u64 > sc.max_bytes_per_day {
            return false;
        }
        b.count += 1;
        b.bytes += bytes as u64;
        if let Ok(json) = serde_json::to_vec(&*b) {
            let _ = write_atomic(&self.config.dir.join("samples/budget.json"), &json);
        }
        true
    }

    /// Journals and pending samples left by a previous process become records.
    fn recover(&self) -> Result<(), Error> {
        let dir = self.config.dir.join("journal");
        for e in fs::read_dir(&dir).at(&dir)?.flatten() {
            let path = e.path();
            if let Ok(Some((meta, start, events))) = journal::recover(&path) {
                self.emit_window(&meta, None, start, &events, true, None)?;
            }
            let _ = fs::remove_file(&path);
        }
        self.ship_pending(|_| true, false)?;
        Ok(())
    }

    fn sync_journals(&self) {
        for m in lock(&self.models).iter() {
            lock(&m.state).active.sync();
        }
    }
}

fn closer_loop(weak: Weak<Inner>, signal: Arc<Signal>) {
    let mut last_sync = Instant::now();
    loop {
        let tick = {
            let Some(inner) = weak.upgrade() else { return };
            if inner.shutdown.load(Ordering::SeqCst) {
                return;
            }
            inner.close_all(false);
            if last_sync.elapsed() >= Duration::from_secs(1) {
                inner.sync_journals();
                last_sync = Instant::now();
            }
            (inner.config.window / 4).clamp(Duration::from_millis(25), Duration::from_secs(1))
        };
        signal.wait(tick);
    }
}

#[cfg(test)]
mod error_kind_tests {
    use super::ErrorKind;

    /// The string table journals were written with before `ErrorKind`:
    /// code = 1 + index. Old journals must read back the same kinds.
    const OLD_TABLE: [&str; 9] = [
        "invalid_input",
        "unsupported_media",
        "decode",
        "inference",
        "guest_config",
        "timeout",
        "resource_limit",
        "trap",
        "other",
    ];

    #[test]
    fn codes_read_like_the_old_string_table() {
        for (i, name) in OLD_TABLE.iter().enumerate() {
            let k = ErrorKind::from_code(1 + i as u8);
            assert_eq!(k.name(), *name);
            assert_eq!(ErrorKind::from_name(name), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{name}\""));
        }
        assert_eq!(ErrorKind::from_code(200), ErrorKind::Other);
        assert_eq!(ErrorKind::from_name("gremlins"), ErrorKind::Other);
    }
}
