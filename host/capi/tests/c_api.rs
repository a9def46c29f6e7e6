//! The C API from C: `examples/c/classify.c` and `tests/c/misuse.c`,
//! compiled with the system C compiler against `include/edgeml.h` and this
//! crate's `libedgeml_c.so`, run under AddressSanitizer and LeakSanitizer
//! (no leaks, no invalid reads or writes), on a real signed digits bundle.

use edgeml_runtime::bundle::{self, PackOptions, SecretKey};
use edgeml_runtime::{Config, Input, Runtime, TrustPolicy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> Vec<u8> {
    let path = repo().join("models").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `<target>/debug/deps`, where cargo builds `libedgeml_c.so` (all of the
/// crate's types) for this crate's tests.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    assert!(
        dir.join("libedgeml_c.so").is_file(),
        "{} has no libedgeml_c.so: cargo builds it with this crate's tests",
        dir.display()
    );
    dir
}

/// A signed digits bundle, its key pair's public half, a second key, and
/// the same bundle with one byte of its model section changed.
struct Fixture {
    dir: tempfile::TempDir,
    publisher: SecretKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let publisher = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let model = read("digits/digits.onnx");
        let (inputs, outputs) = edgeml_runtime::onnx_io_schema(&model).unwrap();
        let labels = String::from_utf8(read("digits/labels.txt"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let unsigned = bundle::pack(&PackOptions {
            name: "digits",
            version: semver::Version::new(1, 0, 0),
            component: edgeml_guests::IMAGE_CLASSIFIER,
            model: &model,
            inputs,
            outputs,
            labels,
            preprocessing: serde_json::from_slice(&read("digits/preprocess.json")).unwrap(),
            min_host_version: semver::Version::new(0, 1, 0),
            created: None,
            baseline: None,
            self_test: Vec::new(),
            card: None,
        })
        .unwrap();
        let signed = bundle::sign(&unsigned, &publisher).unwrap();
        // Change one byte inside the ONNX model (found by its content).
        let mut tampered = signed.clone();
        let at = tampered
            .windows(model.len())
            .position(|w| w == &model[..])
            .expect("the model is in the bundle")
            + model.len() / 2;
        tampered[at] ^= 0x01;
        let d = dir.path();
        std::fs::write(d.join("digits.wasm"), &signed).unwrap();
        std::fs::write(d.join("tampered.wasm"), &tampered).unwrap();
        std::fs::write(d.join("publisher.pub"), publisher.public_key().to_bytes()).unwrap();
        std::fs::write(d.join("other.pub"), other.public_key().to_bytes()).unwrap();
        // The bundle precompiled for this host, signed by the publisher and
        // by the other key (`edgeml precompile`).
        let rt = edgeml_runtime::Runtime::new(&edgeml_runtime::Config::new()).unwrap();
        let verified = rt
            .verify(
                signed.clone(),
                &edgeml_runtime::TrustPolicy::any_of(vec![publisher.public_key()]).unwrap(),
            )
            .unwrap();
        let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        for (name, key) in [("digits.edgemlpa", &publisher), ("other.edgemlpa", &other)] {
            let artifact = rt.precompile(&verified, &host, key).unwrap();
            std::fs::write(d.join(name), artifact).unwrap();
        }
        Fixture { dir, publisher }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Compile `source` against the header and the shared library, with the
/// sanitizers.
fn compile(source: &Path, out: &Path) {
    let lib = lib_dir();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(["-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(repo().join("host/capi/include"))
        .arg(source)
        .arg("-L")
        .arg(&lib)
        .arg("-ledgeml_c")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(status.success(), "{} did not compile", source.display());
}

fn run(exe: &Path, args: &[&Path]) -> Output {
    Command::new(exe)
        .args(args)
        // Leaks are errors; wasmtime handles its own signals.
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:handle_segv=0:allow_user_segv_handler=1",
        )
        .output()
        .unwrap()
}

#[test]
fn c_example_classifies_a_png_like_the_rust_api() {
    let f = Fixture::new();
    let exe = f.path("classify");
    compile(&repo().join("examples/c/classify.c"), &exe);
    let png = repo().join("models/digits/holdout/000.png");
    let out = run(
        &exe,
        &[&f.path("digits.wasm"), &f.path("publisher.pub"), &png],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("ERROR: AddressSanitizer"), "{stderr}");
    assert!(!stderr.contains("ERROR: LeakSanitizer"), "{stderr}");

    // The same prediction through the Rust library.
    let runtime = Runtime::new(&Config::new()).unwrap();
    let policy = TrustPolicy::any_of(vec![f.publisher.public_key()]).unwrap();
    let verified = runtime
        .verify(std::fs::read(f.path("digits.wasm")).unwrap(), &policy)
        .unwrap();
    let model = runtime.load(&verified).unwrap();
    let p = model
        .predict(Input::Media {
            media_type: "image/png".into(),
            bytes: std::fs::read(&png).unwrap(),
        })
        .unwrap();
    let best = &p.scores.unwrap()[0];
    assert_eq!(stdout.trim(), format!("{} {:.4}", best.label, best.score));
}

#[test]
fn c_example_refuses_a_tampered_bundle() {
    let f = Fixture::new();
    let exe = f.path("classify");
    compile(&repo().join("examples/c/classify.c"), &exe);
    let png = repo().join("models/digits/holdout/000.png");
    let out = run(
        &exe,
        &[&f.path("tampered.wasm"), &f.path("publisher.pub"), &png],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("edgeml_bundle_verify_file failed (4)"),
        "{stderr}"
    );
    assert!(!stderr.contains("ERROR: LeakSanitizer"), "{stderr}");
}

#[test]
fn c_api_reports_bad_input_with_codes_and_no_leaks() {
    let f = Fixture::new();
    let exe = f.path("misuse");
    compile(&repo().join("host/capi/tests/c/misuse.c"), &exe);
    let out = run(
        &exe,
        &[
            &f.path("digits.wasm"),
            &f.path("tampered.wasm"),
            &f.path("publisher.pub"),
            &f.path("other.pub"),
            &f.path("digits.edgemlpa"),
            &f.path("other.edgemlpa"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("\n0 failed"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Every check ran.
    for check in [
        "rejects_tampered_bundle",
        "rejects_untrusted_signer",
        "rejects_wrong_shape",
        "rejects_corrupt_png",
        "runtime_new_null_config",
        "predict_after_errors",
        "rejects_artifact_signed_by_untrusted_key",
        "rejects_artifact_trusted_for_another_key",
        "rejects_garbage_artifact",
        "load_precompiled",
        "precompiled_predicts",
    ] {
        assert!(
            stdout.contains(&format!("ok {check}\n")),
            "{check}: {stdout}"
        );
    }
    assert!(!stderr.contains("ERROR: AddressSanitizer"), "{stderr}");
    assert!(!stderr.contains("ERROR: LeakSanitizer"), "{stderr}");
}
