//! The performance table: for each model, in one run on one machine,
//!
//! - bare tract, native, called directly from Rust (the limit for the native backend);
//! - edgeml's native backend, through the component (`Model::predict`);
//! - edgeml's sandboxed backend (tract compiled to WebAssembly);
//! - onnxruntime 1 thread, through its Python package (skipped if absent);
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
use std::process::{Command, Stdio};
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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 20 };
    let key = SecretKey::generate().unwrap();
    let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();
    let native_cfg = Config::new();
    let mut sandbox_cfg = Config::new();
    sandbox_cfg.backend(Backend::Sandboxed {
        component: guest("edgeml_tract_backend").into(),
    });

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
    let mut ort_cases = Vec::new();
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
        let sandboxed = load(&sandbox_cfg, &signed, &policy);

        // Iterations per round: about 20 ms of bare tract.
        let t = Instant::now();
        state.run(tract_inputs.clone()).unwrap();
        let per = t.elapsed().max(Duration::from_micros(1));
        let iters = ((20_000.0 / (per.as_secs_f64() * 1e6)) as usize).clamp(3, 2000);
        let (mut bare_t, mut native_t, mut sandbox_t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            native.predict(Input::Tensors(inputs.clone())).unwrap();
            sandboxed.predict(Input::Tensors(inputs.clone())).unwrap();
        }
        for _ in 0..rounds {
            for _ in 0..iters {
                let i = tract_inputs.clone();
                let t = Instant::now();
                state.run(i).unwrap();
                bare_t.push(t.elapsed());
            }
            for _ in 0..iters {
                let i = Input::Tensors(inputs.clone());
                let t = Instant::now();
                native.predict(i).unwrap();
                native_t.push(t.elapsed());
            }
            for _ in 0..iters {
                let i = Input::Tensors(inputs.clone());
                let t = Instant::now();
                sandboxed.predict(i).unwrap();
                sandbox_t.push(t.elapsed());
            }
        }
        rows.push((
            case.name,
            p50(bare_t),
            p50(native_t),
            p50(sandbox_t),
            rounds * iters,
        ));
        ort_cases.push(serde_json::json!({
            "name": case.name,
            "model": repo().join("models").join(case.onnx),
            "inputs": case.inputs.iter().map(|(n, f)| (n.to_string(), repo().join("models").join(f))).collect::<std::collections::BTreeMap<_, _>>(),
            "iterations": (rounds * iters).min(5000),
        }));
    }
    let ort = onnxruntime(&ort_cases);

    println!("\n## Inference latency, p50 per call (µs) and ratios, one run\n");
    println!("| model | bare tract | edgeml native | native / tract | edgeml sandboxed | sandboxed / tract | onnxruntime (1 thread) | native / onnxruntime | calls |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, bare, native, sandbox, n) in &rows {
        let o = ort.as_ref().and_then(|o| o[*name]["p50_us"].as_f64());
        println!(
            "| {name} | {bare:.1} | {native:.1} | {:.2}x | {sandbox:.1} | {:.2}x | {} | {} | {n} |",
            native / bare,
            sandbox / bare,
            o.map_or("n/a".into(), |o| format!("{o:.1}")),
            o.map_or("n/a".into(), |o| format!("{:.2}x", native / o)),
        );
    }
    let (_, bare, native, _, _) = rows[0];
    println!(
        "\nPer-call overhead on the trivial model (native p50 - bare tract p50): {:.1} µs",
        native - bare
    );

    tract_multithreaded_kernels(rounds);
    throughput(&key, &policy, rounds);
    large_bundle(&key, &policy);
    binary_and_rss(&key);
}

fn onnxruntime(cases: &[serde_json::Value]) -> Option<serde_json::Value> {
    let mut child = Command::new("python3")
        .arg(repo().join("benches/onnxruntime_bench.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    std::io::Write::write_all(
        child.stdin.as_mut()?,
        serde_json::to_string(cases).ok()?.as_bytes(),
    )
    .ok()?;
    drop(child.stdin.take());
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        eprintln!(
            "onnxruntime skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
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

/// SqueezeNet through the native backend with 1 and 2 threads sharing one `Model`.
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
        "\nThroughput, SqueezeNet, native backend: 1 thread {:.1}/s, 2 threads {:.1}/s, ratio {:.2}x",
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
    let t = Instant::now();
    let rt = Runtime::new(&config).unwrap();
    let v = rt.verify(signed.clone(), policy).unwrap();
    let verified = t.elapsed();
    let m = rt.load(&v).unwrap();
    let info = m.load_info().clone();
    m.predict(input).unwrap();
    let cached = t.elapsed();
    assert_eq!(info.cache, edgeml_runtime::CacheOutcome::Hit);
    println!(
        "\n{:.1} MB signed bundle to first prediction: cold (verify + compile + plan) {:.1} ms, cached {:.1} ms \
         (verify {:.1} ms, load compiled artifact {:.1} ms, load total incl. model plan and first instance {:.1} ms)",
        signed.len() as f64 / 1e6,
        cold.as_secs_f64() * 1e3,
        cached.as_secs_f64() * 1e3,
        verified.as_secs_f64() * 1e3,
        info.compile_or_cache.as_secs_f64() * 1e3,
        info.total.as_secs_f64() * 1e3,
    );
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
    for backend in ["native", "sandboxed"] {
        let out = Command::new(&bin)
            .args([
                "bench",
                "s.wasm",
                "--trust",
                "k.pub",
                "--iterations",
                "20",
                "--json",
                "--backend",
                backend,
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        println!(
            "Peak RSS, `edgeml bench` SqueezeNet, {backend}: {} MB",
            v["peak_rss_kb"]
                .as_f64()
                .map_or("n/a".into(), |k| format!("{:.1}", k / 1024.0))
        );
    }
}
