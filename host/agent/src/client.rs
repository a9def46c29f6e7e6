//! The agent's HTTP calls to the fleet server.

use crate::config::DownloadConfig;
use crate::state::StateDir;
use crate::Error;
use edgeml_fleet::wire::{ChannelView, StatusReport};
use edgeml_fleet::Release;
use edgeml_telemetry::{wire, DeviceIdentity};
use reqwest::blocking::Client as Http;
use reqwest::header;
use reqwest::StatusCode;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub(crate) struct Client {
    http: Http,
    base: String,
}

pub(crate) enum Poll {
    NotModified,
    NotPublished,
    View(Box<ChannelView>, Option<String>),
}

fn server_err(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Server(format!("{url}: {e}"))
}

impl Client {
    pub fn new(base: &str) -> Result<Client, Error> {
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Root `version`, or `None` when the server has no such version.
    pub fn root(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        let url = format!("{}/v1/fleet/roots/{version}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .map_err(|e| server_err(&url, e))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(limited(
                resp,
                edgeml_fleet::metadata::MAX_METADATA_BYTES,
                &url,
            )?)),
            s => Err(server_err(&url, format!("answered {s}"))),
        }
    }

    /// Poll the channel, conditionally on `etag`.
    pub fn channel(&self, channel: &str, etag: Option<&str>) -> Result<Poll, Error> {
        let url = format!("{}/v1/fleet/channels/{channel}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = etag {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        let resp = req.send().map_err(|e| server_err(&url, e))?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(Poll::NotModified),
            StatusCode::NOT_FOUND => Ok(Poll::NotPublished),
            s if s.is_success() => {
                let etag = resp
                    .headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let body = limited(resp, 2 * edgeml_fleet::metadata::MAX_METADATA_BYTES, &url)?;
                let view: ChannelView = serde_json::from_slice(&body)
                    .map_err(|e| server_err(&url, format!("channel view: {e}")))?;
                Ok(Poll::View(Box::new(view), etag))
            }
            s => Err(server_err(&url, format!("answered {s}"))),
        }
    }

    /// Download the release's bundle into `downloads/<sha256>.part`,
    /// resuming what an earlier poll left, within the size and time caps.
    /// Returns the checked bytes (length and digest as pinned).
    pub fn download(
        &self,
        identity: &DeviceIdentity,
        state: &StateDir,
        release: &Release,
        caps: &DownloadConfig,
    ) -> Result<Vec<u8>, Error> {
        let size = release.bundle.size;
        if size > caps.max_bytes {
            return Err(Error::TooLarge {
                size,
                limit: caps.max_bytes,
            });
        }
        let path = format!("/v1/fleet/bundles/{}", release.bundle.sha256);
        let url = format!("{}{path}", self.base);
        let part = state.part_path(&release.bundle.sha256);
        let deadline = Instant::now() + caps.timeout;
        let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if have > size {
            have = 0;
        }
        let slow = |got| Error::SlowRetrieval {
            limit: caps.timeout,
            got,
            expected: size,
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
                .header(wire::DEVICE_HEADER, identity.device_id())
                .header(wire::TIME_HEADER, now.to_string())
                .header(
                    wire::SIGNATURE_HEADER,
                    identity.sign_batch(&wire::get_signing_body("GET", &path, now)),
                );
            if have > 0 {
                req = req.header(header::RANGE, format!("bytes={have}-"));
            }
            let mut resp = match req.send() {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Err(slow(have)),
                Err(e) => {
                    last_error = Some(server_err(&url, e));
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
                    let _ = std::fs::remove_file(&part);
                    continue;
                }
                s => return Err(server_err(&url, format!("answered {s}"))),
            };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(&part)
                .map_err(crate::error::io(&part))?;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match resp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if have + n as u64 > size {
                            drop(file);
                            let _ = std::fs::remove_file(&part);
                            return Err(Error::EndlessData { expected: size });
                        }
                        file.write_all(&buf[..n]).map_err(crate::error::io(&part))?;
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
                        last_error = Some(server_err(
                            &url,
                            format!("connection lost after {have} bytes: {e}"),
                        ));
                        break;
                    }
                }
            }
            let _ = file.sync_all();
            if have < size && last_error.is_none() {
                // The server ended the body early: resume from here.
                last_error = Some(Error::Metadata(edgeml_fleet::Error::Truncated {
                    expected: size,
                    got: have,
                }));
            }
        }
        if have < size {
            // Keep the part file: the next poll resumes from it.
            return Err(
                last_error.unwrap_or(Error::Metadata(edgeml_fleet::Error::Truncated {
                    expected: size,
                    got: have,
                })),
            );
        }
        tracing::info!(bytes = size, "downloaded");
        let bytes = std::fs::read(&part).map_err(crate::error::io(&part))?;
        if let Err(e) = release.check_bundle(&bytes) {
            let _ = std::fs::remove_file(&part);
            return Err(e.into());
        }
        Ok(bytes)
    }

    /// Send a signed status report.
    pub fn report(&self, identity: &DeviceIdentity, report: &StatusReport) -> Result<(), Error> {
        let url = format!("{}/v1/fleet/report", self.base);
        let body = serde_json::to_vec(report).map_err(|e| Error::Server(e.to_string()))?;
        let resp = self
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(wire::DEVICE_HEADER, identity.device_id())
            .header(wire::SIGNATURE_HEADER, identity.sign_batch(&body))
            .body(body)
            .send()
            .map_err(|e| server_err(&url, e))?;
        if !resp.status().is_success() {
            let s = resp.status();
            let text = resp.text().unwrap_or_default();
            return Err(server_err(&url, format!("report refused ({s}): {text}")));
        }
        Ok(())
    }
}

/// Read a response body of at most `limit` bytes.
fn limited(resp: reqwest::blocking::Response, limit: usize, url: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    resp.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| server_err(url, e))?;
    if out.len() > limit {
        return Err(server_err(
            url,
            format!("response larger than {limit} bytes"),
        ));
    }
    Ok(out)
}
