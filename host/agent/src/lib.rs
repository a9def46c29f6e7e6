//! The edgeml device agent: follows a fleet channel and keeps the device
//! serving a model it has verified and health-checked.
//!
//! Each poll it follows the root chain, fetches the channel's release
//! metadata (conditionally, with a jittered interval), checks it (release
//! keys and threshold, expiry, no older metadata, no lower model version
//! unless a downgrade is signed), decides from a stable hash of its device
//! id whether it is in the rollout, downloads the pinned bundle (resumable,
//! size and time caps), verifies it against the root's publisher keys,
//! stages it, loads it, runs its self-test vectors, serves it while
//! watching its error rate, and then commits or rolls back. The last known
//! good bundle stays on disk; after a crash mid-update the agent restarts
//! into it. Local inference is served over the Open Inference Protocol
//! (KServe v2 REST) on loopback or a Unix socket.
//!
//! ```no_run
//! use edgeml_agent::{Agent, AgentConfig};
//! use edgeml_runtime::{Config, Runtime};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = AgentConfig::from_file("agent.toml".as_ref())?;
//! let agent = Agent::start(config, Runtime::new(&Config::new())?)?;
//! println!("serving on {:?}: {:?}", agent.serve_addr(), agent.status().installed);
//! agent.wait();
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod config;
mod error;
mod export;
mod feedback;
mod metrics;
mod serve;
mod setup;
mod state;
mod window;

pub use config::{
    AgentConfig, BackendChoice, DownloadConfig, HealthConfig, InstallConfig, OtlpSettings,
    RuntimeSettings, ServeConfig,
};
pub use edgeml_client::wire::fleet::{Installed, StatusReport, UpdateState};
pub use error::Error;
pub use export::Export;
pub use feedback::FeedbackError;
pub use setup::runtime;
pub use window::MaintenanceWindow;

use edgeml_client::wire::fleet::RolloutState;
use edgeml_client::{Client, DownloadLimits, Poll};
use edgeml_fleet::{ArtifactRef, Release, Timestamp, TrustedRoot};
use edgeml_runtime::{Input, Model, Prediction, Runtime};
use edgeml_telemetry::DeviceIdentity;
use sha2::Digest as _;
use state::{Disk, Pending, StateDir};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// What one poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollOutcome {
    /// Nothing is published to the channel yet.
    NothingPublished,
    /// The channel has not changed since the last poll.
    NotModified,
    /// Already serving the release's bundle.
    UpToDate,
    /// The device is outside the rollout share.
    NotInRollout,
    /// The rollout is paused or halted, or its bundle already failed on
    /// this device; nothing to do until a new release.
    Waiting,
    /// Installed a new version.
    Installed(Installed),
    /// Went back to the last known good bundle because the rollout was halted.
    RolledBack(Installed),
    /// Downloaded and verified a new version outside the maintenance
    /// window: it is kept on disk and installed in the window.
    Deferred(Installed),
}

/// A model being served, with its request counters (for the health watch).
struct Slot {
    model: Model,
    installed: Installed,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Which model predicts, for labels given later (shared by every
    /// prediction it remembers).
    predictor: Arc<feedback::Predictor>,
}

struct Inner {
    config: AgentConfig,
    runtime: Runtime,
    state: StateDir,
    client: Client,
    identity: DeviceIdentity,
    trusted: Mutex<TrustedRoot>,
    serving: RwLock<Option<Arc<Slot>>>,
    disk: Mutex<Disk>,
    status: Mutex<Status>,
    etag: Mutex<Option<String>>,
    enrolled: AtomicBool,
    /// Sequence number of the last status report sent.
    report_seq: AtomicU64,
    polling: Mutex<()>,
    stop: (Mutex<bool>, Condvar),
    /// `GET /metrics` on the local API.
    metrics: metrics::Metrics,
    /// Recent predictions, for labels given on the device.
    recent: Mutex<feedback::Recent>,
    /// This device's tags as the server last named them (its own, with
    /// those an admin set in their place): release targets match these.
    tags: Mutex<edgeml_fleet::Tags>,
}

#[derive(Debug, Clone)]
struct Status {
    state: UpdateState,
    target: Option<Installed>,
    last_error: Option<String>,
    error_kind: Option<String>,
}

/// A running agent: a poll thread and a local inference server.
pub struct Agent {
    inner: Arc<Inner>,
    poller: Option<std::thread::JoinHandle<()>>,
    server: Option<serve::Server>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// Recover the state directory, start serving the installed bundle
    /// (restarting into the last known good one if an update was
    /// interrupted), start the local inference server and poll in the background.
    ///
    /// Metrics and traces are exported over OTLP if `config.otlp` says so
    /// (traces only reach the collector through the program's `tracing`
    /// subscriber: see [`Agent::start_with`]).
    pub fn start(config: AgentConfig, runtime: Runtime) -> Result<Agent, Error> {
        let export = Export::start(&config)?;
        Agent::start_with(config, runtime, export)
    }

    /// [`Agent::start`] with an export the caller started (and whose
    /// [`Export::tracing_layer`] it added to its subscriber).
    pub fn start_with(
        config: AgentConfig,
        runtime: Runtime,
        export: Export,
    ) -> Result<Agent, Error> {
        let mut agent = Agent::open_with(config, runtime, export)?;
        return_freed_memory();
        agent.server = serve::Server::start(agent.inner.clone())?;
        let inner = agent.inner.clone();
        agent.poller = Some(
            std::thread::Builder::new()
                .name("edgeml-agent".into())
                .spawn(move || poll_loop(&inner))
                .map_err(|e| Error::Config(format!("cannot start the poll thread: {e}")))?,
        );
        Ok(agent)
    }

    /// Like [`Agent::start`] but without the poll thread and with no local
    /// server: the caller drives updates with [`Agent::poll`] and predicts
    /// with [`Agent::predict`] (a gateway process embedding the agent).
    pub fn open(config: AgentConfig, runtime: Runtime) -> Result<Agent, Error> {
        let export = Export::start(&config)?;
        Agent::open_with(config, runtime, export)
    }

    /// [`Agent::open`] with an export the caller started.
    pub fn open_with(
        config: AgentConfig,
        runtime: Runtime,
        export: Export,
    ) -> Result<Agent, Error> {
        config.validate()?;
        let state = StateDir::open(&config.dir)?;
        let id_dir = config
            .identity_dir
            .clone()
            .unwrap_or_else(|| config.dir.clone());
        std::fs::create_dir_all(&id_dir).map_err(error::io(&id_dir))?;
        let identity = DeviceIdentity::load_or_create(&id_dir, &config.device_id)
            .map_err(|e| Error::Config(format!("device key: {e}")))?;
        // The newest root this device trusts: what it stored, else the provisioned one.
        let stored = state.path("root.json");
        let from_disk = std::fs::read(&stored)
            .ok()
            .map(|bytes| TrustedRoot::bootstrap(&bytes));
        if let Some(Err(_)) = &from_disk {
            // Damaged: start again from the provisioned root and follow the chain.
            state.set_aside("root.json")?;
        }
        let trusted = match from_disk {
            Some(Ok(t)) => t,
            _ => {
                let bytes = std::fs::read(&config.root).map_err(error::io(&config.root))?;
                let t = TrustedRoot::bootstrap(&bytes)?;
                state.write(&stored, &bytes)?;
                t
            }
        };
        let mut status = Status {
            state: UpdateState::Idle,
            target: None,
            last_error: None,
            error_kind: None,
        };
        let pending = state.read_json_or_set_aside::<Pending>("pending.json")?;
        let mut disk: Disk = match state.read_json("state.json") {
            Ok(d) => d.unwrap_or_default(),
            // A damaged state file must not keep the device down: set it
            // aside, rebuild from the verified bundles on disk, and say so.
            // Bundles that failed are deleted when they fail, so what is on
            // disk passed its checks, except an update in flight.
            Err(e @ Error::State { .. }) => {
                let kept = state.set_aside("state.json")?;
                let policy = trusted.root().publisher_policy()?;
                let in_flight = pending.as_ref().map(|p| p.target.sha256.as_str());
                let rebuilt = state.rebuild(&policy, in_flight);
                state.write_json("state.json", &rebuilt)?;
                let e = Error::StateDiscarded {
                    reason: e.to_string(),
                    kept,
                    current: rebuilt.current.as_ref().map(|c| c.version.clone()),
                };
                tracing::warn!(error = %e, "state file damaged; rebuilt");
                status.state = UpdateState::Recovered;
                status.last_error = Some(e.to_string());
                status.error_kind = Some(e.kind().into());
                rebuilt
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = pending {
            // Crashed or lost power between staging and commit: the committed
            // bundle is the last known good. Do not retry that bundle.
            let e = Error::Interrupted {
                version: p.target.version.clone(),
            };
            tracing::warn!(error = %e, "recovered from an interrupted update");
            disk.failed.insert(p.target.sha256.clone());
            state.write_json("state.json", &disk)?;
            state.remove("pending.json")?;
            status = Status {
                state: UpdateState::Recovered,
                target: Some(p.target),
                last_error: Some(e.to_string()),
                error_kind: Some(e.kind().into()),
            };
        }
        let client = Client::new(&config.server)?;
        let report_seq = state
            .read_json_or_set_aside::<StatusReport>("status.json")?
            .map_or(0, |r| r.seq);
        // The tags the server named last (kept across restarts), over the
        // configured ones.
        let mut tags = config.tags.clone();
        if config.server_tags {
            tags.extend(
                state
                    .read_json_or_set_aside::<edgeml_fleet::Tags>("tags.json")?
                    .unwrap_or_default(),
            );
        }
        let inner = Arc::new(Inner {
            config,
            runtime,
            state,
            client,
            identity,
            trusted: Mutex::new(trusted),
            serving: RwLock::new(None),
            disk: Mutex::new(disk.clone()),
            status: Mutex::new(status),
            etag: Mutex::new(None),
            enrolled: AtomicBool::new(false),
            report_seq: AtomicU64::new(report_seq),
            polling: Mutex::new(()),
            stop: (Mutex::new(false), Condvar::new()),
            metrics: metrics::Metrics::new(&export),
            recent: Mutex::new(feedback::Recent::new(feedback::DEFAULT_REMEMBERED)),
            tags: Mutex::new(tags),
        });
        // Serve the last known good bundle; fall back to the one before it.
        for candidate in [disk.current.clone(), disk.previous.clone()]
            .into_iter()
            .flatten()
        {
            match inner.load(&candidate) {
                Ok(slot) => {
                    inner.swap(Some(Arc::new(slot)));
                    if Some(&candidate) != disk.current.as_ref() {
                        let mut d = lock(&inner.disk);
                        d.current = Some(candidate);
                        d.previous = None;
                        inner.state.write_json("state.json", &*d)?;
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(version = %candidate.version, error = %e, "cannot serve a stored bundle");
                    inner.set_error(UpdateState::Failed, Some(candidate.clone()), &e)
                }
            }
        }
        Ok(Agent {
            inner,
            poller: None,
            server: None,
        })
    }

    /// Poll once now: follow the root chain, check the channel, update or
    /// roll back as needed, and report to the server. The agent keeps
    /// serving what it had whenever this returns an error.
    pub fn poll(&self) -> Result<PollOutcome, Error> {
        self.inner.poll()
    }

    /// Predict with the model being served (counted in the health watch).
    pub fn predict(&self, input: Input) -> Result<Prediction, PredictError> {
        self.inner.predict(None, None, input)
    }

    /// The true label of one of this agent's recent predictions (its
    /// `Prediction::id`): shipped to the fleet server through telemetry,
    /// where it counts in the accuracy of the model version that made it.
    pub fn feedback(&self, prediction_id: &str, label: &str) -> Result<(), FeedbackError> {
        self.inner.feedback(prediction_id, label)
    }

    /// The current status, as reported to the fleet server.
    pub fn status(&self) -> StatusReport {
        self.inner.report()
    }

    /// The local inference server's address (`None` when it is off or on a Unix socket).
    pub fn serve_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().and_then(|s| s.addr())
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.inner.config.device_id
    }

    /// Block until the agent stops (it runs until the process ends).
    pub fn wait(mut self) {
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }

    /// Stop polling and serving, and return once both have stopped. An
    /// update in progress stops at its next step.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        *lock(&self.inner.stop.0) = true;
        self.inner.stop.1.notify_all();
        if let Some(s) = self.server.take() {
            s.stop();
        }
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent's last status as it recorded it in its state directory
/// (`dir` in `agent.toml`), read without the server or a running agent:
/// installed and last known good versions, channel, trusted root version,
/// state and last error. `None` before the agent's first report.
pub fn last_status(config: &AgentConfig) -> Result<Option<StatusReport>, Error> {
    StateDir::at(&config.dir).read_json("status.json")
}

/// Why a local prediction failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PredictError {
    /// No model is installed yet.
    #[error("no model is being served yet")]
    NotReady,
    /// The agent serves another model or version.
    #[error("model `{asked}` is not served here; this agent serves {serving}")]
    UnknownModel {
        /// What was asked for.
        asked: String,
        /// What is served.
        serving: String,
    },
    /// The model refused the input or failed.
    #[error(transparent)]
    Model(#[from] edgeml_runtime::Error),
}

fn poll_loop(inner: &Arc<Inner>) {
    loop {
        let outcome = inner.poll();
        if matches!(
            outcome,
            Ok(PollOutcome::Installed(_) | PollOutcome::RolledBack(_))
                | Err(Error::Model { .. } | Error::Unhealthy { .. })
        ) {
            // A load (compile, self-test) just freed its working memory,
            // whether the release was kept or rolled back.
            return_freed_memory();
        }
        let base = inner.config.poll_interval.as_secs_f64();
        let jitter = inner.config.poll_jitter * (2.0 * random_unit() - 1.0);
        let wait = Duration::from_secs_f64((base * (1.0 + jitter)).max(0.05));
        if inner.sleep(wait) {
            return;
        }
    }
}

/// Hand the allocator's free pages back to the kernel. Compiling a
/// component with Cranelift allocates and frees several MiB in many small
/// blocks; glibc keeps such freed memory mapped (it only trims the top of
/// the main heap), so without this a device idles with the compiler's
/// garbage resident. Only in the daemon (the poll thread), never on the
/// request path; a no-op on other allocators.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns unused memory to the system and is
    // safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One log event per poll: what changed at info or warn, the rest at debug.
fn log_outcome(channel: &str, result: &Result<PollOutcome, Error>) {
    match result {
        Ok(PollOutcome::Installed(i)) => tracing::info!(
            channel,
            model = %i.model,
            version = %i.version,
            sha256 = %i.sha256,
            "installed and committed"
        ),
        Ok(PollOutcome::RolledBack(i)) => tracing::warn!(
            channel,
            model = %i.model,
            version = %i.version,
            "rollout halted by the fleet server: back on the last known good bundle"
        ),
        Ok(outcome) => tracing::debug!(channel, ?outcome, "poll"),
        Err(e) => tracing::warn!(
            channel,
            error_kind = e.kind(),
            error = %e,
            "update refused or failed; still serving the model it had"
        ),
    }
}

fn installed_of(release: &Release) -> Installed {
    Installed {
        model: release.model.clone(),
        version: release.model_version.to_string(),
        sha256: release.bundle.sha256.clone(),
    }
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

impl Inner {
    /// Sleep unless stopped; true when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let (m, cv) = &self.stop;
        let guard = lock(m);
        let (guard, _) = cv
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    fn serving(&self) -> Option<Arc<Slot>> {
        self.serving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn swap(&self, slot: Option<Arc<Slot>>) -> Option<Arc<Slot>> {
        if let Some(s) = &slot {
            self.metrics
                .serving(&s.installed.model, &s.installed.version);
        }
        std::mem::replace(
            &mut *self.serving.write().unwrap_or_else(|p| p.into_inner()),
            slot,
        )
    }

    fn set_state(&self, state: UpdateState, target: Option<Installed>) {
        let mut s = lock(&self.status);
        s.state = state;
        s.target = target;
        if matches!(state, UpdateState::Installed | UpdateState::Idle) {
            s.last_error = None;
            s.error_kind = None;
        }
    }

    fn set_error(&self, state: UpdateState, target: Option<Installed>, e: &Error) {
        let mut s = lock(&self.status);
        s.state = state;
        s.target = target;
        s.last_error = Some(e.to_string());
        s.error_kind = Some(e.kind().into());
    }

    fn report(&self) -> StatusReport {
        let s = lock(&self.status).clone();
        let d = lock(&self.disk).clone();
        StatusReport {
            channel: self.config.channel.clone(),
            state: s.state,
            installed: self.serving().map(|slot| slot.installed.clone()),
            last_good: d.current,
            target: s.target.as_ref().map(|t| t.version.clone()),
            target_sha256: s.target.map(|t| t.sha256),
            last_error: s.last_error,
            error_kind: s.error_kind,
            root_version: lock(&self.trusted).root().version,
            host_target: Some(self.runtime.host_target()),
            engine: Some(self.runtime.engine_fingerprint()),
            can_compile: self.runtime.can_compile(),
            seq: self.report_seq.load(Ordering::SeqCst),
            tags: self.config.tags.clone(),
        }
    }

    fn send_report(&self) {
        let mut report = self.report();
        // Strictly increasing across restarts (kept on disk) and, when the
        // clock is right, close to milliseconds since the epoch; a clock set
        // back after a report does not lock the device out.
        let now = edgeml_telemetry::now_ms();
        let prev = self
            .report_seq
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(now.max(p + 1)))
            .unwrap_or(0);
        report.seq = now.max(prev + 1);
        // Kept on disk: the sequence number survives restarts, and
        // `edgeml agent status` reads it without the server.
        let _ = self.state.write_json("status.json", &report);
        match self.client.report(&self.identity, &report) {
            Ok(accepted) if self.config.server_tags => {
                let mut tags = self.config.tags.clone();
                tags.extend(accepted.tags);
                if edgeml_fleet::check_tags(&tags).is_err() {
                    tracing::warn!("the server named invalid tags for this device; keeping the configured ones");
                    return;
                }
                let mut current = lock(&self.tags);
                if *current != tags {
                    tracing::info!(?tags, "device tags changed");
                    let _ = self.state.write_json("tags.json", &tags);
                    *current = tags;
                    // A release this device was not targeted by may target it now.
                    *lock(&self.etag) = None;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "status report not delivered"),
        }
    }

    /// Verify and load a stored bundle.
    fn load(&self, installed: &Installed) -> Result<Slot, Error> {
        let path = self.state.bundle_path(&installed.sha256);
        let bytes = self.runtime.read_bundle(&path).map_err(|e| match e {
            // A file that cannot be read is the agent's state, not the model.
            edgeml_runtime::Error::Bundle(edgeml_runtime::bundle::Error::Io { path, error }) => {
                Error::Io { path, error }
            }
            source => Error::Model {
                version: installed.version.clone(),
                source,
            },
        })?;
        // The file must still be the bundle the release pinned.
        let found = hex::encode(sha2::Sha256::digest(&bytes));
        if found != installed.sha256 {
            return Err(edgeml_fleet::Error::DigestMismatch {
                expected: installed.sha256.clone(),
                found,
            }
            .into());
        }
        // Its precompiled artifact, if it came with one.
        let artifact_path = self.state.artifact_path(&installed.sha256);
        let artifact = match std::fs::read(&artifact_path) {
            Ok(a) => Some(a),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(error::io(&artifact_path)(e)),
        };
        self.load_bytes(bytes, artifact.as_deref(), installed.clone())
    }

    /// Verify and load a bundle, from its precompiled artifact if there is
    /// one. A device that can compile falls back to compiling when the
    /// artifact is refused (the bundle itself verified); one that cannot
    /// reports the refusal.
    fn load_bytes(
        &self,
        bytes: Arc<[u8]>,
        artifact: Option<&[u8]>,
        installed: Installed,
    ) -> Result<Slot, Error> {
        let model_err = |source| Error::Model {
            version: installed.version.clone(),
            source,
        };
        let policy = lock(&self.trusted).root().publisher_policy()?;
        let verified = self.runtime.verify(bytes, &policy).map_err(model_err)?;
        let model = match artifact {
            Some(a) => match lock(&self.trusted)
                .root()
                .artifact_policy()
                .map_err(|e| edgeml_runtime::Error::Config(e.to_string()))
                .and_then(|signers| self.runtime.load_precompiled(&verified, a, &signers))
            {
                Err(e) if self.runtime.can_compile() => {
                    tracing::warn!(
                        version = %installed.version,
                        error = %e,
                        "precompiled artifact refused: compiling the bundle instead"
                    );
                    self.runtime.load(&verified)
                }
                loaded => loaded,
            },
            None => self.runtime.load(&verified),
        }
        .map_err(model_err)?;
        let predictor = Arc::new(feedback::Predictor {
            model: edgeml_telemetry::wire::ModelRef {
                name: installed.model.clone(),
                version: installed.version.clone(),
                digest: model.digest().to_string(),
            },
            labels: model.manifest().labels.clone(),
        });
        Ok(Slot {
            model,
            installed,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            predictor,
        })
    }

    fn predict(
        &self,
        name: Option<&str>,
        version: Option<&str>,
        input: Input,
    ) -> Result<Prediction, PredictError> {
        let Some(slot) = self.serving() else {
            self.metrics.refused("", "", "not_ready");
            return Err(PredictError::NotReady);
        };
        let i = &slot.installed;
        // At debug level: a span per inference costs on the hot path.
        let _span =
            tracing::debug_span!("predict", model = %i.model, version = %i.version).entered();
        if name.is_some_and(|n| n != i.model) || version.is_some_and(|v| v != i.version) {
            // Labelled with the served model: names from a request would let
            // any local client make series without end.
            self.metrics.refused(&i.model, &i.version, "unknown_model");
            return Err(PredictError::UnknownModel {
                asked: format!(
                    "{}{}",
                    name.unwrap_or(""),
                    version.map(|v| format!(" {v}")).unwrap_or_default()
                ),
                serving: format!("{} {}", i.model, i.version),
            });
        }
        // The health watch counts what the model and runtime did: a
        // malformed request is the client's error and counts for nothing,
        // so no local client can veto an update.
        let started = std::time::Instant::now();
        let result = slot.model.predict(input);
        self.metrics.predicted(
            &i.model,
            &i.version,
            started.elapsed(),
            result.as_ref().map(|_| ()).map_err(|e| e.kind().name()),
        );
        match result {
            Ok(p) => {
                slot.requests.fetch_add(1, Ordering::Relaxed);
                if self.runtime.telemetry().is_some() {
                    let top = p.scores.as_ref().and_then(|s| s.first());
                    lock(&self.recent).remember(
                        p.id.clone(),
                        feedback::Remembered {
                            predictor: slot.predictor.clone(),
                            predicted_ms: edgeml_telemetry::now_ms(),
                            prediction: top.map(|t| t.label.clone()),
                            score: top.map(|t| t.score),
                            value: p.first_value(),
                        },
                    );
                }
                Ok(p)
            }
            Err(e) if e.is_client_error() => Err(PredictError::Model(e)),
            Err(e) => {
                slot.requests.fetch_add(1, Ordering::Relaxed);
                slot.errors.fetch_add(1, Ordering::Relaxed);
                Err(PredictError::Model(e))
            }
        }
    }

    fn feedback(&self, prediction_id: &str, label: &str) -> Result<(), FeedbackError> {
        let telemetry = self
            .runtime
            .telemetry()
            .ok_or(FeedbackError::TelemetryOff)?;
        if label.is_empty() || label.len() > 256 {
            return Err(FeedbackError::InvalidLabel);
        }
        let r = lock(&self.recent)
            .get(prediction_id)
            .cloned()
            .ok_or_else(|| FeedbackError::UnknownPrediction(prediction_id.to_string()))?;
        let (model, labels) = (&r.predictor.model, &r.predictor.labels);
        if r.value.is_some() && label.trim().parse::<f64>().is_err() {
            return Err(FeedbackError::NotANumber {
                label: label.to_string(),
                model: format!("{} {}", model.name, model.version),
            });
        }
        if !labels.is_empty() && !labels.iter().any(|l| l == label) {
            return Err(FeedbackError::UnknownLabel {
                label: label.to_string(),
                model: format!("{} {}", model.name, model.version),
                labels: labels.join(", "),
            });
        }
        telemetry
            .outcome(
                model,
                &edgeml_telemetry::Outcome {
                    prediction_id,
                    predicted_ms: r.predicted_ms,
                    prediction: r.prediction.as_deref(),
                    score: r.score,
                    value: r.value,
                    label,
                },
            )
            .map_err(|e| FeedbackError::Spool(e.to_string()))?;
        tracing::debug!(prediction_id, label, "label queued");
        Ok(())
    }

    fn ensure_enrolled(&self) -> Result<(), Error> {
        if self.enrolled.load(Ordering::Relaxed) || self.state.path("enrolled").exists() {
            self.enrolled.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let token = self.config.enrolment_token()?.ok_or_else(|| {
            Error::Config("the device is not enrolled and no enrolment token is configured (enrolment_token_file)".into())
        })?;
        self.client.enrol(&token, &self.identity)?;
        self.state
            .write(&self.state.path("enrolled"), self.config.server.as_bytes())?;
        self.enrolled.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Follow the root chain: fetch version n+1 until the server has none,
    /// at most [`edgeml_fleet::MAX_ROOT_UPDATES`] versions per poll. When a
    /// new root changes the release keys, the trusted release metadata
    /// version is dropped (fast-forward recovery, as in TUF); the installed
    /// model version still guards against rollback.
    fn update_root(&self) -> Result<(), Error> {
        for followed in 0..=edgeml_fleet::MAX_ROOT_UPDATES {
            let next = lock(&self.trusted).root().version + 1;
            let Some(bytes) = self.client.root(next)? else {
                lock(&self.trusted).check_fresh(SystemTime::now())?;
                return Ok(());
            };
            if followed == edgeml_fleet::MAX_ROOT_UPDATES {
                // More versions follow: stop here, carry on next poll.
                break;
            }
            let mut t = lock(&self.trusted);
            let change = t.update(&bytes)?;
            // Forget the old keys' metadata before the new root is stored: a
            // power cut in between must not leave the new root next to a
            // fast-forwarded release it would then never get past.
            if change.release_keys_changed {
                self.state.remove("release.json")?;
                self.state.remove("timestamp.json")?;
            }
            self.state.write(&self.state.path("root.json"), &bytes)?;
            tracing::info!(
                root_version = change.version,
                release_keys_changed = change.release_keys_changed,
                "followed a root rotation"
            );
            // A new root may change what the channel view must carry
            // (a timestamp role): fetch it in full next.
            *lock(&self.etag) = None;
        }
        Err(edgeml_fleet::Error::RootChainTooLong {
            limit: edgeml_fleet::MAX_ROOT_UPDATES,
            reached: lock(&self.trusted).root().version,
        }
        .into())
    }

    fn poll(&self) -> Result<PollOutcome, Error> {
        let _one = lock(&self.polling);
        let _span = tracing::info_span!("poll", channel = %self.config.channel).entered();
        let result = self.poll_inner();
        log_outcome(&self.config.channel, &result);
        self.metrics.polled(match &result {
            Ok(PollOutcome::NothingPublished) => "nothing_published",
            Ok(PollOutcome::NotModified) => "not_modified",
            Ok(PollOutcome::UpToDate) => "up_to_date",
            Ok(PollOutcome::NotInRollout) => "not_in_rollout",
            Ok(PollOutcome::Waiting) => "waiting",
            Ok(PollOutcome::Installed(_)) => "installed",
            Ok(PollOutcome::RolledBack(_)) => "rolled_back",
            Ok(PollOutcome::Deferred(_)) => "deferred",
            Err(e) => e.kind(),
        });
        if let Err(e) = &result {
            let (state, target) = {
                let s = lock(&self.status);
                (s.state, s.target.clone())
            };
            // A rollback or recovery stays the state; anything else failed this poll.
            let state = match state {
                UpdateState::RolledBack | UpdateState::Recovered => state,
                _ => UpdateState::Failed,
            };
            self.set_error(state, target, e);
        }
        self.send_report();
        result
    }

    fn poll_inner(&self) -> Result<PollOutcome, Error> {
        self.ensure_enrolled()?;
        self.update_root()?;
        let seen: Option<Release> = self.state.read_json_or_set_aside("release.json")?;
        let stored_ts: Option<Timestamp> = self.state.read_json_or_set_aside("timestamp.json")?;
        let requires_ts = lock(&self.trusted).requires_timestamp();
        // Without a stored timestamp for the release seen, a 304 could not
        // be checked for freshness: ask for the full view.
        let etag = match (&seen, &stored_ts) {
            (Some(r), Some(ts)) if requires_ts && ts.release_version != r.version => None,
            (_, None) if requires_ts => None,
            _ => lock(&self.etag).clone(),
        };
        let (view, etag) = match self
            .client
            .poll_channel(&self.config.channel, etag.as_deref())?
        {
            Poll::NotModified => {
                // A server (or proxy) that answers 304 forever must not
                // freeze the device on metadata past its expiry.
                let now = SystemTime::now();
                if let Some(seen) = &seen {
                    seen.check_fresh(now)?;
                }
                if let (true, Some(ts)) = (requires_ts, &stored_ts) {
                    ts.check_fresh(now)?;
                }
                return Ok(PollOutcome::NotModified);
            }
            Poll::NotPublished => return Ok(PollOutcome::NothingPublished),
            Poll::View(v, e) => (v, e),
        };
        let now = SystemTime::now();
        let (release, timestamp) = {
            let trusted = lock(&self.trusted);
            let release = trusted.verify_release(
                &view.release.to_vec(),
                &self.config.channel,
                now,
                seen.as_ref(),
            )?;
            let timestamp = if trusted.requires_timestamp() {
                let env = view
                    .timestamp
                    .as_ref()
                    .ok_or(edgeml_fleet::Error::MissingTimestamp {
                        root_version: trusted.root().version,
                    })?;
                Some(trusted.verify_timestamp(
                    &env.to_vec(),
                    &view.release,
                    &self.config.channel,
                    now,
                )?)
            } else {
                None
            };
            (release, timestamp)
        };
        self.state.write_json("release.json", &release)?;
        if let Some(ts) = &timestamp {
            self.state.write_json("timestamp.json", ts)?;
        }
        let outcome = self.act(&release, view.state, view.reason.as_deref(), view.step);
        // Only a fully handled view is skipped next time (a deferred
        // install is not: the next poll must see the release again).
        if outcome.is_ok() && !matches!(outcome, Ok(PollOutcome::Deferred(_))) {
            *lock(&self.etag) = etag;
        }
        outcome
    }

    fn act(
        &self,
        release: &Release,
        state: RolloutState,
        reason: Option<&str>,
        step: Option<u32>,
    ) -> Result<PollOutcome, Error> {
        let disk = lock(&self.disk).clone();
        let on_release = disk
            .current
            .as_ref()
            .is_some_and(|c| c.sha256 == release.bundle.sha256);
        match state {
            RolloutState::Halted if on_release => {
                let Some(previous) = disk.previous.clone() else {
                    return Ok(PollOutcome::Waiting);
                };
                let slot = self.load(&previous)?;
                self.swap(Some(Arc::new(slot)));
                {
                    let mut d = lock(&self.disk);
                    d.current = Some(previous.clone());
                    d.previous = None;
                    self.state.write_json("state.json", &*d)?;
                }
                // A resume downloads it again; until then it is not a candidate.
                self.state.discard_bundle(&release.bundle.sha256);
                let e = Error::Halted(reason.unwrap_or("no reason given").to_string());
                self.set_error(UpdateState::RolledBack, Some(installed_of(release)), &e);
                return Ok(PollOutcome::RolledBack(previous));
            }
            RolloutState::Halted | RolloutState::Paused => return Ok(PollOutcome::Waiting),
            RolloutState::Active => {}
        }
        if on_release {
            return Ok(PollOutcome::UpToDate);
        }
        let tags = lock(&self.tags).clone();
        if !release.includes(&self.config.device_id, &tags, step) {
            return Ok(PollOutcome::NotInRollout);
        }
        if disk.failed.contains(&release.bundle.sha256) {
            // It failed here before (health check or interrupted): wait for a new release.
            return Ok(PollOutcome::Waiting);
        }
        let installed_version = disk
            .current
            .as_ref()
            .filter(|c| c.model == release.model)
            .and_then(|c| c.version.parse::<semver::Version>().ok());
        release.check_version(installed_version.as_ref())?;
        self.install(release)
    }

    /// Download the release's artifact for this device and check it is one
    /// the runtime would load for `bundle`. On a device that can compile, a
    /// failed download or a refused artifact is logged and the bundle is
    /// compiled instead (`None`); on one that cannot, it is the error.
    fn fetch_artifact(
        &self,
        release: &Release,
        artifact: &ArtifactRef,
        bundle: &edgeml_runtime::VerifiedBundle,
        limits: DownloadLimits,
    ) -> Result<Option<Vec<u8>>, Error> {
        tracing::info!(
            target = %artifact.target,
            bytes = artifact.size,
            "downloading the precompiled artifact"
        );
        let fetched = self
            .client
            .download_artifact(
                &self.identity,
                artifact,
                &self.state.part_path(&artifact.sha256),
                limits,
            )
            .map_err(Error::from)
            .and_then(|bytes| {
                let signers = lock(&self.trusted).root().artifact_policy()?;
                self.runtime
                    .check_precompiled(bundle, &bytes, &signers)
                    .map_err(|source| Error::Model {
                        version: release.model_version.to_string(),
                        source,
                    })?;
                Ok(bytes)
            });
        match fetched {
            Ok(bytes) => {
                let _ = std::fs::remove_file(self.state.part_path(&artifact.sha256));
                Ok(Some(bytes))
            }
            Err(e) if self.runtime.can_compile() => {
                tracing::warn!(
                    error_kind = e.kind(),
                    error = %e,
                    "precompiled artifact not used: compiling the bundle instead"
                );
                let _ = std::fs::remove_file(self.state.part_path(&artifact.sha256));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn install(&self, release: &Release) -> Result<PollOutcome, Error> {
        let target = installed_of(release);
        self.set_state(UpdateState::Downloading, Some(target.clone()));
        tracing::info!(
            model = %target.model,
            version = %target.version,
            bytes = release.bundle.size,
            "downloading"
        );
        self.send_report();
        let limits = DownloadLimits {
            max_bytes: self.config.download.max_bytes,
            timeout: self.config.download.timeout,
        };
        // The compiled code for this device, if the release has it. A device
        // without a compiler cannot do without: refuse before downloading
        // (not marked failed: a release that adds the artifact is taken).
        let (host_target, engine) = (
            self.runtime.host_target(),
            self.runtime.engine_fingerprint(),
        );
        let artifact_ref = release.artifact_for(&host_target, &engine);
        if artifact_ref.is_none() && !self.runtime.can_compile() {
            return Err(Error::NoArtifact {
                version: target.version.clone(),
                target: host_target,
                engine,
            });
        }
        // A bundle kept from a poll outside the maintenance window is not
        // downloaded again (it is verified again, below, like any other).
        let deferred_path = self.state.path("deferred.wasm");
        let kept = std::fs::read(&deferred_path)
            .ok()
            .filter(|b| release.bundle.check(b).is_ok());
        let bytes: Arc<[u8]> = match kept {
            Some(b) => {
                tracing::info!(version = %target.version, "installing the bundle kept for the maintenance window");
                b.into()
            }
            None => self
                .client
                .download_bundle(
                    &self.identity,
                    release,
                    &self.state.part_path(&target.sha256),
                    limits,
                )?
                .into(),
        };
        // Verify before anything else touches it: publisher signatures
        // (root's keys and threshold), digests, and the manifest naming
        // the release's model and version.
        let policy = lock(&self.trusted).root().publisher_policy()?;
        let verified = self
            .runtime
            .verify(bytes.clone(), &policy)
            .map_err(|source| Error::Model {
                version: target.version.clone(),
                source,
            })?;
        release.check_manifest(verified.manifest())?;
        if let Some(window) = self.config.install.window.filter(|w| !w.is_open()) {
            // Keep it (one at a time: a newer release replaces it) and
            // install in the window.
            self.state.write(&deferred_path, &bytes)?;
            let _ = std::fs::remove_file(self.state.part_path(&target.sha256));
            tracing::info!(
                version = %target.version,
                window = %window,
                "verified; outside the maintenance window: installing in it"
            );
            self.set_state(UpdateState::Deferred, Some(target.clone()));
            return Ok(PollOutcome::Deferred(target));
        }
        let _ = std::fs::remove_file(&deferred_path);
        let artifact = match artifact_ref {
            Some(a) => self.fetch_artifact(release, a, &verified, limits)?,
            None => None,
        };
        // Stage: the bundle (and its artifact) on disk, and a marker saying
        // an update is in flight.
        self.state
            .write(&self.state.bundle_path(&target.sha256), &bytes)?;
        let _ = std::fs::remove_file(self.state.part_path(&target.sha256));
        let artifact_path = self.state.artifact_path(&target.sha256);
        match &artifact {
            Some(a) => self.state.write(&artifact_path, a)?,
            None => {
                let _ = std::fs::remove_file(&artifact_path);
            }
        }
        self.state.write_json(
            "pending.json",
            &Pending {
                target: target.clone(),
            },
        )?;
        let fail = |e: Error| -> Error {
            tracing::warn!(
                version = %target.version,
                error_kind = e.kind(),
                error = %e,
                "health check failed: rolled back to the last known good bundle"
            );
            let mut d = lock(&self.disk);
            d.failed.insert(target.sha256.clone());
            let _ = self.state.write_json("state.json", &*d);
            // Only bundles that passed stay on disk (a rebuilt state trusts them).
            self.state.discard_bundle(&target.sha256);
            let _ = self.state.remove("pending.json");
            self.set_error(UpdateState::RolledBack, Some(target.clone()), &e);
            e
        };
        // Health check 1: it loads and passes its own self-test vectors.
        let slot = match self.load_bytes(bytes, artifact.as_deref(), target.clone()) {
            Ok(s) => s,
            Err(e) => return Err(fail(e)),
        };
        if let Err(source) = slot.model.self_test() {
            return Err(fail(Error::Model {
                version: target.version.clone(),
                source,
            }));
        }
        tracing::info!(version = %target.version, "self-test passed; watching the error rate");
        // Health check 2: serve it and watch its error rate.
        let slot = Arc::new(slot);
        let old = self.swap(Some(slot.clone()));
        self.set_state(UpdateState::Checking, Some(target.clone()));
        self.send_report();
        let watch = &self.config.health;
        let until = Instant::now() + watch.watch;
        loop {
            let (requests, errors) = (
                slot.requests.load(Ordering::Relaxed),
                slot.errors.load(Ordering::Relaxed),
            );
            let unhealthy = requests >= watch.min_requests.max(1)
                && errors as f64 > watch.max_error_rate * requests as f64;
            if unhealthy {
                self.swap(old);
                return Err(fail(Error::Unhealthy {
                    version: target.version.clone(),
                    requests,
                    errors,
                    limit: watch.max_error_rate,
                }));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if self.sleep(left.min(Duration::from_millis(100))) {
                // Shutting down mid-check: go back to the last known good; the
                // pending marker makes the next start treat it as interrupted.
                self.swap(old);
                return Err(Error::Interrupted {
                    version: target.version.clone(),
                });
            }
        }
        tracing::info!(
            version = %target.version,
            requests = slot.requests.load(Ordering::Relaxed),
            errors = slot.errors.load(Ordering::Relaxed),
            "health watch passed"
        );
        // Commit: the new bundle becomes the last known good, the old one is kept to roll back to.
        {
            let mut d = lock(&self.disk);
            d.previous = d.current.take().filter(|c| c.sha256 != target.sha256);
            d.current = Some(target.clone());
            self.state.write_json("state.json", &*d)?;
            self.state.remove("pending.json")?;
            let keep: Vec<&Installed> = d.current.iter().chain(d.previous.iter()).collect();
            self.state.gc(&keep);
        }
        self.set_state(UpdateState::Installed, Some(target.clone()));
        Ok(PollOutcome::Installed(target))
    }
}
