//! What an operator's Prometheus sees: Debian's `prometheus` runs on
//! loopback, scrapes the fleet server (with the metrics token) and an
//! agent's local API, and the test asks its HTTP API for the metrics, as a
//! dashboard would.

use crate::common::DIGITS_IMAGE;
use crate::fleet::{free_port, png, telemetry_runtime, wait_for, Fleet};
use base64::Engine as _;
use edgeml_agent::{Agent, UpdateState};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const METRICS: &str = "fleet-metrics-token";

/// The `prometheus` program, or `None` (printed) outside CI without it.
fn prometheus() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: no prometheus here (Debian: apt-get install prometheus)");
            None
        }
        None => panic!("prometheus is required in CI (.ci/run installs it)"),
    }
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// One value of an instant query, once the query has a result.
    fn value(&self, query: &str) -> Option<f64> {
        let resp: serde_json::Value = reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .ok()?
            .json()
            .ok()?;
        resp["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    fn wait_for_value(&self, query: &str, expected: f64) {
        let mut last = None;
        wait_for(
            &format!("Prometheus to have {query} = {expected}"),
            60,
            || {
                last = self.value(query);
                last == Some(expected)
            },
        );
    }
}

fn infer(url: &str, body: serde_json::Value) -> u16 {
    reqwest::blocking::Client::new()
        .post(url)
        .json(&body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn prometheus_scrapes_server_and_agent_metrics() {
    let Some(bin) = prometheus() else {
        return;
    };
    let f = Fleet::with_settings(|s| s.metrics_token = Some(METRICS.into()));
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let (rt, telemetry) = telemetry_runtime(&f, "gw-prom");
    let mut c = f.agent_config("gw-prom");
    c.identity_dir = Some(telemetry.config().dir.clone());
    c.serve.listen = "127.0.0.1:0".into();
    c.poll_interval = Duration::from_millis(300);
    let agent = Agent::start(c, rt).expect("agent");
    wait_for("1.0.0 installed", 60, || {
        agent.status().state == UpdateState::Installed
    });
    let agent_addr = agent.serve_addr().unwrap();
    let url = format!("http://{agent_addr}/v2/models/digits/infer");
    for i in 0..3 {
        let png = base64::engine::general_purpose::STANDARD.encode(png(i));
        let request = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "image/png"}, "data": [png]}]});
        assert_eq!(infer(&url, request), 200);
    }
    let wrong =
        json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(infer(&url, wrong), 400);
    telemetry.flush(Duration::from_secs(10));

    // The expositions themselves.
    let server_metrics = format!("{}/metrics", f.url());
    assert_eq!(f.http.get(&server_metrics).send().unwrap().status(), 401);
    let text = f
        .http
        .get(&server_metrics)
        .bearer_auth(METRICS)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("# TYPE edgeml_server_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"edgeml_server_rollout_state{channel="stable",model_version="1.0.0",state="active"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"edgeml_server_device_spool_pending_records{device="gw-prom"} 0"#),
        "{text}"
    );
    let text = f
        .http
        .get(format!("http://{agent_addr}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(
            r#"edgeml_inference_request_success_total{model="digits",version="1.0.0"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"edgeml_inference_request_failure_total{model="digits",version="1.0.0",reason="invalid_input"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"edgeml_request_predict_seconds_count{model="digits",version="1.0.0"} 4"#),
        "{text}"
    );

    // A real Prometheus scraping both.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metrics.token"), METRICS).unwrap();
    let server_addr = f.url().trim_start_matches("http://").to_string();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n\
             - job_name: edgeml-server\n  authorization:\n    credentials_file: {token}\n  static_configs:\n  - targets: ['{server_addr}']\n\
             - job_name: edgeml-agent\n  static_configs:\n  - targets: ['{agent_addr}']\n",
            token = dir.path().join("metrics.token").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let prom = Prometheus {
        child: Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
        url: format!("http://127.0.0.1:{port}"),
    };
    prom.wait_for_value(r#"up{job="edgeml-server"}"#, 1.0);
    prom.wait_for_value(r#"up{job="edgeml-agent"}"#, 1.0);
    prom.wait_for_value(
        r#"edgeml_inference_request_success_total{job="edgeml-agent",model="digits",version="1.0.0"}"#,
        3.0,
    );
    prom.wait_for_value(
        r#"sum(edgeml_inference_request_failure_total{reason="invalid_input"})"#,
        1.0,
    );
    prom.wait_for_value(
        r#"edgeml_server_rollout_state{channel="stable",state="active"}"#,
        1.0,
    );
    let stored = prom
        .value(r#"edgeml_server_ingest_records_total{outcome="stored"}"#)
        .expect("the server's ingest counter");
    assert!(
        stored >= 2.0,
        "a model record and a window at least: {stored}"
    );
    // The fleet server's requests by route: the device's polls.
    let polls = prom
        .value(r#"sum(edgeml_server_http_requests_total{route="/v1/fleet/channels/{channel}",status="200"})"#)
        .expect("requests by route");
    assert!(polls >= 1.0, "{polls}");
    drop(agent);
}
