//! The `edgeml-server` program itself. (The end-to-end tests in the
//! repository's tests/ drive it with agents and the CLI.)

use std::process::Command;

#[test]
fn refuses_to_start_without_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgeml-server"))
        .arg("--db")
        .arg(dir.path().join("fleet.db"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("EDGEML_ADMIN_TOKEN")
        .env_remove("EDGEML_ENROLMENT_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no admin-token"), "{err}");
    assert!(
        !dir.path().join("fleet.db").exists(),
        "no database is created before the settings are complete"
    );
}
