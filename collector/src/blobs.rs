//! Where bundle and precompiled-artifact bytes live: content-addressed by
//! SHA-256, behind [`BlobStore`]. [`DirBlobs`] (a local directory,
//! `DIR/sha256/<hex>`) is the embedded default; [`RegistryBlobs`] keeps
//! them in an OCI registry. Methods block; the server calls them on
//! tokio's blocking pool.

use crate::store::StoreError;
use std::path::{Path, PathBuf};

/// Where a stored blob can be streamed from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobLocation {
    /// A local file (served with `Range`).
    File(PathBuf),
    /// A URL that serves it with `Range` (devices are redirected there).
    Url(String),
}

/// Content-addressed blob storage. Callers check that the bytes hash to
/// the digest before [`put`](BlobStore::put), and digests are 64
/// lowercase hex digits (the server refuses others before asking).
pub trait BlobStore: Send + Sync + 'static {
    /// Store `bytes` under `sha256`, durably: true if it is new, false if
    /// it was there already.
    fn put(&self, sha256: &str, bytes: &[u8]) -> Result<bool, StoreError>;
    /// The blob's size, or `None` if it is not stored.
    fn size(&self, sha256: &str) -> Result<Option<u64>, StoreError>;
    /// The whole blob, or `None`.
    fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Where to stream the blob from, or `None`.
    fn locate(&self, sha256: &str) -> Result<Option<BlobLocation>, StoreError>;
}

/// Blobs in a local directory: `DIR/sha256/<hex>`, written to a
/// temporary file, synced and renamed (readers never see a partial blob).
#[derive(Debug, Clone)]
pub struct DirBlobs {
    dir: PathBuf,
}

impl DirBlobs {
    /// Blobs under `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> DirBlobs {
        DirBlobs { dir: dir.into() }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Blob(format!("{what} {}: {e}", path.display()))
}

fn missing<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl BlobStore for DirBlobs {
    fn put(&self, sha256: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let path = self.path(sha256);
        if path.exists() {
            return Ok(false);
        }
        let parent = self.dir.join("sha256");
        std::fs::create_dir_all(&parent).map_err(|e| io("creating", &parent, e))?;
        let file =
            tempfile::NamedTempFile::new_in(&parent).map_err(|e| io("writing in", &parent, e))?;
        std::fs::write(file.path(), bytes).map_err(|e| io("writing", file.path(), e))?;
        file.as_file()
            .sync_all()
            .map_err(|e| io("syncing", file.path(), e))?;
        file.persist(&path)
            .map_err(|e| io("renaming to", &path, e.error))?;
        Ok(true)
    }

    fn size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(sha256);
        Ok(missing(std::fs::metadata(&path))
            .map_err(|e| io("reading", &path, e))?
            .map(|m| m.len()))
    }

    fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(sha256);
        missing(std::fs::read(&path)).map_err(|e| io("reading", &path, e))
    }

    fn locate(&self, sha256: &str) -> Result<Option<BlobLocation>, StoreError> {
        let path = self.path(sha256);
        Ok(path.is_file().then_some(BlobLocation::File(path)))
    }
}

/// Blobs in a repository of an OCI registry (`edgeml-server --registry`):
/// each pushed as a one-layer artifact tagged `sha256-<hex>` (bundles as
/// Wasm OCI artifacts), so the registry's garbage collection keeps them.
/// Devices download them from the registry itself: the server answers their
/// bundle requests with a redirect.
#[derive(Debug, Clone)]
pub struct RegistryBlobs {
    registry: edgeml_client::oci::Registry,
    max_bytes: usize,
}

impl RegistryBlobs {
    /// Blobs in `registry`, none larger than `max_bytes` read back.
    pub fn new(registry: edgeml_client::oci::Registry, max_bytes: usize) -> RegistryBlobs {
        RegistryBlobs {
            registry,
            max_bytes,
        }
    }
}

fn registry_err(e: edgeml_client::Error) -> StoreError {
    StoreError::Blob(format!("OCI registry: {e}"))
}

impl BlobStore for RegistryBlobs {
    fn put(&self, sha256: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        if self.size(sha256)?.is_some() {
            return Ok(false);
        }
        let layer = if edgeml_bundle::artifact::read_claims(bytes).is_ok() {
            edgeml_client::oci::PRECOMPILED_LAYER
        } else {
            edgeml_client::oci::WASM_LAYER
        };
        self.registry
            .push_artifact(
                bytes,
                layer,
                &format!("sha256-{sha256}"),
                Default::default(),
            )
            .map_err(registry_err)?;
        Ok(true)
    }

    fn size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        self.registry.blob_size(sha256).map_err(registry_err)
    }

    fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.registry
            .get_blob(sha256, self.max_bytes)
            .map_err(registry_err)
    }

    fn locate(&self, sha256: &str) -> Result<Option<BlobLocation>, StoreError> {
        Ok(self
            .size(sha256)?
            .map(|_| BlobLocation::Url(self.registry.blob_url(sha256))))
    }
}
