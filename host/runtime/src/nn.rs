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
use crate::state::State;
use crate::tensor::Tensor;
use edgeml_bundle::Dtype;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use wasmtime::component::Resource;

/// Largest total size of the graph bytes a guest may pass to `load` (when allowed).
const MAX_GUEST_GRAPH_BYTES: usize = 256 << 20;

/// What the wasi:nn host serves to one store.
pub(crate) struct NnHost {
    pub(crate) name: String,
    pub(crate) model: Arc<dyn Graph>,
    pub(crate) model_sha256: [u8; 32],
    pub(crate) allow_guest_model_bytes: bool,
}

/// `wasi:nn/graph.graph`.
pub struct NnGraph(Arc<dyn Graph>);
/// `wasi:nn/inference.graph-execution-context`.
pub struct NnContext(Box<dyn Session>);
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
        let e = self.table.push(NnError {
            code,
            data: data.into(),
        })?;
        Ok(Err(e))
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
                let g = self
                    .table
                    .push(NnGraph(Arc::new(crate::backend::Native(Arc::new(m)))))?;
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
        match model.session() {
            Ok(s) => {
                let c = self.table.push(NnContext(s))?;
                Ok(Ok(c))
            }
            Err(e) => self.nn_err(ErrorCode::RuntimeError, e),
        }
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
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
        let mut named = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let NnTensor { dims, ty, data } = self.table.delete(t)?;
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
        let result = self.table.get_mut(&ctx)?.0.run(named);
        let outputs = match result {
            Ok(o) => o,
            Err(msg) => return self.nn_err(ErrorCode::InvalidArgument, msg),
        };
        let mut out = Vec::with_capacity(outputs.len());
        for t in outputs {
            let dims = match t
                .shape
                .iter()
                .map(|&d| u32::try_from(d))
                .collect::<Result<Vec<u32>, _>>()
            {
                Ok(d) => d,
                Err(_) => {
                    return self.nn_err(
                        ErrorCode::TooLarge,
                        format!("output `{}` has a dimension over u32", t.name),
                    )
                }
            };
            let r = self.table.push(NnTensor {
                dims,
                ty: tensor_type(t.dtype),
                data: t.data,
            })?;
            out.push((t.name, r));
        }
        Ok(Ok(out))
    }

    fn drop(&mut self, ctx: Resource<NnContext>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
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
        Ok(self.table.push(NnTensor { dims, ty, data })?)
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
        self.table.delete(t)?;
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
        Ok(())
    }
}
