//! On-disk cache of compiled components.
//!
//! File: `<dir>/<bundle sha256>-<engine hash>.cwasm`, holding
//! `EDGEMLC1 ‖ sha256(artifact) ‖ artifact`. The checksum is checked before
//! the artifact is deserialised; a bad entry is removed and recompiled.
//! Entries are written to a temporary file and renamed into place.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"EDGEMLC1";

/// What happened with the compilation cache on a load.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum CacheOutcome {
    /// No cache directory is configured; the component was compiled.
    Disabled,
    /// The compiled artifact was loaded from the cache; nothing was compiled.
    Hit,
    /// Not in the cache: compiled, then stored.
    Miss,
    /// An entry existed but failed its integrity check; it was removed, and
    /// the component was compiled again.
    Corrupt(String),
    /// Compiled, but the artifact could not be written to the cache.
    WriteFailed(String),
    /// Loaded from a signed precompiled artifact
    /// ([`crate::Runtime::load_precompiled`]); nothing was compiled.
    Precompiled,
}

pub(crate) fn entry_path(dir: &Path, engine: &Engine, bundle_digest: &str) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Artifacts are only valid for the engine settings that made them.
    #[cfg(feature = "cranelift")]
    engine.precompile_compatibility_hash().hash(&mut h);
    // A build without a compiler cannot ask its engine for that hash; its
    // entries are keyed by this crate's version alone, and wasmtime still
    // refuses an incompatible artifact when it is loaded (the entry is then
    // treated as corrupt).
    #[cfg(not(feature = "cranelift"))]
    let _ = engine;
    env!("CARGO_PKG_VERSION").hash(&mut h);
    dir.join(format!("{bundle_digest}-{:016x}.cwasm", h.finish()))
}

/// Look the component up; `Ok(None)` when absent, `Err(reason)` when present but bad.
pub(crate) fn load(engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = |why: &str| {
        let _ = std::fs::remove_file(path);
        Err(format!("{}: {why}", path.display()))
    };
    if bytes.len() < 40 || &bytes[..8] != MAGIC {
        return bad("not an edgeml cache entry");
    }
    let (sum, artifact) = bytes[8..].split_at(32);
    if Sha256::digest(artifact)[..] != *sum {
        return bad("checksum mismatch");
    }
    // SAFETY: the artifact was produced by `Engine::precompile_component`
    // for this cache, by an engine with the same compatibility hash (part of the file
    // name), from a bundle that had passed verification; its checksum was
    // just verified, so it is the bytes that were written. The cache
    // directory must be writable only by the host's user (see
    // `Config::cache_dir`).
    match unsafe { Component::deserialize(engine, artifact) } {
        Ok(c) => Ok(Some(c)),
        Err(e) => bad(&format!("cannot be loaded: {e}")),
    }
}

pub(crate) fn store(path: &Path, artifact: &[u8]) -> Result<(), String> {
    let dir = path.parent().ok_or("cache path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One temporary name per writer (process and call), so concurrent loads
    // of the same bundle never write into each other's file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut data = Vec::with_capacity(40 + artifact.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&Sha256::digest(artifact));
    data.extend_from_slice(artifact);
    std::fs::write(&tmp, &data).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}
