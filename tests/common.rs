//! Shared fixtures: paths, keys, packing and signing through the library API.
#![allow(dead_code)]

use edgeml_runtime::bundle::{self, PackOptions, SecretKey};
use edgeml_runtime::{Config, Input, Model, Runtime, Tensor, TrustPolicy, VerifiedBundle};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Numerical tolerance against onnxruntime references: |a - b| <= ATOL + RTOL * |b|.
pub const ATOL: f32 = 1e-4;
pub const RTOL: f32 = 1e-3;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model_path(rel: &str) -> PathBuf {
    repo().join("models").join(rel)
}

pub fn read(p: impl AsRef<Path>) -> Vec<u8> {
    let p = p.as_ref();
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A guest component built by edgeml-guests from guest/.
pub fn guest(name: &str) -> Vec<u8> {
    read(Path::new(edgeml_guests::DIR).join(format!("{name}.wasm")))
}

pub fn edgeml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgeml"))
}

/// Another package's program (`edgeml-agent`, `edgeml-server`), built next
/// to `edgeml` by `cargo test --workspace` (their packages have
/// integration tests, so cargo builds their binaries).
pub fn workspace_bin(name: &str) -> Command {
    let path = Path::new(env!("CARGO_BIN_EXE_edgeml")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    Command::new(path)
}

pub struct Spec {
    pub name: &'static str,
    pub onnx: &'static str,
    pub guest: &'static str,
    pub labels: Option<&'static str>,
    pub preprocess: Option<&'static str>,
}

pub const DIGITS_IMAGE: Spec = Spec {
    name: "digits",
    onnx: "digits/digits.onnx",
    guest: "edgeml_image_classifier",
    labels: Some("digits/labels.txt"),
    preprocess: Some("digits/preprocess.json"),
};
pub const DIGITS_GENERIC: Spec = Spec {
    name: "digits",
    onnx: "digits/digits.onnx",
    guest: "edgeml_generic",
    labels: Some("digits/labels.txt"),
    preprocess: None,
};
pub const VAD: Spec = Spec {
    name: "silero-vad",
    onnx: "vad/silero_vad_16k.onnx",
    guest: "edgeml_voice_activity",
    labels: None,
    preprocess: Some("vad/preprocess.json"),
};
pub const SQUEEZENET: Spec = Spec {
    name: "squeezenet",
    onnx: "squeezenet/squeezenet.onnx",
    guest: "edgeml_generic",
    labels: None,
    preprocess: None,
};
pub const SENSOR: Spec = Spec {
    name: "sensor",
    onnx: "sensor/sensor.onnx",
    guest: "edgeml_generic",
    labels: Some("sensor/labels.txt"),
    preprocess: Some("sensor/preprocess.json"),
};
pub const HOSTILE: Spec = Spec {
    name: "digits",
    onnx: "digits/digits.onnx",
    guest: "edgeml_test_hostile",
    labels: None,
    preprocess: None,
};

/// Pack `model` with the generic component, declaring the digits model's IO
/// schema and `min_host_version`: for bundles whose model or host
/// requirement is deliberately wrong.
pub fn pack_generic_as_digits(model: &[u8], min_host_version: semver::Version) -> Vec<u8> {
    let digits = read(model_path("digits/digits.onnx"));
    let (inputs, outputs) = edgeml_runtime::onnx_io_schema(&digits).expect("IO schema");
    bundle::pack(&PackOptions {
        name: "digits",
        version: semver::Version::new(1, 0, 0),
        component: &guest("edgeml_generic"),
        model,
        inputs,
        outputs,
        labels: vec![],
        preprocessing: serde_json::Value::Null,
        min_host_version,
        created: None,
        baseline: None,
        self_test: Vec::new(),
        card: None,
    })
    .expect("pack")
}

/// Pack a model with the library API (what `edgeml pack` does).
pub fn pack(spec: &Spec) -> Vec<u8> {
    pack_with_baseline(spec, None)
}

/// [`pack`], with a drift baseline in the manifest.
pub fn pack_with_baseline(spec: &Spec, baseline: Option<bundle::Baseline>) -> Vec<u8> {
    pack_custom(spec, "1.0.0", baseline, Vec::new(), |_| {})
}

/// [`pack`] with a version, baseline, self-test vectors, and a chance to
/// change the labels (a packing mistake).
pub fn pack_custom(
    spec: &Spec,
    version: &str,
    baseline: Option<bundle::Baseline>,
    self_test: Vec<bundle::SelfTest>,
    edit_labels: impl FnOnce(&mut Vec<String>),
) -> Vec<u8> {
    let model = read(model_path(spec.onnx));
    let (inputs, outputs) = edgeml_runtime::onnx_io_schema(&model).expect("IO schema");
    let labels = spec
        .labels
        .map(|l| {
            String::from_utf8(read(model_path(l)))
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let mut labels = labels;
    edit_labels(&mut labels);
    let preprocessing = spec
        .preprocess
        .map(|p| serde_json::from_slice(&read(model_path(p))).unwrap())
        .unwrap_or(serde_json::Value::Null);
    bundle::pack(&PackOptions {
        name: spec.name,
        version: version.parse().expect("semver"),
        component: &guest(spec.guest),
        model: &model,
        inputs,
        outputs,
        labels,
        preprocessing,
        min_host_version: semver::Version::new(0, 1, 0),
        created: None,
        baseline,
        self_test,
        card: None,
    })
    .expect("pack")
}

pub struct Publisher {
    pub key: SecretKey,
}

impl Publisher {
    pub fn new() -> Self {
        Publisher {
            key: SecretKey::generate().unwrap(),
        }
    }
    pub fn policy(&self) -> TrustPolicy {
        TrustPolicy::any_of(vec![self.key.public_key()]).unwrap()
    }
    pub fn sign(&self, bundle: &[u8]) -> Vec<u8> {
        bundle::sign(bundle, &self.key).unwrap()
    }
}

pub fn runtime() -> Runtime {
    Runtime::new(&Config::new()).unwrap()
}

/// Pack, sign, verify and load.
pub fn load(spec: &Spec, runtime: &Runtime) -> (VerifiedBundle, Model) {
    let publisher = Publisher::new();
    let signed = publisher.sign(&pack(spec));
    let verified = runtime.verify(signed, &publisher.policy()).expect("verify");
    let model = runtime.load(&verified).expect("load");
    (verified, model)
}

pub fn npy_f32(rel: &str) -> (Vec<u64>, Vec<f32>) {
    let bytes = read(model_path(rel));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    (shape, f.into_vec::<f32>().unwrap())
}

pub fn npy_tensor(name: &str, rel: &str) -> Tensor {
    let (shape, v) = npy_f32(rel);
    Tensor::from_f32(name, shape, &v)
}

pub fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, b)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - b).abs() <= ATOL + RTOL * b.abs(),
            "{what}[{i}]: got {a}, onnxruntime gave {b}"
        );
    }
}

pub fn media(media_type: &str, bytes: Vec<u8>) -> Input {
    Input::Media {
        media_type: media_type.into(),
        bytes,
    }
}

/// The inference backends the model tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tract,
    OnnxRuntime,
    Sandboxed,
}

/// One runtime per backend shared by the model tests, so the sandboxed
/// backend component is compiled once per test run. `None` (printed) for
/// onnxruntime when its library is not here, outside CI.
pub fn shared_runtime(kind: Kind) -> Option<Runtime> {
    static TRACT: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    static ORT: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    static SANDBOXED: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    Some(match kind {
        Kind::Sandboxed => SANDBOXED
            .get_or_init(|| {
                // Correctness tests, not timing ones: on two cores, beside the
                // qemu tests, one SqueezeNet call in the sandbox can take seconds.
                let mut config = sandboxed_config();
                config.timeout(std::time::Duration::from_secs(120));
                Runtime::new(&config).unwrap()
            })
            .clone(),
        Kind::OnnxRuntime => {
            let config = onnxruntime_config()?;
            ORT.get_or_init(|| Runtime::new(&config).unwrap()).clone()
        }
        Kind::Tract => TRACT.get_or_init(runtime).clone(),
    })
}

/// The onnxruntime library the tests load: `$ORT_DYLIB_PATH` (.ci/run takes
/// it from the onnxruntime wheel on PyPI). `None` (printed) without it,
/// outside CI; in CI its absence fails the test.
pub fn onnxruntime_library() -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        Some(p) => Some(p.into()),
        None if std::env::var_os("CI").is_none() => {
            eprintln!(
                "skipping: ORT_DYLIB_PATH is not set (point it at libonnxruntime.so, e.g. from \
                 the onnxruntime wheel; .ci/run does)"
            );
            None
        }
        None => panic!("the onnxruntime backend's tests run in CI: .ci/run sets ORT_DYLIB_PATH"),
    }
}

/// A runtime configuration on the onnxruntime backend, or `None` (see
/// [`onnxruntime_library`]).
pub fn onnxruntime_config() -> Option<Config> {
    let library = onnxruntime_library()?;
    let mut config = Config::new();
    config
        .backend(edgeml_runtime::Backend::OnnxRuntime)
        .onnxruntime_library(Some(library));
    Some(config)
}

pub fn sandboxed_config() -> Config {
    let mut config = Config::new();
    config.backend(edgeml_runtime::Backend::Sandboxed {
        component: guest("edgeml_tract_backend").into(),
    });
    config
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
