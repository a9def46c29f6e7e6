//! Host bindings for the `edgeml:model/model` world (private: no wasmtime type
//! leaves this crate).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "edgeml:model/model",
    imports: { default: trappable },
    with: {
        "wasi:nn/graph.graph": crate::nn::NnGraph,
        "wasi:nn/tensor.tensor": crate::nn::NnTensor,
        "wasi:nn/inference.graph-execution-context": crate::nn::NnContext,
        "wasi:nn/errors.error": crate::nn::NnError,
    },
});
