//! The server's hash-chained audit log: every admin change, enrolment and
//! rollout decision is recorded with who acted and which keys signed, and
//! `edgeml audit verify` catches entries edited or removed in the database.
//! The attacks write straight into the server's database (SQLite or
//! PostgreSQL), as someone with access to it but not to the verifier's
//! checkpoint would.

use crate::common::*;
use crate::db::Backend;
use crate::fleet::{on_v1, Fleet, ADMIN};
use edgeml_client::wire::audit::{verify_chain, AuditEntry, AuditHead, ChainError};
use edgeml_client::wire::fleet::RolloutAction;
use std::path::Path;
use std::process::Output;

/// On v1 (root, bundle, release, one enrolled device), then paused and
/// resumed by `alice`: six entries.
fn fleet_with_history() -> Fleet {
    let (f, _agent) = on_v1();
    let alice = edgeml_client::Client::new(&f.url())
        .unwrap()
        .with_admin_token(ADMIN)
        .with_operator("alice");
    alice.rollout("stable", RolloutAction::Pause).unwrap();
    alice.rollout("stable", RolloutAction::Resume).unwrap();
    f
}

fn log(f: &Fleet) -> (Vec<AuditEntry>, AuditHead) {
    f.client.audit_log().expect("reading the audit log")
}

/// Change the database behind the server's back: drop the append-only
/// triggers first, as a determined insider would.
fn tamper(f: &Fleet, sql: &str) {
    let drop = match f.db.backend {
        Backend::Sqlite => "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;",
        Backend::Postgres => "DROP TRIGGER audit_log_no_change ON audit_log;",
    };
    f.db.execute(&format!("{drop} {sql}")).expect("tampering");
}

fn audit_cli(f: &Fleet, args: &[&str], cwd: &Path) -> Output {
    edgeml()
        .arg("audit")
        .args(args)
        .args(["--server", &f.url()])
        .env("EDGEML_ADMIN_TOKEN", ADMIN)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn audit_records_every_admin_action_with_actor_and_signing_keys() {
    let f = fleet_with_history();
    let (entries, head) = log(&f);
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "root.publish",
            "bundle.upload",
            "release.publish",
            "device.enrol",
            "rollout.pause",
            "rollout.resume"
        ]
    );
    assert_eq!(verify_chain(&entries, Some(&head), None), Ok(head.clone()));
    assert_eq!(head.seq, 6);

    let id = |k: &edgeml_bundle::SecretKey| k.public_key().id().to_string();
    let root = &entries[0];
    assert_eq!(
        (root.actor.as_str(), root.target.as_str()),
        ("admin", "root v1")
    );
    assert_eq!(root.key_ids, [id(&f.root_key)]);
    let bundle = &entries[1];
    assert_eq!(bundle.key_ids, [id(&f.publisher)]);
    assert_eq!(bundle.details["model"], "digits");
    assert_eq!(bundle.details["stored"], "new");
    let release = &entries[2];
    let mut release_keys = vec![id(&f.release[0]), id(&f.release[1])];
    release_keys.sort();
    assert_eq!(release.key_ids, release_keys);
    assert_eq!(release.target, "stable");
    assert_eq!(release.details["model_version"], "1.0.0");
    assert_eq!(release.details["bundle_sha256"], bundle.target);
    let enrol = &entries[3];
    assert_eq!(
        (enrol.actor.as_str(), enrol.target.as_str()),
        ("enrolment", "gw-1")
    );
    let pause = &entries[4];
    assert_eq!(pause.operator.as_deref(), Some("alice"));
    assert_eq!(
        (pause.details["from"].as_str(), pause.details["to"].as_str()),
        ("active", "paused")
    );
    assert!(entries.windows(2).all(|w| w[1].prev == w[0].hash));

    // The CLI shows the same log, filtered.
    let tmp = tempfile::tempdir().unwrap();
    let out = audit_cli(&f, &["log", "--action", "rollout."], tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("admin (alice)"), "{text}");
    assert!(
        text.contains("rollout.pause") && text.contains("rollout.resume"),
        "{text}"
    );
    assert!(!text.contains("bundle.upload"), "{text}");
}

#[test]
fn rejects_audit_log_read_without_admin_token() {
    let f = Fleet::new();
    let resp = f.http.get(format!("{}/v1/audit", f.url())).send().unwrap();
    assert_eq!(resp.status(), 401);
    let err = edgeml_client::Client::new(&f.url())
        .unwrap()
        .with_admin_token("not-the-admin-token")
        .audit_log()
        .unwrap_err();
    assert!(
        matches!(err, edgeml_client::Error::Refused { status: 401, .. }),
        "{err}"
    );
}

#[test]
fn audit_log_refuses_sql_changes_while_its_triggers_stand() {
    let f = fleet_with_history();
    let err =
        f.db.execute("UPDATE audit_log SET target = 'beta' WHERE seq = 3")
            .unwrap_err();
    assert!(err.contains("the audit log is append-only"), "{err}");
    let err =
        f.db.execute("DELETE FROM audit_log WHERE seq = 6")
            .unwrap_err();
    assert!(err.contains("the audit log is append-only"), "{err}");
    let (entries, head) = log(&f);
    assert_eq!(verify_chain(&entries, Some(&head), None), Ok(head));
}

#[test]
fn audit_detects_edited_entry() {
    let f = fleet_with_history();
    // Make the pause look like it was never asked for: the entry keeps
    // its old hash.
    tamper(
        &f,
        "UPDATE audit_log SET operator = 'bob' WHERE action = 'rollout.pause'",
    );
    let (entries, head) = log(&f);
    assert_eq!(entries[4].operator.as_deref(), Some("bob"));
    assert_eq!(
        verify_chain(&entries, Some(&head), None),
        Err(ChainError::Edited { seq: 5 })
    );
    // ... and with the hash recomputed, the next entry's link breaks.
    let mut rehashed = entries.clone();
    rehashed[4].hash = rehashed[4].compute_hash();
    assert_eq!(
        verify_chain(&rehashed, None, None),
        Err(ChainError::Unlinked { seq: 6 })
    );

    let tmp = tempfile::tempdir().unwrap();
    let out = audit_cli(&f, &["verify"], tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("audit entry 5 was changed after it was written"),
        "{stderr}"
    );
}

#[test]
fn audit_detects_removed_middle_entry() {
    let f = fleet_with_history();
    tamper(&f, "DELETE FROM audit_log WHERE seq = 3");
    let (entries, head) = log(&f);
    assert_eq!(
        verify_chain(&entries, Some(&head), None),
        Err(ChainError::Missing {
            expected: 3,
            found: 4
        })
    );
}

#[test]
fn audit_detects_truncation() {
    let f = fleet_with_history();
    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = tmp.path().join("audit.checkpoint.json");
    let cp = checkpoint.to_str().unwrap();
    let out = audit_cli(&f, &["verify", "--checkpoint", cp], tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept: AuditHead = serde_json::from_slice(&read(&checkpoint)).unwrap();
    assert_eq!(kept.seq, 6);

    // Remove the pause and the resume from the end of the log.
    tamper(&f, "DELETE FROM audit_log WHERE seq > 4");
    let (entries, head) = log(&f);
    assert_eq!(entries.len(), 4);
    assert!(matches!(
        verify_chain(&entries, Some(&head), None),
        Err(ChainError::Truncated {
            last: 4,
            head: 6,
            source_name: "the server's head"
        })
    ));

    // Rewind the server's head as well: the chain is consistent again, and
    // only the checkpoint kept away from the server knows better.
    f.db.execute(
        "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_log WHERE seq = 4) WHERE id = 1",
    )
    .unwrap();
    let (entries, head) = log(&f);
    assert_eq!(head.seq, 4);
    assert!(verify_chain(&entries, Some(&head), None).is_ok());
    assert!(matches!(
        verify_chain(&entries, Some(&head), Some(&kept)),
        Err(ChainError::Truncated {
            last: 4,
            head: 6,
            source_name: "the checkpoint"
        })
    ));
    let out = audit_cli(&f, &["verify", "--checkpoint", cp], tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the audit log ends at entry 4, but the checkpoint recorded entry 6"),
        "{stderr}"
    );
    // A failed verification leaves the checkpoint where it was.
    let still: AuditHead = serde_json::from_slice(&read(&checkpoint)).unwrap();
    assert_eq!(still, kept);
}
