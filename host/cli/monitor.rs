//! Telemetry and the collector: baselines at pack time, `edgeml replay`
//! (a device feeding recorded data through a model with telemetry on), and
//! `edgeml collector` (devices, stats, drift, export from `edgeml-server`).

use crate::args::{CollectorArgs, CollectorCommand, ReplayArgs, ServerArgs};
use crate::commands::{config, load, policy};
use anyhow::{anyhow, bail, Context, Result};
use edgeml_client::wire::telemetry::Range;
use edgeml_client::{Client, SampleFormat};
use edgeml_runtime::bundle::{self, Baseline, PackOptions, SecretKey, TrustPolicy};
use edgeml_runtime::telemetry::drift::DriftStatus;
use edgeml_runtime::telemetry::{Telemetry, TelemetryConfig};
use edgeml_runtime::{Config, Input, Manifest, Runtime, Tensor};
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

/// A client of the collector with the admin token.
fn client(s: &ServerArgs) -> Result<Client> {
    let token = token(
        None,
        s.admin_token_file.as_deref(),
        "EDGEML_ADMIN_TOKEN",
        "admin-token",
    )?;
    Ok(Client::with_timeout(&s.url, Duration::from_secs(120))?.with_admin_token(token))
}

pub fn collector(args: &CollectorArgs) -> Result<()> {
    match &args.command {
        CollectorCommand::Devices { server, json } => {
            let devices = client(server)?.devices()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
                return Ok(());
            }
            for d in &devices {
                let models: Vec<String> = d
                    .models
                    .iter()
                    .map(|m| format!("{} {}", m.model.name, m.model.version))
                    .collect();
                println!(
                    "{}  last seen {}  pending {}  dropped {}  models: {}",
                    d.device_id,
                    d.last_seen_ms.map_or("never".into(), ms_to_rfc3339),
                    d.pending_records,
                    d.dropped_records,
                    models.join(", ")
                );
            }
            Ok(())
        }
        CollectorCommand::Accuracy {
            server,
            model,
            version,
            classes,
            json,
        } => {
            let v = client(server)?.accuracy(model, version.as_deref(), &Range::default(), None)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if v.versions.is_empty() {
                println!("{model}: no predictions reported yet");
                return Ok(());
            }
            let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.4}"));
            println!(
                "{:<12} {:>8} {:>8} {:>9} {:>9} {:>9}  ESTIMATE",
                "VERSION", "LABELLED", "CORRECT", "ACCURACY", "MACRO F1", "ESTIMATED"
            );
            for a in &v.versions {
                let (est, validity) = match &a.estimated {
                    Some(e) => (
                        format!("{:.4}", e.accuracy),
                        serde_json::to_value(e.validity)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                    ),
                    None => ("-".into(), "-".into()),
                };
                println!(
                    "{:<12} {:>8} {:>8} {:>9} {:>9} {:>9}  {validity}",
                    a.version,
                    a.labelled,
                    a.correct,
                    opt(a.accuracy),
                    opt(a.macro_f1),
                    est
                );
            }
            for a in &v.versions {
                if let Some(e) = &a.estimated {
                    println!("{} estimate: {}", a.version, e.reason);
                }
                if let Some(r) = &a.regression {
                    println!(
                        "{} regression: {} labelled, MAE {:.4}, RMSE {:.4}",
                        a.version, r.labelled, r.mae, r.rmse
                    );
                }
            }
            if *classes {
                for a in &v.versions {
                    println!("\n{model} {}:", a.version);
                    println!(
                        "  {:<16} {:>7} {:>9} {:>9} {:>9} {:>9}",
                        "CLASS", "SUPPORT", "PREDICTED", "PRECISION", "RECALL", "F1"
                    );
                    for c in &a.classes {
                        println!(
                            "  {:<16} {:>7} {:>9} {:>9} {:>9} {:>9}",
                            c.label,
                            c.support,
                            c.predicted,
                            opt(c.precision),
                            opt(c.recall),
                            opt(c.f1)
                        );
                    }
                    for d in &a.devices {
                        println!(
                            "  device {:<16} {:>5} labelled, accuracy {:.4}",
                            d.name, d.labelled, d.accuracy
                        );
                    }
                    for t in &a.tags {
                        println!(
                            "  tag {:<19} {:>5} labelled, accuracy {:.4}",
                            t.name, t.labelled, t.accuracy
                        );
                    }
                }
            }
            Ok(())
        }
        CollectorCommand::Labels { server, file, json } => {
            let content_type = match file.extension().and_then(|e| e.to_str()) {
                Some("csv") => "text/csv",
                Some("json") => "application/json",
                Some("parquet") => "application/vnd.apache.parquet",
                _ => bail!(
                    "{}: give a .csv, .json or .parquet file of prediction_id and label",
                    file.display()
                ),
            };
            let body =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let r = client(server)?.upload_labels(body, content_type)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} labels: {} matched a stored sample, {} did not",
                    r.received, r.matched, r.unmatched
                );
                if !r.unmatched_ids.is_empty() {
                    println!(
                        "unmatched (first {}): {}",
                        r.unmatched_ids.len(),
                        r.unmatched_ids.join(", ")
                    );
                }
            }
            Ok(())
        }
        CollectorCommand::Stats {
            server,
            model,
            version,
            json,
        } => {
            let v = client(server)?.stats(model, version, &Range::default())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let s = &v.stats;
            let q = |k: &str| {
                s.latency_us
                    .get(k)
                    .map_or("-".to_string(), |v| format!("{v:.0}"))
            };
            println!(
                "{model} {version}: {} predictions from {} devices, error rate {:.4}, {:.1}/s, latency p50 {} us, p99 {} us",
                s.count, s.devices, s.error_rate, s.throughput_per_s, q("p50"), q("p99")
            );
            Ok(())
        }
        CollectorCommand::Drift {
            server,
            model,
            version,
            bucket,
            json,
        } => {
            let v = client(server)?.drift(model, version, &Range::default(), (*bucket).into())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for b in &v.drift.buckets {
                let flagged: Vec<String> = b
                    .features
                    .iter()
                    .filter(|f| f.status >= DriftStatus::PossibleDrift)
                    .map(|f| {
                        format!(
                            "{} ({}, psi {:.2})",
                            f.name,
                            if f.status == DriftStatus::Drift {
                                "drift"
                            } else {
                                "possible_drift"
                            },
                            f.psi
                        )
                    })
                    .collect();
                println!(
                    "{}  {} predictions  {}",
                    ms_to_rfc3339(b.start_ms),
                    b.count,
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
            let range = Range {
                from_ms: None,
                to_ms: Some(edgeml_runtime::telemetry::now_ms()),
                device: device.clone(),
            };
            let (model, version) = (model.as_deref(), version.as_deref());
            let client = client(server)?;
            match format.as_str() {
                "parquet" => {
                    let path = out.join("samples.parquet");
                    let n = download(
                        &client,
                        SampleFormat::Parquet,
                        model,
                        version,
                        &range,
                        &path,
                    )?;
                    println!("wrote {} ({n} bytes)", path.display());
                }
                "npy" => {
                    let meta = client.samples_npy_metadata(model, version, &range)?;
                    let npy = out.join("samples.npy");
                    let json = out.join("samples.json");
                    download(&client, SampleFormat::Npy, model, version, &range, &npy)?;
                    std::fs::write(&json, serde_json::to_vec_pretty(&meta)?)
                        .with_context(|| format!("writing {}", json.display()))?;
                    println!(
                        "wrote {} (shape {:?}) and {}",
                        npy.display(),
                        meta.shape,
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

/// Download a sample export into `path` (written whole or not at all),
/// showing the bytes as they come.
fn download(
    client: &edgeml_client::Client,
    format: SampleFormat,
    model: Option<&str>,
    version: Option<&str>,
    range: &Range,
    path: &std::path::Path,
) -> Result<u64> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let pb = crate::progress::download(&format!("downloading {}", path.display()));
    let n = client.samples_to(
        format,
        model,
        version,
        range,
        &mut pb.wrap_write(tmp.as_file_mut()),
        path,
    );
    pb.finish_and_clear();
    let n = n?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(n)
}
