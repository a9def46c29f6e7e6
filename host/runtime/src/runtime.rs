use crate::backend::{Graph, Tract};
use crate::bindings::{self, edgeml::model::types as wit};
use crate::cache::{self, CacheOutcome};
use crate::nn::NnHost;
use crate::sandbox::SandboxEngine;
use crate::state::{LimitHit, Limiter, State, STDERR_CAPACITY};
use crate::tensor::{Input, ModelMetadata, Prediction, ScoredLabel, Tensor};
use crate::{Backend, Config, Error};

/// Most linear memories one guest instance may create. Our components have
/// one or two (the module's and, in some, an adapter's); a component
/// declaring more is refused at instantiation.
const MAX_MEMORIES: usize = 4;
use edgeml_bundle::{Manifest, TrustPolicy, VerifiedBundle};
use edgeml_telemetry::wire::{ModelRef, SampleInput, TensorData};
use edgeml_telemetry::{ModelDescriptor, ModelTelemetry, Observed};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, Trap};

/// The version of this host, compared with a bundle's `min_host_version`.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");

const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A host runtime: one engine, one epoch ticker, one linker, shared by every
/// model it loads. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    /// The engine's settings, for the compile-only engines (see
    /// [`Runtime::compile_cached`]).
    #[cfg(feature = "cranelift")]
    wasmtime_config: wasmtime::Config,
    linker: Linker<State>,
    config: Config,
    stop: Arc<AtomicBool>,
    sandbox: OnceLock<Arc<SandboxEngine>>,
    /// The configured backend, with `auto` decided.
    backend: Backend,
    /// Why `auto` chose tract, if it did.
    backend_note: Option<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// The device's telemetry, when the config turned it on (for labels
    /// given later: [`edgeml_telemetry::Telemetry::outcome`]).
    pub fn telemetry(&self) -> Option<&edgeml_telemetry::Telemetry> {
        self.inner.config.telemetry.as_ref()
    }

    /// Build the engine (Cranelift, epoch interruption) and the linker
    /// (WASI with nothing granted, `wasi:nn`, the edgeml host interface).
    pub fn new(config: &Config) -> Result<Self, Error> {
        let mut wt = wasmtime::Config::new();
        wt.epoch_interruption(true);
        wt.wasm_component_model(true);
        #[cfg(feature = "cranelift")]
        wt.parallel_compilation(config.parallel_compilation);
        if config.perf_map {
            wt.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(bytes) = config.memory_reservation {
            wt.memory_reservation(bytes)
                .memory_guard_size(64 << 10)
                .memory_reservation_for_growth(0);
        }
        let (backend, backend_note) = resolve_backend(config)?;
        let engine = Engine::new(&wt).map_err(|e| Error::Config(format!("{e:#}")))?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::Config(format!("{e:#}")))?;
        bindings::Model::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| Error::Config(format!("{e:#}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, ticker_stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("edgeml-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the epoch thread: {e}")))?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                #[cfg(feature = "cranelift")]
                wasmtime_config: wt,
                linker,
                config: config.clone(),
                stop,
                sandbox: OnceLock::new(),
                backend,
                backend_note,
            }),
        })
    }

    /// Read a bundle file for [`Runtime::verify`] in one allocation, refusing
    /// one over this runtime's bundle size limit before reading it. Same as
    /// [`edgeml_bundle::read_file`].
    pub fn read_bundle(&self, path: impl AsRef<std::path::Path>) -> Result<Arc<[u8]>, Error> {
        Ok(edgeml_bundle::read_file(
            path,
            &self.inner.config.bundle_limits,
        )?)
    }

    /// Verify a bundle with this runtime's size limits. Same as
    /// [`edgeml_bundle::verify_with_limits`].
    pub fn verify(
        &self,
        bytes: impl Into<Arc<[u8]>>,
        policy: &TrustPolicy,
    ) -> Result<VerifiedBundle, Error> {
        Ok(edgeml_bundle::verify_with_limits(
            bytes,
            policy,
            &self.inner.config.bundle_limits,
        )?)
    }

    /// Load a verified bundle: check the host version, compile the component
    /// (or load it from the cache), plan the model, instantiate once and check
    /// the component against the manifest.
    pub fn load(&self, bundle: &VerifiedBundle) -> Result<Model, Error> {
        self.load_on(bundle, &self.inner.backend)
    }

    /// [`Runtime::load`] on another backend than the runtime's, for this
    /// bundle only (a model known to need onnxruntime, or to be kept in the
    /// sandbox). `Backend::Auto` is decided again here.
    pub fn load_on(&self, bundle: &VerifiedBundle, backend: &Backend) -> Result<Model, Error> {
        let started = Instant::now();
        let backend = match backend {
            Backend::Auto => resolve_backend_with(backend, &self.inner.config)?.0,
            other => other.clone(),
        };
        self.check_host_version(bundle)?;
        let (component, cache) = self.compile(bundle)?;
        self.load_component(bundle, &backend, component, cache, started)
    }

    /// The backend models load on by default: `tract`, `onnxruntime` or
    /// `sandboxed` (`auto` is decided when the runtime starts).
    pub fn backend(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// Why `Backend::Auto` chose tract (the onnxruntime library did not
    /// load), or `None`.
    pub fn backend_note(&self) -> Option<&str> {
        self.inner.backend_note.as_deref()
    }

    /// The onnxruntime library loaded in this process (path and version),
    /// if any runtime has loaded it; it is process-wide, so this says nothing
    /// about which backend this runtime uses ([`Runtime::backend`] does).
    pub fn onnxruntime_library(&self) -> Option<(std::path::PathBuf, String)> {
        #[cfg(feature = "onnxruntime")]
        if let Some(lib) = edgeml_ort::loaded() {
            return Some((lib.path().to_path_buf(), lib.version().to_string()));
        }
        None
    }

    /// The engine configuration precompiled artifacts must have been made
    /// with: this crate's version (which pins wasmtime's) and the settings
    /// that change generated code. wasmtime checks its own compatibility
    /// again when the code is loaded.
    pub fn engine_fingerprint(&self) -> String {
        let c = &self.inner.config;
        format!(
            "edgeml-runtime {}; epoch-interruption; component-model; memory-reservation {}",
            env!("CARGO_PKG_VERSION"),
            c.memory_reservation
                .map_or_else(|| "default".to_string(), |b| format!("{b}")),
        )
    }

    /// The target this host runs code for: its architecture (`x86_64`,
    /// `aarch64`) or, when wasmtime interprets, `pulley32` / `pulley64`.
    pub fn host_target(&self) -> String {
        if self.inner.engine.is_pulley() {
            format!("pulley{}", usize::BITS)
        } else {
            std::env::consts::ARCH.to_string()
        }
    }

    /// Compile `bundle`'s component ahead of time for `target` (a target
    /// triple such as `aarch64-unknown-linux-gnu`, or `pulley32`) and seal
    /// it in an artifact bound to the bundle, this runtime's engine
    /// configuration and the target, signed by `key`. The device loads it
    /// with [`Runtime::load_precompiled`]. Cross-compiling needs the
    /// target's code generator in this build (feature `all-arch`; Pulley
    /// targets need `pulley`).
    #[cfg(feature = "cranelift")]
    pub fn precompile(
        &self,
        bundle: &VerifiedBundle,
        target: &str,
        key: &edgeml_bundle::SecretKey,
    ) -> Result<Vec<u8>, Error> {
        let mut config = self.inner.wasmtime_config.clone();
        config
            .target(target)
            .map_err(|e| Error::Config(format!("target `{target}`: {e:#}")))?;
        let engine =
            Engine::new(&config).map_err(|e| Error::Config(format!("target `{target}`: {e:#}")))?;
        let code = engine
            .precompile_component(bundle.bytes())
            .map_err(|e| Error::Compile {
                reason: format!("{e:#}"),
            })?;
        let claims = edgeml_bundle::artifact::ArtifactClaims {
            format: 0,
            bundle_sha256: bundle.digest_hex(),
            target: target.to_string(),
            engine: self.engine_fingerprint(),
            code_sha256: String::new(),
        };
        Ok(edgeml_bundle::artifact::seal(claims, &code, Some(key))?)
    }

    /// Load a verified bundle with its precompiled component: the artifact
    /// must be signed by a key in `signers`, made from this bundle, for this
    /// host's target and engine configuration; nothing is compiled. What a
    /// device built without a compiler runs.
    pub fn load_precompiled(
        &self,
        bundle: &VerifiedBundle,
        artifact: &[u8],
        signers: &TrustPolicy,
    ) -> Result<Model, Error> {
        let started = Instant::now();
        self.check_host_version(bundle)?;
        let component = self.deserialize_artifact(bundle, artifact, signers)?;
        // The code is not put in the compiled-code cache: a later `load`
        // compiles (or finds what this host compiled itself), so an
        // artifact whose signer is later revoked stops running with it.
        let backend = self.inner.backend.clone();
        self.load_component(
            bundle,
            &backend,
            component,
            CacheOutcome::Precompiled,
            started,
        )
    }

    fn deserialize_artifact(
        &self,
        bundle: &VerifiedBundle,
        artifact: &[u8],
        signers: &TrustPolicy,
    ) -> Result<Component, Error> {
        let code = self.open_artifact(bundle, artifact, signers)?;
        // SAFETY: the code was signed by a key the caller trusts for
        // artifacts, for this bundle, this target and this engine
        // configuration, and its digest was just checked; wasmtime also
        // refuses code from another wasmtime version or settings.
        let component = unsafe { Component::deserialize(&self.inner.engine, code) }
            .map_err(|e| edgeml_bundle::artifact::ArtifactError::Incompatible(format!("{e:#}")))?;
        Ok(component)
    }

    /// Check, without loading the model, that `artifact` is one
    /// [`Runtime::load_precompiled`] would take for `bundle`: signed by a
    /// key in `signers`, with intact code, made from this bundle for this
    /// host's target and engine fingerprint, and accepted by wasmtime.
    pub fn check_precompiled(
        &self,
        bundle: &VerifiedBundle,
        artifact: &[u8],
        signers: &TrustPolicy,
    ) -> Result<(), Error> {
        self.deserialize_artifact(bundle, artifact, signers)
            .map(|_| ())
    }

    fn open_artifact<'a>(
        &self,
        bundle: &VerifiedBundle,
        artifact: &'a [u8],
        signers: &TrustPolicy,
    ) -> Result<&'a [u8], Error> {
        let (target, engine) = (self.host_target(), self.engine_fingerprint());
        Ok(edgeml_bundle::artifact::open(
            artifact,
            signers,
            &edgeml_bundle::artifact::Expected {
                bundle_sha256: &bundle.digest_hex(),
                target: &target,
                engine: &engine,
            },
        )?)
    }

    /// Whether this build can compile components (cargo feature
    /// `cranelift`). Without it, only precompiled artifacts
    /// ([`Runtime::load_precompiled`]) and code already in the cache run.
    pub fn can_compile(&self) -> bool {
        cfg!(feature = "cranelift")
    }

    fn check_host_version(&self, bundle: &VerifiedBundle) -> Result<(), Error> {
        let manifest = bundle.manifest();
        let host =
            semver::Version::parse(HOST_VERSION).map_err(|e| Error::Config(e.to_string()))?;
        if manifest.min_host_version > host {
            return Err(edgeml_bundle::Error::HostTooOld {
                required: manifest.min_host_version.to_string(),
                host: HOST_VERSION.into(),
            }
            .into());
        }
        Ok(())
    }

    /// Plan the model, instantiate once and check the component against
    /// the manifest.
    fn load_component(
        &self,
        bundle: &VerifiedBundle,
        backend: &Backend,
        component: Component,
        cache: CacheOutcome,
        started: Instant,
    ) -> Result<Model, Error> {
        let manifest = bundle.manifest_arc();
        let compiled = started.elapsed();
        let model = self.load_graph(backend, bundle.model_bytes())?;
        let pre =
            self.inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| Error::Instantiate {
                    reason: format!("{e:#}"),
                })?;
        let pre = bindings::ModelPre::new(pre).map_err(|e| Error::Incompatible {
            reason: format!("it does not export the edgeml:model world ({e:#})"),
        })?;
        let manifest_json: Arc<str> = serde_json::to_string(&*manifest)
            .map_err(|e| Error::Config(e.to_string()))?
            .into();
        let shared = Arc::new(Shared {
            runtime: self.clone(),
            pre,
            model,
            backend: backend.name(),
            model_sha256: bundle_model_sha(bundle),
            manifest: manifest.clone(),
            manifest_json,
            digest: bundle.digest_hex(),
            pool: Mutex::new(Vec::new()),
        });
        let mut slot = shared.instantiate()?;
        let meta = shared.call(&mut slot, |b, s| b.call_metadata(s))?;
        let meta = meta.map_err(guest_error)?;
        check_metadata(&manifest, &meta)?;
        shared.release(slot);
        let telemetry = match &self.inner.config.telemetry {
            Some(t) if t.config().enabled => Some(t.register(ModelDescriptor {
                model: ModelRef {
                    name: manifest.name.clone(),
                    version: manifest.version.to_string(),
                    digest: shared.digest.clone(),
                },
                monitoring_features: meta.monitoring_features.clone(),
                labels: manifest.labels.clone(),
                baseline: manifest.baseline.clone(),
            })?),
            _ => None,
        };
        Ok(Model {
            shared,
            telemetry,
            metadata: ModelMetadata {
                component: meta.component,
                media_types: meta.media_types,
                monitoring_features: meta.monitoring_features,
            },
            load_info: LoadInfo {
                cache,
                compile_or_cache: compiled,
                total: started.elapsed(),
            },
        })
    }

    /// The bundle's model, on `backend` (never `Auto`: resolved before).
    fn load_graph(&self, backend: &Backend, onnx: &[u8]) -> Result<Arc<dyn Graph>, Error> {
        let refused = |reason: String| Error::Model {
            backend: backend.name(),
            reason,
        };
        match backend {
            Backend::Tract | Backend::Auto => {
                let model = edgeml_tract::Model::load(onnx).map_err(|e| refused(e.to_string()))?;
                Ok(Arc::new(Tract(Arc::new(model))))
            }
            #[cfg(feature = "onnxruntime")]
            Backend::OnnxRuntime => {
                let lib = onnxruntime(&self.inner.config)?;
                let model =
                    edgeml_ort::Model::load(lib, onnx).map_err(|e| refused(e.to_string()))?;
                Ok(Arc::new(crate::backend::OnnxRuntime(Arc::new(model))))
            }
            #[cfg(not(feature = "onnxruntime"))]
            Backend::OnnxRuntime => Err(onnxruntime_missing()),
            Backend::Sandboxed { component } => self.sandbox(component)?.load(onnx),
        }
    }

    /// The sandboxed backend, compiled (or loaded from the cache) on first use.
    fn sandbox(&self, component: &[u8]) -> Result<Arc<SandboxEngine>, Error> {
        if let Some(s) = self.inner.sandbox.get() {
            return Ok(s.clone());
        }
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(component));
        let (compiled, _) = self.compile_cached(component, &digest)?;
        let config = &self.inner.config;
        let engine = SandboxEngine::new(
            &self.inner.engine,
            &compiled,
            config.sandbox_max_memory_bytes,
            config.timeout,
            deadline_ticks(config.timeout),
        )?;
        Ok(self.inner.sandbox.get_or_init(|| Arc::new(engine)).clone())
    }

    fn compile(&self, bundle: &VerifiedBundle) -> Result<(Component, CacheOutcome), Error> {
        self.compile_cached(bundle.bytes(), &bundle.digest_hex())
    }

    /// Compile verified (or host-shipped) component bytes, through the cache
    /// when one is configured.
    ///
    /// Compiling uses a compile-only engine with this runtime's settings,
    /// dropped as soon as the component is compiled: wasmtime keeps each
    /// engine's Cranelift working contexts for the engine's life, which on
    /// a device idling after an install is several MiB of resident memory
    /// for a compiler it will not use again until the next release. The
    /// compiled artifact is then loaded into the serving engine, which is
    /// what a cache hit does anyway.
    fn compile_cached(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheOutcome), Error> {
        let engine = &self.inner.engine;
        let cache = self
            .inner
            .config
            .cache_dir
            .as_ref()
            .map(|dir| cache::entry_path(dir, engine, digest));
        let corrupt = match cache.as_ref().map(|path| cache::load(engine, path)) {
            Some(Ok(Some(c))) => return Ok((c, CacheOutcome::Hit)),
            Some(Err(reason)) => Some(reason),
            Some(Ok(None)) | None => None,
        };
        let artifact = self.compile_artifact(bytes)?;
        // SAFETY: `artifact` was produced just now, in this process, by
        // `Engine::precompile_component` on an engine built from the same
        // `wasmtime::Config` as `engine`, from bytes the caller verified.
        let component =
            unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| Error::Compile {
                reason: format!("{e:#}"),
            })?;
        let Some(path) = cache else {
            return Ok((component, CacheOutcome::Disabled));
        };
        let outcome = match cache::store(&path, &artifact) {
            Err(e) => CacheOutcome::WriteFailed(e),
            Ok(()) => match corrupt {
                Some(reason) => CacheOutcome::Corrupt(reason),
                None => CacheOutcome::Miss,
            },
        };
        Ok((component, outcome))
    }

    /// Compile a component to its serialized form on a compile-only engine.
    #[cfg(feature = "cranelift")]
    fn compile_artifact(&self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let compile_err = |e: wasmtime::Error| Error::Compile {
            reason: format!("{e:#}"),
        };
        let compiler = Engine::new(&self.inner.wasmtime_config).map_err(compile_err)?;
        compiler.precompile_component(bytes).map_err(compile_err)
    }

    #[cfg(not(feature = "cranelift"))]
    fn compile_artifact(&self, _bytes: &[u8]) -> Result<Vec<u8>, Error> {
        Err(Error::Compile {
            reason: "this build has no compiler (cargo feature `cranelift`): it runs only \
                     components precompiled into its cache"
                .into(),
        })
    }
}

fn bundle_model_sha(bundle: &VerifiedBundle) -> [u8; 32] {
    let mut out = [0u8; 32];
    // The manifest's model digest was checked against the section during verification.
    if let Ok(bytes) = hex::decode(&bundle.manifest().model.digest.sha256) {
        if bytes.len() == 32 {
            out.copy_from_slice(&bytes);
        }
    }
    out
}

fn check_metadata(manifest: &Manifest, meta: &wit::Metadata) -> Result<(), Error> {
    let names =
        |specs: &[wit::TensorSpec]| specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let expected = |specs: &[edgeml_bundle::TensorSpec]| {
        specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
    };
    if meta.name != manifest.name || names(&meta.inputs) != expected(&manifest.inputs) {
        return Err(Error::Incompatible {
            reason: format!(
                "the component reports model `{}` with inputs {:?}; the manifest says `{}` with inputs {:?}",
                meta.name,
                names(&meta.inputs),
                manifest.name,
                expected(&manifest.inputs)
            ),
        });
    }
    Ok(())
}

/// The configured backend with `auto` decided, and why `auto` chose tract.
fn resolve_backend(config: &Config) -> Result<(Backend, Option<String>), Error> {
    resolve_backend_with(&config.backend, config)
}

fn resolve_backend_with(
    backend: &Backend,
    config: &Config,
) -> Result<(Backend, Option<String>), Error> {
    match backend {
        Backend::OnnxRuntime => {
            #[cfg(feature = "onnxruntime")]
            onnxruntime(config)?;
            #[cfg(not(feature = "onnxruntime"))]
            return Err(onnxruntime_missing());
            #[cfg(feature = "onnxruntime")]
            Ok((Backend::OnnxRuntime, None))
        }
        Backend::Auto => {
            #[cfg(feature = "onnxruntime")]
            let note = match onnxruntime(config) {
                Ok(_) => return Ok((Backend::OnnxRuntime, None)),
                Err(e) => e.to_string(),
            };
            #[cfg(not(feature = "onnxruntime"))]
            let note = onnxruntime_missing().to_string();
            Ok((Backend::Tract, Some(format!("auto chose tract: {note}"))))
        }
        other => Ok((other.clone(), None)),
    }
}

/// Load onnxruntime (once per process) with the configured library and threads.
#[cfg(feature = "onnxruntime")]
fn onnxruntime(config: &Config) -> Result<&'static edgeml_ort::Library, Error> {
    edgeml_ort::init(&edgeml_ort::Options {
        library: config.onnxruntime_library.clone(),
        intra_threads: config.onnxruntime_threads,
    })
    .map_err(|e| Error::BackendUnavailable {
        backend: "onnxruntime",
        reason: e.to_string(),
    })
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime_missing() -> Error {
    Error::BackendUnavailable {
        backend: "onnxruntime",
        reason: "this build of edgeml does not include it (cargo feature `onnxruntime`)".into(),
    }
}

/// How a model was loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadInfo {
    /// What the compilation cache did.
    pub cache: CacheOutcome,
    /// Time to compile the component or load it from the cache.
    pub compile_or_cache: Duration,
    /// Time for the whole load, first instantiation included.
    pub total: Duration,
}

struct Slot {
    store: Store<State>,
    bindings: bindings::Model,
}

struct Shared {
    runtime: Runtime,
    pre: bindings::ModelPre<State>,
    model: Arc<dyn Graph>,
    backend: &'static str,
    model_sha256: [u8; 32],
    manifest: Arc<Manifest>,
    manifest_json: Arc<str>,
    digest: String,
    pool: Mutex<Vec<Slot>>,
}

impl Shared {
    fn instantiate(&self) -> Result<Slot, Error> {
        let config = &self.runtime.inner.config;
        let limiter = Limiter::new(
            config.max_memory_bytes,
            config.max_table_elements,
            config.max_instances,
            config.max_tables,
            MAX_MEMORIES,
        );
        let nn = NnHost::new(
            self.manifest.name.clone(),
            self.model.clone(),
            self.model_sha256,
            config.allow_guest_model_bytes,
        );
        let mut store = Store::new(
            &self.runtime.inner.engine,
            State::new(nn, self.manifest_json.clone(), limiter),
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(config.timeout));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e, config.timeout, true))?;
        Ok(Slot { store, bindings })
    }

    fn take(&self) -> Result<Slot, Error> {
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        match pooled {
            Some(slot) => Ok(slot),
            None => self.instantiate(),
        }
    }

    fn release(&self, slot: Slot) {
        if slot.store.data().stderr.contents().len() > STDERR_CAPACITY / 2 {
            return; // retire chatty instances before their stderr fills up
        }
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < self.runtime.inner.config.idle_instances {
                pool.push(slot);
            }
        }
    }

    /// Call into the guest with a fresh deadline; a trap retires the instance.
    fn call<T>(
        &self,
        slot: &mut Slot,
        f: impl FnOnce(&bindings::Model, &mut Store<State>) -> wasmtime::Result<T>,
    ) -> Result<T, Error> {
        let timeout = self.runtime.inner.config.timeout;
        slot.store.set_epoch_deadline(deadline_ticks(timeout));
        slot.store.data_mut().limiter.hit = None;
        f(&slot.bindings, &mut slot.store).map_err(|e| classify(&slot.store, e, timeout, false))
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

fn classify(
    store: &Store<State>,
    e: wasmtime::Error,
    timeout: Duration,
    instantiating: bool,
) -> Error {
    let config = store.data();
    match config.limiter.hit {
        Some(LimitHit::Memory) => {
            return Error::ResourceLimit {
                what: "memory",
                limit: config.limiter.memory_bytes as u64,
            }
        }
        Some(LimitHit::Table) => {
            return Error::ResourceLimit {
                what: "table",
                limit: config.limiter.table_elements as u64,
            }
        }
        Some(LimitHit::Handles) => {
            return Error::ResourceLimit {
                what: "wasi-nn handles",
                limit: crate::nn::MAX_HANDLES as u64,
            }
        }
        Some(LimitHit::Contexts) => {
            return Error::ResourceLimit {
                what: "wasi-nn execution contexts",
                limit: crate::nn::MAX_CONTEXTS as u64,
            }
        }
        None => {}
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Error::Timeout { limit: timeout },
        Some(_) => Error::Trap {
            message: format!("{e:#}"),
            guest_stderr: store.data().stderr_tail(2048),
        },
        None if instantiating => Error::Instantiate {
            reason: format!("{e:#}"),
        },
        None => Error::Trap {
            message: format!("{e:#}"),
            guest_stderr: store.data().stderr_tail(2048),
        },
    }
}

fn guest_error(e: wit::Error) -> Error {
    match e {
        wit::Error::InvalidInput(m) => Error::InvalidInput(m),
        wit::Error::UnsupportedMedia(m) => Error::UnsupportedMedia(m),
        wit::Error::Decode(m) => Error::Decode(m),
        wit::Error::Inference(m) => Error::Inference(m),
        wit::Error::Config(m) => Error::GuestConfig(m),
    }
}

/// A loaded model: a compiled component, its planned ONNX model and a small
/// pool of warm instances. `Send + Sync`; `predict` may be called from
/// several threads at once (each call uses its own instance).
pub struct Model {
    shared: Arc<Shared>,
    telemetry: Option<ModelTelemetry>,
    metadata: ModelMetadata,
    load_info: LoadInfo,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.shared.manifest.name)
            .field("version", &self.shared.manifest.version)
            .field("digest", &self.shared.digest)
            .finish()
    }
}

impl Model {
    /// The bundle's signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.shared.manifest
    }

    /// The inference backend this model runs on (`tract`, `onnxruntime`
    /// or `sandboxed`).
    pub fn backend(&self) -> &'static str {
        self.shared.backend
    }

    /// The bundle digest (hex SHA-256 of the signed content).
    pub fn digest(&self) -> &str {
        &self.shared.digest
    }

    /// What the component declares about itself.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// How the model was loaded (cache outcome, timings).
    pub fn load_info(&self) -> &LoadInfo {
        &self.load_info
    }

    /// Run one prediction. Tensor inputs are checked against the manifest
    /// first; media goes to the component to decode. A trap, timeout or limit
    /// fails this call only: the instance is discarded and the next call gets
    /// a fresh one.
    pub fn predict(&self, input: Input) -> Result<Prediction, Error> {
        let Some(telemetry) = &self.telemetry else {
            return self.run(input).0;
        };
        let started = Instant::now();
        let (result, input) = self.run(input);
        let latency = started.elapsed();
        match &result {
            Ok(p) => {
                let scores = observed_scores(p);
                let observed = Observed {
                    monitoring: &p.monitoring,
                    scores: &scores,
                    value: p.first_value(),
                };
                telemetry.record(latency, Ok(observed), Some(&p.id), || {
                    input.map(sample_input)
                });
            }
            Err(e) => telemetry.record(latency, Err(e.kind()), None, || None),
        }
        result
    }

    /// Predict each reference input and summarise what the model saw, as the
    /// baseline a bundle carries for drift monitoring (`edgeml pack --reference`).
    /// Fails on the first input that fails.
    pub fn baseline(
        &self,
        inputs: impl IntoIterator<Item = Input>,
    ) -> Result<edgeml_bundle::Baseline, Error> {
        let mut builder = edgeml_telemetry::BaselineBuilder::new(
            self.metadata.monitoring_features.clone(),
            self.shared.manifest.labels.clone(),
        );
        for input in inputs {
            let p = self.run(input).0?;
            let scores = observed_scores(&p);
            builder.add(Observed {
                monitoring: &p.monitoring,
                scores: &scores,
                value: None,
            });
        }
        Ok(builder.build())
    }

    /// Run the self-test vectors the manifest carries (none is a pass) and
    /// return how many ran. Predictions made here are not recorded in telemetry.
    pub fn self_test(&self) -> Result<usize, Error> {
        let tests = &self.shared.manifest.self_test;
        for t in tests {
            let fail = |reason: String| Error::SelfTest {
                name: t.name.clone(),
                reason,
            };
            let input = self_test_input(&t.input).map_err(fail)?;
            let p = self.run(input).0.map_err(|e| fail(e.to_string()))?;
            if let Some(want) = &t.label {
                let got = p
                    .scores
                    .as_ref()
                    .and_then(|s| s.first())
                    .map(|s| s.label.as_str());
                if got != Some(want.as_str()) {
                    return Err(fail(format!(
                        "expected label `{want}`, the model answered {}",
                        got.map_or("no label".to_string(), |g| format!("`{g}`"))
                    )));
                }
            }
            for want in &t.outputs {
                let got = p
                    .output(&want.name)
                    .and_then(|o| o.to_f32())
                    .ok_or_else(|| fail(format!("no f32 output `{}`", want.name)))?;
                if got.len() != want.values.len() {
                    return Err(fail(format!(
                        "output `{}` has {} values, expected {}",
                        want.name,
                        got.len(),
                        want.values.len()
                    )));
                }
                if let Some((i, (g, w))) = got
                    .iter()
                    .zip(&want.values)
                    .enumerate()
                    .find(|(_, (g, w))| !((*g - *w).abs() <= t.tolerance))
                {
                    return Err(fail(format!(
                        "output `{}`[{i}] is {g}, expected {w} (tolerance {})",
                        want.name, t.tolerance
                    )));
                }
            }
        }
        Ok(tests.len())
    }

    /// Predict `input` and record the answer as a self-test vector: the top
    /// label when the model has labels (or `label` when given, which must
    /// match), else every f32 output. For `edgeml pack --self-test`.
    pub fn record_self_test(
        &self,
        name: &str,
        input: &edgeml_bundle::SelfTestInput,
        label: Option<String>,
    ) -> Result<edgeml_bundle::SelfTest, Error> {
        let fail = |reason: String| Error::SelfTest {
            name: name.to_string(),
            reason,
        };
        let p = self.run(self_test_input(input).map_err(fail)?).0?;
        let top = p
            .scores
            .as_ref()
            .and_then(|s| s.first())
            .map(|s| s.label.clone());
        let (label, outputs) = match (label, top) {
            (Some(want), Some(got)) if want != got => {
                return Err(fail(format!(
                    "expected label `{want}`, the model answered `{got}`"
                )))
            }
            (Some(want), _) => (Some(want), Vec::new()),
            (None, Some(got)) => (Some(got), Vec::new()),
            (None, None) => (
                None,
                p.outputs
                    .iter()
                    .filter_map(|o| {
                        Some(edgeml_bundle::SelfTestTensor {
                            name: o.name.clone(),
                            shape: o.shape.clone(),
                            values: o.to_f32()?,
                        })
                    })
                    .collect(),
            ),
        };
        Ok(edgeml_bundle::SelfTest {
            name: name.to_string(),
            input: input.clone(),
            label,
            outputs,
            tolerance: 1e-3,
        })
    }

    /// One prediction; also hands back the input as sent to the guest, for telemetry samples.
    fn run(&self, input: Input) -> (Result<Prediction, Error>, Option<wit::Input>) {
        let input = match input {
            Input::Tensors(tensors) => {
                if let Err(e) = check_tensors(&self.shared.manifest, &tensors) {
                    return (Err(e), None);
                }
                wit::Input::Tensors(tensors.into_iter().map(to_wit).collect())
            }
            Input::Media { media_type, bytes } => {
                wit::Input::Media(wit::Media { media_type, bytes })
            }
        };
        let result = self.call_predict(&input);
        (result, Some(input))
    }

    fn call_predict(&self, input: &wit::Input) -> Result<Prediction, Error> {
        let mut slot = self.shared.take()?;
        let result = self
            .shared
            .call(&mut slot, |b, s| b.call_predict(s, input))?;
        self.shared.release(slot);
        let p = result.map_err(guest_error)?;
        Ok(Prediction {
            id: edgeml_telemetry::wire::new_prediction_id(),
            outputs: p.outputs.into_iter().map(from_wit).collect(),
            scores: p.scores.map(|s| {
                s.into_iter()
                    .map(|l| ScoredLabel {
                        index: l.index,
                        label: l.label,
                        score: l.score,
                    })
                    .collect()
            }),
            monitoring: p.monitoring,
        })
    }
}

/// A prediction's scores as telemetry takes them: `(label index, score)`, best first.
fn observed_scores(p: &Prediction) -> Vec<(u32, f32)> {
    p.scores
        .iter()
        .flatten()
        .map(|s| (s.index, s.score))
        .collect()
}

/// A guest input as a telemetry sample.
fn sample_input(input: wit::Input) -> SampleInput {
    match input {
        wit::Input::Tensors(tensors) => SampleInput::Tensors {
            tensors: tensors
                .into_iter()
                .map(|t| {
                    let t = from_wit(t);
                    TensorData::new(&t.name, t.dtype, &t.shape, &t.data)
                })
                .collect(),
        },
        wit::Input::Media(m) => SampleInput::media(&m.media_type, &m.bytes),
    }
}

/// Check tensors against the manifest inputs: every input given once, known
/// names only, matching dtype, rank and fixed dimensions, and data sized to the shape.
fn check_tensors(manifest: &Manifest, tensors: &[Tensor]) -> Result<(), Error> {
    let known = || {
        manifest
            .inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
    };
    for (i, t) in tensors.iter().enumerate() {
        let spec = manifest.input(&t.name).ok_or_else(|| {
            Error::InvalidInput(format!(
                "unknown input `{}`; the model's inputs are {:?}",
                t.name,
                known()
            ))
        })?;
        if tensors[..i].iter().any(|o| o.name == t.name) {
            return Err(Error::InvalidInput(format!(
                "input `{}` is given twice",
                t.name
            )));
        }
        if t.dtype != spec.dtype {
            return Err(Error::InvalidInput(format!(
                "input `{}` is {}, the model expects {}",
                t.name, t.dtype, spec.dtype
            )));
        }
        spec.check_shape(&t.shape)
            .map_err(|why| Error::InvalidInput(format!("input `{}`: {why}", t.name)))?;
        let expected = t
            .shape
            .iter()
            .try_fold(t.dtype.size() as u64, |acc, &d| acc.checked_mul(d));
        if expected != Some(t.data.len() as u64) {
            return Err(Error::InvalidInput(format!(
                "input `{}` has {} bytes; shape {:?} of {} needs {}",
                t.name,
                t.data.len(),
                t.shape,
                t.dtype,
                expected.map_or("more than 2^64".into(), |n| n.to_string())
            )));
        }
    }
    if let Some(missing) = manifest
        .inputs
        .iter()
        .find(|s| !tensors.iter().any(|t| t.name == s.name))
    {
        return Err(Error::InvalidInput(format!(
            "missing input `{}` ({} {}); the model needs {:?}",
            missing.name,
            missing.dtype,
            missing.shape_string(),
            known()
        )));
    }
    Ok(())
}

crate::backend::wit_tensor_conversions!(crate::bindings::edgeml::model::types);

fn self_test_input(input: &edgeml_bundle::SelfTestInput) -> Result<Input, String> {
    use base64::Engine as _;
    match input {
        edgeml_bundle::SelfTestInput::Media { media_type, base64 } => Ok(Input::Media {
            media_type: media_type.clone(),
            bytes: base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(|e| format!("input is not valid base64: {e}"))?,
        }),
        edgeml_bundle::SelfTestInput::Tensors { tensors } => Ok(Input::Tensors(
            tensors
                .iter()
                .map(|t| edgeml_tract::Tensor::from_f32(t.name.clone(), t.shape.clone(), &t.values))
                .collect(),
        )),
    }
}
