//! `edgeml-agent`: the device daemon. Follows a fleet channel, verifies,
//! installs, health-checks and rolls back model bundles, serves the local
//! inference API and ships telemetry. Everything is configured in
//! `agent.toml` (see [`edgeml_agent::AgentConfig`]); this binary parses two
//! commands and prints.

use clap::{Parser, Subcommand, ValueEnum};
use edgeml_agent::{AgentConfig, Export, Installed, StatusReport};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The edgeml device agent: follow a channel, update safely, serve local
/// inference (Open Inference Protocol / KServe v2 REST).
#[derive(Debug, Parser)]
#[command(name = "edgeml-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Agent configuration (TOML).
    #[arg(long, global = true, default_value = "/etc/edgeml/agent.toml")]
    config: PathBuf,
    /// Log format on stderr; levels by RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print the installed and last known good versions, the channel, the
    /// trusted root version, the spool and the last error, from the
    /// agent's state, without the server.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config, cli.log_format),
        Command::Status { json } => status(&cli.config, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Structured logs on stderr: levels by `RUST_LOG` (default `info`), text
/// or JSON; the same spans go to the OTLP export if it is on.
fn init_logs(format: LogFormat, export: &Export) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(export.tracing_layer())
        .with(fmt)
        .with(filter)
        .try_init();
}

fn run(config: &Path, log_format: LogFormat) -> Result<(), edgeml_agent::Error> {
    let mut config = AgentConfig::from_file(config)?;
    let export = Export::start(&config)?;
    init_logs(log_format, &export);
    let runtime = edgeml_agent::runtime(&mut config)?;
    let agent = edgeml_agent::Agent::start_with(config, runtime, export.clone())?;
    let status = agent.status();
    println!(
        "edgeml-agent {} serving {} on {}",
        agent.device_id(),
        version(&status.installed),
        agent
            .serve_addr()
            .map_or("a Unix socket".to_string(), |a| format!("http://{a}"))
    );
    if let Some(e) = status.last_error {
        println!("last error: {e}");
    }
    agent.wait();
    export.shutdown()
}

fn version(i: &Option<Installed>) -> String {
    i.as_ref().map_or("nothing yet".to_string(), |i| {
        format!("{} {}", i.model, i.version)
    })
}

fn status(config: &Path, json: bool) -> Result<(), edgeml_agent::Error> {
    let config = AgentConfig::from_file(config)?;
    let status: Option<StatusReport> = edgeml_agent::last_status(&config)?;
    let spool = config
        .runtime
        .telemetry
        .as_deref()
        .map(edgeml_runtime::TelemetryConfig::from_file)
        .transpose()
        .map_err(|e| edgeml_agent::Error::Config(format!("telemetry: {e}")))?
        .map(|t| edgeml_runtime::telemetry::spool_stats(&t));
    if json {
        let out = serde_json::json!({
            "device_id": config.device_id,
            "status": status,
            "spool": spool,
        });
        println!("{out:#}");
        return Ok(());
    }
    println!("device:      {}", config.device_id);
    match &status {
        None => println!("status:      no report yet (the agent has not polled)"),
        Some(s) => {
            println!("channel:     {}", s.channel);
            println!("state:       {}", s.state.name());
            println!("installed:   {}", version(&s.installed));
            println!("last good:   {}", version(&s.last_good));
            println!("root:        version {}", s.root_version);
            if let Some(t) = &s.target {
                println!("target:      {t}");
            }
            println!("last error:  {}", s.last_error.as_deref().unwrap_or("none"));
        }
    }
    if let Some(sp) = spool {
        println!(
            "spool:       {} records ({} bytes) waiting, {} dropped",
            sp.pending_records, sp.pending_bytes, sp.dropped_records
        );
    }
    Ok(())
}
