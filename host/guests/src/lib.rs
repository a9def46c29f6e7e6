//! The guest components built from `guest/` (by this crate's build script,
//! for `wasm32-wasip2`), for the programs that embed them:
//!
//! - `edgeml` embeds the model components (feature `models`) so that
//!   `edgeml pack --component NAME` needs no separate file;
//! - `edgeml-agent` embeds the sandboxed tract backend (feature
//!   `tract-backend`), gzip-compressed, and inflates it only when a device
//!   is configured for it.
//!
//! [`DIR`] names the folder with every component, for tests and benchmarks.

#![deny(missing_docs)]

/// The folder holding every built component (`<name>.wasm`), including the
/// test-only hostile guest.
pub const DIR: &str = env!("EDGEML_GUEST_DIR");

/// The generic component: any ONNX model, named tensors in and out.
#[cfg(feature = "models")]
pub const GENERIC: &[u8] =
    include_bytes!(concat!(env!("EDGEML_GUEST_DIR"), "/edgeml_generic.wasm"));

/// The image classifier component (PNG/JPEG in, labels out).
#[cfg(feature = "models")]
pub const IMAGE_CLASSIFIER: &[u8] = include_bytes!(concat!(
    env!("EDGEML_GUEST_DIR"),
    "/edgeml_image_classifier.wasm"
));

/// The voice activity component (WAV in, speech segments out).
#[cfg(feature = "models")]
pub const VOICE_ACTIVITY: &[u8] = include_bytes!(concat!(
    env!("EDGEML_GUEST_DIR"),
    "/edgeml_voice_activity.wasm"
));

#[cfg(feature = "tract-backend")]
const TRACT_BACKEND_GZ: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/edgeml_tract_backend.wasm.gz"));

/// The sandboxed inference backend (tract compiled to WebAssembly),
/// inflated from the compressed copy in the binary. Call it once, when the
/// runtime is set up for the sandboxed backend; it allocates the whole
/// component (about 16 MB). It fails only if the binary is damaged.
#[cfg(feature = "tract-backend")]
pub fn tract_backend() -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(TRACT_BACKEND_GZ.len() * 4);
    flate2::read::GzDecoder::new(TRACT_BACKEND_GZ).read_to_end(&mut out)?;
    Ok(out)
}

/// Size of the compressed sandboxed backend in the binary.
#[cfg(feature = "tract-backend")]
pub const TRACT_BACKEND_COMPRESSED_BYTES: usize = TRACT_BACKEND_GZ.len();
