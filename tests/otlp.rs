//! OTLP export, off by default: the server and the agent push their
//! metrics (the same names as on `/metrics`) and traces to an OpenTelemetry
//! collector. Debian packages no OpenTelemetry collector, so the receiver
//! here is a loopback HTTP server that decodes the OTLP/HTTP protobuf
//! bodies with the official definitions (`opentelemetry-proto`): what the
//! collector's `otlphttp` receiver would accept.

use crate::common::{workspace_bin, DIGITS_IMAGE};
use crate::fleet::{free_port, wait_for, write_agent_toml, Fleet};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;
use serde_json::json;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

/// A point: metric name, its attributes and the resource's service name.
#[derive(Debug, Clone)]
struct Point {
    service: String,
    metric: String,
    attributes: Vec<(String, String)>,
    value: f64,
}

/// A span: service, name, trace and parent ids, attributes.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<(String, String)>,
}

#[derive(Default)]
struct Received {
    points: Vec<Point>,
    spans: Vec<Span>,
    /// Bodies that did not decode as OTLP protobuf.
    garbage: usize,
}

/// The OTLP/HTTP receiver (`/v1/metrics`, `/v1/traces`).
struct Receiver {
    url: String,
    got: Arc<Mutex<Received>>,
    _runtime: tokio::runtime::Runtime,
}

fn text(kv: &[KeyValue]) -> Vec<(String, String)> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn service(resource: &Option<opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .as_ref()
        .and_then(|r| {
            text(&r.attributes)
                .into_iter()
                .find(|(k, _)| k == "service.name")
        })
        .map(|(_, v)| v)
        .unwrap_or_default()
}

impl Receiver {
    fn start() -> Receiver {
        use axum::routing::post;
        let got = Arc::new(Mutex::new(Received::default()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (m, t) = (got.clone(), got.clone());
        let app = axum::Router::new()
            .route(
                "/v1/metrics",
                post(move |body: axum::body::Bytes| async move {
                    let mut got = m.lock().unwrap();
                    let Ok(req) = ExportMetricsServiceRequest::decode(body) else {
                        got.garbage += 1;
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    for rm in req.resource_metrics {
                        let service = service(&rm.resource);
                        for sm in rm.scope_metrics {
                            for metric in sm.metrics {
                                let mut push = |attributes: &[KeyValue], value: f64| {
                                    got.points.push(Point {
                                        service: service.clone(),
                                        metric: metric.name.clone(),
                                        attributes: text(attributes),
                                        value,
                                    })
                                };
                                use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
                                let number = |v: &Option<Value>| match v {
                                    Some(Value::AsInt(i)) => *i as f64,
                                    Some(Value::AsDouble(d)) => *d,
                                    None => f64::NAN,
                                };
                                match &metric.data {
                                    Some(Data::Sum(s)) => {
                                        for p in &s.data_points {
                                            push(&p.attributes, number(&p.value))
                                        }
                                    }
                                    Some(Data::Gauge(g)) => {
                                        for p in &g.data_points {
                                            push(&p.attributes, number(&p.value))
                                        }
                                    }
                                    Some(Data::Histogram(h)) => {
                                        for p in &h.data_points {
                                            push(&p.attributes, p.count as f64)
                                        }
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    axum::http::StatusCode::OK
                }),
            )
            .route(
                "/v1/traces",
                post(move |body: axum::body::Bytes| async move {
                    let mut got = t.lock().unwrap();
                    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                        got.garbage += 1;
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    for rs in req.resource_spans {
                        let service = service(&rs.resource);
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                got.spans.push(Span {
                                    service: service.clone(),
                                    name: s.name,
                                    trace_id: s.trace_id,
                                    span_id: s.span_id,
                                    parent: s.parent_span_id,
                                    attributes: text(&s.attributes),
                                });
                            }
                        }
                    }
                    axum::http::StatusCode::OK
                }),
            );
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            got,
            _runtime: runtime,
        }
    }

    fn points(&self, service: &str, metric: &str) -> Vec<Point> {
        let got = self.got.lock().unwrap();
        assert_eq!(got.garbage, 0, "a body that is not OTLP protobuf");
        got.points
            .iter()
            .filter(|p| p.service == service && p.metric == metric)
            .cloned()
            .collect()
    }

    fn spans(&self, service: &str) -> Vec<Span> {
        self.got
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| s.service == service)
            .cloned()
            .collect()
    }
}

fn has(attributes: &[(String, String)], key: &str, value: &str) -> bool {
    attributes.iter().any(|(k, v)| k == key && v == value)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn server_exports_metrics_and_traces_over_otlp() {
    let otlp = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = Killed(
        workspace_bin("edgeml-server")
            .arg("--db")
            .arg(dir.path().join("server.db"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--otlp-endpoint", &otlp.url, "--otlp-interval", "500ms"])
            .args(["--replica-id", "replica-a"])
            .env("EDGEML_ADMIN_TOKEN", "otlp-admin-token")
            .env("EDGEML_ENROLMENT_TOKEN", "otlp-enrol-token")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::blocking::Client::new();
    wait_for("the server", 30, || {
        http.get(format!("{url}/healthz")).send().is_ok()
    });
    let key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .as_bytes(),
    );
    let enrolled = http
        .post(format!("{url}/v1/enrol"))
        .bearer_auth("otlp-enrol-token")
        .json(&json!({"device_id": "gw-otlp", "public_key": key}))
        .send()
        .unwrap();
    assert_eq!(enrolled.status(), 201);
    for _ in 0..3 {
        let devices = http
            .get(format!("{url}/v1/devices"))
            .bearer_auth("otlp-admin-token")
            .send()
            .unwrap();
        assert_eq!(devices.status(), 200);
    }
    // A caller's W3C trace context: the server's span joins its trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let joined = http
        .get(format!("{url}/v1/models"))
        .bearer_auth("otlp-admin-token")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .send()
        .unwrap();
    assert_eq!(joined.status(), 200);
    assert_eq!(
        http.get(format!("{url}/v1/devices"))
            .send()
            .unwrap()
            .status(),
        401
    );

    // Metrics: the same names and labels as the Prometheus exposition.
    wait_for("the request counter over OTLP", 30, || {
        otlp.points("edgeml-server", "edgeml_server_http_requests")
            .iter()
            .any(|p| {
                has(&p.attributes, "route", "/v1/devices")
                    && has(&p.attributes, "status", "200")
                    && p.value == 3.0
            })
    });
    let refused = otlp.points("edgeml-server", "edgeml_server_http_requests");
    assert!(
        refused
            .iter()
            .any(|p| has(&p.attributes, "route", "/v1/devices")
                && has(&p.attributes, "status", "401")
                && p.value == 1.0),
        "{refused:?}"
    );
    let latency = otlp.points(
        "edgeml-server",
        "edgeml_server_http_request_duration_seconds",
    );
    assert!(
        latency
            .iter()
            .any(|p| has(&p.attributes, "route", "/v1/enrol") && p.value == 1.0),
        "{latency:?}"
    );
    // A database-backed series, read at export time.
    let spool = otlp.points(
        "edgeml-server",
        "edgeml_server_device_spool_pending_records",
    );
    assert!(
        spool
            .iter()
            .any(|p| has(&p.attributes, "device", "gw-otlp") && p.value == 0.0),
        "{spool:?}"
    );

    // Traces: a server span per request named by its route, with the
    // database call as its child in the same trace.
    wait_for("request spans over OTLP", 30, || {
        otlp.spans("edgeml-server")
            .iter()
            .any(|s| s.name == "GET /v1/devices")
    });
    let spans = otlp.spans("edgeml-server");
    let request = spans
        .iter()
        .find(|s| {
            s.name == "GET /v1/devices" && has(&s.attributes, "http.response.status_code", "200")
        })
        .unwrap_or_else(|| panic!("{spans:?}"));
    assert!(has(&request.attributes, "http.route", "/v1/devices"));
    assert!(
        spans.iter().any(|s| s.name == "store"
            && s.trace_id == request.trace_id
            && s.parent == request.span_id),
        "no database span under the request: {spans:?}"
    );

    wait_for("the span of the traced request", 30, || {
        otlp.spans("edgeml-server")
            .iter()
            .any(|s| s.name == "GET /v1/models")
    });
    let spans = otlp.spans("edgeml-server");
    let models = spans.iter().find(|s| s.name == "GET /v1/models").unwrap();
    assert_eq!(hex::encode(&models.trace_id), caller_trace);
    assert_eq!(hex::encode(&models.parent), caller_span);
    // Requests without trace context start their own traces.
    assert_ne!(hex::encode(&request.trace_id), caller_trace);

    // SIGTERM: the server stops cleanly and flushes.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn agent_exports_metrics_and_traces_over_otlp() {
    let otlp = Receiver::start();
    let f = Fleet::new();
    let config = f.dir.path().join("agent.toml");
    let port = free_port();
    write_agent_toml(&f, &config, port);
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "[otlp]\nendpoint = \"{}\"\ninterval = \"500ms\"\n",
        otlp.url
    ));
    std::fs::write(&config, toml).unwrap();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let _agent = Killed(
        workspace_bin("edgeml-agent")
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::blocking::Client::new();
    let infer = format!("http://127.0.0.1:{port}/v2/models/digits/infer");
    wait_for("1.0.0 served", 60, || {
        http.get(format!("http://127.0.0.1:{port}/v2/models/digits/ready"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    let wrong =
        json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let status = http.post(&infer).json(&wrong).send().unwrap().status();
    assert_eq!(status, 400);

    wait_for("the agent's metrics over OTLP", 30, || {
        otlp.points("edgeml-agent", "edgeml_inference_request_failure")
            .iter()
            .any(|p| {
                has(&p.attributes, "model", "digits")
                    && has(&p.attributes, "version", "1.0.0")
                    && has(&p.attributes, "reason", "invalid_input")
                    && p.value == 1.0
            })
    });
    wait_for("the serving gauge over OTLP", 30, || {
        otlp.points("edgeml-agent", "edgeml_model_serving")
            .iter()
            .any(|p| has(&p.attributes, "version", "1.0.0") && p.value == 1.0)
    });
    // The poll that installed 1.0.0 returns after the health watch (4 s).
    wait_for("the poll counter over OTLP", 30, || {
        otlp.points("edgeml-agent", "edgeml_agent_polls")
            .iter()
            .any(|p| has(&p.attributes, "outcome", "installed") && p.value == 1.0)
    });
    // The poll that installed 1.0.0 is a span; the install's log events
    // ride on it.
    wait_for("poll spans over OTLP", 30, || {
        otlp.spans("edgeml-agent")
            .iter()
            .any(|s| s.name == "poll" && has(&s.attributes, "channel", "stable"))
    });
}
