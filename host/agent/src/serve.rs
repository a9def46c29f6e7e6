//! Local inference over the Open Inference Protocol (KServe v2 REST), so
//! existing clients work: `/v2/health/live`, `/v2/health/ready`, `/v2`,
//! `/v2/models/{name}[/versions/{v}]`, `.../ready` and `.../infer`.

use crate::{Inner, PredictError};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use edgeml_runtime::{Dtype, Input, Prediction, Tensor};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) struct Server {
    addr: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl Server {
    pub fn start(inner: Arc<Inner>) -> Result<Option<Server>, crate::Error> {
        let cfg = inner.config.serve.clone();
        if cfg.listen == "off" {
            return Ok(None);
        }
        let fail = |reason: String| crate::Error::Serve {
            addr: cfg.listen.clone(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("edgeml-agent-serve")
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let listener = match cfg.listen.strip_prefix("unix:") {
            #[cfg(unix)]
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let l = rt
                    .block_on(async { tokio::net::UnixListener::bind(path) })
                    .map_err(|e| fail(e.to_string()))?;
                Listener::Unix(l)
            }
            #[cfg(not(unix))]
            Some(_) => return Err(fail("Unix sockets need a Unix system".into())),
            None => {
                let addr: std::net::SocketAddr = cfg
                    .listen
                    .parse()
                    .map_err(|e| fail(format!("not HOST:PORT, unix:PATH or off: {e}")))?;
                if !addr.ip().is_loopback() && !cfg.insecure_listen_any {
                    return Err(fail(
                        "the inference API has no authentication; listen on loopback or a Unix socket, or set serve.insecure_listen_any = true".into(),
                    ));
                }
                Listener::Tcp(
                    rt.block_on(tokio::net::TcpListener::bind(addr))
                        .map_err(|e| fail(e.to_string()))?,
                )
            }
        };
        let addr = match &listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            #[cfg(unix)]
            Listener::Unix(_) => None,
        };
        let app = router(inner, &cfg);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("edgeml-agent-serve".into())
            .spawn(move || {
                rt.block_on(async move {
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    let _ = match listener {
                        Listener::Tcp(l) => {
                            axum::serve(l, app).with_graceful_shutdown(shutdown).await
                        }
                        #[cfg(unix)]
                        Listener::Unix(l) => {
                            axum::serve(l, app).with_graceful_shutdown(shutdown).await
                        }
                    };
                });
            })
            .map_err(|e| fail(e.to_string()))?;
        Ok(Some(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.addr
    }

    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The API's shared state: the agent, and the admission limits.
pub(crate) struct Api {
    inner: Arc<Inner>,
    /// Requests admitted (running or queued): `max_concurrent + max_queue`.
    admitted: Arc<tokio::sync::Semaphore>,
    /// Inferences running: `max_concurrent`.
    running: Arc<tokio::sync::Semaphore>,
    /// `serve.max_body_bytes`, or `None` to derive it from the model.
    max_body: Option<usize>,
}

type St = State<Arc<Api>>;

/// The largest request body the agent ever reads.
const HARD_BODY_LIMIT: usize = 64 << 20;

fn router(inner: Arc<Inner>, cfg: &crate::ServeConfig) -> Router {
    let api = Arc::new(Api {
        inner,
        admitted: Arc::new(tokio::sync::Semaphore::new(
            cfg.max_concurrent.saturating_add(cfg.max_queue),
        )),
        running: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent)),
        max_body: cfg.max_body_bytes,
    });
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/feedback", post(feedback))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(HARD_BODY_LIMIT))
        .with_state(api)
}

/// The body limit for the model being served: its fixed-size tensor inputs
/// as JSON numbers (up to 24 characters each), 4 MiB for each media or
/// variable-size input, plus 64 KiB for the rest of the request.
fn derived_body_limit(model: &edgeml_runtime::Model) -> usize {
    const MEDIA: usize = 4 << 20;
    let mut total: usize = 64 << 10;
    if !model.metadata().media_types.is_empty() {
        total = total.saturating_add(MEDIA / 3 * 4);
    }
    for input in &model.manifest().inputs {
        let fixed = input.shape.iter().try_fold(1usize, |n, d| match d {
            edgeml_runtime::bundle::Dim::Fixed(k) => n.checked_mul(usize::try_from(*k).ok()?),
            _ => None,
        });
        total = total.saturating_add(match fixed {
            Some(n) => n.saturating_mul(24),
            None => MEDIA,
        });
    }
    total.min(HARD_BODY_LIMIT)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "edgeml-agent", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

async fn ready(State(api): St) -> StatusCode {
    if api.inner.serving().is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn datatype(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "FP32",
        Dtype::F64 => "FP64",
        Dtype::I32 => "INT32",
        Dtype::I64 => "INT64",
        Dtype::U8 => "UINT8",
    }
}

fn metadata(inner: &Inner, name: &str, version: Option<&str>) -> Response {
    let Some(slot) = inner.serving() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is being served yet",
        );
    };
    let i = &slot.installed;
    if name != i.model || version.is_some_and(|v| v != i.version) {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "model `{name}` is not served here; this agent serves {} {}",
                i.model, i.version
            ),
        );
    }
    let m = slot.model.manifest();
    let spec = |t: &edgeml_runtime::bundle::TensorSpec| {
        json!({"name": t.name, "datatype": datatype(t.dtype), "shape": t.shape.iter().map(|d| match d {
            edgeml_runtime::bundle::Dim::Fixed(n) => json!(n),
            _ => json!(-1),
        }).collect::<Vec<_>>()})
    };
    Json(json!({
        "name": i.model,
        "versions": [i.version],
        "platform": format!("edgeml/{}", slot.model.backend()),
        "inputs": m.inputs.iter().map(spec).collect::<Vec<_>>(),
        "outputs": m.outputs.iter().map(spec).collect::<Vec<_>>(),
        "parameters": {"sha256": i.sha256, "media_types": slot.model.metadata().media_types, "labels": m.labels},
    }))
    .into_response()
}

async fn model_metadata(State(api): St, Path(name): Path<String>) -> Response {
    metadata(&api.inner, &name, None)
}

async fn model_metadata_v(
    State(api): St,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&api.inner, &name, Some(&version))
}

fn model_is_ready(inner: &Inner, name: &str, version: Option<&str>) -> StatusCode {
    match inner.serving() {
        Some(s)
            if s.installed.model == name && version.is_none_or(|v| v == s.installed.version) =>
        {
            StatusCode::OK
        }
        Some(_) => StatusCode::NOT_FOUND,
        None => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn model_ready(State(api): St, Path(name): Path<String>) -> StatusCode {
    model_is_ready(&api.inner, &name, None)
}

async fn model_ready_v(
    State(api): St,
    Path((name, version)): Path<(String, String)>,
) -> StatusCode {
    model_is_ready(&api.inner, &name, Some(&version))
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InferTensor>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct InferTensor {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    data: Data,
    #[serde(default)]
    parameters: Option<Value>,
}

/// A tensor's `data`, flattened while it is parsed (nested arrays in row
/// order): numbers straight into one vector, no JSON tree in between.
#[derive(Default)]
struct Data {
    numbers: Vec<f64>,
    strings: Vec<String>,
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = Data::default();
        d.deserialize_any(Flatten(&mut data))?;
        Ok(data)
    }
}

struct Flatten<'a>(&'a mut Data);

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a string, or (nested) arrays of them")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.numbers.push(v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.numbers.push(v as f64);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.numbers.push(v as f64);
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.numbers.push(if v { 1.0 } else { 0.0 });
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.strings.push(v.to_string());
        Ok(())
    }
    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.0.strings.push(v);
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

fn content_type(p: &Option<Value>) -> Option<String> {
    p.as_ref()?.get("content_type")?.as_str().map(String::from)
}

/// Turn a v2 request into an edgeml input: one `BYTES` input with a
/// `content_type` parameter is raw media (base64 in `data`); anything else
/// is named numeric tensors.
fn to_input(req: InferRequest) -> Result<Input, String> {
    if let [t] = req.inputs.as_slice() {
        if t.datatype == "BYTES" {
            let media_type = content_type(&t.parameters)
                .or_else(|| content_type(&req.parameters))
                .ok_or("a BYTES input needs parameters.content_type (e.g. image/png)")?;
            let ([b64], []) = (t.data.strings.as_slice(), t.data.numbers.as_slice()) else {
                return Err("a BYTES input carries one base64 string in `data`".into());
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("input `{}` is not valid base64: {e}", t.name))?;
            return Ok(Input::Media { media_type, bytes });
        }
    }
    let mut tensors = Vec::new();
    for t in req.inputs {
        if !t.data.strings.is_empty() {
            return Err(format!("input `{}` has a non-number value", t.name));
        }
        let flat = t.data.numbers;
        let want = t
            .shape
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(*d))
            .ok_or_else(|| format!("input `{}`: shape {:?} is too large", t.name, t.shape))?;
        if flat.len() as u64 != want {
            return Err(format!(
                "input `{}`: shape {:?} needs {want} values, got {}",
                t.name,
                t.shape,
                flat.len()
            ));
        }
        let dtype = match t.datatype.as_str() {
            "FP32" => Dtype::F32,
            "FP64" => Dtype::F64,
            "INT32" => Dtype::I32,
            "INT64" => Dtype::I64,
            "UINT8" => Dtype::U8,
            other => return Err(format!("input `{}`: datatype {other} is not supported (FP32, FP64, INT32, INT64, UINT8, BYTES)", t.name)),
        };
        let mut data = Vec::with_capacity(flat.len() * dtype.size());
        for x in flat {
            match dtype {
                Dtype::F32 => data.extend_from_slice(&(x as f32).to_le_bytes()),
                Dtype::F64 => data.extend_from_slice(&x.to_le_bytes()),
                Dtype::I32 => data.extend_from_slice(&(x as i32).to_le_bytes()),
                Dtype::I64 => data.extend_from_slice(&(x as i64).to_le_bytes()),
                Dtype::U8 => data.push(x as u8),
            }
        }
        tensors.push(Tensor {
            name: t.name,
            dtype,
            shape: t.shape,
            data,
        });
    }
    Ok(Input::Tensors(tensors))
}

fn values(t: &Tensor) -> Vec<Value> {
    let chunks = t.data.chunks_exact(t.dtype.size());
    match t.dtype {
        Dtype::F32 => chunks
            .map(|c| json!(f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
            .collect(),
        Dtype::F64 => chunks
            .map(|c| json!(f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect(),
        Dtype::I32 => chunks
            .map(|c| json!(i32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
            .collect(),
        Dtype::I64 => chunks
            .map(|c| json!(i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect(),
        Dtype::U8 => t.data.iter().map(|b| json!(b)).collect(),
    }
}

/// The response: `id` is the request's, as the protocol asks, or else the
/// prediction id; `parameters.prediction_id` is always the prediction id
/// (give it to `/v2/models/{name}/feedback` with the true label).
fn to_response(p: &Prediction, model: &str, version: &str, id: Option<String>) -> Value {
    let mut body = json!({
        "model_name": model,
        "model_version": version,
        "id": id.unwrap_or_else(|| p.id.clone()),
        "outputs": p.outputs.iter().map(|t| json!({
            "name": t.name, "datatype": datatype(t.dtype), "shape": t.shape, "data": values(t),
        })).collect::<Vec<_>>(),
        "parameters": {"prediction_id": p.id},
    });
    if let Some(scores) = &p.scores {
        body["parameters"]["labels"] = json!(scores
            .iter()
            .take(5)
            .map(|s| json!({"label": s.label, "score": s.score}))
            .collect::<Vec<_>>());
    }
    body
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    prediction_id: String,
    label: String,
}

/// `POST /v2/models/{name}/feedback` `{"prediction_id": ..., "label": ...}`:
/// the true label of a recent prediction. 202 when queued for the server.
async fn feedback(State(api): St, Path(name): Path<String>, req: Request) -> Response {
    if !is_json(req.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "feedback must be sent with Content-Type: application/json",
        );
    }
    let body = match axum::body::to_bytes(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "feedback is at most 4 KiB"),
    };
    let req: FeedbackRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("feedback must be {{\"prediction_id\": \"...\", \"label\": \"...\"}}: {e}"),
            )
        }
    };
    let inner = api.inner.clone();
    let job = tokio::task::spawn_blocking(move || {
        // The prediction names its model; this only checks the URL's.
        match inner.serving() {
            Some(s) if s.installed.model != name => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!(
                        "model `{name}` is not served here; this agent serves {}",
                        s.installed.model
                    ),
                ))
            }
            _ => {}
        }
        inner
            .feedback(&req.prediction_id, &req.label)
            .map_err(|e| {
                let status = match e {
                    crate::FeedbackError::UnknownPrediction(_) => StatusCode::NOT_FOUND,
                    crate::FeedbackError::UnknownLabel { .. }
                    | crate::FeedbackError::NotANumber { .. }
                    | crate::FeedbackError::InvalidLabel => StatusCode::UNPROCESSABLE_ENTITY,
                    crate::FeedbackError::TelemetryOff => StatusCode::CONFLICT,
                    crate::FeedbackError::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, e.to_string())
            })?;
        Ok(req.prediction_id)
    })
    .await;
    match job {
        Ok(Ok(id)) => (
            StatusCode::ACCEPTED,
            Json(json!({"prediction_id": id, "queued": true})),
        )
            .into_response(),
        Ok(Err((status, msg))) => error(status, msg),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Whether the request says it carries JSON. Anything else gets 415: a
/// web page can send a cross-site form POST or a `no-cors` fetch without a
/// preflight, but not with `Content-Type: application/json`.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

async fn run(api: Arc<Api>, name: String, version: Option<String>, req: Request) -> Response {
    if !is_json(req.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "inference requests must be sent with Content-Type: application/json",
        );
    }
    // Admission: a bounded number running and waiting; beyond that, 503.
    let Ok(_admitted) = api.admitted.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(json!({"error": "too many inference requests in flight; retry shortly"})),
        )
            .into_response();
    };
    let limit = api
        .max_body
        .or_else(|| api.inner.serving().map(|s| derived_body_limit(&s.model)))
        .unwrap_or(64 << 10)
        .min(HARD_BODY_LIMIT);
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request is larger than the {limit} bytes this model accepts (serve.max_body_bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let body = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let req: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("inference request: {e}")),
    };
    drop(body);
    let id = req.id.clone();
    let input = match to_input(req) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(_running) = api.running.clone().acquire_owned().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        );
    };
    let inner = api.inner.clone();
    let job = tokio::task::spawn_blocking(move || {
        let r = inner.predict(Some(&name), version.as_deref(), input);
        let served = inner.serving().map(|s| s.installed.clone());
        (r, served)
    })
    .await;
    match job {
        Ok((Ok(p), Some(i))) => Json(to_response(&p, &i.model, &i.version, id)).into_response(),
        Ok((Ok(_), None)) | Ok((Err(PredictError::NotReady), _)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is being served yet",
        ),
        Ok((Err(e @ PredictError::UnknownModel { .. }), _)) => error(StatusCode::NOT_FOUND, e),
        Ok((Err(PredictError::Model(e)), _)) => {
            let status = if e.is_client_error() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            error(status, e)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task failed: {e}"),
        ),
    }
}

async fn infer(State(api): St, Path(name): Path<String>, req: Request) -> Response {
    run(api, name, None, req).await
}

async fn infer_v(
    State(api): St,
    Path((name, version)): Path<(String, String)>,
    req: Request,
) -> Response {
    run(api, name, Some(version), req).await
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any body: a typed refusal (or an input), never a panic.
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(req) = serde_json::from_slice::<InferRequest>(&body) {
                let _ = to_input(req);
            }
        }

        /// Well-formed requests with arbitrary shapes, datatypes and nesting.
        #[test]
        fn arbitrary_tensor_requests_never_panic(
            shape in proptest::collection::vec(any::<u64>(), 0..4),
            datatype in prop::sample::select(vec!["FP32", "FP64", "INT32", "INT64", "UINT8", "BYTES", "FP16", ""]),
            values in proptest::collection::vec(-1e9f64..1e9, 0..16),
            nested in any::<bool>(),
        ) {
            let data = if nested {
                json!([values.iter().map(|v| json!([v])).collect::<Vec<_>>()])
            } else {
                json!(values)
            };
            let body = json!({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]});
            let req: InferRequest = serde_json::from_value(body).unwrap();
            let want = shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d));
            match to_input(req) {
                Ok(Input::Tensors(t)) => {
                    prop_assert_eq!(want, Some(values.len() as u64));
                    prop_assert_eq!(t[0].data.len(), values.len() * t[0].dtype.size());
                }
                Ok(Input::Media { .. }) => prop_assert!(false, "numbers are not media"),
                Err(_) => {}
            }
        }
    }
}

/// The agent's metrics (Prometheus text format).
async fn metrics(State(api): St) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        api.inner.metrics.encode(),
    )
        .into_response()
}
