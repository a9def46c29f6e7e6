//! The embedded SQLite store: one file, WAL mode, one connection.

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
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

fn value(a: Arg) -> rusqlite::types::Value {
    match a {
        Arg::Text(t) => rusqlite::types::Value::Text(t),
        Arg::Int(n) => rusqlite::types::Value::Integer(n),
    }
}

/// The embedded SQLite store (one file, WAL mode).
pub struct SqliteStore {
    conn: Mutex<Connection>,
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
        let table = |conn: &Connection, name: &str| -> Result<bool, StoreError> {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        };
        let history = table(&conn, "refinery_schema_history")?
            && conn.query_row("SELECT COUNT(*) FROM refinery_schema_history", [], |r| {
                r.get::<_, i64>(0)
            })? > 0;
        let legacy = if !history && table(&conn, "schema_migrations")? {
            Some(conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get::<_, u32>(0),
            )?)
        } else {
            None
        };
        migrate::run(
            &mut migrate::SqliteConn(&mut conn),
            migrate::sqlite(),
            migrate::Found { history, legacy },
        )?;
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
            "SELECT c.channel, r.version, r.envelope, r.release, r.published_ms, c.state, c.reason, c.previous_version, c.started_ms, c.evidence_from_ms, c.step, c.step_started_ms
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
                    (r.get::<_, i64>(10)?, r.get::<_, i64>(11)?),
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
                    (step, step_started),
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
                        step: u32::try_from(step).unwrap_or(0),
                        step_started_ms: u(step_started),
                    })
                },
            )
            .collect()
    }

    /// The schema version in use (the newest migration applied).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(version), 0) FROM refinery_schema_history",
            [],
            |r| r.get(0),
        )?)
    }
}

/// Keep a prediction's label; a later one replaces it (a correction).
const OUTCOME_UPSERT: &str =
    "INSERT INTO outcomes (device_id, prediction_id, name, version, digest,
        predicted_ms, prediction, score, label, labelled_ms, source, value)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
     ON CONFLICT (device_id, prediction_id) DO UPDATE SET label = excluded.label,
        labelled_ms = excluded.labelled_ms, source = excluded.source
     WHERE excluded.labelled_ms >= outcomes.labelled_ms";

impl TelemetryStore for SqliteStore {
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
                RecordBody::Outcome(_) => "outcome",
            };
            let new = tx.execute(
                "INSERT OR IGNORE INTO records (id, device_id, kind, received_ms) VALUES (?1, ?2, ?3, ?4)",
                params![r.id, dev, kind, i(now_ms)],
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
                            i(now_ms)
                        ],
                    )?;
                    touch_model(&tx, dev, &m.model, now_ms)?;
                }
                RecordBody::Window(w) => {
                    tx.execute(
                        "INSERT INTO windows (record_id, device_id, name, version, digest, start_ms, end_ms, count,
                           errors, latency_us, numeric, categorical, drifted, recovered, binned,
                           confidence_sum, scored)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                        params![
                            r.id,
                            dev,
                            w.model.name,
                            w.model.version,
                            w.model.digest,
                            i(w.start_ms),
                            i(w.end_ms),
                            i(w.count),
                            json(&w.errors)?,
                            w.latency_us,
                            json(&w.numeric)?,
                            json(&w.categorical)?,
                            w.drifted,
                            w.recovered,
                            json(&w.binned)?,
                            w.confidence_sum,
                            i(w.scored)
                        ],
                    )?;
                    touch_model(&tx, dev, &w.model, now_ms)?;
                }
                RecordBody::Sample(s) => {
                    tx.execute(
                        "INSERT INTO samples (record_id, device_id, name, version, digest, at_ms, reason, prediction, input, prediction_id, value)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        params![
                            r.id,
                            dev,
                            s.model.name,
                            s.model.version,
                            s.model.digest,
                            i(s.at_ms),
                            s.reason.as_str(),
                            s.prediction,
                            json(&s.input)?,
                            s.prediction_id,
                            s.value
                        ],
                    )?;
                }
                RecordBody::Outcome(o) => {
                    tx.execute(
                        OUTCOME_UPSERT,
                        params![
                            dev,
                            o.prediction_id,
                            o.model.name,
                            o.model.version,
                            o.model.digest,
                            i(o.predicted_ms),
                            o.prediction,
                            o.score.map(f64::from),
                            o.label,
                            i(o.labelled_ms),
                            "device",
                            o.value
                        ],
                    )?;
                }
            }
        }
        tx.execute(
            "UPDATE devices SET last_seen_ms = ?2, pending_records = ?3, dropped_records = MAX(dropped_records, ?4) WHERE id = ?1",
            params![
                dev,
                i(now_ms),
                i(batch.spool.pending_records),
                i(batch.spool.dropped_records)
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
        let (cond, args) = filter(q, "start_ms", |_| "?".into());
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT record_id, device_id, name, version, digest, start_ms, end_ms, count, errors, latency_us, numeric, categorical, binned,
                confidence_sum, scored
             FROM windows{cond} ORDER BY start_ms, record_id"
        ))?;
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(args.into_iter().map(value)),
                |r| {
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
                        (r.get::<_, f64>(13)?, u(r.get::<_, i64>(14)?)),
                    ))
                },
            )?
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
                    (confidence_sum, scored),
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
                        confidence_sum,
                        scored,
                    })
                },
            )
            .collect()
    }

    fn samples(&self, q: &Query) -> Result<Vec<StoredSample>, StoreError> {
        let (cond, args) = filter(q, "at_ms", |_| "?".into());
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT record_id, device_id, name, version, digest, at_ms, reason, prediction, input,
                prediction_id, {SAMPLE_LABEL}
             FROM samples{cond} ORDER BY at_ms, record_id"
        ))?;
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(args.into_iter().map(value)),
                |r| {
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
                        (
                            r.get::<_, Option<String>>(9)?,
                            r.get::<_, Option<String>>(10)?,
                        ),
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(
                    id,
                    device_id,
                    model,
                    at_ms,
                    reason,
                    prediction,
                    input,
                    (prediction_id, label),
                )| {
                    Ok(StoredSample {
                        id,
                        device_id,
                        model,
                        at_ms,
                        reason: parse_reason(&reason)?,
                        prediction,
                        prediction_id,
                        label,
                        input: parse(&input)?,
                    })
                },
            )
            .collect()
    }

    fn outcome_summary(&self, q: &Query) -> Result<OutcomeSummary, StoreError> {
        let (cond, args) = filter(q, "predicted_ms", |_| "?".into());
        let args: Vec<_> = args.into_iter().map(value).collect();
        let conn = self.conn();
        let devices = conn
            .prepare(&format!(
                "SELECT device_id, COUNT(*), SUM(CASE WHEN prediction = label THEN 1 ELSE 0 END)
                 FROM outcomes{cond} GROUP BY device_id ORDER BY device_id"
            ))?
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok((r.get(0)?, u(r.get(1)?), u(r.get(2)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // CAST truncates: the floor of a score in [0, 1] times ten.
        let calibration = conn
            .prepare(&format!(
                "SELECT MIN(CAST(score * 10 AS INTEGER), 9) AS bin, COUNT(*),
                    SUM(CASE WHEN prediction = label THEN 1 ELSE 0 END), SUM(score)
                 FROM outcomes{cond} AND score >= 0 AND score <= 1 GROUP BY bin ORDER BY bin"
            ))?
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok((
                    r.get::<_, i64>(0)?.clamp(0, 9) as u8,
                    u(r.get(1)?),
                    u(r.get(2)?),
                    r.get(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
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
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut unmatched = Vec::new();
        {
            let mut find = tx.prepare(
                "SELECT device_id, name, version, digest, at_ms, prediction, value FROM samples
                 WHERE prediction_id = ?1",
            )?;
            let mut put = tx.prepare(OUTCOME_UPSERT)?;
            for (pid, label) in labels {
                let rows = find
                    .query_map([pid], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, Option<f64>>(6)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                if rows.is_empty() || rows.iter().any(|r| !label_fits(label, r.6)) {
                    unmatched.push(pid.clone());
                    continue;
                }
                for (dev, name, version, digest, at_ms, prediction, value) in rows {
                    put.execute(params![
                        dev,
                        pid,
                        name,
                        version,
                        digest,
                        at_ms,
                        prediction,
                        None::<f64>,
                        label,
                        i(now_ms),
                        "batch",
                        value
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(unmatched)
    }

    fn outcomes(&self, q: &Query) -> Result<Vec<StoredOutcome>, StoreError> {
        let (cond, args) = filter(q, "predicted_ms", |_| "?".into());
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {OUTCOME_COLUMNS} FROM outcomes{cond} ORDER BY predicted_ms, device_id, prediction_id"
        ))?;
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(args.into_iter().map(value)),
                |r| {
                    Ok(StoredOutcome {
                        device_id: r.get(0)?,
                        prediction_id: r.get(1)?,
                        model: ModelRef {
                            name: r.get(2)?,
                            version: r.get(3)?,
                            digest: r.get(4)?,
                        },
                        predicted_ms: u(r.get(5)?),
                        prediction: r.get(6)?,
                        score: r.get::<_, Option<f64>>(7)?.map(|v| v as f32),
                        label: r.get(8)?,
                        labelled_ms: u(r.get(9)?),
                        source: r.get(10)?,
                        value: r.get(11)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// Append `entry` after the head, and move the head, in `tx`.
fn append_in(
    tx: &rusqlite::Transaction<'_>,
    entry: &NewAuditEntry,
    now_ms: u64,
) -> Result<AuditEntry, StoreError> {
    let head = tx.query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
        Ok(AuditHead {
            seq: u(r.get(0)?),
            hash: r.get(1)?,
        })
    })?;
    let e = entry.after(&head, now_ms);
    tx.execute(
        &format!(
            "INSERT INTO audit_log ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            AuditRow::COLUMNS
        ),
        params![
            i(e.seq),
            i(e.at_ms),
            e.actor,
            e.operator,
            e.action,
            e.target,
            json(&e.key_ids)?,
            json(&e.details)?,
            e.prev,
            e.hash
        ],
    )?;
    tx.execute(
        "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1",
        params![i(e.seq), e.hash],
    )?;
    Ok(e)
}

impl AuditStore for SqliteStore {
    fn append_audit(&self, entry: &NewAuditEntry, now_ms: u64) -> Result<AuditEntry, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let e = append_in(&tx, entry, now_ms)?;
        tx.commit()?;
        Ok(e)
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            AuditRow::COLUMNS
        ))?;
        let rows = stmt
            .query_map(params![i(after), i(limit as u64)], |r| {
                Ok(AuditRow {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    operator: r.get(3)?,
                    action: r.get(4)?,
                    target: r.get(5)?,
                    key_ids: r.get(6)?,
                    details: r.get(7)?,
                    prev: r.get(8)?,
                    hash: r.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(AuditRow::entry).collect()
    }

    fn audit_head(&self) -> Result<AuditHead, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                Ok(AuditHead {
                    seq: u(r.get(0)?),
                    hash: r.get(1)?,
                })
            })?)
    }
}

impl FleetStore for SqliteStore {
    fn enrol(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
    ) -> Result<Enrolment, StoreError> {
        let conn = self.conn();
        let new = conn.execute(
            "INSERT INTO devices (id, public_key, enrolled_ms) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            params![device_id, &public_key[..], i(now_ms)],
        )?;
        if new > 0 {
            return Ok(Enrolment::Created);
        }
        let existing: Vec<u8> = conn.query_row(
            "SELECT public_key FROM devices WHERE id = ?1",
            [device_id],
            |r| r.get(0),
        )?;
        Ok(if existing == public_key {
            Enrolment::AlreadyEnrolled
        } else {
            Enrolment::Conflict
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

    fn put_root(&self, version: u64, envelope: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO fleet_roots (version, envelope, published_ms) VALUES (?1, ?2, ?3)",
            params![i(version), envelope, i(now_ms)],
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
                    [i(v)],
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
        audit: Option<&NewAuditEntry>,
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
                params![release.channel, i(release.version)],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Ok(Publish::VersionTaken);
        }
        insert_release(&tx, release, envelope, now_ms)?;
        if let Some(entry) = audit {
            append_in(&tx, entry, now_ms)?;
        }
        tx.commit()?;
        Ok(Publish::Published)
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
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let model_version = seen.release.model_version.to_string();
        let n = tx.execute(
            "UPDATE fleet_channels SET state = ?2,
                reason = CASE WHEN ?2 = 'active' THEN NULL ELSE ?3 END, updated_ms = ?4,
                evidence_from_ms = CASE WHEN ?2 = 'active' AND ?6 <> 'active' THEN ?4 ELSE evidence_from_ms END,
                step = COALESCE(?9, step),
                step_started_ms = CASE WHEN ?9 IS NULL THEN step_started_ms ELSE ?4 END
             WHERE channel = ?1 AND model_version = ?5 AND state = ?6 AND started_ms = ?7
               AND evidence_from_ms = ?8 AND step = ?10",
            params![
                seen.channel,
                decision.to.name(),
                decision.reason,
                i(now_ms),
                model_version,
                seen.state.name(),
                i(seen.started_ms),
                i(seen.evidence_from_ms),
                decision.step.map(i64::from),
                i64::from(seen.step)
            ],
        )?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO fleet_decisions (channel, model_version, from_state, to_state, source, reason, replica, at_ms, step)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                seen.channel,
                model_version,
                seen.state.name(),
                decision.to.name(),
                decision.source.name(),
                decision.reason,
                decision.replica,
                i(now_ms),
                decision.step.map(i64::from)
            ],
        )?;
        if let Some(entry) = &decision.audit {
            append_in(&tx, entry, now_ms)?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn decisions(&self, channel: Option<&str>) -> Result<Vec<RolloutDecision>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, channel, model_version, from_state, to_state, source, reason, replica, at_ms, step
             FROM fleet_decisions WHERE (?1 IS NULL OR channel = ?1) ORDER BY id",
        )?;
        let rows = stmt
            .query_map([channel], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                    (r.get::<_, i64>(8)?, r.get::<_, Option<i64>>(9)?),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(id, channel, model_version, from, to, source, reason, replica, (at, step))| {
                    Ok(RolloutDecision {
                        id: u(id),
                        channel,
                        model_version,
                        from: parse_rollout(&from)?,
                        to: parse_rollout(&to)?,
                        source: parse_source(&source)?,
                        reason,
                        replica,
                        at_ms: u(at),
                        step: step.and_then(|s| u32::try_from(s).ok()),
                    })
                },
            )
            .collect()
    }

    fn report(
        &self,
        device_id: &str,
        report: &StatusReport,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let seq = i(report.seq);
        let n = conn.execute(
            "INSERT INTO fleet_status (device_id, report, updated_ms, seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device_id) DO UPDATE SET report = ?2, updated_ms = ?3, seq = ?4
             WHERE excluded.seq > fleet_status.seq
                -- agents before sequence numbers send none (0): accepted
                -- until the device has sent a numbered report.
                OR (excluded.seq = 0 AND fleet_status.seq = 0)",
            params![device_id, json(report)?, i(now_ms), seq],
        )?;
        if n == 0 {
            return Ok(false);
        }
        conn.execute(
            "UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1",
            params![device_id, i(now_ms)],
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
            params![channel, sha256, device_id, i(now_ms)],
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
            params![channel, sha256, device_id, i(now_ms), reason],
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
            .query_map(params![channel, sha256, i(from_ms)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn fleet_devices(&self) -> Result<Vec<FleetDevice>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.device_id, s.report, s.updated_ms, t.tags FROM fleet_status s
                      LEFT JOIN device_tags t ON t.device_id = s.device_id ORDER BY s.device_id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(device_id, report, at, tags)| {
                fleet_device(device_id, u(at), &report, tags.as_deref())
            })
            .collect()
    }

    fn set_device_tags(
        &self,
        device_id: &str,
        tags: &Tags,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let known: Option<i64> = conn
            .query_row("SELECT 1 FROM devices WHERE id = ?1", [device_id], |r| {
                r.get(0)
            })
            .optional()?;
        if known.is_none() {
            return Ok(false);
        }
        conn.execute(
            "INSERT INTO device_tags (device_id, tags, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (device_id) DO UPDATE SET tags = ?2, updated_ms = ?3",
            params![device_id, json(tags)?, i(now_ms)],
        )?;
        Ok(true)
    }

    fn device_tags(&self, device_id: &str) -> Result<Tags, StoreError> {
        let conn = self.conn();
        let row: Option<(Option<String>, Option<String>)> = conn
            .query_row(
                "SELECT (SELECT report FROM fleet_status WHERE device_id = ?1),
                        (SELECT tags FROM device_tags WHERE device_id = ?1)",
                [device_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (report, admin) = row.unwrap_or_default();
        device_tags(report.as_deref(), admin.as_deref())
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
        params![release.channel, i(release.version), envelope, json(release)?, i(now_ms)],
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
                "INSERT INTO fleet_channels (channel, model_version, state, started_ms, updated_ms, evidence_from_ms, step, step_started_ms) VALUES (?1, ?2, 'active', ?3, ?3, ?3, 0, ?3)",
                params![release.channel, version, i(now_ms)],
            )?;
        }
        Some(old) if old != version => {
            tx.execute(
                "UPDATE fleet_channels SET model_version = ?2, state = 'active', reason = NULL, previous_version = ?3, started_ms = ?4, updated_ms = ?4, evidence_from_ms = ?4, step = 0, step_started_ms = ?4 WHERE channel = ?1",
                params![release.channel, version, old, i(now_ms)],
            )?;
        }
        Some(_) => {
            tx.execute(
                "UPDATE fleet_channels SET updated_ms = ?2 WHERE channel = ?1",
                params![release.channel, i(now_ms)],
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
        params![dev, m.name, m.version, m.digest, i(now_ms)],
    )?;
    Ok(())
}
