//! The sandboxed backend: tract compiled to WebAssembly (`guest/tract-backend`,
//! SIMD128 and relaxed-SIMD kernels) running as its own component, one store
//! per session with its own memory limit. The model's bytes are parsed and
//! run only inside that sandbox; a malformed or hostile model can exhaust
//! only the sandbox's memory and time.

use crate::backend::{Graph, Session};
use crate::state::{LimitHit, Limiter};
use crate::tensor::Tensor;
use crate::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/backend",
        world: "sandboxed-backend",
    });
}

use bindings::exports::edgeml::backend::inference as wit;

pub(crate) struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The compiled backend component, shared by every sandboxed model of a runtime.
pub(crate) struct SandboxEngine {
    engine: Engine,
    pre: bindings::SandboxedBackendPre<SandboxState>,
    max_memory_bytes: usize,
    timeout: Duration,
    ticks: u64,
}

impl SandboxEngine {
    pub(crate) fn new(
        engine: &Engine,
        component: &Component,
        max_memory_bytes: usize,
        timeout: Duration,
        ticks: u64,
    ) -> Result<Self, Error> {
        let mut linker = Linker::<SandboxState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::Config(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| Error::Config(format!("sandboxed backend: {e:#}")))?;
        let pre = bindings::SandboxedBackendPre::new(pre).map_err(|e| {
            Error::Config(format!(
                "the sandboxed backend component does not export edgeml:backend: {e:#}"
            ))
        })?;
        Ok(SandboxEngine {
            engine: engine.clone(),
            pre,
            max_memory_bytes,
            timeout,
            ticks,
        })
    }

    /// Load `onnx` in a first sandbox (so a bad model fails at load time).
    pub(crate) fn load(self: &Arc<Self>, onnx: &[u8]) -> Result<Arc<dyn Graph>, Error> {
        let graph = SandboxGraph {
            engine: self.clone(),
            onnx: onnx.into(),
            idle: Arc::new(Mutex::new(Vec::new())),
        };
        let slot = graph.new_slot().map_err(|reason| Error::Model {
            backend: "sandboxed",
            reason,
        })?;
        graph
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
        Ok(Arc::new(graph))
    }
}

struct Slot {
    store: Store<SandboxState>,
    bindings: bindings::SandboxedBackend,
    session: ResourceAny,
}

struct SandboxGraph {
    engine: Arc<SandboxEngine>,
    onnx: Arc<[u8]>,
    idle: Arc<Mutex<Vec<Slot>>>,
}

impl SandboxGraph {
    fn new_slot(&self) -> Result<Slot, String> {
        let e = &self.engine;
        let limiter = Limiter::new(e.max_memory_bytes, 1 << 20, 64, 64, 4);
        let state = SandboxState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter,
        };
        let mut store = Store::new(&e.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(e.ticks);
        let bindings = e
            .pre
            .instantiate(&mut store)
            .map_err(|err| describe(&store, err, e.timeout))?;
        let loaded = bindings
            .edgeml_backend_inference()
            .call_load(&mut store, &self.onnx);
        let session = loaded
            .map_err(|err| describe(&store, err, e.timeout))?
            .map_err(|m| format!("sandboxed backend: {m}"))?;
        Ok(Slot {
            store,
            bindings,
            session,
        })
    }
}

impl Graph for SandboxGraph {
    fn session(&self) -> Result<Box<dyn Session>, String> {
        let pooled = self.idle.lock().ok().and_then(|mut p| p.pop());
        let slot = match pooled {
            Some(s) => s,
            None => self.new_slot()?,
        };
        Ok(Box::new(SandboxSession {
            slot: Some(slot),
            idle: self.idle.clone(),
            ticks: self.engine.ticks,
            timeout: self.engine.timeout,
        }))
    }
}

struct SandboxSession {
    slot: Option<Slot>,
    idle: Arc<Mutex<Vec<Slot>>>,
    ticks: u64,
    timeout: Duration,
}

impl Drop for SandboxSession {
    fn drop(&mut self) {
        if let (Some(slot), Ok(mut idle)) = (self.slot.take(), self.idle.lock()) {
            if idle.len() < 8 {
                idle.push(slot);
            }
        }
    }
}

impl Session for SandboxSession {
    fn memory_bytes(&self) -> usize {
        self.slot
            .as_ref()
            .map_or(0, |s| s.store.data().limiter.linear)
    }

    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let slot = self
            .slot
            .as_mut()
            .ok_or("the sandboxed backend was lost after an earlier failure")?;
        slot.store.set_epoch_deadline(self.ticks);
        slot.store.data_mut().limiter.hit = None;
        let inputs: Vec<wit::Tensor> = inputs.into_iter().map(to_wit).collect();
        let result = slot.bindings.edgeml_backend_inference().session().call_run(
            &mut slot.store,
            slot.session,
            &inputs,
        );
        match result {
            Ok(Ok(outputs)) => Ok(outputs.into_iter().map(from_wit).collect()),
            Ok(Err(message)) => Err(message),
            Err(err) => {
                let message = describe(&slot.store, err, self.timeout);
                self.slot = None; // a trapped sandbox is never reused
                Err(message)
            }
        }
    }
}

fn describe(store: &Store<SandboxState>, err: wasmtime::Error, timeout: Duration) -> String {
    match store.data().limiter.hit {
        Some(LimitHit::Memory) => format!(
            "the sandboxed backend exceeded its memory limit of {} bytes",
            store.data().limiter.memory_bytes
        ),
        Some(LimitHit::Table) => "the sandboxed backend exceeded its table limit".into(),
        Some(LimitHit::Handles | LimitHit::Contexts) => {
            "the sandboxed backend exceeded a handle limit".into()
        }
        None => match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("the sandboxed backend ran past the {timeout:?} limit")
            }
            _ => format!("the sandboxed backend trapped: {err:#}"),
        },
    }
}

crate::backend::wit_tensor_conversions!(
    crate::sandbox::bindings::exports::edgeml::backend::inference
);
