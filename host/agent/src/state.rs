//! The state directory. Every file is replaced atomically (write, fsync,
//! rename), so a power cut leaves either the old or the new version.
//!
//! ```text
//! root.json              newest trusted root (envelope)
//! release.json           newest release metadata accepted for the channel
//! timestamp.json         newest timestamp accepted (when the root names a timestamp role)
//! status.json            the last status report sent (its sequence number; `edgeml agent status`)
//! *.damaged              a state file that could not be read, set aside
//! state.json             installed and previous (last known good) bundles, bundles that failed
//! pending.json           an update in progress (present only between staging and commit)
//! bundles/<sha256>.wasm  verified bundles: the installed one and the one before
//! downloads/<sha256>.part  partial downloads, resumed with HTTP Range
//! ```

use crate::error::io;
use crate::Error;
use edgeml_client::wire::fleet::Installed;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What is installed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Disk {
    /// The committed, serving bundle (the last known good).
    pub current: Option<Installed>,
    /// The bundle before it, kept to roll back to.
    pub previous: Option<Installed>,
    /// Digests that failed their health check here or were interrupted; not retried.
    #[serde(default)]
    pub failed: BTreeSet<String>,
}

/// An update between staging and commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub target: Installed,
}

pub(crate) struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<StateDir, Error> {
        for sub in ["bundles", "downloads"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The state directory at `dir`, without creating anything (for reading).
    pub fn at(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn bundle_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("bundles").join(format!("{sha256}.wasm"))
    }

    /// The precompiled artifact installed with the bundle `sha256`.
    pub fn artifact_path(&self, bundle_sha256: &str) -> PathBuf {
        self.dir
            .join("bundles")
            .join(format!("{bundle_sha256}.edgemlpa"))
    }

    pub fn part_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("downloads").join(format!("{sha256}.part"))
    }

    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::State {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path, error: e }),
        }
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::State {
            path: self.path(name),
            reason: e.to_string(),
        })?;
        self.write(&self.path(name), &bytes)
    }

    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        write_atomic(path, bytes)
    }

    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { path, error: e }),
            _ => {
                sync_dir(&self.dir);
                Ok(())
            }
        }
    }

    /// Like [`StateDir::read_json`], but a damaged file is set aside and
    /// read as absent (for files the agent can do without: the pending
    /// marker, the last release and timestamp seen).
    pub fn read_json_or_set_aside<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, Error> {
        match self.read_json(name) {
            Err(Error::State { .. }) => {
                self.set_aside(name)?;
                Ok(None)
            }
            other => other,
        }
    }

    /// Move a damaged state file aside (`NAME.damaged`); returns where.
    pub fn set_aside(&self, name: &str) -> Result<PathBuf, Error> {
        let from = self.path(name);
        let to = self.path(&format!("{name}.damaged"));
        std::fs::rename(&from, &to).map_err(io(&from))?;
        sync_dir(&self.dir);
        Ok(to)
    }

    /// Rebuild what is installed from the bundles on disk: each file whose
    /// name is its SHA-256, that verifies against the root's publisher keys
    /// and that is not the update in flight (`in_flight`) is a candidate
    /// (bundles that fail a check or are rolled back are deleted, so these
    /// passed theirs). The one the last accepted release pins (if it
    /// is here) is current, else the highest version; the next highest of
    /// the same model is the previous one. Nothing is marked failed.
    pub fn rebuild(&self, policy: &edgeml_bundle::TrustPolicy, in_flight: Option<&str>) -> Disk {
        use sha2::Digest as _;
        let mut found: Vec<(semver::Version, Installed)> = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("bundles")) else {
            return Disk::default();
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(sha) = name.strip_suffix(".wasm") else {
                continue;
            };
            if Some(sha) == in_flight {
                continue;
            }
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            if hex::encode(sha2::Sha256::digest(&bytes)) != sha {
                continue;
            }
            let Ok(verified) = edgeml_bundle::verify(bytes, policy) else {
                continue;
            };
            let m = verified.manifest();
            found.push((
                m.version.clone(),
                Installed {
                    model: m.name.clone(),
                    version: m.version.to_string(),
                    sha256: sha.to_string(),
                },
            ));
        }
        found.sort_by(|a, b| b.0.cmp(&a.0));
        let pinned: Option<String> = self
            .read_json::<edgeml_fleet::Release>("release.json")
            .ok()
            .flatten()
            .map(|r| r.bundle.sha256);
        let current = found
            .iter()
            .find(|(_, i)| Some(&i.sha256) == pinned.as_ref())
            .or(found.first())
            .map(|(_, i)| i.clone());
        let previous = current.as_ref().and_then(|c| {
            found
                .iter()
                .find(|(_, i)| i.model == c.model && i.sha256 != c.sha256)
                .map(|(_, i)| i.clone())
        });
        Disk {
            current,
            previous,
            failed: Default::default(),
        }
    }

    /// Delete a bundle that failed or was rolled back, and its artifact.
    pub fn discard_bundle(&self, sha256: &str) {
        let _ = std::fs::remove_file(self.bundle_path(sha256));
        let _ = std::fs::remove_file(self.artifact_path(sha256));
        sync_dir(&self.dir.join("bundles"));
    }

    /// Delete bundles (and artifacts) other than `keep`'s (installed and previous).
    pub fn gc(&self, keep: &[&Installed]) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("bundles")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep_it = keep.iter().any(|k| {
                name == format!("{}.wasm", k.sha256) || name == format!("{}.edgemlpa", k.sha256)
            });
            if !keep_it {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
