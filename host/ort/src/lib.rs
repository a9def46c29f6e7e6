//! edgeml's onnxruntime backend: the same named-tensor [`Model`] /
//! [`Session`] API as `edgeml-tract`, run by Microsoft's onnxruntime through
//! the `ort` crate.
//!
//! Nothing is linked at build time. [`init`] finds `libonnxruntime.so` at run
//! time (an explicit path, else `ORT_DYLIB_PATH`, else the system's library
//! search path), checks its version (1.17 or newer) and makes the process's
//! one onnxruntime environment. A device without the library gets
//! [`Error::Unavailable`], never a panic: no `ort` call is made before the
//! library has loaded.
//!
//! ```no_run
//! # fn main() -> Result<(), edgeml_ort::Error> {
//! let lib = edgeml_ort::init(&edgeml_ort::Options::default())?;
//! let onnx = std::fs::read("models/digits/digits.onnx").unwrap();
//! let model = std::sync::Arc::new(edgeml_ort::Model::load(lib, &onnx)?);
//! let mut session = model.session()?;
//! let x = edgeml_ort::Tensor::from_f32("X", vec![1, 64], &[0.0; 64]);
//! let outputs = session.run(vec![x])?;
//! # Ok(()) }
//! ```
//!
//! The library and its thread pool are process-wide: the first [`init`]
//! decides them, and a later one asking for another library is refused.

#![deny(missing_docs)]

pub use edgeml_bundle::Dtype;
pub use edgeml_tract::Tensor;

use edgeml_tract::guard;
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::SessionInputValue;
use ort::value::{TensorElementType, TensorRef, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Oldest onnxruntime accepted (the C API version `ort` is built against).
pub const MIN_VERSION: &str = "1.17";

/// Sessions kept per model for reuse (each holds its own planned graph).
const IDLE_SESSIONS: usize = 8;

/// Errors from finding the library, loading a model or running it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// onnxruntime cannot be used in this process: the library is missing,
    /// too old, not onnxruntime, or another one is already loaded.
    #[error("{0}")]
    Unavailable(String),
    /// onnxruntime refuses the ONNX model (or one of its inputs or outputs
    /// has a type edgeml does not carry).
    #[error("{0}")]
    Load(String),
    /// The inputs do not fit the model, or the computation failed.
    #[error("{0}")]
    Run(String),
}

/// Where to find onnxruntime and how many threads it may use.
#[derive(Debug, Clone)]
pub struct Options {
    /// `libonnxruntime.so` to load. `None`: `ORT_DYLIB_PATH` if set, else
    /// `libonnxruntime.so` (then `libonnxruntime.so.1`) from the dynamic
    /// linker's search path.
    pub library: Option<PathBuf>,
    /// Threads for one inference (onnxruntime's intra-op pool, shared by
    /// every session of the process). 1 runs each inference on the calling
    /// thread, which is what a device serving concurrent requests wants.
    pub intra_threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            library: None,
            intra_threads: 1,
        }
    }
}

/// The loaded onnxruntime: its path, version and the process's environment.
pub struct Library {
    path: PathBuf,
    version: String,
    env: Environment,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

impl Library {
    /// The file that was loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its version, e.g. `1.31.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The process's `ort` environment, for code that drives `ort` directly
    /// next to edgeml (the benchmark's bare-onnxruntime column).
    pub fn environment(&self) -> &Environment {
        &self.env
    }
}

/// What this process did with onnxruntime so far.
enum State {
    NotLoaded,
    Ready(&'static Library),
    /// The library loaded but its environment did not start: it stays
    /// loaded (onnxruntime cannot be unloaded), so nothing else can be.
    Broken(String),
}

static LOADED: Mutex<State> = Mutex::new(State::NotLoaded);

/// Most intra-op threads accepted (onnxruntime takes an `int`).
const MAX_THREADS: usize = 256;

/// Load onnxruntime (once per process) and make its environment. Later calls
/// return the same library; one asking for a different file is refused with
/// [`Error::Unavailable`], as onnxruntime cannot be loaded twice.
pub fn init(options: &Options) -> Result<&'static Library, Error> {
    let mut state = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let explicit = options
        .library
        .clone()
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        // A relative path is the caller's, not the executable's directory
        // (where `ort` would look first).
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    match &*state {
        State::Ready(lib) => {
            return match &explicit {
                Some(p) if !same_file(p, &lib.path) => Err(Error::Unavailable(format!(
                    "onnxruntime {} is already loaded from {} in this process; {} cannot be loaded as well",
                    lib.version,
                    lib.path.display(),
                    p.display()
                ))),
                _ => Ok(lib),
            }
        }
        State::Broken(reason) => return Err(Error::Unavailable(reason.clone())),
        State::NotLoaded => {}
    }
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p],
        None => vec!["libonnxruntime.so".into(), "libonnxruntime.so.1".into()],
    };
    let threads = options.intra_threads.clamp(1, MAX_THREADS);
    let mut failures = Vec::new();
    for path in &candidates {
        // `init_from` validates the file (it exports the onnxruntime API, its
        // version is recent enough) before any other ort call can touch it.
        match guard(|| ort::init_from(path)) {
            Ok(Ok(builder)) => {
                return match start(path, builder, threads) {
                    Ok(lib) => {
                        let lib: &'static Library = Box::leak(Box::new(lib));
                        *state = State::Ready(lib);
                        Ok(lib)
                    }
                    Err(e) => {
                        *state = State::Broken(e.clone());
                        Err(Error::Unavailable(e))
                    }
                };
            }
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(panic) => failures.push(format!("{}: {panic}", path.display())),
        }
    }
    Err(Error::Unavailable(format!(
        "{}; install onnxruntime {MIN_VERSION} or newer and point ORT_DYLIB_PATH (or the \
         onnxruntime library setting) at its libonnxruntime.so, or choose another backend",
        failures.join("; ")
    )))
}

/// The library [`init`] loaded, if it has.
pub fn loaded() -> Option<&'static Library> {
    match *LOADED.lock().unwrap_or_else(|p| p.into_inner()) {
        State::Ready(lib) => Some(lib),
        _ => None,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The process's environment on the library `init_from` just loaded.
fn start(
    path: &Path,
    builder: ort::environment::EnvironmentBuilder,
    intra_threads: usize,
) -> Result<Library, String> {
    let env = guard(|| {
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(intra_threads)?
            .with_inter_threads(1)?
            .with_spin_control(false)?;
        let env = builder
            .with_name("edgeml")
            .with_telemetry(false)
            .with_global_thread_pool(pool)
            .build()?;
        // ort's tracing bridge asks for every message (verbose); only
        // warnings and errors are worth a call across the boundary.
        env.set_log_level(ort::logging::LogLevel::Warning);
        Ok::<_, ort::Error>(env)
    })?
    .map_err(|e| {
        format!(
            "onnxruntime was loaded from {} but cannot start: {e}; restart the process \
             to use another library",
            path.display()
        )
    })?;
    Ok(Library {
        path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        version: version(path),
        env,
    })
}

/// The library's version string (`1.31.1`), from `OrtGetApiBase()->
/// GetVersionString()` (the C API's stable entry point; `ort` keeps its own
/// copy private). The file is already loaded, so this only takes a reference.
fn version(path: &Path) -> String {
    #[repr(C)]
    struct OrtApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const std::ffi::c_char,
    }
    let fallback = || format!("1.{}+", ort::MINOR_VERSION);
    // SAFETY: the file was loaded and checked by `ort::init_from` (it exports
    // `OrtGetApiBase`, whose result has this layout in every onnxruntime
    // release); the version string is static and NUL-terminated.
    unsafe {
        let Ok(lib) = libloading::Library::new(path) else {
            return fallback();
        };
        let Ok(get_base) =
            lib.get::<unsafe extern "C" fn() -> *const OrtApiBase>(b"OrtGetApiBase\0")
        else {
            return fallback();
        };
        let base = get_base();
        if base.is_null() {
            return fallback();
        }
        let v = ((*base).get_version_string)();
        if v.is_null() {
            return fallback();
        }
        std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned()
    }
}

fn load_error(e: impl std::fmt::Display) -> Error {
    Error::Load(e.to_string())
}

/// A model onnxruntime accepted; share it (`Arc`) between sessions.
pub struct Model {
    lib: &'static Library,
    onnx: Vec<u8>,
    inputs: Vec<(String, Dtype)>,
    outputs: Vec<(String, Dtype)>,
    idle: Mutex<Vec<ort::session::Session>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Model {
    /// Hand an ONNX model to onnxruntime (graph optimisations on) and check
    /// that every input and output is a tensor edgeml carries. The first
    /// session is made here, so a model onnxruntime refuses fails now.
    pub fn load(lib: &'static Library, onnx: &[u8]) -> Result<Self, Error> {
        let session = new_session(lib, onnx)?;
        let io = |outlets: &[ort::value::Outlet], what: &str| {
            outlets
                .iter()
                .map(|o| {
                    let dtype = match o.dtype() {
                        ValueType::Tensor { ty, .. } => from_ort(*ty).ok_or_else(|| {
                            format!(
                                "{what} `{}` has element type {ty}, which edgeml does not carry",
                                o.name()
                            )
                        }),
                        other => Err(format!(
                            "{what} `{}` is a {other}, not a tensor (edgeml carries tensors only; \
                             export the model without it, e.g. skl2onnx's zipmap=False)",
                            o.name()
                        )),
                    }
                    .map_err(Error::Load)?;
                    Ok((o.name().to_string(), dtype))
                })
                .collect::<Result<Vec<_>, Error>>()
        };
        let inputs = io(session.inputs(), "input")?;
        let outputs = io(session.outputs(), "output")?;
        Ok(Model {
            lib,
            onnx: onnx.to_vec(),
            inputs,
            outputs,
            idle: Mutex::new(vec![session]),
        })
    }

    /// A session: an idle one if there is one, else a new one.
    pub fn session(self: &Arc<Self>) -> Result<Session, Error> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let inner = match idle {
            Some(s) => s,
            None => new_session(self.lib, &self.onnx)?,
        };
        Ok(Session {
            model: self.clone(),
            inner: Some(inner),
        })
    }

    /// Input names and dtypes, in graph order.
    pub fn inputs(&self) -> &[(String, Dtype)] {
        &self.inputs
    }

    /// Output names and dtypes, in graph order.
    pub fn outputs(&self) -> &[(String, Dtype)] {
        &self.outputs
    }
}

fn new_session(lib: &'static Library, onnx: &[u8]) -> Result<ort::session::Session, Error> {
    guard(|| -> Result<ort::session::Session, String> {
        ort::session::Session::builder(&lib.env)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| e.to_string())?
            .commit_from_memory(onnx)
            .map_err(|e| e.to_string())
    })
    .map_err(load_error)?
    .map_err(load_error)
}

/// One execution context of a [`Model`]; goes back to the model's idle
/// sessions when dropped.
pub struct Session {
    model: Arc<Model>,
    inner: Option<ort::session::Session>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(s) = self.inner.take() {
            let mut idle = self.model.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_SESSIONS {
                idle.push(s);
            }
        }
    }
}

impl Session {
    /// Run the model on named inputs (any order; every input required),
    /// with the same checks and messages as the tract backend. Inputs are
    /// passed to onnxruntime without a copy when their bytes are aligned.
    pub fn run(&mut self, named: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let model = &self.model;
        let inputs = edgeml_tract::order_inputs(&model.inputs, named).map_err(Error::Run)?;
        let session = self
            .inner
            .as_mut()
            .ok_or_else(|| Error::Run("the session was lost after a failure".into()))?;
        guard(|| run(session, &model.inputs, &model.outputs, &inputs))
            .map_err(Error::Run)?
            .map_err(Error::Run)
    }
}

fn run(
    session: &mut ort::session::Session,
    names: &[(String, Dtype)],
    outputs: &[(String, Dtype)],
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, String> {
    let values = names
        .iter()
        .zip(inputs)
        .map(|((name, _), t)| Ok((Cow::Borrowed(name.as_str()), input_value(t)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let results = session.run(values).map_err(|e| e.to_string())?;
    outputs
        .iter()
        .map(|(name, dtype)| {
            let value = results
                .get(name)
                .ok_or_else(|| format!("onnxruntime returned no output `{name}`"))?;
            output_tensor(name, *dtype, value).map_err(|e| format!("output `{name}`: {e}"))
        })
        .collect()
}

/// An input as an onnxruntime value: a view of the tensor's bytes when they
/// are aligned for the element type (the common case), else a copy.
fn input_value(t: &Tensor) -> Result<SessionInputValue<'_>, String> {
    let shape: Vec<i64> = t
        .shape
        .iter()
        .map(|&d| {
            i64::try_from(d).map_err(|_| format!("input `{}` dimension {d} is too large", t.name))
        })
        .collect::<Result<_, _>>()?;
    fn view<'t, T>(shape: Vec<i64>, bytes: &'t [u8]) -> Result<SessionInputValue<'t>, String>
    where
        T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static + FromLe,
    {
        // SAFETY: every bit pattern is a valid value of the element types
        // used here (f32, f64, i32, i64, u8); align_to only reinterprets.
        let (head, body, tail) = unsafe { bytes.align_to::<T>() };
        if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
            let tensor = TensorRef::from_array_view((shape, body)).map_err(|e| e.to_string())?;
            return Ok(tensor.into());
        }
        let values: Vec<T> = bytes.chunks_exact(size_of::<T>()).map(T::from_le).collect();
        let tensor = ort::value::Tensor::from_array((shape, values)).map_err(|e| e.to_string())?;
        Ok(tensor.into())
    }
    match t.dtype {
        Dtype::F32 => view::<f32>(shape, &t.data),
        Dtype::F64 => view::<f64>(shape, &t.data),
        Dtype::I32 => view::<i32>(shape, &t.data),
        Dtype::I64 => view::<i64>(shape, &t.data),
        Dtype::U8 => view::<u8>(shape, &t.data),
    }
}

fn output_tensor(name: &str, dtype: Dtype, value: &ort::value::DynValue) -> Result<Tensor, String> {
    fn bytes<T: ort::value::PrimitiveTensorElementType + ToLe>(
        value: &ort::value::DynValue,
    ) -> Result<(Vec<u64>, Vec<u8>), String> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
        let shape = shape.iter().map(|&d| d.max(0) as u64).collect();
        let mut out = Vec::with_capacity(std::mem::size_of_val(data));
        for v in data {
            v.extend_le(&mut out);
        }
        Ok((shape, out))
    }
    let (shape, data) = match dtype {
        Dtype::F32 => bytes::<f32>(value)?,
        Dtype::F64 => bytes::<f64>(value)?,
        Dtype::I32 => bytes::<i32>(value)?,
        Dtype::I64 => bytes::<i64>(value)?,
        Dtype::U8 => bytes::<u8>(value)?,
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}

fn from_ort(t: TensorElementType) -> Option<Dtype> {
    Some(match t {
        TensorElementType::Float32 => Dtype::F32,
        TensorElementType::Float64 => Dtype::F64,
        TensorElementType::Int32 => Dtype::I32,
        TensorElementType::Int64 => Dtype::I64,
        TensorElementType::Uint8 => Dtype::U8,
        _ => return None,
    })
}

/// Little-endian element bytes, both ways.
trait FromLe: Sized {
    fn from_le(b: &[u8]) -> Self;
}
trait ToLe {
    fn extend_le(&self, out: &mut Vec<u8>);
}
macro_rules! le {
    ($($t:ty),*) => {$(
        impl FromLe for $t {
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
        }
        impl ToLe for $t {
            fn extend_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le!(f32, f64, i32, i64, u8);
