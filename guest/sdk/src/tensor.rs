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

/// Check that `t` holds a whole number of elements.
fn whole(t: &Tensor) -> Result<(), Error> {
    if t.data.len().is_multiple_of(dtype_size(t.dtype)) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "tensor `{}`: {} bytes is not a whole number of elements",
        t.name,
        t.data.len()
    )))
}

/// Call `f` with every `step`-th element of `data` (little-endian `dtype`
/// values) as `f32`, integers converted; the dtype is matched once, not per
/// element.
fn each_f32(dtype: Dtype, data: &[u8], step: usize, mut f: impl FnMut(f32)) {
    let step = step.max(1);
    match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .step_by(step)
            .for_each(|c| f(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::I32 => data
            .chunks_exact(4)
            .step_by(step)
            .for_each(|c| f(i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)),
        Dtype::F64 => data.chunks_exact(8).step_by(step).for_each(|c| {
            f(f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
        }),
        Dtype::I64 => data.chunks_exact(8).step_by(step).for_each(|c| {
            f(i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
        }),
        Dtype::U8 => data.iter().step_by(step).for_each(|&b| f(b as f32)),
    }
}

/// The values of any tensor as `f32` (integers are converted).
pub fn to_f32(t: &Tensor) -> Result<Vec<f32>, Error> {
    whole(t)?;
    let mut out = Vec::with_capacity(t.data.len() / dtype_size(t.dtype));
    each_f32(t.dtype, &t.data, 1, |x| out.push(x));
    Ok(out)
}

/// [`crate::stats`] of a tensor's values, read in place (no `f32` copy).
pub fn stats(t: &Tensor) -> Result<[f32; 4], Error> {
    whole(t)?;
    let mut acc = crate::Stats::default();
    let step = crate::stats_step(t.data.len() / dtype_size(t.dtype));
    if t.dtype == Dtype::F32 && step == 1 {
        // Every value: whole blocks in SIMD lanes, then the rest one by one.
        let mut blocks = t.data.chunks_exact(256);
        for b in &mut blocks {
            if let Ok(b) = b.try_into() {
                acc.push_block(b);
            }
        }
        each_f32(Dtype::F32, blocks.remainder(), 1, |x| acc.push(x));
    } else {
        each_f32(t.dtype, &t.data, step, |x| acc.push(x));
    }
    Ok(acc.finish())
}

/// The tensor called `name` in `tensors`.
pub fn find<'a>(tensors: &'a [Tensor], name: &str) -> Result<&'a Tensor, Error> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::Inference(format!("the model produced no output named `{name}`")))
}
