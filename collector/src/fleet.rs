//! The fleet server: roots, content-addressed bundles, signed releases per
//! channel, rollout control, device status, and the metric-gated canary.
//!
//! The server holds no signing keys. It checks everything it is given
//! against the newest root (so a bad push fails at once, not on devices),
//! but devices check it all again; the server can only hold a rollout back
//! or halt it, never widen it or change what it installs.

use crate::analysis;
use crate::api::{admin, authenticate, blocking, err, ApiResult, AppState};
use crate::store::{Query, StoredRelease};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use edgeml_fleet::wire::{ChannelView, RolloutAction, RolloutState, StatusReport, UpdateState};
use edgeml_fleet::{Envelope, TrustedRoot};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Fleet settings.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Where bundles are stored (`DIR/sha256/<hex>`). `None` turns the fleet
    /// API off (it answers 503).
    pub bundle_dir: Option<PathBuf>,
    /// Largest bundle accepted (default 256 MiB).
    pub max_bundle_bytes: usize,
    /// The canary gate.
    pub canary: CanaryPolicy,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            bundle_dir: None,
            max_bundle_bytes: 256 << 20,
            canary: CanaryPolicy::default(),
        }
    }
}

/// When a rollout halts by itself. The new version is compared with the
/// version the channel carried before, over telemetry windows since the
/// rollout started.
#[derive(Debug, Clone)]
pub struct CanaryPolicy {
    /// How often the gate looks (default 10 s).
    pub interval: Duration,
    /// Predictions the new version needs before its error rate counts (default 100).
    pub min_predictions: u64,
    /// Halt when the new error rate exceeds the old by more than this (default 0.05).
    pub error_rate_margin: f64,
    /// Halt when the new version's largest feature PSI exceeds the old's by
    /// more than this (default 0.25; needs a baseline in the bundles).
    pub psi_margin: f64,
    /// Halt after this many devices roll the new version back (default 1).
    pub max_rollbacks: usize,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            interval: Duration::from_secs(10),
            min_predictions: 100,
            error_rate_margin: 0.05,
            psi_margin: 0.25,
            max_rollbacks: 1,
        }
    }
}

pub(crate) fn router(max_bundle_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/v1/fleet/root", get(latest_root))
        .route("/v1/fleet/roots/{version}", get(get_root).put(put_root))
        .route(
            "/v1/fleet/bundles/{sha256}",
            get(get_bundle)
                .put(put_bundle)
                .layer(DefaultBodyLimit::max(max_bundle_bytes)),
        )
        .route("/v1/fleet/channels", get(channels))
        .route("/v1/fleet/channels/{channel}", get(get_channel))
        .route("/v1/fleet/channels/{channel}/release", put(put_release))
        .route("/v1/fleet/channels/{channel}/rollout", post(rollout))
        .route("/v1/fleet/report", post(report))
        .route("/v1/fleet/devices", get(devices))
}

fn now_ms() -> u64 {
    edgeml_telemetry::now_ms()
}

fn bundle_dir(st: &AppState) -> ApiResult<PathBuf> {
    st.settings.fleet.bundle_dir.clone().ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "the fleet API is off: start the collector with a bundle directory (--bundles DIR)",
        )
    })
}

fn bundle_path(dir: &std::path::Path, sha256: &str) -> ApiResult<PathBuf> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "bundle id must be 64 lowercase hex digits (SHA-256)",
        ));
    }
    Ok(dir.join("sha256").join(sha256))
}

fn fleet_err(status: StatusCode, e: edgeml_fleet::Error) -> crate::api::ApiError {
    err(status, e.to_string())
}

/// The newest root the server has, verified along the chain from version 1.
async fn trusted_root(st: &AppState) -> ApiResult<Option<TrustedRoot>> {
    let store = st.store.clone();
    let Some((latest, _)) = blocking(move || store.root(None)).await? else {
        return Ok(None);
    };
    let mut trusted: Option<TrustedRoot> = None;
    for v in 1..=latest {
        let store = st.store.clone();
        let (_, env) = blocking(move || store.root(Some(v)))
            .await?
            .ok_or_else(|| {
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("root version {v} is missing"),
                )
            })?;
        let bytes = env.as_bytes();
        let r = match &mut trusted {
            None => TrustedRoot::bootstrap(bytes),
            Some(t) => t.update(bytes).map(|_| t.clone()),
        }
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored root {v}: {e}"),
            )
        })?;
        trusted = Some(r);
    }
    Ok(trusted)
}

async fn latest_root(State(st): State<AppState>) -> ApiResult<Response> {
    let store = st.store.clone();
    match blocking(move || store.root(None)).await? {
        Some((_, env)) => Ok(([(header::CONTENT_TYPE, "application/json")], env).into_response()),
        None => Err(err(
            StatusCode::NOT_FOUND,
            "no root published yet (edgeml root publish)",
        )),
    }
}

async fn get_root(State(st): State<AppState>, Path(version): Path<u64>) -> ApiResult<Response> {
    let store = st.store.clone();
    match blocking(move || store.root(Some(version))).await? {
        Some((_, env)) => Ok(([(header::CONTENT_TYPE, "application/json")], env).into_response()),
        None => Err(err(
            StatusCode::NOT_FOUND,
            format!("no root version {version}"),
        )),
    }
}

async fn put_root(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(version): Path<u64>,
    body: Bytes,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| err(StatusCode::BAD_REQUEST, "root metadata must be UTF-8 JSON"))?
        .to_string();
    let trusted = match trusted_root(&st).await? {
        None => TrustedRoot::bootstrap(&body)
            .map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))?,
        Some(mut t) => {
            t.update(&body)
                .map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            t
        }
    };
    if trusted.root().version != version {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "the document is root version {}, the URL says {version}",
                trusted.root().version
            ),
        ));
    }
    let store = st.store.clone();
    blocking(move || store.put_root(version, &text, now_ms())).await?;
    Ok((StatusCode::CREATED, Json(json!({"root_version": version}))).into_response())
}

async fn put_bundle(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let dir = bundle_dir(&st)?;
    let path = bundle_path(&dir, &sha256)?;
    let found = hex::encode(Sha256::digest(&body));
    if found != sha256 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("the body's SHA-256 is {found}, not {sha256}"),
        ));
    }
    // Refuse bundles devices would refuse: signed by the root's publishers.
    let root = trusted_root(&st).await?.ok_or_else(|| {
        err(
            StatusCode::CONFLICT,
            "publish a root first (edgeml root publish)",
        )
    })?;
    let policy = root
        .root()
        .publisher_policy()
        .map_err(|e| fleet_err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let verified = edgeml_bundle::verify(body.to_vec(), &policy).map_err(|e| {
        err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the bundle does not verify against the root's publisher keys: {e}"),
        )
    })?;
    let manifest = verified.manifest().clone();
    let existed = path.exists();
    if !existed {
        let write = move || -> std::io::Result<()> {
            let parent = path.parent().unwrap_or(&dir);
            std::fs::create_dir_all(parent)?;
            let tmp = parent.join(format!(".{sha256}.tmp"));
            std::fs::write(&tmp, &body)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("storing the bundle: {e}"),
                )
            })?;
    }
    Ok((
        if existed { StatusCode::OK } else { StatusCode::CREATED },
        Json(json!({"sha256": found, "model": manifest.name, "version": manifest.version.to_string()})),
    )
        .into_response())
}

/// Serve a bundle, honouring `Range: bytes=N-` and `bytes=N-M` so devices
/// on flaky links resume where they stopped.
async fn get_bundle(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    let dir = bundle_dir(&st)?;
    let path = bundle_path(&dir, &sha256)?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| err(StatusCode::NOT_FOUND, format!("no bundle {sha256}")))?;
    let len = bytes.len() as u64;
    let etag = format!("\"{sha256}\"");
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| parse_range(r, len));
    match range {
        None => Ok((
            [
                (header::CONTENT_TYPE, "application/wasm".to_string()),
                (header::ACCEPT_RANGES, "bytes".to_string()),
                (header::ETAG, etag),
            ],
            bytes,
        )
            .into_response()),
        Some(Some((start, end))) => Ok((
            StatusCode::PARTIAL_CONTENT,
            [
                (header::CONTENT_TYPE, "application/wasm".to_string()),
                (header::ACCEPT_RANGES, "bytes".to_string()),
                (header::ETAG, etag),
                (header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")),
            ],
            bytes[start as usize..=end as usize].to_vec(),
        )
            .into_response()),
        Some(None) => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response()),
    }
}

/// `bytes=N-` or `bytes=N-M` within `len`; `None` when unsatisfiable.
fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let (start, end) = r.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = match end.trim() {
        "" => len.checked_sub(1)?,
        e => e.parse::<u64>().ok()?.min(len.checked_sub(1)?),
    };
    (start <= end && start < len).then_some((start, end))
}

async fn put_release(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let dir = bundle_dir(&st)?;
    let root = trusted_root(&st).await?.ok_or_else(|| {
        err(
            StatusCode::CONFLICT,
            "publish a root first (edgeml root publish)",
        )
    })?;
    let store = st.store.clone();
    let ch = channel.clone();
    let current = blocking(move || store.release(&ch)).await?;
    let release = root
        .verify_release(
            &body,
            &channel,
            SystemTime::now(),
            current.as_ref().map(|c| &c.release),
        )
        .map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if let Some(c) = &current {
        if release.version <= c.version {
            return Err(err(
                StatusCode::CONFLICT,
                format!(
                    "channel `{channel}` is at release metadata version {}; publish a higher one",
                    c.version
                ),
            ));
        }
    }
    let path = bundle_path(&dir, &release.bundle.sha256)?;
    let size = tokio::fs::metadata(&path)
        .await
        .map_err(|_| {
            err(
                StatusCode::CONFLICT,
                format!("bundle {} has not been uploaded", release.bundle.sha256),
            )
        })?
        .len();
    if size != release.bundle.size {
        return Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the release says {} bytes; the stored bundle has {size}",
                release.bundle.size
            ),
        ));
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let store = st.store.clone();
    let r = release.clone();
    blocking(move || store.put_release(&r, &text, now_ms())).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"channel": channel, "version": release.version, "model": release.model,
            "model_version": release.model_version.to_string(), "rollout_percent": release.rollout_percent})),
    )
        .into_response())
}

/// The release and rollout state. Devices poll this with `If-None-Match`.
async fn get_channel(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> ApiResult<Response> {
    let store = st.store.clone();
    let ch = channel.clone();
    let stored = blocking(move || store.release(&ch)).await?.ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            format!("nothing published to channel `{channel}`"),
        )
    })?;
    let store = st.store.clone();
    let root_version = blocking(move || store.root(None)).await?.map_or(0, |r| r.0);
    let envelope = Envelope::from_slice(stored.envelope.as_bytes(), "release")
        .map_err(|e| fleet_err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let view = ChannelView {
        release: envelope,
        state: stored.state,
        reason: stored.reason,
        root_version,
    };
    let body = serde_json::to_vec(&view)
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response())
}

async fn channels(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    let channels = blocking(move || store.channels()).await?;
    Ok(Json(json!({ "channels": channels })).into_response())
}

async fn rollout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Json(action): Json<serde_json::Value>,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let action: RolloutAction = serde_json::from_value(
        action.get("action").cloned().unwrap_or_default(),
    )
    .map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "body must be {\"action\": \"pause\"} or {\"action\": \"resume\"}",
        )
    })?;
    let (state, reason) = match action {
        RolloutAction::Pause => (RolloutState::Paused, Some("paused by an operator")),
        RolloutAction::Resume => (RolloutState::Active, None),
    };
    let store = st.store.clone();
    let ch = channel.clone();
    if !blocking(move || store.set_rollout(&ch, state, reason, now_ms())).await? {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("nothing published to channel `{channel}`"),
        ));
    }
    Ok(Json(json!({"channel": channel, "state": state})).into_response())
}

async fn report(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let device = authenticate(&st, &headers, &body).await?;
    let report: StatusReport = serde_json::from_slice(&body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("status report: {e}")))?;
    let store = st.store.clone();
    let (d, r) = (device.clone(), report.clone());
    blocking(move || store.report(&d, &r, now_ms())).await?;
    if report.state == UpdateState::RolledBack {
        halt_on_rollbacks(&st, &report.channel).await?;
    }
    Ok(Json(json!({"device_id": device})).into_response())
}

/// Halt the channel's rollout once enough devices rolled its version back.
async fn halt_on_rollbacks(st: &AppState, channel: &str) -> ApiResult<()> {
    let store = st.store.clone();
    let ch = channel.to_string();
    let Some(current) = blocking(move || store.release(&ch)).await? else {
        return Ok(());
    };
    if current.state == RolloutState::Halted {
        return Ok(());
    }
    let version = current.release.model_version.to_string();
    let store = st.store.clone();
    let devices = blocking(move || store.fleet_devices()).await?;
    let failed: Vec<_> = devices
        .iter()
        .filter(|d| {
            d.status.channel == channel
                && d.status.state == UpdateState::RolledBack
                && d.status.target.as_deref() == Some(version.as_str())
        })
        .collect();
    if failed.len() >= st.settings.fleet.canary.max_rollbacks.max(1) {
        let first = failed[0];
        let reason = format!(
            "{} device(s) rolled back {} {version}; first: {}: {}",
            failed.len(),
            current.release.model,
            first.device_id,
            first
                .status
                .last_error
                .as_deref()
                .unwrap_or("no reason given")
        );
        let store = st.store.clone();
        let ch = channel.to_string();
        blocking(move || store.set_rollout(&ch, RolloutState::Halted, Some(&reason), now_ms()))
            .await?;
    }
    Ok(())
}

async fn devices(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    let devices = blocking(move || store.fleet_devices()).await?;
    Ok(Json(json!({ "devices": devices })).into_response())
}

/// The canary gate: every `interval`, compare each active rollout's new
/// version with the version before it, and halt it when it is worse by
/// more than the margins.
pub(crate) async fn canary_loop(st: AppState) {
    let mut tick = tokio::time::interval(st.settings.fleet.canary.interval);
    loop {
        tick.tick().await;
        let store = st.store.clone();
        let Ok(channels) = blocking(move || store.channels()).await else {
            continue;
        };
        for c in channels {
            if c.state != RolloutState::Active || c.previous_version.is_none() {
                continue;
            }
            let st2 = st.clone();
            let verdict =
                tokio::task::spawn_blocking(move || judge(&st2, &c).map(|r| (c, r))).await;
            if let Ok(Ok((c, Some(reason)))) = verdict {
                let store = st.store.clone();
                let _ = blocking(move || {
                    store.set_rollout(&c.channel, RolloutState::Halted, Some(&reason), now_ms())
                })
                .await;
            }
        }
    }
}

/// Why the rollout of `c` should halt, if it should.
fn judge(st: &AppState, c: &StoredRelease) -> Result<Option<String>, String> {
    let policy = &st.settings.fleet.canary;
    let model = &c.release.model;
    let new_version = c.release.model_version.to_string();
    let old_version = c.previous_version.clone().unwrap_or_default();
    let windows = |version: &str| {
        st.store
            .windows(&Query {
                model: Some(model.clone()),
                version: Some(version.to_string()),
                from_ms: Some(c.started_ms),
                ..Query::default()
            })
            .map_err(|e| e.to_string())
    };
    let (new_w, old_w) = (windows(&new_version)?, windows(&old_version)?);
    let (new_s, old_s) = (analysis::stats(&new_w)?, analysis::stats(&old_w)?);
    if new_s.count < policy.min_predictions {
        return Ok(None);
    }
    if new_s.error_rate > old_s.error_rate + policy.error_rate_margin {
        return Ok(Some(format!(
            "canary: error rate {:.1}% on {model} {new_version} ({} predictions) vs {:.1}% on {old_version}, margin {:.1} points",
            new_s.error_rate * 100.0,
            new_s.count,
            old_s.error_rate * 100.0,
            policy.error_rate_margin * 100.0
        )));
    }
    let models = st.store.models().map_err(|e| e.to_string())?;
    let max_psi =
        |version: &str, w: &[crate::store::StoredWindow]| -> Result<Option<f64>, String> {
            let Some(baseline) = models
                .iter()
                .filter(|m| m.model.name == *model && m.model.version == version)
                .find_map(|m| m.baseline.clone())
            else {
                return Ok(None);
            };
            if w.is_empty() {
                return Ok(None);
            }
            let report = analysis::drift(&baseline, w, u64::MAX / 4, &st.settings.drift)?;
            Ok(report
                .buckets
                .iter()
                .flat_map(|b| b.features.iter().map(|f| f.psi))
                .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p)))))
        };
    if let (Some(new_psi), old_psi) = (
        max_psi(&new_version, &new_w)?,
        max_psi(&old_version, &old_w)?,
    ) {
        let old_psi = old_psi.unwrap_or(0.0);
        if new_psi > old_psi + policy.psi_margin {
            return Ok(Some(format!(
                "canary: drift on {model} {new_version}: largest feature PSI {new_psi:.2} vs {old_psi:.2} on {old_version}, margin {:.2}",
                policy.psi_margin
            )));
        }
    }
    Ok(None)
}
