//! From `agent.toml` to a running [`Runtime`](edgeml_runtime::Runtime):
//! the backend, the memory budget, the compile cache and telemetry.

use crate::config::{AgentConfig, BackendChoice};
use crate::Error;
use edgeml_runtime::{Backend, Config, Runtime, Telemetry, TelemetryConfig};

/// Build the runtime `config` asks for. When `[runtime] telemetry` names a
/// telemetry configuration, telemetry starts too, and the agent and
/// telemetry share one device key (its `identity_dir` becomes the
/// telemetry directory unless set).
pub fn runtime(config: &mut AgentConfig) -> Result<Runtime, Error> {
    let rc = &config.runtime;
    let mut runtime = Config::new();
    runtime
        .timeout(rc.call_timeout)
        .max_memory_bytes(rc.max_memory_mib.saturating_mul(1 << 20))
        .idle_instances(rc.idle_instances.unwrap_or(config.serve.max_concurrent))
        .parallel_compilation(rc.parallel_compilation)
        .memory_reservation(rc.memory_reservation_mib.map(|m| m.saturating_mul(1 << 20)));
    runtime
        .backend(match rc.backend {
            BackendChoice::Tract => Backend::Tract,
            BackendChoice::Onnxruntime => Backend::OnnxRuntime,
            BackendChoice::Auto => Backend::Auto,
            BackendChoice::Sandboxed => Backend::Sandboxed {
                component: sandboxed_backend()?.into(),
            },
        })
        .onnxruntime_library(rc.onnxruntime_library.clone())
        .onnxruntime_threads(rc.onnxruntime_threads);
    if !rc.no_cache {
        runtime.cache_dir(
            rc.cache_dir
                .clone()
                .unwrap_or_else(|| config.dir.join("cache")),
        );
    }
    if let Some(path) = rc.telemetry.clone() {
        let tc = TelemetryConfig::from_file(&path)
            .map_err(|e| Error::Config(format!("telemetry {}: {e}", path.display())))?;
        if tc.device_id != config.device_id {
            return Err(Error::Config(format!(
                "the telemetry device_id `{}` differs from the agent's `{}`",
                tc.device_id, config.device_id
            )));
        }
        config.identity_dir.get_or_insert(tc.dir.clone());
        let telemetry =
            Telemetry::start(tc).map_err(|e| Error::Config(format!("starting telemetry: {e}")))?;
        runtime.telemetry(telemetry);
    }
    let runtime = Runtime::new(&runtime).map_err(|e| Error::Config(format!("runtime: {e}")))?;
    if let Some(note) = runtime.backend_note() {
        tracing::warn!(note, "inference backend");
    }
    match runtime.onnxruntime_library() {
        Some((path, version)) => tracing::info!(
            backend = runtime.backend(),
            onnxruntime = version,
            library = %path.display(),
            "inference backend"
        ),
        None => tracing::info!(backend = runtime.backend(), "inference backend"),
    }
    Ok(runtime)
}

#[cfg(feature = "sandbox")]
fn sandboxed_backend() -> Result<Vec<u8>, Error> {
    edgeml_guests::tract_backend()
        .map_err(|e| Error::Config(format!("the embedded sandboxed backend is damaged: {e}")))
}

#[cfg(not(feature = "sandbox"))]
fn sandboxed_backend() -> Result<Vec<u8>, Error> {
    Err(Error::Config(
        "runtime.backend = \"sandboxed\", but this agent was built without the sandboxed backend \
         (cargo feature `sandbox`); use backend = \"tract\" or an agent built with it"
            .into(),
    ))
}
