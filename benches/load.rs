//! Fleet server under load: simulated devices poll the fleet API as the
//! agent does (the next root, the channel with `If-None-Match`, a signed
//! status report: every 30 s by default) and ship signed telemetry batches of
//! one hourly window each, with time compressed so that an hour of telemetry
//! arrives every minute. Against one `edgeml-server` on SQLite, then on
//! PostgreSQL (started in a temporary directory, as the tests do).
//!
//! The server runs in its own process (this program, re-run with
//! `--serve`), so its peak RSS is its own. Reported per backend: poll
//! latency p50/p99 (one poll = the three requests), ingest throughput, the
//! database's growth per device per day, and the server's peak RSS. Bounded
//! in time (enrolment, then `--seconds`), loopback only.
//!
//! Run: `cargo bench --bench load -- [--devices 10000] [--seconds 120]
//! [--poll 30] [--db sqlite|postgres|both]`.

#[path = "../tests/db.rs"]
#[allow(dead_code)]
mod db;

use edgeml_runtime::telemetry::wire::{self, Batch, ModelRef, Record, RecordBody, WindowRecord};
use edgeml_runtime::telemetry::{DeviceIdentity, Sketch};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: &str = "load-admin-token";
const ENROL: &str = "load-enrolment-token";
/// Client threads (each drives its share of the devices in time order).
const THREADS: usize = 48;

struct Args {
    devices: usize,
    seconds: u64,
    poll: u64,
    db: String,
}

fn args() -> Args {
    let mut a = Args {
        devices: 10_000,
        seconds: 120,
        poll: 30,
        db: "both".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--devices" => a.devices = value().parse().expect("--devices N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--poll" => a.poll = value().parse().expect("--poll SECONDS"),
            "--db" => a.db = value(),
            _ => {
                i += 1;
                continue; // cargo bench's own flags
            }
        }
        i += 2;
    }
    a
}

/// `--serve DB ADDR-FILE`: the server process.
fn serve(db: &str, addr_file: &Path) {
    let store = edgeml_collector::store::open(db).expect("opening the database");
    let mut settings = edgeml_collector::Settings::new(ADMIN, ENROL);
    settings.fleet.bundle_dir = Some(addr_file.with_extension("bundles"));
    settings.max_records = 10_000;
    let server =
        edgeml_collector::Server::start_with(store, settings, "127.0.0.1:0".parse().unwrap())
            .expect("starting the server");
    std::fs::write(addr_file, server.url()).unwrap();
    // Until the parent closes stdin.
    let _ = std::io::stdin().read_line(&mut String::new());
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: 0 kB");
    println!("{hwm}");
    server.stop();
}

/// One hour of the sensor model (six monitored features, one prediction a
/// second) as a device summarises it.
fn hourly_window() -> WindowRecord {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f32 / (1u64 << 53) as f32
    };
    let mut numeric = BTreeMap::new();
    for name in [
        "temperature_c",
        "vibration_rms",
        "pressure_kpa",
        "flow_lpm",
        "current_a",
        "rpm",
    ] {
        let mut s = Sketch::new(200);
        for _ in 0..3600 {
            s.update(next());
        }
        numeric.insert(name.to_string(), s.to_base64());
    }
    let mut latency = Sketch::new(200);
    for _ in 0..3600 {
        latency.update(30.0 + 10.0 * next());
    }
    let mut labels = BTreeMap::new();
    labels.insert("normal".to_string(), 3400u64);
    labels.insert("cavitation".to_string(), 150);
    labels.insert("bearing_wear".to_string(), 50);
    let mut categorical = BTreeMap::new();
    categorical.insert("prediction".to_string(), labels);
    WindowRecord {
        model: ModelRef {
            name: "sensor".into(),
            version: "1.0.0".into(),
            digest: "ab".repeat(32),
        },
        start_ms: 0,
        end_ms: 3_600_000,
        count: 3600,
        errors: BTreeMap::new(),
        latency_us: latency.to_base64(),
        numeric,
        binned: BTreeMap::new(),
        categorical,
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

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

struct Outcome {
    polls: Vec<Duration>,
    failed_polls: u64,
    batches: u64,
    records: u64,
    failed_batches: u64,
    elapsed: Duration,
    db_bytes: u64,
    rss_kib: u64,
}

fn db_size(db: &db::TestDb) -> u64 {
    match db.backend {
        db::Backend::Sqlite => {
            // Fold the write-ahead log into the file first (the server keeps
            // the file open; a passive checkpoint does not disturb it).
            if let Ok(c) = rusqlite::Connection::open(&db.url) {
                let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
            std::fs::metadata(&db.url).map_or(0, |m| m.len())
        }
        db::Backend::Postgres => {
            let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
            let n: i64 = c
                .query_one("SELECT pg_database_size(current_database())", &[])
                .unwrap()
                .get(0);
            n as u64
        }
    }
}

/// A release on `stable` (what devices poll), put straight into the
/// database: the server only serves it, devices would check the signatures.
fn publish(db: &db::TestDb) {
    let key = edgeml_runtime::bundle::SecretKey::generate().unwrap();
    let release: edgeml_fleet::Release = serde_json::from_value(serde_json::json!({
        "type": "release", "channel": "stable", "version": 1,
        "expires": "2099-01-01T00:00:00Z", "model": "sensor", "model_version": "1.0.0",
        "bundle": {"sha256": "ab".repeat(32), "size": 1000}, "rollout_percent": 100.0,
    }))
    .unwrap();
    let env = edgeml_fleet::Envelope::sign(&release, &[&key]).unwrap();
    db.open()
        .put_release(&release, &String::from_utf8(env.to_vec()).unwrap(), 0)
        .unwrap();
}

fn run(a: &Args, db: &db::TestDb, tmp: &Path) -> Outcome {
    publish(db);
    let addr_file = tmp.join("addr");
    let mut server = Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .arg(&db.url)
        .arg(&addr_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        if let Ok(u) = std::fs::read_to_string(&addr_file) {
            if !u.is_empty() {
                break u;
            }
        }
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let http = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(THREADS)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Devices: keys and enrolment (not timed).
    let ids: Vec<DeviceIdentity> = (0..a.devices)
        .map(|d| {
            let dir = tmp.join("devices").join(d.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            DeviceIdentity::load_or_create(&dir, &format!("gw-{d:05}")).unwrap()
        })
        .collect();
    let ids = Arc::new(ids);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (ids, http, url) = (ids.clone(), http.clone(), url.clone());
            s.spawn(move || {
                for id in ids.iter().skip(t).step_by(THREADS) {
                    let r = http
                        .post(format!("{url}/v1/enrol"))
                        .bearer_auth(ENROL)
                        .json(&serde_json::json!({"device_id": id.device_id(), "public_key": id.public_key_hex()}))
                        .send()
                        .unwrap();
                    assert!(r.status().is_success(), "enrol: {}", r.status());
                }
            });
        }
    });
    let db_before = db_size(db);

    let template = hourly_window();
    let start = Instant::now();
    let stop = start + Duration::from_secs(a.seconds);
    let poll_every = Duration::from_secs(a.poll);
    let hour_every = Duration::from_secs(60);
    let polls = Arc::new(Mutex::new(Vec::new()));
    let (failed_polls, batches, records, failed_batches) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (ids, http, url, template) =
                (ids.clone(), http.clone(), url.clone(), template.clone());
            let (polls, failed_polls, batches, records, failed_batches) = (
                polls.clone(),
                failed_polls.clone(),
                batches.clone(),
                records.clone(),
                failed_batches.clone(),
            );
            s.spawn(move || {
                let mine: Vec<(usize, &DeviceIdentity)> =
                    ids.iter().enumerate().skip(t).step_by(THREADS).collect();
                let n = ids.len() as f64;
                // Spread over the interval: device d first polls at d/n of it.
                let mut next_poll: Vec<Instant> = mine
                    .iter()
                    .map(|(d, _)| start + poll_every.mul_f64(*d as f64 / n))
                    .collect();
                let mut next_hour: Vec<Instant> = mine
                    .iter()
                    .map(|(d, _)| start + hour_every.mul_f64(*d as f64 / n))
                    .collect();
                let mut hours = vec![0u64; mine.len()];
                let mut etags: Vec<Option<String>> = vec![None; mine.len()];
                let mut seq = vec![0u64; mine.len()];
                let mut local = Vec::new();
                loop {
                    let (k, at, is_poll) = (0..mine.len())
                        .flat_map(|k| [(k, next_poll[k], true), (k, next_hour[k], false)])
                        .min_by_key(|x| x.1)
                        .unwrap();
                    if at >= stop {
                        break;
                    }
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let id = mine[k].1;
                    if is_poll {
                        next_poll[k] += poll_every;
                        let t0 = Instant::now();
                        let ok = (|| -> Result<(), reqwest::Error> {
                            http.get(format!("{url}/v1/fleet/roots/2")).send()?;
                            let mut req = http.get(format!("{url}/v1/fleet/channels/stable"));
                            if let Some(e) = &etags[k] {
                                req = req.header("if-none-match", e.as_str());
                            }
                            let r = req.send()?;
                            if let Some(e) = r.headers().get("etag") {
                                etags[k] = e.to_str().ok().map(String::from);
                            }
                            r.bytes()?;
                            seq[k] += 1;
                            let report = serde_json::to_vec(&serde_json::json!({
                                "channel": "stable", "state": "idle", "root_version": 1, "seq": seq[k],
                                "installed": {"model": "sensor", "version": "1.0.0", "sha256": "ab".repeat(32)},
                            }))
                            .unwrap();
                            let r = http
                                .post(format!("{url}/v1/fleet/report"))
                                .header("content-type", "application/json")
                                .header(wire::DEVICE_HEADER, id.device_id())
                                .header(wire::SIGNATURE_HEADER, id.sign_batch(&report))
                                .body(report)
                                .send()?;
                            r.error_for_status()?;
                            Ok(())
                        })();
                        match ok {
                            Ok(()) => local.push(t0.elapsed()),
                            Err(_) => {
                                failed_polls.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else {
                        next_hour[k] += hour_every;
                        let h = hours[k];
                        hours[k] += 1;
                        let batch = Batch {
                            device_id: id.device_id().into(),
                            sent_ms: 0,
                            spool: Default::default(),
                            records: vec![Record {
                                id: wire::new_record_id(),
                                body: RecordBody::Window(WindowRecord {
                                    start_ms: h * 3_600_000,
                                    end_ms: (h + 1) * 3_600_000,
                                    ..template.clone()
                                }),
                            }],
                        };
                        let body = gzip(&serde_json::to_vec(&batch).unwrap());
                        let r = http
                            .post(format!("{url}/v1/ingest"))
                            .header("content-type", "application/json")
                            .header("content-encoding", "gzip")
                            .header(wire::DEVICE_HEADER, id.device_id())
                            .header(wire::SIGNATURE_HEADER, id.sign_batch(&body))
                            .body(body)
                            .send();
                        match r {
                            Ok(r) if r.status().is_success() => {
                                batches.fetch_add(1, Ordering::Relaxed);
                                records.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed_batches.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                polls.lock().unwrap().extend(local);
            });
        }
    });
    let elapsed = start.elapsed();
    // Let the server settle its writes before measuring the database.
    std::thread::sleep(Duration::from_secs(1));
    let db_bytes = db_size(db).saturating_sub(db_before);
    drop(server.stdin.take());
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = server.wait();
    let rss_kib = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut polls = Arc::try_unwrap(polls).unwrap().into_inner().unwrap();
    polls.sort();
    Outcome {
        polls,
        failed_polls: failed_polls.load(Ordering::Relaxed),
        batches: batches.load(Ordering::Relaxed),
        records: records.load(Ordering::Relaxed),
        failed_batches: failed_batches.load(Ordering::Relaxed),
        elapsed,
        db_bytes,
        rss_kib,
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve") {
        serve(&argv[2], Path::new(&argv[3]));
        return;
    }
    let a = args();
    println!(
        "{} devices, poll every {} s (root, channel, status report), one hourly telemetry window a minute each, {} s; {} client threads",
        a.devices, a.poll, a.seconds, THREADS
    );
    println!(
        "\n| database | polls | poll p50 | poll p99 | failed | batches stored | per second | DB growth per device per day | server peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for backend in ["sqlite", "postgres"] {
        if a.db != "both" && a.db != backend {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let db = match backend {
            "sqlite" => db::TestDb::sqlite(tmp.path()),
            _ => match db::TestDb::postgres() {
                Some(db) => db,
                None => continue,
            },
        };
        let o = run(&a, &db, tmp.path());
        // Simulated days: an hour of telemetry a minute.
        let days = o.elapsed.as_secs_f64() / 60.0 / 24.0;
        println!(
            "| {backend} | {} | {:.1} ms | {:.1} ms | {} polls, {} batches | {} ({} windows) | {:.0} | {:.1} KB | {:.0} MiB |",
            o.polls.len(),
            percentile(&o.polls, 0.5),
            percentile(&o.polls, 0.99),
            o.failed_polls,
            o.failed_batches,
            o.batches,
            o.records,
            o.batches as f64 / o.elapsed.as_secs_f64(),
            o.db_bytes as f64 / a.devices as f64 / days / 1e3,
            o.rss_kib as f64 / 1024.0,
        );
    }
}
