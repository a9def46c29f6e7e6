//! The HTTP API (documented in `collector/openapi.yaml`).

use crate::analysis;
use crate::blobs::BlobStore;
use crate::export;
use crate::store::{Enrolment, Query, Store, StoreError};
use crate::Settings;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query as Q, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use edgeml_client::wire::telemetry::{DriftResponse, Enrolled, StatsResponse};
use edgeml_client::wire::ErrorBody;
use edgeml_telemetry::wire::{self, Batch, EnrolRequest, RecordBody, SampleInput};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::Arc;

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    /// Bundle and artifact bytes; `None` turns the fleet API off.
    pub blobs: Option<Arc<dyn BlobStore>>,
    pub settings: Arc<Settings>,
    pub timestamps: Arc<crate::fleet::TimestampCache>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// An API error: a status and a reason, sent as `{"error": reason}`.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

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
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("store task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

pub(crate) fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.yaml", get(openapi))
        .route("/v1/enrol", post(enrol))
        .route("/v1/ingest", post(ingest))
        .route("/v1/devices", get(devices))
        .route("/v1/models", get(models))
        .route("/v1/models/{name}/versions/{version}/stats", get(stats))
        .route("/v1/models/{name}/versions/{version}/drift", get(drift))
        .route("/v1/samples", get(samples))
        .layer(DefaultBodyLimit::max(limit))
        .merge(crate::fleet::router(state.settings.fleet.max_bundle_bytes))
        .route("/metrics", get(crate::metrics::scrape))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], crate::OPENAPI)
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
    // Compare digests, so the comparison time says nothing about the token.
    !expected.is_empty() && Sha256::digest(given.trim()) == Sha256::digest(expected)
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
        &wire::signing_message(&device, &body),
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

async fn devices(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    Ok(Json(blocking(move || store.devices()).await?).into_response())
}

async fn models(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let store = st.store.clone();
    Ok(Json(blocking(move || store.models()).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeParams {
    from_ms: Option<u64>,
    to_ms: Option<u64>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleParams {
    model: Option<String>,
    version: Option<String>,
    device: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    /// `parquet` (default), `npy` or `npy-metadata`.
    format: Option<String>,
}

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
