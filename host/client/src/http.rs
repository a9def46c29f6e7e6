//! The blocking HTTP client.

use crate::wire::audit::{AuditEntry, AuditHead, AuditPage};
use crate::wire::fleet::{
    ArtifactStored, BundleStored, ChannelList, ChannelStatus, ChannelView, DeviceTags, FleetDevice,
    FleetDeviceList, ReleasePublished, ReportAccepted, RolloutAction, RolloutChanged,
    RolloutRequest, RootPublished, StatusReport,
};
use crate::wire::telemetry::{
    self as tw, AccuracyResponse, DeviceInfo, DriftResponse, Enrolled, LabelsReceived,
    ModelVersionInfo, NpyMetadata, Range, StatsResponse,
};
use crate::wire::ErrorBody;
use crate::Error;
use edgeml_fleet::{ArtifactRef, Release};
use edgeml_telemetry::DeviceIdentity;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::{header, StatusCode};
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest JSON answer read into memory (a channel view, a device list).
const MAX_JSON_BYTES: usize = 64 << 20;

/// A client of one fleet and telemetry server.
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
    base: String,
    admin_token: Option<String>,
    operator: Option<String>,
}

/// What polling a channel found.
#[derive(Debug)]
pub enum Poll {
    /// Nothing changed since the ETag given.
    NotModified,
    /// Nothing is published to the channel.
    NotPublished,
    /// The channel's release and rollout, and the ETag to poll with next.
    View(Box<ChannelView>, Option<String>),
}

/// Caps on a bundle download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// Largest bundle accepted.
    pub max_bytes: u64,
    /// Time for the whole download (across resumed attempts within one call).
    pub timeout: Duration,
}

/// The formats `GET /v1/samples` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// Apache Parquet, one row per sample.
    Parquet,
    /// One `.npy` array of the tensor samples (see [`Client::samples_npy_metadata`]).
    Npy,
}

impl Client {
    /// A client of the server at `base` (for example `http://10.0.0.2:7070`),
    /// with a 10 s connect timeout and a 30 s request timeout.
    pub fn new(base: &str) -> Result<Client, Error> {
        Client::with_timeout(base, Duration::from_secs(30))
    }

    /// A client whose requests may take up to `timeout` (large uploads).
    pub fn with_timeout(base: &str, timeout: Duration) -> Result<Client, Error> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "server URL `{base}` must start with http:// or https://"
            )));
        }
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            admin_token: None,
            operator: None,
        })
    }

    /// Authorise operator calls with the server's admin token.
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Client {
        self.admin_token = Some(token.into());
        self
    }

    /// Name the person or program acting in the server's audit log
    /// (`Edgeml-Operator` header on operator calls). The server records it
    /// as claimed: the admin token is what authorises.
    pub fn with_operator(mut self, name: impl Into<String>) -> Client {
        self.operator = Some(name.into());
        self
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn admin(&self, req: RequestBuilder) -> RequestBuilder {
        let req = match &self.operator {
            Some(o) => req.header(crate::wire::audit::OPERATOR_HEADER, o),
            None => req,
        };
        match &self.admin_token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    // ---- device calls ----------------------------------------------------

    /// Enrol `identity` with the enrolment token (idempotent: enrolling
    /// again with the same key succeeds).
    pub fn enrol(&self, token: &str, identity: &DeviceIdentity) -> Result<Enrolled, Error> {
        let url = self.url("/v1/enrol");
        let req = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&tw::EnrolRequest {
                device_id: identity.device_id().into(),
                public_key: identity.public_key_hex(),
            });
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// Root `version`, or `None` when the server has no such version.
    pub fn root(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        let url = self.url(&format!("/v1/fleet/roots/{version}"));
        let resp = send(&url, self.http.get(&url))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = checked(&url, resp)?;
        Ok(Some(limited(
            resp,
            edgeml_fleet::metadata::MAX_METADATA_BYTES,
            &url,
        )?))
    }

    /// Poll a channel, conditionally on `etag`.
    pub fn poll_channel(&self, channel: &str, etag: Option<&str>) -> Result<Poll, Error> {
        let url = self.url(&format!("/v1/fleet/channels/{channel}"));
        let mut req = self.http.get(&url);
        if let Some(t) = etag {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        let resp = send(&url, req)?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(Poll::NotModified),
            StatusCode::NOT_FOUND => Ok(Poll::NotPublished),
            _ => {
                let resp = checked(&url, resp)?;
                let etag = resp
                    .headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let body = limited(resp, 2 * edgeml_fleet::metadata::MAX_METADATA_BYTES, &url)?;
                let view: ChannelView =
                    serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
                        url: url.clone(),
                        reason: format!("channel view: {e}"),
                    })?;
                Ok(Poll::View(Box::new(view), etag))
            }
        }
    }

    /// Download the release's bundle into `part`, resuming what an earlier
    /// call left there, within `limits`. Returns the bytes once their length
    /// and digest match the release; the part file is kept on a timeout or
    /// a broken connection (the next call resumes) and removed otherwise.
    pub fn download_bundle(
        &self,
        identity: &DeviceIdentity,
        release: &Release,
        part: &Path,
        limits: DownloadLimits,
    ) -> Result<Vec<u8>, Error> {
        let path = format!("/v1/fleet/bundles/{}", release.bundle.sha256);
        self.download(identity, &path, release.bundle.size, part, limits, |b| {
            release.check_bundle(b)
        })
    }

    /// Download one of the release's precompiled artifacts into `part`,
    /// like [`Client::download_bundle`]: resumable, within `limits`, and
    /// returned only once its length and digest match the release.
    pub fn download_artifact(
        &self,
        identity: &DeviceIdentity,
        artifact: &ArtifactRef,
        part: &Path,
        limits: DownloadLimits,
    ) -> Result<Vec<u8>, Error> {
        let path = format!("/v1/fleet/artifacts/{}", artifact.sha256);
        self.download(identity, &path, artifact.size, part, limits, |b| {
            artifact.check(b)
        })
    }

    fn download(
        &self,
        identity: &DeviceIdentity,
        path: &str,
        size: u64,
        part: &Path,
        limits: DownloadLimits,
        check: impl Fn(&[u8]) -> Result<(), edgeml_fleet::Error>,
    ) -> Result<Vec<u8>, Error> {
        if size > limits.max_bytes {
            return Err(Error::TooLarge {
                size,
                limit: limits.max_bytes,
            });
        }
        let url = self.url(path);
        let io = |error| Error::Io {
            path: part.to_path_buf(),
            error,
        };
        let deadline = Instant::now() + limits.timeout;
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have > size {
            have = 0;
        }
        let slow = |got| Error::SlowRetrieval {
            limit: limits.timeout,
            got,
            expected: size,
        };
        let truncated = |got| {
            Error::Bundle(edgeml_fleet::Error::Truncated {
                expected: size,
                got,
            })
        };
        let mut last_error = None;
        if have > 0 {
            tracing::info!(from = have, of = size, "resuming a download");
        }
        for _attempt in 0..5 {
            if have == size {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(slow(have));
            }
            // Bundles go only to enrolled devices: sign the path and the time.
            let now = edgeml_telemetry::now_ms();
            let mut req = self
                .http
                .get(&url)
                .timeout(remaining)
                .header(tw::DEVICE_HEADER, identity.device_id())
                .header(tw::TIME_HEADER, now.to_string())
                .header(
                    tw::SIGNATURE_HEADER,
                    identity.sign_batch(&tw::get_signing_body("GET", path, now)),
                );
            if have > 0 {
                req = req.header(header::RANGE, format!("bytes={have}-"));
            }
            let mut resp = match req.send() {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Err(slow(have)),
                Err(e) => {
                    last_error = Some(unreachable(&url, e));
                    continue;
                }
            };
            let append = match resp.status() {
                StatusCode::PARTIAL_CONTENT if have > 0 => true,
                StatusCode::OK => {
                    have = 0;
                    false
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    have = 0;
                    let _ = std::fs::remove_file(part);
                    continue;
                }
                _ => return Err(refused(&url, resp)),
            };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(part)
                .map_err(io)?;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match resp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if have + n as u64 > size {
                            drop(file);
                            let _ = std::fs::remove_file(part);
                            return Err(Error::EndlessData { expected: size });
                        }
                        file.write_all(&buf[..n]).map_err(io)?;
                        have += n as u64;
                        if Instant::now() >= deadline && have < size {
                            let _ = file.sync_all();
                            return Err(slow(have));
                        }
                    }
                    Err(e) => {
                        if Instant::now() >= deadline {
                            let _ = file.sync_all();
                            return Err(slow(have));
                        }
                        last_error = Some(Error::Unreachable {
                            url: url.clone(),
                            reason: format!("connection lost after {have} bytes: {e}"),
                        });
                        break;
                    }
                }
            }
            let _ = file.sync_all();
            if have < size && last_error.is_none() {
                // The server ended the body early: resume from here.
                last_error = Some(truncated(have));
            }
        }
        if have < size {
            // Keep the part file: the next call resumes from it.
            return Err(last_error.unwrap_or_else(|| truncated(have)));
        }
        tracing::info!(bytes = size, "downloaded");
        let bytes = std::fs::read(part).map_err(io)?;
        if let Err(e) = check(&bytes) {
            let _ = std::fs::remove_file(part);
            return Err(e.into());
        }
        Ok(bytes)
    }

    /// Send a status report, signed with the device key. The reply names
    /// the device's tags as the server sees them.
    pub fn report(
        &self,
        identity: &DeviceIdentity,
        report: &StatusReport,
    ) -> Result<ReportAccepted, Error> {
        let url = self.url("/v1/fleet/report");
        let body = serde_json::to_vec(report).map_err(|e| Error::Config(e.to_string()))?;
        let req = self
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(tw::DEVICE_HEADER, identity.device_id())
            .header(tw::SIGNATURE_HEADER, identity.sign_batch(&body))
            .body(body);
        json(checked(&url, send(&url, req)?)?, &url)
    }

    // ---- operator calls (admin token) ------------------------------------

    /// Publish a signed root (the envelope's bytes) as `version`.
    pub fn publish_root(&self, version: u64, envelope: Vec<u8>) -> Result<RootPublished, Error> {
        let url = self.url(&format!("/v1/fleet/roots/{version}"));
        let req = self.admin(self.http.put(&url)).body(envelope);
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// Upload a signed bundle; the server stores it under its SHA-256.
    pub fn upload_bundle(&self, sha256: &str, bundle: Vec<u8>) -> Result<BundleStored, Error> {
        let url = self.url(&format!("/v1/fleet/bundles/{sha256}"));
        let req = self.admin(self.http.put(&url)).body(bundle);
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// [`Client::upload_bundle`] from a reader of `len` bytes, streamed
    /// (the CLI wraps it to show progress).
    pub fn upload_bundle_from(
        &self,
        sha256: &str,
        bundle: impl std::io::Read + Send + 'static,
        len: u64,
    ) -> Result<BundleStored, Error> {
        let url = self.url(&format!("/v1/fleet/bundles/{sha256}"));
        let req = self
            .admin(self.http.put(&url))
            .body(reqwest::blocking::Body::sized(bundle, len));
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// Upload a signed precompiled artifact (`edgeml precompile`); the
    /// server checks its signature against the root and keeps it under its
    /// SHA-256 (which bundle it belongs to is checked when a release lists it).
    pub fn upload_artifact(
        &self,
        sha256: &str,
        artifact: Vec<u8>,
    ) -> Result<ArtifactStored, Error> {
        let url = self.url(&format!("/v1/fleet/artifacts/{sha256}"));
        let req = self.admin(self.http.put(&url)).body(artifact);
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// A channel's release and rollout state, as devices see it; `None`
    /// when nothing is published there.
    pub fn channel(&self, channel: &str) -> Result<Option<ChannelView>, Error> {
        match self.poll_channel(channel, None)? {
            Poll::View(v, _) => Ok(Some(*v)),
            _ => Ok(None),
        }
    }

    /// Publish signed release metadata (the envelope's bytes) to a channel.
    pub fn publish_release(
        &self,
        channel: &str,
        envelope: Vec<u8>,
    ) -> Result<ReleasePublished, Error> {
        let url = self.url(&format!("/v1/fleet/channels/{channel}/release"));
        let req = self.admin(self.http.put(&url)).body(envelope);
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// Pause or resume a channel's rollout.
    pub fn rollout(&self, channel: &str, action: RolloutAction) -> Result<RolloutChanged, Error> {
        let url = self.url(&format!("/v1/fleet/channels/{channel}/rollout"));
        let req = self
            .admin(self.http.post(&url))
            .json(&RolloutRequest { action });
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// Set the tags an admin gives `device` (replacing those set before);
    /// returns the device's tags now.
    pub fn set_device_tags(
        &self,
        device: &str,
        tags: &edgeml_fleet::Tags,
    ) -> Result<edgeml_fleet::Tags, Error> {
        let url = self.url(&format!("/v1/fleet/devices/{device}/tags"));
        let req = self
            .admin(self.http.put(&url))
            .json(&DeviceTags { tags: tags.clone() });
        Ok(json::<DeviceTags>(checked(&url, send(&url, req)?)?, &url)?.tags)
    }

    /// Every channel's release and rollout, as the server tracks it.
    pub fn channels(&self) -> Result<Vec<ChannelStatus>, Error> {
        Ok(self
            .get_json::<ChannelList>("/v1/fleet/channels", &[])?
            .channels)
    }

    /// One page of the server's audit log: entries after `after`, oldest
    /// first, at most `limit` (the server caps it at 1000), and the head
    /// the server recorded.
    pub fn audit_page(&self, after: u64, limit: usize) -> Result<AuditPage, Error> {
        self.get_json(
            "/v1/audit",
            &[("after", after.to_string()), ("limit", limit.to_string())],
        )
    }

    /// The whole audit log, page by page, with the server's head as it was
    /// before the first page (entries appended meanwhile are included).
    pub fn audit_log(&self) -> Result<(Vec<AuditEntry>, AuditHead), Error> {
        let first = self.audit_page(0, 1000)?;
        let head = first.head;
        let mut entries = first.entries;
        loop {
            let after = entries.last().map_or(0, |e| e.seq);
            let page = self.audit_page(after, 1000)?;
            if page.entries.is_empty() || page.entries[0].seq <= after {
                break;
            }
            entries.extend(page.entries);
        }
        Ok((entries, head))
    }

    /// Every device's latest status report.
    pub fn fleet_devices(&self) -> Result<Vec<FleetDevice>, Error> {
        Ok(self
            .get_json::<FleetDeviceList>("/v1/fleet/devices", &[])?
            .devices)
    }

    /// Enrolled devices with their telemetry: last seen, spool, models.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        self.get_json("/v1/devices", &[])
    }

    /// Model versions the fleet reported.
    pub fn models(&self) -> Result<Vec<ModelVersionInfo>, Error> {
        self.get_json("/v1/models", &[])
    }

    /// Fleet statistics of a model version.
    pub fn stats(&self, model: &str, version: &str, range: &Range) -> Result<StatsResponse, Error> {
        let path = format!(
            "/v1/models/{}/versions/{}/stats",
            segment(model),
            segment(version)
        );
        self.get_json(&path, &range_query(range))
    }

    /// Measured accuracy of a model's versions from labelled predictions
    /// (`version`, `range` and `window_ms` narrow or split it).
    pub fn accuracy(
        &self,
        model: &str,
        version: Option<&str>,
        range: &Range,
        window_ms: Option<u64>,
    ) -> Result<AccuracyResponse, Error> {
        let path = format!("/v1/models/{}/accuracy", segment(model));
        let mut q = range_query(range);
        if let Some(v) = version {
            q.push(("version", v.to_string()));
        }
        if let Some(w) = window_ms {
            q.push(("window_ms", w.to_string()));
        }
        self.get_json(&path, &q)
    }

    /// Upload true labels by prediction id (`content_type`: `text/csv`,
    /// `application/json` or `application/vnd.apache.parquet`).
    pub fn upload_labels(
        &self,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<LabelsReceived, Error> {
        let url = self.url("/v1/labels");
        let req = self
            .admin(self.http.post(&url))
            .header("content-type", content_type)
            .body(body);
        json(checked(&url, send(&url, req)?)?, &url)
    }

    /// Drift of a model version against its baseline, in buckets of `bucket`.
    pub fn drift(
        &self,
        model: &str,
        version: &str,
        range: &Range,
        bucket: Duration,
    ) -> Result<DriftResponse, Error> {
        let path = format!(
            "/v1/models/{}/versions/{}/drift",
            segment(model),
            segment(version)
        );
        let mut q = range_query(range);
        q.push(("bucket_s", bucket.as_secs().max(1).to_string()));
        self.get_json(&path, &q)
    }

    /// Drift samples as Parquet or `.npy`, filtered by model, version and range.
    pub fn samples(
        &self,
        format: SampleFormat,
        model: Option<&str>,
        version: Option<&str>,
        range: &Range,
    ) -> Result<Vec<u8>, Error> {
        let (url, resp) = self.samples_response(format, model, version, range)?;
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| unreachable(&url, e))
    }

    /// The sample export's response (a success), and its URL for errors.
    fn samples_response(
        &self,
        format: SampleFormat,
        model: Option<&str>,
        version: Option<&str>,
        range: &Range,
    ) -> Result<(String, reqwest::blocking::Response), Error> {
        let fmt = match format {
            SampleFormat::Parquet => "parquet",
            SampleFormat::Npy => "npy",
        };
        let q = sample_query(fmt, model, version, range);
        let url = self.url("/v1/samples");
        let req = self.admin(self.http.get(&url)).query(&q);
        let resp = checked(&url, send(&url, req)?)?;
        Ok((url, resp))
    }

    /// [`Client::samples`] streamed into `out` (the file at `path`, named in
    /// errors); returns the bytes written.
    pub fn samples_to(
        &self,
        format: SampleFormat,
        model: Option<&str>,
        version: Option<&str>,
        range: &Range,
        out: &mut dyn std::io::Write,
        path: &std::path::Path,
    ) -> Result<u64, Error> {
        let (url, mut resp) = self.samples_response(format, model, version, range)?;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = std::io::Read::read(&mut resp, &mut buf).map_err(|e| unreachable(&url, e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|error| Error::Io {
                path: path.to_path_buf(),
                error,
            })?;
            total += n as u64;
        }
        Ok(total)
    }

    /// The metadata of the `.npy` export with the same filter.
    pub fn samples_npy_metadata(
        &self,
        model: Option<&str>,
        version: Option<&str>,
        range: &Range,
    ) -> Result<NpyMetadata, Error> {
        self.get_json(
            "/v1/samples",
            &sample_query("npy-metadata", model, version, range),
        )
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, Error> {
        let url = self.url(path);
        let req = self.admin(self.http.get(&url)).query(query);
        json(checked(&url, send(&url, req)?)?, &url)
    }
}

fn range_query(r: &Range) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(v) = r.from_ms {
        q.push(("from_ms", v.to_string()));
    }
    if let Some(v) = r.to_ms {
        q.push(("to_ms", v.to_string()));
    }
    if let Some(v) = &r.device {
        q.push(("device", v.clone()));
    }
    q
}

fn sample_query(
    format: &str,
    model: Option<&str>,
    version: Option<&str>,
    range: &Range,
) -> Vec<(&'static str, String)> {
    let mut q = range_query(range);
    if let Some(m) = model {
        q.push(("model", m.to_string()));
    }
    if let Some(v) = version {
        q.push(("version", v.to_string()));
    }
    q.push(("format", format.to_string()));
    q
}

/// Percent-encode a path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn unreachable(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Unreachable {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

pub(crate) fn send(url: &str, req: RequestBuilder) -> Result<Response, Error> {
    req.send().map_err(|e| unreachable(url, e))
}

/// The response if it is a success, else [`Error::Refused`] with the
/// server's message.
pub(crate) fn checked(url: &str, resp: Response) -> Result<Response, Error> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(refused(url, resp))
    }
}

pub(crate) fn refused(url: &str, resp: Response) -> Error {
    let status = resp.status().as_u16();
    let text = limited(resp, 64 << 10, url).unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&text).trim().to_string());
    Error::Refused {
        url: url.to_string(),
        status,
        message: if message.is_empty() {
            "no reason given".into()
        } else {
            message
        },
    }
}

fn json<T: DeserializeOwned>(resp: Response, url: &str) -> Result<T, Error> {
    let body = limited(resp, MAX_JSON_BYTES, url)?;
    serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// Read a response body of at most `limit` bytes.
pub(crate) fn limited(resp: Response, limit: usize, url: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    resp.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| unreachable(url, e))?;
    if out.len() > limit {
        return Err(Error::BadResponse {
            url: url.to_string(),
            reason: format!("answer larger than {limit} bytes"),
        });
    }
    Ok(out)
}
