//! Per-store state: WASI (nothing granted), the wasi:nn host, and limits.

use crate::nn::NnHost;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Bytes of guest stderr kept per instance; an instance is retired once half full.
pub(crate) const STDERR_CAPACITY: usize = 256 << 10;

pub(crate) struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) nn: NnHost,
    pub(crate) manifest_json: Arc<str>,
    pub(crate) stderr: MemoryOutputPipe,
}

impl State {
    pub(crate) fn new(nn: NnHost, manifest_json: Arc<str>, limiter: Limiter) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No args, no environment, no preopened directories, no sockets, no
        // name lookups: the guest gets clocks, random and a captured stderr.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        State {
            wasi,
            table: ResourceTable::new(),
            limiter,
            nn,
            manifest_json,
            stderr,
        }
    }

    /// The tail of what the guest wrote to stderr, lossily decoded.
    pub(crate) fn stderr_tail(&self, max: usize) -> String {
        let bytes = self.stderr.contents();
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&bytes[start..]).trim().to_string()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::bindings::edgeml::model::host::Host for State {
    fn manifest(&mut self) -> wasmtime::Result<String> {
        Ok(self.manifest_json.to_string())
    }
}

impl crate::bindings::edgeml::model::types::Host for State {}

/// Which limit a guest ran into, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Memory,
    Table,
    /// Too many live `wasi:nn` resources (tensors, graphs, errors).
    Handles,
    /// Too many live `wasi:nn` execution contexts.
    Contexts,
}

/// Memory, table and instance limits; remembers which limit refused a growth
/// so the resulting trap can be reported as that limit.
///
/// `memory_bytes` is one budget for the whole instance: the sum of its
/// linear memories (`linear`) and of what the host holds for it (`host`:
/// `wasi:nn` tensors and backend sessions).
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) memory_bytes: usize,
    pub(crate) table_elements: usize,
    pub(crate) instances: usize,
    pub(crate) tables: usize,
    pub(crate) memories: usize,
    pub(crate) hit: Option<LimitHit>,
    pub(crate) linear: usize,
    pub(crate) host: usize,
}

impl Limiter {
    pub(crate) fn new(
        memory_bytes: usize,
        table_elements: usize,
        instances: usize,
        tables: usize,
        memories: usize,
    ) -> Limiter {
        Limiter {
            memory_bytes,
            table_elements,
            instances,
            tables,
            memories,
            hit: None,
            linear: 0,
            host: 0,
        }
    }

    /// Charge `bytes` of host memory held for the guest; refused (and
    /// remembered as a memory-limit hit) when the budget would be exceeded.
    pub(crate) fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        let total = self.linear.saturating_add(self.host).saturating_add(bytes);
        if total > self.memory_bytes {
            self.hit = Some(LimitHit::Memory);
            return Err(wasmtime::Error::msg(format!(
                "the guest's host-side allocations would take it past its memory limit of {} bytes",
                self.memory_bytes
            )));
        }
        self.host += bytes;
        Ok(())
    }

    /// Give back host memory charged with [`Limiter::charge`].
    pub(crate) fn refund(&mut self, bytes: usize) {
        self.host = self.host.saturating_sub(bytes);
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.linear.saturating_add(self.host).saturating_add(growth);
        if total > self.memory_bytes {
            self.hit = Some(LimitHit::Memory);
            return Ok(false);
        }
        self.linear += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Some(LimitHit::Table);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }
    fn tables(&self) -> usize {
        self.tables
    }
    fn memories(&self) -> usize {
        self.memories
    }
}
