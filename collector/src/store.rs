//! Storage behind the collector. Handlers only see the [`Store`] trait;
//! [`SqliteStore`] is the embedded default. A PostgreSQL store implements
//! the same trait (the SQL is plain and the migrations are numbered).

use edgeml_client::wire::fleet::{ChannelStatus, FleetDevice, RolloutState, StatusReport};
pub use edgeml_client::wire::telemetry::{DeviceInfo, DeviceModel, ModelVersionInfo};
use edgeml_fleet::Release;
use edgeml_telemetry::wire::{
    Batch, IngestResponse, ModelRef, RecordBody, SampleInput, SampleReason,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

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
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
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
    /// The input.
    pub input: SampleInput,
}

/// The collector's storage. Methods are blocking; handlers call them on
/// tokio's blocking pool.
pub trait Store: Send + Sync + 'static {
    /// Enrol a device with its public key.
    fn enrol(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
    ) -> Result<Enrolment, StoreError>;
    /// A device's public key.
    fn device_key(&self, device_id: &str) -> Result<Option<[u8; 32]>, StoreError>;
    /// Store a batch atomically; records already stored are counted as duplicates.
    fn ingest(&self, batch: &Batch, now_ms: u64) -> Result<IngestResponse, StoreError>;
    /// All devices.
    fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError>;
    /// All model versions.
    fn models(&self) -> Result<Vec<ModelVersionInfo>, StoreError>;
    /// Windows matching `q`, oldest first.
    fn windows(&self, q: &Query) -> Result<Vec<StoredWindow>, StoreError>;
    /// Samples matching `q`, oldest first.
    fn samples(&self, q: &Query) -> Result<Vec<StoredSample>, StoreError>;

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
    fn publish_release(
        &self,
        release: &Release,
        envelope: &str,
        now_ms: u64,
        after: Option<u64>,
    ) -> Result<Publish, StoreError>;
    /// A channel's newest release and rollout state.
    fn release(&self, channel: &str) -> Result<Option<StoredRelease>, StoreError>;
    /// Every channel's newest release and rollout state.
    fn channels(&self) -> Result<Vec<StoredRelease>, StoreError>;
    /// Pause, resume or halt a channel's rollout. False if there is no such channel.
    fn set_rollout(
        &self,
        channel: &str,
        state: RolloutState,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<bool, StoreError>;
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
    /// Every device that has reported, with its latest report.
    fn fleet_devices(&self) -> Result<Vec<FleetDevice>, StoreError>;
}

/// What [`Store::publish_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Stored; it is the channel's release now.
    Published,
    /// Another release was published since the caller looked: check again.
    Changed,
    /// The channel already has a release with this metadata version.
    VersionTaken,
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
        }
    }
}

/// Numbered schema migrations, applied in order, each once.
const MIGRATIONS: &[&str] = &[
    // 1: devices, idempotency, models, windows, samples.
    "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        public_key BLOB NOT NULL,
        enrolled_ms INTEGER NOT NULL,
        last_seen_ms INTEGER,
        pending_records INTEGER NOT NULL DEFAULT 0,
        dropped_records INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE records (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(id),
        kind TEXT NOT NULL,
        received_ms INTEGER NOT NULL
    );
    CREATE TABLE models (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        monitoring_features TEXT NOT NULL,
        labels TEXT NOT NULL,
        baseline TEXT,
        first_seen_ms INTEGER NOT NULL,
        PRIMARY KEY (name, version, digest)
    );
    CREATE TABLE device_models (
        device_id TEXT NOT NULL REFERENCES devices(id),
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, name, version, digest)
    );
    CREATE TABLE windows (
        record_id TEXT PRIMARY KEY REFERENCES records(id),
        device_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        count INTEGER NOT NULL,
        errors TEXT NOT NULL,
        latency_us TEXT NOT NULL,
        numeric TEXT NOT NULL,
        categorical TEXT NOT NULL,
        drifted INTEGER NOT NULL,
        recovered INTEGER NOT NULL
    );
    CREATE INDEX windows_by_model_time ON windows (name, version, start_ms);
    CREATE TABLE samples (
        record_id TEXT PRIMARY KEY REFERENCES records(id),
        device_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        prediction TEXT,
        input TEXT NOT NULL
    );
    CREATE INDEX samples_by_model_time ON samples (name, version, at_ms);",
    // 2: fleet: roots, releases, rollout state per channel, device status.
    "CREATE TABLE fleet_roots (
        version INTEGER PRIMARY KEY,
        envelope TEXT NOT NULL,
        published_ms INTEGER NOT NULL
    );
    CREATE TABLE fleet_releases (
        channel TEXT NOT NULL,
        version INTEGER NOT NULL,
        envelope TEXT NOT NULL,
        release TEXT NOT NULL,
        published_ms INTEGER NOT NULL,
        PRIMARY KEY (channel, version)
    );
    CREATE TABLE fleet_channels (
        channel TEXT PRIMARY KEY,
        model_version TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        previous_version TEXT,
        started_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE fleet_status (
        device_id TEXT PRIMARY KEY REFERENCES devices(id),
        report TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );",
    // 3: rollout evidence: which bundles were served to which device, one
    // rollback per device and bundle, the start of each rollout's evidence
    // window, and report sequence numbers.
    "CREATE TABLE fleet_offers (
        channel TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        device_id TEXT NOT NULL REFERENCES devices(id),
        first_ms INTEGER NOT NULL,
        PRIMARY KEY (channel, sha256, device_id)
    );
    CREATE TABLE fleet_rollbacks (
        channel TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        device_id TEXT NOT NULL REFERENCES devices(id),
        at_ms INTEGER NOT NULL,
        reason TEXT,
        PRIMARY KEY (channel, sha256, device_id)
    );
    ALTER TABLE fleet_channels ADD COLUMN evidence_from_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE fleet_status ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;",
    // 4: windows carry counts on the baseline's quantile grid for the
    // features a baseline covers (devices that bin, since migration 4).
    "ALTER TABLE windows ADD COLUMN binned TEXT NOT NULL DEFAULT '{}';",
];

/// The embedded SQLite store (one file, WAL mode).
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn rollout_str(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Active => "active",
        RolloutState::Paused => "paused",
        RolloutState::Halted => "halted",
    }
}

fn parse_rollout(s: &str) -> Result<RolloutState, StoreError> {
    match s {
        "active" => Ok(RolloutState::Active),
        "paused" => Ok(RolloutState::Paused),
        "halted" => Ok(RolloutState::Halted),
        other => Err(StoreError::Corrupt(format!("rollout state `{other}`"))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SqliteStore {
    /// Open or create the database and apply pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store (for tests and experiments).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
            [],
        )?;
        let current: u32 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        if current as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                found: current,
                supported: MIGRATIONS.len() as u32,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
                params![i as u32 + 1, edgeml_telemetry::now_ms() as i64],
            )?;
            tx.commit()?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn releases(&self, channel: Option<&str>) -> Result<Vec<StoredRelease>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT c.channel, r.version, r.envelope, r.release, r.published_ms, c.state, c.reason, c.previous_version, c.started_ms, c.evidence_from_ms
             FROM fleet_channels c JOIN fleet_releases r ON r.channel = c.channel
             WHERE r.rowid = (SELECT MAX(rowid) FROM fleet_releases WHERE channel = c.channel)
               AND (?1 IS NULL OR c.channel = ?1)
             ORDER BY c.channel",
        )?;
        let rows = stmt
            .query_map([channel], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(
                    channel,
                    version,
                    envelope,
                    release,
                    published,
                    state,
                    reason,
                    previous,
                    started,
                    evidence_from,
                )| {
                    Ok(StoredRelease {
                        channel,
                        version: version as u64,
                        envelope,
                        release: parse(&release)?,
                        published_ms: published as u64,
                        state: parse_rollout(&state)?,
                        reason,
                        previous_version: previous,
                        started_ms: started as u64,
                        evidence_from_ms: evidence_from as u64,
                    })
                },
            )
            .collect()
    }

    /// The schema version in use.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })?)
    }
}

fn filter(q: &Query, time_col: &str) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql = String::from(" WHERE 1=1");
    let mut args = Vec::new();
    for (col, v) in [
        ("name", &q.model),
        ("version", &q.version),
        ("device_id", &q.device),
    ] {
        if let Some(v) = v {
            sql += &format!(" AND {col} = ?");
            args.push(Value::Text(v.clone()));
        }
    }
    if let Some(f) = q.from_ms {
        sql += &format!(" AND {time_col} >= ?");
        args.push(Value::Integer(f.min(i64::MAX as u64) as i64));
    }
    if let Some(t) = q.to_ms {
        sql += &format!(" AND {time_col} < ?");
        args.push(Value::Integer(t.min(i64::MAX as u64) as i64));
    }
    (sql, args)
}

impl Store for SqliteStore {
    fn enrol(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
    ) -> Result<Enrolment, StoreError> {
        let conn = self.conn();
        let existing: Option<Vec<u8>> = conn
            .query_row(
                "SELECT public_key FROM devices WHERE id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match existing {
            Some(k) if k == public_key => Enrolment::AlreadyEnrolled,
            Some(_) => Enrolment::Conflict,
            None => {
                conn.execute(
                    "INSERT INTO devices (id, public_key, enrolled_ms) VALUES (?1, ?2, ?3)",
                    params![device_id, &public_key[..], now_ms as i64],
                )?;
                Enrolment::Created
            }
        })
    }

    fn device_key(&self, device_id: &str) -> Result<Option<[u8; 32]>, StoreError> {
        let k: Option<Vec<u8>> = self
            .conn()
            .query_row(
                "SELECT public_key FROM devices WHERE id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .optional()?;
        k.map(|k| {
            k.try_into()
                .map_err(|_| StoreError::Corrupt(format!("key of device {device_id}")))
        })
        .transpose()
    }

    fn ingest(&self, batch: &Batch, now_ms: u64) -> Result<IngestResponse, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let (mut accepted, mut duplicates) = (0, 0);
        let dev = batch.device_id.as_str();
        for r in &batch.records {
            let kind = match &r.body {
                RecordBody::Model(_) => "model",
                RecordBody::Window(_) => "window",
                RecordBody::Sample(_) => "sample",
            };
            let new = tx.execute(
                "INSERT OR IGNORE INTO records (id, device_id, kind, received_ms) VALUES (?1, ?2, ?3, ?4)",
                params![r.id, dev, kind, now_ms as i64],
            )?;
            if new == 0 {
                duplicates += 1;
                continue;
            }
            accepted += 1;
            match &r.body {
                RecordBody::Model(m) => {
                    tx.execute(
                        "INSERT INTO models (name, version, digest, monitoring_features, labels, baseline, first_seen_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (name, version, digest) DO UPDATE SET baseline = COALESCE(models.baseline, excluded.baseline)",
                        params![
                            m.model.name,
                            m.model.version,
                            m.model.digest,
                            json(&m.monitoring_features)?,
                            json(&m.labels)?,
                            m.baseline.as_ref().map(json).transpose()?,
                            now_ms as i64
                        ],
                    )?;
                    touch_model(&tx, dev, &m.model, now_ms)?;
                }
                RecordBody::Window(w) => {
                    tx.execute(
                        "INSERT INTO windows (record_id, device_id, name, version, digest, start_ms, end_ms, count,
                           errors, latency_us, numeric, categorical, drifted, recovered, binned)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                        params![
                            r.id,
                            dev,
                            w.model.name,
                            w.model.version,
                            w.model.digest,
                            w.start_ms as i64,
                            w.end_ms as i64,
                            w.count as i64,
                            json(&w.errors)?,
                            w.latency_us,
                            json(&w.numeric)?,
                            json(&w.categorical)?,
                            w.drifted,
                            w.recovered,
                            json(&w.binned)?
                        ],
                    )?;
                    touch_model(&tx, dev, &w.model, now_ms)?;
                }
                RecordBody::Sample(s) => {
                    tx.execute(
                        "INSERT INTO samples (record_id, device_id, name, version, digest, at_ms, reason, prediction, input)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![
                            r.id,
                            dev,
                            s.model.name,
                            s.model.version,
                            s.model.digest,
                            s.at_ms as i64,
                            s.reason.as_str(),
                            s.prediction,
                            json(&s.input)?
                        ],
                    )?;
                }
            }
        }
        tx.execute(
            "UPDATE devices SET last_seen_ms = ?2, pending_records = ?3, dropped_records = MAX(dropped_records, ?4) WHERE id = ?1",
            params![
                dev,
                now_ms as i64,
                batch.spool.pending_records as i64,
                batch.spool.dropped_records as i64
            ],
        )?;
        tx.commit()?;
        Ok(IngestResponse {
            accepted,
            duplicates,
        })
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, public_key, enrolled_ms, last_seen_ms, pending_records, dropped_records FROM devices ORDER BY id",
        )?;
        let mut devices = stmt
            .query_map([], |r| {
                Ok(DeviceInfo {
                    device_id: r.get(0)?,
                    public_key: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    enrolled_ms: r.get::<_, i64>(2)? as u64,
                    last_seen_ms: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    pending_records: r.get::<_, i64>(4)? as u64,
                    dropped_records: r.get::<_, i64>(5)? as u64,
                    models: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT name, version, digest, last_seen_ms FROM device_models WHERE device_id = ?1 ORDER BY name, version",
        )?;
        for d in &mut devices {
            d.models = stmt
                .query_map([&d.device_id], |r| {
                    Ok(DeviceModel {
                        model: ModelRef {
                            name: r.get(0)?,
                            version: r.get(1)?,
                            digest: r.get(2)?,
                        },
                        last_seen_ms: r.get::<_, i64>(3)? as u64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(devices)
    }

    fn models(&self) -> Result<Vec<ModelVersionInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT m.name, m.version, m.digest, m.monitoring_features, m.labels, m.baseline, m.first_seen_ms,
                    (SELECT COUNT(DISTINCT device_id) FROM device_models d
                      WHERE d.name = m.name AND d.version = m.version AND d.digest = m.digest)
             FROM models m ORDER BY m.name, m.version, m.digest",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    ModelRef {
                        name: r.get(0)?,
                        version: r.get(1)?,
                        digest: r.get(2)?,
                    },
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(model, features, labels, baseline, first, devices)| {
                Ok(ModelVersionInfo {
                    model,
                    monitoring_features: parse(&features)?,
                    labels: parse(&labels)?,
                    baseline: baseline.as_deref().map(parse).transpose()?,
                    devices: devices as u64,
                    first_seen_ms: first as u64,
                })
            })
            .collect()
    }

    fn windows(&self, q: &Query) -> Result<Vec<StoredWindow>, StoreError> {
        let (cond, args) = filter(q, "start_ms");
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT record_id, device_id, name, version, digest, start_ms, end_ms, count, errors, latency_us, numeric, categorical, binned
             FROM windows{cond} ORDER BY start_ms, record_id"
        ))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    ModelRef {
                        name: r.get(2)?,
                        version: r.get(3)?,
                        digest: r.get(4)?,
                    },
                    r.get::<_, i64>(5)? as u64,
                    r.get::<_, i64>(6)? as u64,
                    r.get::<_, i64>(7)? as u64,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, String>(10)?,
                    r.get::<_, String>(11)?,
                    r.get::<_, String>(12)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(
                    id,
                    device_id,
                    model,
                    start_ms,
                    end_ms,
                    count,
                    errors,
                    latency_us,
                    numeric,
                    categorical,
                    binned,
                )| {
                    Ok(StoredWindow {
                        id,
                        device_id,
                        model,
                        start_ms,
                        end_ms,
                        count,
                        errors: parse(&errors)?,
                        latency_us,
                        numeric: parse(&numeric)?,
                        binned: parse(&binned)?,
                        categorical: parse(&categorical)?,
                    })
                },
            )
            .collect()
    }

    fn samples(&self, q: &Query) -> Result<Vec<StoredSample>, StoreError> {
        let (cond, args) = filter(q, "at_ms");
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT record_id, device_id, name, version, digest, at_ms, reason, prediction, input
             FROM samples{cond} ORDER BY at_ms, record_id"
        ))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    ModelRef {
                        name: r.get(2)?,
                        version: r.get(3)?,
                        digest: r.get(4)?,
                    },
                    r.get::<_, i64>(5)? as u64,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, String>(8)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, device_id, model, at_ms, reason, prediction, input)| {
                Ok(StoredSample {
                    id,
                    device_id,
                    model,
                    at_ms,
                    reason: parse(&format!("\"{reason}\""))?,
                    prediction,
                    input: parse(&input)?,
                })
            })
            .collect()
    }

    fn put_root(&self, version: u64, envelope: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO fleet_roots (version, envelope, published_ms) VALUES (?1, ?2, ?3)",
            params![version as i64, envelope, now_ms as i64],
        )?;
        Ok(())
    }

    fn root(&self, version: Option<u64>) -> Result<Option<(u64, String)>, StoreError> {
        let conn = self.conn();
        let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?));
        Ok(match version {
            Some(v) => conn
                .query_row(
                    "SELECT version, envelope FROM fleet_roots WHERE version = ?1",
                    [v as i64],
                    row,
                )
                .optional()?,
            None => conn
                .query_row(
                    "SELECT version, envelope FROM fleet_roots ORDER BY version DESC LIMIT 1",
                    [],
                    row,
                )
                .optional()?,
        })
    }

    fn put_release(
        &self,
        release: &Release,
        envelope: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_release(&tx, release, envelope, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    fn publish_release(
        &self,
        release: &Release,
        envelope: &str,
        now_ms: u64,
        after: Option<u64>,
    ) -> Result<Publish, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let latest: Option<i64> = tx
            .query_row(
                "SELECT version FROM fleet_releases WHERE channel = ?1 ORDER BY rowid DESC LIMIT 1",
                [&release.channel],
                |r| r.get(0),
            )
            .optional()?;
        if latest.map(|v| v as u64) != after {
            return Ok(Publish::Changed);
        }
        let taken: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM fleet_releases WHERE channel = ?1 AND version = ?2",
                params![release.channel, release.version as i64],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Ok(Publish::VersionTaken);
        }
        insert_release(&tx, release, envelope, now_ms)?;
        tx.commit()?;
        Ok(Publish::Published)
    }

    fn release(&self, channel: &str) -> Result<Option<StoredRelease>, StoreError> {
        Ok(self.releases(Some(channel))?.pop())
    }

    fn channels(&self) -> Result<Vec<StoredRelease>, StoreError> {
        self.releases(None)
    }

    fn set_rollout(
        &self,
        channel: &str,
        state: RolloutState,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        // Resuming starts a fresh evidence window.
        let n = self.conn().execute(
            "UPDATE fleet_channels SET state = ?2, reason = ?3, updated_ms = ?4,
                evidence_from_ms = CASE WHEN ?2 = 'active' THEN ?4 ELSE evidence_from_ms END
             WHERE channel = ?1",
            params![channel, rollout_str(state), reason, now_ms as i64],
        )?;
        Ok(n > 0)
    }

    fn report(
        &self,
        device_id: &str,
        report: &StatusReport,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let seq = report.seq.min(i64::MAX as u64) as i64;
        let n = conn.execute(
            "INSERT INTO fleet_status (device_id, report, updated_ms, seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device_id) DO UPDATE SET report = ?2, updated_ms = ?3, seq = ?4
             WHERE excluded.seq > fleet_status.seq
                -- agents before sequence numbers send none (0): accepted
                -- until the device has sent a numbered report.
                OR (excluded.seq = 0 AND fleet_status.seq = 0)",
            params![device_id, json(report)?, now_ms as i64, seq],
        )?;
        if n == 0 {
            return Ok(false);
        }
        conn.execute(
            "UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1",
            params![device_id, now_ms as i64],
        )?;
        Ok(true)
    }

    fn record_offer(
        &self,
        channel: &str,
        sha256: &str,
        device_id: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO fleet_offers (channel, sha256, device_id, first_ms) VALUES (?1, ?2, ?3, ?4)",
            params![channel, sha256, device_id, now_ms as i64],
        )?;
        Ok(())
    }

    fn offered(&self, channel: &str, sha256: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT device_id FROM fleet_offers WHERE channel = ?1 AND sha256 = ?2 ORDER BY device_id",
        )?;
        let rows = stmt
            .query_map([channel, sha256], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn add_rollback(
        &self,
        channel: &str,
        sha256: &str,
        device_id: &str,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO fleet_rollbacks (channel, sha256, device_id, at_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![channel, sha256, device_id, now_ms as i64, reason],
        )?;
        Ok(())
    }

    fn rollbacks(
        &self,
        channel: &str,
        sha256: &str,
        from_ms: u64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT device_id, reason FROM fleet_rollbacks
             WHERE channel = ?1 AND sha256 = ?2 AND at_ms >= ?3 ORDER BY at_ms, device_id",
        )?;
        let rows = stmt
            .query_map(
                params![channel, sha256, from_ms.min(i64::MAX as u64) as i64],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn fleet_devices(&self) -> Result<Vec<FleetDevice>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT device_id, report, updated_ms FROM fleet_status ORDER BY device_id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(device_id, report, at)| {
                Ok(FleetDevice {
                    device_id,
                    last_seen_ms: at as u64,
                    status: parse(&report)?,
                })
            })
            .collect()
    }
}

/// Insert a release and start (or keep) the channel's rollout, in `tx`.
fn insert_release(
    tx: &rusqlite::Transaction<'_>,
    release: &Release,
    envelope: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO fleet_releases (channel, version, envelope, release, published_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![release.channel, release.version as i64, envelope, json(release)?, now_ms as i64],
    )?;
    let current: Option<String> = tx
        .query_row(
            "SELECT model_version FROM fleet_channels WHERE channel = ?1",
            [&release.channel],
            |r| r.get(0),
        )
        .optional()?;
    let version = release.model_version.to_string();
    match current {
        None => {
            tx.execute(
                "INSERT INTO fleet_channels (channel, model_version, state, started_ms, updated_ms, evidence_from_ms) VALUES (?1, ?2, 'active', ?3, ?3, ?3)",
                params![release.channel, version, now_ms as i64],
            )?;
        }
        Some(old) if old != version => {
            tx.execute(
                "UPDATE fleet_channels SET model_version = ?2, state = 'active', reason = NULL, previous_version = ?3, started_ms = ?4, updated_ms = ?4, evidence_from_ms = ?4 WHERE channel = ?1",
                params![release.channel, version, old, now_ms as i64],
            )?;
        }
        Some(_) => {
            tx.execute(
                "UPDATE fleet_channels SET updated_ms = ?2 WHERE channel = ?1",
                params![release.channel, now_ms as i64],
            )?;
        }
    }
    Ok(())
}

fn touch_model(
    tx: &rusqlite::Transaction<'_>,
    dev: &str,
    m: &ModelRef,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO device_models (device_id, name, version, digest, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device_id, name, version, digest) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
        params![dev, m.name, m.version, m.digest, now_ms as i64],
    )?;
    Ok(())
}
