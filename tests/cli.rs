//! The `edgeml` binary, as the README walks through it.

use crate::common::*;
use std::path::Path;
use std::process::Output;

fn run(args: &[&str], cwd: &Path) -> Output {
    edgeml()
        .args(args)
        .current_dir(cwd)
        .env("EDGEML_CACHE_DIR", cwd.join("cache"))
        .output()
        .unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = run(args, cwd);
    assert!(
        out.status.success(),
        "edgeml {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with exit code 1, a one-line `error:` message, and no panic.
fn fails(args: &[&str], cwd: &Path) -> String {
    let out = run(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "edgeml {args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn digits_bundle(dir: &Path) {
    let m = model_path("digits");
    ok(&["keygen", "--out", "keys"], dir);
    ok(
        &[
            "pack",
            "--model",
            m.join("digits.onnx").to_str().unwrap(),
            "--component",
            Path::new(edgeml_guests::DIR)
                .join("edgeml_image_classifier.wasm")
                .to_str()
                .unwrap(),
            "--labels",
            m.join("labels.txt").to_str().unwrap(),
            "--preprocess",
            m.join("preprocess.json").to_str().unwrap(),
            "--name",
            "digits",
            "--version",
            "1.0.0",
            "--out",
            "digits.wasm",
        ],
        dir,
    );
    ok(&["sign", "digits.wasm", "--key", "keys/publisher.key"], dir);
}

#[test]
fn walkthrough_pack_sign_verify_inspect_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    let v: serde_json::Value = serde_json::from_str(&ok(
        &[
            "verify",
            "digits.wasm",
            "--trust",
            "keys/publisher.pub",
            "--json",
        ],
        dir,
    ))
    .unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["name"], "digits");

    let inspect = ok(&["inspect", "digits.wasm"], dir);
    assert!(inspect.contains("input:    X f32 [N, 64]"), "{inspect}");
    assert!(inspect.contains("edgeml.model"), "{inspect}");
    assert!(inspect.contains("signer:   key"), "{inspect}");

    let png = model_path("digits/holdout/000.png");
    let out = ok(
        &[
            "run",
            "digits.wasm",
            "--trust",
            "keys/publisher.pub",
            "--input",
            png.to_str().unwrap(),
        ],
        dir,
    );
    assert!(out.contains("top labels:"), "{out}");
    let labels: serde_json::Value =
        serde_json::from_slice(&read(model_path("digits/holdout/labels.json"))).unwrap();
    let expected = labels["000.png"].as_u64().unwrap().to_string();
    let first_label = out
        .lines()
        .skip_while(|l| !l.starts_with("top labels:"))
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(first_label, expected, "{out}");
}

/// A model card for digits whose datasets are files under models/digits.
fn digits_card(dir: &Path) -> std::path::PathBuf {
    let m = model_path("digits");
    let card = format!(
        r#"intended_use = "Recognising handwritten digits 0-9 in 8x8 grayscale scans of forms"
task = "classification"
limitations = ["Not for photographs or free-hand drawings at other scales"]

[owner]
name = "Forms team"
email = "forms@example.com"

[training_data]
description = "scikit-learn digits, 500 rows of the 80% training split (models/build_models.py)"
path = "{train}"

[code]
revision = "0123456789abcdef0123456789abcdef01234567"
repository = "https://example.invalid/edgeml"

[[metrics]]
name = "accuracy"
value = 0.9722
[metrics.data]
description = "held-out 20% split, labels by file name"
path = "{holdout}"
"#,
        train = m.join("reference.npy").display(),
        holdout = m.join("holdout/labels.json").display(),
    );
    let path = dir.join("card.toml");
    std::fs::write(&path, card).unwrap();
    path
}

/// The arguments of `edgeml pack` for digits 1.1.0 with `card`, into `carded.wasm`.
fn pack_with_card(card: &Path) -> Vec<String> {
    let model = model_path("digits").join("digits.onnx");
    [
        "pack",
        "--model",
        model.to_str().unwrap(),
        "--name",
        "digits",
        "--version",
        "1.1.0",
        "--card",
        card.to_str().unwrap(),
        "--out",
        "carded.wasm",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The CycloneDX 1.6 schema (tests/data/cyclonedx), with the schemas it
/// references served from the same directory: no network.
fn cyclonedx_validator() -> jsonschema::Validator {
    struct Vendored;
    impl jsonschema::Retrieve for Vendored {
        fn retrieve(
            &self,
            uri: &jsonschema::Uri<String>,
        ) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
            let name = uri
                .path()
                .as_str()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let path = repo().join("tests/data/cyclonedx").join(&name);
            Ok(serde_json::from_slice(
                &std::fs::read(&path).map_err(|e| format!("{name}: {e}"))?,
            )?)
        }
    }
    let schema: serde_json::Value = serde_json::from_slice(&read(
        repo().join("tests/data/cyclonedx/bom-1.6.SNAPSHOT.schema.json"),
    ))
    .unwrap();
    jsonschema::options()
        .with_retriever(Vendored)
        .build(&schema)
        .unwrap()
}

#[test]
fn pack_signs_model_card_and_exports_it_as_valid_cyclonedx() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    let card = digits_card(dir);
    let m = model_path("digits");
    ok(&strs(&pack_with_card(&card)), dir);
    ok(&["sign", "carded.wasm", "--key", "keys/publisher.key"], dir);
    ok(
        &["verify", "carded.wasm", "--trust", "keys/publisher.pub"],
        dir,
    );

    let train_sha = sha256_hex(&read(m.join("reference.npy")));
    let inspect = ok(&["inspect", "carded.wasm"], dir);
    assert!(
        inspect.contains("owner:    Forms team <forms@example.com>"),
        "{inspect}"
    );
    assert!(
        inspect.contains(&format!("sha256 {train_sha}")),
        "{inspect}"
    );
    assert!(
        inspect.contains("metric:   accuracy = 0.9722 on held-out 20% split"),
        "{inspect}"
    );
    let plain = ok(&["inspect", "digits.wasm"], dir);
    assert!(plain.contains("card:     none"), "{plain}");

    let bom: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "carded.wasm", "--cyclonedx"], dir)).unwrap();
    let validator = cyclonedx_validator();
    let errors: Vec<String> = validator.iter_errors(&bom).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "not CycloneDX 1.6: {errors:#?}\n{bom:#}");
    assert_eq!(bom["specVersion"], "1.6");
    let model = &bom["components"][0];
    assert_eq!(model["type"], "machine-learning-model");
    assert_eq!(model["version"], "1.1.0");
    assert_eq!(
        model["hashes"][0]["content"],
        sha256_hex(&read(m.join("digits.onnx")))
    );
    let metric = &model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"][0];
    assert_eq!(metric["type"], "accuracy");
    assert_eq!(metric["value"], "0.9722");
    assert_eq!(bom["components"][1]["hashes"][0]["content"], train_sha);
    assert_eq!(
        model["modelCard"]["modelParameters"]["datasets"][0]["ref"],
        bom["components"][1]["bom-ref"]
    );
    // The validator is not vacuous: a model card on the wrong field fails.
    let mut broken = bom.clone();
    broken["components"][0]["modelCard"]["considerations"]["intendedUse"] = "x".into();
    assert!(!validator.is_valid(&broken));
}

#[test]
fn rejects_model_card_whose_data_digest_disagrees_with_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let card = digits_card(dir);
    let text = std::fs::read_to_string(&card).unwrap().replacen(
        "path = ",
        &format!("sha256 = \"{}\"\npath = ", "0".repeat(64)),
        1,
    );
    std::fs::write(&card, text).unwrap();
    let err = fails(&strs(&pack_with_card(&card)), dir);
    assert!(err.contains("training_data"), "{err}");
    assert!(
        err.contains(&format!("the card says {}", "0".repeat(64))),
        "{err}"
    );
    assert!(!dir.join("carded.wasm").exists());
}

#[test]
fn run_writes_one_npy_per_output_with_safe_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(&["keygen", "--out", "keys", "--name", "me"], dir);
    // Without --component: the generic component built into edgeml.
    ok(
        &[
            "pack",
            "--model",
            model_path("digits/digits.onnx").to_str().unwrap(),
            "--name",
            "digits",
            "--version",
            "2.1.0",
            "--out",
            "d.wasm",
        ],
        dir,
    );
    ok(
        &[
            "sign",
            "d.wasm",
            "--key",
            "keys/me.key",
            "--out",
            "d.signed.wasm",
        ],
        dir,
    );
    let input = format!("X={}", model_path("digits/ref_input.npy").display());
    let out = ok(
        &[
            "run",
            "d.signed.wasm",
            "--trust",
            "keys/me.pub",
            "--input",
            &input,
            "--output-dir",
            "out",
            "--json",
        ],
        dir,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert!(dir.join("out/probabilities.npy").is_file());
    assert!(dir.join("out/label.npy").is_file());
    let bytes = std::fs::read(dir.join("out/probabilities.npy")).unwrap();
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(f.shape(), &[16, 10]);
    let (_, expected) = npy_f32("digits/ref_probabilities.npy");
    assert_close(&f.into_vec::<f32>().unwrap(), &expected, "cli output");
    // The unsigned original is refused.
    let err = fails(
        &["run", "d.wasm", "--trust", "keys/me.pub", "--input", &input],
        dir,
    );
    assert!(err.contains("not signed"), "{err}");
}

#[test]
fn bad_inputs_exit_non_zero_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    ok(&["keygen", "--out", "other"], dir);
    let png = model_path("digits/holdout/000.png");
    let png = png.to_str().unwrap();

    let err = fails(
        &["verify", "digits.wasm", "--trust", "other/publisher.pub"],
        dir,
    );
    assert!(err.contains("no signature by a trusted key"), "{err}");
    let err = fails(
        &[
            "run",
            "digits.wasm",
            "--trust",
            "keys/publisher.pub",
            "--trust",
            "other/publisher.pub",
            "--threshold",
            "2",
            "--input",
            png,
        ],
        dir,
    );
    assert!(err.contains("needs 2 signatures"), "{err}");

    let mut bytes = std::fs::read(dir.join("digits.wasm")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(dir.join("tampered.wasm"), &bytes).unwrap();
    fails(
        &[
            "run",
            "tampered.wasm",
            "--trust",
            "keys/publisher.pub",
            "--input",
            png,
        ],
        dir,
    );
    std::fs::write(dir.join("truncated.wasm"), &bytes[..n / 3]).unwrap();
    fails(
        &["verify", "truncated.wasm", "--trust", "keys/publisher.pub"],
        dir,
    );
    std::fs::write(
        dir.join("model.wasm"),
        read(model_path("digits/digits.onnx")),
    )
    .unwrap();
    let err = fails(&["inspect", "model.wasm"], dir);
    assert!(err.contains("not a WebAssembly component"), "{err}");

    std::fs::write(dir.join("corrupt.png"), b"\x89PNG\r\n\x1a\ncorrupt").unwrap();
    let err = fails(
        &[
            "run",
            "digits.wasm",
            "--trust",
            "keys/publisher.pub",
            "--input",
            "corrupt.png",
        ],
        dir,
    );
    assert!(err.contains("cannot decode input"), "{err}");
    let err = fails(
        &[
            "run",
            "digits.wasm",
            "--trust",
            "keys/publisher.pub",
            "--input",
            "X=missing.npy",
        ],
        dir,
    );
    assert!(err.contains("missing.npy"), "{err}");
}

#[test]
fn missing_files_are_named_with_their_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    for args in [
        &["sign", "digits.wasm", "--key", "keys/missing.key"][..],
        &["verify", "missing.wasm", "--trust", "keys/publisher.pub"][..],
    ] {
        let err = fails(args, dir);
        let missing = args.iter().find(|a| a.contains("missing")).unwrap();
        assert!(err.contains(missing), "{args:?}: {err}");
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "{args:?}: {err}"
        );
    }
}

#[test]
fn bench_json_reports_latency_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    let out = ok(
        &[
            "bench",
            "digits.wasm",
            "--trust",
            "keys/publisher.pub",
            "--iterations",
            "20",
            "--warmup",
            "2",
            "--json",
        ],
        dir,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "p50_us",
        "p90_us",
        "p99_us",
        "throughput_per_s",
        "cold_load_ms",
        "cached_load_ms",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {out}");
    }
    assert_eq!(v["backend"], "tract");
    assert!(v["p50_us"].as_f64() <= v["p99_us"].as_f64());
}

#[test]
fn bench_with_a_warm_cache_measures_no_cold_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    let bench = || -> serde_json::Value {
        let args = ["bench", "digits.wasm", "--trust", "keys/publisher.pub"];
        let more = [
            "--iterations",
            "5",
            "--warmup",
            "0",
            "--cache-dir",
            "cache",
            "--json",
        ];
        serde_json::from_str(&ok(&[&args[..], &more[..]].concat(), dir)).unwrap()
    };
    // The first run fills the cache and measures compiling; the second loads twice from it.
    let first = bench();
    assert!(first["cold_load_ms"].as_f64().unwrap() > 0.0, "{first}");
    let second = bench();
    assert!(second["cold_load_ms"].is_null(), "{second}");
    assert!(second["cached_load_ms"].as_f64().unwrap() > 0.0, "{second}");
    assert!(second["peak_rss_kb"].as_u64().unwrap() > 0, "{second}");
    assert!(dir.join("cache").read_dir().unwrap().next().is_some());
}

/// `edgeml run digits.wasm --json --backend <backend>` with `ORT_DYLIB_PATH`
/// set to `library`.
fn run_on(backend: &str, library: &Path, dir: &Path) -> Output {
    edgeml()
        .args([
            "run",
            "digits.wasm",
            "--trust",
            "keys/publisher.pub",
            "--json",
        ])
        .args(["--backend", backend, "--no-cache", "--input"])
        .arg(model_path("digits/holdout/000.png"))
        .env("ORT_DYLIB_PATH", library)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn onnxruntime_backend_without_its_library_refuses_to_start_and_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    let missing = dir.join("no-such/libonnxruntime.so");
    let out = run_on("onnxruntime", &missing, dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: the onnxruntime backend is not available"),
        "{stderr}"
    );
    // Which file it tried, and why that failed.
    assert!(
        stderr.contains(&format!("failed to load from `{}`", missing.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn auto_backend_without_onnxruntime_runs_on_tract_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    // Not a library at all: a file that is there but cannot be loaded.
    let bogus = dir.join("libonnxruntime.so");
    std::fs::write(&bogus, b"not a shared object").unwrap();
    let out = run_on("auto", &bogus, dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.starts_with("note: auto chose tract:"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "tract");
    assert_eq!(v["scores"][0]["label"], "7"); // models/digits/holdout/labels.json
}

#[test]
fn auto_backend_picks_onnxruntime_when_its_library_loads() {
    let Some(library) = onnxruntime_library() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    digits_bundle(dir);
    for backend in ["auto", "onnxruntime"] {
        let out = run_on(backend, &library, dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{backend}: {stderr}");
        assert!(!stderr.contains("auto chose tract"), "{stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["backend"], "onnxruntime", "{backend}");
        assert_eq!(v["scores"][0]["label"], "7"); // models/digits/holdout/labels.json
    }
}

#[test]
fn every_command_has_help() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        "keygen", "pack", "sign", "verify", "inspect", "run", "bench",
    ] {
        let out = ok(&[cmd, "--help"], tmp.path());
        assert!(out.contains("Usage: edgeml"), "{cmd}: {out}");
    }
}
