//! Tensor helpers: element sizes, typed views and constructors.
use crate::{Dtype, Error, Tensor};

/// Parse a manifest dtype name.
pub fn parse_dtype(s: &str) -> Option<Dtype> {
    Some(match s {
        "f32" => Dtype::F32,
        "f64" => Dtype::F64,
        "i32" => Dtype::I32,
        "i64" => Dtype::I64,
        "u8" => Dtype::U8,
        _ => return None,
    })
}

/// Size in bytes of one element.
pub fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F32 | Dtype::I32 => 4,
        Dtype::F64 | Dtype::I64 => 8,
        Dtype::U8 => 1,
    }
}

/// A tensor of `f32` values.
pub fn from_f32(name: &str, shape: Vec<u64>, values: &[f32]) -> Tensor {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Tensor {
        name: name.to_string(),
        dtype: Dtype::F32,
        shape,
        data,
    }
}

/// A tensor of `dtype` from `f64` values (rounded for integer types).
pub fn from_f64_as(name: &str, dtype: Dtype, shape: Vec<u64>, values: &[f64]) -> Tensor {
    let mut data = Vec::with_capacity(values.len() * dtype_size(dtype));
    for &v in values {
        match dtype {
            Dtype::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::F64 => data.extend_from_slice(&v.to_le_bytes()),
            Dtype::I32 => data.extend_from_slice(&(v.round() as i32).to_le_bytes()),
            Dtype::I64 => data.extend_from_slice(&(v.round() as i64).to_le_bytes()),
            Dtype::U8 => data.push(v.round().clamp(0.0, 255.0) as u8),
        }
    }
    Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    }
}

/// The values of any tensor as `f32` (integers are converted).
pub fn to_f32(t: &Tensor) -> Result<Vec<f32>, Error> {
    let size = dtype_size(t.dtype);
    if !t.data.len().is_multiple_of(size) {
        return Err(Error::InvalidInput(format!(
            "tensor `{}`: {} bytes is not a whole number of elements",
            t.name,
            t.data.len()
        )));
    }
    Ok(t.data
        .chunks_exact(size)
        .map(|c| match t.dtype {
            Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            Dtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
            Dtype::F64 => {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }
            Dtype::I64 => {
                i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }
            Dtype::U8 => c[0] as f32,
        })
        .collect())
}

/// The tensor called `name` in `tensors`.
pub fn find<'a>(tensors: &'a [Tensor], name: &str) -> Result<&'a Tensor, Error> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::Inference(format!("the model produced no output named `{name}`")))
}
