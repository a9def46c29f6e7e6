//! The host side of `wasi:nn@0.2.0-rc-2024-10-28`, backed by tract.
//!
//! The only graph a guest can get is the bundle's own signed model, by name
//! (`load-by-name(<manifest name>)`) or by passing `load` exactly those bytes.
//! Loading any other bytes is refused with `security` unless the runtime was
//! built with `Config::insecure_allow_guest_model_bytes`.

use crate::backend::{Graph, Session};
use crate::bindings::wasi::nn::errors::ErrorCode;
use crate::bindings::wasi::nn::graph::{ExecutionTarget, GraphEncoding};
use crate::bindings::wasi::nn::tensor::TensorType;
use crate::bindings::wasi::nn::{errors, graph, inference, tensor};
use crate::state::{LimitHit, State};
use crate::tensor::Tensor;
use edgeml_bundle::Dtype;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use wasmtime::component::Resource;

/// Largest total size of the graph bytes a guest may pass to `load` (when allowed).
const MAX_GUEST_GRAPH_BYTES: usize = 256 << 20;

/// Most live `wasi:nn` resources (graphs, tensors, errors) per instance.
/// Our components hold a handful; wasmtime's own cap is 100 000 per store.
pub(crate) const MAX_HANDLES: usize = 1024;
/// Most live execution contexts per instance. Our components keep one and
/// reuse it; each may hold a sandboxed backend instance.
pub(crate) const MAX_CONTEXTS: usize = 4;
/// Most sessions kept for reuse after their context is dropped.
const SPARE_SESSIONS: usize = 2;

/// What the wasi:nn host serves to one store, and what it holds for it.
pub(crate) struct NnHost {
    pub(crate) name: String,
    pub(crate) model: Arc<dyn Graph>,
    pub(crate) model_sha256: [u8; 32],
    pub(crate) allow_guest_model_bytes: bool,
    /// Live graphs, tensors and errors.
    handles: usize,
    /// Live execution contexts.
    contexts: usize,
    /// Sessions of dropped contexts, kept to reuse (their graph, the
    /// session, the bytes charged for it: spare sessions stay charged to
    /// the guest, they hold its memory).
    spare: Vec<(Arc<dyn Graph>, Box<dyn Session>, usize)>,
}

impl NnHost {
    pub(crate) fn new(
        name: String,
        model: Arc<dyn Graph>,
        model_sha256: [u8; 32],
        allow_guest_model_bytes: bool,
    ) -> NnHost {
        NnHost {
            name,
            model,
            model_sha256,
            allow_guest_model_bytes,
            handles: 0,
            contexts: 0,
            spare: Vec::new(),
        }
    }
}

/// `wasi:nn/graph.graph`.
pub struct NnGraph(Arc<dyn Graph>);
/// `wasi:nn/inference.graph-execution-context`: the session, its graph,
/// and the bytes charged to the guest for it.
pub struct NnContext {
    session: Box<dyn Session>,
    graph: Arc<dyn Graph>,
    charged: usize,
}
/// `wasi:nn/tensor.tensor`.
pub struct NnTensor {
    dims: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}
/// `wasi:nn/errors.error`.
pub struct NnError {
    code: ErrorCode,
    data: String,
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl State {
    fn nn_err<T>(&mut self, code: ErrorCode, data: impl Into<String>) -> NnResult<T> {
        let mut data: String = data.into();
        data.truncate(4096);
        self.take_handle()?;
        let e = self.table.push(NnError { code, data })?;
        Ok(Err(e))
    }

    /// Count one more live wasi:nn resource, or trap at [`MAX_HANDLES`].
    fn take_handle(&mut self) -> wasmtime::Result<()> {
        if self.nn.handles >= MAX_HANDLES {
            self.limiter.hit = Some(LimitHit::Handles);
            return Err(wasmtime::Error::msg(format!(
                "the guest holds {MAX_HANDLES} wasi-nn resources; dropping none"
            )));
        }
        self.nn.handles += 1;
        Ok(())
    }

    fn give_handle(&mut self) {
        self.nn.handles = self.nn.handles.saturating_sub(1);
    }

    /// A tensor the host keeps for the guest: counted and charged.
    fn push_tensor(&mut self, t: NnTensor) -> wasmtime::Result<Resource<NnTensor>> {
        self.take_handle()?;
        if let Err(e) = self.limiter.charge(t.data.len()) {
            self.give_handle();
            return Err(e);
        }
        Ok(self.table.push(t)?)
    }

    /// Remove a tensor and give back its charge.
    fn take_tensor(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<NnTensor> {
        let t = self.table.delete(t)?;
        self.give_handle();
        self.limiter.refund(t.data.len());
        Ok(t)
    }

    /// Bring the charge for a context's session up to what it holds now.
    fn recharge(&mut self, ctx: &Resource<NnContext>) -> wasmtime::Result<()> {
        let (now, before) = {
            let c = self.table.get(ctx)?;
            (c.session.memory_bytes(), c.charged)
        };
        if now > before {
            self.limiter.charge(now - before)?;
            self.table.get_mut(ctx)?.charged = now;
        }
        Ok(())
    }
}

fn dtype(ty: TensorType) -> Option<Dtype> {
    Some(match ty {
        TensorType::Fp32 => Dtype::F32,
        TensorType::Fp64 => Dtype::F64,
        TensorType::I32 => Dtype::I32,
        TensorType::I64 => Dtype::I64,
        TensorType::U8 => Dtype::U8,
        TensorType::Fp16 | TensorType::Bf16 => return None,
    })
}

fn tensor_type(d: Dtype) -> TensorType {
    match d {
        Dtype::F32 => TensorType::Fp32,
        Dtype::F64 => TensorType::Fp64,
        Dtype::I32 => TensorType::I32,
        Dtype::I64 => TensorType::I64,
        Dtype::U8 => TensorType::U8,
    }
}

impl graph::Host for State {
    fn load(
        &mut self,
        builders: Vec<Vec<u8>>,
        encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> NnResult<Resource<NnGraph>> {
        if !matches!(encoding, GraphEncoding::Onnx | GraphEncoding::Autodetect) {
            return self.nn_err(
                ErrorCode::InvalidEncoding,
                format!("this host runs ONNX models only, not {encoding:?}"),
            );
        }
        let [bytes] = builders.as_slice() else {
            return self.nn_err(
                ErrorCode::InvalidArgument,
                "an ONNX graph is loaded from exactly one builder",
            );
        };
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if digest == self.nn.model_sha256 {
            self.take_handle()?;
            let g = self.table.push(NnGraph(self.nn.model.clone()))?;
            return Ok(Ok(g));
        }
        if !self.nn.allow_guest_model_bytes {
            return self.nn_err(
                ErrorCode::Security,
                "loading model bytes that are not the bundle's signed model is not allowed by this host's policy; \
                 use load-by-name with the bundle's model name",
            );
        }
        if bytes.len() > MAX_GUEST_GRAPH_BYTES {
            return self.nn_err(
                ErrorCode::TooLarge,
                format!(
                    "graph of {} bytes is over {MAX_GUEST_GRAPH_BYTES}",
                    bytes.len()
                ),
            );
        }
        // Insecure path, native backend only: these bytes were never verified.
        match edgeml_tract::Model::load(bytes) {
            Ok(m) => {
                self.take_handle()?;
                let g = self
                    .table
                    .push(NnGraph(Arc::new(crate::backend::Tract(Arc::new(m)))))?;
                Ok(Ok(g))
            }
            Err(e) => self.nn_err(ErrorCode::InvalidArgument, e.to_string()),
        }
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<NnGraph>> {
        if name != self.nn.name {
            let known = self.nn.name.clone();
            return self.nn_err(
                ErrorCode::NotFound,
                format!("no model named `{name}`; this bundle's model is `{known}`"),
            );
        }
        self.take_handle()?;
        let g = self.table.push(NnGraph(self.nn.model.clone()))?;
        Ok(Ok(g))
    }
}

impl graph::HostGraph for State {
    fn init_execution_context(
        &mut self,
        graph: Resource<NnGraph>,
    ) -> NnResult<Resource<inference::GraphExecutionContext>> {
        let model = self.table.get(&graph)?.0.clone();
        if self.nn.contexts >= MAX_CONTEXTS {
            self.limiter.hit = Some(LimitHit::Contexts);
            return Err(wasmtime::Error::msg(format!(
                "the guest holds {MAX_CONTEXTS} execution contexts; reuse one"
            )));
        }
        // Reuse the session of a dropped context on the same graph.
        let spare = self
            .nn
            .spare
            .iter()
            .position(|(g, _, _)| Arc::ptr_eq(g, &model))
            .map(|i| self.nn.spare.swap_remove(i));
        let (session, charged) = match spare {
            // Already charged while it was spare.
            Some((_, s, charged)) => (s, charged),
            None => match model.session() {
                Ok(s) => {
                    // The session's own memory (the sandboxed backend's) is the guest's.
                    let charged = s.memory_bytes();
                    self.limiter.charge(charged)?;
                    (s, charged)
                }
                Err(e) => return self.nn_err(ErrorCode::RuntimeError, e),
            },
        };
        self.nn.contexts += 1;
        let c = self.table.push(NnContext {
            session,
            graph: model,
            charged,
        })?;
        Ok(Ok(c))
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        self.give_handle();
        Ok(())
    }
}

impl inference::Host for State {}

impl inference::HostGraphExecutionContext for State {
    fn compute(
        &mut self,
        ctx: Resource<NnContext>,
        inputs: Vec<(String, Resource<NnTensor>)>,
    ) -> NnResult<Vec<(String, Resource<NnTensor>)>> {
        // Take every input first: each is consumed (and its charge given
        // back) whatever happens next.
        let mut taken = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            taken.push((name, self.take_tensor(t)?));
        }
        let mut named = Vec::with_capacity(taken.len());
        for (name, NnTensor { dims, ty, data }) in taken {
            let Some(dtype) = dtype(ty) else {
                return self.nn_err(
                    ErrorCode::InvalidArgument,
                    format!("input `{name}`: tensor type {ty:?} is not supported"),
                );
            };
            named.push(Tensor {
                name,
                dtype,
                shape: dims.into_iter().map(u64::from).collect(),
                data,
            });
        }
        let result = self.table.get_mut(&ctx)?.session.run(named);
        self.recharge(&ctx)?;
        let outputs = match result {
            Ok(o) => o,
            Err(msg) => return self.nn_err(ErrorCode::InvalidArgument, msg),
        };
        // Check every output before any is handed over (nothing to undo).
        if let Some(t) = outputs
            .iter()
            .find(|t| t.shape.iter().any(|&d| u32::try_from(d).is_err()))
        {
            let msg = format!("output `{}` has a dimension over u32", t.name);
            return self.nn_err(ErrorCode::TooLarge, msg);
        }
        let mut out = Vec::with_capacity(outputs.len());
        for t in outputs {
            let dims = t.shape.iter().map(|&d| d as u32).collect();
            let r = self.push_tensor(NnTensor {
                dims,
                ty: tensor_type(t.dtype),
                data: t.data,
            })?;
            out.push((t.name, r));
        }
        Ok(Ok(out))
    }

    fn drop(&mut self, ctx: Resource<NnContext>) -> wasmtime::Result<()> {
        let c = self.table.delete(ctx)?;
        self.nn.contexts = self.nn.contexts.saturating_sub(1);
        if self.nn.spare.len() < SPARE_SESSIONS {
            // Kept (and still charged) for the next context.
            self.nn.spare.push((c.graph, c.session, c.charged));
        } else {
            self.limiter.refund(c.charged);
        }
        Ok(())
    }
}

impl tensor::Host for State {}

impl tensor::HostTensor for State {
    fn new(
        &mut self,
        dims: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<NnTensor>> {
        self.push_tensor(NnTensor { dims, ty, data })
    }
    fn dimensions(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dims.clone())
    }
    fn ty(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&t)?.ty)
    }
    fn data(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.data.clone())
    }
    fn drop(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<()> {
        self.take_tensor(t)?;
        Ok(())
    }
}

impl errors::Host for State {}

impl errors::HostError for State {
    fn code(&mut self, e: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&e)?.code)
    }
    fn data(&mut self, e: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.data.clone())
    }
    fn drop(&mut self, e: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        self.give_handle();
        Ok(())
    }
}
