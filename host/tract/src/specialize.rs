//! Making an exported ONNX model concrete at pack time: fixed input shapes
//! (`edgeml pack --input-shape NAME=DIMS`) and inputs folded into the graph
//! as constants (`--constant NAME=VALUE`, after which tract's optimiser
//! removes an `If` on that input). The result is an ordinary ONNX model, so
//! every backend (tract, onnxruntime, the sandbox) runs the same bytes.

use crate::{Dtype, Error};
use prost::Message as _;
use tract_onnx::pb;
use tract_onnx::prelude::Framework as _;
use tract_onnx::tract_hir::infer::{Factoid as _, InferenceModelExt as _};

/// How to specialise a model's inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Specialize {
    /// Inputs given a fixed shape: `(name, dims)`.
    pub shapes: Vec<(String, Vec<u64>)>,
    /// Inputs replaced by constants: `(name, values)`, row-major, converted
    /// to the input's element type. The shape is the one given in `shapes`,
    /// else the input's declared shape (which must then be fixed; a single
    /// value for a scalar).
    pub constants: Vec<(String, Vec<f64>)>,
}

impl Specialize {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty() && self.constants.is_empty()
    }
}

/// `NAME=1,3,224,224` (or `NAME=` for a scalar) as an input shape.
pub fn parse_shape(spec: &str) -> Result<(String, Vec<u64>), String> {
    let (name, dims) = split(spec, "NAME=DIMS, e.g. x=1,3,224,224")?;
    let dims = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("`{spec}`: dimension `{d}` is not a positive integer"))
        })
        .collect::<Result<_, _>>()?;
    Ok((name, dims))
}

/// `NAME=16000` or `NAME=1,0,2` (or `NAME=true`) as a constant input.
pub fn parse_constant(spec: &str) -> Result<(String, Vec<f64>), String> {
    let (name, values) = split(spec, "NAME=VALUE, e.g. sr=16000")?;
    let values: Vec<f64> = values
        .split(',')
        .map(str::trim)
        .map(|v| match v {
            "true" => Ok(1.0),
            "false" => Ok(0.0),
            v => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("`{spec}`: `{v}` is not a number")),
        })
        .collect::<Result<_, _>>()?;
    Ok((name, values))
}

fn split(spec: &str, expected: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((n, rest)) if !n.trim().is_empty() => Ok((n.trim().to_string(), rest.to_string())),
        _ => Err(format!("`{spec}`: expected {expected}")),
    }
}

/// Apply `spec` to an ONNX model and return the new model's bytes.
/// Errors name the input and say what it has.
pub fn specialize(onnx: &[u8], spec: &Specialize) -> Result<Vec<u8>, Error> {
    let load = |m: String| Error::Load(m);
    let mut model = tract_onnx::onnx()
        .proto_model_for_read(&mut &onnx[..])
        .map_err(|e| load(format!("{e:#}")))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| load("the ONNX model has no graph".into()))?;
    let weights: std::collections::HashSet<String> =
        graph.initializer.iter().map(|i| i.name.clone()).collect();
    let names: Vec<String> = graph
        .input
        .iter()
        .filter(|i| !weights.contains(&i.name))
        .map(|i| i.name.clone())
        .collect();
    let position = |graph: &pb::GraphProto, name: &str| {
        graph
            .input
            .iter()
            .position(|i| i.name == name && !weights.contains(name))
            .ok_or_else(|| {
                load(format!(
                    "the model has no input `{name}`; its inputs are {names:?}"
                ))
            })
    };
    for (name, dims) in &spec.shapes {
        let at = position(graph, name)?;
        let tensor = tensor_type(&mut graph.input[at])?;
        let declared = tensor.shape.as_ref().map(|s| s.dim.len());
        if declared.is_some_and(|rank| rank != dims.len()) {
            return Err(load(format!(
                "input `{name}` has rank {}, the shape {dims:?} has rank {}",
                declared.unwrap_or(0),
                dims.len()
            )));
        }
        tensor.shape = Some(pb::TensorShapeProto {
            dim: dims
                .iter()
                .map(|&d| pb::tensor_shape_proto::Dimension {
                    value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                    ..Default::default()
                })
                .collect(),
        });
    }
    for (name, values) in &spec.constants {
        let at = position(graph, name)?;
        let tensor = tensor_type(&mut graph.input[at])?;
        let dims: Vec<i64> = match &tensor.shape {
            None if values.len() == 1 => Vec::new(),
            None => {
                return Err(load(format!(
                    "input `{name}` has no declared shape; give it with --input-shape {name}=DIMS"
                )))
            }
            Some(s) => s
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => Ok(n),
                    _ => Err(load(format!(
                        "input `{name}` has a symbolic dimension; give its shape with \
                         --input-shape {name}=DIMS"
                    ))),
                })
                .collect::<Result<_, _>>()?,
        };
        let count = dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
        if count != Some(values.len() as i64) {
            let count = count.map_or_else(|| "too many".to_string(), |c| c.to_string());
            return Err(load(format!(
                "input `{name}` of shape {dims:?} takes {count} value(s), {} given",
                values.len()
            )));
        }
        let elem_type = tensor.elem_type;
        let raw_data = raw(elem_type, values)
            .map_err(|why| load(format!("constant for input `{name}`: {why}")))?;
        graph.input.remove(at);
        graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims,
            data_type: elem_type,
            raw_data,
            ..Default::default()
        });
    }
    if !spec.constants.is_empty() {
        fold_constant_ifs(&mut model)?;
    }
    Ok(model.encode_to_vec())
}

/// Replace every top-level `If` whose condition tract's analysis can compute
/// from constants by the nodes of the branch it takes (then again, for Ifs
/// that branch contained). tract folds a constant `If` only after typing,
/// which fails first when the two branches give different shapes, as
/// exported models' mode switches often do.
fn fold_constant_ifs(model: &mut pb::ModelProto) -> Result<(), Error> {
    for _ in 0..64 {
        let parsed = tract_onnx::onnx()
            .parse(model, None)
            .map_err(|e| Error::Load(format!("{e:#}")))?;
        let mut inference = parsed.model;
        // Facts as far as analysis gets; an If it cannot resolve stays.
        let _ = inference.analyse(false);
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| Error::Load("no graph".into()))?;
        let decided = graph.node.iter().enumerate().find_map(|(at, node)| {
            if node.op_type != "If" {
                return None;
            }
            let cond = parsed.outlets_by_name.get(node.input.first()?)?;
            let value = inference.outlet_fact(*cond).ok()?.value.concretize()?;
            Some((at, value.cast_to_scalar::<bool>().ok()?))
        });
        let Some((at, cond)) = decided else {
            return Ok(());
        };
        inline_branch(graph, at, cond)?;
    }
    Ok(())
}

fn inline_branch(graph: &mut pb::GraphProto, at: usize, cond: bool) -> Result<(), Error> {
    let wanted = if cond { "then_branch" } else { "else_branch" };
    let node = graph.node[at].clone();
    let refuse = |why: String| Error::Load(format!("cannot inline If node `{}`: {why}", node.name));
    let branch = node
        .attribute
        .iter()
        .find(|a| a.name == wanted)
        .and_then(|a| a.g.clone())
        .ok_or_else(|| refuse(format!("it has no {wanted}")))?;
    if branch.output.len() != node.output.len() {
        return Err(refuse(format!(
            "its {wanted} has {} outputs, the node {}",
            branch.output.len(),
            node.output.len()
        )));
    }
    if !branch.sparse_initializer.is_empty() {
        return Err(refuse(format!("its {wanted} has sparse initializers")));
    }
    // The branch's names move into the graph: they must not be taken there.
    let mut taken: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|i| i.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    for name in node.output.iter() {
        taken.remove(name.as_str());
    }
    let defined = branch.initializer.iter().map(|i| i.name.as_str()).chain(
        branch
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str)),
    );
    for name in defined {
        if !name.is_empty() && taken.contains(name) {
            return Err(refuse(format!(
                "its {wanted} defines `{name}`, which the graph also defines"
            )));
        }
    }
    // The branch's nodes keep their names; each If output becomes an
    // Identity of the branch output in the same position.
    let mut nodes = branch.node.clone();
    for (inner, outer) in branch.output.iter().zip(&node.output) {
        if outer.is_empty() {
            continue;
        }
        nodes.push(pb::NodeProto {
            name: format!("{}/{outer}", node.name),
            op_type: "Identity".into(),
            input: vec![inner.name.clone()],
            output: vec![outer.clone()],
            ..Default::default()
        });
    }
    graph.initializer.extend(branch.initializer.iter().cloned());
    graph.node.splice(at..=at, nodes);
    Ok(())
}

fn tensor_type(v: &mut pb::ValueInfoProto) -> Result<&mut pb::type_proto::Tensor, Error> {
    let name = v.name.clone();
    match v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(pb::type_proto::Value::TensorType(t)) => Ok(t),
        _ => Err(Error::Load(format!("input `{name}` is not a tensor"))),
    }
}

/// Little-endian bytes of `values` as ONNX element type `elem_type`; a value
/// the type cannot hold exactly (a fraction for an integer, out of range) is
/// refused rather than rounded.
fn raw(elem_type: i32, values: &[f64]) -> Result<Vec<u8>, String> {
    const BOOL: i32 = 9;
    let dtype = match elem_type {
        BOOL => None,
        other => Some(crate::onnx_dtype(other).ok_or_else(|| {
            format!(
                "ONNX element type {other} cannot be a constant (float, double, int32, int64, \
                 uint8 or bool can)"
            )
        })?),
    };
    let exact = |v: f64, lo: f64, hi: f64, ty: &str| {
        if v.fract() == 0.0 && (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is not a {ty}"))
        }
    };
    let mut out = Vec::with_capacity(values.len() * dtype.map_or(1, Dtype::size));
    for &v in values {
        match dtype {
            None => out.push(u8::from(exact(v, 0.0, 1.0, "bool (0 or 1)")? != 0.0)),
            Some(Dtype::F32) => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Some(Dtype::F64) => out.extend_from_slice(&v.to_le_bytes()),
            Some(Dtype::I32) => out.extend_from_slice(
                &(exact(v, i32::MIN as f64, i32::MAX as f64, "32-bit integer")? as i32)
                    .to_le_bytes(),
            ),
            Some(Dtype::I64) => out.extend_from_slice(
                // f64 holds integers exactly up to 2^53.
                &(exact(
                    v,
                    -(2f64.powi(53)),
                    2f64.powi(53),
                    "64-bit integer within ±2^53",
                )? as i64)
                    .to_le_bytes(),
            ),
            Some(Dtype::U8) => out.push(exact(v, 0.0, 255.0, "uint8")? as u8),
        }
    }
    Ok(out)
}
