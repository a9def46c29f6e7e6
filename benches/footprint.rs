//! Device footprint of `edgeml-agent`: resident memory while it serves a
//! model over its local API, on this machine, as a device would run it (a
//! real fleet server on loopback, a signed release, the agent program).
//!
//! For each of digits (image classifier, PNG requests), the VAD model (WAV
//! requests) and SqueezeNet (a 1x3x224x224 tensor per request): RSS once
//! the release is installed and idle, and RSS and peak RSS after N
//! requests (default 1000), next to the model's own weights. Each model
//! runs with the agent's defaults and again with each memory knob the
//! README names (`--knobs`).
//!
//! Each run also times a cold start: from starting the agent program on an
//! empty state directory to the release installed (enrolment, download,
//! verification, compiling, self-test), and from a restart to the model
//! ready again. With `--no-compiler-agent PATH` (the agent built without
//! Cranelift) the same models run on it too, from releases that carry an
//! artifact precompiled for this machine.
//!
//! Run (the agents are release builds of another package):
//!
//! ```sh
//! cargo build --release --locked -p edgeml-agent
//! cargo build --release --locked -p edgeml-agent --no-default-features \
//!     --target-dir target/no-compiler
//! cargo bench --bench footprint -- [--agent PATH] [--requests N] [--knobs] \
//!     [--no-compiler-agent target/no-compiler/release/edgeml-agent]
//! ```

use base64::Engine as _;
use edgeml_client::wire::fleet::{StatusReport, UpdateState};
use edgeml_collector::{FleetStore, Server, Settings, SqliteStore};
use edgeml_fleet::{BundleRef, Envelope, Release, Root};
use edgeml_runtime::bundle::{self, PackOptions, SecretKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const ADMIN: &str = "bench-admin-token";
const ENROL: &str = "bench-enrolment-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(repo().join("models").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

struct Model {
    name: &'static str,
    onnx: &'static str,
    guest: &'static str,
    labels: Option<&'static str>,
    preprocess: Option<&'static str>,
}

const MODELS: [Model; 3] = [
    Model {
        name: "digits",
        onnx: "digits/digits.onnx",
        guest: "edgeml_image_classifier",
        labels: Some("digits/labels.txt"),
        preprocess: Some("digits/preprocess.json"),
    },
    Model {
        name: "silero-vad",
        onnx: "vad/silero_vad_16k.onnx",
        guest: "edgeml_voice_activity",
        labels: None,
        preprocess: Some("vad/preprocess.json"),
    },
    Model {
        name: "squeezenet",
        onnx: "squeezenet/squeezenet.onnx",
        guest: "edgeml_generic",
        labels: None,
        preprocess: None,
    },
];

fn pack(m: &Model, key: &SecretKey) -> Vec<u8> {
    let model = read(m.onnx);
    let (inputs, outputs) = edgeml_runtime::onnx_io_schema(&model).unwrap();
    let component =
        std::fs::read(Path::new(edgeml_guests::DIR).join(format!("{}.wasm", m.guest))).unwrap();
    let labels = m
        .labels
        .map(|l| {
            String::from_utf8(read(l))
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let preprocessing = m
        .preprocess
        .map(|p| serde_json::from_slice(&read(p)).unwrap())
        .unwrap_or(Value::Null);
    let unsigned = bundle::pack(&PackOptions {
        name: m.name,
        version: "1.0.0".parse().unwrap(),
        component: &component,
        model: &model,
        inputs,
        outputs,
        labels,
        preprocessing,
        min_host_version: semver::Version::new(0, 1, 0),
        created: None,
        baseline: None,
        self_test: Vec::new(),
        card: None,
    })
    .unwrap();
    bundle::sign(&unsigned, key).unwrap()
}

/// The request a client of the model would send.
fn request(m: &Model) -> Value {
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    match m.name {
        "digits" => json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "image/png"}, "data": [b64(read("digits/holdout/000.png"))]}]}),
        "silero-vad" => json!({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "audio/wav"}, "data": [b64(read("vad/speech.wav"))]}]}),
        _ => {
            let bytes = read("squeezenet/ref_input.npy");
            let f = npyz::NpyFile::new(&bytes[..]).unwrap();
            let shape = f.shape().to_vec();
            let data: Vec<f32> = f.into_vec().unwrap();
            let model = read(m.onnx);
            let (inputs, _) = edgeml_runtime::onnx_io_schema(&model).unwrap();
            json!({"inputs": [{"name": inputs[0].name, "shape": shape, "datatype": "FP32", "data": data}]})
        }
    }
}

/// A fleet server on loopback with root version 1 and one release key.
struct Fleet {
    dir: tempfile::TempDir,
    server: Server,
    root_key: SecretKey,
    release_key: SecretKey,
    publisher: SecretKey,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(ADMIN, ENROL);
        settings.fleet.bundle_dir = Some(dir.path().join("bundles"));
        let store = SqliteStore::open(&dir.path().join("fleet.db")).unwrap();
        let server = Server::start(store, settings, "127.0.0.1:0".parse().unwrap()).unwrap();
        let f = Fleet {
            dir,
            server,
            root_key: SecretKey::generate().unwrap(),
            release_key: SecretKey::generate().unwrap(),
            publisher: SecretKey::generate().unwrap(),
        };
        let root = Root::new(
            1,
            SystemTime::now() + Duration::from_secs(86400),
            (&[f.root_key.public_key()], 1),
            (&[f.release_key.public_key()], 1),
            (&[f.publisher.public_key()], 1),
        );
        let env = Envelope::sign(&root, &[&f.root_key]).unwrap().to_vec();
        std::fs::write(f.dir.path().join("root.json"), &env).unwrap();
        f.client().publish_root(1, env).unwrap();
        std::fs::write(f.dir.path().join("enrol.token"), ENROL).unwrap();
        f
    }

    fn client(&self) -> edgeml_client::Client {
        edgeml_client::Client::new(&self.server.url())
            .unwrap()
            .with_admin_token(ADMIN)
    }

    /// Publish `bundle` to `channel`, with an artifact precompiled for this
    /// machine if `precompiled`.
    fn publish(&self, channel: &str, model: &str, bundle: Vec<u8>, precompiled: bool) {
        let sha256 = hex::encode(Sha256::digest(&bundle));
        let size = bundle.len() as u64;
        let artifacts = if precompiled {
            let rt = edgeml_runtime::Runtime::new(&edgeml_runtime::Config::new()).unwrap();
            let policy =
                edgeml_runtime::TrustPolicy::any_of(vec![self.publisher.public_key()]).unwrap();
            let verified = rt.verify(bundle.clone(), &policy).unwrap();
            let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
            let artifact = rt.precompile(&verified, &target, &self.publisher).unwrap();
            let stored = self
                .client()
                .upload_artifact(&hex::encode(Sha256::digest(&artifact)), artifact.clone())
                .unwrap();
            vec![edgeml_fleet::ArtifactRef {
                target: stored.target,
                engine: stored.engine,
                sha256: stored.sha256,
                size: artifact.len() as u64,
            }]
        } else {
            Vec::new()
        };
        self.client().upload_bundle(&sha256, bundle).unwrap();
        let release = Release {
            kind: "release".into(),
            channel: channel.into(),
            version: 1,
            expires: humantime::format_rfc3339_seconds(
                SystemTime::now() + Duration::from_secs(86400),
            )
            .to_string(),
            model: model.into(),
            model_version: "1.0.0".parse().unwrap(),
            bundle: BundleRef { sha256, size },
            rollout_percent: 100.0,
            allow_downgrade: false,
            artifacts,
            target: None,
            schedule: None,
            abort: None,
        };
        let env = Envelope::sign(&release, &[&self.release_key]).unwrap();
        self.client()
            .publish_release(channel, env.to_vec())
            .unwrap();
    }

    fn report(&self, id: &str) -> Option<StatusReport> {
        SqliteStore::open(&self.dir.path().join("fleet.db"))
            .unwrap()
            .fleet_devices()
            .unwrap()
            .into_iter()
            .find(|d| d.device_id == id)
            .map(|d| d.status)
    }
}

struct Memory {
    rss: u64,
    /// Anonymous part of `rss` (heap, compiled code, guest memories).
    anon: u64,
    peak: u64,
    virt: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Memory {
        rss: kb("VmRSS:"),
        anon: kb("RssAnon:"),
        peak: kb("VmHWM:"),
        virt: kb("VmSize:"),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

struct Run {
    idle: Memory,
    after: Memory,
    /// Idle again after a restart: the installed release loaded from the
    /// agent's state and compiled-code cache (what a rebooted device runs).
    restarted: Memory,
    per_request: Duration,
    /// From starting the agent on an empty state directory to installed.
    install: Duration,
    /// From restarting it to the model ready.
    restart: Duration,
}

/// A setting to compare with the defaults: environment and `[runtime]` lines.
struct Knob {
    label: &'static str,
    env: &'static [(&'static str, &'static str)],
    runtime: &'static str,
}

const KNOBS: [Knob; 5] = [
    Knob {
        label: "agent defaults",
        env: &[],
        runtime: "",
    },
    Knob {
        label: "idle_instances = 4 (the library default)",
        env: &[],
        runtime: "idle_instances = 4\n",
    },
    Knob {
        label: "parallel_compilation = true",
        env: &[],
        runtime: "parallel_compilation = true\n",
    },
    Knob {
        label: "memory_reservation_mib = 64",
        env: &[],
        runtime: "memory_reservation_mib = 64\n",
    },
    Knob {
        label: "MALLOC_ARENA_MAX=2",
        env: &[("MALLOC_ARENA_MAX", "2")],
        runtime: "",
    },
];

/// Install `m` on a fresh agent with `knob`, wait, measure, send `n`
/// requests, measure.
fn run(f: &Fleet, agent: &Path, m: &Model, n: usize, knob: &Knob, tag: &str, channel: &str) -> Run {
    let id = format!("{}-{tag}", m.name.replace('.', "-"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = f.dir.path().join(format!("{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "device_id = \"{id}\"\ndir = \"{id}\"\nserver = \"{}\"\nchannel = \"{}\"\nroot = \"root.json\"\n\
             enrolment_token_file = \"enrol.token\"\npoll_interval = \"500ms\"\n[health]\nwatch = \"0s\"\n\
             [serve]\nlisten = \"127.0.0.1:{port}\"\n[runtime]\n{}",
            f.server.url(),
            channel,
            knob.runtime
        ),
    )
    .unwrap();
    let mut cmd = Command::new(agent);
    cmd.arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in knob.env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child: Child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !f
        .report(&id)
        .is_some_and(|r| r.state == UpdateState::Installed)
    {
        assert!(Instant::now() < deadline, "{id} did not install");
        std::thread::sleep(Duration::from_millis(20));
    }
    let install = started.elapsed();
    // Let the install's transient allocations go back.
    std::thread::sleep(Duration::from_secs(2));
    let idle = memory(child.id());
    let http = reqwest::blocking::Client::new();
    let body = serde_json::to_vec(&request(m)).unwrap();
    let url = format!("http://127.0.0.1:{port}/v2/models/{}/infer", m.name);
    let started = Instant::now();
    for _ in 0..n {
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().unwrap_or_default());
    }
    let per_request = started.elapsed() / n.max(1) as u32;
    let after = memory(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let started = Instant::now();
    let mut child: Child = cmd.spawn().unwrap();
    let ready = format!("http://127.0.0.1:{port}/v2/models/{}/ready", m.name);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !http
        .get(&ready)
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{id} did not come back");
        std::thread::sleep(Duration::from_millis(10));
    }
    let restart = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = memory(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Run {
        idle,
        after,
        restarted,
        per_request,
        install,
        restart,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let n: usize = arg("--requests").map_or(1000, |v| v.parse().unwrap());
    let knobs = args.iter().any(|a| a == "--knobs");
    // <target>/release/deps/footprint-* -> <target>/release/edgeml-agent
    let agent = arg("--agent").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("edgeml-agent")
    });
    assert!(
        agent.is_file(),
        "{} is missing: cargo build --release --locked -p edgeml-agent",
        agent.display()
    );
    println!(
        "agent: {} ({} on disk)\n",
        agent.display(),
        mib(std::fs::metadata(&agent).unwrap().len())
    );
    let no_compiler = arg("--no-compiler-agent").map(PathBuf::from);
    if let Some(a) = &no_compiler {
        println!(
            "agent without a compiler: {} ({} on disk)\n",
            a.display(),
            mib(std::fs::metadata(a).unwrap().len())
        );
    }
    let f = Fleet::new();
    for m in &MODELS {
        f.publish(m.name, m.name, pack(m, &f.publisher), false);
        if no_compiler.is_some() {
            let channel = format!("{}-precompiled", m.name);
            f.publish(&channel, m.name, pack(m, &f.publisher), true);
        }
    }
    let variants = if knobs { &KNOBS[..] } else { &KNOBS[..1] };
    println!("| model | weights | settings | RSS idle, installed (anon) | RSS after {n} requests | RSS − weights | peak RSS | virtual | RSS idle, restarted (anon) | per request | start → installed | restart → ready |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |m: &Model, weights: u64, label: &str, r: &Run| {
        println!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} ({}) | {:.2} ms | {:.0} ms | {:.0} ms |",
            m.name,
            mib(weights),
            label,
            mib(r.idle.rss),
            mib(r.idle.anon),
            mib(r.after.rss),
            mib(r.after.rss.saturating_sub(weights)),
            mib(r.after.peak),
            mib(r.after.virt),
            mib(r.restarted.rss),
            mib(r.restarted.anon),
            r.per_request.as_secs_f64() * 1e3,
            r.install.as_secs_f64() * 1e3,
            r.restart.as_secs_f64() * 1e3,
        );
    };
    for m in &MODELS {
        let weights = read(m.onnx).len() as u64;
        for (i, knob) in variants.iter().enumerate() {
            let r = run(&f, &agent, m, n, knob, &format!("v{i}"), m.name);
            row(m, weights, knob.label, &r);
        }
        if let Some(a) = &no_compiler {
            let channel = format!("{}-precompiled", m.name);
            let r = run(&f, a, m, n, &KNOBS[0], "nc", &channel);
            row(m, weights, "no compiler, precompiled artifact", &r);
        }
    }
}
