//! The fleet server: roots, content-addressed bundles, signed releases per
//! channel, rollout control, device status, and the metric-gated canary.
//!
//! The server holds no signing keys. It checks everything it is given
//! against the newest root (so a bad push fails at once, not on devices),
//! but devices check it all again; the server can only hold a rollout back
//! or halt it, never widen it or change what it installs.

use crate::analysis;
use crate::api::{admin, authenticate, blocking, err, ApiResult, AppState};
use crate::audit;
use crate::blobs::{BlobLocation, BlobStore};
use crate::store::{Decision, Publish, Query, StoredRelease};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgeml_bundle::SecretKey;
use edgeml_client::wire::fleet::{
    ArtifactStored, BundleStored, ChannelList, ChannelView, DecisionList, DecisionSource,
    DeviceTags, FleetDevice, FleetDeviceList, ReleasePublished, ReportAccepted, RolloutAction,
    RolloutChanged, RolloutRequest, RolloutState, RootPublished, StatusReport, UpdateState,
};
use edgeml_client::wire::ErrorBody;
use edgeml_fleet::Timestamp;
use edgeml_fleet::{Envelope, Tags, TrustedRoot};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tower::ServiceExt as _;
use tracing::Instrument as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

/// Fleet settings.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Where bundles are stored (`DIR/sha256/<hex>`). With neither this
    /// nor `registry` the fleet API is off (it answers 503).
    pub bundle_dir: Option<PathBuf>,
    /// Keep bundles and artifacts in this OCI registry repository instead
    /// (`http://host:5000/edgeml/bundles`); devices download them from it.
    pub registry: Option<String>,
    /// User and password for the registry (HTTP basic authentication).
    pub registry_credentials: Option<RegistryCredentials>,
    /// Largest bundle accepted (default 256 MiB).
    pub max_bundle_bytes: usize,
    /// The canary gate.
    pub canary: CanaryPolicy,
    /// The online timestamp key (named in root's timestamp role). When set,
    /// every channel view carries a timestamp of the current release signed
    /// with it (default: none).
    pub timestamp_key: Option<Arc<SecretKey>>,
    /// How long a timestamp is valid (default 1 day). The server signs a
    /// new one when half of this has passed.
    pub timestamp_ttl: Duration,
}

/// A registry user and password (the password is not shown by `Debug`).
#[derive(Clone)]
pub struct RegistryCredentials {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            bundle_dir: None,
            registry: None,
            registry_credentials: None,
            max_bundle_bytes: 256 << 20,
            canary: CanaryPolicy::default(),
            timestamp_key: None,
            timestamp_ttl: Duration::from_secs(86400),
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
    /// Halt when the new version's accuracy is below the old's by more
    /// than this (default 0.05): measured from labels once both versions
    /// have `min_labels`, else estimated from the top scores (CBPE) unless
    /// the labels show the scores are not calibrated.
    pub accuracy_margin: f64,
    /// Labelled predictions each version needs before measured accuracy
    /// counts (default 50).
    pub min_labels: u64,
    /// Distinct devices whose evidence a halt needs (default 2): devices
    /// that rolled the new version back, or whose own error rate is above
    /// the margin. Each device counts once, however much it sends.
    pub min_devices: usize,
    /// Or, when set, this share (0 to 1] of the devices the new bundle was
    /// served to (default unset). Opt-in, for small canaries: with a share
    /// set, a cohort smaller than `min_devices` can halt on that share of
    /// it (a one-device canary halts on its one device).
    pub min_share: Option<f64>,
}

impl CanaryPolicy {
    /// Check the settings: a zero interval or device count, or a share
    /// outside (0, 1], is refused.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("the canary interval must be above zero (for example 10s)".into());
        }
        if self.min_devices == 0 {
            return Err("the canary's minimum device count must be at least 1".into());
        }
        if let Some(share) = self.min_share {
            if !(share > 0.0 && share <= 1.0) {
                return Err(format!(
                    "the canary's minimum share {share} is not in (0, 1]"
                ));
            }
        }
        if !(self.error_rate_margin >= 0.0
            && self.psi_margin >= 0.0
            && (0.0..=1.0).contains(&self.accuracy_margin))
        {
            return Err("the canary margins must be zero or above".into());
        }
        Ok(())
    }

    /// Whether evidence from `devices` distinct devices, out of a cohort of
    /// `cohort` devices the bundle was served to, is enough to halt.
    pub fn enough(&self, devices: usize, cohort: usize) -> bool {
        devices >= self.min_devices
            || self.min_share.is_some_and(|share| {
                devices > 0 && cohort > 0 && devices as f64 >= share * cohort as f64
            })
    }
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            interval: Duration::from_secs(10),
            min_predictions: 100,
            error_rate_margin: 0.05,
            psi_margin: 0.25,
            accuracy_margin: 0.05,
            min_labels: 50,
            min_devices: 2,
            min_share: None,
        }
    }
}

/// The fleet routes, each with its description.
pub(crate) fn routes(max_bundle_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(latest_root))
        .routes(routes!(get_root, put_root))
        .routes(routes!(get_bundle, put_bundle).layer(DefaultBodyLimit::max(max_bundle_bytes)))
        .routes(routes!(get_artifact, put_artifact).layer(DefaultBodyLimit::max(max_bundle_bytes)))
        .routes(routes!(channels))
        .routes(routes!(get_channel))
        .routes(routes!(put_release))
        .routes(routes!(rollout))
        .routes(routes!(report))
        .routes(routes!(devices))
        .routes(routes!(put_device_tags))
        .routes(routes!(decisions))
}

/// The parameters of routes under `/v1/fleet/bundles/{sha256}` and
/// `/v1/fleet/artifacts/{sha256}`.
const DIGEST: &str = "Lowercase hex SHA-256 of the blob";

pub(crate) fn now_ms() -> u64 {
    edgeml_telemetry::now_ms()
}

fn blobs(st: &AppState) -> ApiResult<Arc<dyn BlobStore>> {
    st.blobs.clone().ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "the fleet API is off: start the collector with a bundle directory (--bundles DIR)",
        )
    })
}

/// Refuse a blob id that is not a SHA-256 digest in lowercase hex.
fn check_digest(sha256: &str) -> ApiResult<()> {
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
    Ok(())
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

/// [`trusted_root`], or 409 before a root is published.
async fn published_root(st: &AppState) -> ApiResult<TrustedRoot> {
    trusted_root(st).await?.ok_or_else(|| {
        err(
            StatusCode::CONFLICT,
            "publish a root first (edgeml root publish)",
        )
    })
}

/// An admin upload of a content-addressed blob: the blob store, once the
/// body's SHA-256 is the one the URL names.
fn blob_upload(
    st: &AppState,
    headers: &HeaderMap,
    sha256: &str,
    body: &[u8],
) -> ApiResult<Arc<dyn BlobStore>> {
    admin(st, headers)?;
    let blobs = blobs(st)?;
    check_digest(sha256)?;
    let found = hex::encode(Sha256::digest(body));
    if found != sha256 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("the body's SHA-256 is {found}, not {sha256}"),
        ));
    }
    Ok(blobs)
}

/// The latest published root of trust (a signed envelope).
#[utoipa::path(
    get,
    path = "/v1/fleet/root",
    tag = "fleet",
    responses(
        (status = 200, description = "The signed root metadata", body = edgeml_fleet::Envelope),
        (status = 404, description = "No root published yet", body = ErrorBody),
    )
)]
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

/// One version of the root of trust; devices walk versions one by one.
#[utoipa::path(
    get,
    path = "/v1/fleet/roots/{version}",
    tag = "fleet",
    params(("version" = u64, Path, description = "Root version")),
    responses(
        (status = 200, description = "The signed root metadata", body = edgeml_fleet::Envelope),
        (status = 404, description = "No such root version", body = ErrorBody),
    )
)]
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

/// Publish a root version: the first one bootstraps trust, later ones must
/// be signed by a threshold of both the current and the new root keys.
#[utoipa::path(
    put,
    path = "/v1/fleet/roots/{version}",
    tag = "fleet",
    security(("admin" = [])),
    params(("version" = u64, Path, description = "Root version, as in the document")),
    request_body = edgeml_fleet::Envelope,
    responses(
        (status = 201, description = "Published", body = RootPublished),
        (status = 400, description = "Not UTF-8, or the version differs from the URL's", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 422, description = "Not a valid root update (signatures, version, expiry); the reason says which", body = ErrorBody),
    )
)]
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
    let mut entry = audit::by_admin(&headers, "root.publish", format!("root v{version}"));
    entry.key_ids = trusted.root_signers().into_iter().collect();
    entry.details = audit::details([
        ("version", version.to_string()),
        ("expires", trusted.root().expires.clone()),
    ]);
    audit::record(&st, entry).await?;
    Ok((
        StatusCode::CREATED,
        Json(RootPublished {
            root_version: version,
        }),
    )
        .into_response())
}

/// Upload a signed bundle under its SHA-256 (refused unless signed by the
/// root's publishers).
#[utoipa::path(
    put,
    path = "/v1/fleet/bundles/{sha256}",
    tag = "fleet",
    security(("admin" = [])),
    params(("sha256" = String, Path, description = DIGEST)),
    request_body(content_type = "application/wasm", description = "The signed bundle"),
    responses(
        (status = 201, description = "Stored", body = BundleStored),
        (status = 200, description = "Already stored", body = BundleStored),
        (status = 400, description = "The body's digest is not the URL's, or the digest is malformed", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 413, description = "Larger than the server's bundle limit", body = ErrorBody),
        (status = 422, description = "Does not verify against the root's publisher keys", body = ErrorBody),
        (status = 503, description = "The fleet API is off (no bundle store)", body = ErrorBody),
    )
)]
async fn put_bundle(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let blobs = blob_upload(&st, &headers, &sha256, &body)?;
    // Refuse bundles devices would refuse: signed by the root's publishers.
    let root = published_root(&st).await?;
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
    let size = body.len();
    let status = store_blob(blobs, sha256.clone(), body).await?;
    let mut entry = audit::by_admin(&headers, "bundle.upload", &sha256);
    entry.key_ids = verified.signers().iter().map(ToString::to_string).collect();
    entry.details = audit::details([
        ("model", manifest.name.clone()),
        ("version", manifest.version.to_string()),
        ("size", size.to_string()),
        ("stored", stored(status)),
    ]);
    if let Some(card) = &manifest.card {
        entry
            .details
            .insert("card_owner".into(), card.owner.name.clone());
        entry.details.insert(
            "training_data_sha256".into(),
            card.training_data.sha256.clone(),
        );
    }
    audit::record(&st, entry).await?;
    Ok((
        status,
        Json(BundleStored {
            sha256,
            model: manifest.name,
            version: manifest.version.to_string(),
        }),
    )
        .into_response())
}

/// How an upload went, for the audit log.
fn stored(status: StatusCode) -> String {
    if status == StatusCode::CREATED {
        "new"
    } else {
        "already stored"
    }
    .to_string()
}

/// Store a checked blob under its digest: `201 Created`, or `200 OK` if
/// it was there already.
async fn store_blob(
    blobs: Arc<dyn BlobStore>,
    sha256: String,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let created = blocking(move || blobs.put(&sha256, &body)).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

/// The root's artifact signers, or 409 before a root is published.
async fn artifact_signers(st: &AppState) -> ApiResult<edgeml_bundle::TrustPolicy> {
    published_root(st)
        .await?
        .root()
        .artifact_policy()
        .map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))
}

/// Store a precompiled artifact (`edgeml precompile`) next to the bundles,
/// under its SHA-256. Refused unless signed by the root's build keys (or a
/// publisher key if there are none) over intact code; which bundle it
/// belongs to is checked when a release lists it.
#[utoipa::path(
    put,
    path = "/v1/fleet/artifacts/{sha256}",
    tag = "fleet",
    security(("admin" = [])),
    params(("sha256" = String, Path, description = DIGEST)),
    request_body(content_type = "application/octet-stream", description = "The signed precompiled artifact"),
    responses(
        (status = 201, description = "Stored", body = ArtifactStored),
        (status = 200, description = "Already stored", body = ArtifactStored),
        (status = 400, description = "The body's digest is not the URL's, or the digest is malformed", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 413, description = "Larger than the server's bundle limit", body = ErrorBody),
        (status = 422, description = "Does not verify against the root's build keys", body = ErrorBody),
        (status = 503, description = "The fleet API is off (no bundle store)", body = ErrorBody),
    )
)]
async fn put_artifact(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let blobs = blob_upload(&st, &headers, &sha256, &body)?;
    let signers = artifact_signers(&st).await?;
    let (claims, _) = edgeml_bundle::artifact::verify_signature(&body, &signers).map_err(|e| {
        err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the artifact does not verify against the root's build keys: {e}"),
        )
    })?;
    let signer = edgeml_bundle::artifact::signer_key_id(&body).ok();
    let size = body.len();
    let status = store_blob(blobs, sha256.clone(), body).await?;
    let mut entry = audit::by_admin(&headers, "artifact.upload", &sha256);
    entry.key_ids = signer.into_iter().collect();
    entry.details = audit::details([
        ("bundle_content_sha256", claims.bundle_sha256.clone()),
        ("target", claims.target.clone()),
        ("engine", claims.engine.clone()),
        ("size", size.to_string()),
        ("stored", stored(status)),
    ]);
    audit::record(&st, entry).await?;
    Ok((
        status,
        Json(ArtifactStored {
            sha256,
            bundle_sha256: claims.bundle_sha256,
            target: claims.target,
            engine: claims.engine,
        }),
    )
        .into_response())
}

/// A blob download (owned headers and path: the request body is not
/// `Sync`, so no borrow of the request may live across an await): `None`
/// for an admin, else the enrolled device that signed the request, its
/// tags and the channels, to decide what it may have.
async fn device_request(
    st: &AppState,
    headers: HeaderMap,
    path: String,
) -> ApiResult<Option<(String, Tags, Vec<StoredRelease>)>> {
    if admin(st, &headers).is_ok() {
        return Ok(None);
    }
    let device = authenticate_request(st, &headers, "GET", &path).await?;
    let store = st.store.clone();
    let dev = device.clone();
    let (tags, channels) =
        blocking(move || Ok((store.device_tags(&dev)?, store.channels()?))).await?;
    Ok(Some((device, tags, channels)))
}

/// Whether the rollout of `c` (at its current step) includes `device`.
fn in_rollout(c: &StoredRelease, device: &str, tags: &Tags) -> bool {
    c.release.includes(device, tags, Some(c.step))
}

/// Serve a precompiled artifact, like [`get_bundle`]: to admins, and to
/// enrolled devices (signed request) in the rollout of a channel whose
/// current release lists it.
#[utoipa::path(
    get,
    path = "/v1/fleet/artifacts/{sha256}",
    tag = "fleet",
    security(("admin" = []), ("device" = [])),
    params(
        ("sha256" = String, Path, description = DIGEST),
        ("x-edgeml-time" = Option<u64>, Header, description = "Devices: when the request was signed (Unix ms)"),
        ("Range" = Option<String>, Header, description = "Resume a download: `bytes=N-`"),
        ("If-None-Match" = Option<String>, Header, description = "The digest as an ETag"),
    ),
    responses(
        (status = 200, description = "The artifact", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified"),
        (status = 307, description = "Stored in the OCI registry: fetch it from `Location` (digest-checked by the device)"),
        (status = 401, description = "Neither the admin token nor a valid device signature", body = ErrorBody),
        (status = 403, description = "No channel offers this artifact to the device", body = ErrorBody),
        (status = 404, description = "No such blob", body = ErrorBody),
    )
)]
async fn get_artifact(
    State(st): State<AppState>,
    Path(sha256): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let blobs = blobs(&st)?;
    check_digest(&sha256)?;
    if let Some((device, tags, channels)) =
        device_request(&st, req.headers().clone(), req.uri().path().to_string()).await?
    {
        let offered = channels.iter().any(|c| {
            in_rollout(c, &device, &tags) && c.release.artifacts.iter().any(|a| a.sha256 == sha256)
        });
        if !offered {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("artifact {sha256} is not offered to device `{device}` by any channel"),
            ));
        }
    }
    serve_blob(blobs, &sha256, req, "application/octet-stream").await
}

/// Serve a bundle, streamed from disk by tower-http (with `Range`, so
/// devices on flaky links resume where they stopped), with its digest as a
/// strong `ETag`. Bundles are the publisher's property: they go to admins,
/// and to enrolled devices (signed request) in the rollout of a channel
/// whose current release pins the bundle. Serving a device records the
/// offer: only then can its rollback count as evidence.
#[utoipa::path(
    get,
    path = "/v1/fleet/bundles/{sha256}",
    tag = "fleet",
    security(("admin" = []), ("device" = [])),
    params(
        ("sha256" = String, Path, description = DIGEST),
        ("x-edgeml-time" = Option<u64>, Header, description = "Devices: when the request was signed (Unix ms)"),
        ("Range" = Option<String>, Header, description = "Resume a download: `bytes=N-`"),
        ("If-None-Match" = Option<String>, Header, description = "The digest as an ETag"),
    ),
    responses(
        (status = 200, description = "The bundle", content_type = "application/wasm"),
        (status = 206, description = "The requested range", content_type = "application/wasm"),
        (status = 304, description = "Not modified"),
        (status = 307, description = "Stored in the OCI registry: fetch it from `Location` (digest-checked by the device)"),
        (status = 401, description = "Neither the admin token nor a valid device signature", body = ErrorBody),
        (status = 403, description = "No channel offers this bundle to the device", body = ErrorBody),
        (status = 404, description = "No such blob", body = ErrorBody),
    )
)]
async fn get_bundle(
    State(st): State<AppState>,
    Path(sha256): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let blobs = blobs(&st)?;
    check_digest(&sha256)?;
    if let Some((device, tags, channels)) =
        device_request(&st, req.headers().clone(), req.uri().path().to_string()).await?
    {
        let offering: Vec<String> = channels
            .iter()
            .filter(|c| c.release.bundle.sha256 == sha256 && in_rollout(c, &device, &tags))
            .map(|c| c.channel.clone())
            .collect();
        if offering.is_empty() {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("bundle {sha256} is not offered to device `{device}` by any channel"),
            ));
        }
        let store = st.store.clone();
        let sha = sha256.clone();
        blocking(move || {
            for channel in &offering {
                store.record_offer(channel, &sha, &device, now_ms())?;
            }
            Ok(())
        })
        .await?;
    }
    serve_blob(blobs, &sha256, req, "application/wasm").await
}

/// Stream a stored blob with tower-http (`Range` for resumed downloads),
/// with its digest as a strong `ETag`.
async fn serve_blob(
    blobs: Arc<dyn BlobStore>,
    sha256: &str,
    req: axum::extract::Request,
    content_type: &'static str,
) -> ApiResult<Response> {
    let etag = format!("\"{sha256}\"");
    if if_none_match(req.headers(), &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let sha = sha256.to_string();
    let path = match blocking(move || blobs.locate(&sha)).await? {
        Some(BlobLocation::File(path)) => path,
        // The registry serves it (with Range); the device checks the
        // digest and length the signed release pins, as always.
        Some(BlobLocation::Url(url)) => {
            return Ok(axum::response::Redirect::temporary(&url).into_response())
        }
        None => return Err(err(StatusCode::NOT_FOUND, format!("no blob {sha256}"))),
    };
    let resp = tower_http::services::ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("serving {sha256}: {e}"),
            )
        })?;
    let mut resp = resp.map(axum::body::Body::new);
    if let Ok(v) = header::HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if resp.status().is_success() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
    }
    Ok(resp)
}

/// Whether `If-None-Match` names `etag` (or `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// Check a bodiless request signed by a device key (see
/// [`edgeml_telemetry::wire::get_signing_body`]): the device, the method,
/// the path and a time within a few minutes of ours.
async fn authenticate_request(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
) -> ApiResult<String> {
    use edgeml_telemetry::wire;
    let time: u64 = headers
        .get(wire::TIME_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                format!(
                    "bundles need the admin token or a device signature ({} and {} headers)",
                    wire::TIME_HEADER,
                    wire::SIGNATURE_HEADER
                ),
            )
        })?;
    if now_ms().abs_diff(time) > wire::MAX_REQUEST_SKEW_MS {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            format!(
                "the request was signed at {time} ms, more than {} s from the server's clock; check the device's clock",
                wire::MAX_REQUEST_SKEW_MS / 1000
            ),
        ));
    }
    authenticate(st, headers, &wire::get_signing_body(method, path, time)).await
}

/// Publish signed release metadata to a channel (starts its rollout).
#[utoipa::path(
    put,
    path = "/v1/fleet/channels/{channel}/release",
    tag = "fleet",
    security(("admin" = [])),
    params(("channel" = String, Path, description = "Channel name")),
    request_body = edgeml_fleet::Envelope,
    responses(
        (status = 201, description = "Published", body = ReleasePublished),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "The version is not above the channel's, or it was published concurrently", body = ErrorBody),
        (status = 422, description = "Signatures, expiry, pinned bundle or artifacts do not check out; the reason says which", body = ErrorBody),
        (status = 503, description = "The fleet API is off (no bundle store)", body = ErrorBody),
    )
)]
async fn put_release(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let blobs = blobs(&st)?;
    let root = published_root(&st).await?;
    let store = st.store.clone();
    let ch = channel.clone();
    // The version ratchet holds only for metadata signed under the current
    // release keys: after a root rotation replaces them, a release with a
    // lower version (by the new keys) recovers the channel from a
    // fast-forward by leaked keys.
    let latest = blocking(move || store.release(&ch)).await?;
    let after = latest.as_ref().map(|c| c.version);
    let current = latest.filter(|c| root.check_release_signatures(c.envelope.as_bytes()).is_ok());
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
    check_digest(&release.bundle.sha256)?;
    let (b, sha) = (blobs.clone(), release.bundle.sha256.clone());
    let size = blocking(move || b.size(&sha)).await?.ok_or_else(|| {
        err(
            StatusCode::CONFLICT,
            format!("bundle {} has not been uploaded", release.bundle.sha256),
        )
    })?;
    if size != release.bundle.size {
        return Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the release says {} bytes; the stored bundle has {size}",
                release.bundle.size
            ),
        ));
    }
    // The bundle may have reached the store without the server (pushed to
    // the registry): check it verifies, as at upload, before devices see it.
    let (b, sha) = (blobs.clone(), release.bundle.sha256.clone());
    let bundle = blocking(move || b.read(&sha)).await?.ok_or_else(|| {
        err(
            StatusCode::CONFLICT,
            format!("bundle {} has not been uploaded", release.bundle.sha256),
        )
    })?;
    let policy = root
        .root()
        .publisher_policy()
        .map_err(|e| fleet_err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let bundle = tokio::task::spawn_blocking(move || {
        edgeml_bundle::verify(bundle, &policy).map(|v| v.bytes().to_vec())
    })
    .await
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the pinned bundle does not verify against the root's publisher keys: {e}"),
        )
    })?;
    check_release_artifacts(blobs, &bundle, &release, &root).await?;
    let signers = root
        .release_signers(&body)
        .map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    // Recorded in the publish's own transaction.
    let mut entry = audit::by_admin(&headers, "release.publish", &channel);
    entry.key_ids = signers.into_iter().collect();
    entry.details = audit::details([
        ("metadata_version", release.version.to_string()),
        ("model", release.model.clone()),
        ("model_version", release.model_version.to_string()),
        ("bundle_sha256", release.bundle.sha256.clone()),
        ("rollout_percent", release.rollout_percent.to_string()),
        ("artifacts", release.artifacts.len().to_string()),
    ]);
    if let Some(t) = &release.target {
        entry.details.insert("target".into(), t.clone());
    }
    if let Some(s) = &release.schedule {
        entry.details.insert("steps".into(), s.steps_text());
        entry.details.insert(
            "step_gate".into(),
            format!("{} s, {} device(s)", s.min_step_secs, s.min_step_devices),
        );
    }
    if let Some(a) = &release.abort {
        entry.details.insert(
            "abort".into(),
            format!(
                "{}% failed after {} device(s)",
                a.failure_share * 100.0,
                a.min_devices
            ),
        );
    }
    let store = st.store.clone();
    let r = release.clone();
    match blocking(move || store.publish_release(&r, &text, now_ms(), after, Some(&entry))).await? {
        Publish::Published => {}
        Publish::Changed => {
            return Err(err(
                StatusCode::CONFLICT,
                format!("channel `{channel}` changed while this release was checked; publish again"),
            ))
        }
        Publish::VersionTaken => {
            return Err(err(
                StatusCode::CONFLICT,
                format!(
                    "channel `{channel}` already has release metadata version {}; publish a new version",
                    release.version
                ),
            ))
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(ReleasePublished {
            channel,
            version: release.version,
            model: release.model,
            model_version: release.model_version.to_string(),
            rollout_percent: release.rollout_percent,
        }),
    )
        .into_response())
}

/// Each artifact a release lists must be stored here, with the listed
/// size, signed by the root's artifact signers, compiled from the release's
/// bundle for the target and engine the release says (devices check all of
/// it again).
async fn check_release_artifacts(
    blobs: Arc<dyn BlobStore>,
    bundle: &[u8],
    release: &edgeml_fleet::Release,
    root: &TrustedRoot,
) -> ApiResult<()> {
    if release.artifacts.is_empty() {
        return Ok(());
    }
    // Signed by the current root's artifact signers (a rotation since the
    // upload may have revoked the key).
    let signers = root
        .root()
        .artifact_policy()
        .map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    // Artifacts name the bundle by its signed content's digest.
    let read = |sha: &str| {
        let (blobs, sha) = (blobs.clone(), sha.to_string());
        blocking(move || blobs.read(&sha))
    };
    let content_sha256 = edgeml_bundle::inspect(bundle)
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored bundle: {e}"),
            )
        })?
        .content_sha256;
    let mut seen = std::collections::HashSet::new();
    for a in &release.artifacts {
        let family = edgeml_bundle::artifact::target_family(&a.target);
        if !seen.insert((family, a.engine.as_str())) {
            return Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the release lists two artifacts for target `{family}` and engine `{}`",
                    a.engine
                ),
            ));
        }
        check_digest(&a.sha256)?;
        let bytes = read(&a.sha256).await?.ok_or_else(|| {
            err(
                StatusCode::CONFLICT,
                format!("artifact {} has not been uploaded", a.sha256),
            )
        })?;
        let (claims, _) =
            edgeml_bundle::artifact::verify_signature(&bytes, &signers).map_err(|e| {
                err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("stored artifact {}: {e}", a.sha256),
                )
            })?;
        let mismatch = if bytes.len() as u64 != a.size {
            Some(format!(
                "is {} bytes, the release says {}",
                bytes.len(),
                a.size
            ))
        } else if claims.bundle_sha256 != content_sha256 {
            Some(format!(
                "was compiled from bundle content {}, the release pins bundle content {content_sha256}",
                claims.bundle_sha256
            ))
        } else if claims.target != a.target || claims.engine != a.engine {
            Some(format!(
                "is for target `{}` and engine `{}`, the release says `{}` and `{}`",
                claims.target, claims.engine, a.target, a.engine
            ))
        } else {
            None
        };
        if let Some(m) = mismatch {
            return Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("artifact {} {m}", a.sha256),
            ));
        }
    }
    Ok(())
}

/// The release and rollout state. Devices poll this with `If-None-Match`.
#[utoipa::path(
    get,
    path = "/v1/fleet/channels/{channel}",
    tag = "fleet",
    params(
        ("channel" = String, Path, description = "Channel name"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of the last answer"),
    ),
    responses(
        (status = 200, description = "The release, a signed timestamp and the rollout state", body = ChannelView),
        (status = 304, description = "Not modified"),
        (status = 404, description = "Nothing published to the channel", body = ErrorBody),
    )
)]
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
    let timestamp = timestamp_for(&st, &channel, &envelope)?;
    let view = ChannelView {
        release: envelope,
        state: stored.state,
        reason: stored.reason,
        root_version,
        timestamp,
        step: stored.release.schedule.is_some().then_some(stored.step),
    };
    let body = serde_json::to_vec(&view)
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    if if_none_match(&headers, &etag) {
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

/// Signed timestamps per channel: reused (so `ETag`s stay stable and
/// devices get 304s) until half their lifetime has passed or the release
/// changes.
#[derive(Default)]
pub(crate) struct TimestampCache(Mutex<HashMap<String, (String, Envelope, SystemTime)>>);

/// The timestamp for `channel`'s current release, when the server holds a
/// timestamp key.
fn timestamp_for(st: &AppState, channel: &str, release: &Envelope) -> ApiResult<Option<Envelope>> {
    let Some(key) = &st.settings.fleet.timestamp_key else {
        return Ok(None);
    };
    let ttl = st.settings.fleet.timestamp_ttl;
    let now = SystemTime::now();
    let payload_sha = release.payload_sha256();
    let mut cache = st.timestamps.0.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((sha, env, expires)) = cache.get(channel) {
        let fresh = expires.duration_since(now).is_ok_and(|left| left > ttl / 2);
        if *sha == payload_sha && fresh {
            return Ok(Some(env.clone()));
        }
    }
    let expires = now + ttl;
    let ts = Timestamp::for_release(release, expires)
        .map_err(|e| fleet_err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let env = Envelope::sign(&ts, &[key.as_ref()])
        .map_err(|e| fleet_err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    cache.insert(channel.to_string(), (payload_sha, env.clone(), expires));
    Ok(Some(env))
}

/// Every channel with its release and rollout state.
#[utoipa::path(
    get,
    path = "/v1/fleet/channels",
    tag = "fleet",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The channels", body = ChannelList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn channels(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    let channels = blocking(move || store.channels()).await?;
    Ok(Json(ChannelList {
        channels: channels.into_iter().map(StoredRelease::status).collect(),
    })
    .into_response())
}

/// Pause, resume or abort a channel's rollout (a decision, recorded once; abort
/// halts it, so devices that took the release roll back).
#[utoipa::path(
    post,
    path = "/v1/fleet/channels/{channel}/rollout",
    tag = "fleet",
    security(("admin" = [])),
    params(("channel" = String, Path, description = "Channel name")),
    request_body = RolloutRequest,
    responses(
        (status = 200, description = "The rollout's state now", body = RolloutChanged),
        (status = 400, description = "Not a pause, resume or abort action", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Nothing published to the channel", body = ErrorBody),
        (status = 409, description = "The rollout changed meanwhile (another operator or the canary gate)", body = ErrorBody),
    )
)]
async fn rollout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let RolloutRequest { action } = serde_json::from_slice(&body).map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "body must be {\"action\": A} with A one of \"pause\", \"resume\", \"promote\" or \"abort\"",
        )
    })?;
    let changed = rollout_action(&st, channel, action, &audit::Operator::api(&headers)).await?;
    Ok(Json(changed).into_response())
}

/// Pause, resume, abort or promote a channel's rollout for an operator:
/// the one place both the API and the console take these decisions, so
/// their audit entries are the same (the console's say `via = console`).
pub(crate) async fn rollout_action(
    st: &AppState,
    channel: String,
    action: RolloutAction,
    by: &audit::Operator,
) -> ApiResult<RolloutChanged> {
    let store = st.store.clone();
    let ch = channel.clone();
    let Some(current) = blocking(move || store.release(&ch)).await? else {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("nothing published to channel `{channel}`"),
        ));
    };
    let paced = current.release.schedule.is_some();
    let (state, reason, step) = match action {
        RolloutAction::Pause => (
            RolloutState::Paused,
            "paused by an operator".to_string(),
            None,
        ),
        RolloutAction::Resume => (
            RolloutState::Active,
            "resumed by an operator".to_string(),
            None,
        ),
        RolloutAction::Abort => (
            RolloutState::Halted,
            "aborted by an operator".to_string(),
            None,
        ),
        RolloutAction::Promote => {
            if !paced {
                return Err(err(
                    StatusCode::CONFLICT,
                    format!(
                        "the release on channel `{channel}` has no step schedule; re-sign it with a larger share (`edgeml rollout set 100% --channel {channel}`)"
                    ),
                ));
            }
            if current.state == RolloutState::Halted {
                return Err(err(
                    StatusCode::CONFLICT,
                    format!(
                        "the rollout on channel `{channel}` is halted ({}); resume it before promoting",
                        current.reason.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            let last = current.release.last_step();
            (
                RolloutState::Active,
                format!(
                    "promoted by an operator: step {} -> {} ({}% -> {}%)",
                    current.step + 1,
                    last + 1,
                    current.release.share(Some(current.step)),
                    current.release.share(Some(last))
                ),
                (current.step != last).then_some(last),
            )
        }
    };
    let unchanged = paced.then_some(current.step);
    if current.state == state && step.is_none() {
        return Ok(RolloutChanged {
            channel,
            state,
            step: unchanged,
        });
    }
    let new_step = step.or(unchanged);
    let mut decision = Decision {
        to: state,
        source: DecisionSource::Operator,
        reason: Some(reason),
        replica: st.settings.replica.clone(),
        audit: None,
        step,
    };
    decision.audit = Some(audit::decision(Some(by), &current, &decision));
    let store = st.store.clone();
    if !blocking(move || store.decide(&current, &decision, now_ms())).await? {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "the rollout of channel `{channel}` changed while this was being decided (another operator, or the canary gate); look at it again and retry"
            ),
        ));
    }
    Ok(RolloutChanged {
        channel,
        state,
        step: new_step,
    })
}

/// A device's update status (signed; sequence numbers refuse replays).
#[utoipa::path(
    post,
    path = "/v1/fleet/report",
    tag = "fleet",
    security(("device" = [])),
    params(("x-edgeml-device" = String, Header, description = "The enrolled device id")),
    request_body = StatusReport,
    responses(
        (status = 200, description = "Accepted", body = ReportAccepted),
        (status = 400, description = "Malformed report", body = ErrorBody),
        (status = 401, description = "Unknown device, missing header or bad signature", body = ErrorBody),
        (status = 409, description = "The sequence number is not above the last one (a replay?)", body = ErrorBody),
        (status = 422, description = "NUL in a string", body = ErrorBody),
    )
)]
async fn report(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let device = authenticate(&st, &headers, &body).await?;
    crate::api::no_nul(&body)?;
    let report: StatusReport = serde_json::from_slice(&body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("status report: {e}")))?;
    edgeml_fleet::check_tags(&report.tags)
        .map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let store = st.store.clone();
    let (d, r) = (device.clone(), report.clone());
    if !blocking(move || store.report(&d, &r, now_ms())).await? {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "status report sequence number {} is not above the last one accepted from device `{device}` (a replay?)",
                report.seq
            ),
        ));
    }
    if report.state == UpdateState::RolledBack {
        rollback_evidence(&st, &device, &report).await?;
    }
    let store = st.store.clone();
    let d = device.clone();
    let tags = blocking(move || store.device_tags(&d)).await?;
    Ok(Json(ReportAccepted {
        device_id: device,
        tags,
    })
    .into_response())
}

/// Set the tags of an enrolled device (admin; audited). They take the
/// place of the device's own tags of the same keys, for release targets,
/// the fleet view and accuracy per tag; the device learns them with its
/// next status report.
#[utoipa::path(
    put,
    path = "/v1/fleet/devices/{device}/tags",
    tag = "fleet",
    security(("admin" = [])),
    params(("device" = String, Path, description = "The device id")),
    request_body = DeviceTags,
    responses(
        (status = 200, description = "Stored; the device's tags now (its own with these in their place)", body = DeviceTags),
        (status = 400, description = "Not a tags object", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such enrolled device", body = ErrorBody),
        (status = 422, description = "Invalid tag keys or values", body = ErrorBody),
    )
)]
async fn put_device_tags(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(device): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let DeviceTags { tags } = serde_json::from_slice(&body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"tags\": {{\"key\": \"value\", ...}}}}: {e}"),
        )
    })?;
    edgeml_fleet::check_tags(&tags).map_err(|e| fleet_err(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let store = st.store.clone();
    let (d, t) = (device.clone(), tags.clone());
    if !blocking(move || store.set_device_tags(&d, &t, now_ms())).await? {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no enrolled device `{device}`"),
        ));
    }
    let mut entry = audit::by_admin(&headers, "device.tags", &device);
    entry.details = tags
        .iter()
        .map(|(k, v)| (format!("tag.{k}"), v.clone()))
        .collect();
    audit::record(&st, entry).await?;
    let store = st.store.clone();
    let d = device.clone();
    let tags = blocking(move || store.device_tags(&d)).await?;
    Ok(Json(DeviceTags { tags }).into_response())
}

/// Count a device's rollback against its channel's current release, and
/// halt the rollout once enough distinct devices have rolled it back.
///
/// A report counts only if it names the bundle the channel's current
/// release pins, the server served that bundle to this device (so the
/// device was in the rollout), and the device rolled back on its own
/// (a rollback the halt itself ordered is not evidence). Each device
/// counts once per bundle, and only within the rollout's evidence window
/// (since it started or was last resumed).
async fn rollback_evidence(st: &AppState, device: &str, report: &StatusReport) -> ApiResult<()> {
    if report.error_kind.as_deref() == Some("halted") {
        return Ok(());
    }
    let Some(sha256) = report.target_sha256.clone() else {
        return Ok(());
    };
    let store = st.store.clone();
    let ch = report.channel.clone();
    let Some(current) = blocking(move || store.release(&ch)).await? else {
        return Ok(());
    };
    // The device must be in this release's rollout now, and must have
    // been served this channel's bundle.
    let store = st.store.clone();
    let dev = device.to_string();
    let tags = blocking(move || store.device_tags(&dev)).await?;
    if current.release.bundle.sha256 != sha256 || !in_rollout(&current, device, &tags) {
        return Ok(());
    }
    let store = st.store.clone();
    let (ch, sha) = (report.channel.clone(), sha256.clone());
    let cohort = blocking(move || store.offered(&ch, &sha)).await?;
    if !cohort.iter().any(|d| d == device) {
        return Ok(());
    }
    let store = st.store.clone();
    let (ch, sha, dev, why) = (
        report.channel.clone(),
        sha256.clone(),
        device.to_string(),
        report.last_error.clone(),
    );
    let from = current.evidence_from_ms;
    let failed = blocking(move || {
        store.add_rollback(&ch, &sha, &dev, why.as_deref(), now_ms())?;
        store.rollbacks(&ch, &sha, from)
    })
    .await?;
    if current.state == RolloutState::Halted
        || !st.settings.fleet.canary.enough(failed.len(), cohort.len())
    {
        return Ok(());
    }
    let (first, why) = &failed[0];
    let reason = format!(
        "{} of {} device(s) served {} {} rolled it back; first: {first}: {}",
        failed.len(),
        cohort.len(),
        current.release.model,
        current.release.model_version,
        why.as_deref().unwrap_or("no reason given")
    );
    let mut decision = Decision {
        to: RolloutState::Halted,
        source: DecisionSource::Rollbacks,
        reason: Some(reason),
        replica: st.settings.replica.clone(),
        audit: None,
        step: None,
    };
    decision.audit = Some(audit::decision(None, &current, &decision));
    let store = st.store.clone();
    // False when another replica (or an operator) changed the rollout first.
    blocking(move || store.decide(&current, &decision, now_ms())).await?;
    Ok(())
}

/// Filter for `GET /v1/fleet/decisions`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DecisionQuery {
    /// Only this channel.
    channel: Option<String>,
}

/// The rollout decisions taken, oldest first (admin).
#[utoipa::path(
    get,
    path = "/v1/fleet/decisions",
    tag = "fleet",
    security(("admin" = [])),
    params(DecisionQuery),
    responses(
        (status = 200, description = "Decisions by the canary gate, rollback evidence and operators", body = DecisionList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn decisions(
    State(st): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<DecisionQuery>,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    let decisions = blocking(move || store.decisions(q.channel.as_deref())).await?;
    Ok(Json(DecisionList { decisions }).into_response())
}

/// Every device's last status report.
#[utoipa::path(
    get,
    path = "/v1/fleet/devices",
    operation_id = "fleet_devices",
    tag = "fleet",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The devices", body = FleetDeviceList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn devices(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    let devices = blocking(move || store.fleet_devices()).await?;
    Ok(Json(FleetDeviceList { devices }).into_response())
}

/// The canary gate: every `interval`, compare each active rollout's new
/// version with the version before it, and halt it when it is worse by
/// more than the margins.
pub(crate) async fn canary_loop(st: AppState) {
    let mut tick = tokio::time::interval(st.settings.fleet.canary.interval);
    loop {
        tick.tick().await;
        canary_round(&st)
            .instrument(tracing::info_span!("canary_gate", replica = %st.settings.replica))
            .await;
    }
}

/// One round of the canary gate over every active rollout: halt it on its
/// abort criteria or on the gate's comparison with the version before, else
/// move a paced rollout to its next step when the current one has passed.
async fn canary_round(st: &AppState) {
    let store = st.store.clone();
    let Ok(channels) = blocking(move || store.channels()).await else {
        return;
    };
    for c in channels {
        if c.state != RolloutState::Active {
            continue;
        }
        let st2 = st.clone();
        let verdict = tokio::task::spawn_blocking(move || round(&st2, &c).map(|d| (c, d))).await;
        let (c, mut decision) = match verdict {
            Ok(Ok((c, Some(d)))) => (c, d),
            Ok(Err(why)) => {
                tracing::warn!(error = %why, "the canary gate could not judge a rollout");
                continue;
            }
            _ => continue,
        };
        tracing::info!(
            channel = %c.channel,
            to = decision.to.name(),
            source = decision.source.name(),
            reason = decision.reason.as_deref().unwrap_or(""),
            "rollout decision"
        );
        // Every replica judges; the first to decide changes the rollout it
        // judged, the others find it changed.
        decision.audit = Some(audit::decision(None, &c, &decision));
        let store = st.store.clone();
        let _ = blocking(move || store.decide(&c, &decision, now_ms())).await;
    }
}

/// What the gate decides for the active rollout `c` this round, if anything.
fn round(st: &AppState, c: &StoredRelease) -> Result<Option<Decision>, String> {
    let decision = |to, source, reason: String, step| Decision {
        to,
        source,
        reason: Some(reason),
        replica: st.settings.replica.clone(),
        audit: None,
        step,
    };
    let devices = st.store.fleet_devices().map_err(|e| e.to_string())?;
    if let Some(reason) = abort_verdict(st, c, &devices)? {
        return Ok(Some(decision(
            RolloutState::Halted,
            DecisionSource::Abort,
            reason,
            None,
        )));
    }
    let evidence = if c.previous_version.is_some() {
        match judge(st, c, &devices)? {
            Gate::Halt(reason) => {
                return Ok(Some(decision(
                    RolloutState::Halted,
                    DecisionSource::Canary,
                    reason,
                    None,
                )))
            }
            // A paced rollout waits for the gate to have judged its step.
            Gate::Waiting => return Ok(None),
            Gate::Pass(evidence) => evidence,
        }
    } else {
        Vec::new()
    };
    Ok(
        next_step(c, &devices, now_ms(), &evidence).map(|(step, reason)| {
            decision(
                RolloutState::Active,
                DecisionSource::Pacer,
                reason,
                Some(step),
            )
        }),
    )
}

/// What the canary gate found for a rollout with a version before it.
#[derive(Debug, Clone, PartialEq)]
enum Gate {
    /// Worse than the version before: halt, for this reason.
    Halt(String),
    /// The cohort sends telemetry, but too little yet to judge.
    Waiting,
    /// Nothing worse: what it compared (empty when the cohort sends no
    /// telemetry, so there was nothing to compare).
    Pass(Vec<String>),
}

/// Whether a device's latest report shows it running the bundle `sha256`
/// after its health check passed.
fn runs(d: &FleetDevice, sha256: &str) -> bool {
    d.status
        .installed
        .as_ref()
        .is_some_and(|i| i.sha256 == sha256)
        && matches!(d.status.state, UpdateState::Installed | UpdateState::Idle)
}

/// The paced rollout's next step, and why, once its current step has
/// passed: the schedule's minimum time at the step, and its minimum number
/// of devices (or every device the step includes, if fewer) running the
/// release after their health checks. The canary gate has judged the
/// rollout first (`evidence` is what it compared); a halt, or a cohort
/// whose telemetry is too thin to judge yet, stops it before it can grow.
fn next_step(
    c: &StoredRelease,
    devices: &[FleetDevice],
    now_ms: u64,
    evidence: &[String],
) -> Option<(u32, String)> {
    let schedule = c.release.schedule.as_ref()?;
    if c.step >= c.release.last_step() {
        return None;
    }
    let waited = now_ms.saturating_sub(c.step_started_ms);
    if waited < schedule.min_step_secs.saturating_mul(1000) {
        return None;
    }
    let included: Vec<&FleetDevice> = devices
        .iter()
        .filter(|d| d.status.channel == c.channel && in_rollout(c, &d.device_id, &d.tags))
        .collect();
    let running = included
        .iter()
        .filter(|d| runs(d, &c.release.bundle.sha256))
        .count();
    let need = (schedule.min_step_devices as usize).min(included.len());
    if running < need {
        return None;
    }
    let next = c.step + 1;
    Some((
        next,
        format!(
            "step {} -> {} of {} ({}% -> {}%): {running} of {} device(s) in the step run {} {}, {} s at the step{}",
            c.step + 1,
            next + 1,
            c.release.last_step() + 1,
            c.release.share(Some(c.step)),
            c.release.share(Some(next)),
            included.len(),
            c.release.model,
            c.release.model_version,
            waited / 1000,
            if evidence.is_empty() {
                String::new()
            } else {
                format!("; gate passed: {}", evidence.join("; "))
            }
        ),
    ))
}

/// Why the release's abort criteria halt the rollout of `c`, if they do:
/// of the devices the bundle was served to that ran it (installed it, or
/// rolled it back since the evidence window opened), at least
/// `min_devices`, the share that rolled it back is at or above
/// `failure_share`.
fn abort_verdict(
    st: &AppState,
    c: &StoredRelease,
    devices: &[FleetDevice],
) -> Result<Option<String>, String> {
    let Some(criteria) = &c.release.abort else {
        return Ok(None);
    };
    let sha = &c.release.bundle.sha256;
    let offered: std::collections::HashSet<String> = st
        .store
        .offered(&c.channel, sha)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let failed: Vec<(String, Option<String>)> = st
        .store
        .rollbacks(&c.channel, sha, c.evidence_from_ms)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(d, _)| offered.contains(d))
        .collect();
    let mut ran: std::collections::BTreeSet<&str> = devices
        .iter()
        .filter(|d| offered.contains(&d.device_id) && runs(d, sha))
        .map(|d| d.device_id.as_str())
        .collect();
    ran.extend(failed.iter().map(|(d, _)| d.as_str()));
    let (n, failures) = (ran.len(), failed.len());
    if n < criteria.min_devices as usize
        || failures == 0
        || (failures as f64) < criteria.failure_share * n as f64
    {
        return Ok(None);
    }
    let (first, why) = &failed[0];
    Ok(Some(format!(
        "abort criteria: {failures} of {n} device(s) that ran {} {} rolled it back ({:.0}%, the limit is {:.0}% after {} devices); first: {first}: {}",
        c.release.model,
        c.release.model_version,
        failures as f64 * 100.0 / n as f64,
        criteria.failure_share * 100.0,
        criteria.min_devices,
        why.as_deref().unwrap_or("no reason given")
    )))
}

/// The devices in the rollout of `c` whose evidence counts: those the
/// bundle was served to and that its target and current step still include.
fn cohort(
    st: &AppState,
    c: &StoredRelease,
    devices: &[FleetDevice],
) -> Result<std::collections::HashSet<String>, String> {
    let tags: HashMap<&str, &Tags> = devices
        .iter()
        .map(|d| (d.device_id.as_str(), &d.tags))
        .collect();
    let none = Tags::new();
    Ok(st
        .store
        .offered(&c.channel, &c.release.bundle.sha256)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|d| in_rollout(c, d, tags.get(d.as_str()).copied().unwrap_or(&none)))
        .collect())
}

/// Whether the rollout of `c` should halt, and what the gate compared.
///
/// Evidence for the new version comes only from devices the server served
/// its bundle to, and only from the rollout's evidence window (since it
/// started or was last resumed). Error rates are weighted by device, not by
/// request: each device's own rate counts once, so one chatty device cannot
/// decide, and a halt needs enough distinct devices above the margin.
fn judge(st: &AppState, c: &StoredRelease, devices: &[FleetDevice]) -> Result<Gate, String> {
    let policy = &st.settings.fleet.canary;
    let model = &c.release.model;
    let new_version = c.release.model_version.to_string();
    let old_version = c.previous_version.clone().unwrap_or_default();
    let windows = |version: &str| {
        st.store
            .windows(&Query {
                model: Some(model.clone()),
                version: Some(version.to_string()),
                from_ms: Some(c.evidence_from_ms),
                ..Query::default()
            })
            .map_err(|e| e.to_string())
    };
    let cohort = cohort(st, c, devices)?;
    let mut new_w = windows(&new_version)?;
    new_w.retain(|w| cohort.contains(&w.device_id));
    let old_w = windows(&old_version)?;
    let (new_s, old_s) = (per_device(&new_w), per_device(&old_w));
    let new_count: u64 = new_s.iter().map(|d| d.1.count).sum();
    if new_w.is_empty() {
        // A fleet that sends telemetry for this model will send some for
        // the new version: wait for it. One that never sent any has
        // nothing to compare.
        let telemetry = st
            .store
            .models()
            .map_err(|e| e.to_string())?
            .iter()
            .any(|m| m.model.name == *model && m.model.version == old_version);
        return Ok(if telemetry {
            Gate::Waiting
        } else {
            Gate::Pass(Vec::new())
        });
    }
    if new_count < policy.min_predictions {
        return Ok(Gate::Waiting);
    }
    let old_rate = mean_rate(&old_s);
    let new_rate = mean_rate(&new_s);
    let worse: Vec<&str> = new_s
        .iter()
        .filter(|(_, s)| s.error_rate > old_rate + policy.error_rate_margin)
        .map(|(d, _)| d.as_str())
        .collect();
    if new_rate > old_rate + policy.error_rate_margin && policy.enough(worse.len(), cohort.len()) {
        return Ok(Gate::Halt(format!(
            "canary: error rate {:.1}% on {model} {new_version} (mean of {} devices, {new_count} predictions; above the margin: {}) vs {:.1}% on {old_version}, margin {:.1} points",
            new_rate * 100.0,
            new_s.len(),
            worse.join(", "),
            old_rate * 100.0,
            policy.error_rate_margin * 100.0
        )));
    }
    let mut evidence = vec![format!(
        "error rate {:.1}% vs {:.1}% on {old_version} ({new_count} predictions)",
        new_rate * 100.0,
        old_rate * 100.0
    )];
    match accuracy_verdict(st, c, &cohort, &new_w, &old_w)? {
        Accuracy::Halt(reason) => return Ok(Gate::Halt(reason)),
        Accuracy::Pass(compared) => evidence.push(compared),
        Accuracy::Unknown => {}
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
    let Some(new_psi) = max_psi(&new_version, &new_w)? else {
        return Ok(Gate::Pass(evidence));
    };
    let old_psi = max_psi(&old_version, &old_w)?.unwrap_or(0.0);
    evidence.push(format!(
        "largest feature PSI {new_psi:.2} vs {old_psi:.2} on {old_version}"
    ));
    if new_psi <= old_psi + policy.psi_margin {
        return Ok(Gate::Pass(evidence));
    }
    // Drift seen fleet-wide: halt only if enough distinct devices drift on
    // their own (one device fed odd data cannot halt the rollout).
    let mut drifted = Vec::new();
    for device in new_s.iter().map(|(d, _)| d) {
        let own: Vec<_> = new_w
            .iter()
            .filter(|w| &w.device_id == device)
            .cloned()
            .collect();
        if max_psi(&new_version, &own)?.is_some_and(|p| p > old_psi + policy.psi_margin) {
            drifted.push(device.as_str());
        }
    }
    if !policy.enough(drifted.len(), cohort.len()) {
        return Ok(Gate::Pass(evidence));
    }
    Ok(Gate::Halt(format!(
        "canary: drift on {model} {new_version}: largest feature PSI {new_psi:.2} vs {old_psi:.2} on {old_version}, margin {:.2}; drifting devices: {}",
        policy.psi_margin,
        drifted.join(", ")
    )))
}

/// What the gate's accuracy check found.
enum Accuracy {
    /// Worse by more than the margin on enough devices: halt, for this reason.
    Halt(String),
    /// Not worse: what was compared.
    Pass(String),
    /// Too few labels and no estimate that holds.
    Unknown,
}

/// Why the new version's accuracy should halt the rollout, if it should:
/// measured from labels when both versions have `min_labels` (labels from
/// cohort devices since the evidence window opened, against the old
/// version's), else estimated from top scores (CBPE) unless the estimate
/// is known to be invalid. Either way a halt needs enough distinct devices
/// whose own accuracy is below the old version's by the margin: one device
/// (or one local client giving it false labels) cannot halt a rollout.
fn accuracy_verdict(
    st: &AppState,
    c: &StoredRelease,
    cohort: &std::collections::HashSet<String>,
    new_w: &[crate::store::StoredWindow],
    old_w: &[crate::store::StoredWindow],
) -> Result<Accuracy, String> {
    use edgeml_client::wire::telemetry::EstimateValidity;
    let policy = &st.settings.fleet.canary;
    let model = &c.release.model;
    let new_version = c.release.model_version.to_string();
    let old_version = c.previous_version.clone().unwrap_or_default();
    // Counted by the database: every label of the old version is evidence.
    let summary = |version: &str, from_ms: Option<u64>| {
        st.store
            .outcome_summary(&Query {
                model: Some(model.clone()),
                version: Some(version.to_string()),
                from_ms,
                ..Query::default()
            })
            .map_err(|e| e.to_string())
    };
    let mut new_s = summary(&new_version, Some(c.evidence_from_ms))?;
    new_s.devices.retain(|(d, _, _)| cohort.contains(d));
    let old_s = summary(&old_version, None)?;
    let totals = |s: &crate::store::OutcomeSummary| {
        s.devices
            .iter()
            .fold((0u64, 0u64), |(l, r), (_, dl, dr)| (l + dl, r + dr))
    };
    let ((new_l, new_r), (old_l, old_r)) = (totals(&new_s), totals(&old_s));
    let limit = |old: f64| old - policy.accuracy_margin;
    if new_l >= policy.min_labels && old_l >= policy.min_labels {
        let (new_acc, old_acc) = (new_r as f64 / new_l as f64, old_r as f64 / old_l as f64);
        let worse: Vec<String> = new_s
            .devices
            .iter()
            .filter(|(_, l, r)| *l > 0 && (*r as f64 / *l as f64) < limit(old_acc))
            .map(|(d, l, r)| format!("{d} {:.1}% of {l}", *r as f64 / *l as f64 * 100.0))
            .collect();
        if new_acc < limit(old_acc) && policy.enough(worse.len(), cohort.len()) {
            return Ok(Accuracy::Halt(format!(
                "canary: measured accuracy {:.1}% on {model} {new_version} ({new_l} labelled predictions from {} devices; below the margin: {}) vs {:.1}% on {old_version} ({old_l} labelled), margin {:.1} points",
                new_acc * 100.0,
                new_s.devices.len(),
                worse.join(", "),
                old_acc * 100.0,
                policy.accuracy_margin * 100.0
            )));
        }
        return Ok(Accuracy::Pass(format!(
            "measured accuracy {:.1}% ({new_l} labelled) vs {:.1}% on {old_version} ({old_l} labelled)",
            new_acc * 100.0,
            old_acc * 100.0
        )));
    }
    // Not enough labels: the estimate, where it holds.
    let estimated = |windows: &[crate::store::StoredWindow],
                     calibration: &[(u8, u64, u64, f64)]| {
        let windows: Vec<&crate::store::StoredWindow> = windows.iter().collect();
        analysis::estimate(&windows, analysis::calibration_error(calibration)).filter(|e| {
            !matches!(
                e.validity,
                EstimateValidity::NotProbabilities | EstimateValidity::Miscalibrated
            )
        })
    };
    // The old version's estimate from its windows alongside the rollout,
    // or (a rollout to the whole fleet leaves none) from its history.
    let old_e = match estimated(old_w, &old_s.calibration) {
        Some(e) => Some(e),
        None => {
            let history = st
                .store
                .windows(&Query {
                    model: Some(model.clone()),
                    version: Some(old_version.clone()),
                    ..Query::default()
                })
                .map_err(|e| e.to_string())?;
            estimated(&history, &old_s.calibration)
        }
    };
    let (Some(new_e), Some(old_e)) = (estimated(new_w, &new_s.calibration), old_e) else {
        return Ok(Accuracy::Unknown);
    };
    let compared = format!(
        "estimated accuracy {:.1}% vs {:.1}% on {old_version}",
        new_e.accuracy * 100.0,
        old_e.accuracy * 100.0
    );
    if new_e.accuracy >= limit(old_e.accuracy) {
        return Ok(Accuracy::Pass(compared));
    }
    let mut worse = Vec::new();
    for device in cohort {
        let own: Vec<_> = new_w
            .iter()
            .filter(|w| &w.device_id == device)
            .cloned()
            .collect();
        if let Some(e) = estimated(&own, &[]) {
            if e.accuracy < limit(old_e.accuracy) {
                worse.push(format!("{device} {:.1}%", e.accuracy * 100.0));
            }
        }
    }
    worse.sort();
    if !policy.enough(worse.len(), cohort.len()) {
        return Ok(Accuracy::Pass(compared));
    }
    Ok(Accuracy::Halt(format!(
        "canary: estimated accuracy (CBPE, mean top score; {}) {:.1}% on {model} {new_version} ({} predictions; below the margin: {}) vs {:.1}% on {old_version}, margin {:.1} points",
        new_e.reason,
        new_e.accuracy * 100.0,
        new_e.predictions,
        worse.join(", "),
        old_e.accuracy * 100.0,
        policy.accuracy_margin * 100.0
    )))
}

/// One device's evidence on one version.
struct DeviceRate {
    /// Predictions.
    count: u64,
    /// Share of them that failed. Unlike the device's own health watch,
    /// this counts client errors too: a version that stops accepting what
    /// clients send shows up here as more errors than the old version had,
    /// on several devices (one device's clients alone cannot halt a rollout).
    error_rate: f64,
}

/// Error rates per device, by device id.
fn per_device(windows: &[crate::store::StoredWindow]) -> Vec<(String, DeviceRate)> {
    let mut by_device: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for w in windows {
        let e = by_device.entry(&w.device_id).or_default();
        e.0 += w.count;
        e.1 += w.errors.values().sum::<u64>();
    }
    by_device
        .into_iter()
        .filter(|(_, (count, _))| *count > 0)
        .map(|(d, (count, errors))| {
            (
                d.to_string(),
                DeviceRate {
                    count,
                    error_rate: errors as f64 / count as f64,
                },
            )
        })
        .collect()
}

/// The mean of the devices' own error rates (0 with no devices).
fn mean_rate(devices: &[(String, DeviceRate)]) -> f64 {
    if devices.is_empty() {
        return 0.0;
    }
    devices.iter().map(|(_, s)| s.error_rate).sum::<f64>() / devices.len() as f64
}
