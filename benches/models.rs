//! The performance table: for each model, in one run on one machine,
//!
//! - bare tract, called directly from Rust (the limit for the tract backend);
//! - edgeml's tract backend, through the component (`Model::predict`);
//! - edgeml's sandboxed backend (tract compiled to WebAssembly);
//! - bare onnxruntime, 1 thread, called directly from Rust through `ort` on
//!   the same library (the limit for the onnxruntime backend);
//! - edgeml's onnxruntime backend, through the component;
//!
//! The onnxruntime columns need `ORT_DYLIB_PATH` (libonnxruntime.so, e.g.
//! from the onnxruntime wheel as .ci/run fetches it); without it they read n/a.
//!
//! plus per-call overhead on a trivial model, throughput with 1 and 2 threads,
//! cold and cached load of a 20 MB signed bundle, peak RSS and binary size.
//!
//! Run: `cargo bench --bench models` (add `-- --quick` for a short run).
//! Measurements are interleaved round by round, and ratios are taken within
//! the run, because shared machines are noisy.

use edgeml_runtime::bundle::{self, PackOptions, SecretKey};
use edgeml_runtime::{Backend, Config, Input, Model, Runtime, Tensor, TrustPolicy};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn guest(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(edgeml_guests::DIR).join(format!("{name}.wasm")))
        .expect("guest component")
}

struct Case {
    name: &'static str,
    onnx: &'static str,
    inputs: Vec<(&'static str, &'static str)>,
}

fn npy(name: &str, rel: &str) -> Tensor {
    let bytes = std::fs::read(repo().join("models").join(rel)).unwrap();
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    Tensor::from_f32(name, shape, &f.into_vec::<f32>().unwrap())
}

fn signed_bundle(onnx: &[u8], name: &str, key: &SecretKey) -> Vec<u8> {
    let (inputs, outputs) = edgeml_runtime::onnx_io_schema(onnx).unwrap();
    let unsigned = bundle::pack(&PackOptions {
        name,
        version: semver::Version::new(1, 0, 0),
        component: &guest("edgeml_generic"),
        model: onnx,
        inputs,
        outputs,
        labels: vec![],
        preprocessing: serde_json::Value::Null,
        min_host_version: semver::Version::new(0, 1, 0),
        created: None,
        baseline: None,
        self_test: Vec::new(),
        card: None,
    })
    .unwrap();
    bundle::sign(&unsigned, key).unwrap()
}

fn load(config: &Config, signed: &[u8], policy: &TrustPolicy) -> Model {
    let rt = Runtime::new(config).unwrap();
    let v = rt.verify(signed.to_vec(), policy).unwrap();
    rt.load(&v).unwrap()
}

/// An ONNX model the way a tract user would run it.
fn bare_tract(onnx: &[u8]) -> std::sync::Arc<TypedSimplePlan> {
    tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

/// An ONNX model the way an onnxruntime user would run it from Rust: a
/// session in the same process-wide environment (1 intra-op thread, all
/// graph optimisations), inputs made once, outputs viewed in place.
struct BareOrt {
    session: ort::session::Session,
    inputs: Vec<(String, ort::value::DynValue)>,
}

impl BareOrt {
    fn new(lib: &edgeml_ort::Library, onnx: &[u8], inputs: &[Tensor]) -> Self {
        let session = ort::session::Session::builder(lib.environment())
            .unwrap()
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .unwrap()
            .commit_from_memory(onnx)
            .unwrap();
        let inputs = inputs
            .iter()
            .map(|t| {
                let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
                let value = ort::value::Tensor::from_array((shape, t.to_f32().unwrap()))
                    .unwrap()
                    .into_dyn();
                (t.name.clone(), value)
            })
            .collect();
        BareOrt { session, inputs }
    }

    fn run(&mut self) -> f32 {
        let inputs: Vec<(&str, &ort::value::DynValue)> =
            self.inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let out = self.session.run(inputs).unwrap();
        // Touch the first output, as a caller reading its result would.
        let (_, first) = out.iter().next().unwrap();
        first
            .try_extract_tensor::<f32>()
            .map_or(0.0, |(_, d)| d.first().copied().unwrap_or(0.0))
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 20 };
    // `-- --skip-sandboxed`: leave the sandboxed column out (the slowest one,
    // for a quicker run).
    let with_sandbox = !std::env::args().any(|a| a == "--skip-sandboxed");
    let key = SecretKey::generate().unwrap();
    let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();
    let native_cfg = Config::new();
    // One cache for the sandboxed backend component, compiled once.
    let cache = tempfile::tempdir().unwrap();
    let mut sandbox_cfg = Config::new();
    sandbox_cfg
        .backend(Backend::Sandboxed {
            component: guest("edgeml_tract_backend").into(),
        })
        .cache_dir(cache.path())
        .timeout(Duration::from_secs(120));
    let ort_lib = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(_) => match edgeml_ort::init(&edgeml_ort::Options::default()) {
            Ok(lib) => Some(lib),
            Err(e) => {
                eprintln!("onnxruntime columns skipped: {e}");
                None
            }
        },
        None => {
            eprintln!("onnxruntime columns skipped: set ORT_DYLIB_PATH to libonnxruntime.so");
            None
        }
    };
    let mut ort_cfg = Config::new();
    ort_cfg.backend(Backend::OnnxRuntime);

    let cases = vec![
        Case {
            name: "trivial (x+1)",
            onnx: "trivial/add.onnx",
            inputs: vec![("x", "trivial/input.npy")],
        },
        Case {
            name: "digits",
            onnx: "digits/digits.onnx",
            inputs: vec![("X", "digits/ref_input.npy")],
        },
        Case {
            name: "vad frame",
            onnx: "vad/silero_vad_16k.onnx",
            inputs: vec![
                ("input", "vad/ref_frame_input.npy"),
                ("state", "vad/ref_frame_state.npy"),
            ],
        },
        Case {
            name: "squeezenet",
            onnx: "squeezenet/squeezenet.onnx",
            inputs: vec![("data_0", "squeezenet/ref_input.npy")],
        },
    ];

    let mut rows = Vec::new();
    for case in &cases {
        let onnx = std::fs::read(repo().join("models").join(case.onnx)).unwrap();
        let inputs: Vec<Tensor> = case.inputs.iter().map(|(n, f)| npy(n, f)).collect();
        // Bare tract, as a user would call it.
        let plan = bare_tract(&onnx);
        let mut state = TypedSimpleState::new(&plan).unwrap();
        let order: Vec<String> = plan
            .model()
            .input_outlets()
            .unwrap()
            .iter()
            .map(|o| plan.model().node(o.node).name.clone())
            .collect();
        let tract_inputs: TVec<TValue> = order
            .iter()
            .map(|n| {
                let t = inputs.iter().find(|t| &t.name == n).unwrap();
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                tract_ndarray::ArrayD::from_shape_vec(shape, t.to_f32().unwrap())
                    .unwrap()
                    .into_tensor()
                    .into_tvalue()
            })
            .collect();
        let signed = signed_bundle(&onnx, "bench", &key);
        let native = load(&native_cfg, &signed, &policy);
        let sandboxed = with_sandbox.then(|| load(&sandbox_cfg, &signed, &policy));
        let mut bare_ort = ort_lib.map(|lib| BareOrt::new(lib, &onnx, &inputs));
        let edgeml_ort = ort_lib.map(|_| load(&ort_cfg, &signed, &policy));

        // Iterations per round: about 20 ms of bare tract.
        let t0 = Instant::now();
        state.run(tract_inputs.clone()).unwrap();
        let per = t0.elapsed().max(Duration::from_micros(1));
        let iters = ((20_000.0 / (per.as_secs_f64() * 1e6)) as usize).clamp(3, 2000);
        eprintln!("{}: {iters} calls per round", case.name);
        for _ in 0..3 {
            native.predict(Input::Tensors(inputs.clone())).unwrap();
            if let Some(sandboxed) = &sandboxed {
                sandboxed.predict(Input::Tensors(inputs.clone())).unwrap();
            }
            if let (Some(b), Some(e)) = (bare_ort.as_mut(), edgeml_ort.as_ref()) {
                b.run();
                e.predict(Input::Tensors(inputs.clone())).unwrap();
            }
        }
        let time = |f: &mut dyn FnMut(), into: &mut Vec<Duration>| {
            for _ in 0..iters {
                let t = Instant::now();
                f();
                into.push(t.elapsed());
            }
        };
        let predict = |m: &Model| {
            let i = Input::Tensors(inputs.clone());
            std::hint::black_box(m.predict(i).unwrap());
        };
        let mut t: [Vec<Duration>; 5] = Default::default();
        for _ in 0..rounds {
            time(
                &mut || {
                    std::hint::black_box(state.run(tract_inputs.clone()).unwrap());
                },
                &mut t[0],
            );
            // What edgeml's tract session does after each run: bare tract's
            // AVX-512 kernels otherwise slow the next columns on Intel CPUs.
            edgeml_tract::clear_upper_vector_state();
            time(&mut || predict(&native), &mut t[1]);
            if let Some(sandboxed) = &sandboxed {
                time(&mut || predict(sandboxed), &mut t[2]);
            }
            if let (Some(b), Some(e)) = (bare_ort.as_mut(), edgeml_ort.as_ref()) {
                time(
                    &mut || {
                        std::hint::black_box(b.run());
                    },
                    &mut t[3],
                );
                time(&mut || predict(e), &mut t[4]);
            }
        }
        let [bare, tract, sandbox, bare_ort, edgeml_ort] =
            t.map(|v| (!v.is_empty()).then(|| p50(v)));
        rows.push(Row {
            name: case.name,
            bare: bare.unwrap_or(0.0),
            tract: tract.unwrap_or(0.0),
            sandbox,
            bare_ort,
            edgeml_ort,
            calls: rounds * iters,
        });
    }

    let version = ort_lib.map_or("n/a".to_string(), |l| l.version().to_string());
    println!(
        "\n## Inference latency, p50 per call (µs) and ratios, one run (onnxruntime {version}, 1 thread)\n"
    );
    println!("| model | bare tract | edgeml tract | tract / bare | edgeml sandboxed | sandboxed / bare tract | bare onnxruntime | edgeml onnxruntime | onnxruntime / bare | edgeml tract / bare onnxruntime | calls |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("n/a".into(), f);
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}x | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.bare,
            r.tract,
            r.tract / r.bare,
            opt(r.sandbox, &|x| format!("{x:.1}")),
            opt(r.sandbox, &|x| format!("{:.2}x", x / r.bare)),
            opt(r.bare_ort, &|o| format!("{o:.1}")),
            opt(r.edgeml_ort, &|o| format!("{o:.1}")),
            opt(
                r.edgeml_ort.zip(r.bare_ort).map(|(e, b)| e / b),
                &|x| format!("{x:.2}x")
            ),
            opt(r.bare_ort, &|o| format!("{:.2}x", r.tract / o)),
            r.calls,
        );
    }
    let r = &rows[0];
    println!(
        "\nPer-call overhead on the trivial model (edgeml p50 - bare p50): tract {:.1} µs, onnxruntime {}",
        r.tract - r.bare,
        opt(r.edgeml_ort.zip(r.bare_ort).map(|(e, b)| e - b), &|x| format!("{x:.1} µs")),
    );

    tract_multithreaded_kernels(rounds);
    throughput(&key, &policy, rounds);
    large_bundle(&key, &policy);
    binary_and_rss(&key);
}

struct Row {
    name: &'static str,
    bare: f64,
    tract: f64,
    sandbox: Option<f64>,
    bare_ort: Option<f64>,
    edgeml_ort: Option<f64>,
    calls: usize,
}

/// What closing the gap to onnxruntime with tract's multithreaded matrix
/// kernels would give: bare tract on SqueezeNet with 1 and 2 kernel threads.
fn tract_multithreaded_kernels(rounds: usize) {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let onnx = std::fs::read(repo().join("models/squeezenet/squeezenet.onnx")).unwrap();
    let plan = bare_tract(&onnx);
    let mut state = TypedSimpleState::new(&plan).unwrap();
    let x = npy("data_0", "squeezenet/ref_input.npy");
    let input: TVec<TValue> =
        tvec![
            tract_ndarray::ArrayD::from_shape_vec(vec![1, 3, 224, 224], x.to_f32().unwrap())
                .unwrap()
                .into_tensor()
                .into_tvalue()
        ];
    let pool = Executor::multithread(2);
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..3 {
            let t = Instant::now();
            state.run(input.clone()).unwrap();
            one.push(t.elapsed());
        }
        for _ in 0..3 {
            let i = input.clone();
            let t = Instant::now();
            multithread_tract_scope(pool.clone(), || state.run(i)).unwrap();
            two.push(t.elapsed());
        }
    }
    let (one, two) = (p50(one), p50(two));
    println!(
        "\nBare tract SqueezeNet with tract's multithreaded kernels (multithread-mm): 1 thread {:.2} ms, 2 threads {:.2} ms ({:.2}x faster)",
        one / 1e3,
        two / 1e3,
        one / two
    );
}

/// SqueezeNet through the tract backend with 1 and 2 threads sharing one `Model`.
fn throughput(key: &SecretKey, policy: &TrustPolicy, rounds: usize) {
    let onnx = std::fs::read(repo().join("models/squeezenet/squeezenet.onnx")).unwrap();
    let model = load(
        &Config::new(),
        &signed_bundle(&onnx, "squeezenet", key),
        policy,
    );
    let input = Input::Tensors(vec![npy("data_0", "squeezenet/ref_input.npy")]);
    let calls = rounds * 10;
    let mut rate = [0.0f64; 2];
    for (i, threads) in [1usize, 2].into_iter().enumerate() {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..calls / threads {
                        model.predict(input.clone()).unwrap();
                    }
                });
            }
        });
        rate[i] = (calls / threads * threads) as f64 / t.elapsed().as_secs_f64();
    }
    println!(
        "\nThroughput, SqueezeNet, tract backend: 1 thread {:.1}/s, 2 threads {:.1}/s, ratio {:.2}x",
        rate[0],
        rate[1],
        rate[1] / rate[0]
    );
}

/// Cold (verify + compile) and cached (verify + load artifact + first prediction)
/// load of a ~20 MB signed bundle.
fn large_bundle(key: &SecretKey, policy: &TrustPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.onnx");
    let made = Command::new("python3")
        .arg(repo().join("models/build_models.py"))
        .arg("large")
        .arg(&path)
        .output();
    if !matches!(made, Ok(ref o) if o.status.success()) {
        println!(
            "\n20 MB bundle: skipped (needs python3 with numpy and onnx to generate the model)"
        );
        return;
    }
    let onnx = std::fs::read(&path).unwrap();
    let signed = signed_bundle(&onnx, "large", key);
    let mut config = Config::new();
    config.cache_dir(dir.path().join("cache"));
    let input = Input::Tensors(vec![Tensor::from_f32("x", vec![1, 1600], &vec![0.5; 1600])]);
    let t = Instant::now();
    let m = load(&config, &signed, policy);
    m.predict(input.clone()).unwrap();
    let cold = t.elapsed();
    drop(m);
    println!(
        "\n{:.1} MB signed bundle to first prediction: cold (verify + compile + plan) {:.1} ms",
        signed.len() as f64 / 1e6,
        cold.as_secs_f64() * 1e3,
    );
    // Three cached loads from the bundle file (as a device starts), each in
    // a fresh runtime, to show how stable it is.
    let file = dir.path().join("large.wasm");
    std::fs::write(&file, &signed).unwrap();
    for run in 1..=3 {
        let t = Instant::now();
        let rt = Runtime::new(&config).unwrap();
        let v = rt.verify(rt.read_bundle(&file).unwrap(), policy).unwrap();
        let verified = t.elapsed();
        let m = rt.load(&v).unwrap();
        let info = m.load_info().clone();
        m.predict(input.clone()).unwrap();
        let cached = t.elapsed();
        assert_eq!(info.cache, edgeml_runtime::CacheOutcome::Hit);
        println!(
            "  cached, run {run}: {:.1} ms (read + verify {:.1} ms, load compiled artifact {:.1} ms, \
             load total incl. model plan and first instance {:.1} ms)",
            cached.as_secs_f64() * 1e3,
            verified.as_secs_f64() * 1e3,
            info.compile_or_cache.as_secs_f64() * 1e3,
            info.total.as_secs_f64() * 1e3,
        );
    }
}

/// Release binary size, and peak RSS of `edgeml bench` on SqueezeNet per backend.
fn binary_and_rss(key: &SecretKey) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let bin = target.join("release/edgeml");
    let Ok(meta) = std::fs::metadata(&bin) else {
        println!("\nbinary size and RSS: skipped (build `cargo build --release` first)");
        return;
    };
    println!(
        "\nRelease binary: {:.1} MB ({})",
        meta.len() as f64 / 1e6,
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let onnx = std::fs::read(repo().join("models/squeezenet/squeezenet.onnx")).unwrap();
    std::fs::write(
        dir.path().join("s.wasm"),
        signed_bundle(&onnx, "squeezenet", key),
    )
    .unwrap();
    std::fs::write(dir.path().join("k.pub"), key.public_key().to_bytes()).unwrap();
    // Twice per backend on one cache: the first run compiles (its peak is
    // compilation's), the second loads from the cache (its peak is serving's).
    for backend in ["tract", "onnxruntime", "sandboxed"] {
        let cache = dir.path().join(format!("cache-{backend}"));
        let run = || -> serde_json::Value {
            let out = Command::new(&bin)
                .args([
                    "bench",
                    "s.wasm",
                    "--trust",
                    "k.pub",
                    "--iterations",
                    "20",
                    "--json",
                ])
                .args(["--backend", backend, "--cache-dir"])
                .arg(&cache)
                .current_dir(dir.path())
                .output()
                .unwrap();
            serde_json::from_slice(&out.stdout).unwrap_or_default()
        };
        let mb = |v: &serde_json::Value| {
            v["peak_rss_kb"]
                .as_f64()
                .map_or("n/a".into(), |k| format!("{:.1}", k / 1024.0))
        };
        let (compiling, serving) = (run(), run());
        println!(
            "Peak RSS, `edgeml bench` SqueezeNet, {backend}: serving {} MB, with compilation {} MB",
            mb(&serving),
            mb(&compiling)
        );
    }
}
