use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where inference runs.
#[derive(Clone, Default)]
pub enum Backend {
    /// tract, native code in the host process. Needs nothing on the device.
    #[default]
    Tract,
    /// Microsoft's onnxruntime, native code in the host process, loaded at
    /// run time from `libonnxruntime.so` ([`Config::onnxruntime_library`],
    /// else `ORT_DYLIB_PATH`, else the linker's search path; 1.17 or newer).
    /// Usually the fastest on larger models. Without the library (or in a
    /// build without the `onnxruntime` feature) the runtime refuses to start
    /// with [`crate::Error::BackendUnavailable`].
    OnnxRuntime,
    /// tract compiled to WebAssembly, running as its own component with its
    /// own memory limit: no native ML code runs on the model's behalf, and a
    /// malformed or hostile model cannot reach the host process. Takes the
    /// backend component (`edgeml_tract_backend.wasm`, built from
    /// `guest/tract-backend`; the `edgeml` binary embeds it).
    Sandboxed {
        /// The backend component's bytes.
        component: Arc<[u8]>,
    },
    /// onnxruntime when its library loads, else tract; decided once when the
    /// runtime starts ([`crate::Runtime::backend_note`] says why). A model
    /// onnxruntime refuses is refused, not retried on tract.
    Auto,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sandboxed { component } => write!(f, "Sandboxed({} bytes)", component.len()),
            other => f.write_str(other.name()),
        }
    }
}

impl Backend {
    /// `tract`, `onnxruntime`, `sandboxed` or `auto`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::OnnxRuntime => "onnxruntime",
            Backend::Sandboxed { .. } => "sandboxed",
            Backend::Auto => "auto",
        }
    }
}

/// How a [`crate::Runtime`] runs model components. Build it, then pass it to
/// [`crate::Runtime::new`]. Every setter documents its default.
///
/// ```
/// use std::time::Duration;
/// let mut config = edgeml_runtime::Config::new();
/// config.max_memory_bytes(64 << 20).timeout(Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) max_memory_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) max_instances: usize,
    pub(crate) max_tables: usize,
    pub(crate) max_table_elements: usize,
    pub(crate) idle_instances: usize,
    pub(crate) bundle_limits: edgeml_bundle::Limits,
    pub(crate) allow_guest_model_bytes: bool,
    pub(crate) parallel_compilation: bool,
    pub(crate) perf_map: bool,
    pub(crate) memory_reservation: Option<u64>,
    pub(crate) backend: Backend,
    pub(crate) onnxruntime_library: Option<PathBuf>,
    pub(crate) onnxruntime_threads: usize,
    pub(crate) sandbox_max_memory_bytes: usize,
    pub(crate) telemetry: Option<edgeml_telemetry::Telemetry>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cache_dir: None,
            max_memory_bytes: 512 << 20,
            timeout: Duration::from_secs(10),
            max_instances: 64,
            max_tables: 64,
            max_table_elements: 1 << 20,
            idle_instances: 4,
            bundle_limits: edgeml_bundle::Limits::default(),
            allow_guest_model_bytes: false,
            parallel_compilation: true,
            perf_map: false,
            memory_reservation: None,
            backend: Backend::Tract,
            onnxruntime_library: None,
            onnxruntime_threads: 1,
            sandbox_max_memory_bytes: 2 << 30,
            telemetry: None,
        }
    }
}

impl Config {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep compiled components in `dir`, keyed by bundle digest and engine
    /// version, so the next load of the same bundle skips compilation. The
    /// directory must be writable only by the user running the host.
    /// Default: no cache (every load compiles).
    pub fn cache_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Record every prediction of every model this runtime loads into
    /// `telemetry` (latency, outcome, monitoring features, scores, and
    /// samples if enabled): see [`edgeml_telemetry`]. Default: off; with
    /// [`TelemetryConfig::enabled`](edgeml_telemetry::TelemetryConfig::enabled)
    /// false, nothing is recorded either.
    pub fn telemetry(&mut self, telemetry: edgeml_telemetry::Telemetry) -> &mut Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Memory budget of one guest instance, in bytes: all its linear
    /// memories together, plus everything the host allocates for it through
    /// `wasi:nn` (tensors, outputs, and the sandboxed backend's memory for
    /// its execution contexts). Going past it fails the call with
    /// [`crate::Error::ResourceLimit`] (`what: "memory"`); the instance is
    /// discarded and the next call gets a fresh one. Default 512 MiB.
    pub fn max_memory_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// Wall-clock limit for one call into the guest, enforced by epoch
    /// interruption (10 ms resolution; time spent inside the host's inference
    /// backend counts but is only interrupted when control returns to the
    /// guest). Default 10 s.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Most core instances one component instance may create. Default 64.
    pub fn max_instances(&mut self, n: usize) -> &mut Self {
        self.max_instances = n;
        self
    }

    /// Most tables one component instance may create. Default 64.
    pub fn max_tables(&mut self, n: usize) -> &mut Self {
        self.max_tables = n;
        self
    }

    /// Largest number of elements in one table. Default 1 048 576.
    pub fn max_table_elements(&mut self, n: usize) -> &mut Self {
        self.max_table_elements = n;
        self
    }

    /// Warm instances kept per model for reuse between calls. Default 4.
    pub fn idle_instances(&mut self, n: usize) -> &mut Self {
        self.idle_instances = n;
        self
    }

    /// Size limits applied when verifying bundles. Default: 512 MiB bundles, 1 MiB manifests.
    pub fn bundle_limits(&mut self, limits: edgeml_bundle::Limits) -> &mut Self {
        self.bundle_limits = limits;
        self
    }

    /// Where inference runs. Default [`Backend::Tract`].
    pub fn backend(&mut self, backend: Backend) -> &mut Self {
        self.backend = backend;
        self
    }

    /// The `libonnxruntime.so` the onnxruntime backend loads. Default `None`:
    /// `ORT_DYLIB_PATH` if set, else the dynamic linker's search path. The
    /// library is loaded once per process: the first runtime to use it
    /// decides which, and a later one naming another file is refused.
    pub fn onnxruntime_library(&mut self, path: Option<PathBuf>) -> &mut Self {
        self.onnxruntime_library = path;
        self
    }

    /// Threads onnxruntime may use for one inference. Default 1: each
    /// inference runs on its caller's thread, so concurrent requests do not
    /// oversubscribe a small device's cores. Process-wide, like the library.
    pub fn onnxruntime_threads(&mut self, threads: usize) -> &mut Self {
        self.onnxruntime_threads = threads.max(1);
        self
    }

    /// Largest linear memory of the sandboxed backend (model weights and
    /// activations live there). Default 2 GiB.
    pub fn sandbox_max_memory_bytes(&mut self, bytes: usize) -> &mut Self {
        self.sandbox_max_memory_bytes = bytes;
        self
    }

    /// Compile components on several threads (Cranelift's per-function
    /// parallelism). Faster installs on multi-core machines; off, a small
    /// device's peak memory during compilation is lower. Default `true`.
    /// Without the `cranelift` feature there is nothing to compile.
    pub fn parallel_compilation(&mut self, on: bool) -> &mut Self {
        self.parallel_compilation = on;
        self
    }

    /// Write `/tmp/perf-<pid>.map` naming the compiled guest functions
    /// (wasmtime's perf map), so that `perf report` attributes samples in
    /// guest code to the guest's functions instead of bare addresses. For
    /// profiling; the file grows with every module compiled or loaded.
    /// Default `false`.
    pub fn perf_map(&mut self, on: bool) -> &mut Self {
        self.perf_map = on;
        self
    }

    /// Virtual address space reserved for each guest linear memory
    /// (wasmtime's `memory_reservation`), and its guard region. Wasmtime's
    /// default on 64-bit hosts reserves 4 GiB plus a 32 MiB guard so that
    /// bounds checks can be elided; that costs no RAM, but counts against
    /// `ulimit -v` and overcommit limits on small devices. `Some(bytes)`
    /// reserves that much (memories may still grow by moving) with a 64 KiB
    /// guard and explicit bounds checks. Default `None` (wasmtime's).
    pub fn memory_reservation(&mut self, bytes: Option<u64>) -> &mut Self {
        self.memory_reservation = bytes;
        self
    }

    /// **Insecure.** Let guests pass `wasi:nn` `load` model bytes other than
    /// the bundle's signed model. Those bytes are not covered by any signature
    /// the host checked. Default `false`.
    pub fn insecure_allow_guest_model_bytes(&mut self, allow: bool) -> &mut Self {
        self.allow_guest_model_bytes = allow;
        self
    }
}
