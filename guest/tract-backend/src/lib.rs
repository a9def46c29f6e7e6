//! The sandboxed inference backend: `edgeml-tract` (the same code as the
//! native backend) compiled to WebAssembly with SIMD128 and relaxed-SIMD
//! kernels, exporting `edgeml:backend/inference`. The host runs it in its own
//! store with its own memory limit and forwards `wasi:nn` calls to it.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/backend",
        world: "sandboxed-backend",
    });
}

use bindings::exports::edgeml::backend::inference::{Dtype, Guest, GuestSession, Session, Tensor};
use std::cell::RefCell;
use std::sync::Arc;

struct Backend;

struct TractSession(RefCell<edgeml_tract::Session>);

fn dtype_in(d: Dtype) -> edgeml_tract::Dtype {
    match d {
        Dtype::F32 => edgeml_tract::Dtype::F32,
        Dtype::F64 => edgeml_tract::Dtype::F64,
        Dtype::I32 => edgeml_tract::Dtype::I32,
        Dtype::I64 => edgeml_tract::Dtype::I64,
        Dtype::U8 => edgeml_tract::Dtype::U8,
    }
}

fn dtype_out(d: edgeml_tract::Dtype) -> Dtype {
    match d {
        edgeml_tract::Dtype::F32 => Dtype::F32,
        edgeml_tract::Dtype::F64 => Dtype::F64,
        edgeml_tract::Dtype::I32 => Dtype::I32,
        edgeml_tract::Dtype::I64 => Dtype::I64,
        edgeml_tract::Dtype::U8 => Dtype::U8,
    }
}

impl Guest for Backend {
    type Session = TractSession;

    fn load(onnx: Vec<u8>) -> Result<Session, String> {
        let model = Arc::new(edgeml_tract::Model::load(&onnx).map_err(|e| e.to_string())?);
        let session = model.session().map_err(|e| e.to_string())?;
        Ok(Session::new(TractSession(RefCell::new(session))))
    }
}

impl GuestSession for TractSession {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let inputs = inputs
            .into_iter()
            .map(|t| edgeml_tract::Tensor {
                name: t.name,
                dtype: dtype_in(t.dtype),
                shape: t.shape,
                data: t.data,
            })
            .collect();
        let outputs = self.0.borrow_mut().run(inputs).map_err(|e| e.to_string())?;
        Ok(outputs
            .into_iter()
            .map(|t| Tensor {
                name: t.name,
                dtype: dtype_out(t.dtype),
                shape: t.shape,
                data: t.data,
            })
            .collect())
    }
}

bindings::export!(Backend with_types_in bindings);
