//! `agent.toml`.

use crate::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agent's configuration. Every field but `device_id`, `dir`, `server`,
/// `channel` and `root` has a default.
///
/// ```toml
/// device_id = "gateway-17"
/// dir = "/var/lib/edgeml-agent"
/// server = "https://fleet.example.com"
/// channel = "stable"
/// root = "/etc/edgeml/root.json"          # root version 1, shipped with the device
/// enrolment_token_file = "/etc/edgeml/enrolment-token"
/// poll_interval = "30s"
/// server_tags = true                     # false: match release targets against [tags] only
///
/// [tags]                                  # for release targets (`site=berlin`)
/// site = "berlin"
/// hardware = "rpi4"
///
/// [download]
/// max_bytes = 268435456
/// timeout = "10m"
///
/// [health]
/// watch = "30s"
/// max_error_rate = 0.1
/// min_requests = 20
///
/// [serve]
/// listen = "127.0.0.1:8080"               # or "unix:/run/edgeml/agent.sock"
/// max_concurrent = 2                      # inferences at once
/// max_queue = 16                          # waiting requests; beyond: 503 + Retry-After
/// # max_body_bytes = 1048576              # default: derived from the model's inputs
///
/// [runtime]
/// backend = "tract"                       # or "onnxruntime", "sandboxed" (tract in its own Wasm sandbox), "auto"
/// # onnxruntime_library = "/usr/lib/libonnxruntime.so.1.31.1"  # default: $ORT_DYLIB_PATH, else ld.so's path
/// # onnxruntime_threads = 1               # threads per inference
/// max_memory_mib = 512                    # per model instance: guest memory and tensors
/// call_timeout = "10s"                    # per call into the guest
/// # cache_dir = "/var/cache/edgeml"       # compiled components; default: <dir>/cache
/// # telemetry = "/etc/edgeml/telemetry.toml"
/// # idle_instances = 2                    # warm instances; default: serve.max_concurrent
/// # parallel_compilation = false          # true: faster installs, higher peak memory
/// # memory_reservation_mib = 64           # virtual space per guest memory; default: wasmtime's
///
/// # [otlp]                                # agents built with `--features otlp`
/// # endpoint = "http://collector.local:4318"
/// # interval = "60s"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This device's id (1-64 of `[A-Za-z0-9._-]`).
    pub device_id: String,
    /// State directory: trusted root, bundles, the installed and last known
    /// good versions, partial downloads, the device key.
    pub dir: PathBuf,
    /// Fleet server base URL.
    pub server: String,
    /// The channel to follow.
    pub channel: String,
    /// The initial root of trust (root version 1, or any root the device
    /// was provisioned with). Used until `dir` holds a newer one.
    pub root: PathBuf,
    /// Enrolment token (prefer `enrolment_token_file`).
    #[serde(default)]
    pub enrolment_token: Option<String>,
    /// File with the enrolment token.
    #[serde(default)]
    pub enrolment_token_file: Option<PathBuf>,
    /// Where the device key lives (default: `dir`). Point it at the
    /// telemetry directory so that telemetry and the agent share one key.
    #[serde(default)]
    pub identity_dir: Option<PathBuf>,
    /// Time between polls (default 30 s), jittered by `poll_jitter`.
    #[serde(default = "default_poll", with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// Fraction of `poll_interval` added or removed at random (default 0.2),
    /// so a fleet does not poll in step.
    #[serde(default = "default_jitter")]
    pub poll_jitter: f64,
    /// Download limits.
    #[serde(default)]
    pub download: DownloadConfig,
    /// Health check of a new version.
    #[serde(default)]
    pub health: HealthConfig,
    /// Local inference server.
    #[serde(default)]
    pub serve: ServeConfig,
    /// When new versions may be installed.
    #[serde(default)]
    pub install: InstallConfig,
    /// This device's tags (site, hardware, customer), reported to the
    /// server; releases may target a tag selector. Tags an admin sets on
    /// the server take the place of these, key by key.
    #[serde(default)]
    pub tags: edgeml_fleet::Tags,
    /// Take the tags an admin sets on the fleet server in place of the
    /// configured ones (default true). Those tags come from the server, not
    /// from the release keys: with `false`, a release's signed target is
    /// matched against the configured tags only, so a compromised server
    /// cannot retarget the device (it can still only offer signed releases).
    #[serde(default = "yes")]
    pub server_tags: bool,
    /// How models run.
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// Push metrics and traces over OTLP (default: no; needs an agent
    /// built with the `otlp` feature).
    #[serde(default)]
    pub otlp: Option<OtlpSettings>,
}

/// When the agent may switch versions (`[install]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// A daily maintenance window in the device's local time
    /// (`"02:00-05:00"`, may wrap midnight). Outside it a new release is
    /// downloaded and verified, and installed at the first poll inside it.
    /// Default: none, install at once. Rollbacks never wait.
    #[serde(default)]
    pub window: Option<crate::window::MaintenanceWindow>,
}

/// OpenTelemetry export (`[otlp]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`).
    pub endpoint: String,
    /// How often metrics are pushed (default 60 s).
    #[serde(default = "default_otlp_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
}

fn default_onnxruntime_threads() -> usize {
    1
}

fn default_otlp_interval() -> Duration {
    Duration::from_secs(60)
}

/// Which inference backend a device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// tract, native code in the agent process; needs nothing installed.
    #[default]
    #[serde(alias = "native")]
    Tract,
    /// Microsoft's onnxruntime, loaded from `libonnxruntime.so` at start
    /// (`onnxruntime_library`, else `ORT_DYLIB_PATH`, else the linker's
    /// search path); the agent refuses to start without it.
    Onnxruntime,
    /// tract compiled to WebAssembly, in its own sandbox and memory limit.
    Sandboxed,
    /// onnxruntime when its library loads, else tract (logged at start).
    Auto,
}

/// How models run on the device (`[runtime]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Inference backend: `tract` (default; `native` is an alias),
    /// `onnxruntime`, `sandboxed` or `auto`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// The `libonnxruntime.so` for `onnxruntime` and `auto` (default:
    /// `ORT_DYLIB_PATH`, else the linker's search path). Prefer naming it
    /// here: the environment then cannot choose native code for the agent.
    #[serde(default)]
    pub onnxruntime_library: Option<PathBuf>,
    /// Threads onnxruntime uses per inference (default 1; requests run
    /// concurrently up to `serve.max_concurrent`).
    #[serde(default = "default_onnxruntime_threads")]
    pub onnxruntime_threads: usize,
    /// Memory budget per model instance in MiB: the guest's linear
    /// memories and what the host allocates for it (default 512).
    #[serde(default = "default_max_memory_mib")]
    pub max_memory_mib: usize,
    /// Wall-clock limit per call into the guest (default 10 s).
    #[serde(default = "default_call_timeout", with = "humantime_serde_compat")]
    pub call_timeout: Duration,
    /// Where compiled components are cached (default `<dir>/cache`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Compile every bundle at start instead of caching (slower starts).
    #[serde(default)]
    pub no_cache: bool,
    /// The telemetry configuration (TOML); none means no telemetry.
    #[serde(default)]
    pub telemetry: Option<PathBuf>,
    /// Warm model instances kept between requests (default: as many as
    /// `serve.max_concurrent`, the most that can be busy at once; each
    /// holds its own guest memory).
    #[serde(default)]
    pub idle_instances: Option<usize>,
    /// Compile a new bundle on several threads (faster install, higher
    /// peak memory while compiling). Default `false`: devices are small.
    #[serde(default)]
    pub parallel_compilation: bool,
    /// Virtual address space per guest memory, in MiB (default: wasmtime's
    /// 4 GiB reservation on 64-bit hosts; see the README's footprint table).
    #[serde(default)]
    pub memory_reservation_mib: Option<u64>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            backend: BackendChoice::default(),
            onnxruntime_library: None,
            onnxruntime_threads: default_onnxruntime_threads(),
            max_memory_mib: default_max_memory_mib(),
            call_timeout: default_call_timeout(),
            cache_dir: None,
            no_cache: false,
            telemetry: None,
            idle_instances: None,
            parallel_compilation: false,
            memory_reservation_mib: None,
        }
    }
}

fn default_max_memory_mib() -> usize {
    512
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Download limits: what stops endless-data and slow-retrieval attacks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// Largest bundle the device accepts (default 256 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Longest a bundle download may take, across resumes within one poll (default 10 min).
    #[serde(default = "default_download_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            max_bytes: default_max_bytes(),
            timeout: default_download_timeout(),
        }
    }
}

/// How a new version is checked before the agent commits to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How long to watch the new version's error rate (default 30 s).
    #[serde(default = "default_watch", with = "humantime_serde_compat")]
    pub watch: Duration,
    /// Roll back when more than this share of requests fail (default 0.1).
    #[serde(default = "default_error_rate")]
    pub max_error_rate: f64,
    /// Requests needed before the error rate counts (default 20).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            watch: default_watch(),
            max_error_rate: default_error_rate(),
            min_requests: default_min_requests(),
        }
    }
}

/// Where the local inference server listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// `HOST:PORT` (loopback by default: `127.0.0.1:8080`), `unix:PATH`, or
    /// `off`. A non-loopback address must be named in `insecure_listen_any`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Allow listening on a non-loopback address (the API has no authentication).
    #[serde(default)]
    pub insecure_listen_any: bool,
    /// Largest request body. Default: derived from the served model's
    /// inputs (fixed-size tensors as JSON numbers, 4 MiB per media or
    /// variable-size input, plus 64 KiB), at most 64 MiB. Larger requests
    /// get 413.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Inferences run at once (default 2). Requests beyond this wait in the queue.
    #[serde(default = "default_concurrent")]
    pub max_concurrent: usize,
    /// Requests that may wait for a free slot (default 16); beyond that the
    /// agent answers 503 with `Retry-After`.
    #[serde(default = "default_queue")]
    pub max_queue: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            insecure_listen_any: false,
            max_body_bytes: None,
            max_concurrent: default_concurrent(),
            max_queue: default_queue(),
        }
    }
}

fn default_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_jitter() -> f64 {
    0.2
}
fn default_max_bytes() -> u64 {
    256 << 20
}
fn default_download_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_watch() -> Duration {
    Duration::from_secs(30)
}
fn default_error_rate() -> f64 {
    0.1
}
fn default_min_requests() -> u64 {
    20
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_concurrent() -> usize {
    2
}
fn default_queue() -> usize {
    16
}

fn yes() -> bool {
    true
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl AgentConfig {
    /// A configuration with defaults for everything optional.
    pub fn new(
        device_id: impl Into<String>,
        dir: impl Into<PathBuf>,
        server: impl Into<String>,
        channel: impl Into<String>,
        root: impl Into<PathBuf>,
    ) -> Self {
        AgentConfig {
            device_id: device_id.into(),
            dir: dir.into(),
            server: server.into(),
            channel: channel.into(),
            root: root.into(),
            enrolment_token: None,
            enrolment_token_file: None,
            identity_dir: None,
            poll_interval: default_poll(),
            poll_jitter: default_jitter(),
            download: DownloadConfig::default(),
            health: HealthConfig::default(),
            serve: ServeConfig::default(),
            install: InstallConfig::default(),
            tags: edgeml_fleet::Tags::new(),
            server_tags: true,
            runtime: RuntimeSettings::default(),
            otlp: None,
        }
    }

    /// Read and check a TOML file. Relative paths in it are relative to the file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut c: AgentConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            Some(&mut c.dir),
            Some(&mut c.root),
            c.enrolment_token_file.as_mut(),
            c.identity_dir.as_mut(),
            c.runtime.cache_dir.as_mut(),
            c.runtime.telemetry.as_mut(),
            // A bare file name (`libonnxruntime.so.1`) is for the dynamic
            // linker's search path, not relative to this file.
            c.runtime
                .onnxruntime_library
                .as_mut()
                .filter(|p| p.components().count() > 1),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(sock) = c.serve.listen.strip_prefix("unix:") {
            if Path::new(sock).is_relative() {
                c.serve.listen = format!("unix:{}", base.join(sock).display());
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Check what serde does not.
    pub fn validate(&self) -> Result<(), Error> {
        if !edgeml_telemetry::wire::valid_device_id(&self.device_id) {
            return Err(Error::Config(
                "device_id must be 1-64 characters of [A-Za-z0-9._-]".into(),
            ));
        }
        edgeml_fleet::check_tags(&self.tags).map_err(|e| Error::Config(e.to_string()))?;
        if self.channel.is_empty() || self.channel.contains('/') {
            return Err(Error::Config(
                "channel must be a non-empty name without `/`".into(),
            ));
        }
        if !(self.server.starts_with("http://") || self.server.starts_with("https://")) {
            return Err(Error::Config(format!(
                "server `{}` must be an http(s) URL",
                self.server
            )));
        }
        if !(0.0..=1.0).contains(&self.poll_jitter)
            || !(0.0..=1.0).contains(&self.health.max_error_rate)
        {
            return Err(Error::Config(
                "poll_jitter and health.max_error_rate must be between 0 and 1".into(),
            ));
        }
        if self.poll_interval.is_zero() || self.download.timeout.is_zero() {
            return Err(Error::Config(
                "poll_interval and download.timeout must be positive".into(),
            ));
        }
        if self.runtime.max_memory_mib == 0 || self.runtime.call_timeout.is_zero() {
            return Err(Error::Config(
                "runtime.max_memory_mib and runtime.call_timeout must be positive".into(),
            ));
        }
        if self.serve.max_concurrent == 0 || self.serve.max_body_bytes == Some(0) {
            return Err(Error::Config(
                "serve.max_concurrent and serve.max_body_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn enrolment_token(&self) -> Result<Option<String>, Error> {
        if let Some(t) = &self.enrolment_token {
            return Ok(Some(t.trim().to_string()));
        }
        match &self.enrolment_token_file {
            Some(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| Error::Config(format!("enrolment_token_file {}: {e}", p.display()))),
            None => Ok(None),
        }
    }
}
