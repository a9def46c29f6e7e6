//! The telemetry API and the server's router. Every route is registered
//! with its OpenAPI description (`routes!`), so `/openapi.json` cannot miss
//! one.

use crate::analysis;
use crate::blobs::BlobStore;
use crate::export;
use crate::store::{Enrolment, Query, Store, StoreError};
use crate::Settings;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query as Q, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use edgeml_client::wire::telemetry::{
    AccuracyResponse, DeviceInfo, DriftResponse, Enrolled, ModelVersionInfo, NpyMetadata,
    StatsResponse,
};
use edgeml_client::wire::ErrorBody;
use edgeml_telemetry::wire::{self, Batch, EnrolRequest, IngestResponse, RecordBody, SampleInput};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::Arc;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    /// Bundle and artifact bytes; `None` turns the fleet API off.
    pub blobs: Option<Arc<dyn BlobStore>>,
    pub settings: Arc<Settings>,
    pub timestamps: Arc<crate::fleet::TimestampCache>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Encrypts the console's session cookies.
    pub console_key: axum_extra::extract::cookie::Key,
}

impl axum::extract::FromRef<AppState> for axum_extra::extract::cookie::Key {
    fn from_ref(st: &AppState) -> Self {
        st.console_key.clone()
    }
}

/// An API error: a status and a reason, sent as `{"error": reason}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub(crate) fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Run a blocking store call on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    // A span per database call, a child of the request's (OTLP traces).
    let span = tracing::info_span!("store");
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("store task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// Every route with its description. The body limits are the defaults:
/// [`router`] sets the configured ones.
pub(crate) fn routes(max_body_bytes: usize, max_bundle_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(enrol))
        .routes(routes!(ingest))
        .routes(routes!(devices))
        .routes(routes!(models))
        .routes(routes!(stats))
        .routes(routes!(drift))
        .routes(routes!(accuracy))
        .routes(routes!(crate::labels::upload))
        .routes(routes!(samples))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .merge(crate::fleet::routes(max_bundle_bytes))
        .routes(routes!(crate::audit::log))
        .routes(routes!(crate::metrics::scrape))
        .routes(routes!(healthz))
        .routes(routes!(crate::openapi::serve))
}

pub(crate) fn router(state: AppState) -> Router {
    let (router, _) = routes(
        state.settings.max_body_bytes,
        state.settings.fleet.max_bundle_bytes,
    )
    .split_for_parts();
    router
        .merge(crate::console::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .route_layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    |resp: &Response, _: std::time::Duration, span: &tracing::Span| {
                        span.record("http.response.status_code", resp.status().as_u16());
                    },
                ),
        )
        .with_state(state)
}

/// A span per request, named by its route pattern (OpenTelemetry's HTTP
/// server conventions), not its path; a child of the client's span when the
/// request carries W3C trace context.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    edgeml_otlp::adopt_remote_parent(&span, header("traceparent"), header("tracestate"));
    span
}

/// Liveness: `ok` while the server answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The server is up", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Refuse JSON with a NUL character in a string (`\u0000`): PostgreSQL's
/// text cannot hold one, and every database should take the same input.
pub(crate) fn no_nul(json: &[u8]) -> ApiResult<()> {
    if json.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "strings must not contain NUL characters (\\u0000)",
        ));
    }
    Ok(())
}

pub(crate) fn token_ok(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(given, expected)
}

/// Whether `given` is the token `expected` (surrounding whitespace aside).
/// Digests are compared, so the comparison time says nothing about the token.
pub(crate) fn token_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty() && Sha256::digest(given.trim()) == Sha256::digest(expected.trim())
}

pub(crate) fn admin(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    if token_ok(headers, &state.settings.admin_token) {
        Ok(())
    } else {
        Err(err(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer ...)",
        ))
    }
}

/// Enrol a device's signing key.
///
/// Devices send this once, with the fleet's enrolment token; afterwards
/// they sign their requests with the key.
#[utoipa::path(
    post,
    path = "/v1/enrol",
    tag = "telemetry",
    security(("enrolment" = [])),
    request_body = EnrolRequest,
    responses(
        (status = 201, description = "Enrolled", body = Enrolled),
        (status = 200, description = "Already enrolled with this key", body = Enrolled),
        (status = 400, description = "Malformed request, device id or key", body = ErrorBody),
        (status = 401, description = "Missing or wrong enrolment token", body = ErrorBody),
        (status = 409, description = "The device id is enrolled with another key", body = ErrorBody),
    )
)]
async fn enrol(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    if !token_ok(&headers, &st.settings.enrolment_token) {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "missing or wrong enrolment token",
        ));
    }
    let req: EnrolRequest = serde_json::from_slice(&body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("enrolment request: {e}")))?;
    if !wire::valid_device_id(&req.device_id) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "device_id must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    let key: [u8; 32] = hex::decode(&req.public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .filter(|k| VerifyingKey::from_bytes(k).is_ok())
        .ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "public_key must be a hex ed25519 public key (64 hex digits)",
            )
        })?;
    let store = st.store.clone();
    let id = req.device_id.clone();
    let outcome = blocking(move || store.enrol(&id, &key, edgeml_telemetry::now_ms())).await?;
    if outcome == Enrolment::Created {
        crate::audit::record(
            &st,
            crate::store::NewAuditEntry {
                actor: "enrolment".into(),
                operator: crate::audit::operator(&headers),
                action: "device.enrol".into(),
                target: req.device_id.clone(),
                details: crate::audit::details([("public_key", hex::encode(key))]),
                ..Default::default()
            },
        )
        .await?;
    }
    match outcome {
        Enrolment::Created => Ok((
            StatusCode::CREATED,
            Json(Enrolled {
                device_id: req.device_id,
                enrolled: true,
            }),
        )
            .into_response()),
        Enrolment::AlreadyEnrolled => Ok((
            StatusCode::OK,
            Json(Enrolled {
                device_id: req.device_id,
                enrolled: true,
            }),
        )
            .into_response()),
        Enrolment::Conflict => Err(err(
            StatusCode::CONFLICT,
            format!("device `{}` is enrolled with another key", req.device_id),
        )),
    }
}

fn gunzip(body: &[u8], limit: usize) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("body is not valid gzip: {e}"),
        )
    })?;
    if out.len() > limit {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("batch is larger than {limit} bytes uncompressed; send smaller batches"),
        ));
    }
    Ok(out)
}

/// Check what serde does not: ids, sketches, tensor sizes.
fn validate(batch: &Batch, max_records: usize) -> ApiResult<()> {
    if batch.records.len() > max_records {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} records in one batch; at most {max_records}",
                batch.records.len()
            ),
        ));
    }
    for r in &batch.records {
        let bad = |why: String| {
            err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("record {}: {why}", r.id),
            )
        };
        if r.id.len() != 32 || !r.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "record id `{}` is not 32 hex digits",
                    r.id.chars().take(64).collect::<String>()
                ),
            ));
        }
        match &r.body {
            RecordBody::Window(w) => {
                if w.end_ms < w.start_ms {
                    return Err(bad("window ends before it starts".into()));
                }
                let errors: u64 = w.errors.values().sum();
                if errors > w.count {
                    return Err(bad(format!(
                        "{errors} errors in a window of {} predictions",
                        w.count
                    )));
                }
                edgeml_telemetry::Sketch::from_base64(&w.latency_us)
                    .map_err(|e| bad(format!("latency: {e}")))?;
                for (name, s) in &w.numeric {
                    edgeml_telemetry::Sketch::from_base64(s)
                        .map_err(|e| bad(format!("feature `{name}`: {e}")))?;
                }
                for (name, g) in &w.binned {
                    let counts = edgeml_telemetry::GridCounts::from_base64(g)
                        .map_err(|e| bad(format!("feature `{name}`: {e}")))?;
                    // Counts are on a baseline's grid: one bin per quantile
                    // and one above the last.
                    let bins = edgeml_bundle::manifest::BASELINE_QUANTILES + 1;
                    if counts.bins().len() != bins {
                        return Err(bad(format!(
                            "feature `{name}`: {} bins, expected {bins} (the baseline's {} quantiles and one above)",
                            counts.bins().len(),
                            bins - 1
                        )));
                    }
                    if counts.count().saturating_add(counts.non_finite()) > w.count {
                        return Err(bad(format!(
                            "feature `{name}` counts {} values in a window of {} predictions",
                            counts.count().saturating_add(counts.non_finite()),
                            w.count
                        )));
                    }
                }
            }
            RecordBody::Sample(s) => {
                if let SampleInput::Tensors { tensors } = &s.input {
                    for t in tensors {
                        t.bytes().map_err(bad)?;
                    }
                }
            }
            RecordBody::Outcome(o) => {
                let ok = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
                if !ok(&o.prediction_id, 128) || !ok(&o.label, 256) {
                    return Err(bad(
                        "an outcome needs a prediction id (1-128 characters) and a label (1-256)"
                            .into(),
                    ));
                }
            }
            RecordBody::Model(m) => {
                if let Some(b) = &m.baseline {
                    if b.numeric.iter().any(|f| {
                        f.quantiles.len() != edgeml_bundle::manifest::BASELINE_QUANTILES
                            || f.quantiles.iter().any(|q| !q.is_finite())
                    }) {
                        return Err(bad("baseline quantiles must be 101 finite numbers".into()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Check the device headers and signature of a device request; returns the device id.
pub(crate) async fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<String> {
    let device = headers
        .get(wire::DEVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|d| wire::valid_device_id(d))
        .ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                format!("missing or invalid {} header", wire::DEVICE_HEADER),
            )
        })?
        .to_string();
    let sig: [u8; 64] = headers
        .get(wire::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                format!(
                    "missing or malformed {} header (hex ed25519 signature)",
                    wire::SIGNATURE_HEADER
                ),
            )
        })?;
    let store = st.store.clone();
    let id = device.clone();
    let key = blocking(move || store.device_key(&id))
        .await?
        .ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                format!("unknown device `{device}`; enrol it first"),
            )
        })?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored device key is damaged",
        )
    })?;
    key.verify(
        &wire::signing_message(&device, body),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| {
        err(
            StatusCode::UNAUTHORIZED,
            format!("signature does not verify with device `{device}`'s key"),
        )
    })?;
    Ok(device)
}

/// Store a batch of telemetry records (idempotent by record id).
///
/// The body is JSON, gzip-compressed when `Content-Encoding: gzip`; the
/// signature covers the body exactly as sent.
#[utoipa::path(
    post,
    path = "/v1/ingest",
    tag = "telemetry",
    security(("device" = [])),
    params(
        ("x-edgeml-device" = String, Header, description = "The enrolled device id"),
        ("Content-Encoding" = Option<String>, Header, description = "`gzip` for a compressed body"),
    ),
    request_body = Batch,
    responses(
        (status = 200, description = "Stored; repeated record ids are counted as duplicates", body = IngestResponse),
        (status = 400, description = "Malformed body or gzip, or the batch names another device", body = ErrorBody),
        (status = 401, description = "Unknown device, missing header or bad signature", body = ErrorBody),
        (status = 413, description = "Body, decompressed batch or record count over the limit", body = ErrorBody),
        (status = 422, description = "A record is invalid (id, sketch, tensor, NUL in a string); the reason names it", body = ErrorBody),
    )
)]
async fn ingest(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let device = authenticate(&st, &headers, &body).await?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let json = if gzip {
        gunzip(&body, st.settings.max_batch_bytes)?
    } else {
        body.to_vec()
    };
    no_nul(&json)?;
    let batch: Batch = serde_json::from_slice(&json)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("batch: {e}")))?;
    if batch.device_id != device {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "batch says device `{}`, the header says `{device}`",
                batch.device_id
            ),
        ));
    }
    validate(&batch, st.settings.max_records)?;
    let store = st.store.clone();
    let resp = blocking(move || store.ingest(&batch, edgeml_telemetry::now_ms())).await?;
    st.metrics.ingested(resp.accepted, resp.duplicates);
    Ok(Json(resp).into_response())
}

/// Enrolled devices: last seen, spool state and models.
#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "telemetry",
    security(("admin" = [])),
    responses(
        (status = 200, description = "Every enrolled device", body = Vec<DeviceInfo>),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn devices(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    Ok(Json(blocking(move || store.devices()).await?).into_response())
}

/// Model versions reported by the fleet, with features, baseline and device count.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "telemetry",
    security(("admin" = [])),
    responses(
        (status = 200, description = "Every model version seen", body = Vec<ModelVersionInfo>),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn models(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    Ok(Json(blocking(move || store.models()).await?).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RangeParams {
    /// Windows starting at or after this time (Unix ms).
    from_ms: Option<u64>,
    /// Windows starting before this time (Unix ms).
    to_ms: Option<u64>,
    /// Only this device.
    device: Option<String>,
    /// Drift bucket length in seconds (default 3600).
    bucket_s: Option<u64>,
}

async fn windows_for(
    st: &AppState,
    name: String,
    version: String,
    p: &RangeParams,
) -> ApiResult<Vec<crate::store::StoredWindow>> {
    let q = Query {
        model: Some(name),
        version: Some(version),
        device: p.device.clone(),
        from_ms: p.from_ms,
        to_ms: p.to_ms,
    };
    let store = st.store.clone();
    blocking(move || store.windows(&q)).await
}

/// Fleet statistics of a model version: throughput, error rate, latency quantiles.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions/{version}/stats",
    tag = "telemetry",
    security(("admin" = [])),
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "Model version"),
        RangeParams,
    ),
    responses(
        (status = 200, description = "Statistics over the matching windows", body = StatsResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn stats(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Q(p): Q<RangeParams>,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let windows = windows_for(&st, name.clone(), version.clone(), &p).await?;
    let stats = analysis::stats(&windows).map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(StatsResponse {
        model: name,
        version,
        stats,
    })
    .into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AccuracyParams {
    /// Only this version.
    version: Option<String>,
    /// Only this device.
    device: Option<String>,
    /// Predictions made at or after this time (Unix ms).
    from_ms: Option<u64>,
    /// ... and before this.
    to_ms: Option<u64>,
    /// Also give accuracy per window of this length (ms) of prediction time.
    window_ms: Option<u64>,
}

/// Measured accuracy per model version, per class, per device and device tag, and over
/// time, from predictions whose true label is known (labels given on
/// devices, or uploaded and joined with samples).
#[utoipa::path(
    get,
    path = "/v1/models/{name}/accuracy",
    tag = "telemetry",
    security(("admin" = [])),
    params(("name" = String, Path, description = "Model name"), AccuracyParams),
    responses(
        (status = 200, description = "Accuracy per version", body = AccuracyResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn accuracy(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Q(p): Q<AccuracyParams>,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let q = Query {
        model: Some(name.clone()),
        version: p.version,
        device: p.device,
        from_ms: p.from_ms,
        to_ms: p.to_ms,
    };
    let store = st.store.clone();
    let (outcomes, windows, devices) = blocking(move || {
        Ok((
            store.outcomes(&q)?,
            store.windows(&q)?,
            store.fleet_devices()?,
        ))
    })
    .await?;
    let tags = devices.into_iter().map(|d| (d.device_id, d.tags)).collect();
    Ok(Json(AccuracyResponse {
        model: name,
        versions: analysis::accuracy(&outcomes, &windows, p.window_ms, &tags),
    })
    .into_response())
}

/// Drift over time against the bundle's baseline, from merged sketches.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions/{version}/drift",
    tag = "telemetry",
    security(("admin" = [])),
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "Model version"),
        RangeParams,
    ),
    responses(
        (status = 200, description = "Drift per time bucket and feature, and the alerts", body = DriftResponse),
        (status = 400, description = "`bucket_s` is 0", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No baseline known for this model version", body = ErrorBody),
    )
)]
async fn drift(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Q(p): Q<RangeParams>,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    let models = blocking(move || store.models()).await?;
    let baseline = models
        .into_iter()
        .filter(|m| m.model.name == name && m.model.version == version)
        .find_map(|m| m.baseline)
        .ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                format!("no baseline for {name} {version}: no device has reported it yet, or it was packed without --reference"),
            )
        })?;
    let bucket_s = p.bucket_s.unwrap_or(3600);
    if bucket_s == 0 {
        return Err(err(StatusCode::BAD_REQUEST, "bucket_s must be at least 1"));
    }
    let windows = windows_for(&st, name.clone(), version.clone(), &p).await?;
    let report = analysis::drift(
        &baseline,
        &windows,
        bucket_s.saturating_mul(1000),
        &st.settings.drift,
    )
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(DriftResponse {
        model: name,
        version,
        drift: report,
    })
    .into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SampleParams {
    /// Only this model.
    model: Option<String>,
    /// Only this model version.
    version: Option<String>,
    /// Only this device.
    device: Option<String>,
    /// Samples taken at or after this time (Unix ms).
    from_ms: Option<u64>,
    /// Samples taken before this time (Unix ms).
    to_ms: Option<u64>,
    /// `parquet` (default), `npy` or `npy-metadata`.
    format: Option<String>,
}

/// Export drift samples for retraining.
///
/// `parquet`: one row per sample tensor or media item (sample_id,
/// device_id, model, version, digest, at_ms, reason, prediction,
/// input_name, media_type, dtype, shape, data); `npy`: the tensor samples
/// stacked as `[rows, ...shape]`; `npy-metadata`: what each npy row is.
#[utoipa::path(
    get,
    path = "/v1/samples",
    tag = "telemetry",
    security(("admin" = [])),
    params(SampleParams),
    responses(
        (status = 200, description = "The samples in the requested format", content(
            ("application/vnd.apache.parquet"),
            ("application/octet-stream"),
            (NpyMetadata = "application/json"),
        )),
        (status = 400, description = "Unknown format", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "The samples do not share one shape; narrow the filter", body = ErrorBody),
    )
)]
async fn samples(
    State(st): State<AppState>,
    headers: HeaderMap,
    Q(p): Q<SampleParams>,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let q = Query {
        model: p.model,
        version: p.version,
        device: p.device,
        from_ms: p.from_ms,
        to_ms: p.to_ms,
    };
    let store = st.store.clone();
    let samples = blocking(move || store.samples(&q)).await?;
    let fail = |e: export::ExportError| match e {
        export::ExportError::Mixed(m) => err(StatusCode::CONFLICT, m),
        other => err(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    };
    match p.format.as_deref().unwrap_or("parquet") {
        "parquet" => {
            let bytes = export::parquet(&samples).map_err(fail)?;
            Ok((
                [(header::CONTENT_TYPE, "application/vnd.apache.parquet")],
                bytes,
            )
                .into_response())
        }
        "npy" => {
            let (bytes, _) = export::npy(&samples).map_err(fail)?;
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        "npy-metadata" => {
            let (_, meta) = export::npy(&samples).map_err(fail)?;
            Ok(Json(meta).into_response())
        }
        other => Err(err(
            StatusCode::BAD_REQUEST,
            format!("format `{other}` is not one of parquet, npy, npy-metadata"),
        )),
    }
}
