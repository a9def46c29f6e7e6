//! Telemetry and the collector: baselines at pack time, `edgeml replay`
//! (a device feeding recorded data through a model with telemetry on), and
//! `edgeml collector` (serve, devices, stats, drift, export).

use crate::args::{CollectorArgs, CollectorCommand, ReplayArgs, ServerArgs};
use crate::commands::{config, load, policy};
use anyhow::{anyhow, bail, Context, Result};
use edgeml_collector::{Server, Settings, SqliteStore};
use edgeml_runtime::bundle::{self, Baseline, PackOptions, SecretKey, TrustPolicy};
use edgeml_runtime::telemetry::{Telemetry, TelemetryConfig};
use edgeml_runtime::{Config, Input, Manifest, Runtime, Tensor};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// One example per row of a reference `.npy`: row `i` of `[N, ...]` becomes
/// a tensor for the model's only input, shaped like the input spec (a batch
/// dimension of 1 is added when the spec has one more dimension).
pub struct Rows {
    name: String,
    dtype: bundle::Dtype,
    shape: Vec<u64>,
    data: Vec<u8>,
    row_bytes: usize,
    rows: usize,
}

impl Rows {
    pub fn read(path: &Path, manifest: &Manifest) -> Result<Rows> {
        let [spec] = manifest.inputs.as_slice() else {
            bail!(
                "{}: row-per-example data needs a model with one input; this one has {}",
                path.display(),
                manifest.inputs.len()
            );
        };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (dtype, shape, data) = edgeml_runtime::telemetry::npy::decode(&bytes)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if dtype != spec.dtype {
            bail!(
                "{} holds {dtype}, the model's input `{}` is {}",
                path.display(),
                spec.name,
                spec.dtype
            );
        }
        let Some((&rows, example)) = shape.split_first() else {
            bail!("{}: expected an array of examples [N, ...]", path.display());
        };
        let mut ex_shape = example.to_vec();
        if spec.shape.len() == ex_shape.len() + 1 {
            ex_shape.insert(0, 1);
        }
        spec.check_shape(&ex_shape).map_err(|why| {
            anyhow!(
                "{}: a row does not fit input `{}` {}: {why}",
                path.display(),
                spec.name,
                spec.shape_string()
            )
        })?;
        let row_bytes = example.iter().product::<u64>() as usize * dtype.size();
        Ok(Rows {
            name: spec.name.clone(),
            dtype,
            shape: ex_shape,
            data,
            row_bytes,
            rows: rows as usize,
        })
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn input(&self, i: usize) -> Input {
        let start = (i % self.rows.max(1)) * self.row_bytes;
        Input::Tensors(vec![Tensor {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: self.data[start..start + self.row_bytes].to_vec(),
        }])
    }
}

/// Run the freshly packed bundle on the reference data and summarise what
/// it saw. The bundle is signed with a throwaway key for this, so nothing
/// runs unverified.
/// Load what `opts` would pack (signed with a throwaway key), to run it at pack time.
fn load_unpacked(opts: &PackOptions<'_>) -> Result<edgeml_runtime::Model> {
    let unsigned = bundle::pack(opts)?;
    let key = SecretKey::generate()?;
    let signed = bundle::sign(&unsigned, &key)?;
    let runtime = Runtime::new(&Config::new())?;
    let verified = runtime.verify(signed, &TrustPolicy::any_of(vec![key.public_key()])?)?;
    Ok(runtime.load(&verified)?)
}

/// A self-test vector from `FILE[=LABEL]`, answered by the model being packed.
pub fn self_test(opts: &PackOptions<'_>, spec: &str) -> Result<edgeml_runtime::bundle::SelfTest> {
    use base64::Engine as _;
    let (file, label) = match spec.rsplit_once('=') {
        Some((f, l)) => (Path::new(f), Some(l.to_string())),
        None => (Path::new(spec), None),
    };
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let Some(edgeml_runtime::Input::Media { media_type, .. }) =
        edgeml_runtime::Input::media_for_extension(ext, Vec::new())
    else {
        bail!(
            "{}: self-test inputs are .png, .jpg, .wav or .json files",
            file.display()
        );
    };
    let input = edgeml_runtime::bundle::SelfTestInput::Media {
        media_type,
        base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
    };
    let name = file
        .file_name()
        .map_or(spec.into(), |n| n.to_string_lossy().into_owned());
    let model = load_unpacked(opts).context("loading the model to record its self-test")?;
    match model.record_self_test(&name, &input, label.clone()) {
        Ok(t) => Ok(t),
        // The publisher's expectation stands: devices will check it and refuse the bundle.
        Err(edgeml_runtime::Error::SelfTest { reason, .. }) if label.is_some() => {
            eprintln!("warning: self-test `{name}`: {reason}; devices will refuse this bundle");
            Ok(edgeml_runtime::bundle::SelfTest {
                name,
                input,
                label,
                outputs: Vec::new(),
                tolerance: 1e-3,
            })
        }
        Err(e) => Err(e.into()),
    }
}

pub fn baseline(opts: &PackOptions<'_>, reference: &Path) -> Result<Baseline> {
    let model = load_unpacked(opts).context("loading the model to compute its baseline")?;
    let rows = Rows::read(reference, model.manifest())?;
    if rows.len() == 0 {
        bail!("{}: no reference examples", reference.display());
    }
    Ok(model.baseline((0..rows.len()).map(|i| rows.input(i)))?)
}

pub fn replay(args: &ReplayArgs) -> Result<()> {
    let tconfig = TelemetryConfig::from_file(&args.telemetry)?;
    let telemetry = Telemetry::start(tconfig)?;
    let mut config = config(&args.host)?;
    config.telemetry(telemetry.clone());
    let runtime = Runtime::new(&config)?;
    let (_, model) = load(&runtime, &args.bundle, &policy(&args.trust)?)?;
    let rows = Rows::read(&args.data, model.manifest())?;
    if rows.len() == 0 {
        bail!("{}: no rows", args.data.display());
    }
    let total = args.count.unwrap_or(rows.len());
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let started = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    for i in 0..total {
        if let Some(iv) = interval {
            let due = started + iv.mul_f64(i as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        match model.predict(rows.input(i)) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        if args.progress {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "predicted {}", i + 1);
            let _ = out.flush();
        }
    }
    let stats = telemetry.flush(args.flush_timeout.into());
    let drift = telemetry.drift();
    telemetry.shutdown();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"predictions": ok, "errors": failed, "telemetry": stats, "drift": drift})
        );
    } else {
        println!("{ok} predictions, {failed} errors");
        println!(
            "telemetry: {} windows, {} records shipped ({} bytes), {} pending, {} dropped{}",
            stats.windows,
            stats.shipped_records,
            stats.shipped_bytes,
            stats.spool.pending_records,
            stats.spool.dropped_records,
            stats
                .last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        for d in &drift {
            let flagged: Vec<&str> = d
                .features
                .iter()
                .filter(|f| f.status == edgeml_runtime::telemetry::DriftStatus::Drift)
                .map(|f| f.name.as_str())
                .collect();
            println!(
                "local drift, last window ({} predictions): {}",
                d.count,
                if flagged.is_empty() {
                    "none".to_string()
                } else {
                    flagged.join(", ")
                }
            );
        }
    }
    if stats.spool.pending_records > 0 && telemetry.config().collector.is_some() {
        eprintln!(
            "warning: {} records are still in the spool; they ship on the next run",
            stats.spool.pending_records
        );
    }
    Ok(())
}

pub(crate) fn token(
    value: Option<&str>,
    file: Option<&Path>,
    env: &str,
    what: &str,
) -> Result<String> {
    if let Some(v) = value {
        return Ok(v.trim().to_string());
    }
    if let Some(f) = file {
        return Ok(std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string());
    }
    std::env::var(env)
        .map(|v| v.trim().to_string())
        .map_err(|_| anyhow!("no {what}: give --{what}-file or set {env}"))
}

fn admin_token(s: &ServerArgs) -> Result<String> {
    token(
        None,
        s.admin_token_file.as_deref(),
        "EDGEML_ADMIN_TOKEN",
        "admin-token",
    )
}

fn get(s: &ServerArgs, path_and_query: &str) -> Result<reqwest::blocking::Response> {
    let url = format!("{}{path_and_query}", s.url.trim_end_matches('/'));
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?
        .get(&url)
        .bearer_auth(admin_token(s)?)
        .send()
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        bail!(
            "GET {url}: {status}: {}",
            body.get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        );
    }
    Ok(resp)
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn collector(args: &CollectorArgs) -> Result<()> {
    match &args.command {
        CollectorCommand::Serve {
            db,
            listen,
            admin_token_file,
            enrolment_token_file,
            bundles,
            canary_interval,
            canary_min_predictions,
            canary_min_devices,
            canary_min_share,
            timestamp_key,
            timestamp_ttl,
        } => {
            let mut settings = Settings::new(
                token(
                    None,
                    admin_token_file.as_deref(),
                    "EDGEML_ADMIN_TOKEN",
                    "admin-token",
                )?,
                token(
                    None,
                    enrolment_token_file.as_deref(),
                    "EDGEML_ENROLMENT_TOKEN",
                    "enrolment-token",
                )?,
            );
            settings.fleet.bundle_dir = bundles.clone();
            settings.fleet.canary.interval = (*canary_interval).into();
            settings.fleet.canary.min_predictions = *canary_min_predictions;
            settings.fleet.canary.min_devices = *canary_min_devices;
            settings.fleet.canary.min_share = *canary_min_share;
            settings.fleet.timestamp_ttl = (*timestamp_ttl).into();
            if let Some(path) = timestamp_key {
                let key = edgeml_bundle::SecretKey::from_file(path)
                    .with_context(|| format!("reading the timestamp key {}", path.display()))?;
                settings.fleet.timestamp_key = Some(std::sync::Arc::new(key));
            }
            let store =
                SqliteStore::open(db).with_context(|| format!("opening {}", db.display()))?;
            let server = Server::start(store, settings, *listen)?;
            println!(
                "edgeml collector listening on {} (database {})",
                server.url(),
                db.display()
            );
            server.wait();
            Ok(())
        }
        CollectorCommand::Devices { server, json } => {
            let devices: Value = get(server, "/v1/devices")?.json()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
                return Ok(());
            }
            for d in devices.as_array().into_iter().flatten() {
                let models: Vec<String> = d["models"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        format!(
                            "{} {}",
                            m["name"].as_str().unwrap_or("?"),
                            m["version"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                println!(
                    "{}  last seen {}  pending {}  dropped {}  models: {}",
                    d["device_id"].as_str().unwrap_or("?"),
                    d["last_seen_ms"]
                        .as_u64()
                        .map_or("never".into(), ms_to_rfc3339),
                    d["pending_records"],
                    d["dropped_records"],
                    models.join(", ")
                );
            }
            Ok(())
        }
        CollectorCommand::Stats {
            server,
            model,
            version,
            json,
        } => {
            let v: Value = get(
                server,
                &format!(
                    "/v1/models/{}/versions/{}/stats",
                    encode(model),
                    encode(version)
                ),
            )?
            .json()?;
            let s = &v["stats"];
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{model} {version}: {} predictions from {} devices, error rate {:.4}, {:.1}/s, latency p50 {} us, p99 {} us",
                    s["count"], s["devices"], s["error_rate"].as_f64().unwrap_or(0.0),
                    s["throughput_per_s"].as_f64().unwrap_or(0.0),
                    s["latency_us"]["p50"], s["latency_us"]["p99"]
                );
            }
            Ok(())
        }
        CollectorCommand::Drift {
            server,
            model,
            version,
            bucket,
            json,
        } => {
            let path = format!(
                "/v1/models/{}/versions/{}/drift{}",
                encode(model),
                encode(version),
                query(&[("bucket_s", Some(bucket.as_secs().max(1).to_string()))])
            );
            let v: Value = get(server, &path)?.json()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for b in v["drift"]["buckets"].as_array().into_iter().flatten() {
                let flagged: Vec<String> = b["features"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| f["status"] == "drift" || f["status"] == "possible_drift")
                    .map(|f| {
                        format!(
                            "{} ({}, psi {:.2})",
                            f["name"].as_str().unwrap_or("?"),
                            f["status"].as_str().unwrap_or("?"),
                            f["psi"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect();
                println!(
                    "{}  {} predictions  {}",
                    b["start_ms"].as_u64().map_or("?".into(), ms_to_rfc3339),
                    b["count"],
                    if flagged.is_empty() {
                        "no drift".to_string()
                    } else {
                        format!("DRIFT: {}", flagged.join(", "))
                    }
                );
            }
            Ok(())
        }
        CollectorCommand::Export {
            server,
            model,
            version,
            device,
            format,
            out,
        } => {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            // One cut-off for both requests, so the array and its metadata agree.
            let to_ms = edgeml_runtime::telemetry::now_ms().to_string();
            let q = |fmt: &str| {
                query(&[
                    ("to_ms", Some(to_ms.clone())),
                    ("model", model.clone()),
                    ("version", version.clone()),
                    ("device", device.clone()),
                    ("format", Some(fmt.to_string())),
                ])
            };
            match format.as_str() {
                "parquet" => {
                    let bytes = get(server, &format!("/v1/samples{}", q("parquet")))?.bytes()?;
                    let path = out.join("samples.parquet");
                    std::fs::write(&path, &bytes)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("wrote {} ({} bytes)", path.display(), bytes.len());
                }
                "npy" => {
                    let meta: Value =
                        get(server, &format!("/v1/samples{}", q("npy-metadata")))?.json()?;
                    let bytes = get(server, &format!("/v1/samples{}", q("npy")))?.bytes()?;
                    let npy = out.join("samples.npy");
                    let json = out.join("samples.json");
                    std::fs::write(&npy, &bytes)
                        .with_context(|| format!("writing {}", npy.display()))?;
                    std::fs::write(&json, serde_json::to_vec_pretty(&meta)?)
                        .with_context(|| format!("writing {}", json.display()))?;
                    println!(
                        "wrote {} (shape {}) and {}",
                        npy.display(),
                        meta["shape"],
                        json.display()
                    );
                }
                other => bail!("--format {other}: use parquet or npy"),
            }
            Ok(())
        }
    }
}

fn ms_to_rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
