//! The bundle manifest: what the model is, what it takes and returns, and how
//! its component should preprocess raw media.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Current manifest schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// Unsigned byte.
    U8,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::U8 => 1,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::I32 => "i32",
            Dtype::I64 => "i64",
            Dtype::U8 => "u8",
        })
    }
}

/// One dimension: fixed (`64`) or symbolic (`"N"`), as written in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A symbol; its value comes from the tensor given at run time.
    Symbolic(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// Name, element type and shape of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Tensor name in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape; symbolic dimensions take their value at run time.
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// Does a concrete `shape` fit this spec? Returns why not.
    pub fn check_shape(&self, shape: &[u64]) -> std::result::Result<(), String> {
        if shape.len() != self.shape.len() {
            return Err(format!(
                "rank {} (shape {shape:?}), expected rank {} ({})",
                shape.len(),
                self.shape.len(),
                self.shape_string()
            ));
        }
        for (i, (got, want)) in shape.iter().zip(&self.shape).enumerate() {
            if let Dim::Fixed(n) = want {
                if got != n {
                    return Err(format!(
                        "dimension {i} is {got}, expected {n} (shape {shape:?}, expected {})",
                        self.shape_string()
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[N, 64]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// A SHA-256 digest with the length of what it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentDigest {
    /// Hex SHA-256.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

/// The model the bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model format; `onnx` is the only one today.
    pub format: String,
    /// Digest of the model section's bytes.
    #[serde(flatten)]
    pub digest: ContentDigest,
}

/// The signed manifest of a bundle (custom section `edgeml.manifest`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// Model name (also the name the component loads it by through `wasi:nn`).
    pub name: String,
    /// Model version.
    pub version: semver::Version,
    /// When the bundle was packed (RFC 3339, UTC).
    pub created: String,
    /// Oldest host version that can run the bundle.
    pub min_host_version: semver::Version,
    /// The model section.
    pub model: ModelInfo,
    /// The component (every section but edgeml's and the signature's).
    pub component: ContentDigest,
    /// Model inputs.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs.
    pub outputs: Vec<TensorSpec>,
    /// Class labels, indexed like the model's score output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The component's preprocessing parameters (component-specific JSON).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub preprocessing: serde_json::Value,
    /// What the model saw on its reference data (`edgeml pack --reference`):
    /// devices and the collector measure drift against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// Self-test vectors (`edgeml pack --self-test`): inputs and the answers
    /// the model must give. A device runs them before it switches to this
    /// version, and rolls back if any fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub self_test: Vec<SelfTest>,
    /// Owner, intended use, training data, code revision and evaluation
    /// (`edgeml pack --card`), signed with the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<crate::card::ModelCard>,
}

/// Most self-test vectors a manifest may carry.
pub const MAX_SELF_TESTS: usize = 32;

/// One self-test vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// A name for reports (usually the input's file name).
    pub name: String,
    /// What to feed the model.
    pub input: SelfTestInput,
    /// The expected top label, when the model has labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Expected output values (f32), compared within `tolerance`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<SelfTestTensor>,
    /// Largest absolute difference allowed per output value.
    #[serde(default = "default_tolerance")]
    pub tolerance: f32,
}

fn default_tolerance() -> f32 {
    1e-3
}

/// A self-test input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SelfTestInput {
    /// Raw media, decoded by the component.
    Media {
        /// Media type (`image/png`, `audio/wav`, `application/json`).
        media_type: String,
        /// The bytes, base64 (standard alphabet, padded).
        base64: String,
    },
    /// Named f32 tensors.
    Tensors {
        /// The tensors.
        tensors: Vec<SelfTestTensor>,
    },
}

/// A named f32 tensor in a self-test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTestTensor {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Values in row-major order.
    pub values: Vec<f32>,
}

/// Number of evenly spaced ranks a [`NumericBaseline`] keeps (0, 1/100, ..., 1).
pub const BASELINE_QUANTILES: usize = 101;

/// Distributions of a model's monitored features over a reference dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// How many reference examples it was computed from.
    pub examples: u64,
    /// Numeric features: monitoring features and per-label scores.
    #[serde(default)]
    pub numeric: Vec<NumericBaseline>,
    /// Categorical features (the predicted label).
    #[serde(default)]
    pub categorical: Vec<CategoricalBaseline>,
}

/// A numeric feature's reference distribution as its quantile function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NumericBaseline {
    /// Feature name (`pixels.mean`, `score.7`).
    pub name: String,
    /// Observations.
    pub count: u64,
    /// Values at ranks 0, 1/100, ..., 1 ([`BASELINE_QUANTILES`] of them, non-decreasing).
    pub quantiles: Vec<f64>,
}

/// A categorical feature's reference frequencies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CategoricalBaseline {
    /// Feature name (`prediction`).
    pub name: String,
    /// Count per category.
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// Longest model name accepted.
pub const MAX_NAME_LEN: usize = 128;

impl Manifest {
    /// Check the fields that the type system does not.
    pub fn validate(&self) -> Result<()> {
        if self.schema != SCHEMA_VERSION {
            return Err(Error::Manifest(format!(
                "schema version {} is not supported (expected {SCHEMA_VERSION})",
                self.schema
            )));
        }
        validate_name(&self.name)?;
        if self.model.format != "onnx" {
            return Err(Error::Manifest(format!(
                "model format `{}` is not supported (expected onnx)",
                self.model.format
            )));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(Error::Manifest(
                "the model must have at least one input and one output".into(),
            ));
        }
        if let Some(b) = &self.baseline {
            for f in &b.numeric {
                let sorted = f.quantiles.windows(2).all(|w| w[0] <= w[1]);
                if f.quantiles.len() != BASELINE_QUANTILES
                    || !sorted
                    || f.quantiles.iter().any(|q| !q.is_finite())
                {
                    return Err(Error::Manifest(format!(
                        "baseline feature `{}` must have {BASELINE_QUANTILES} finite, non-decreasing quantiles",
                        f.name
                    )));
                }
            }
        }
        if let Some(card) = &self.card {
            card.validate()?;
        }
        if self.self_test.len() > MAX_SELF_TESTS {
            return Err(Error::Manifest(format!(
                "{} self-test vectors; at most {MAX_SELF_TESTS}",
                self.self_test.len()
            )));
        }
        for t in &self.self_test {
            if t.label.is_none() && t.outputs.is_empty() {
                return Err(Error::Manifest(format!(
                    "self-test `{}` expects nothing: give a label or output values",
                    t.name
                )));
            }
            if !(t.tolerance.is_finite() && t.tolerance >= 0.0) {
                return Err(Error::Manifest(format!(
                    "self-test `{}`: tolerance must be a finite number >= 0",
                    t.name
                )));
            }
        }
        Ok(())
    }

    /// Find an input by name.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }
}

/// Model names are 1..=128 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Manifest(format!(
            "model name `{name}` must be 1-{MAX_NAME_LEN} characters of letters, digits, `.`, `_` or `-`"
        )))
    }
}
