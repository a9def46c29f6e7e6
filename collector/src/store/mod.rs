//! Storage behind the server, one trait per concern:
//!
//! - [`TelemetryStore`]: telemetry batches (windows, sketches, samples) and
//!   what they say about devices and models;
//! - [`FleetStore`]: device identities, roots, releases, rollouts, status;
//! - [`BlobStore`](crate::blobs::BlobStore): bundle and artifact bytes (a
//!   directory by default).
//!
//! [`Store`] is both database traits, as one database implements them:
//! [`SqliteStore`] (one file, the embedded default) and [`PgStore`]
//! (PostgreSQL, for replicas). [`open`] picks one from a `--db` value.
//! Each backend's schema is versioned SQL in `collector/migrations/<backend>`,
//! applied by refinery; a database made before refinery (schema 1 to 4 in
//! `schema_migrations`) is adopted in place.

mod migrate;
mod postgres;
mod sqlite;

pub use self::postgres::PgStore;
pub use self::sqlite::SqliteStore;

pub use edgeml_client::wire::audit::{AuditEntry, AuditHead};
use edgeml_client::wire::fleet::{ChannelStatus, FleetDevice, RolloutState, StatusReport};
pub use edgeml_client::wire::fleet::{DecisionSource, RolloutDecision};
pub use edgeml_client::wire::telemetry::{DeviceInfo, DeviceModel, ModelVersionInfo};
use edgeml_fleet::{Release, Tags};
use edgeml_telemetry::wire::{Batch, IngestResponse, ModelRef, SampleInput, SampleReason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(String),
    /// The database was written by a newer collector.
    #[error("the database has schema version {found}, newer than this collector's {supported}; run a newer edgeml")]
    TooNew {
        /// Version in the file.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// A stored value does not parse (the file was edited or damaged).
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A schema migration failed (the database is left at the last
    /// migration that completed).
    #[error("migrating the database schema: {0}")]
    Migration(String),
    /// Blob storage failed.
    #[error("blob storage: {0}")]
    Blob(String),
    /// The `--db` value names no database this server can open.
    #[error("unsupported database `{0}`: give a SQLite file path or a postgres:// URL")]
    Unsupported(String),
}

/// What enrolling a device did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolment {
    /// A new device.
    Created,
    /// The same device and key again.
    AlreadyEnrolled,
    /// The id is taken by another key.
    Conflict,
}

/// Filter for windows and samples. Times are Unix milliseconds; `from`
/// is inclusive and `to` exclusive.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Query {
    /// Model name.
    pub model: Option<String>,
    /// Model version.
    pub version: Option<String>,
    /// Device id.
    pub device: Option<String>,
    /// Window start or sample time at or after this.
    pub from_ms: Option<u64>,
    /// ... and before this.
    pub to_ms: Option<u64>,
}

/// A stored window.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWindow {
    /// Record id.
    pub id: String,
    /// Device.
    pub device_id: String,
    /// Model.
    pub model: ModelRef,
    /// Start (ms).
    pub start_ms: u64,
    /// End (ms).
    pub end_ms: u64,
    /// Predictions.
    pub count: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency sketch (base64).
    pub latency_us: String,
    /// Numeric feature sketches (base64).
    pub numeric: BTreeMap<String, String>,
    /// Counts on the baseline's quantile grid (base64, see
    /// [`edgeml_telemetry::GridCounts`]).
    pub binned: BTreeMap<String, String>,
    /// Categorical counts.
    pub categorical: BTreeMap<String, BTreeMap<String, u64>>,
    /// Sum of the top scores that are probabilities.
    pub confidence_sum: f64,
    /// Predictions in `confidence_sum`.
    pub scored: u64,
}

/// A stored sample.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    /// Record id.
    pub id: String,
    /// Device.
    pub device_id: String,
    /// Model.
    pub model: ModelRef,
    /// When (ms).
    pub at_ms: u64,
    /// Why it was kept.
    pub reason: SampleReason,
    /// Top label.
    pub prediction: Option<String>,
    /// The prediction's id (devices before 0.2 sent none).
    pub prediction_id: Option<String>,
    /// The true label, if one was given (see [`StoredOutcome`]).
    pub label: Option<String>,
    /// The input.
    pub input: SampleInput,
}

/// The true label of one prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOutcome {
    /// The device that predicted.
    pub device_id: String,
    /// The prediction's id.
    pub prediction_id: String,
    /// The model that predicted.
    pub model: ModelRef,
    /// When it predicted (ms).
    pub predicted_ms: u64,
    /// Its top label.
    pub prediction: Option<String>,
    /// The top label's score.
    pub score: Option<f32>,
    /// A regression's first output value.
    pub value: Option<f64>,
    /// The true label (or value).
    pub label: String,
    /// When the label was given (ms).
    pub labelled_ms: u64,
    /// `device` (the agent's feedback endpoint) or `batch` (an upload
    /// joined with a stored sample).
    pub source: String,
}

/// Labelled predictions summed up in the database (what the canary gate
/// reads each round instead of every outcome).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeSummary {
    /// Per device: (device id, labelled, right), by device id.
    pub devices: Vec<(String, u64, u64)>,
    /// The labelled predictions with a top score in [0, 1], in ten bins
    /// of that score: (bin 0..=9, count, right, sum of scores).
    pub calibration: Vec<(u8, u64, u64, f64)>,
}

/// Telemetry: idempotent ingest of signed batches, and what they say about
/// devices, models, windows and samples. Methods block; the server calls
/// them on tokio's blocking pool.
pub trait TelemetryStore: Send + Sync + 'static {
    /// Store a batch atomically; records already stored are counted as duplicates.
    fn ingest(&self, batch: &Batch, now_ms: u64) -> Result<IngestResponse, StoreError>;
    /// All devices, with their spool backlog and the models they ran.
    fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError>;
    /// All model versions.
    fn models(&self) -> Result<Vec<ModelVersionInfo>, StoreError>;
    /// Windows matching `q`, oldest first.
    fn windows(&self, q: &Query) -> Result<Vec<StoredWindow>, StoreError>;
    /// Samples matching `q`, oldest first.
    fn samples(&self, q: &Query) -> Result<Vec<StoredSample>, StoreError>;
    /// Labelled predictions matching `q` (by prediction time), oldest first.
    fn outcomes(&self, q: &Query) -> Result<Vec<StoredOutcome>, StoreError>;
    /// The labelled predictions matching `q`, counted per device and per
    /// score bin by the database.
    fn outcome_summary(&self, q: &Query) -> Result<OutcomeSummary, StoreError>;
    /// Give true labels to stored samples by prediction id (an upload):
    /// each label that names a stored sample's prediction becomes its
    /// outcome (source `batch`; a regression's keeps the sample's output
    /// value, for its error), in one transaction. Returns the ids that
    /// matched no sample, or gave a regression's sample a label that is not
    /// a number.
    fn label_samples(
        &self,
        labels: &[(String, String)],
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError>;
}

/// The fleet: device identities, roots, releases and their rollouts,
/// device status and rollout evidence. Methods block; the server calls
/// them on tokio's blocking pool. Every method is safe to call from several
/// server replicas on one database at once.
pub trait FleetStore: Send + Sync + 'static {
    /// Enrol a device with its public key.
    fn enrol(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
    ) -> Result<Enrolment, StoreError>;
    /// A device's public key.
    fn device_key(&self, device_id: &str) -> Result<Option<[u8; 32]>, StoreError>;
    /// Store a root version (the caller has verified it against the previous one).
    fn put_root(&self, version: u64, envelope: &str, now_ms: u64) -> Result<(), StoreError>;
    /// A root version, or the newest with `None`.
    fn root(&self, version: Option<u64>) -> Result<Option<(u64, String)>, StoreError>;
    /// Store verified release metadata. A new model version starts a new
    /// rollout (state active, the channel's previous model version kept
    /// for the canary comparison); the same version keeps the rollout's state.
    fn put_release(&self, release: &Release, envelope: &str, now_ms: u64)
        -> Result<(), StoreError>;
    /// Publish release metadata only if the channel's latest release is
    /// still the one with metadata version `after` (`None`: the channel is
    /// empty), in one transaction with the check: two publishes racing
    /// cannot both pass the server's version checks.
    /// `audit`, when given, is appended in the same transaction.
    fn publish_release(
        &self,
        release: &Release,
        envelope: &str,
        now_ms: u64,
        after: Option<u64>,
        audit: Option<&NewAuditEntry>,
    ) -> Result<Publish, StoreError>;
    /// A channel's newest release and rollout state.
    fn release(&self, channel: &str) -> Result<Option<StoredRelease>, StoreError>;
    /// Every channel's newest release and rollout state.
    fn channels(&self) -> Result<Vec<StoredRelease>, StoreError>;
    /// Change a channel's rollout state, once: only while the rollout is
    /// still as `seen` describes it (the same model version's rollout, in
    /// the same state and evidence window), recording the decision in the
    /// same transaction. False, and nothing written, when it changed since
    /// (another replica or an operator decided first) or there is no such
    /// channel. Resuming starts a fresh evidence window.
    fn decide(
        &self,
        seen: &StoredRelease,
        decision: &Decision,
        now_ms: u64,
    ) -> Result<bool, StoreError>;
    /// The decisions taken on a channel's rollouts (every channel's with
    /// `None`), oldest first.
    fn decisions(&self, channel: Option<&str>) -> Result<Vec<RolloutDecision>, StoreError>;
    /// Keep a device's latest status report. False (and nothing stored)
    /// when its sequence number is not above the last one accepted from
    /// the device: a replay.
    fn report(
        &self,
        device_id: &str,
        report: &StatusReport,
        now_ms: u64,
    ) -> Result<bool, StoreError>;
    /// Record that a channel's bundle was served to a device in its
    /// rollout (first time kept).
    fn record_offer(
        &self,
        channel: &str,
        sha256: &str,
        device_id: &str,
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// The devices a channel's bundle was served to.
    fn offered(&self, channel: &str, sha256: &str) -> Result<Vec<String>, StoreError>;
    /// Record a device's rollback of a channel's bundle (once per device
    /// and bundle; the first time is kept).
    fn add_rollback(
        &self,
        channel: &str,
        sha256: &str,
        device_id: &str,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// Devices that rolled back a channel's bundle at or after `from_ms`,
    /// with their reasons, first first.
    fn rollbacks(
        &self,
        channel: &str,
        sha256: &str,
        from_ms: u64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError>;
    /// Every device that has reported, with its latest report and tags.
    fn fleet_devices(&self) -> Result<Vec<FleetDevice>, StoreError>;
    /// Set the tags an admin gives an enrolled device (replacing those
    /// set before). False, and nothing stored, for a device not enrolled.
    fn set_device_tags(
        &self,
        device_id: &str,
        tags: &Tags,
        now_ms: u64,
    ) -> Result<bool, StoreError>;
    /// A device's tags: those its latest report names, with those an admin
    /// set in their place (empty for a device never heard of).
    fn device_tags(&self, device_id: &str) -> Result<Tags, StoreError>;
}

/// Whether an uploaded label can be the truth of a sample: any label for a
/// classifier's sample; a finite number for a regression's (a sample with
/// an output value), whose error it then gives.
fn label_fits(label: &str, sample_value: Option<f64>) -> bool {
    sample_value.is_none() || label.trim().parse::<f64>().is_ok_and(f64::is_finite)
}

/// A device's tags from its stored report (JSON) and admin-set tags (JSON):
/// the admin's take the place of the device's own of the same keys.
fn device_tags(report: Option<&str>, admin: Option<&str>) -> Result<Tags, StoreError> {
    let mut tags = match report {
        Some(r) => parse::<StatusReport>(r)?.tags,
        None => Tags::new(),
    };
    if let Some(a) = admin {
        tags.extend(parse::<Tags>(a)?);
    }
    Ok(tags)
}

/// A fleet device from its stored row: report (JSON) and admin tags (JSON).
fn fleet_device(
    device_id: String,
    last_seen_ms: u64,
    report: &str,
    admin: Option<&str>,
) -> Result<FleetDevice, StoreError> {
    let status: StatusReport = parse(report)?;
    let admin_tags: Tags = admin.map(parse).transpose()?.unwrap_or_default();
    let mut tags = status.tags.clone();
    tags.extend(admin_tags.clone());
    Ok(FleetDevice {
        device_id,
        last_seen_ms,
        status,
        tags,
        admin_tags,
    })
}

/// An audit log entry to append: the store numbers, links and hashes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewAuditEntry {
    /// The credential that acted (`admin`, `enrolment`, `server`).
    pub actor: String,
    /// The name the caller claimed.
    pub operator: Option<String>,
    /// What was done.
    pub action: String,
    /// To what.
    pub target: String,
    /// Keys whose signatures were verified on what was pushed.
    pub key_ids: Vec<String>,
    /// What changed.
    pub details: BTreeMap<String, String>,
}

impl NewAuditEntry {
    /// The entry after `head`, hashed.
    fn after(&self, head: &AuditHead, now_ms: u64) -> AuditEntry {
        let mut e = AuditEntry {
            seq: head.seq + 1,
            at_ms: now_ms,
            actor: self.actor.clone(),
            operator: self.operator.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            key_ids: self.key_ids.clone(),
            details: self.details.clone(),
            prev: head.hash.clone(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }
}

/// The audit log: append-only and hash-chained (see
/// [`edgeml_client::wire::audit`]). Methods block; safe from several
/// replicas at once (appends are ordered by the head row's lock).
pub trait AuditStore: Send + Sync + 'static {
    /// Append an entry after the current head, moving the head in the same
    /// transaction.
    fn append_audit(&self, entry: &NewAuditEntry, now_ms: u64) -> Result<AuditEntry, StoreError>;
    /// Entries with `seq` above `after`, oldest first, at most `limit`.
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// The head recorded by the last append.
    fn audit_head(&self) -> Result<AuditHead, StoreError>;
}

/// A database for the whole server: every store in one.
pub trait Store: TelemetryStore + FleetStore + AuditStore {}

impl<T: TelemetryStore + FleetStore + AuditStore> Store for T {}

/// Open (creating and migrating as needed) the database a `--db` value
/// names: a `postgres://` or `postgresql://` URL, else a SQLite file path.
pub fn open(db: &str) -> Result<Arc<dyn Store>, StoreError> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(db)?))
    } else if db.contains("://") {
        Err(StoreError::Unsupported(db.to_string()))
    } else {
        Ok(Arc::new(SqliteStore::open(std::path::Path::new(db))?))
    }
}

/// What [`FleetStore::publish_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Stored; it is the channel's release now.
    Published,
    /// Another release was published since the caller looked: check again.
    Changed,
    /// The channel already has a release with this metadata version.
    VersionTaken,
}

/// A change of a rollout's state, as [`FleetStore::decide`] takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The state to move to.
    pub to: RolloutState,
    /// Who decides.
    pub source: DecisionSource,
    /// Why (kept as the rollout's reason while it is paused or halted).
    pub reason: Option<String>,
    /// The server replica deciding.
    pub replica: String,
    /// Its audit log entry, appended in the decision's transaction (both
    /// or neither are stored).
    pub audit: Option<NewAuditEntry>,
    /// Move a paced rollout to this step of its schedule (`None`: stay).
    pub step: Option<u32>,
}

/// A channel's newest release and the state of its rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRelease {
    /// The channel.
    pub channel: String,
    /// Release metadata version.
    pub version: u64,
    /// The signed envelope (JSON).
    pub envelope: String,
    /// The release.
    pub release: Release,
    /// When it was published (ms).
    pub published_ms: u64,
    /// The rollout's state.
    pub state: RolloutState,
    /// Why it is paused or halted.
    pub reason: Option<String>,
    /// The model version the channel carried before this rollout started.
    pub previous_version: Option<String>,
    /// When this model version's rollout started (ms).
    pub started_ms: u64,
    /// Where the rollout's evidence window starts (ms): its start, or the
    /// last resume. Rollbacks and telemetry before it do not count.
    pub evidence_from_ms: u64,
    /// The schedule step the rollout is at (0 without a schedule).
    pub step: u32,
    /// When it reached that step (ms).
    pub step_started_ms: u64,
}

impl StoredRelease {
    /// What the API shows of it (everything but the envelope).
    pub fn status(self) -> ChannelStatus {
        ChannelStatus {
            channel: self.channel,
            version: self.version,
            release: self.release,
            published_ms: self.published_ms,
            state: self.state,
            reason: self.reason,
            previous_version: self.previous_version,
            started_ms: self.started_ms,
            evidence_from_ms: self.evidence_from_ms,
            step: self.step,
            step_started_ms: self.step_started_ms,
        }
    }
}

fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// An audit row's columns, as stored (`key_ids` and `details` as JSON).
struct AuditRow {
    seq: i64,
    at_ms: i64,
    actor: String,
    operator: Option<String>,
    action: String,
    target: String,
    key_ids: String,
    details: String,
    prev: String,
    hash: String,
}

impl AuditRow {
    const COLUMNS: &'static str =
        "seq, at_ms, actor, operator, action, target, key_ids, details, prev, hash";

    /// The stored entry as it is: a row edited in the database keeps its
    /// old hash, which is how verification finds it.
    fn entry(self) -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            seq: u(self.seq),
            at_ms: u(self.at_ms),
            actor: self.actor,
            operator: self.operator,
            action: self.action,
            target: self.target,
            key_ids: parse(&self.key_ids)?,
            details: parse(&self.details)?,
            prev: self.prev,
            hash: self.hash,
        })
    }
}

/// A sample's true label, if it has one (a column of `samples` queries).
const SAMPLE_LABEL: &str = "(SELECT label FROM outcomes o
     WHERE o.device_id = samples.device_id AND o.prediction_id = samples.prediction_id)";

/// The columns an outcome query reads, in [`StoredOutcome`]'s order.
const OUTCOME_COLUMNS: &str = "device_id, prediction_id, name, version, digest, predicted_ms,
     prediction, score, label, labelled_ms, source, value";

fn parse_rollout(s: &str) -> Result<RolloutState, StoreError> {
    match s {
        "active" => Ok(RolloutState::Active),
        "paused" => Ok(RolloutState::Paused),
        "halted" => Ok(RolloutState::Halted),
        other => Err(StoreError::Corrupt(format!("rollout state `{other}`"))),
    }
}

fn parse_source(s: &str) -> Result<DecisionSource, StoreError> {
    match s {
        "canary" => Ok(DecisionSource::Canary),
        "rollbacks" => Ok(DecisionSource::Rollbacks),
        "operator" => Ok(DecisionSource::Operator),
        "pacer" => Ok(DecisionSource::Pacer),
        "abort" => Ok(DecisionSource::Abort),
        other => Err(StoreError::Corrupt(format!("decision source `{other}`"))),
    }
}

fn parse_reason(s: &str) -> Result<SampleReason, StoreError> {
    parse(&format!("\"{s}\""))
}

/// A stored integer (Unix ms, counts) as the `u64` it was written from.
fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// A `u64` as a database integer (saturating: times and counts stay far below).
fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// A value bound to a [`filter`] placeholder.
enum Arg {
    Text(String),
    Int(i64),
}

/// The `WHERE` clause for `q` over a table with `name`, `version`,
/// `device_id` and the time column `time_col`; `placeholder(n)` writes the
/// n-th (1-based) parameter in the backend's syntax.
fn filter(q: &Query, time_col: &str, placeholder: fn(usize) -> String) -> (String, Vec<Arg>) {
    let mut sql = String::from(" WHERE 1=1");
    let mut args = Vec::new();
    for (col, v) in [
        ("name", &q.model),
        ("version", &q.version),
        ("device_id", &q.device),
    ] {
        if let Some(v) = v {
            args.push(Arg::Text(v.clone()));
            sql += &format!(" AND {col} = {}", placeholder(args.len()));
        }
    }
    if let Some(f) = q.from_ms {
        args.push(Arg::Int(i(f)));
        sql += &format!(" AND {time_col} >= {}", placeholder(args.len()));
    }
    if let Some(t) = q.to_ms {
        args.push(Arg::Int(i(t)));
        sql += &format!(" AND {time_col} < {}", placeholder(args.len()));
    }
    (sql, args)
}
