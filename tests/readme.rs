//! The README's walkthrough, run command by command with the real binary, so
//! the documentation cannot drift from what works.

use crate::common::*;

/// The `sh` blocks of the "## Walkthrough" section, one command per entry
/// (continuation lines joined), without the build steps.
fn walkthrough_commands() -> Vec<String> {
    let readme = String::from_utf8(read(repo().join("README.md"))).unwrap();
    let section = readme
        .split("## Walkthrough")
        .nth(1)
        .expect("walkthrough section");
    let section = section.split("\n## ").next().unwrap();
    let mut commands = Vec::new();
    for block in section.split("```sh\n").skip(1) {
        let body = block.split("```").next().unwrap();
        let mut current = String::new();
        for line in body.lines() {
            current.push_str(line.trim_end_matches('\\').trim());
            current.push(' ');
            if !line.ends_with('\\') {
                commands.push(current.trim().to_string());
                current.clear();
            }
        }
    }
    commands.retain(|c| {
        !c.is_empty()
            && !c.starts_with("rustup")
            && !c.starts_with("cargo build")
            && !c.starts_with("export PATH")
    });
    commands
}

/// A fresh directory with `models/` linked in, as after a clone, and a
/// `PATH` that finds the built `edgeml` first.
fn shell_dir() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("models"), tmp.path().join("models")).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_edgeml"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (tmp, path)
}

#[test]
fn readme_walkthrough_commands_run() {
    let commands = walkthrough_commands();
    assert!(
        commands.len() >= 15,
        "found only {} commands",
        commands.len()
    );
    let (tmp, path) = shell_dir();
    for cmd in commands {
        assert!(
            cmd.starts_with("edgeml "),
            "unexpected command in the walkthrough: {cmd}"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env("EDGEML_CACHE_DIR", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README command failed: {cmd}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(tmp.path().join("vad-out/segments.npy").is_file());
    assert!(tmp.path().join("out/probabilities.npy").is_file());
}

/// The "## Monitoring" section's `sh` blocks, run as one script in a fresh
/// directory, the collector in the background as the README has it.
#[test]
fn readme_monitoring_walkthrough_runs() {
    let (tmp, stdout) = run_section(
        "Monitoring",
        "set -e\ntrap 'kill $collector 2>/dev/null || true' EXIT\n",
    );
    // The live data is not flagged, the shifted data is, on the device and at the collector.
    let local: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("local drift"))
        .collect();
    assert_eq!(local.len(), 2, "{stdout}");
    assert!(local[0].ends_with(": none"), "{stdout}");
    assert!(local[1].contains("temperature_c"), "{stdout}");
    let buckets: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" predictions  "))
        .collect();
    assert!(buckets.iter().any(|l| l.contains("no drift")), "{stdout}");
    assert!(
        buckets
            .iter()
            .any(|l| l.contains("DRIFT: ") && l.contains("temperature_c")),
        "{stdout}"
    );
    for f in ["samples.parquet", "samples.npy", "samples.json"] {
        assert!(tmp.path().join("export").join(f).is_file(), "{f}");
    }
}

/// The "## Fleet" section's `sh` blocks, run as one script in a fresh
/// directory: a fleet server and two agents in the background, a staged
/// rollout, and an automatic rollback.
#[test]
fn readme_fleet_walkthrough_runs() {
    let (_tmp, stdout) = run_section(
        "Fleet",
        "set -e\ntrap 'kill $agent1 $agent2 $server 2>/dev/null || true' EXIT\n",
    );
    assert!(stdout.contains("pushed digits 1.2.0"), "{stdout}");
    // The gateway answered over KServe v2 before and after the rollback.
    assert!(stdout.contains("\"model_version\":\"1.0.0\""), "{stdout}");
    assert!(stdout.contains("\"model_version\":\"1.1.0\""), "{stdout}");
    assert!(stdout.contains("\"label\":\"7\""), "{stdout}");
    // A label given on the gateway reached the server's accuracy table
    // (000.png is a 7, and 1.0.0 says so).
    assert!(stdout.contains("\"queued\":true"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("1.0.0 ") && l.contains(" 1 ") && l.contains("1.0000")),
        "{stdout}"
    );
    // The audit log holds the halt and verifies.
    assert!(stdout.contains("rollout.halt"), "{stdout}");
    assert!(stdout.contains("audit log OK: "), "{stdout}");
    // The bad release was halted after a self-test rollback; both devices serve 1.1.0.
    assert!(
        stdout.contains("rollout halted") && stdout.contains("self-test `000.png` failed"),
        "{stdout}"
    );
    // The console is served, and sends a browser without a session to log in.
    assert!(
        stdout.contains("<title>Log in · edgeml console"),
        "{stdout}"
    );
    assert!(
        stdout.contains("303 http://127.0.0.1:7071/ui/login?next=%2Fui%2Ffleet"),
        "{stdout}"
    );
    // `edgeml fleet status`: the halted rollout and both devices in tables.
    assert!(
        stdout.contains("Rollouts (1)") && stdout.contains("Devices (2)"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("digits 1.2.0") && l.contains("halted") && l.contains("0 of 2")),
        "{stdout}"
    );
    let last = stdout.rsplit("DEVICE").next().unwrap();
    assert!(last.matches(" 1.1.0 ").count() >= 2, "{stdout}");
    assert!(!last.contains("1.2.0      installed"), "{stdout}");
    assert!(stdout.contains("published root version 2"), "{stdout}");
    // `edgeml agent status` after the agents stopped: read from the state directory.
    assert!(stdout.contains("installed:   digits 1.1.0"), "{stdout}");
    assert!(stdout.contains("state:       rolled_back"), "{stdout}");
}

/// Run a README section's `sh` blocks as one script in a fresh directory
/// (with `prelude` first); returns the directory and stdout, failing the
/// test on a non-zero exit.
fn run_section(heading: &str, prelude: &str) -> (tempfile::TempDir, String) {
    let readme = String::from_utf8(read(repo().join("README.md"))).unwrap();
    let section = readme
        .split(&format!("\n## {heading}"))
        .nth(1)
        .unwrap_or_else(|| panic!("no `## {heading}` section"));
    let section = section.split("\n## ").next().unwrap();
    let mut script = String::from(prelude);
    for block in section.split("```sh\n").skip(1) {
        script.push_str(block.split("\n```").next().unwrap());
        script.push('\n');
    }
    let (tmp, path) = shell_dir();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(tmp.path())
        .env("PATH", &path)
        .env("EDGEML_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the {heading} walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tmp, stdout)
}

/// The "## Server at scale" section's `sh` blocks: two replicas on a real
/// PostgreSQL (tests/db.rs), a root published through one and read through
/// the other, and the metrics endpoint.
#[test]
fn readme_server_at_scale_walkthrough_runs() {
    let Some(db) = crate::db::TestDb::postgres() else {
        return;
    };
    let Some(registry) = crate::registry::TestRegistry::start() else {
        return;
    };
    let (_tmp, stdout) = run_section(
        "Server at scale",
        &format!(
            "set -e\nexport DATABASE_URL='{}' REGISTRY='{}'\ntrap 'kill $replica_a $replica_b 2>/dev/null || true' EXIT\n",
            db.url, registry.origin
        ),
    );
    assert!(
        stdout.contains("pushed digits 1.0.0 to channel stable"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""mediaType":"application/wasm""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "307 {}/v2/edgeml/bundles/blobs/sha256:",
            registry.origin
        )),
        "{stdout}"
    );
    assert!(stdout.contains("published root version 1"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    // The root read through the other replica; the metrics line; the admin
    // token refused at /metrics; an empty decision log.
    assert!(
        stdout.contains("replica-b serves the root published through replica-a"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"edgeml_server_http_requests_total{route="/v1/fleet/root",method="GET",status="200"} 1"#),
        "{stdout}"
    );
    assert!(lines.contains(&"401"), "{stdout}");
    assert!(stdout.contains(r#"{"decisions":[]}"#), "{stdout}");
}

/// The "## Retraining" section's `sh` blocks: drift and an accuracy drop on
/// two gateways, labelled samples exported as Parquet, a retrained model
/// packed with its card, and a paced rollout that takes it to the fleet.
/// Retraining needs Python with scikit-learn, skl2onnx and pyarrow
/// (`.ci/run` installs them); elsewhere the test says it is skipped.
#[test]
fn readme_retraining_walkthrough_runs() {
    let python_ok = std::process::Command::new("python3")
        .args(["-c", "import sklearn, skl2onnx, onnx, pyarrow, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install numpy scikit-learn skl2onnx onnx pyarrow for the retraining walkthrough"
        );
        eprintln!("skipped: python3 lacks scikit-learn, skl2onnx, onnx or pyarrow");
        return;
    }
    let (tmp, stdout) = run_section("Retraining", "set -e\n");
    // An admin's tag next to the device's own.
    assert!(
        stdout.contains("device pump-02: tags line=north,site=plant-2"),
        "{stdout}"
    );
    // The server flags the shifted features.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("DRIFT: ") && l.contains("temperature_c")),
        "{stdout}"
    );
    // Maintenance's labels all found their samples.
    assert!(
        stdout.contains("matched a stored sample, 0 did not"),
        "{stdout}"
    );
    // The retrained model beats the old one on the held-out drift samples,
    // and its card (in the signed manifest) says so.
    let retrain = stdout
        .lines()
        .find(|l| l.starts_with("retrain: accuracy on"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let nums: Vec<f64> = retrain
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .filter(|v: &f64| *v <= 1.0 && v.fract() != 0.0)
        .collect();
    assert!(nums.len() >= 2 && nums[0] > nums[1] + 0.05, "{retrain}");
    assert!(tmp.path().join("retrained/card.toml").is_file());
    // On the same shifted readings, after the first step: 1.1.0 right more
    // often than 1.0.0 (both ran).
    let after_push = stdout
        .split("pushed sensor 1.1.0")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    // The first fleet view, during the first step: one pump on each version.
    assert!(after_push.contains("at 50% (step 1 of 2"), "{stdout}");
    let rate = |version: &str| -> f64 {
        let line = after_push
            .lines()
            .filter(|l| l.starts_with("plant: ") && l.contains(&format!("sensor {version}:")))
            .last()
            .unwrap_or_else(|| panic!("no plant line for {version}: {stdout}"));
        line.rsplit(": ")
            .next()
            .unwrap()
            .trim_end_matches(" right")
            .parse()
            .unwrap()
    };
    assert!(rate("1.1.0") > rate("1.0.0") + 0.05, "{stdout}");
    // The pacer took it to the whole fleet, with the gate's evidence.
    let last = stdout.rsplit("DEVICE").next().unwrap();
    let on_new = last
        .lines()
        .filter(|l| l.starts_with("pump-0") && l.contains(" 1.1.0 ") && l.contains("installed"))
        .count();
    assert_eq!(on_new, 2, "{stdout}");
    assert!(stdout.contains("at 100% (step 2 of 2"), "{stdout}");
    let step = stdout
        .lines()
        .find(|l| l.contains("rollout.step"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(step.contains("gate passed: error rate"), "{step}");
    // The final table has both versions; 1.1.0 measured higher.
    let acc = |version: &str| -> f64 {
        let line = stdout
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{version} "))
                    && l.split_whitespace()
                        .nth(1)
                        .is_some_and(|n| n.parse::<u64>().is_ok())
            })
            .last()
            .unwrap_or_else(|| panic!("no accuracy line for {version}: {stdout}"));
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    assert!(acc("1.1.0") > acc("1.0.0"), "{stdout}");
}
