//! `edgeml-server`: the collector and fleet server. Devices enrol, ship
//! telemetry and follow channels; operators publish and query with
//! `edgeml`. The work happens in the `edgeml_collector` library.

use clap::Parser;
use edgeml_collector::{Server, Settings};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The edgeml collector and fleet server (SQLite file or PostgreSQL
/// database, created and migrated as needed).
#[derive(Debug, Parser)]
#[command(name = "edgeml-server", version)]
struct Args {
    /// The database: a SQLite file, or a PostgreSQL URL
    /// (postgres://user[:password]@host[:port]/database) that several
    /// replicas can share.
    #[arg(long, default_value = "collector.db")]
    db: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// File with the admin token (operator API). Default: $EDGEML_ADMIN_TOKEN.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// File with the enrolment token devices present. Default: $EDGEML_ENROLMENT_TOKEN.
    #[arg(long)]
    enrolment_token_file: Option<PathBuf>,
    /// File with the token a Prometheus scraper presents for GET /metrics (off without it).
    #[arg(long)]
    metrics_token_file: Option<PathBuf>,
    /// Keep bundles in this OCI registry repository (http://host:5000/edgeml/bundles)
    /// instead of a directory; devices download them from the registry.
    #[arg(long, conflicts_with = "bundles")]
    registry: Option<String>,
    /// Registry user for basic authentication (the password comes from
    /// $EDGEML_REGISTRY_PASSWORD).
    #[arg(long, requires = "registry")]
    registry_user: Option<String>,
    /// Directory for pushed bundles (content-addressed); turns the fleet API on.
    #[arg(long)]
    bundles: Option<PathBuf>,
    /// How often the canary gate compares a rollout's new version with the old.
    #[arg(long, default_value = "10s")]
    canary_interval: humantime::Duration,
    /// Predictions the new version needs before the canary gate judges its error rate.
    #[arg(long, default_value_t = 100)]
    canary_min_predictions: u64,
    /// Distinct devices whose evidence (rollbacks, error rate) a halt needs.
    #[arg(long, default_value_t = 2)]
    canary_min_devices: usize,
    /// Or this share (0 to 1] of the devices served the new bundle (lets a one-device canary halt).
    #[arg(long)]
    canary_min_share: Option<f64>,
    /// Halt when the new version's accuracy (measured from labels, else
    /// estimated from scores) is below the old's by more than this.
    #[arg(long, default_value_t = 0.05)]
    canary_accuracy_margin: f64,
    /// Labelled predictions each version needs before measured accuracy counts.
    #[arg(long, default_value_t = 50)]
    canary_min_labels: u64,
    /// The online timestamp key pair (.key) named in root's timestamp role.
    #[arg(long)]
    timestamp_key: Option<PathBuf>,
    /// Names this replica in the rollout decisions it takes (default: host name and process id).
    #[arg(long)]
    replica_id: Option<String>,
    /// How long each timestamp is valid.
    #[arg(long, default_value = "1d")]
    timestamp_ttl: humantime::Duration,
    /// Also push metrics and traces to this OpenTelemetry collector
    /// (OTLP/HTTP base URL, http://host:4318); off by default.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// How often metrics are pushed over OTLP.
    #[arg(long, default_value = "60s", requires = "otlp_endpoint")]
    otlp_interval: humantime::Duration,
    /// File with the viewer token: it logs in to the web console (/ui) read-only.
    #[arg(long)]
    viewer_token_file: Option<PathBuf>,
    /// File with the key (64 bytes or more) that encrypts console session
    /// cookies; replicas behind one address need the same (default: a
    /// random key, so sessions end with the process).
    #[arg(long)]
    console_key_file: Option<PathBuf>,
    /// How long a console login lasts.
    #[arg(long, default_value = "8h")]
    console_session: humantime::Duration,
    /// INSECURE: send the console's session cookie over plain HTTP (no
    /// `Secure` flag). Only for a console on loopback; put TLS in front otherwise.
    #[arg(long)]
    console_insecure_http: bool,
    /// Print the API description (OpenAPI 3.1 JSON, as served at /openapi.json) and exit.
    #[arg(long)]
    print_openapi: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_openapi {
        return match edgeml_collector::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: the API description failed to serialise: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A token from its file, or else from the environment.
fn token(file: Option<&Path>, env: &str, flag: &str) -> Result<String, String> {
    match file {
        Some(f) => std::fs::read_to_string(f)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("reading {}: {e}", f.display())),
        None => std::env::var(env)
            .map(|t| t.trim().to_string())
            .map_err(|_| format!("no {flag}: give --{flag}-file or set {env}")),
    }
}

fn serve(a: Args) -> Result<(), String> {
    let mut settings = Settings::new(
        token(
            a.admin_token_file.as_deref(),
            "EDGEML_ADMIN_TOKEN",
            "admin-token",
        )?,
        token(
            a.enrolment_token_file.as_deref(),
            "EDGEML_ENROLMENT_TOKEN",
            "enrolment-token",
        )?,
    );
    settings.fleet.bundle_dir = a.bundles;
    settings.fleet.registry = a.registry;
    if let Some(user) = a.registry_user {
        let password = std::env::var("EDGEML_REGISTRY_PASSWORD").map_err(|_| {
            "--registry-user needs the password in $EDGEML_REGISTRY_PASSWORD".to_string()
        })?;
        settings.fleet.registry_credentials =
            Some(edgeml_collector::RegistryCredentials { user, password });
    }
    if let Some(f) = &a.metrics_token_file {
        settings.metrics_token = Some(token(Some(f), "", "metrics-token")?);
    }
    if let Some(f) = &a.viewer_token_file {
        settings.console.viewer_token = Some(token(Some(f), "", "viewer-token")?);
    }
    if let Some(f) = &a.console_key_file {
        settings.console.session_key = Some(
            std::fs::read(f)
                .map_err(|e| format!("reading the console key {}: {e}", f.display()))?,
        );
    }
    settings.console.session_ttl = a.console_session.into();
    settings.console.insecure_http = a.console_insecure_http;
    settings.fleet.canary.interval = a.canary_interval.into();
    settings.fleet.canary.min_predictions = a.canary_min_predictions;
    settings.fleet.canary.min_devices = a.canary_min_devices;
    settings.fleet.canary.min_share = a.canary_min_share;
    settings.fleet.canary.accuracy_margin = a.canary_accuracy_margin;
    settings.fleet.canary.min_labels = a.canary_min_labels;
    settings.fleet.timestamp_ttl = a.timestamp_ttl.into();
    if let Some(id) = a.replica_id {
        settings.replica = id;
    }
    if let Some(path) = &a.timestamp_key {
        let key = edgeml_bundle::SecretKey::from_file(path)
            .map_err(|e| format!("reading the timestamp key {}: {e}", path.display()))?;
        settings.fleet.timestamp_key = Some(std::sync::Arc::new(key));
    }
    if let Some(endpoint) = &a.otlp_endpoint {
        let mut config = edgeml_otlp::OtlpConfig::new(endpoint, "edgeml-server");
        config.instance = Some(settings.replica.clone());
        config.interval = a.otlp_interval.into();
        let otlp = edgeml_otlp::Otlp::start(&config).map_err(|e| e.to_string())?;
        // Spans of this program (requests, database calls, the canary
        // gate) become OTLP traces.
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry()
            .with(otlp.tracing_layer())
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_target("edgeml_collector", tracing::Level::INFO),
            );
        tracing::subscriber::set_global_default(subscriber)
            .map_err(|e| format!("cannot install the trace exporter: {e}"))?;
        settings.otlp = Some(otlp);
    }
    let otlp = settings.otlp.clone();
    let store = edgeml_collector::store::open(&a.db)
        .map_err(|e| format!("opening {}: {e}", redact(&a.db)))?;
    let server = Server::start_with(store, settings, a.listen).map_err(|e| e.to_string())?;
    println!(
        "edgeml-server listening on {} (database {})",
        server.url(),
        redact(&a.db)
    );
    stopped().map_err(|e| format!("waiting for a stop signal: {e}"))?;
    // Finish the requests in flight, then push what OTLP still holds.
    server.stop();
    if let Some(otlp) = otlp {
        if let Err(e) = otlp.shutdown() {
            eprintln!("warning: {e}");
        }
    }
    Ok(())
}

/// Block until SIGINT or SIGTERM.
fn stopped() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
}

/// A database URL without its password, for messages.
fn redact(db: &str) -> String {
    match (db.find("://"), db.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &db[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &db[..scheme + 3], &db[at..]),
                None => db.to_string(),
            }
        }
        _ => db.to_string(),
    }
}
