//! Tensors, inputs and predictions: the data that crosses the host API.

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
        if self.data.len() % size != 0 {
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

/// Input to [`crate::Model::predict`].
#[derive(Debug, Clone)]
pub enum Input {
    /// Named tensors, checked against the manifest's IO schema and fed to the model.
    Tensors(Vec<Tensor>),
    /// Raw media (`image/png`, `image/jpeg`, `audio/wav`, `application/json`),
    /// decoded inside the sandbox by the component.
    Media {
        /// The media type.
        media_type: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

impl Input {
    /// Raw media with its type guessed from a file extension (`png`, `jpg`,
    /// `jpeg`, `wav`, `json`); `None` for anything else.
    pub fn media_for_extension(ext: &str, bytes: Vec<u8>) -> Option<Self> {
        let media_type = match ext.to_ascii_lowercase().as_str() {
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            "wav" => "audio/wav",
            "json" => "application/json",
            _ => return None,
        };
        Some(Input::Media {
            media_type: media_type.into(),
            bytes,
        })
    }
}

/// A label and its score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoredLabel {
    /// Index in the model's score output.
    pub index: u32,
    /// Label from the manifest.
    pub label: String,
    /// Score.
    pub score: f32,
}

/// The result of one prediction.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Named output tensors.
    pub outputs: Vec<Tensor>,
    /// Best labels first, when the model has labels.
    pub scores: Option<Vec<ScoredLabel>>,
    /// Monitoring features (names in [`crate::ModelMetadata::monitoring_features`]).
    pub monitoring: Vec<f32>,
}

impl Prediction {
    /// The output called `name`.
    pub fn output(&self, name: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// What a loaded model's component declares about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelMetadata {
    /// The component's own name and version (e.g. `edgeml-generic@0.1.0`).
    pub component: String,
    /// Media types `predict` accepts as raw bytes.
    pub media_types: Vec<String>,
    /// Names of the monitoring features, in order.
    pub monitoring_features: Vec<String>,
}
