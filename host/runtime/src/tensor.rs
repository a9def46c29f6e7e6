//! Inputs and predictions: the data that crosses the host API.

pub use edgeml_tract::Tensor;

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
    /// This prediction's id (32 hex digits, unique across a fleet): give it
    /// back with the true label when it is known.
    pub id: String,
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

    /// The first value of the first output, for a model without labels (a
    /// regression): what its error is measured on. Only that element is
    /// decoded; `None` for a model with labels or an empty output.
    pub fn first_value(&self) -> Option<f64> {
        if self.scores.is_some() {
            return None;
        }
        let t = self.outputs.first()?;
        let b = t.data.get(..t.dtype.size())?;
        Some(match t.dtype {
            crate::Dtype::F32 => f64::from(f32::from_le_bytes(b.try_into().ok()?)),
            crate::Dtype::F64 => f64::from_le_bytes(b.try_into().ok()?),
            crate::Dtype::I32 => f64::from(i32::from_le_bytes(b.try_into().ok()?)),
            crate::Dtype::I64 => i64::from_le_bytes(b.try_into().ok()?) as f64,
            crate::Dtype::U8 => f64::from(b[0]),
        })
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
