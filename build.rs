//! Builds the guest components in `guest/` for `wasm32-wasip2` so that
//! `edgeml` can embed the model components and the sandboxed backend, and
//! the tests can use all of them. Set `EDGEML_GUEST_WASM_DIR` to a folder of prebuilt components to
//! skip the nested build.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: [&str; 5] = [
    "edgeml_generic",
    "edgeml_image_classifier",
    "edgeml_voice_activity",
    "edgeml_test_hostile",
    "edgeml_tract_backend",
];

fn main() {
    println!("cargo:rerun-if-changed=guest/Cargo.toml");
    println!("cargo:rerun-if-changed=guest/Cargo.lock");
    for dir in [
        "guest/sdk/src",
        "guest/generic/src",
        "guest/image-classifier/src",
        "guest/voice-activity/src",
        "guest/test-hostile/src",
        "guest/tract-backend/src",
        "guest/.cargo/config.toml",
        "host/tract/src",
        "host/bundle/src",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    for crate_dir in [
        "sdk",
        "generic",
        "image-classifier",
        "voice-activity",
        "test-hostile",
        "tract-backend",
    ] {
        println!("cargo:rerun-if-changed=guest/{crate_dir}/Cargo.toml");
    }
    println!("cargo:rerun-if-env-changed=EDGEML_GUEST_WASM_DIR");

    let dir = match std::env::var_os("EDGEML_GUEST_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => build_guests(),
    };
    for g in GUESTS {
        let p = dir.join(format!("{g}.wasm"));
        if !p.is_file() {
            panic!("guest component {} is missing", p.display());
        }
    }
    println!("cargo:rustc-env=EDGEML_GUEST_DIR={}", dir.display());
}

fn build_guests() -> PathBuf {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // <target>/<profile>/build/<pkg>-<hash>/out -> <target>/guest-wasm: shared by
    // every profile, and a separate build directory so the nested cargo does
    // not wait on the outer one's lock.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.clone())
        .join("guest-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Say what is missing in one line, before cargo fails deep inside the
    // nested build with "can't find crate for `core`".
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = sysroot {
        if !sysroot.join("lib/rustlib/wasm32-wasip2").is_dir() {
            panic!(
                "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2` \
                 (the guest components are built for it), or set EDGEML_GUEST_WASM_DIR to prebuilt components"
            );
        }
    }
    // Run from guest/ so guest/.cargo/config.toml (SIMD flags) applies.
    let status = Command::new(cargo)
        .current_dir(manifest_dir.join("guest"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(manifest_dir.join("guest/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cannot run cargo to build the guest components");
    if !status.success() {
        panic!(
            "building the guest components failed. They need the wasm32-wasip2 target: \
             `rustup target add wasm32-wasip2` (or set EDGEML_GUEST_WASM_DIR to prebuilt components)"
        );
    }
    target_dir.join("wasm32-wasip2/release")
}
