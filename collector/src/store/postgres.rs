//! The PostgreSQL store, for fleets that outgrow one machine: several
//! server replicas share one database. A pool of synchronous connections
//! (the server calls the store on tokio's blocking pool).
//!
//! What must happen once across replicas is decided inside PostgreSQL:
//! publishing takes a per-channel advisory transaction lock, conditional
//! updates (`WHERE state = 'active'`) let only one replica halt a rollout,
//! and unique keys make ingest and enrolment idempotent under races.

use super::{device_tags, fleet_device, label_fits, DeviceInfo, DeviceModel, ModelVersionInfo};
use super::{
    filter, i, json, migrate, parse, parse_reason, parse_rollout, parse_source, u, Arg, Decision,
    Enrolment, FleetStore, Publish, Query, RolloutDecision, StoreError, StoredRelease,
    StoredSample, StoredWindow, TelemetryStore,
};
use super::{
    AuditEntry, AuditHead, AuditRow, AuditStore, NewAuditEntry, OutcomeSummary, StoredOutcome,
    OUTCOME_COLUMNS, SAMPLE_LABEL,
};
use edgeml_client::wire::fleet::{FleetDevice, StatusReport};
use edgeml_fleet::{Release, Tags};
use edgeml_telemetry::wire::{Batch, IngestResponse, ModelRef, RecordBody};
use postgres::types::ToSql;
use postgres::{NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;
use std::time::Duration;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Serialises schema migrations of replicas starting together
/// (`pg_advisory_lock` key: "edgeml" in ASCII).
const MIGRATION_LOCK: i64 = 0x6564_6765_6d6c;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Database(format!("{} ({})", db.message(), db.code().code())),
            None => StoreError::Database(e.to_string()),
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Database(format!("no PostgreSQL connection: {e}"))
    }
}

/// The PostgreSQL store (`edgeml-server --db postgres://…`).
pub struct PgStore {
    // Always `Some` until dropped (see `Drop`).
    pool: Option<Pool>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a synchronous postgres connection blocks on its own
        // runtime, which panics on a tokio worker thread, and the server's
        // state is dropped on one when it shuts down: close them elsewhere.
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new()
                .name("edgeml-pg-close".into())
                .spawn(move || drop(pool))
                .map(|t| t.join());
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Whether a failed transaction may simply be run again: a serialization
/// failure or a deadlock that PostgreSQL broke by aborting this side.
fn retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

fn text(a: &Arg) -> &(dyn ToSql + Sync) {
    match a {
        Arg::Text(t) => t,
        Arg::Int(n) => n,
    }
}

/// `$n`, PostgreSQL's placeholder.
fn dollar(n: usize) -> String {
    format!("${n}")
}

impl PgStore {
    /// Connect to `url` (`postgres://user[:password]@host[:port]/database`,
    /// or the key=value form), create the schema or bring it up to date.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("bad PostgreSQL URL: {e}")))?;
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(PostgresConnectionManager::new(config, NoTls))?;
        let store = PgStore { pool: Some(pool) };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let table = conn
            .query_one(
                "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
                &[],
            )?
            .try_get::<_, bool>(0)?;
        // An empty history (an interrupted first run) counts as none.
        let history = table
            && conn
                .query_one("SELECT EXISTS (SELECT 1 FROM refinery_schema_history)", &[])?
                .try_get::<_, bool>(0)?;
        let result = migrate::run(
            &mut *conn,
            migrate::postgres(),
            migrate::Found {
                history,
                legacy: None,
            },
        );
        conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
        result
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        match &self.pool {
            Some(pool) => Ok(pool.get()?),
            None => Err(StoreError::Database("the store is closed".into())),
        }
    }

    /// Run `f` in a transaction, again (up to three times) when PostgreSQL
    /// aborted it to break a deadlock or a serialization conflict.
    fn transaction<T>(
        &self,
        mut f: impl FnMut(&mut postgres::Transaction<'_>) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = (|| {
                let mut tx = conn.transaction()?;
                let v = f(&mut tx)?;
                tx.commit()?;
                Ok(v)
            })();
            match outcome {
                Ok(v) => return Ok(v),
                Err(TxError::Pg(e)) if attempt < 3 && retryable(&e) => continue,
                Err(TxError::Pg(e)) => return Err(e.into()),
                Err(TxError::Store(e)) => return Err(e),
            }
        }
    }

    fn releases(&self, channel: Option<&str>) -> Result<Vec<StoredRelease>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT c.channel, r.version, r.envelope, r.release, r.published_ms, c.state, c.reason,
                    c.previous_version, c.started_ms, c.evidence_from_ms, c.step, c.step_started_ms
             FROM fleet_channels c JOIN fleet_releases r ON r.channel = c.channel
             WHERE r.seq = (SELECT MAX(seq) FROM fleet_releases WHERE channel = c.channel)
               AND ($1::text IS NULL OR c.channel = $1)
             ORDER BY c.channel COLLATE \"C\"",
            &[&channel],
        )?;
        rows.iter()
            .map(|r| {
                Ok(StoredRelease {
                    channel: r.try_get(0)?,
                    version: u(r.try_get(1)?),
                    envelope: r.try_get(2)?,
                    release: parse(r.try_get(3)?)?,
                    published_ms: u(r.try_get(4)?),
                    state: parse_rollout(r.try_get(5)?)?,
                    reason: r.try_get(6)?,
                    previous_version: r.try_get(7)?,
                    started_ms: u(r.try_get(8)?),
                    evidence_from_ms: u(r.try_get(9)?),
                    step: u32::try_from(r.try_get::<_, i64>(10)?).unwrap_or(0),
                    step_started_ms: u(r.try_get(11)?),
                })
            })
            .collect()
    }

    /// The schema version in use (the newest migration applied).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let v: Option<i32> = self
            .conn()?
            .query_one("SELECT MAX(version) FROM refinery_schema_history", &[])?
            .try_get(0)?;
        Ok(v.unwrap_or(0).max(0) as u32)
    }
}

/// A failure inside [`PgStore::transaction`]: PostgreSQL's own (maybe
/// worth a retry) or ours.
enum TxError {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for TxError {
    fn from(e: postgres::Error) -> Self {
        TxError::Pg(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

fn model_ref(r: &Row, at: usize) -> Result<ModelRef, postgres::Error> {
    Ok(ModelRef {
        name: r.try_get(at)?,
        version: r.try_get(at + 1)?,
        digest: r.try_get(at + 2)?,
    })
}

/// Keep a prediction's label; a later one replaces it (a correction).
const OUTCOME_UPSERT: &str =
    "INSERT INTO outcomes (device_id, prediction_id, name, version, digest,
        predicted_ms, prediction, score, label, labelled_ms, source, value)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     ON CONFLICT (device_id, prediction_id) DO UPDATE SET label = excluded.label,
        labelled_ms = excluded.labelled_ms, source = excluded.source
     WHERE excluded.labelled_ms >= outcomes.labelled_ms";

impl TelemetryStore for PgStore {
    fn ingest(&self, batch: &Batch, now_ms: u64) -> Result<IngestResponse, StoreError> {
        let now = i(now_ms);
        let dev = batch.device_id.as_str();
        self.transaction(|tx| {
            let (mut accepted, mut duplicates) = (0, 0);
            for r in &batch.records {
                let kind = match &r.body {
                    RecordBody::Model(_) => "model",
                    RecordBody::Window(_) => "window",
                    RecordBody::Sample(_) => "sample",
                RecordBody::Outcome(_) => "outcome",
                };
                let new = tx.execute(
                    "INSERT INTO records (id, device_id, kind, received_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO NOTHING",
                    &[&r.id, &dev, &kind, &now],
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
                             VALUES ($1, $2, $3, $4, $5, $6, $7)
                             ON CONFLICT (name, version, digest) DO UPDATE SET baseline = COALESCE(models.baseline, excluded.baseline)",
                            &[
                                &m.model.name,
                                &m.model.version,
                                &m.model.digest,
                                &json(&m.monitoring_features)?,
                                &json(&m.labels)?,
                                &m.baseline.as_ref().map(json).transpose()?,
                                &now,
                            ],
                        )?;
                        touch_model(tx, dev, &m.model, now)?;
                    }
                    RecordBody::Window(w) => {
                        tx.execute(
                            "INSERT INTO windows (record_id, device_id, name, version, digest, start_ms, end_ms, count,
                               errors, latency_us, numeric, categorical, drifted, recovered, binned,
                               confidence_sum, scored)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                            &[
                                &r.id,
                                &dev,
                                &w.model.name,
                                &w.model.version,
                                &w.model.digest,
                                &i(w.start_ms),
                                &i(w.end_ms),
                                &i(w.count),
                                &json(&w.errors)?,
                                &w.latency_us,
                                &json(&w.numeric)?,
                                &json(&w.categorical)?,
                                &w.drifted,
                                &w.recovered,
                                &json(&w.binned)?,
                                &w.confidence_sum,
                                &i(w.scored),
                            ],
                        )?;
                        touch_model(tx, dev, &w.model, now)?;
                    }
                    RecordBody::Sample(s) => {
                        tx.execute(
                            "INSERT INTO samples (record_id, device_id, name, version, digest, at_ms, reason, prediction, input, prediction_id, value)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                            &[
                                &r.id,
                                &dev,
                                &s.model.name,
                                &s.model.version,
                                &s.model.digest,
                                &i(s.at_ms),
                                &s.reason.as_str(),
                                &s.prediction,
                                &json(&s.input)?,
                                &s.prediction_id,
                                &s.value,
                            ],
                        )?;
                    }
                    RecordBody::Outcome(o) => {
                        tx.execute(
                            OUTCOME_UPSERT,
                            &[
                                &dev,
                                &o.prediction_id,
                                &o.model.name,
                                &o.model.version,
                                &o.model.digest,
                                &i(o.predicted_ms),
                                &o.prediction,
                                &o.score.map(f64::from),
                                &o.label,
                                &i(o.labelled_ms),
                                &"device",
                                &o.value,
                            ],
                        )?;
                    }
                }
            }
            tx.execute(
                "UPDATE devices SET last_seen_ms = $2, pending_records = $3,
                    dropped_records = GREATEST(dropped_records, $4) WHERE id = $1",
                &[
                    &dev,
                    &now,
                    &i(batch.spool.pending_records),
                    &i(batch.spool.dropped_records),
                ],
            )?;
            Ok(IngestResponse {
                accepted,
                duplicates,
            })
        })
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let mut conn = self.conn()?;
        let rows = conn.query(
            "SELECT id, public_key, enrolled_ms, last_seen_ms, pending_records, dropped_records
             FROM devices ORDER BY id COLLATE \"C\"",
            &[],
        )?;
        let mut devices = rows
            .iter()
            .map(|r| {
                Ok(DeviceInfo {
                    device_id: r.try_get(0)?,
                    public_key: hex::encode(r.try_get::<_, Vec<u8>>(1)?),
                    enrolled_ms: u(r.try_get(2)?),
                    last_seen_ms: r.try_get::<_, Option<i64>>(3)?.map(u),
                    pending_records: u(r.try_get(4)?),
                    dropped_records: u(r.try_get(5)?),
                    models: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        let stmt = conn.prepare(
            "SELECT name, version, digest, last_seen_ms FROM device_models WHERE device_id = $1
             ORDER BY name COLLATE \"C\", version COLLATE \"C\"",
        )?;
        for d in &mut devices {
            d.models = conn
                .query(&stmt, &[&d.device_id])?
                .iter()
                .map(|r| {
                    Ok(DeviceModel {
                        model: model_ref(r, 0)?,
                        last_seen_ms: u(r.try_get(3)?),
                    })
                })
                .collect::<Result<Vec<_>, postgres::Error>>()?;
        }
        Ok(devices)
    }

    fn models(&self) -> Result<Vec<ModelVersionInfo>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT m.name, m.version, m.digest, m.monitoring_features, m.labels, m.baseline, m.first_seen_ms,
                    (SELECT COUNT(DISTINCT device_id) FROM device_models d
                      WHERE d.name = m.name AND d.version = m.version AND d.digest = m.digest)
             FROM models m ORDER BY m.name COLLATE \"C\", m.version COLLATE \"C\", m.digest COLLATE \"C\"",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ModelVersionInfo {
                    model: model_ref(r, 0)?,
                    monitoring_features: parse(r.try_get(3)?)?,
                    labels: parse(r.try_get(4)?)?,
                    baseline: r.try_get::<_, Option<&str>>(5)?.map(parse).transpose()?,
                    first_seen_ms: u(r.try_get(6)?),
                    devices: u(r.try_get(7)?),
                })
            })
            .collect()
    }

    fn windows(&self, q: &Query) -> Result<Vec<StoredWindow>, StoreError> {
        let (cond, args) = filter(q, "start_ms", dollar);
        let params: Vec<_> = args.iter().map(text).collect();
        let rows = self.conn()?.query(
            &format!(
                "SELECT record_id, device_id, name, version, digest, start_ms, end_ms, count, errors,
                        latency_us, numeric, categorical, binned, confidence_sum, scored
                 FROM windows{cond} ORDER BY start_ms, record_id COLLATE \"C\""
            ),
            &params,
        )?;
        rows.iter()
            .map(|r| {
                Ok(StoredWindow {
                    id: r.try_get(0)?,
                    device_id: r.try_get(1)?,
                    model: model_ref(r, 2)?,
                    start_ms: u(r.try_get(5)?),
                    end_ms: u(r.try_get(6)?),
                    count: u(r.try_get(7)?),
                    errors: parse(r.try_get(8)?)?,
                    latency_us: r.try_get(9)?,
                    numeric: parse(r.try_get(10)?)?,
                    categorical: parse(r.try_get(11)?)?,
                    binned: parse(r.try_get(12)?)?,
                    confidence_sum: r.try_get(13)?,
                    scored: u(r.try_get(14)?),
                })
            })
            .collect()
    }

    fn samples(&self, q: &Query) -> Result<Vec<StoredSample>, StoreError> {
        let (cond, args) = filter(q, "at_ms", dollar);
        let params: Vec<_> = args.iter().map(text).collect();
        let rows = self.conn()?.query(
            &format!(
                "SELECT record_id, device_id, name, version, digest, at_ms, reason, prediction, input,
                    prediction_id, {SAMPLE_LABEL}
                 FROM samples{cond} ORDER BY at_ms, record_id COLLATE \"C\""
            ),
            &params,
        )?;
        rows.iter()
            .map(|r| {
                Ok(StoredSample {
                    id: r.try_get(0)?,
                    device_id: r.try_get(1)?,
                    model: model_ref(r, 2)?,
                    at_ms: u(r.try_get(5)?),
                    reason: parse_reason(r.try_get(6)?)?,
                    prediction: r.try_get(7)?,
                    input: parse(r.try_get(8)?)?,
                    prediction_id: r.try_get(9)?,
                    label: r.try_get(10)?,
                })
            })
            .collect()
    }

    fn outcome_summary(&self, q: &Query) -> Result<OutcomeSummary, StoreError> {
        let (cond, args) = filter(q, "predicted_ms", dollar);
        let params: Vec<_> = args.iter().map(text).collect();
        let mut conn = self.conn()?;
        let devices = conn
            .query(
                &format!(
                    "SELECT device_id, COUNT(*), SUM(CASE WHEN prediction = label THEN 1 ELSE 0 END)::BIGINT
                     FROM outcomes{cond} GROUP BY device_id ORDER BY device_id COLLATE \"C\""
                ),
                &params,
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, u(r.try_get(1)?), u(r.try_get(2)?))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let calibration = conn
            .query(
                &format!(
                    "SELECT LEAST(FLOOR(score * 10)::INT, 9) AS bin, COUNT(*),
                        SUM(CASE WHEN prediction = label THEN 1 ELSE 0 END)::BIGINT, SUM(score)
                     FROM outcomes{cond} AND score >= 0 AND score <= 1 GROUP BY bin ORDER BY bin"
                ),
                &params,
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, i32>(0)?.clamp(0, 9) as u8,
                    u(r.try_get(1)?),
                    u(r.try_get(2)?),
                    r.try_get(3)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(OutcomeSummary {
            devices,
            calibration,
        })
    }

    fn label_samples(
        &self,
        labels: &[(String, String)],
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        self.transaction(|tx| {
            let find = tx.prepare(
                "SELECT device_id, name, version, digest, at_ms, prediction, value FROM samples
                 WHERE prediction_id = $1",
            )?;
            let put = tx.prepare(OUTCOME_UPSERT)?;
            let mut unmatched = Vec::new();
            for (pid, label) in labels {
                let rows = tx.query(&find, &[pid])?;
                let values = rows
                    .iter()
                    .map(|r| r.try_get::<_, Option<f64>>(6))
                    .collect::<Result<Vec<_>, _>>()?;
                if rows.is_empty() || values.iter().any(|v| !label_fits(label, *v)) {
                    unmatched.push(pid.clone());
                    continue;
                }
                for (r, value) in rows.iter().zip(values) {
                    let (dev, name, version, digest, at_ms, prediction): (
                        String,
                        String,
                        String,
                        String,
                        i64,
                        Option<String>,
                    ) = (
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                        r.try_get(5)?,
                    );
                    tx.execute(
                        &put,
                        &[
                            &dev,
                            pid,
                            &name,
                            &version,
                            &digest,
                            &at_ms,
                            &prediction,
                            &None::<f64>,
                            label,
                            &i(now_ms),
                            &"batch",
                            &value,
                        ],
                    )?;
                }
            }
            Ok(unmatched)
        })
    }

    fn outcomes(&self, q: &Query) -> Result<Vec<StoredOutcome>, StoreError> {
        let (cond, args) = filter(q, "predicted_ms", dollar);
        let params: Vec<_> = args.iter().map(text).collect();
        let rows = self.conn()?.query(
            &format!(
                "SELECT {OUTCOME_COLUMNS} FROM outcomes{cond}
                 ORDER BY predicted_ms, device_id COLLATE \"C\", prediction_id COLLATE \"C\""
            ),
            &params,
        )?;
        rows.iter()
            .map(|r| {
                Ok(StoredOutcome {
                    device_id: r.try_get(0)?,
                    prediction_id: r.try_get(1)?,
                    model: model_ref(r, 2)?,
                    predicted_ms: u(r.try_get(5)?),
                    prediction: r.try_get(6)?,
                    score: r.try_get::<_, Option<f64>>(7)?.map(|v| v as f32),
                    label: r.try_get(8)?,
                    labelled_ms: u(r.try_get(9)?),
                    source: r.try_get(10)?,
                    value: r.try_get(11)?,
                })
            })
            .collect()
    }
}

fn audit_row(r: &Row) -> Result<AuditRow, postgres::Error> {
    Ok(AuditRow {
        seq: r.try_get(0)?,
        at_ms: r.try_get(1)?,
        actor: r.try_get(2)?,
        operator: r.try_get(3)?,
        action: r.try_get(4)?,
        target: r.try_get(5)?,
        key_ids: r.try_get(6)?,
        details: r.try_get(7)?,
        prev: r.try_get(8)?,
        hash: r.try_get(9)?,
    })
}

/// Append `entry` after the head, and move the head, in `tx`.
fn append_in(
    tx: &mut postgres::Transaction<'_>,
    entry: &NewAuditEntry,
    now_ms: u64,
) -> Result<AuditEntry, TxError> {
    // The head row's lock orders appends from every replica.
    let r = tx.query_one(
        "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        &[],
    )?;
    let head = AuditHead {
        seq: u(r.try_get(0)?),
        hash: r.try_get(1)?,
    };
    let e = entry.after(&head, now_ms);
    tx.execute(
        &format!(
            "INSERT INTO audit_log ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            AuditRow::COLUMNS
        ),
        &[
            &i(e.seq),
            &i(e.at_ms),
            &e.actor,
            &e.operator,
            &e.action,
            &e.target,
            &json(&e.key_ids)?,
            &json(&e.details)?,
            &e.prev,
            &e.hash,
        ],
    )?;
    tx.execute(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[&i(e.seq), &e.hash],
    )?;
    Ok(e)
}

impl AuditStore for PgStore {
    fn append_audit(&self, entry: &NewAuditEntry, now_ms: u64) -> Result<AuditEntry, StoreError> {
        self.transaction(|tx| append_in(tx, entry, now_ms))
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self.conn()?.query(
            &format!(
                "SELECT {} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                AuditRow::COLUMNS
            ),
            &[&i(after), &i(limit as u64)],
        )?;
        rows.iter().map(|r| audit_row(r)?.entry()).collect()
    }

    fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let r = self
            .conn()?
            .query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])?;
        Ok(AuditHead {
            seq: u(r.try_get(0)?),
            hash: r.try_get(1)?,
        })
    }
}

impl FleetStore for PgStore {
    fn enrol(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
    ) -> Result<Enrolment, StoreError> {
        let mut conn = self.conn()?;
        let new = conn.execute(
            "INSERT INTO devices (id, public_key, enrolled_ms) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
            &[&device_id, &&public_key[..], &i(now_ms)],
        )?;
        if new > 0 {
            return Ok(Enrolment::Created);
        }
        let existing: Vec<u8> = conn
            .query_one(
                "SELECT public_key FROM devices WHERE id = $1",
                &[&device_id],
            )?
            .try_get(0)?;
        Ok(if existing == public_key {
            Enrolment::AlreadyEnrolled
        } else {
            Enrolment::Conflict
        })
    }

    fn device_key(&self, device_id: &str) -> Result<Option<[u8; 32]>, StoreError> {
        let row = self.conn()?.query_opt(
            "SELECT public_key FROM devices WHERE id = $1",
            &[&device_id],
        )?;
        row.map(|r| {
            let k: Vec<u8> = r.try_get(0)?;
            k.try_into()
                .map_err(|_| StoreError::Corrupt(format!("key of device {device_id}")))
        })
        .transpose()
    }

    fn put_root(&self, version: u64, envelope: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO fleet_roots (version, envelope, published_ms) VALUES ($1, $2, $3)",
            &[&i(version), &envelope, &i(now_ms)],
        )?;
        Ok(())
    }

    fn root(&self, version: Option<u64>) -> Result<Option<(u64, String)>, StoreError> {
        let mut conn = self.conn()?;
        let row = match version {
            Some(v) => conn.query_opt(
                "SELECT version, envelope FROM fleet_roots WHERE version = $1",
                &[&i(v)],
            )?,
            None => conn.query_opt(
                "SELECT version, envelope FROM fleet_roots ORDER BY version DESC LIMIT 1",
                &[],
            )?,
        };
        Ok(match row {
            Some(r) => Some((u(r.try_get(0)?), r.try_get(1)?)),
            None => None,
        })
    }

    fn put_release(
        &self,
        release: &Release,
        envelope: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.transaction(|tx| {
            lock_channel(tx, &release.channel)?;
            insert_release(tx, release, envelope, now_ms)
        })
    }

    fn publish_release(
        &self,
        release: &Release,
        envelope: &str,
        now_ms: u64,
        after: Option<u64>,
        audit: Option<&NewAuditEntry>,
    ) -> Result<Publish, StoreError> {
        self.transaction(|tx| {
            // Replicas publishing to one channel take turns: the check
            // below and the insert see the same latest release.
            lock_channel(tx, &release.channel)?;
            let latest = tx.query_opt(
                "SELECT version FROM fleet_releases WHERE channel = $1 ORDER BY seq DESC LIMIT 1",
                &[&release.channel],
            )?;
            let latest: Option<i64> = latest.map(|r| r.try_get(0)).transpose()?;
            if latest.map(u) != after {
                return Ok(Publish::Changed);
            }
            let taken = tx.query_opt(
                "SELECT 1 FROM fleet_releases WHERE channel = $1 AND version = $2",
                &[&release.channel, &i(release.version)],
            )?;
            if taken.is_some() {
                return Ok(Publish::VersionTaken);
            }
            insert_release(tx, release, envelope, now_ms)?;
            if let Some(entry) = audit {
                append_in(tx, entry, now_ms)?;
            }
            Ok(Publish::Published)
        })
    }

    fn release(&self, channel: &str) -> Result<Option<StoredRelease>, StoreError> {
        Ok(self.releases(Some(channel))?.pop())
    }

    fn channels(&self) -> Result<Vec<StoredRelease>, StoreError> {
        self.releases(None)
    }

    fn decide(
        &self,
        seen: &StoredRelease,
        decision: &Decision,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let model_version = seen.release.model_version.to_string();
        let now = i(now_ms);
        self.transaction(|tx| {
            // Under READ COMMITTED a concurrent decision that committed
            // first makes this row fail the WHERE on re-check: one wins.
            let n = tx.execute(
                "UPDATE fleet_channels SET state = $2,
                reason = CASE WHEN $2 = 'active' THEN NULL ELSE $3 END, updated_ms = $4,
                    evidence_from_ms = CASE WHEN $2 = 'active' AND $6 <> 'active' THEN $4 ELSE evidence_from_ms END,
                    step = COALESCE($9::bigint, step),
                    step_started_ms = CASE WHEN $9::bigint IS NULL THEN step_started_ms ELSE $4 END
                 WHERE channel = $1 AND model_version = $5 AND state = $6 AND started_ms = $7
                   AND evidence_from_ms = $8 AND step = $10",
                &[
                    &seen.channel,
                    &decision.to.name(),
                    &decision.reason,
                    &now,
                    &model_version,
                    &seen.state.name(),
                    &i(seen.started_ms),
                    &i(seen.evidence_from_ms),
                    &decision.step.map(i64::from),
                    &i64::from(seen.step),
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO fleet_decisions (channel, model_version, from_state, to_state, source, reason, replica, at_ms, step)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &seen.channel,
                    &model_version,
                    &seen.state.name(),
                    &decision.to.name(),
                    &decision.source.name(),
                    &decision.reason,
                    &decision.replica,
                    &now,
                    &decision.step.map(i64::from),
                ],
            )?;
            if let Some(entry) = &decision.audit {
                append_in(tx, entry, now_ms)?;
            }
            Ok(true)
        })
    }

    fn decisions(&self, channel: Option<&str>) -> Result<Vec<RolloutDecision>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT id, channel, model_version, from_state, to_state, source, reason, replica, at_ms, step
             FROM fleet_decisions WHERE ($1::text IS NULL OR channel = $1) ORDER BY id",
            &[&channel],
        )?;
        rows.iter()
            .map(|r| {
                Ok(RolloutDecision {
                    id: u(r.try_get(0)?),
                    channel: r.try_get(1)?,
                    model_version: r.try_get(2)?,
                    from: parse_rollout(r.try_get(3)?)?,
                    to: parse_rollout(r.try_get(4)?)?,
                    source: parse_source(r.try_get(5)?)?,
                    reason: r.try_get(6)?,
                    replica: r.try_get(7)?,
                    at_ms: u(r.try_get(8)?),
                    step: r
                        .try_get::<_, Option<i64>>(9)?
                        .and_then(|s| u32::try_from(s).ok()),
                })
            })
            .collect()
    }

    fn report(
        &self,
        device_id: &str,
        report: &StatusReport,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = i(now_ms);
        self.transaction(|tx| {
            let n = tx.execute(
                "INSERT INTO fleet_status (device_id, report, updated_ms, seq) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (device_id) DO UPDATE
                    SET report = excluded.report, updated_ms = excluded.updated_ms, seq = excluded.seq
                 WHERE excluded.seq > fleet_status.seq
                    -- agents before sequence numbers send none (0): accepted
                    -- until the device has sent a numbered report.
                    OR (excluded.seq = 0 AND fleet_status.seq = 0)",
                &[&device_id, &json(report)?, &now, &i(report.seq)],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE devices SET last_seen_ms = $2 WHERE id = $1",
                &[&device_id, &now],
            )?;
            Ok(true)
        })
    }

    fn record_offer(
        &self,
        channel: &str,
        sha256: &str,
        device_id: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO fleet_offers (channel, sha256, device_id, first_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&channel, &sha256, &device_id, &i(now_ms)],
        )?;
        Ok(())
    }

    fn offered(&self, channel: &str, sha256: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT device_id FROM fleet_offers WHERE channel = $1 AND sha256 = $2
             ORDER BY device_id COLLATE \"C\"",
            &[&channel, &sha256],
        )?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    fn add_rollback(
        &self,
        channel: &str,
        sha256: &str,
        device_id: &str,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO fleet_rollbacks (channel, sha256, device_id, at_ms, reason) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&channel, &sha256, &device_id, &i(now_ms), &reason],
        )?;
        Ok(())
    }

    fn rollbacks(
        &self,
        channel: &str,
        sha256: &str,
        from_ms: u64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT device_id, reason FROM fleet_rollbacks
             WHERE channel = $1 AND sha256 = $2 AND at_ms >= $3
             ORDER BY at_ms, device_id COLLATE \"C\"",
            &[&channel, &sha256, &i(from_ms)],
        )?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, postgres::Error>>()?)
    }

    fn fleet_devices(&self) -> Result<Vec<FleetDevice>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT s.device_id, s.report, s.updated_ms, t.tags FROM fleet_status s
             LEFT JOIN device_tags t ON t.device_id = s.device_id
             ORDER BY s.device_id COLLATE \"C\"",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                fleet_device(
                    r.try_get(0)?,
                    u(r.try_get(2)?),
                    r.try_get(1)?,
                    r.try_get(3)?,
                )
            })
            .collect()
    }

    fn set_device_tags(
        &self,
        device_id: &str,
        tags: &Tags,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self.conn()?.execute(
            "INSERT INTO device_tags (device_id, tags, updated_ms)
             SELECT id, $2, $3 FROM devices WHERE id = $1
             ON CONFLICT (device_id) DO UPDATE SET tags = excluded.tags, updated_ms = excluded.updated_ms",
            &[&device_id, &json(tags)?, &i(now_ms)],
        )?;
        Ok(n > 0)
    }

    fn device_tags(&self, device_id: &str) -> Result<Tags, StoreError> {
        let row = self.conn()?.query_one(
            "SELECT (SELECT report FROM fleet_status WHERE device_id = $1),
                    (SELECT tags FROM device_tags WHERE device_id = $1)",
            &[&device_id],
        )?;
        device_tags(row.try_get(0)?, row.try_get(1)?)
    }
}

/// Hold the channel's publish lock until the transaction ends.
fn lock_channel(tx: &mut postgres::Transaction<'_>, channel: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('edgeml publish ' || $1, 0))",
        &[&channel],
    )?;
    Ok(())
}

/// Insert a release and start (or keep) the channel's rollout, in `tx`.
fn insert_release(
    tx: &mut postgres::Transaction<'_>,
    release: &Release,
    envelope: &str,
    now_ms: u64,
) -> Result<(), TxError> {
    let now = i(now_ms);
    tx.execute(
        "INSERT INTO fleet_releases (channel, version, envelope, release, published_ms) VALUES ($1, $2, $3, $4, $5)",
        &[&release.channel, &i(release.version), &envelope, &json(release)?, &now],
    )?;
    let current: Option<String> = tx
        .query_opt(
            "SELECT model_version FROM fleet_channels WHERE channel = $1",
            &[&release.channel],
        )?
        .map(|r| r.try_get(0))
        .transpose()?;
    let version = release.model_version.to_string();
    match current {
        None => {
            tx.execute(
                "INSERT INTO fleet_channels (channel, model_version, state, started_ms, updated_ms, evidence_from_ms, step, step_started_ms)
                 VALUES ($1, $2, 'active', $3, $3, $3, 0, $3)",
                &[&release.channel, &version, &now],
            )?;
        }
        Some(old) if old != version => {
            tx.execute(
                "UPDATE fleet_channels SET model_version = $2, state = 'active', reason = NULL,
                    previous_version = $3, started_ms = $4, updated_ms = $4, evidence_from_ms = $4,
                    step = 0, step_started_ms = $4
                 WHERE channel = $1",
                &[&release.channel, &version, &old, &now],
            )?;
        }
        Some(_) => {
            tx.execute(
                "UPDATE fleet_channels SET updated_ms = $2 WHERE channel = $1",
                &[&release.channel, &now],
            )?;
        }
    }
    Ok(())
}

fn touch_model(
    tx: &mut postgres::Transaction<'_>,
    dev: &str,
    m: &ModelRef,
    now: i64,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO device_models (device_id, name, version, digest, last_seen_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (device_id, name, version, digest) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
        &[&dev, &m.name, &m.version, &m.digest, &now],
    )?;
    Ok(())
}
