//! Builds the guest components in `guest/` for `wasm32-wasip2` so that
//! `edgeml` can embed the model components, `edgeml-agent` the sandboxed
//! backend (gzip-compressed), and the tests can use all of them. Set `EDGEML_GUEST_WASM_DIR` to a folder of prebuilt components to
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
    println!("cargo:rerun-if-changed=../../guest/Cargo.toml");
    println!("cargo:rerun-if-changed=../../guest/Cargo.lock");
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
        println!("cargo:rerun-if-changed=../../{dir}");
    }
    for crate_dir in [
        "sdk",
        "generic",
        "image-classifier",
        "voice-activity",
        "test-hostile",
        "tract-backend",
    ] {
        println!("cargo:rerun-if-changed=../../guest/{crate_dir}/Cargo.toml");
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
    if std::env::var_os("CARGO_FEATURE_TRACT_BACKEND").is_some() {
        compress(&dir.join("edgeml_tract_backend.wasm"));
    }
}

/// The sandboxed backend goes into `edgeml-agent` gzip-compressed (16 MB
/// of Wasm become about a third of that); the agent inflates it only when
/// a device is configured for the sandboxed backend.
fn compress(wasm: &Path) {
    use std::io::Write;
    let bytes = std::fs::read(wasm).expect("reading the tract backend component");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"))
        .join("edgeml_tract_backend.wasm.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&bytes).expect("compressing");
    std::fs::write(&out, enc.finish().expect("compressing"))
        .expect("writing the compressed backend");
}

fn build_guests() -> PathBuf {
    // host/guests -> the repository root.
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
            .join("../..");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // <target>/<profile>/build/<pkg>-<hash>/out -> <target>/guest-wasm: shared by
    // every profile, and a separate build directory so the nested cargo does
    // not wait on the outer one's lock.
    // A cross build (<target>/<triple>/<profile>/...) shares the same
    // guest build: the components do not depend on the host's architecture.
    let mut target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.clone());
    if let Ok(triple) = std::env::var("TARGET") {
        if target_dir.file_name().is_some_and(|n| n == triple.as_str()) {
            if let Some(p) = target_dir.parent() {
                target_dir = p.to_path_buf();
            }
        }
    }
    let target_dir = target_dir.join("guest-wasm");
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
