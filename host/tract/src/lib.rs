//! edgeml's inference core: an ONNX model parsed, optimised and planned once
//! with tract, then run on named [`Tensor`]s from any number of [`Session`]s.
//!
//! The host runtime uses it natively; the sandboxed backend is this same
//! crate compiled to WebAssembly (`guest/tract-backend`), so both backends
//! share one implementation and agree on results.
//!
//! ```no_run
//! # fn main() -> Result<(), edgeml_tract::Error> {
//! let onnx = std::fs::read("models/digits/digits.onnx").unwrap();
//! let model = std::sync::Arc::new(edgeml_tract::Model::load(&onnx)?);
//! let mut session = model.session()?;
//! let x = edgeml_tract::Tensor::from_f32("X", vec![1, 64], &[0.0; 64]);
//! let outputs = session.run(vec![x])?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod specialize;
mod tensor;

pub use edgeml_bundle::Dtype;
pub use specialize::{parse_constant, parse_shape, specialize, Specialize};
pub use tensor::Tensor;

use edgeml_bundle::{Dim, TensorSpec};
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Errors from loading or running a model. Messages say what was wrong and
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ONNX model could not be parsed, optimised or planned.
    #[error("{0}")]
    Load(String),
    /// The inputs do not fit the model, or the computation failed.
    #[error("{0}")]
    Run(String),
}

/// A model optimised and planned once; share it (`Arc`) between sessions.
#[derive(Debug)]
pub struct Model {
    plan: Arc<TypedSimplePlan>,
    inputs: Vec<(String, Dtype)>,
    outputs: Vec<String>,
}

fn model_error(e: impl std::fmt::Display) -> Error {
    Error::Load(e.to_string())
}

impl Model {
    /// Parse, optimise and plan an ONNX model. A panic inside tract (a
    /// malformed model) is caught and returned as [`Error::Load`].
    pub fn load(onnx: &[u8]) -> Result<Self, Error> {
        let model = guard(|| {
            tract_onnx::onnx()
                .model_for_read(&mut &onnx[..])
                .and_then(|m| m.into_optimized())
                .map_err(|e| format!("{e:#}"))
        })
        .map_err(model_error)?
        .map_err(model_error)?;
        let inputs = model
            .input_outlets()
            .map_err(model_error)?
            .iter()
            .map(|o| {
                let name = model.node(o.node).name.clone();
                let dt = model.outlet_fact(*o).map_err(model_error)?.datum_type;
                Ok((
                    name,
                    from_datum(dt)
                        .ok_or_else(|| model_error(format!("input has unsupported type {dt:?}")))?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let outputs = model
            .output_outlets()
            .map_err(model_error)?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let plan = TypedSimplePlan::new(model).map_err(model_error)?;
        Ok(Model {
            plan,
            inputs,
            outputs,
        })
    }

    /// A new session; its scratch buffers are reused across its runs.
    pub fn session(self: &Arc<Self>) -> Result<Session, Error> {
        let state = TypedSimpleState::new(&self.plan).map_err(model_error)?;
        Ok(Session {
            model: self.clone(),
            state,
        })
    }

    /// Input names and dtypes, in graph order.
    pub fn inputs(&self) -> &[(String, Dtype)] {
        &self.inputs
    }

    /// Output names, in graph order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }
}

/// One execution context of a [`Model`].
#[derive(Debug)]
pub struct Session {
    model: Arc<Model>,
    state: TypedSimpleState,
}

impl Session {
    /// Run the model on named inputs (any order; every input required).
    /// A panic inside tract is caught and returned as [`Error::Run`].
    pub fn run(&mut self, named: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        self.run_inner(named).map_err(Error::Run)
    }

    fn run_inner(&mut self, named: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let model = &self.model;
        let inputs: TVec<TValue> = order_inputs(&model.inputs, named)?
            .iter()
            .map(|t| to_tract(t).map(IntoTValue::into_tvalue))
            .collect::<Result<_, _>>()?;
        let state = &mut self.state;
        let outputs = guard(move || state.run(inputs).map_err(|e| format!("{e:#}")));
        clear_upper_vector_state();
        let outputs = outputs??;
        outputs
            .into_iter()
            .zip(&model.outputs)
            .map(|(v, name)| from_tract(name, &v))
            .collect()
    }
}

/// After tract's AVX-512 kernels, leave the upper halves of the vector
/// registers clean (`vzeroupper`). On Intel CPUs, dirty upper state makes every
/// later legacy-SSE instruction slow, and the guest code wasmtime compiled
/// runs right after inference: measured 840 µs per digits call instead of
/// about 30 µs. AMD CPUs do not pay this; the instruction is cheap anyway.
/// Public for code that runs tract itself next to edgeml (the benchmark).
#[inline]
pub fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn zeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked just above).
            unsafe { zeroupper() }
        }
    }
}

/// Match named tensors to a model's inputs: every input present once with
/// its dtype and as many bytes as its shape needs, nothing else. Returns
/// them in the model's order. Every backend checks its inputs with this, so
/// they refuse the same requests with the same messages.
pub fn order_inputs(
    expected: &[(String, Dtype)],
    mut named: Vec<Tensor>,
) -> Result<Vec<Tensor>, String> {
    let mut ordered = Vec::with_capacity(expected.len());
    for (name, dtype) in expected {
        let pos = named
            .iter()
            .position(|t| &t.name == name)
            .ok_or_else(|| format!("missing input `{name}`"))?;
        let t = named.swap_remove(pos);
        if t.dtype != *dtype {
            return Err(format!(
                "input `{name}` is {}, the model expects {dtype}",
                t.dtype
            ));
        }
        let needed = t
            .shape
            .iter()
            .try_fold(t.dtype.size() as u64, |n, &d| n.checked_mul(d));
        if needed != Some(t.data.len() as u64) {
            return Err(format!(
                "input `{}` has {} bytes of data, its shape {:?} of {} needs {}",
                t.name,
                t.data.len(),
                t.shape,
                t.dtype,
                needed.map_or_else(|| "more than memory holds".to_string(), |n| n.to_string())
            ));
        }
        ordered.push(t);
    }
    if let Some(extra) = named.first() {
        let known: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        return Err(format!(
            "unknown input `{}`; the model's inputs are {known:?}",
            extra.name
        ));
    }
    Ok(ordered)
}

/// Run `f`, turning a panic inside the inference engine into an error: a
/// malformed model or input must not take the host process down. (Every
/// backend wraps its engine calls in this.)
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("the inference engine failed: {msg}")
    })
}

fn datum(d: Dtype) -> DatumType {
    match d {
        Dtype::F32 => DatumType::F32,
        Dtype::F64 => DatumType::F64,
        Dtype::I32 => DatumType::I32,
        Dtype::I64 => DatumType::I64,
        Dtype::U8 => DatumType::U8,
    }
}

fn from_datum(d: DatumType) -> Option<Dtype> {
    Some(match d {
        DatumType::F32 => Dtype::F32,
        DatumType::F64 => Dtype::F64,
        DatumType::I32 => Dtype::I32,
        DatumType::I64 => Dtype::I64,
        DatumType::U8 => Dtype::U8,
        _ => return None,
    })
}

fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor, String> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    // SAFETY: every `Dtype` is a plain little-endian number type, valid for
    // any bytes; `from_raw_dt` checks the length against the shape. (One
    // copy, no zero fill first.)
    unsafe { tract_onnx::prelude::Tensor::from_raw_dt(datum(t.dtype), &shape, &t.data) }
        .map_err(|e| format!("{e:#}"))
}

fn from_tract(name: &str, v: &tract_onnx::prelude::Tensor) -> Result<Tensor, String> {
    // tract may compute integer outputs (e.g. ArgMax) as symbolic dimensions.
    if v.datum_type() == DatumType::TDim {
        let cast = v
            .cast_to_dt(DatumType::I64)
            .map_err(|e| format!("output `{name}`: {e:#}"))?;
        return from_tract(name, &cast);
    }
    let dtype = from_datum(v.datum_type()).ok_or_else(|| {
        format!(
            "output `{name}` has type {:?}, which edgeml does not carry",
            v.datum_type()
        )
    })?;
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape: v.shape().iter().map(|&d| d as u64).collect(),
        data: v.as_bytes().to_vec(),
    })
}

/// The edgeml dtype of an ONNX `TensorProto.DataType`.
fn onnx_dtype(elem_type: i32) -> Option<Dtype> {
    Some(match elem_type {
        1 => Dtype::F32,
        2 => Dtype::U8,
        6 => Dtype::I32,
        7 => Dtype::I64,
        11 => Dtype::F64,
        _ => return None,
    })
}

/// Read the IO schema (names, dtypes, shapes with symbolic dimensions) of an
/// ONNX model, as `edgeml pack` writes it into the manifest. Graph inputs that
/// are initializers (weights) are not model inputs and are left out.
pub fn io_schema(onnx: &[u8]) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), Error> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &onnx[..])
        .map_err(model_error)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| model_error("the ONNX model has no graph"))?;
    let weights: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let spec = |v: &pb::ValueInfoProto| -> Result<TensorSpec, Error> {
        let tensor_type = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => t,
            _ => return Err(model_error(format!("`{}` is not a tensor", v.name))),
        };
        let dtype = onnx_dtype(tensor_type.elem_type).ok_or_else(|| {
            model_error(format!(
                "`{}` has ONNX element type {}, which edgeml does not carry",
                v.name, tensor_type.elem_type
            ))
        })?;
        let shape = tensor_type
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match &d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n > 0 => {
                            Dim::Fixed(*n as u64)
                        }
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(p))
                            if !p.is_empty() =>
                        {
                            Dim::Symbolic(p.clone())
                        }
                        _ => Dim::Symbolic(format!("d{i}")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(TensorSpec {
            name: v.name.clone(),
            dtype,
            shape,
        })
    };
    let inputs = graph
        .input
        .iter()
        .filter(|v| !weights.contains(v.name.as_str()))
        .map(spec)
        .collect::<Result<_, _>>()?;
    let outputs = graph.output.iter().map(spec).collect::<Result<_, _>>()?;
    Ok((inputs, outputs))
}
