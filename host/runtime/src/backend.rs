//! Inference backends behind the `wasi:nn` host: native tract, onnxruntime
//! (feature `onnxruntime`), or tract compiled to WebAssembly in its own
//! sandbox ([`crate::sandbox`]).

use crate::tensor::Tensor;
use std::sync::Arc;

/// A loaded model that hands out sessions.
pub(crate) trait Graph: Send + Sync {
    fn session(&self) -> Result<Box<dyn Session>, String>;
}

/// One execution context (scratch state reused across runs).
pub(crate) trait Session: Send {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String>;
    /// Memory this session holds for the guest beyond the shared model
    /// (the sandboxed backend's linear memory), charged to the guest's budget.
    fn memory_bytes(&self) -> usize {
        0
    }
}

/// tract, native code in the host process.
pub(crate) struct Tract(pub(crate) Arc<edgeml_tract::Model>);

impl Graph for Tract {
    fn session(&self) -> Result<Box<dyn Session>, String> {
        Ok(Box::new(self.0.session().map_err(|e| e.to_string())?))
    }
}

impl Session for edgeml_tract::Session {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        edgeml_tract::Session::run(self, inputs).map_err(|e| e.to_string())
    }
}

/// onnxruntime, native code in the host process.
#[cfg(feature = "onnxruntime")]
pub(crate) struct OnnxRuntime(pub(crate) Arc<edgeml_ort::Model>);

#[cfg(feature = "onnxruntime")]
impl Graph for OnnxRuntime {
    fn session(&self) -> Result<Box<dyn Session>, String> {
        Ok(Box::new(self.0.session().map_err(|e| e.to_string())?))
    }
}

#[cfg(feature = "onnxruntime")]
impl Session for edgeml_ort::Session {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        edgeml_ort::Session::run(self, inputs).map_err(|e| e.to_string())
    }
}

/// `to_wit` / `from_wit` between [`Tensor`] and a bindgen-generated `tensor`
/// record (the edgeml:model and edgeml:backend packages each declare one,
/// with the same fields and dtype cases).
macro_rules! wit_tensor_conversions {
    ($wit:path) => {
        use $wit as wit_conv;

        fn to_wit(t: crate::tensor::Tensor) -> wit_conv::Tensor {
            use edgeml_bundle::Dtype;
            use wit_conv as w;
            let dtype = match t.dtype {
                Dtype::F32 => w::Dtype::F32,
                Dtype::F64 => w::Dtype::F64,
                Dtype::I32 => w::Dtype::I32,
                Dtype::I64 => w::Dtype::I64,
                Dtype::U8 => w::Dtype::U8,
            };
            w::Tensor {
                name: t.name,
                dtype,
                shape: t.shape,
                data: t.data,
            }
        }

        fn from_wit(t: wit_conv::Tensor) -> crate::tensor::Tensor {
            use edgeml_bundle::Dtype;
            use wit_conv as w;
            let dtype = match t.dtype {
                w::Dtype::F32 => Dtype::F32,
                w::Dtype::F64 => Dtype::F64,
                w::Dtype::I32 => Dtype::I32,
                w::Dtype::I64 => Dtype::I64,
                w::Dtype::U8 => Dtype::U8,
            };
            crate::tensor::Tensor {
                name: t.name,
                dtype,
                shape: t.shape,
                data: t.data,
            }
        }
    };
}
pub(crate) use wit_tensor_conversions;
