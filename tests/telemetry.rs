//! Telemetry end to end on loopback: real models with baselines computed from
//! their reference data, a device pipeline writing a real spool, and a real
//! collector (axum on 127.0.0.1, SQLite file) receiving signed gzip batches.

use crate::common::*;
use crate::db::TestDb;
use edgeml_client::wire::telemetry::{DriftReport, FleetStats, Range};
use edgeml_client::SampleFormat;
use edgeml_collector::store::Query;
use edgeml_collector::{Server, Settings};
use edgeml_runtime::telemetry::drift::FeatureDrift;
use edgeml_runtime::telemetry::wire::{
    self, Batch, Record, RecordBody, SampleInput, SpoolStats, WindowRecord,
};
use edgeml_runtime::telemetry::{
    CollectorConfig, DeviceIdentity, DriftStatus, SampleConfig, Sketch, Telemetry, TelemetryConfig,
    WindowDrift,
};
use edgeml_runtime::{Config, Input, Model, Runtime, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const ADMIN: &str = "admin-token-for-tests";
const ENROL: &str = "enrolment-token-for-tests";
const FLUSH: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ fixtures

/// A collector on the test's database in `dir` (SQLite, or PostgreSQL
/// with `EDGEML_TEST_DB=postgres`; the same `dir` is the same database).
fn collector_at(dir: &Path, addr: SocketAddr) -> Server {
    Server::start_with(TestDb::new(dir).open(), Settings::new(ADMIN, ENROL), addr)
        .expect("start the collector")
}

fn collector(db: &Path) -> Server {
    collector_at(db, "127.0.0.1:0".parse().unwrap())
}

/// A device configuration shipping to `url`, with windows closed by
/// `flush` (an hour is longer than any test) and short retry delays.
fn device(dir: &Path, id: &str, url: &str) -> TelemetryConfig {
    let mut c = TelemetryConfig::new(id, dir);
    c.window = Duration::from_secs(3600);
    let mut col = CollectorConfig::new(url);
    col.enrolment_token = Some(ENROL.into());
    col.interval = Duration::from_millis(100);
    col.timeout = Duration::from_secs(10);
    col.backoff_base = Duration::from_millis(50);
    col.backoff_max = Duration::from_millis(400);
    c.collector = Some(col);
    c
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An admin GET; panics unless 200.
/// The operator's typed client of `server`.
fn admin(server: &Server) -> edgeml_client::Client {
    edgeml_client::Client::new(&server.url())
        .unwrap()
        .with_admin_token(ADMIN)
}

fn fleet_stats(server: &Server, model: &str) -> FleetStats {
    admin(server)
        .stats(model, "1.0.0", &Range::default())
        .unwrap()
        .stats
}

fn fleet_drift(server: &Server, model: &str, bucket: Duration) -> DriftReport {
    admin(server)
        .drift(model, "1.0.0", &Range::default(), bucket)
        .unwrap()
        .drift
}

/// Rows of a `[N, D]` float32 `.npy` under models/.
fn rows(rel: &str) -> Vec<Vec<f32>> {
    let (shape, v) = npy_f32(rel);
    assert_eq!(shape.len(), 2, "{rel}: expected [N, D]");
    v.chunks_exact(shape[1] as usize)
        .map(<[f32]>::to_vec)
        .collect()
}

/// One example per row, for a model whose only input is `[N, D]`.
fn inputs(model: &Model, rows: &[Vec<f32>]) -> Vec<Input> {
    let name = model.manifest().inputs[0].name.clone();
    rows.iter()
        .map(|r| Input::Tensors(vec![Tensor::from_f32(&name, vec![1, r.len() as u64], r)]))
        .collect()
}

/// What `edgeml pack --reference` does: load the packed model once, run the
/// reference rows through it, and pack again with the resulting baseline.
fn signed_with_baseline(spec: &Spec, reference: &str, publisher: &Publisher) -> Vec<u8> {
    let runtime = Runtime::new(&Config::new()).unwrap();
    let (_, model) = load(spec, &runtime);
    let baseline = model
        .baseline(inputs(&model, &rows(reference)))
        .expect("baseline");
    assert_eq!(baseline.examples, rows(reference).len() as u64);
    publisher.sign(&pack_with_baseline(spec, Some(baseline)))
}

/// A device: a runtime with telemetry on, and one model loaded.
struct Device {
    telemetry: Telemetry,
    model: Model,
}

impl Device {
    fn start(config: TelemetryConfig, bundle: &[u8], publisher: &Publisher) -> Device {
        let telemetry = Telemetry::start(config).expect("start telemetry");
        let mut config = Config::new();
        config.telemetry(telemetry.clone());
        let runtime = Runtime::new(&config).unwrap();
        let verified = runtime
            .verify(bundle.to_vec(), &publisher.policy())
            .unwrap();
        let model = runtime.load(&verified).unwrap();
        Device { telemetry, model }
    }

    fn predict_all(&self, inputs: Vec<Input>) {
        for input in inputs {
            self.model.predict(input).expect("predict");
        }
    }

    /// Close the window and wait until the collector has everything.
    fn window(&self) -> WindowDrift {
        let stats = self.telemetry.flush(FLUSH);
        assert_eq!(
            stats.spool.pending_records, 0,
            "the collector did not take everything: {stats:?}"
        );
        let drift = self.telemetry.drift();
        assert_eq!(drift.len(), 1, "one model with a baseline");
        drift[0].clone()
    }
}

fn status(features: &[FeatureDrift], name: &str) -> DriftStatus {
    features
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no feature `{name}` in {features:?}"))
        .status
}

fn local_status(d: &WindowDrift, name: &str) -> DriftStatus {
    d.features
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no feature `{name}` in {:?}", d.features))
        .status
}

/// Run `data` through a model in two windows on one device reporting to a
/// collector; return the device's verdict per window and the collector's
/// drift report over both.
fn two_windows(
    spec: &Spec,
    reference: &str,
    data: Vec<Vec<f32>>,
) -> (Vec<WindowDrift>, DriftReport, FleetStats) {
    let tmp = tempfile::tempdir().unwrap();
    let server = collector(tmp.path());
    let publisher = Publisher::new();
    let bundle = signed_with_baseline(spec, reference, &publisher);
    let dev = Device::start(
        device(&tmp.path().join("device"), "gw-01", &server.url()),
        &bundle,
        &publisher,
    );
    let half = data.len() / 2;
    let mut local = Vec::new();
    for chunk in [&data[..half], &data[half..]] {
        dev.predict_all(inputs(&dev.model, chunk));
        local.push(dev.window());
    }
    let drift = fleet_drift(&server, spec.name, Duration::from_secs(86400));
    let stats = fleet_stats(&server, spec.name);
    assert_eq!(stats.count, data.len() as u64, "{stats:?}");
    assert_eq!(stats.windows, 2, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    dev.telemetry.shutdown();
    (local, drift, stats)
}

/// Features the collector flagged as `drift`.
fn alerted(drift: &DriftReport) -> Vec<String> {
    drift
        .alerts
        .iter()
        .filter(|a| a.feature.status == DriftStatus::Drift)
        .map(|a| a.feature.name.clone())
        .collect()
}

// ------------------------------------------------------------------- drift

#[test]
fn shifted_sensor_readings_are_flagged_as_drift_within_two_windows() {
    let (local, drift, _) =
        two_windows(&SENSOR, "sensor/reference.npy", rows("sensor/shifted.npy"));
    // On the device, between uploads: the first window is already flagged,
    // on the channels that moved and not on the one that did not.
    for w in &local {
        assert!(w.drifted, "{w:?}");
        assert_eq!(w.count, 300);
        for moved in ["temperature_c", "humidity_pct", "vibration_rms"] {
            assert_eq!(local_status(w, moved), DriftStatus::Drift, "{moved}: {w:?}");
        }
        assert_eq!(
            local_status(w, "pressure_kpa"),
            DriftStatus::Stable,
            "{w:?}"
        );
    }
    // At the collector, from the merged sketches.
    let bucket = &drift.buckets[0];
    assert_eq!(bucket.count, 600);
    assert!(bucket.drifted);
    assert_eq!(
        status(&bucket.features, "temperature_c"),
        DriftStatus::Drift
    );
    assert_eq!(
        status(&bucket.features, "pressure_kpa"),
        DriftStatus::Stable
    );
    let flagged = alerted(&drift);
    for moved in ["temperature_c", "humidity_pct", "vibration_rms"] {
        assert!(
            flagged.iter().any(|f| f == moved),
            "{moved} not in {flagged:?}"
        );
    }
}

#[test]
fn unshifted_sensor_readings_are_not_flagged() {
    let (local, drift, _) = two_windows(&SENSOR, "sensor/reference.npy", rows("sensor/live.npy"));
    for w in &local {
        assert!(!w.drifted, "{w:?}");
        assert!(w
            .features
            .iter()
            .all(|f| f.status != DriftStatus::InsufficientData));
    }
    assert!(!drift.buckets[0].drifted, "{drift:?}");
    assert_eq!(alerted(&drift), Vec::<String>::new());
}

#[test]
fn inverted_digits_are_flagged_as_drift_within_two_windows() {
    // The same held-out digits, ink and paper swapped (pixels are in [0, 1]).
    let inverted = rows("digits/live.npy")
        .into_iter()
        .map(|r| r.into_iter().map(|x| 1.0 - x).collect())
        .collect();
    let (local, drift, _) = two_windows(&DIGITS_GENERIC, "digits/reference.npy", inverted);
    for w in &local {
        assert!(w.drifted, "{w:?}");
        assert_eq!(local_status(w, "X.mean"), DriftStatus::Drift, "{w:?}");
    }
    assert!(drift.buckets[0].drifted);
    assert!(alerted(&drift).iter().any(|f| f == "X.mean"), "{drift:?}");
}

#[test]
fn held_out_digits_are_not_flagged() {
    let (local, drift, _) = two_windows(
        &DIGITS_GENERIC,
        "digits/reference.npy",
        rows("digits/live.npy"),
    );
    for w in &local {
        assert!(!w.drifted, "{w:?}");
    }
    assert!(!drift.buckets[0].drifted, "{drift:?}");
    assert_eq!(alerted(&drift), Vec::<String>::new());
}

#[test]
fn too_few_predictions_give_insufficient_data_not_a_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let server = collector(tmp.path());
    let publisher = Publisher::new();
    let bundle = signed_with_baseline(&SENSOR, "sensor/reference.npy", &publisher);
    let dev = Device::start(
        device(&tmp.path().join("device"), "gw-01", &server.url()),
        &bundle,
        &publisher,
    );
    dev.predict_all(inputs(&dev.model, &rows("sensor/shifted.npy")[..20]));
    let w = dev.window();
    assert!(!w.drifted);
    assert_eq!(
        local_status(&w, "temperature_c"),
        DriftStatus::InsufficientData
    );
    let drift = fleet_drift(&server, "sensor", Duration::from_secs(3600));
    assert_eq!(
        status(&drift.buckets[0].features, "temperature_c"),
        DriftStatus::InsufficientData
    );
    dev.telemetry.shutdown();
}

// -------------------------------------------------- delivery and durability

#[test]
fn records_made_while_the_collector_is_down_arrive_once_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    // Reserve a port, then leave it closed: the collector is "down".
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let publisher = Publisher::new();
    let bundle = signed_with_baseline(&DIGITS_GENERIC, "digits/reference.npy", &publisher);
    let dev = Device::start(
        device(
            &tmp.path().join("device"),
            "gw-01",
            &format!("http://{addr}"),
        ),
        &bundle,
        &publisher,
    );
    let live = rows("digits/live.npy");
    for chunk in live.chunks(90) {
        dev.predict_all(inputs(&dev.model, chunk));
        let stats = dev.telemetry.flush(Duration::from_millis(200));
        assert!(stats.spool.pending_records > 0);
        assert!(stats.last_error.is_some(), "{stats:?}");
    }
    let waiting = dev.telemetry.stats();
    // The model record and four windows.
    assert_eq!(waiting.spool.pending_records, 5, "{waiting:?}");
    assert_eq!(waiting.shipped_records, 0);

    let server = collector_at(tmp.path(), addr);
    let stats = dev.telemetry.flush(FLUSH);
    assert_eq!(stats.spool.pending_records, 0, "{stats:?}");
    assert_eq!(stats.spool.dropped_records, 0);
    assert_eq!(stats.last_error, None);
    let fleet = fleet_stats(&server, "digits");
    assert_eq!(fleet.count, live.len() as u64, "{fleet:?}");
    assert_eq!(fleet.windows, 4, "{fleet:?}");
    let devices = admin(&server).devices().unwrap();
    assert_eq!(devices[0].device_id, "gw-01");
    assert_eq!(devices[0].pending_records, 0);
    dev.telemetry.shutdown();
}

/// A signed sensor bundle with its baseline (`sensor.wasm`) and the
/// publisher's key (`publisher.pub`) in `dir`, for `edgeml replay`.
fn write_sensor_bundle(dir: &Path) {
    let publisher = Publisher::new();
    std::fs::write(
        dir.join("publisher.pub"),
        publisher.key.public_key().to_bytes(),
    )
    .unwrap();
    let bundle = signed_with_baseline(&SENSOR, "sensor/reference.npy", &publisher);
    std::fs::write(dir.join("sensor.wasm"), &bundle).unwrap();
}

/// `edgeml replay` of the sensor data without end, printing progress, in
/// `dir` (with `sensor.wasm`, `publisher.pub` and `telemetry.toml`).
fn replay_sensor(dir: &Path) -> std::process::Child {
    edgeml()
        .args(["replay", "sensor.wasm", "--trust", "publisher.pub"])
        .args([
            "--data",
            &model_path("sensor/live.npy").display().to_string(),
        ])
        .args([
            "--telemetry",
            "telemetry.toml",
            "--count",
            "100000000",
            "--progress",
        ])
        .current_dir(dir)
        .env("EDGEML_CACHE_DIR", dir.join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_mid_run_loses_at_most_the_prediction_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let server = collector(tmp.path());
    write_sensor_bundle(tmp.path());
    let toml = tmp.path().join("telemetry.toml");
    std::fs::write(
        &toml,
        format!(
            "device_id = \"gw-kill\"\ndir = \"device\"\nwindow = \"1h\"\n\n\
             [collector]\nurl = \"{}\"\nenrolment_token = \"{ENROL}\"\ninterval = \"100ms\"\n",
            server.url()
        ),
    )
    .unwrap();
    let mut child = replay_sensor(tmp.path());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut last = 0u64;
    let mut line = String::new();
    while last < 150 {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "replay exited early");
        last = line
            .trim()
            .strip_prefix("predicted ")
            .unwrap()
            .parse()
            .unwrap();
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Whatever it printed before dying.
    for l in out.lines() {
        if let Some(n) = l.unwrap().strip_prefix("predicted ") {
            last = n.parse().unwrap();
        }
    }

    // The next start of the device recovers the journal into a window.
    let config = TelemetryConfig::from_file(&toml).unwrap();
    let telemetry = Telemetry::start(config).unwrap();
    let stats = telemetry.flush(FLUSH);
    assert_eq!(stats.recovered_windows, 1, "{stats:?}");
    assert_eq!(stats.spool.pending_records, 0, "{stats:?}");
    telemetry.shutdown();
    let fleet = fleet_stats(&server, "sensor");
    let count = fleet.count;
    assert!(
        count == last || count == last + 1,
        "printed {last} predictions, the collector counted {count}"
    );
    // The recovered window still carries the drift sketches.
    let drift = fleet_drift(&server, "sensor", Duration::from_secs(3600));
    assert_eq!(drift.buckets[0].count, count);
    assert!(!drift.buckets[0].drifted);
}

#[test]
fn full_spool_drops_oldest_first_and_reports_how_many() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("device");
    let publisher = Publisher::new();
    let bundle = signed_with_baseline(&DIGITS_GENERIC, "digits/reference.npy", &publisher);
    let live = rows("digits/live.npy");
    // No collector for now, and the smallest spool.
    let mut offline = TelemetryConfig::new("gw-full", &dir);
    offline.window = Duration::from_secs(3600);
    offline.spool_max_bytes = 64 * 1024;
    let dev = Device::start(offline.clone(), &bundle, &publisher);
    // Window i holds i + 1 predictions, so which windows survive shows in the total.
    let windows = 60;
    for i in 0..windows {
        dev.predict_all(inputs(&dev.model, &live[..i + 1]));
        dev.telemetry.flush(Duration::ZERO);
    }
    let stats = dev.telemetry.stats();
    assert!(stats.spool.dropped_records > 0, "{stats:?}");
    assert!(stats.spool.pending_bytes <= 64 * 1024, "{stats:?}");
    let kept = stats.spool.pending_records;
    let dropped = stats.spool.dropped_records;
    // The model record plus every window, some dropped.
    assert_eq!(kept + dropped, windows as u64 + 1);
    dev.telemetry.shutdown();
    drop(dev);

    // The device restarts with a collector and a larger spool; it loads its
    // model again (a fresh model record) and ships what the spool kept.
    let server = collector(tmp.path());
    let dev = Device::start(device(&dir, "gw-full", &server.url()), &bundle, &publisher);
    let stats = dev.telemetry.flush(FLUSH);
    assert_eq!(stats.spool.pending_records, 0, "{stats:?}");
    assert_eq!(
        stats.spool.dropped_records, dropped,
        "the count survives restarts"
    );
    // Oldest first: the model record went first, then the first windows;
    // the newest `kept` windows arrived.
    let expected: u64 = ((windows as u64 - kept + 1)..=windows as u64).sum();
    let fleet = fleet_stats(&server, "digits");
    assert_eq!(fleet.windows, kept as u64, "{fleet:?}");
    assert_eq!(fleet.count, expected, "{fleet:?}");
    let devices = admin(&server).devices().unwrap();
    assert_eq!(devices[0].dropped_records, dropped as u64, "{devices:?}");
    dev.telemetry.shutdown();
}

#[test]
fn switched_off_telemetry_records_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = collector(tmp.path());
    let publisher = Publisher::new();
    let bundle = publisher.sign(&pack(&DIGITS_GENERIC));
    let mut config = device(&tmp.path().join("device"), "gw-off", &server.url());
    config.enabled = false;
    let dev = Device::start(config, &bundle, &publisher);
    dev.predict_all(inputs(&dev.model, &rows("digits/live.npy")[..50]));
    let stats = dev.telemetry.flush(Duration::from_secs(2));
    assert_eq!((stats.windows, stats.shipped_records), (0, 0), "{stats:?}");
    assert_eq!(stats.spool.pending_records, 0);
    assert_eq!(admin(&server).models().unwrap(), vec![]);
    dev.telemetry.shutdown();
}

#[test]
fn telemetry_directory_is_refused_to_a_second_process() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TelemetryConfig::new("gw-01", tmp.path());
    let first = Telemetry::start(config.clone()).unwrap();
    let second = Telemetry::start(config);
    assert!(
        matches!(second, Err(edgeml_runtime::telemetry::Error::Locked(_))),
        "{second:?}"
    );
    first.shutdown();
}

// ------------------------------------------------------------------ export

#[test]
fn drift_samples_export_as_parquet_and_npy_with_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let server = collector(tmp.path());
    let publisher = Publisher::new();
    let bundle = signed_with_baseline(&SENSOR, "sensor/reference.npy", &publisher);
    let mut config = device(&tmp.path().join("device"), "gw-01", &server.url());
    config.samples = Some(SampleConfig {
        per_window: 5,
        ..SampleConfig::default()
    });
    let dev = Device::start(config, &bundle, &publisher);
    let shifted = rows("sensor/shifted.npy");
    dev.predict_all(inputs(&dev.model, &shifted[..200]));
    dev.window();
    dev.telemetry.shutdown();

    let client = admin(&server);
    let all = Range::default();
    let meta = client
        .samples_npy_metadata(Some("sensor"), None, &all)
        .unwrap();
    assert_eq!(meta.input_name, dev.model.manifest().inputs[0].name);
    assert_eq!(meta.shape, vec![5, 1, 6]);
    assert_eq!(meta.rows.len(), 5);
    for r in &meta.rows {
        assert_eq!(r.device_id, "gw-01");
        assert_eq!(r.reason, "drifted_window");
    }
    // Every exported row is one of the rows the device was fed.
    let npy = client
        .samples(SampleFormat::Npy, Some("sensor"), None, &all)
        .unwrap();
    let f = npyz::NpyFile::new(&npy[..]).unwrap();
    assert_eq!(f.shape(), &[5, 1, 6]);
    let exported: Vec<f32> = f.into_vec().unwrap();
    for row in exported.chunks_exact(6) {
        assert!(
            shifted[..200].iter().any(|r| r == row),
            "{row:?} was never fed"
        );
    }

    let parquet = client
        .samples(SampleFormat::Parquet, Some("sensor"), None, &all)
        .unwrap();
    let file = tmp.path().join("samples.parquet");
    std::fs::write(&file, parquet).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 5);
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, edgeml_collector::export::PARQUET_COLUMNS);

    // Filters: another device has none.
    let other = Range {
        device: Some("gw-02".into()),
        ..Range::default()
    };
    let none = client.samples_npy_metadata(None, None, &other).unwrap();
    assert!(none.rows.is_empty(), "{none:?}");
}

// ------------------------------------------------------- attacks on ingest

struct Attack {
    _tmp: tempfile::TempDir,
    /// The directory of the collector's database.
    db: std::path::PathBuf,
    server: Server,
    device: DeviceIdentity,
}

impl Attack {
    /// A collector with one enrolled device, `gw-01`.
    fn new() -> Attack {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().to_path_buf();
        let server = collector(&db);
        let device = identity(tmp.path(), "gw-01");
        assert_eq!(enrol(&server, &device, ENROL).status(), 201);
        Attack {
            _tmp: tmp,
            db,
            server,
            device,
        }
    }

    /// Another key pair, possibly claiming an existing id.
    fn identity(&self, id: &str) -> DeviceIdentity {
        identity(&self._tmp.path().join("others"), id)
    }

    /// What reached the database, read straight from it.
    fn stored(&self) -> (usize, usize, usize) {
        let store = TestDb::new(&self.db).open();
        let q = Query::default();
        (
            store.windows(&q).unwrap().len(),
            store.samples(&q).unwrap().len(),
            store.models().unwrap().len(),
        )
    }

    fn assert_nothing_stored(&self) {
        assert_eq!(self.stored(), (0, 0, 0));
        // And the service is still up.
        let health = http()
            .get(format!("{}/healthz", self.server.url()))
            .send()
            .unwrap();
        assert_eq!(health.status(), 200);
    }
}

/// A fresh device key in its own directory under `parent`.
fn identity(parent: &Path, id: &str) -> DeviceIdentity {
    let dir = parent.join(format!("{id}-{}", wire::new_record_id()));
    std::fs::create_dir_all(&dir).unwrap();
    DeviceIdentity::load_or_create(&dir, id).unwrap()
}

fn enrol(server: &Server, device: &DeviceIdentity, token: &str) -> reqwest::blocking::Response {
    http()
        .post(format!("{}/v1/enrol", server.url()))
        .bearer_auth(token)
        .json(&json!({"device_id": device.device_id(), "public_key": device.public_key_hex()}))
        .send()
        .unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A well-formed window record with `count` predictions.
fn window(count: u64) -> Record {
    let mut latency = Sketch::new(200);
    for i in 0..count {
        latency.update(100.0 + i as f32);
    }
    Record {
        id: wire::new_record_id(),
        body: RecordBody::Window(WindowRecord {
            model: wire::ModelRef {
                name: "digits".into(),
                version: "1.0.0".into(),
                digest: "ab".repeat(32),
            },
            start_ms: 1_000,
            end_ms: 61_000,
            count,
            errors: BTreeMap::new(),
            latency_us: latency.to_base64(),
            numeric: BTreeMap::new(),
            binned: BTreeMap::new(),
            categorical: BTreeMap::new(),
            drift: Vec::new(),
            drifted: false,
            recovered: false,
            samples_over_budget: 0,
            confidence_sum: 0.0,
            scored: 0,
        }),
    }
}

fn batch_body(device_id: &str, records: Vec<Record>) -> Vec<u8> {
    gzip(
        &serde_json::to_vec(&Batch {
            device_id: device_id.into(),
            sent_ms: 2_000,
            spool: SpoolStats::default(),
            records,
        })
        .unwrap(),
    )
}

/// POST a gzip body as `header_device`, signed by `signer`.
fn ingest(
    server: &Server,
    header_device: &str,
    signer: &DeviceIdentity,
    body: Vec<u8>,
) -> (u16, Value) {
    let sig = signer.sign_batch(&body);
    ingest_raw(server, header_device, &sig, body)
}

fn ingest_raw(server: &Server, device: &str, sig: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = http()
        .post(format!("{}/v1/ingest", server.url()))
        .header(wire::DEVICE_HEADER, device)
        .header(wire::SIGNATURE_HEADER, sig)
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    (status, body)
}

#[test]
fn accepts_a_signed_batch_from_an_enrolled_device() {
    // The control for the attacks below: the same construction, done right, is stored.
    let a = Attack::new();
    let body = batch_body("gw-01", vec![window(7)]);
    let (status, resp) = ingest(&a.server, "gw-01", &a.device, body);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["accepted"], 1);
    assert_eq!(a.stored(), (1, 0, 0));
}

#[test]
fn rejects_nul_character_in_batch_strings() {
    // PostgreSQL text cannot hold NUL; both databases refuse it the same way,
    // with a 4xx the device sets aside instead of retrying forever.
    let a = Attack::new();
    let mut record = window(7);
    if let RecordBody::Window(w) = &mut record.body {
        w.model.version = "1.0.0\u{0}".into();
    }
    let (status, resp) = ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-01", vec![record]),
    );
    assert_eq!(status, 422, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("NUL"), "{resp}");
    a.assert_nothing_stored();
}

#[test]
fn rejects_batch_from_unknown_device() {
    let a = Attack::new();
    let stranger = a.identity("gw-99");
    let (status, resp) = ingest(
        &a.server,
        "gw-99",
        &stranger,
        batch_body("gw-99", vec![window(7)]),
    );
    assert_eq!(status, 401);
    assert!(
        resp["error"].as_str().unwrap().contains("unknown device"),
        "{resp}"
    );
    a.assert_nothing_stored();
}

#[test]
fn rejects_batch_with_bad_signature() {
    let a = Attack::new();
    // Signed by another key, sent as the enrolled device.
    let forger = a.identity("gw-01");
    let (status, resp) = ingest(
        &a.server,
        "gw-01",
        &forger,
        batch_body("gw-01", vec![window(7)]),
    );
    assert_eq!(status, 401);
    assert!(
        resp["error"].as_str().unwrap().contains("signature"),
        "{resp}"
    );
    // A signature that is not even hex.
    let (status, _) = ingest_raw(
        &a.server,
        "gw-01",
        "zz",
        batch_body("gw-01", vec![window(7)]),
    );
    assert_eq!(status, 401);
    a.assert_nothing_stored();
}

#[test]
fn rejects_batch_tampered_after_signing() {
    let a = Attack::new();
    let genuine = batch_body("gw-01", vec![window(7)]);
    let sig = a.device.sign_batch(&genuine);
    let inflated = batch_body("gw-01", vec![window(7_000_000)]);
    let (status, _) = ingest_raw(&a.server, "gw-01", &sig, inflated);
    assert_eq!(status, 401);
    a.assert_nothing_stored();
}

#[test]
fn rejects_device_impersonation_in_batch_body() {
    let a = Attack::new();
    let victim = a.identity("gw-02");
    assert_eq!(enrol(&a.server, &victim, ENROL).status(), 201);
    // gw-01 signs correctly as itself but the records claim to be gw-02's.
    let (status, resp) = ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-02", vec![window(7)]),
    );
    assert_eq!(status, 400);
    assert!(resp["error"].as_str().unwrap().contains("gw-02"), "{resp}");
    a.assert_nothing_stored();
}

#[test]
fn rejects_enrolment_with_wrong_token() {
    let a = Attack::new();
    let intruder = a.identity("gw-77");
    assert_eq!(enrol(&a.server, &intruder, "not-the-token").status(), 401);
    // The admin token is not an enrolment token either.
    assert_eq!(enrol(&a.server, &intruder, ADMIN).status(), 401);
    let devices = admin(&a.server).devices().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    // And the refused device cannot ship.
    let (status, _) = ingest(
        &a.server,
        "gw-77",
        &intruder,
        batch_body("gw-77", vec![window(1)]),
    );
    assert_eq!(status, 401);
    a.assert_nothing_stored();
}

#[test]
fn rejects_key_takeover_by_re_enrolment() {
    let a = Attack::new();
    // Someone holding the enrolment token tries to replace gw-01's key.
    let thief = a.identity("gw-01");
    assert_eq!(enrol(&a.server, &thief, ENROL).status(), 409);
    let (status, _) = ingest(
        &a.server,
        "gw-01",
        &thief,
        batch_body("gw-01", vec![window(1)]),
    );
    assert_eq!(status, 401);
    // Re-enrolling with the same key is harmless.
    assert_eq!(enrol(&a.server, &a.device, ENROL).status(), 200);
    a.assert_nothing_stored();
}

#[test]
fn rejects_gzip_bomb() {
    let a = Attack::new();
    // 100 MiB of zeros compresses to about 100 KiB; the limit is 64 MiB.
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..100 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    assert!(bomb.len() < 1 << 20);
    let (status, resp) = ingest(&a.server, "gw-01", &a.device, bomb);
    assert_eq!(status, 413, "{resp}");
    a.assert_nothing_stored();
}

#[test]
fn rejects_oversized_body() {
    let a = Attack::new();
    let huge = vec![0u8; 9 << 20];
    let (status, _) = ingest(&a.server, "gw-01", &a.device, huge);
    assert_eq!(status, 413);
    a.assert_nothing_stored();
}

#[test]
fn rejects_malformed_batch_and_stores_none_of_it() {
    let a = Attack::new();
    // Not JSON.
    let (status, _) = ingest(&a.server, "gw-01", &a.device, gzip(b"{not json"));
    assert_eq!(status, 400);
    // Not gzip.
    let (status, _) = ingest(&a.server, "gw-01", &a.device, b"\x1f\x8bnope".to_vec());
    assert_eq!(status, 400);
    // One good record and one lying about its errors: all or nothing.
    let mut liar = window(3);
    if let RecordBody::Window(w) = &mut liar.body {
        w.errors.insert("invalid_input".into(), 9);
    }
    let (status, resp) = ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-01", vec![window(7), liar]),
    );
    assert_eq!(status, 422, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains("9 errors"),
        "{resp}"
    );
    // A sketch that does not decode.
    let mut garbage = window(3);
    if let RecordBody::Window(w) = &mut garbage.body {
        w.numeric.insert("X.mean".into(), "////".into());
    }
    let (status, _) = ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-01", vec![garbage]),
    );
    assert_eq!(status, 422);
    // Grid counts that do not decode, and ones counting more values than
    // the window has predictions.
    let mut garbage = window(3);
    if let RecordBody::Window(w) = &mut garbage.body {
        w.binned.insert("X.mean".into(), "////".into());
    }
    let (status, resp) = ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-01", vec![garbage]),
    );
    assert_eq!(status, 422, "{resp}");
    let mut inflated = window(3);
    if let RecordBody::Window(w) = &mut inflated.body {
        let mut g = edgeml_runtime::telemetry::GridCounts::new(101);
        let grid: Vec<f64> = (0..101).map(f64::from).collect();
        (0..500).for_each(|i| g.add(&grid, i as f32));
        w.binned.insert("X.mean".into(), g.to_base64());
    }
    let (status, resp) = ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-01", vec![inflated]),
    );
    assert_eq!(status, 422, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("counts 500 values"),
        "{resp}"
    );
    // A sample whose tensor bytes do not match its shape.
    let sample = Record {
        id: wire::new_record_id(),
        body: RecordBody::Sample(wire::SampleRecord {
            model: wire::ModelRef {
                name: "digits".into(),
                version: "1.0.0".into(),
                digest: "ab".repeat(32),
            },
            at_ms: 1_000,
            reason: wire::SampleReason::Reservoir,
            prediction: None,
            prediction_id: None,
            value: None,
            input: SampleInput::Tensors {
                tensors: vec![wire::TensorData::new(
                    "X",
                    edgeml_runtime::bundle::Dtype::F32,
                    &[1, 64],
                    &[0u8; 12],
                )],
            },
        }),
    };
    let (status, _) = ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-01", vec![sample]),
    );
    assert_eq!(status, 422);
    a.assert_nothing_stored();
}

#[test]
fn replayed_batch_is_counted_once() {
    let a = Attack::new();
    let body = batch_body("gw-01", vec![window(7), window(5)]);
    let (status, first) = ingest(&a.server, "gw-01", &a.device, body.clone());
    assert_eq!(status, 200);
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(2), Some(0))
    );
    let (status, again) = ingest(&a.server, "gw-01", &a.device, body);
    assert_eq!(status, 200);
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(fleet_stats(&a.server, "digits").count, 12);
    assert_eq!(a.stored(), (2, 0, 0));
}

#[test]
fn rejects_read_api_without_admin_token() {
    let a = Attack::new();
    ingest(
        &a.server,
        "gw-01",
        &a.device,
        batch_body("gw-01", vec![window(7)]),
    );
    for path in [
        "/v1/devices",
        "/v1/models",
        "/v1/models/digits/versions/1.0.0/stats",
        "/v1/samples",
    ] {
        let url = format!("{}{path}", a.server.url());
        assert_eq!(http().get(&url).send().unwrap().status(), 401, "{path}");
        // Devices hold the enrolment token; it does not open the read API.
        let with_device_token = http().get(&url).bearer_auth(ENROL).send().unwrap();
        assert_eq!(with_device_token.status(), 401, "{path}");
    }
}

/// `/openapi.json` is generated from the router: it documents exactly the
/// routes the server answers (the fleet routes too), each with responses,
/// and every schema it refers to is in it.
#[test]
fn openapi_json_documents_every_route_and_only_routes() {
    let a = Attack::new();
    let resp = http()
        .get(format!("{}/openapi.json", a.server.url()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                !op["responses"].as_object().unwrap().is_empty(),
                "{method} {path} documents no response"
            );
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected = vec![
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "POST /v1/enrol",
        "POST /v1/ingest",
        "GET /v1/devices",
        "GET /v1/models",
        "GET /v1/models/{name}/versions/{version}/stats",
        "GET /v1/models/{name}/versions/{version}/drift",
        "GET /v1/samples",
        "GET /v1/fleet/root",
        "GET /v1/fleet/roots/{version}",
        "PUT /v1/fleet/roots/{version}",
        "GET /v1/fleet/bundles/{sha256}",
        "PUT /v1/fleet/bundles/{sha256}",
        "GET /v1/fleet/artifacts/{sha256}",
        "PUT /v1/fleet/artifacts/{sha256}",
        "GET /v1/fleet/channels",
        "GET /v1/fleet/channels/{channel}",
        "PUT /v1/fleet/channels/{channel}/release",
        "POST /v1/fleet/channels/{channel}/rollout",
        "POST /v1/fleet/report",
        "GET /v1/fleet/devices",
        "PUT /v1/fleet/devices/{device}/tags",
        "GET /v1/fleet/decisions",
        "GET /v1/audit",
        "GET /v1/models/{name}/accuracy",
        "POST /v1/labels",
    ];
    expected.sort();
    assert_eq!(documented, expected);

    // Each documented operation is routed: the router's own 404 and 405
    // have no body, every handler's refusal is `{"error": ...}`.
    let digest = "0".repeat(64);
    for op in &documented {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path
            .replace("{name}", "digits")
            .replace("{version}", "1")
            .replace("{sha256}", &digest)
            .replace("{channel}", "stable")
            .replace("{device}", "gw-1");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = http()
            .request(method, format!("{}{path}", a.server.url()))
            .send()
            .unwrap();
        let status = resp.status();
        let body = resp.text().unwrap();
        assert_ne!(status, 405, "{op} is documented but not routed");
        assert!(
            status != 404 || body.contains("\"error\""),
            "{op} is documented but not routed (404 without an error body)"
        );
    }
    // And a route the server does not have is not documented (and 404s
    // without a body, which is what the loop above relies on).
    let missing = http()
        .get(format!("{}/v1/nothing-here", a.server.url()))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().unwrap(), "");

    // Every reference resolves.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    let mut refs = 0;
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(schemas.contains_key(name), "$ref to missing schema {name}");
        refs += 1;
    }
    assert!(refs > 30, "only {refs} schema references");
    // The wire types are described, not just named: a status report's
    // fields, and the security schemes the operations use.
    let report = &schemas["StatusReport"]["properties"];
    for field in ["channel", "state", "root_version", "seq"] {
        assert!(report.get(field).is_some(), "StatusReport lacks {field}");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for scheme in ["admin", "enrolment", "device", "metrics"] {
        assert!(schemes.contains_key(scheme), "no security scheme {scheme}");
    }
    assert_eq!(
        doc["paths"]["/v1/fleet/channels/{channel}/release"]["put"]["security"][0]["admin"],
        serde_json::json!([])
    );
}

/// Repeated SIGKILLs of a device whose windows close every 150 ms: the first
/// half with the collector offline (every window waits in the spool), the
/// second half with it online (kills land during uploads too), then a
/// restart that recovers the last journal and ships everything.
/// Window ids are derived from (device, model, window start), so a window
/// rebuilt after a kill between the spool commit and the journal reset is
/// the same record, and the collector counts it once: nothing is lost (the
/// count is at least what the device printed) and nothing is counted twice
/// (at most one in-flight prediction per kill).
#[test]
fn repeated_kill_9_loses_nothing_and_counts_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    write_sensor_bundle(tmp.path());
    // The collector's address, not listening until the end.
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let toml = tmp.path().join("telemetry.toml");
    std::fs::write(
        &toml,
        format!(
            "device_id = \"gw-kills\"\ndir = \"device\"\nwindow = \"150ms\"\n\n\
             [collector]\nurl = \"http://{addr}\"\nenrolment_token = \"{ENROL}\"\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let kills = 16;
    let mut printed = 0u64;
    let mut server = None;
    for round in 0..kills {
        if round == kills / 2 {
            server = Some(collector_at(tmp.path(), addr));
        }
        let mut child = replay_sensor(tmp.path());
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut last = 0u64;
        let mut line = String::new();
        // Kill at a different point each round: mid-window, at a window
        // close, during the start-up recovery of the previous journal.
        let stop_at = 40 + (round as u64 * 37) % 160;
        while last < stop_at {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(n) = line.trim().strip_prefix("predicted ") {
                last = n.parse().unwrap();
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for l in out.lines() {
            if let Some(n) = l.unwrap().strip_prefix("predicted ") {
                last = n.parse().unwrap();
            }
        }
        printed += last;
    }
    // The device restarts once more and ships all.
    let server = server.unwrap();
    let config = TelemetryConfig::from_file(&toml).unwrap();
    let telemetry = Telemetry::start(config).unwrap();
    let stats = telemetry.flush(FLUSH);
    assert_eq!(stats.spool.pending_records, 0, "{stats:?}");
    assert_eq!(stats.spool.dropped_records, 0, "{stats:?}");
    telemetry.shutdown();
    let count = fleet_stats(&server, "sensor").count;
    eprintln!("{kills} kills: printed {printed}, counted {count}");
    assert!(printed > 1000, "the replays ran: printed {printed}");
    assert!(
        count >= printed,
        "lost predictions: printed {printed}, counted {count}"
    );
    assert!(
        count <= printed + kills as u64,
        "counted twice: printed {printed}, counted {count} (at most {kills} in flight)"
    );
}

/// The exact crash the repeated-kill test can only hit by chance: the
/// window's record is committed to the spool (and shipped), but the journal
/// it came from was not reset, so the next start rebuilds the same window
/// from it. The rebuilt window has the same id and the collector counts it
/// once (with random ids, as before, it counted 40 predictions twice).
#[test]
fn window_rebuilt_after_crash_before_journal_reset_counts_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = collector(tmp.path());
    let publisher = Publisher::new();
    let bundle = signed_with_baseline(&SENSOR, "sensor/reference.npy", &publisher);
    let dir = tmp.path().join("device");
    let dev = Device::start(device(&dir, "gw-crash", &server.url()), &bundle, &publisher);
    dev.predict_all(inputs(&dev.model, &rows("sensor/live.npy")[..40]));
    // The journal as a kill right after the spool commit leaves it.
    let journal = dir.join("journal");
    let snapshot: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert!(!snapshot.is_empty());
    dev.window();
    assert_eq!(fleet_stats(&server, "sensor").count, 40);
    dev.telemetry.shutdown();
    drop(dev);
    for (p, bytes) in &snapshot {
        std::fs::write(p, bytes).unwrap();
    }
    let telemetry = Telemetry::start(device(&dir, "gw-crash", &server.url())).unwrap();
    let stats = telemetry.flush(FLUSH);
    assert_eq!(stats.recovered_windows, 1, "{stats:?}");
    assert_eq!(stats.spool.pending_records, 0, "{stats:?}");
    telemetry.shutdown();
    assert_eq!(
        fleet_stats(&server, "sensor").count,
        40,
        "the rebuilt window was counted again"
    );
}
