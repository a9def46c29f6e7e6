use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Signed WebAssembly model components for edge fleets.
#[derive(Debug, Parser)]
#[command(name = "edgeml", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 publisher key pair: DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub.
    Keygen {
        /// Directory to write the keys to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Base name of the key files.
        #[arg(long, default_value = "publisher")]
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pack an ONNX model and a guest component into an unsigned bundle.
    Pack(PackArgs),
    /// Add a publisher signature to a bundle (in place unless --out is given).
    Sign {
        /// The bundle.
        bundle: PathBuf,
        /// Secret key file (from `edgeml keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Write the signed bundle here instead of replacing BUNDLE.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a bundle's signatures, trust policy and digests.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile a verified bundle ahead of time for a device's target and
    /// sign the result: an artifact a device without a compiler can load.
    Precompile {
        /// The bundle.
        bundle: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        /// Target: a triple (`aarch64-unknown-linux-gnu`,
        /// `x86_64-unknown-linux-gnu`) or `pulley32` (32-bit ARM) /
        /// `pulley64`.
        #[arg(long)]
        target: String,
        /// Secret key that signs the artifact (the device must trust it for
        /// artifacts).
        #[arg(long)]
        key: PathBuf,
        /// Must match the device's `runtime.memory_reservation_mib`, if set.
        #[arg(long, value_name = "MIB")]
        memory_reservation_mib: Option<u64>,
        /// Where to write it (default: BUNDLE with `.<target>.edgemlpa`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show a bundle's manifest, model card, sections, signers and sizes (verifies nothing).
    Inspect {
        /// The bundle.
        bundle: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Print the model and its card as a CycloneDX 1.6 BOM (JSON) instead.
        #[arg(long, conflicts_with = "json")]
        cyclonedx: bool,
    },
    /// Verify a bundle, run one prediction and write its outputs as .npy files.
    Run(RunArgs),
    /// Measure cold load, cached load and predict latency/throughput.
    ///
    /// Compiles into a private cache unless `--cache-dir` is given; with a
    /// warm `--cache-dir` no cold load is measured and the reported peak RSS
    /// is that of serving alone.
    Bench(BenchArgs),
    /// Feed each row of an .npy file through a bundle with telemetry on, as a
    /// device would, then flush windows and ship them to the collector.
    Replay(ReplayArgs),
    /// Query the telemetry collector (`edgeml-server`): devices, stats, drift, samples.
    Collector(CollectorArgs),
    /// Make, rotate or publish the fleet's root of trust.
    Root(RootArgs),
    /// Upload a signed bundle and publish signed release metadata to a channel.
    Push(PushArgs),
    /// Pause, resume or widen a channel's rollout.
    Rollout(RolloutArgs),
    /// The fleet view: each device's installed versions, tags, last seen,
    /// update state and last error; `edgeml fleet tag` sets a device's tags.
    #[command(args_conflicts_with_subcommands = true)]
    Fleet {
        #[command(flatten)]
        server: FleetServer,
        /// Only devices following this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<FleetCommand>,
    },
    /// Read or verify the fleet server's hash-chained audit log.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the log, oldest first: who did what to what, and with which keys.
    Log {
        #[command(flatten)]
        server: FleetServer,
        /// Only entries whose action starts with this (`rollout.`, `release.publish`).
        #[arg(long)]
        action: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every entry's hash and link, and that the log still reaches
    /// the head the server recorded and the checkpoint's head.
    Verify {
        #[command(flatten)]
        server: FleetServer,
        /// A file keeping the last verified head (created if missing): the
        /// log must still contain that entry unchanged, so entries removed
        /// from its end are caught even if the server's head was rewound
        /// too. Advanced on success. Keep it away from the server.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct FleetServer {
    /// Fleet server (collector) URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// File with the admin token. Default: $EDGEML_ADMIN_TOKEN.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RootArgs {
    #[command(subcommand)]
    pub command: RootCommand,
}

#[derive(Debug, Args)]
pub struct RootKeys {
    /// Root key pair(s) (.key): they sign this root and must sign the next.
    #[arg(long = "root-key", required = true)]
    pub root_keys: Vec<PathBuf>,
    /// Root signatures a new root needs.
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u32,
    /// Release public key(s) (.pub): they sign release metadata.
    #[arg(long = "release-key", required = true)]
    pub release_keys: Vec<PathBuf>,
    /// Release signatures a release needs (k of n).
    #[arg(long, default_value_t = 1)]
    pub release_threshold: u32,
    /// Publisher public key(s) (.pub): they sign bundles (`edgeml sign`).
    #[arg(long = "publisher-key", required = true)]
    pub publisher_keys: Vec<PathBuf>,
    /// Publisher signatures a bundle needs.
    #[arg(long, default_value_t = 1)]
    pub publisher_threshold: u32,
    /// Timestamp public key(s) (.pub), held online by the fleet server
    /// (`collector serve --timestamp-key`): devices then require a fresh,
    /// short-lived timestamp with every release (freeze protection).
    #[arg(long = "timestamp-key")]
    pub timestamp_keys: Vec<PathBuf>,
    /// Timestamp signatures a timestamp needs.
    #[arg(long, default_value_t = 1)]
    pub timestamp_threshold: u32,
    /// Build public key(s) (.pub) that sign precompiled artifacts
    /// (`edgeml precompile --key`). Without them, devices take artifacts
    /// signed by a publisher key.
    #[arg(long = "build-key")]
    pub build_keys: Vec<PathBuf>,
    /// How long the root is valid.
    #[arg(long, default_value = "365d")]
    pub expires: humantime::Duration,
}

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Write root version 1 (ship it to devices as their root of trust).
    Init {
        #[command(flatten)]
        keys: RootKeys,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the next root version: new keys and thresholds, revocations.
    /// Signed by the new root keys and by `--sign` (the current root keys).
    Rotate {
        /// The current root.
        #[arg(long)]
        from: PathBuf,
        /// Current root key pair(s) (.key) that vouch for the new root.
        #[arg(long = "sign", required = true)]
        sign: Vec<PathBuf>,
        #[command(flatten)]
        keys: RootKeys,
        /// Public key(s) (.pub) to revoke: refused in every role from now on.
        #[arg(long = "revoke")]
        revoke: Vec<PathBuf>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Upload a root to the fleet server (it checks the chain).
    Publish {
        /// The root file.
        root: PathBuf,
        #[command(flatten)]
        server: FleetServer,
    },
}

#[derive(Debug, Args)]
pub struct ReleaseOptions {
    /// Release key pair(s) (.key); give as many as the root's release threshold.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// How long the release metadata is valid; devices refuse it afterwards.
    #[arg(long, default_value = "30d")]
    pub expires: humantime::Duration,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The signed bundle.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub server: FleetServer,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// Share of the fleet that takes it (`10%`, `100%`); with `--steps`,
    /// the last step's share.
    #[arg(long, default_value = "100%")]
    pub rollout: String,
    /// Only devices whose tags match this selector take it
    /// (`site=berlin, hardware in (rpi4, jetson), !legacy`).
    #[arg(long, value_name = "SELECTOR")]
    pub target: Option<String>,
    /// Pace the rollout: the shares of its steps (`1%,10%,50%,100%`), or
    /// `exp:START:RATE` for steps growing by RATE from START percent up to
    /// `--rollout` (`exp:1:2` gives 1, 2, 4, ... 64, 100). The server moves
    /// to the next step once the canary gate has passed at the current one
    /// for `--step-time` with `--step-devices` devices running the release.
    #[arg(long, value_name = "STEPS")]
    pub steps: Option<String>,
    /// Time at each step before the next (with `--steps`).
    #[arg(long, default_value = "10m", requires = "steps")]
    pub step_time: humantime::Duration,
    /// Devices that must run the release at a step before the next (or
    /// every device the step includes, if fewer).
    #[arg(long, default_value_t = 1, requires = "steps")]
    pub step_devices: u32,
    /// Halt the rollout once this share of the devices that ran it rolled
    /// it back (`20%`), counted after `--abort-after` devices.
    #[arg(long, value_name = "SHARE", requires = "abort_after")]
    pub abort_failures: Option<String>,
    /// Devices that must have run the release before `--abort-failures` counts.
    #[arg(long, value_name = "N", requires = "abort_failures")]
    pub abort_after: Option<u32>,
    #[command(flatten)]
    pub release: ReleaseOptions,
    /// Let devices with a higher version install this one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// A precompiled artifact of the bundle (`edgeml precompile`), offered
    /// to devices of its target; repeat for several targets.
    #[arg(long = "artifact", value_name = "FILE")]
    pub artifacts: Vec<PathBuf>,
    /// Push the bundle (and artifacts) to this OCI registry repository
    /// (`http://host:5000/edgeml/bundles`) as a Wasm OCI artifact tagged with
    /// the model version, not to the server; the server must keep its bundles
    /// in the same repository (`edgeml-server --registry`).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// Registry user for basic authentication (the password comes from
    /// $EDGEML_REGISTRY_PASSWORD).
    #[arg(long, requires = "registry")]
    pub registry_user: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Set the tags of an enrolled device on the server (replacing those an
    /// admin set before); they take the place of the device's own tags of
    /// the same keys. No tags: remove the admin-set ones.
    Tag {
        /// The device id.
        device: String,
        /// Tags, as `key=value` (`site=berlin hardware=rpi4`).
        tags: Vec<String>,
        #[command(flatten)]
        server: FleetServer,
    },
    /// The rollouts and the devices as tables: each channel's release,
    /// state, step and share, how many devices run it and why it halted;
    /// each device's model, architecture, tags, last report, health and
    /// telemetry backlog.
    Status {
        #[command(flatten)]
        server: FleetServer,
        /// Only this channel and the devices following it.
        #[arg(long)]
        channel: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Stop devices from taking the channel's release.
    Pause {
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        server: FleetServer,
    },
    /// Let them take it again (also lifts a halt by the canary gate).
    Resume {
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        server: FleetServer,
    },
    /// Move a paced rollout to its last step at once.
    Promote {
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        server: FleetServer,
    },
    /// Stop the rollout and send the devices that took the release back to
    /// the version before (resume undoes it).
    Abort {
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        server: FleetServer,
    },
    /// Re-sign the channel's release with a new rollout share.
    Set {
        /// The new share (`50%`).
        share: String,
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        server: FleetServer,
        #[command(flatten)]
        release: ReleaseOptions,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The bundle.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Examples, one per row ([N, ...], the model's single input).
    #[arg(long)]
    pub data: PathBuf,
    /// Telemetry configuration (TOML; see the README).
    #[arg(long)]
    pub telemetry: PathBuf,
    /// Predictions to make (cycling through the rows). Default: one per row.
    #[arg(long)]
    pub count: Option<usize>,
    /// Predictions per second. Default: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print `predicted N` after each prediction.
    #[arg(long)]
    pub progress: bool,
    /// How long to wait at the end for the collector to take everything.
    #[arg(long, default_value = "30s")]
    pub flush_timeout: humantime::Duration,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CollectorArgs {
    #[command(subcommand)]
    pub command: CollectorCommand,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Collector URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// File with the admin token. Default: $EDGEML_ADMIN_TOKEN.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CollectorCommand {
    /// List enrolled devices: last seen, spool, models.
    Devices {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fleet statistics of a model version.
    Stats {
        #[command(flatten)]
        server: ServerArgs,
        /// Model name.
        #[arg(long)]
        model: String,
        /// Model version.
        #[arg(long)]
        version: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measured accuracy per model version (from labelled predictions):
    /// overall, macro F1, and with --classes per class, per device and per device tag.
    Accuracy {
        #[command(flatten)]
        server: ServerArgs,
        /// Model name.
        #[arg(long)]
        model: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
        /// Also print precision, recall and F1 per class, and accuracy per device.
        #[arg(long)]
        classes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload true labels by prediction id (the `prediction_id` column of
    /// exported samples): a CSV or Parquet file with `prediction_id` and
    /// `label` columns, or JSON rows. They count in accuracy per version.
    Labels {
        #[command(flatten)]
        server: ServerArgs,
        /// The file (.csv, .parquet or .json).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drift of a model version over time against its baseline.
    Drift {
        #[command(flatten)]
        server: ServerArgs,
        /// Model name.
        #[arg(long)]
        model: String,
        /// Model version.
        #[arg(long)]
        version: String,
        /// Time bucket.
        #[arg(long, default_value = "1h")]
        bucket: humantime::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export drift samples: samples.parquet, or samples.npy and samples.json.
    Export {
        #[command(flatten)]
        server: ServerArgs,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// parquet or npy.
        #[arg(long, default_value = "parquet")]
        format: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// The ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Guest component: a .wasm file, or a built-in one by name: `generic` (named tensors in and out;
    /// the default), `image-classifier` (PNG/JPEG, top-k labels), `voice-activity` (16 kHz WAV).
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// Model name ([A-Za-z0-9._-]).
    #[arg(long)]
    pub name: String,
    /// Model version (semver, e.g. 1.0.0).
    #[arg(long)]
    pub version: String,
    /// Output bundle.
    #[arg(long)]
    pub out: PathBuf,
    /// Class labels, one per line.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Preprocessing parameters for the component (JSON object).
    #[arg(long)]
    pub preprocess: Option<PathBuf>,
    /// Oldest host version allowed to run the bundle. Default: this version.
    #[arg(long)]
    pub min_host_version: Option<String>,
    /// Reference data (.npy, one example per row): the bundle then carries a
    /// baseline of what the model sees on it, for drift monitoring.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// A self-test vector: an input file (`.png`, `.wav`, `.json`), optionally
    /// with the label the model must give (`digit0.png=0`). Without a label the
    /// model's answer now is recorded. Devices run these before switching.
    #[arg(long = "self-test")]
    pub self_test: Vec<String>,
    /// Give an input a fixed shape (repeat for several): NAME=DIMS, e.g.
    /// `x=1,3,224,224`. For exported models whose symbolic dimensions feed
    /// Reshape or Squeeze. The bundle carries the model with that shape.
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shapes: Vec<String>,
    /// Fold an input into the model as a constant (repeat for several):
    /// NAME=VALUE or NAME=V1,V2,... (`true`/`false` for booleans), e.g.
    /// `sr=16000`. The input disappears, and an `If` on it is resolved.
    #[arg(long = "constant", value_name = "NAME=VALUE")]
    pub constants: Vec<String>,
    /// A model card (TOML): owner, intended use, limitations, training data,
    /// code revision and evaluation metrics with their data. Datasets given
    /// by `path` are hashed; the signed manifest keeps digest, size and
    /// description.
    #[arg(long)]
    pub card: Option<PathBuf>,
    /// Pack even if tract cannot plan the model (a bundle meant only for the
    /// onnxruntime backend). By default pack refuses such a model, naming
    /// the node tract stopped at.
    #[arg(long)]
    pub no_check: bool,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Trusted publisher public key (repeat for several).
    #[arg(long = "trust", value_name = "PUB", required = true)]
    pub keys: Vec<PathBuf>,
    /// Signatures needed from distinct trusted keys (k of n). Default 1.
    #[arg(long, default_value_t = 1)]
    pub threshold: usize,
}

#[derive(Debug, Args)]
pub struct HostArgs {
    /// Directory for compiled components. Default: $EDGEML_CACHE_DIR, else ~/.cache/edgeml.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Compile every time; do not read or write the cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Wall-clock limit per call into the guest, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Largest guest linear memory, in MiB.
    #[arg(long, default_value_t = 512)]
    pub max_memory_mib: usize,
    /// Where inference runs: tract or onnxruntime in this process, tract
    /// compiled to WebAssembly in its own sandbox, or `auto` (onnxruntime
    /// when its library loads, else tract).
    #[arg(long, value_enum, default_value_t = BackendArg::Tract)]
    pub backend: BackendArg,
    /// The libonnxruntime.so for `--backend onnxruntime|auto`. Default:
    /// $ORT_DYLIB_PATH, else the dynamic linker's search path.
    #[arg(long, value_name = "PATH")]
    pub onnxruntime_library: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// tract, native code in the host process; needs nothing installed.
    #[value(alias = "native")]
    Tract,
    /// Microsoft's onnxruntime, loaded from libonnxruntime.so at run time.
    Onnxruntime,
    /// tract compiled to WebAssembly, in its own component and memory limit.
    Sandboxed,
    /// onnxruntime if its library loads, else tract.
    Auto,
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// NAME=FILE.npy for each named tensor, or one media file (.png, .jpg, .wav, .json).
    #[arg(long = "input", value_name = "NAME=FILE.npy | FILE")]
    pub inputs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The bundle.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Write one .npy per output tensor here.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The bundle.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Input (as for `run`). Default: zeros shaped like the model inputs (symbolic dimensions = 1).
    #[command(flatten)]
    pub input: InputArgs,
    /// Timed predictions.
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// Untimed predictions first.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Threads for the throughput measurement.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write /tmp/perf-PID.map naming the guest's compiled functions, for
    /// `perf record` / `perf report` (see the README's Performance section).
    #[arg(long)]
    pub perf_map: bool,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}
