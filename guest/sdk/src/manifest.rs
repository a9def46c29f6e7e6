use crate::{Dim, Dtype, Error, TensorSpec};
use serde::Deserialize;
use std::cell::OnceCell;

/// The parts of the bundle's signed manifest a component uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Model name; the host registers the model with `wasi:nn` under this name.
    pub name: String,
    /// Model semantic version.
    pub version: String,
    /// Model inputs.
    pub inputs: Vec<Spec>,
    /// Model outputs.
    pub outputs: Vec<Spec>,
    /// Class labels (may be empty).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Component-specific preprocessing parameters.
    #[serde(default)]
    pub preprocessing: serde_json::Value,
}

/// A tensor spec as the manifest writes it: `{"name": "X", "dtype": "f32", "shape": ["N", 64]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Spec {
    /// Tensor name.
    pub name: String,
    /// Element type: `f32`, `f64`, `i32`, `i64` or `u8`.
    pub dtype: String,
    /// Dimensions: numbers are fixed, strings are symbols.
    pub shape: Vec<serde_json::Value>,
}

impl Spec {
    /// The element type, if it is one the contract knows.
    pub fn dtype(&self) -> Option<Dtype> {
        crate::tensor::parse_dtype(&self.dtype)
    }

    /// The shape with every symbolic dimension set to `fill` (e.g. 1 for the batch).
    pub fn concrete_shape(&self, fill: u64) -> Vec<u64> {
        self.shape
            .iter()
            .map(|d| d.as_u64().unwrap_or(fill))
            .collect()
    }

    pub(crate) fn to_wit(&self) -> TensorSpec {
        TensorSpec {
            name: self.name.clone(),
            dtype: self.dtype().unwrap_or(Dtype::F32),
            shape: self
                .shape
                .iter()
                .map(|d| match d.as_u64() {
                    Some(n) => Dim::Fixed(n),
                    None => Dim::Symbolic(d.as_str().unwrap_or("?").to_string()),
                })
                .collect(),
        }
    }
}

impl Manifest {
    /// Deserialize this component's preprocessing parameters.
    pub fn preprocessing<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.preprocessing.clone())
            .map_err(|e| Error::Config(format!("preprocessing parameters in the manifest: {e}")))
    }
}

thread_local! {
    static MANIFEST: OnceCell<&'static Manifest> = const { OnceCell::new() };
}

/// The bundle's manifest, fetched from the host once per instance.
pub fn manifest() -> Result<&'static Manifest, Error> {
    MANIFEST.with(|cell| {
        if let Some(m) = cell.get() {
            return Ok(*m);
        }
        let json = crate::bindings::edgeml::model::host::manifest();
        let m: Manifest = serde_json::from_str(&json)
            .map_err(|e| Error::Config(format!("manifest from host is not valid: {e}")))?;
        let m: &'static Manifest = Box::leak(Box::new(m));
        let _ = cell.set(m);
        Ok(m)
    })
}
