//! The server's databases: schema migrations (a database made by the
//! pre-refinery server upgrades in place; one from a newer server is
//! refused) and what several replicas on one database rely on (publishing,
//! enrolment and ingest racing from two store instances). Each test runs on
//! SQLite and on a real PostgreSQL (see `tests/db.rs`).

use crate::db::{Backend, TestDb};
use edgeml_client::wire::fleet::{DecisionSource, RolloutState};
use edgeml_collector::store::Decision;
use edgeml_collector::store::{
    AuditHead, AuditStore, Enrolment, FleetStore, PgStore, Publish, Query, SqliteStore, StoreError,
    TelemetryStore,
};
use edgeml_fleet::Release;
use edgeml_telemetry::wire::Batch;
use std::path::Path;
use std::sync::{Arc, Barrier};

/// Every backend this machine can run: SQLite always, PostgreSQL when it
/// is installed (in CI it must be).
fn databases(dir: &Path) -> Vec<TestDb> {
    let mut dbs = vec![TestDb::sqlite(dir)];
    dbs.extend(TestDb::postgres());
    dbs
}

fn release(version: u64, model_version: &str) -> Release {
    serde_json::from_value(serde_json::json!({
        "type": "release",
        "channel": "stable",
        "version": version,
        "expires": "2030-01-01T00:00:00Z",
        "model": "digits",
        "model_version": model_version,
        "bundle": { "sha256": "ab".repeat(32), "size": 1000 },
        "rollout_percent": 100.0,
    }))
    .expect("a release")
}

/// A batch of one model record, `windows` windows and one sample, with
/// record ids unique to `tag`.
fn batch(device: &str, tag: &str, windows: usize) -> Batch {
    let model =
        serde_json::json!({ "name": "digits", "version": "1.0.0", "digest": "cd".repeat(32) });
    let mut records = vec![serde_json::json!({
        "id": format!("{tag}m"), "type": "model", "model": model,
        "monitoring_features": ["pixel_mean"], "labels": ["0", "1"], "baseline": null,
    })];
    for w in 0..windows {
        records.push(serde_json::json!({
            "id": format!("{tag}w{w}"), "type": "window", "model": model,
            "start_ms": 1000 * w as u64, "end_ms": 1000 * (w as u64 + 1), "count": 10,
            "errors": { "shape": 1 }, "latency_us": "AAAA", "numeric": {}, "categorical": {},
            "drifted": w == 0,
        }));
    }
    records.push(serde_json::json!({
        "id": format!("{tag}s"), "type": "sample", "model": model, "at_ms": 500,
        "reason": "low_confidence", "prediction": "7",
        "input": { "kind": "tensors", "tensors": [] },
    }));
    serde_json::from_value(serde_json::json!({
        "device_id": device,
        "sent_ms": 1,
        "spool": { "pending_records": 3, "pending_bytes": 100, "dropped_records": 2 },
        "records": records,
    }))
    .expect("a batch")
}

fn decision(to: RolloutState, source: DecisionSource, reason: Option<&str>) -> Decision {
    Decision {
        to,
        source,
        reason: reason.map(String::from),
        replica: "test".into(),
        audit: None,
        step: None,
    }
}

#[test]
fn replicas_take_each_rollout_decision_once() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()) {
        let (a, b) = (db.open(), db.open());
        a.publish_release(&release(1, "1.0.0"), "{}", 10, None, None)
            .unwrap();
        a.publish_release(&release(2, "1.1.0"), "{}", 20, Some(1), None)
            .unwrap();
        // Both replicas' canary gates judged the same rollout bad.
        let seen = a.release("stable").unwrap().unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let decided: Vec<bool> = [(a.clone(), "replica-a"), (b.clone(), "replica-b")]
            .into_iter()
            .map(|(store, replica)| {
                let (barrier, seen) = (barrier.clone(), seen.clone());
                std::thread::spawn(move || {
                    let halt = Decision {
                        replica: replica.into(),
                        ..decision(
                            RolloutState::Halted,
                            DecisionSource::Canary,
                            Some("error rate"),
                        )
                    };
                    barrier.wait();
                    store.decide(&seen, &halt, 30).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(
            decided.iter().filter(|d| **d).count(),
            1,
            "{:?}: {decided:?}",
            db.backend
        );
        let log = b.decisions(None).unwrap();
        assert_eq!(log.len(), 1, "{:?}: {log:?}", db.backend);
        assert_eq!(
            (log[0].to, log[0].source),
            (RolloutState::Halted, DecisionSource::Canary)
        );
        assert_eq!(log[0].model_version, "1.1.0");
        let winner = if decided[0] { "replica-a" } else { "replica-b" };
        assert_eq!(log[0].replica, winner);
        // A late verdict on an earlier rollout of the channel does not halt
        // the next one.
        a.publish_release(&release(3, "1.2.0"), "{}", 40, Some(2), None)
            .unwrap();
        let halt = decision(RolloutState::Halted, DecisionSource::Canary, Some("late"));
        assert!(!b.decide(&seen, &halt, 50).unwrap());
        assert_eq!(
            b.release("stable").unwrap().unwrap().state,
            RolloutState::Active
        );
        assert_eq!(b.decisions(None).unwrap().len(), 1);
    }
}

#[test]
fn upgrades_database_made_before_refinery_in_place() {
    // collector/tests/fixtures/schema-v4.db was written by the server at
    // commit 14c6adf (schema version 4 in `schema_migrations`): a canary
    // that halted on the error rate of four telemetry agents.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    std::fs::copy(
        crate::common::repo().join("collector/tests/fixtures/schema-v4.db"),
        &db,
    )
    .unwrap();
    let store = SqliteStore::open(&db).expect("the old database opens and migrates");
    assert_eq!(store.schema_version().unwrap(), 9);
    // Migrations 5 to 8 ran on it: decisions, the audit log and outcomes are
    // recorded from now on.
    assert!(store.decisions(None).unwrap().is_empty());
    assert_eq!(store.audit_head().unwrap(), AuditHead::empty());
    let channel = store
        .release("stable")
        .unwrap()
        .expect("the channel survived");
    assert_eq!(channel.release.model_version.to_string(), "1.1.0");
    assert_eq!(channel.previous_version.as_deref(), Some("1.0.0"));
    assert_eq!(channel.state, RolloutState::Halted);
    assert!(channel.reason.unwrap().contains("error rate"));
    assert_eq!(store.fleet_devices().unwrap().len(), 4);
    assert_eq!(store.devices().unwrap().len(), 4);
    assert!(store.root(None).unwrap().is_some());
    let windows = store.windows(&Query::default()).unwrap();
    assert!(!windows.is_empty());
    assert!(windows.iter().any(|w| w.errors.values().sum::<u64>() > 0));
    assert_eq!(
        store
            .offered("stable", &channel.release.bundle.sha256)
            .unwrap()
            .len(),
        4
    );
    drop(store);
    // Again: nothing left to adopt or apply.
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.schema_version().unwrap(), 9);
    assert_eq!(store.fleet_devices().unwrap().len(), 4);
}

#[test]
fn refuses_database_from_newer_server() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()) {
        drop(db.open());
        let future = "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
                      VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')";
        let reopened = match db.backend {
            Backend::Sqlite => {
                rusqlite::Connection::open(&db.url)
                    .unwrap()
                    .execute(future, [])
                    .unwrap();
                SqliteStore::open(Path::new(&db.url)).map(drop)
            }
            Backend::Postgres => {
                postgres::Client::connect(&db.url, postgres::NoTls)
                    .unwrap()
                    .execute(future, &[])
                    .unwrap();
                PgStore::connect(&db.url).map(drop)
            }
        };
        assert!(
            matches!(
                reopened,
                Err(StoreError::TooNew {
                    found: 99,
                    supported: 9
                })
            ),
            "{:?}: {reopened:?}",
            db.backend
        );
    }
}

#[test]
fn replicas_append_to_one_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()) {
        let (a, b) = (db.open(), db.open());
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [("a", a.clone()), ("b", b.clone())]
            .into_iter()
            .map(|(replica, store)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    for n in 0..20 {
                        let entry = edgeml_collector::store::NewAuditEntry {
                            actor: "admin".into(),
                            action: "rollout.pause".into(),
                            target: format!("{replica}-{n}"),
                            ..Default::default()
                        };
                        store.append_audit(&entry, 1_000 + n).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let entries = a.audit(0, 1000).unwrap();
        assert_eq!(entries.len(), 40, "{:?}", db.backend);
        let head = b.audit_head().unwrap();
        assert_eq!(
            edgeml_client::wire::audit::verify_chain(&entries, Some(&head), None),
            Ok(head),
            "{:?}",
            db.backend
        );
        // Paging: after 10, at most 5.
        let page = b.audit(10, 5).unwrap();
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [11, 12, 13, 14, 15]
        );
    }
}

#[test]
fn replicas_publish_each_release_version_once() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()) {
        // Two store instances on one database, as two server replicas.
        let (a, b) = (db.open(), db.open());
        assert_eq!(
            a.publish_release(&release(1, "1.0.0"), "{}", 10, None, None)
                .unwrap(),
            Publish::Published
        );
        // Both checked the channel at version 1 and publish version 2 at once.
        let barrier = Arc::new(Barrier::new(2));
        let race: Vec<_> = [(a.clone(), "1.1.0"), (b.clone(), "1.2.0")]
            .into_iter()
            .map(|(store, v)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    store
                        .publish_release(&release(2, v), "{}", 20, Some(1), None)
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let published = race.iter().filter(|p| **p == Publish::Published).count();
        assert_eq!(published, 1, "{:?}: {race:?}", db.backend);
        assert!(
            race.iter()
                .any(|p| matches!(p, Publish::Changed | Publish::VersionTaken)),
            "{race:?}"
        );
        // The loser's view is stale now.
        assert_eq!(
            b.publish_release(&release(3, "1.3.0"), "{}", 30, Some(1), None)
                .unwrap(),
            Publish::Changed
        );
        let c = b.release("stable").unwrap().unwrap();
        assert_eq!(c.version, 2);
        assert_eq!(c.previous_version.as_deref(), Some("1.0.0"));
    }
}

#[test]
fn replicas_ingest_a_retried_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()) {
        let (a, b) = (db.open(), db.open());
        assert_eq!(a.enrol("gw-1", &[1; 32], 1).unwrap(), Enrolment::Created);
        assert_eq!(
            b.enrol("gw-1", &[1; 32], 2).unwrap(),
            Enrolment::AlreadyEnrolled
        );
        assert_eq!(b.enrol("gw-1", &[2; 32], 3).unwrap(), Enrolment::Conflict);
        // A device that timed out on one replica sends the same batch to the
        // other while the first is still storing it.
        let sent = batch("gw-1", "r1", 20);
        let barrier = Arc::new(Barrier::new(2));
        let replies: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|store| {
                let (barrier, sent) = (barrier.clone(), sent.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.ingest(&sent, 100).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let accepted: u64 = replies.iter().map(|r| r.accepted).sum();
        let duplicates: u64 = replies.iter().map(|r| r.duplicates).sum();
        assert_eq!(
            (accepted, duplicates),
            (22, 22),
            "{:?}: {replies:?}",
            db.backend
        );
        let q = Query::default();
        assert_eq!(a.windows(&q).unwrap().len(), 20);
        assert_eq!(b.samples(&q).unwrap().len(), 1);
        let devices = b.devices().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].pending_records, 3);
        assert_eq!(devices[0].dropped_records, 2);
        assert_eq!(devices[0].models.len(), 1);
        assert_eq!(a.models().unwrap()[0].devices, 1);
    }
}

#[test]
fn backends_agree_on_fleet_evidence() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()) {
        let s = db.open();
        for d in ["gw-b", "gw-a", "gw-10"] {
            s.enrol(d, &[3; 32], 1).unwrap();
        }
        s.publish_release(&release(1, "1.0.0"), "{}", 10, None, None)
            .unwrap();
        let sha = "ab".repeat(32);
        for d in ["gw-b", "gw-a", "gw-10", "gw-a"] {
            s.record_offer("stable", &sha, d, 20).unwrap();
        }
        assert_eq!(
            s.offered("stable", &sha).unwrap(),
            ["gw-10", "gw-a", "gw-b"]
        );
        s.add_rollback("stable", &sha, "gw-b", Some("self-test"), 30)
            .unwrap();
        s.add_rollback("stable", &sha, "gw-b", Some("again"), 40)
            .unwrap();
        s.add_rollback("stable", &sha, "gw-a", None, 30).unwrap();
        assert_eq!(
            s.rollbacks("stable", &sha, 0).unwrap(),
            [
                ("gw-a".to_string(), None),
                ("gw-b".to_string(), Some("self-test".to_string()))
            ]
        );
        assert!(s.rollbacks("stable", &sha, 31).unwrap().is_empty());
        let seen = s.release("stable").unwrap().unwrap();
        let pause = Decision {
            audit: Some(edgeml_collector::store::NewAuditEntry {
                actor: "admin".into(),
                action: "rollout.pause".into(),
                target: "stable".into(),
                ..Default::default()
            }),
            ..decision(RolloutState::Paused, DecisionSource::Operator, Some("ops"))
        };
        assert!(s.decide(&seen, &pause, 50).unwrap());
        // Decided on a view that is stale now: refused, nothing written,
        // not even its audit entry.
        assert!(!s.decide(&seen, &pause, 51).unwrap());
        let audit = s.audit(0, 10).unwrap();
        assert_eq!(
            audit
                .iter()
                .map(|e| (e.action.as_str(), e.at_ms))
                .collect::<Vec<_>>(),
            [("rollout.pause", 50)],
            "{:?}",
            db.backend
        );
        let c = s.release("stable").unwrap().unwrap();
        assert_eq!(
            (c.state, c.reason.as_deref(), c.evidence_from_ms),
            (RolloutState::Paused, Some("ops"), 10)
        );
        let resume = decision(RolloutState::Active, DecisionSource::Operator, None);
        assert!(s.decide(&c, &resume, 60).unwrap());
        let c = s.release("stable").unwrap().unwrap();
        assert_eq!(
            (c.state, c.reason, c.evidence_from_ms),
            (RolloutState::Active, None, 60)
        );
        let log = s.decisions(Some("stable")).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(
            (log[0].from, log[0].to, log[0].source, log[0].at_ms),
            (
                RolloutState::Active,
                RolloutState::Paused,
                DecisionSource::Operator,
                50
            )
        );
        assert_eq!(
            (log[1].from, log[1].to, log[1].at_ms),
            (RolloutState::Paused, RolloutState::Active, 60)
        );
        assert!(log[0].id < log[1].id);
        assert!(s.decisions(Some("other")).unwrap().is_empty());
        // Status reports: a replayed sequence number is refused.
        let mut report: edgeml_client::wire::fleet::StatusReport =
            serde_json::from_value(serde_json::json!({ "channel": "stable", "state": "idle", "root_version": 1, "seq": 5 }))
                .expect("a status report");
        assert!(s.report("gw-a", &report, 70).unwrap());
        assert!(!s.report("gw-a", &report, 71).unwrap());
        report.seq = 6;
        assert!(s.report("gw-a", &report, 72).unwrap());
        let fleet = s.fleet_devices().unwrap();
        assert_eq!(fleet.len(), 1);
        assert_eq!((fleet[0].status.seq, fleet[0].last_seen_ms), (6, 72));
        assert_eq!(s.device_key("gw-a").unwrap(), Some([3; 32]));
        assert_eq!(s.device_key("gw-z").unwrap(), None);
    }
}

#[test]
fn adopts_database_whose_first_adoption_was_interrupted() {
    // A crash after refinery made its (empty) history table but before it
    // recorded the adopted versions: the next start adopts again.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    std::fs::copy(
        crate::common::repo().join("collector/tests/fixtures/schema-v4.db"),
        &db,
    )
    .unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE refinery_schema_history (version INT4 PRIMARY KEY, name VARCHAR(255),
             applied_on VARCHAR(255), checksum VARCHAR(255))",
        )
        .unwrap();
    let store = SqliteStore::open(&db).expect("adopted and migrated");
    assert_eq!(store.schema_version().unwrap(), 9);
    assert_eq!(store.fleet_devices().unwrap().len(), 4);
}

#[test]
fn backends_agree_on_outcome_summary() {
    let dir = tempfile::tempdir().unwrap();
    let model =
        serde_json::json!({ "name": "digits", "version": "1.0.0", "digest": "cd".repeat(32) });
    // (device, prediction, label, score): scores on bin edges and a logit.
    let rows = [
        ("d1", "1", "1", 0.95),
        ("d1", "1", "0", 0.91),
        ("d1", "0", "0", 1.0),
        ("d2", "0", "0", 0.10),
        ("d2", "1", "0", 0.0),
        ("d2", "1", "1", 3.5),
    ];
    for db in databases(dir.path()) {
        let store = db.open();
        for device in ["d1", "d2"] {
            store.enrol(device, &[7; 32], 1).unwrap();
        }
        for (n, (device, prediction, label, score)) in rows.iter().enumerate() {
            let batch: Batch = serde_json::from_value(serde_json::json!({
                "device_id": device, "sent_ms": 1,
                "spool": { "pending_records": 0, "pending_bytes": 0, "dropped_records": 0 },
                "records": [{
                    "id": format!("o{n}"), "type": "outcome", "model": model,
                    "prediction_id": format!("p{n}"), "predicted_ms": 10 + n as u64,
                    "prediction": prediction, "score": score, "label": label, "labelled_ms": 100,
                }],
            }))
            .unwrap();
            store.ingest(&batch, 1_000).unwrap();
        }
        let s = store.outcome_summary(&Query::default()).unwrap();
        assert_eq!(
            s.devices,
            [("d1".to_string(), 3, 2), ("d2".to_string(), 3, 2)],
            "{:?}",
            db.backend
        );
        // 0.0 and 0.10 in bins 0 and 1; 0.91, 0.95 and 1.0 in bin 9; the
        // logit 3.5 in none.
        let bins: Vec<(u8, u64, u64)> = s.calibration.iter().map(|b| (b.0, b.1, b.2)).collect();
        assert_eq!(bins, [(0, 1, 0), (1, 1, 1), (9, 3, 2)], "{:?}", db.backend);
        let sum9 = s.calibration[2].3;
        assert!((sum9 - 2.86).abs() < 1e-5, "{sum9} on {:?}", db.backend);
        assert_eq!(store.outcomes(&Query::default()).unwrap().len(), 6);
    }
}
