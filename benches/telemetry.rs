//! Telemetry figures, in one run on one machine:
//!
//! 1. overhead per predict: the digits model (one 8x8 digit per call, as a
//!    device sees them) without telemetry, with telemetry, and with telemetry
//!    and input samples, calls interleaved round by round; plus the cost of
//!    `ModelTelemetry::record` alone;
//! 2. collector ingest rate: signed gzip batches of hourly windows with 50
//!    monitored features, POSTed over loopback to a collector on a SQLite
//!    file by two client threads;
//! 3. bytes shipped per device per day: a device with 50 monitored features
//!    (all covered by the bundle's baseline, so they travel as counts on the
//!    baseline's grid) and hourly windows (one prediction a second) ships a
//!    day to a real collector; measured per KLL `sketch_k` (which now sizes
//!    only the latency sketch), with the rank error it buys.
//!
//! Run: `cargo bench --bench telemetry` (add `-- --quick` for a short run).

use edgeml_collector::{Server, Settings, SqliteStore};
use edgeml_runtime::bundle::{self, PackOptions, SecretKey};
use edgeml_runtime::telemetry::wire::{self, Batch, ModelRef, Record, RecordBody, WindowRecord};
use edgeml_runtime::telemetry::{
    BaselineBuilder, CollectorConfig, DeviceIdentity, ModelDescriptor, Observed, SampleConfig,
    Sketch, Telemetry, TelemetryConfig,
};
use edgeml_runtime::{Config, Input, Model, Runtime, Tensor, TrustPolicy};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FEATURES: usize = 50;
const ADMIN: &str = "bench-admin-token";
const ENROL: &str = "bench-enrolment-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Deterministic pseudo-random numbers (no dependency for a benchmark).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

// ------------------------------------------------------------ 1. overhead

fn digits_model(config: &Config, signed: &[u8], policy: &TrustPolicy) -> Model {
    let rt = Runtime::new(config).unwrap();
    let v = rt.verify(signed.to_vec(), policy).unwrap();
    rt.load(&v).unwrap()
}

fn overhead(quick: bool, tmp: &Path) {
    let onnx = std::fs::read(repo().join("models/digits/digits.onnx")).unwrap();
    let guest = std::fs::read(Path::new(edgeml_guests::DIR).join("edgeml_generic.wasm")).unwrap();
    let (inputs, outputs) = edgeml_runtime::onnx_io_schema(&onnx).unwrap();
    let key = SecretKey::generate().unwrap();
    let signed = bundle::sign(
        &bundle::pack(&PackOptions {
            name: "digits",
            version: semver::Version::new(1, 0, 0),
            component: &guest,
            model: &onnx,
            inputs,
            outputs,
            labels: (0..10).map(|d| d.to_string()).collect(),
            preprocessing: serde_json::json!({"scores_output": "probabilities", "top_k": 3}),
            min_host_version: semver::Version::new(0, 1, 0),
            created: None,
            baseline: None,
            self_test: Vec::new(),
            card: None,
        })
        .unwrap(),
        &key,
    )
    .unwrap();
    let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();

    let off = digits_model(&Config::new(), &signed, &policy);
    let on_telemetry = Telemetry::start(TelemetryConfig::new("bench", tmp.join("on"))).unwrap();
    let mut c = Config::new();
    c.telemetry(on_telemetry.clone());
    let on = digits_model(&c, &signed, &policy);
    let mut sampled = TelemetryConfig::new("bench", tmp.join("samples"));
    sampled.samples = Some(SampleConfig::default());
    let sampled_telemetry = Telemetry::start(sampled).unwrap();
    let mut c = Config::new();
    c.telemetry(sampled_telemetry.clone());
    let with_samples = digits_model(&c, &signed, &policy);

    let bytes = std::fs::read(repo().join("models/digits/ref_input.npy")).unwrap();
    let rows: Vec<f32> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
    let one = |i: usize| {
        let row = &rows[(i % 16) * 64..(i % 16 + 1) * 64];
        Input::Tensors(vec![Tensor::from_f32("X", vec![1, 64], row)])
    };
    let batch = |_: usize| Input::Tensors(vec![Tensor::from_f32("X", vec![16, 64], &rows)]);
    let models = [("off", &off), ("on", &on), ("on + samples", &with_samples)];
    println!("## 1. Telemetry overhead per predict (digits)\n");
    println!("| input | telemetry | p50 per predict | overhead | overhead / predict |");
    println!("|---|---|---:|---:|---:|");
    let mut p_one = 0.0;
    for (what, input) in [
        ("one digit [1, 64]", &one as &dyn Fn(usize) -> Input),
        ("16 digits [16, 64]", &batch),
    ] {
        for (_, m) in &models {
            for i in 0..200 {
                m.predict(input(i)).unwrap();
            }
        }
        let (rounds, per_round) = if quick { (40, 50) } else { (200, 100) };
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); models.len()];
        for r in 0..rounds {
            for (j, (_, m)) in models.iter().enumerate() {
                for i in 0..per_round {
                    let inp = input(r * per_round + i);
                    let t = Instant::now();
                    m.predict(inp).unwrap();
                    times[j].push(t.elapsed());
                }
            }
        }
        let p: Vec<f64> = times.into_iter().map(p50).collect();
        for (j, (name, _)) in models.iter().enumerate() {
            let d = p[j] - p[0];
            println!(
                "| {what} | {name} | {:.2} µs | {:+.2} µs | {:+.1}% |",
                p[j],
                d,
                100.0 * d / p[0]
            );
        }
        if p_one == 0.0 {
            p_one = p[0];
        }
    }
    let p = [p_one];

    // `record` alone: what telemetry adds to each predict, without the predict's noise.
    let alone = Telemetry::start(TelemetryConfig::new("bench", tmp.join("alone"))).unwrap();
    let labels: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let rec = alone
        .register(ModelDescriptor {
            model: ModelRef {
                name: "digits".into(),
                version: "1.0.0".into(),
                digest: "cd".repeat(32),
            },
            monitoring_features: on.metadata().monitoring_features.clone(),
            labels,
            baseline: None,
        })
        .unwrap();
    let monitoring = [0.3f32, 0.4, 0.0, 1.0];
    let scores = [(3u32, 0.9f32), (8, 0.05), (5, 0.02)];
    let n = if quick { 100_000 } else { 1_000_000 };
    let t = Instant::now();
    for i in 0..n {
        rec.record(
            Duration::from_micros(30 + (i % 7) as u64),
            Ok(Observed {
                monitoring: &monitoring,
                scores: &scores,
                value: None,
            }),
            None,
            || None,
        );
    }
    let per = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    println!(
        "\n`ModelTelemetry::record` alone: {per:.0} ns per call ({n} calls; {:.2}% of the p50 predict without telemetry)\n",
        100.0 * per / 1e3 / p[0]
    );
    alone.shutdown();
    on_telemetry.shutdown();
    sampled_telemetry.shutdown();
}

// ------------------------------------------------------ 2. ingest rate

fn feature_names() -> Vec<String> {
    (0..FEATURES).map(|i| format!("f{i:02}")).collect()
}

/// An hour of one prediction a second: 3600 values per feature.
fn hourly_window(rng: &mut Rng, k: u16, start_ms: u64) -> WindowRecord {
    let mut latency = Sketch::new(k);
    let mut numeric = BTreeMap::new();
    for name in feature_names() {
        let mut s = Sketch::new(k);
        for _ in 0..3600 {
            s.update(rng.normal());
        }
        numeric.insert(name, s.to_base64());
    }
    for _ in 0..3600 {
        latency.update(30.0 + 5.0 * rng.normal().abs());
    }
    WindowRecord {
        model: ModelRef {
            name: "sensor-50".into(),
            version: "1.0.0".into(),
            digest: "ef".repeat(32),
        },
        start_ms,
        end_ms: start_ms + 3_600_000,
        count: 3600,
        errors: BTreeMap::new(),
        latency_us: latency.to_base64(),
        numeric,
        binned: BTreeMap::new(),
        categorical: BTreeMap::new(),
        drift: Vec::new(),
        drifted: false,
        recovered: false,
        samples_over_budget: 0,
        confidence_sum: 0.0,
        scored: 0,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn ingest_rate(quick: bool, tmp: &Path) {
    let server = Server::start(
        SqliteStore::open(&tmp.join("ingest.db")).unwrap(),
        Settings::new(ADMIN, ENROL),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let client = reqwest::blocking::Client::new();
    let devices = 8;
    let (batches_per_device, windows_per_batch) = if quick { (2, 24) } else { (6, 24) };
    // Prepare every signed body first: the clock measures the collector.
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let template: Vec<WindowRecord> = (0..windows_per_batch)
        .map(|h| hourly_window(&mut rng, 200, h as u64 * 3_600_000))
        .collect();
    let mut bodies = Vec::new();
    for d in 0..devices {
        let dir = tmp.join(format!("dev{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        let id = DeviceIdentity::load_or_create(&dir, &format!("gw-{d:02}")).unwrap();
        let resp = client
            .post(format!("{}/v1/enrol", server.url()))
            .bearer_auth(ENROL)
            .json(&serde_json::json!({"device_id": id.device_id(), "public_key": id.public_key_hex()}))
            .send()
            .unwrap();
        assert!(resp.status().is_success());
        for b in 0..batches_per_device {
            let records = template
                .iter()
                .map(|w| Record {
                    id: wire::new_record_id(),
                    body: RecordBody::Window(WindowRecord {
                        start_ms: w.start_ms + b as u64 * 86_400_000,
                        end_ms: w.end_ms + b as u64 * 86_400_000,
                        ..w.clone()
                    }),
                })
                .collect();
            let body = gzip(
                &serde_json::to_vec(&Batch {
                    device_id: id.device_id().into(),
                    sent_ms: 0,
                    spool: Default::default(),
                    records,
                })
                .unwrap(),
            );
            let sig = id.sign_batch(&body);
            bodies.push((id.device_id().to_string(), sig, body));
        }
    }
    let total_windows = bodies.len() * windows_per_batch;
    let mean_body = bodies.iter().map(|b| b.2.len()).sum::<usize>() / bodies.len();
    let url = format!("{}/v1/ingest", server.url());
    let t = Instant::now();
    let halves: Vec<Vec<_>> = {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (i, x) in bodies.into_iter().enumerate() {
            if i % 2 == 0 {
                a.push(x)
            } else {
                b.push(x)
            }
        }
        vec![a, b]
    };
    std::thread::scope(|s| {
        for half in &halves {
            let url = &url;
            s.spawn(move || {
                let client = reqwest::blocking::Client::new();
                for (device, sig, body) in half {
                    let resp = client
                        .post(url)
                        .header(wire::DEVICE_HEADER, device)
                        .header(wire::SIGNATURE_HEADER, sig)
                        .header("content-encoding", "gzip")
                        .body(body.clone())
                        .send()
                        .unwrap();
                    assert!(
                        resp.status().is_success(),
                        "{}",
                        resp.text().unwrap_or_default()
                    );
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!("## 2. Collector ingest (2 client threads, loopback, SQLite file)\n");
    println!(
        "{total_windows} hourly windows of {FEATURES} features (k = 200) in {} batches of {windows_per_batch} \
         (mean body {:.0} KB gzip): {secs:.2} s = **{:.0} windows/s** ({:.2} MB/s of request bodies)\n",
        total_windows / windows_per_batch,
        mean_body as f64 / 1e3,
        total_windows as f64 / secs,
        (mean_body * total_windows / windows_per_batch) as f64 / 1e6 / secs
    );
    server.stop();
}

// ------------------------------------------------------ 3. bytes per day

/// Largest |sketch rank − true rank| over the percentiles 1..99 of `values`.
fn rank_error(k: u16, values: &[f32]) -> f64 {
    let mut s = Sketch::new(k);
    values.iter().for_each(|&v| s.update(v));
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len() as f64;
    (1..100)
        .map(|p| {
            let q = s.quantile(p as f64 / 100.0).unwrap() as f32;
            let true_rank = sorted.partition_point(|&x| x <= q) as f64 / n;
            (true_rank - p as f64 / 100.0).abs()
        })
        .fold(0.0, f64::max)
}

fn bytes_per_day(tmp: &Path) {
    let server = Server::start(
        SqliteStore::open(&tmp.join("bytes.db")).unwrap(),
        Settings::new(ADMIN, ENROL),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut builder = BaselineBuilder::new(feature_names(), vec!["normal".into(), "fault".into()]);
    let ref_values: Vec<Vec<f32>> = (0..1000)
        .map(|_| (0..FEATURES).map(|_| rng.normal()).collect())
        .collect();
    for v in &ref_values {
        builder.add(Observed {
            monitoring: v,
            scores: &[(0, 0.9), (1, 0.1)],
            value: None,
        });
    }
    let baseline = builder.build();
    println!("## 3. Bytes shipped per device per day ({FEATURES} features, hourly windows, 1 prediction/s)\n");
    println!("| sketch_k (latency) | per window (gzip) | per day (24 windows) | model record, once per load | max rank error |");
    println!("|---:|---:|---:|---:|---:|");
    let hour: Vec<f32> = (0..3600).map(|_| rng.normal()).collect();
    for k in [200u16, 50] {
        let dir = tmp.join(format!("k{k}"));
        let mut config = TelemetryConfig::new(format!("gw-k{k}"), &dir);
        config.sketch_k = k;
        config.window = Duration::from_secs(3600);
        let mut col = CollectorConfig::new(server.url());
        col.enrolment_token = Some(ENROL.into());
        config.collector = Some(col);
        let telemetry = Telemetry::start(config).unwrap();
        let rec = telemetry
            .register(ModelDescriptor {
                model: ModelRef {
                    name: "sensor-50".into(),
                    version: "1.0.0".into(),
                    digest: "ef".repeat(32),
                },
                monitoring_features: feature_names(),
                labels: vec!["normal".into(), "fault".into()],
                baseline: Some(baseline.clone()),
            })
            .unwrap();
        // The model record goes first, alone.
        let model_bytes = telemetry.flush(Duration::from_secs(30)).shipped_bytes;
        let mut values = vec![0f32; FEATURES];
        for _ in 0..24 {
            for _ in 0..3600 {
                values.iter_mut().for_each(|v| *v = rng.normal());
                let top = rng.uniform() as f32;
                rec.record(
                    Duration::from_micros(40),
                    Ok(Observed {
                        monitoring: &values,
                        scores: &[(0, 0.5 + top / 2.0), (1, 0.5 - top / 2.0)],
                        value: None,
                    }),
                    None,
                    || None,
                );
            }
            // Close the hour and ship it, as a device that is online would.
            telemetry.flush(Duration::from_secs(30));
        }
        let stats = telemetry.stats();
        assert_eq!(stats.spool.pending_records, 0, "{stats:?}");
        assert_eq!(stats.shipped_records, 25);
        let day = stats.shipped_bytes - model_bytes;
        println!(
            "| {k} | {:.1} KB | **{:.0} KB** | {:.1} KB | {:.2}% |",
            day as f64 / 24.0 / 1e3,
            day as f64 / 1e3,
            model_bytes as f64 / 1e3,
            100.0 * rank_error(k, &hour)
        );
        telemetry.shutdown();
    }
    println!();
    server.stop();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let tmp = tempfile::tempdir().unwrap();
    overhead(quick, tmp.path());
    ingest_rate(quick, tmp.path());
    bytes_per_day(tmp.path());
}
