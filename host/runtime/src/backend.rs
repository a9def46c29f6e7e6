//! Inference backends behind the `wasi:nn` host: native tract, or tract
//! compiled to WebAssembly in its own sandbox ([`crate::sandbox`]).

use crate::tensor::Tensor;
use std::sync::Arc;

/// A loaded model that hands out sessions.
pub(crate) trait Graph: Send + Sync {
    fn session(&self) -> Result<Box<dyn Session>, String>;
}

/// One execution context (scratch state reused across runs).
pub(crate) trait Session: Send {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String>;
}

/// tract, native code in the host process.
pub(crate) struct Native(pub(crate) Arc<edgeml_tract::Model>);

impl Graph for Native {
    fn session(&self) -> Result<Box<dyn Session>, String> {
        Ok(Box::new(self.0.session().map_err(|e| e.to_string())?))
    }
}

impl Session for edgeml_tract::Session {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        edgeml_tract::Session::run(self, inputs).map_err(|e| e.to_string())
    }
}
