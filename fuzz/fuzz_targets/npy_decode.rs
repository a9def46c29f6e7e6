#![no_main]
//! Any bytes as a .npy file: a typed error, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgeml_telemetry::npy::decode(data);
});
