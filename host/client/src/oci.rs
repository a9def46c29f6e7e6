//! Bundles in an OCI registry (the CNCF distribution API), as Wasm OCI
//! artifacts: an image manifest whose config has the media type
//! `application/vnd.wasm.config.v0+json` and whose one layer is the signed
//! bundle as `application/wasm`. The layer's digest is the bundle's SHA-256,
//! the digest release metadata pins, so the registry needs no trust: devices
//! check what they get against the signed release.

use crate::http::{checked, limited, refused, send};
use crate::Error;
use reqwest::blocking::Client as Http;
use reqwest::{header, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Media type of a Wasm artifact's config (CNCF TAG Runtime's convention).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Media type of a Wasm layer.
pub const WASM_LAYER: &str = "application/wasm";
/// Media type of a precompiled-artifact layer (`edgeml precompile`).
pub const PRECOMPILED_LAYER: &str = "application/vnd.edgeml.precompiled.v1";
/// Media type of an OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact's type ([`WASM_CONFIG`] for bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The content.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations (`org.opencontainers.image.*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The config of a Wasm artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When it was pushed (RFC 3339).
    pub created: String,
    /// `wasm`.
    pub architecture: String,
    /// `wasip2`: components.
    pub os: String,
    /// The layers' digests.
    pub layer_digests: Vec<String>,
}

/// One repository of an OCI registry, for example
/// `http://registry.local:5000/edgeml/bundles`.
#[derive(Clone)]
pub struct Registry {
    http: Http,
    /// `scheme://host[:port]`.
    origin: String,
    /// The repository name (`edgeml/bundles`).
    name: String,
    basic: Option<(String, String)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url())
            .field("user", &self.basic.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Registry {
    /// The repository at `url` (`http[s]://host[:port]/name/...`).
    pub fn new(url: &str) -> Result<Registry, Error> {
        let bad = |why: &str| Error::Config(format!("registry `{url}`: {why}"));
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| bad("must start with http:// or https://"))?;
        let (host, name) = rest.split_once('/').ok_or_else(|| {
            bad("name a repository after the host (http://host:5000/edgeml/bundles)")
        })?;
        if host.contains('@') {
            return Err(bad(
                "put no credentials in the URL (they would reach devices in redirects); use --registry-user and $EDGEML_REGISTRY_PASSWORD",
            ));
        }
        let name = name.trim_matches('/');
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if host.is_empty() || name.is_empty() || !name.chars().all(valid) {
            return Err(bad(
                "a repository name is lowercase letters, digits and . _ - / (OCI distribution spec)",
            ));
        }
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Registry {
            http,
            origin: url[..url.len() - rest.len() + host.len()].to_string(),
            name: name.to_string(),
            basic: None,
        })
    }

    /// Push and pull with HTTP basic authentication.
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic = Some((user.into(), password.into()));
        self
    }

    /// `origin/name`, as given.
    pub fn url(&self) -> String {
        format!("{}/{}", self.origin, self.name)
    }

    /// Where a blob is served (`GET`, with `Range`).
    pub fn blob_url(&self, sha256: &str) -> String {
        format!("{}/v2/{}/blobs/sha256:{sha256}", self.origin, self.name)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::blocking::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.basic {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// A blob's size, or `None` if the repository does not have it.
    pub fn blob_size(&self, sha256: &str) -> Result<Option<u64>, Error> {
        let url = self.blob_url(sha256);
        let resp = send(&url, self.request(reqwest::Method::HEAD, &url))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| Error::BadResponse {
                    url,
                    reason: "no Content-Length for a blob".into(),
                }),
            _ => Err(refused(&url, resp)),
        }
    }

    /// A whole blob of at most `limit` bytes, checked against its digest,
    /// or `None` if the repository does not have it.
    pub fn get_blob(&self, sha256: &str, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        let url = self.blob_url(sha256);
        let resp = send(&url, self.request(reqwest::Method::GET, &url))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = limited(checked(&url, resp)?, limit, &url)?;
        let found = hex::encode(Sha256::digest(&bytes));
        if found != sha256 {
            return Err(Error::BadResponse {
                url,
                reason: format!("the blob's SHA-256 is {found}"),
            });
        }
        Ok(Some(bytes))
    }

    /// Upload a blob (one monolithic upload) unless the repository has it:
    /// true if it was uploaded.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<bool, Error> {
        let digest = sha256_digest(bytes);
        let sha = &digest["sha256:".len()..];
        if self.blob_size(sha)?.is_some() {
            return Ok(false);
        }
        let start = format!("{}/v2/{}/blobs/uploads/", self.origin, self.name);
        let resp = checked(
            &start,
            send(&start, self.request(reqwest::Method::POST, &start))?,
        )?;
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::BadResponse {
                url: start.clone(),
                reason: "no Location for the upload".into(),
            })?;
        let mut url = if location.starts_with('/') {
            format!("{}{location}", self.origin)
        } else {
            location.to_string()
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&digest);
        let put = self
            .request(reqwest::Method::PUT, &url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec());
        checked(&url, send(&url, put)?)?;
        Ok(true)
    }

    /// Store `manifest` under `reference` (a tag); returns its digest.
    pub fn put_manifest(&self, reference: &str, manifest: &Manifest) -> Result<String, Error> {
        let body = serde_json::to_vec(manifest).map_err(|e| Error::Config(e.to_string()))?;
        let url = format!("{}/v2/{}/manifests/{reference}", self.origin, self.name);
        let put = self
            .request(reqwest::Method::PUT, &url)
            .header(header::CONTENT_TYPE, MANIFEST)
            .body(body.clone());
        checked(&url, send(&url, put)?)?;
        Ok(sha256_digest(&body))
    }

    /// The manifest under `reference` (a tag or a digest).
    pub fn get_manifest(&self, reference: &str) -> Result<Manifest, Error> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.origin, self.name);
        let resp = send(
            &url,
            self.request(reqwest::Method::GET, &url)
                .header(header::ACCEPT, MANIFEST),
        )?;
        let body = limited(checked(&url, resp)?, 4 << 20, &url)?;
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
            url,
            reason: format!("OCI manifest: {e}"),
        })
    }

    /// Push `content` as a one-layer artifact of `layer_type` (a signed
    /// bundle as [`WASM_LAYER`], a precompiled artifact as
    /// [`PRECOMPILED_LAYER`]) with a Wasm config, tagged `tag`. The blobs go
    /// first, so the manifest never names a missing blob. Returns the
    /// manifest's digest.
    pub fn push_artifact(
        &self,
        content: &[u8],
        layer_type: &str,
        tag: &str,
        annotations: BTreeMap<String, String>,
    ) -> Result<String, Error> {
        let layer = Descriptor {
            media_type: layer_type.to_string(),
            digest: sha256_digest(content),
            size: content.len() as u64,
            annotations: BTreeMap::new(),
        };
        let config = WasmConfig {
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            architecture: "wasm".into(),
            os: "wasip2".into(),
            layer_digests: vec![layer.digest.clone()],
        };
        let config = serde_json::to_vec(&config).map_err(|e| Error::Config(e.to_string()))?;
        self.put_blob(content)?;
        self.put_blob(&config)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST.into()),
            artifact_type: Some(WASM_CONFIG.into()),
            config: Descriptor {
                media_type: WASM_CONFIG.into(),
                digest: sha256_digest(&config),
                size: config.len() as u64,
                annotations: BTreeMap::new(),
            },
            layers: vec![layer],
            annotations,
        };
        self.put_manifest(tag, &manifest)
    }
}
