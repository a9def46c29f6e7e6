use crate::bindings::wasi::nn::{
    errors::Error as NnError,
    graph::{load_by_name, Graph},
    inference::GraphExecutionContext,
    tensor::{Tensor as NnTensor, TensorType},
};
use crate::{manifest, Dtype, Error, Tensor};
use std::cell::OnceCell;

struct Session {
    // The graph must outlive its execution context.
    _graph: Graph,
    ctx: GraphExecutionContext,
}

thread_local! {
    static SESSION: OnceCell<Session> = const { OnceCell::new() };
}

fn nn_error(what: &str, e: NnError) -> Error {
    Error::Inference(format!("{what}: {:?}: {}", e.code(), e.data()))
}

fn to_nn(t: Dtype) -> TensorType {
    match t {
        Dtype::F32 => TensorType::Fp32,
        Dtype::F64 => TensorType::Fp64,
        Dtype::I32 => TensorType::I32,
        Dtype::I64 => TensorType::I64,
        Dtype::U8 => TensorType::U8,
    }
}

fn from_nn(t: TensorType) -> Result<Dtype, Error> {
    Ok(match t {
        TensorType::Fp32 => Dtype::F32,
        TensorType::Fp64 => Dtype::F64,
        TensorType::I32 => Dtype::I32,
        TensorType::I64 => Dtype::I64,
        TensorType::U8 => Dtype::U8,
        other => {
            return Err(Error::Inference(format!(
                "unsupported output tensor type {other:?}"
            )))
        }
    })
}

/// Run the bundle's model on `inputs` through `wasi:nn` and return its
/// outputs. The graph is loaded by name once per instance and reused.
pub fn compute(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
    SESSION.with(|cell| {
        if cell.get().is_none() {
            let m = manifest()?;
            let graph = load_by_name(&m.name).map_err(|e| nn_error("loading the model", e))?;
            let ctx = graph
                .init_execution_context()
                .map_err(|e| nn_error("creating an execution context", e))?;
            let _ = cell.set(Session { _graph: graph, ctx });
        }
        let session = cell
            .get()
            .ok_or_else(|| Error::Inference("no session".into()))?;
        let mut named = Vec::with_capacity(inputs.len());
        for t in inputs {
            let dims = t
                .shape
                .iter()
                .map(|&d| u32::try_from(d))
                .collect::<Result<Vec<u32>, _>>()
                .map_err(|_| {
                    Error::InvalidInput(format!("input `{}`: dimension over u32", t.name))
                })?;
            named.push((t.name, NnTensor::new(&dims, to_nn(t.dtype), &t.data)));
        }
        let outputs = session
            .ctx
            .compute(named)
            .map_err(|e| nn_error("inference", e))?;
        outputs
            .into_iter()
            .map(|(name, t)| {
                Ok(Tensor {
                    name,
                    dtype: from_nn(t.ty())?,
                    shape: t.dimensions().into_iter().map(u64::from).collect(),
                    data: t.data(),
                })
            })
            .collect()
    })
}
