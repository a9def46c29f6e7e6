use std::path::PathBuf;
use std::time::Duration;

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

    /// Largest size of each guest linear memory, in bytes. Growing past it
    /// fails the call with [`crate::Error::ResourceLimit`]. Default 512 MiB.
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

    /// **Insecure.** Let guests pass `wasi:nn` `load` model bytes other than
    /// the bundle's signed model. Those bytes are not covered by any signature
    /// the host checked. Default `false`.
    pub fn insecure_allow_guest_model_bytes(&mut self, allow: bool) -> &mut Self {
        self.allow_guest_model_bytes = allow;
        self
    }
}
