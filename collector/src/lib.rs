//! The edgeml collector and fleet server: devices enrol and ship signed
//! telemetry batches; operators read fleet statistics, drift over time and
//! export samples; publishers push signed bundles and release metadata to
//! channels, and a metric-gated canary halts bad rollouts.
//!
//! ```no_run
//! use edgeml_collector::{Server, Settings, SqliteStore};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::open("collector.db".as_ref())?;
//! let settings = Settings::new("admin-secret", "enrolment-secret");
//! let server = Server::start(store, settings, "127.0.0.1:7070".parse()?)?;
//! println!("listening on {}", server.addr());
//! server.wait();
//! # Ok(()) }
//! ```
//!
//! Storage is split by concern ([`store`]: telemetry and fleet, one
//! database; [`blobs`]: bundle bytes), with SQLite and a local directory as
//! the embedded defaults and PostgreSQL for several replicas
//! ([`store::open`] takes a file path or a `postgres://` URL). The API
//! description is generated from the handlers ([`openapi`]) and served at
//! `/openapi.json`.

#![deny(missing_docs)]

pub mod analysis;
mod api;
mod audit;
pub mod blobs;
mod console;
pub mod export;
mod fleet;
mod labels;
mod metrics;
mod openapi;
pub mod store;

pub use blobs::{BlobStore, DirBlobs, RegistryBlobs};
pub use edgeml_telemetry::drift::DriftThresholds;
pub use fleet::{CanaryPolicy, FleetSettings, RegistryCredentials};
pub use store::{
    AuditStore, FleetStore, PgStore, Publish, SqliteStore, Store, StoreError, TelemetryStore,
};

use std::net::SocketAddr;
use std::sync::Arc;

/// The OpenAPI 3.1 description of every route, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::document()
}

/// Collector settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bearer token for the read API (devices, models, stats, drift, samples).
    pub admin_token: String,
    /// Bearer token devices present once, to enrol their key.
    pub enrolment_token: String,
    /// Largest request body as sent (default 8 MiB).
    pub max_body_bytes: usize,
    /// Largest batch after decompression (default 64 MiB).
    pub max_batch_bytes: usize,
    /// Most records in one batch (default 10 000).
    pub max_records: usize,
    /// Drift bands for the drift endpoint.
    pub drift: DriftThresholds,
    /// The fleet server (bundles, releases, rollouts).
    pub fleet: FleetSettings,
    /// Bearer token of the Prometheus scraper for `GET /metrics` (default:
    /// none, and `/metrics` is off).
    pub metrics_token: Option<String>,
    /// Names this server in the rollout decisions it takes, so that
    /// replicas on one database can be told apart (default: host name and
    /// process id).
    pub replica: String,
    /// Also push the metrics over OTLP (default: no). Traces go wherever
    /// the program's `tracing` subscriber sends them (the `edgeml-server`
    /// program adds [`Otlp::tracing_layer`](edgeml_otlp::Otlp::tracing_layer)).
    pub otlp: Option<edgeml_otlp::Otlp>,
    /// The web console under `/ui`.
    pub console: ConsoleSettings,
}

/// The web console (`/ui`): who may log in, and how sessions are kept.
///
/// Operators log in with the admin token (every view and action) or the
/// viewer token (every view, no action). The session is an encrypted,
/// authenticated cookie (`HttpOnly`, `SameSite=Strict`, `Secure` unless
/// [`ConsoleSettings::insecure_http`]); every action also carries a
/// per-session CSRF token and must come from the console's own origin.
#[derive(Clone)]
pub struct ConsoleSettings {
    /// Bearer token of read-only operators (default: none, only the admin
    /// token logs in). At least 8 characters, unlike the other tokens.
    pub viewer_token: Option<String>,
    /// Key that encrypts session cookies, 64 bytes or more (default: a
    /// random key per process, so sessions end when the server restarts;
    /// replicas behind one address need the same key).
    pub session_key: Option<Vec<u8>>,
    /// How long a login lasts (default 8 hours).
    pub session_ttl: std::time::Duration,
    /// INSECURE: leave `Secure` off the session cookie, so that browsers
    /// send it over plain HTTP. Only for a console on loopback or behind
    /// a trusted network (the tests use it); default off.
    pub insecure_http: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            viewer_token: None,
            session_key: None,
            session_ttl: std::time::Duration::from_secs(8 * 3600),
            insecure_http: false,
        }
    }
}

impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("viewer_token", &self.viewer_token.as_ref().map(|_| "..."))
            .field("session_key", &self.session_key.as_ref().map(|_| "..."))
            .field("session_ttl", &self.session_ttl)
            .field("insecure_http", &self.insecure_http)
            .finish()
    }
}

impl Settings {
    /// Defaults with the two tokens.
    pub fn new(admin_token: impl Into<String>, enrolment_token: impl Into<String>) -> Self {
        Settings {
            admin_token: admin_token.into(),
            enrolment_token: enrolment_token.into(),
            max_body_bytes: 8 << 20,
            max_batch_bytes: 64 << 20,
            max_records: 10_000,
            drift: DriftThresholds::default(),
            fleet: FleetSettings::default(),
            metrics_token: None,
            replica: default_replica(),
            otlp: None,
            console: ConsoleSettings::default(),
        }
    }
}

/// `host:pid`.
fn default_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "server".into());
    format!("{host}:{}", std::process::id())
}

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings are unusable.
    #[error("invalid collector settings: {0}")]
    Settings(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running collector (its own tokio runtime on a background thread).
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Bind `addr` (port 0 picks one) and serve in the background.
    pub fn start(store: impl Store, settings: Settings, addr: SocketAddr) -> Result<Server, Error> {
        Server::start_with(Arc::new(store), settings, addr)
    }

    /// [`Server::start`] with a store chosen at run time ([`store::open`]).
    pub fn start_with(
        store: Arc<dyn Store>,
        settings: Settings,
        addr: SocketAddr,
    ) -> Result<Server, Error> {
        if settings.admin_token.len() < 8 || settings.enrolment_token.len() < 8 {
            return Err(Error::Settings(
                "the admin and enrolment tokens must be at least 8 characters".into(),
            ));
        }
        if settings.admin_token == settings.enrolment_token {
            return Err(Error::Settings(
                "the admin and enrolment tokens must differ (devices hold the enrolment token)"
                    .into(),
            ));
        }
        if let Some(m) = &settings.metrics_token {
            if m.len() < 8 || *m == settings.admin_token || *m == settings.enrolment_token {
                return Err(Error::Settings(
                    "the metrics token must be at least 8 characters and differ from the admin and enrolment tokens (the scraper holds it)".into(),
                ));
            }
        }
        if let Some(v) = &settings.console.viewer_token {
            let others = [&settings.admin_token, &settings.enrolment_token];
            if v.len() < 8 || others.contains(&v) || settings.metrics_token.as_ref() == Some(v) {
                return Err(Error::Settings(
                    "the viewer token must be at least 8 characters and differ from the admin, enrolment and metrics tokens".into(),
                ));
            }
        }
        let console_key = console::session_key(settings.console.session_key.as_deref())
            .map_err(Error::Settings)?;
        settings.fleet.canary.validate().map_err(Error::Settings)?;
        if settings.fleet.timestamp_ttl < std::time::Duration::from_secs(1) {
            return Err(Error::Settings(
                "the timestamp lifetime must be at least 1 s (default 1 day)".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("edgeml-collector")
            .build()
            .map_err(|source| Error::Bind { addr, source })?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let blobs: Option<Arc<dyn BlobStore>> =
            match (&settings.fleet.registry, &settings.fleet.bundle_dir) {
                (Some(url), _) => {
                    let mut registry = edgeml_client::oci::Registry::new(url)
                        .map_err(|e| Error::Settings(e.to_string()))?;
                    if let Some(c) = &settings.fleet.registry_credentials {
                        registry = registry.with_basic_auth(&c.user, &c.password);
                    }
                    Some(Arc::new(RegistryBlobs::new(
                        registry,
                        settings.fleet.max_bundle_bytes,
                    )))
                }
                (None, Some(dir)) => Some(Arc::new(DirBlobs::new(dir))),
                (None, None) => None,
            };
        let metrics = Arc::new(metrics::Metrics::new(settings.otlp.as_ref(), store.clone()));
        let state = api::AppState {
            store,
            blobs,
            settings: Arc::new(settings),
            timestamps: Arc::default(),
            metrics,
            console_key,
        };
        let fleet_on = state.blobs.is_some();
        let gate = state.clone();
        let app = api::router(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("edgeml-collector".into())
            .spawn(move || {
                rt.block_on(async move {
                    if fleet_on {
                        tokio::spawn(fleet::canary_loop(gate));
                    }
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL (`http://addr`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Block until the server stops.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stop accepting requests, finish those in flight, and return.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}
