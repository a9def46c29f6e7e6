use crate::args::{
    BackendArg, Cli, Command, FleetCommand, HostArgs, InputArgs, PackArgs, RunArgs, TrustArgs,
};
use crate::npy;
use anyhow::{bail, Context, Result};
use edgeml_runtime::bundle::{self, PackOptions, SecretKey};
use edgeml_runtime::{
    Backend, Config, Input, Model, PublicKey, Runtime, Tensor, TrustPolicy, VerifiedBundle,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The components built into `edgeml` (from guest/, by edgeml-guests), by name.
pub const BUILTIN_COMPONENTS: [(&str, &[u8]); 3] = [
    ("generic", edgeml_guests::GENERIC),
    ("image-classifier", edgeml_guests::IMAGE_CLASSIFIER),
    ("voice-activity", edgeml_guests::VOICE_ACTIVITY),
];

/// `--component`: a .wasm file, or the name of a built-in component; none means `generic`.
fn component_bytes(arg: Option<&Path>) -> Result<Vec<u8>> {
    let Some(path) = arg else {
        return Ok(BUILTIN_COMPONENTS[0].1.to_vec());
    };
    if !path.exists() {
        if let Some((_, bytes)) = BUILTIN_COMPONENTS
            .iter()
            .find(|(n, _)| Path::new(n) == path)
        {
            return Ok(bytes.to_vec());
        }
    }
    read(path)
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out, name, json } => keygen(&out, &name, json),
        Command::Pack(args) => pack(&args),
        Command::Sign { bundle, key, out } => sign(&bundle, &key, out.as_deref()),
        Command::Verify {
            bundle,
            trust,
            json,
        } => verify(&bundle, &trust, json),
        Command::Inspect {
            bundle,
            json,
            cyclonedx,
        } => inspect(&bundle, json, cyclonedx),
        Command::Precompile {
            bundle,
            trust,
            target,
            key,
            memory_reservation_mib,
            out,
        } => precompile(
            &bundle,
            &trust,
            &target,
            &key,
            memory_reservation_mib,
            out.as_deref(),
        ),
        Command::Run(args) => run_model(&args),
        Command::Bench(args) => crate::bench::bench(&args),
        Command::Replay(args) => crate::monitor::replay(&args),
        Command::Collector(args) => crate::monitor::collector(&args),
        Command::Root(args) => crate::fleet::root(&args),
        Command::Push(args) => crate::fleet::push(&args),
        Command::Rollout(args) => crate::fleet::rollout(&args),
        Command::Fleet {
            command:
                Some(FleetCommand::Tag {
                    device,
                    tags,
                    server,
                }),
            ..
        } => crate::fleet::tag(&server, &device, &tags),
        Command::Fleet {
            command: Some(FleetCommand::Status { server, channel }),
            ..
        } => crate::fleet::status(&server, channel.as_deref()),
        Command::Fleet {
            server,
            channel,
            json,
            command: None,
        } => crate::fleet::view(&server, channel.as_deref(), json),
        Command::Audit(args) => crate::audit::run(&args),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn keygen(out: &Path, name: &str, json: bool) -> Result<()> {
    let key = SecretKey::generate()?;
    let (secret, public) = key.write_pair(out, name)?;
    let id = key.public_key().id().to_string();
    if json {
        println!(
            "{}",
            json!({"secret_key": secret, "public_key": public, "key_id": id})
        );
    } else {
        println!(
            "secret key: {} (keep it secret)\npublic key: {}\nkey id:     {id}",
            secret.display(),
            public.display()
        );
    }
    Ok(())
}

fn pack(args: &PackArgs) -> Result<()> {
    let model = concrete_model(args)?;
    let component = component_bytes(args.component.as_deref())?;
    let (inputs, outputs) = edgeml_runtime::onnx_io_schema(&model)
        .with_context(|| format!("reading {}", args.model.display()))?;
    let labels = match &args.labels {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    let preprocessing = match &args.preprocess {
        Some(p) => {
            let v: serde_json::Value = serde_json::from_slice(&read(p)?)
                .with_context(|| format!("{} is not valid JSON", p.display()))?;
            if !v.is_object() {
                bail!(
                    "{}: preprocessing parameters must be a JSON object",
                    p.display()
                );
            }
            v
        }
        None => serde_json::Value::Null,
    };
    let version = semver::Version::parse(&args.version)
        .with_context(|| format!("version `{}` is not semver (e.g. 1.0.0)", args.version))?;
    let min_host = args
        .min_host_version
        .as_deref()
        .unwrap_or(edgeml_runtime::HOST_VERSION);
    let min_host_version = semver::Version::parse(min_host)
        .with_context(|| format!("min host version `{min_host}` is not semver"))?;
    let mut opts = PackOptions {
        name: &args.name,
        version,
        component: &component,
        model: &model,
        inputs,
        outputs,
        labels,
        preprocessing,
        min_host_version,
        created: None,
        baseline: None,
        self_test: Vec::new(),
        card: args
            .card
            .as_deref()
            .map(crate::card::read_card)
            .transpose()?,
    };
    if let Some(reference) = &args.reference {
        opts.baseline = Some(
            crate::monitor::baseline(&opts, reference)
                .with_context(|| format!("computing the baseline from {}", reference.display()))?,
        );
    }
    for spec in &args.self_test {
        opts.self_test.push(
            crate::monitor::self_test(&opts, spec)
                .with_context(|| format!("self-test vector `{spec}`"))?,
        );
    }
    let bytes = bundle::pack(&opts)?;
    write_atomic(&args.out, &bytes)?;
    let info = bundle::inspect(&bytes)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info.manifest)?);
    } else {
        println!(
            "packed {} ({} bytes, unsigned); sign it with `edgeml sign {} --key KEY`",
            args.out.display(),
            bytes.len(),
            args.out.display()
        );
    }
    Ok(())
}

/// The model as the bundle will carry it: specialised by `--input-shape` and
/// `--constant`, and (unless `--no-check`) planned once by tract so that a
/// model that cannot run is refused now, naming where tract stopped.
fn concrete_model(args: &PackArgs) -> Result<Vec<u8>> {
    let mut model = read(&args.model)?;
    let spec = edgeml_tract::Specialize {
        shapes: args
            .input_shapes
            .iter()
            .map(|s| edgeml_tract::parse_shape(s).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
        constants: args
            .constants
            .iter()
            .map(|s| edgeml_tract::parse_constant(s).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
    };
    if !spec.is_empty() {
        model = edgeml_tract::specialize(&model, &spec)
            .with_context(|| format!("specialising {}", args.model.display()))?;
    }
    if !args.no_check {
        if let Err(e) = edgeml_tract::Model::load(&model) {
            let inputs = edgeml_tract::io_schema(&model)
                .map(|(inputs, _)| {
                    inputs
                        .iter()
                        .map(|t| format!("{} {} {}", t.name, t.dtype, fmt_shape(&t.shape)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            bail!(
                "{} cannot be planned: {e}\nits inputs: {inputs}\nmake them concrete with \
                 --input-shape NAME=DIMS or --constant NAME=VALUE, or pack with --no-check for a \
                 bundle that only the onnxruntime backend will run",
                args.model.display()
            );
        }
    }
    Ok(model)
}

fn fmt_shape(shape: &[edgeml_runtime::bundle::Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn sign(path: &Path, key: &Path, out: Option<&Path>) -> Result<()> {
    let key = SecretKey::from_file(key)?;
    let signed = bundle::sign(&read(path)?, &key)?;
    let out = out.unwrap_or(path);
    write_atomic(out, &signed)?;
    println!(
        "signed {} with key {}",
        out.display(),
        key.public_key().id()
    );
    Ok(())
}

pub fn policy(trust: &TrustArgs) -> Result<TrustPolicy> {
    let keys = trust
        .keys
        .iter()
        .map(PublicKey::from_file)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrustPolicy::new(keys, trust.threshold)?)
}

fn verify(path: &Path, trust: &TrustArgs, json: bool) -> Result<()> {
    let policy = policy(trust)?;
    let bytes = bundle::read_file(path, &bundle::Limits::default())?;
    let verified = bundle::verify(bytes, &policy)
        .with_context(|| format!("{} failed verification", path.display()))?;
    let m = verified.manifest();
    let signers: Vec<String> = verified.signers().iter().map(|k| k.to_string()).collect();
    if json {
        println!(
            "{}",
            json!({"ok": true, "name": m.name, "version": m.version.to_string(), "digest": verified.digest_hex(), "signers": signers})
        );
    } else {
        println!(
            "OK {} {} (digest {}), signed by {}",
            m.name,
            m.version,
            verified.digest_hex(),
            signers.join(", ")
        );
    }
    Ok(())
}

fn precompile(
    path: &Path,
    trust: &TrustArgs,
    target: &str,
    key: &Path,
    memory_reservation_mib: Option<u64>,
    out: Option<&Path>,
) -> Result<()> {
    let policy = policy(trust)?;
    let key = edgeml_runtime::bundle::SecretKey::from_file(key)?;
    let mut config = edgeml_runtime::Config::new();
    config.memory_reservation(memory_reservation_mib.map(|m| m.saturating_mul(1 << 20)));
    let runtime = edgeml_runtime::Runtime::new(&config)?;
    let verified = runtime
        .verify(runtime.read_bundle(path)?, &policy)
        .with_context(|| format!("{} failed verification", path.display()))?;
    let pb = crate::progress::spinner(&format!("compiling {} for {target}", path.display()));
    let artifact = runtime.precompile(&verified, target, &key);
    pb.finish_and_clear();
    let artifact = artifact?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{target}.edgemlpa"));
        name.into()
    });
    std::fs::write(&out, &artifact).with_context(|| format!("{}", out.display()))?;
    println!(
        "{}: {} bytes for {target}, bundle {}, signed by {}",
        out.display(),
        artifact.len(),
        verified.digest_hex(),
        key.public_key().id()
    );
    Ok(())
}

fn inspect(path: &Path, json: bool, cyclonedx: bool) -> Result<()> {
    let info = bundle::inspect(&read(path)?)?;
    if cyclonedx {
        let Some(m) = &info.manifest else {
            bail!(
                "{} has no manifest: it is not an edgeml bundle",
                path.display()
            );
        };
        let bom = bundle::card::cyclonedx(m, &info.content_sha256);
        println!("{}", serde_json::to_string_pretty(&bom)?);
        return Ok(());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("bundle:   {} ({} bytes)", path.display(), info.size);
    println!("content:  sha256 {}", info.content_sha256);
    match &info.manifest {
        Some(m) => {
            println!(
                "model:    {} {} (created {}, needs host >= {})",
                m.name, m.version, m.created, m.min_host_version
            );
            println!(
                "onnx:     {} bytes, sha256 {}",
                m.model.digest.size, m.model.digest.sha256
            );
            println!(
                "guest:    {} bytes, sha256 {}",
                m.component.size, m.component.sha256
            );
            for s in &m.inputs {
                println!("input:    {} {} {}", s.name, s.dtype, s.shape_string());
            }
            for s in &m.outputs {
                println!("output:   {} {} {}", s.name, s.dtype, s.shape_string());
            }
            if !m.labels.is_empty() {
                println!("labels:   {}", m.labels.join(", "));
            }
            match &m.card {
                Some(card) => crate::card::print(card),
                None => println!("card:     none (edgeml pack --card)"),
            }
        }
        None => println!("manifest: none"),
    }
    println!("sections:");
    for s in &info.sections {
        println!("  {:<24} {:>10} bytes", s.name, s.size);
    }
    if info.signatures.is_empty() {
        println!("signers:  none (unsigned)");
    }
    for s in &info.signatures {
        let note = if s.covers_content {
            ""
        } else {
            " (does not cover the current content)"
        };
        println!("signer:   key {} ({}){note}", s.key_id, s.algorithm);
    }
    println!("(inspect verifies nothing; use `edgeml verify`)");
    Ok(())
}

pub fn config(host: &HostArgs) -> Result<Config> {
    let mut config = Config::new();
    if !host.timeout.is_finite() || host.timeout <= 0.0 {
        bail!("--timeout must be a positive number of seconds");
    }
    config
        .timeout(Duration::from_secs_f64(host.timeout))
        .max_memory_bytes(host.max_memory_mib << 20);
    config
        .backend(match host.backend {
            BackendArg::Tract => Backend::Tract,
            BackendArg::Onnxruntime => Backend::OnnxRuntime,
            BackendArg::Auto => Backend::Auto,
            BackendArg::Sandboxed => Backend::Sandboxed {
                component: edgeml_guests::tract_backend()
                    .context("inflating the sandboxed backend built into edgeml")?
                    .into(),
            },
        })
        .onnxruntime_library(host.onnxruntime_library.clone());
    if !host.no_cache {
        if let Some(dir) = host.cache_dir.clone().or_else(default_cache_dir) {
            config.cache_dir(dir);
        }
    }
    Ok(config)
}

/// The runtime for `run`, `bench` and `replay`; says on stderr when `auto`
/// chose tract, and why.
pub fn runtime(host: &HostArgs) -> Result<Runtime> {
    runtime_with(&config(host)?)
}

pub fn runtime_with(config: &Config) -> Result<Runtime> {
    let runtime = Runtime::new(config)?;
    if let Some(note) = runtime.backend_note() {
        eprintln!("note: {note}");
    }
    Ok(runtime)
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("EDGEML_CACHE_DIR") {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("edgeml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgeml"))
}

pub fn load(
    runtime: &Runtime,
    path: &Path,
    policy: &TrustPolicy,
) -> Result<(VerifiedBundle, Model)> {
    let verified = runtime
        .verify(runtime.read_bundle(path)?, policy)
        .with_context(|| format!("{} failed verification", path.display()))?;
    // Compiling a component takes seconds; a cached load is instant.
    let pb = crate::progress::spinner(&format!(
        "loading {} (compiling unless cached)",
        path.display()
    ));
    let model = runtime.load(&verified);
    pb.finish_and_clear();
    let model = model.with_context(|| format!("loading {}", path.display()))?;
    Ok((verified, model))
}

/// Turn `--input` arguments into an [`Input`].
pub fn parse_inputs(args: &InputArgs) -> Result<Option<Input>> {
    let mut tensors = Vec::new();
    let mut media = None;
    for arg in &args.inputs {
        match arg.split_once('=') {
            Some((name, file)) => tensors.push(npy::read(name, Path::new(file))?),
            None => {
                let path = Path::new(arg);
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ext.eq_ignore_ascii_case("npy") {
                    bail!("give .npy inputs as NAME=FILE.npy (the model input's name)");
                }
                if media.is_some() {
                    bail!("only one media file can be given");
                }
                let input = Input::media_for_extension(ext, read(path)?).with_context(|| {
                    format!(
                        "{}: unknown media type; use .png, .jpg, .wav or .json",
                        path.display()
                    )
                })?;
                media = Some(input);
            }
        }
    }
    match (media, tensors.is_empty()) {
        (Some(_), false) => {
            bail!("give either tensors (NAME=FILE.npy) or one media file, not both")
        }
        (Some(m), true) => Ok(Some(m)),
        (None, false) => Ok(Some(Input::Tensors(tensors))),
        (None, true) => Ok(None),
    }
}

fn run_model(args: &RunArgs) -> Result<()> {
    let policy = policy(&args.trust)?;
    let runtime = runtime(&args.host)?;
    let input = parse_inputs(&args.input)?.context(
        "give --input NAME=FILE.npy for each model input, or --input FILE.png/.jpg/.wav/.json",
    )?;
    let (_, model) = load(&runtime, &args.bundle, &policy)?;
    let prediction = model.predict(input)?;
    let mut files = Vec::new();
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut used = BTreeSet::new();
        for t in &prediction.outputs {
            let stem = npy::file_stem(&t.name);
            let mut file = format!("{stem}.npy");
            let mut n = 1;
            while !used.insert(file.to_ascii_lowercase()) {
                n += 1;
                file = format!("{stem}-{n}.npy");
            }
            let path = dir.join(&file);
            npy::write(t, &path)?;
            files.push((t.name.clone(), path));
        }
    }
    if args.json {
        let outputs: Vec<_> = prediction
            .outputs
            .iter()
            .map(|t| {
                let file = files.iter().find(|(n, _)| n == &t.name).map(|(_, p)| p.display().to_string());
                json!({"name": t.name, "dtype": t.dtype.to_string(), "shape": t.shape, "file": file, "preview": preview(t, 8)})
            })
            .collect();
        let out = json!({
            "model": model.manifest().name,
            "version": model.manifest().version.to_string(),
            "digest": model.digest(),
            "outputs": outputs,
            "scores": prediction.scores,
            "monitoring": model.metadata().monitoring_features.iter().zip(&prediction.monitoring).map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
            "cache": model.load_info().cache,
            "backend": model.backend(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} {} ({}, {} backend)",
        model.manifest().name,
        model.manifest().version,
        model.metadata().component,
        model.backend()
    );
    for t in &prediction.outputs {
        let file = files
            .iter()
            .find(|(n, _)| n == &t.name)
            .map(|(_, p)| format!(" -> {}", p.display()))
            .unwrap_or_default();
        println!(
            "  {} {} {:?} {:?}{file}",
            t.name,
            t.dtype,
            t.shape,
            preview(t, 6)
        );
    }
    if let Some(scores) = &prediction.scores {
        println!("top labels:");
        for s in scores {
            println!("  {:<16} {:.4}", s.label, s.score);
        }
    }
    Ok(())
}

fn preview(t: &Tensor, n: usize) -> Vec<f32> {
    t.to_f32().unwrap_or_default().into_iter().take(n).collect()
}
