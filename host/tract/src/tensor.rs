//! Named tensors: the data that crosses every API in edgeml.

use edgeml_bundle::Dtype;

/// A named tensor: little-endian, row-major element bytes.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    /// Tensor name (a model input or output name).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Concrete shape.
    pub shape: Vec<u64>,
    /// `product(shape) * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Tensor {
    /// An `f32` tensor.
    pub fn from_f32(name: impl Into<String>, shape: Vec<u64>, values: &[f32]) -> Self {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data,
        }
    }

    /// Number of elements the shape describes.
    pub fn element_count(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The values as `f32` (integer types are converted; `None` if the data
    /// length does not match the dtype).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let size = self.dtype.size();
        if !self.data.len().is_multiple_of(size) {
            return None;
        }
        Some(
            self.data
                .chunks_exact(size)
                .map(|c| match self.dtype {
                    Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    Dtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
                    Dtype::F64 => {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    }
                    Dtype::I64 => {
                        i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    }
                    Dtype::U8 => f32::from(c[0]),
                })
                .collect(),
        )
    }
}
