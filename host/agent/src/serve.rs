//! Local inference over the Open Inference Protocol (KServe v2 REST), so
//! existing clients work: `/v2/health/live`, `/v2/health/ready`, `/v2`,
//! `/v2/models/{name}[/versions/{v}]`, `.../ready` and `.../infer`.

use crate::{Inner, PredictError};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
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
        let app = router(inner, cfg.max_body_bytes);
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

type St = State<Arc<Inner>>;

fn router(inner: Arc<Inner>, max_body: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(inner)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "edgeml-agent", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

async fn ready(State(inner): St) -> StatusCode {
    if inner.serving().is_some() {
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

async fn model_metadata(State(inner): St, Path(name): Path<String>) -> Response {
    metadata(&inner, &name, None)
}

async fn model_metadata_v(
    State(inner): St,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&inner, &name, Some(&version))
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

async fn model_ready(State(inner): St, Path(name): Path<String>) -> StatusCode {
    model_is_ready(&inner, &name, None)
}

async fn model_ready_v(
    State(inner): St,
    Path((name, version)): Path<(String, String)>,
) -> StatusCode {
    model_is_ready(&inner, &name, Some(&version))
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
    data: Value,
    #[serde(default)]
    parameters: Option<Value>,
}

fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other.clone()),
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
            let mut flat = Vec::new();
            flatten(&t.data, &mut flat);
            let [Value::String(b64)] = flat.as_slice() else {
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
        let mut flat = Vec::new();
        flatten(&t.data, &mut flat);
        let want: u64 = t.shape.iter().product();
        if flat.len() as u64 != want {
            return Err(format!(
                "input `{}`: shape {:?} needs {want} values, got {}",
                t.name,
                t.shape,
                flat.len()
            ));
        }
        let num = |v: &Value| {
            v.as_f64()
                .ok_or_else(|| format!("input `{}` has a non-number value", t.name))
        };
        let (dtype, data) = match t.datatype.as_str() {
            "FP32" => (Dtype::F32, flat.iter().map(|v| num(v).map(|x| (x as f32).to_le_bytes().to_vec())).collect::<Result<Vec<_>, _>>()?),
            "FP64" => (Dtype::F64, flat.iter().map(|v| num(v).map(|x| x.to_le_bytes().to_vec())).collect::<Result<Vec<_>, _>>()?),
            "INT32" => (Dtype::I32, flat.iter().map(|v| num(v).map(|x| (x as i32).to_le_bytes().to_vec())).collect::<Result<Vec<_>, _>>()?),
            "INT64" => (Dtype::I64, flat.iter().map(|v| num(v).map(|x| (x as i64).to_le_bytes().to_vec())).collect::<Result<Vec<_>, _>>()?),
            "UINT8" => (Dtype::U8, flat.iter().map(|v| num(v).map(|x| vec![x as u8])).collect::<Result<Vec<_>, _>>()?),
            other => return Err(format!("input `{}`: datatype {other} is not supported (FP32, FP64, INT32, INT64, UINT8, BYTES)", t.name)),
        };
        tensors.push(Tensor {
            name: t.name,
            dtype,
            shape: t.shape,
            data: data.concat(),
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

fn to_response(p: &Prediction, model: &str, version: &str, id: Option<String>) -> Value {
    let mut body = json!({
        "model_name": model,
        "model_version": version,
        "outputs": p.outputs.iter().map(|t| json!({
            "name": t.name, "datatype": datatype(t.dtype), "shape": t.shape, "data": values(t),
        })).collect::<Vec<_>>(),
    });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    if let Some(scores) = &p.scores {
        body["parameters"] = json!({"labels": scores.iter().take(5).map(|s| json!({"label": s.label, "score": s.score})).collect::<Vec<_>>()});
    }
    body
}

async fn run(
    inner: Arc<Inner>,
    name: String,
    version: Option<String>,
    body: axum::body::Bytes,
) -> Response {
    let req: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("inference request: {e}")),
    };
    let id = req.id.clone();
    let input = match to_input(req) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
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
            let status = match e {
                edgeml_runtime::Error::InvalidInput(_)
                | edgeml_runtime::Error::UnsupportedMedia(_)
                | edgeml_runtime::Error::Decode(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task failed: {e}"),
        ),
    }
}

async fn infer(State(inner): St, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    run(inner, name, None, body).await
}

async fn infer_v(
    State(inner): St,
    Path((name, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    run(inner, name, Some(version), body).await
}
