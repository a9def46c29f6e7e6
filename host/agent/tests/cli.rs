//! The `edgeml-agent` program itself. (The end-to-end fleet tests in the
//! repository's tests/ drive it against a real server; these need none.)

use std::path::Path;
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgeml-agent"))
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"gw-1\"\ndir = \"state\"\nserver = \"http://127.0.0.1:9\"\n\
             channel = \"stable\"\nroot = \"root.json\"\n{extra}"
        ),
    )
    .unwrap();
    config
}

#[test]
fn status_before_the_first_poll_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = agent()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("device:      gw-1"), "{text}");
    assert!(text.contains("no report yet"), "{text}");
}

#[test]
fn refuses_unknown_config_field_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[runtime]\nbackend = \"native\"\nturbo = true\n",
    );
    let out = agent().arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid agent configuration"), "{err}");
    assert!(err.contains("turbo"), "{err}");
}

#[test]
fn refuses_to_start_without_its_root_of_trust() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = agent().arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("root.json"), "{err}");
}

/// A device build without the `sandbox` feature says what to do instead
/// of failing somewhere inside the runtime.
#[cfg(not(feature = "sandbox"))]
#[test]
fn refuses_sandboxed_backend_when_built_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[runtime]\nbackend = \"sandboxed\"\n");
    let out = agent().arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("built without the sandboxed backend"), "{err}");
    assert!(
        err.contains("--features sandbox") || err.contains("feature `sandbox`"),
        "{err}"
    );
}

/// `backend = "onnxruntime"` on a device without the library: the agent
/// does not start, and says which file it tried and what to do.
#[cfg(feature = "onnxruntime")]
#[test]
fn refuses_onnxruntime_backend_without_its_library() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[runtime]\nbackend = \"onnxruntime\"\nonnxruntime_library = \"lib/libonnxruntime.so\"\n",
    );
    let out = agent().arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the onnxruntime backend is not available"),
        "{err}"
    );
    let expected = dir.path().join("lib/libonnxruntime.so");
    assert!(err.contains(&*expected.to_string_lossy()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
