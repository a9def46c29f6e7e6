//! The agent's local inference API (Open Inference Protocol) against
//! hostile local clients: a client must not be able to veto an update by
//! sending garbage while a new version is watched, a web page must not be
//! able to post to it, and a big or numerous request must not exhaust the
//! device. A real agent serving on 127.0.0.1 against a real fleet server.

use crate::common::*;
use crate::fleet::*;
use base64::Engine as _;
use edgeml_agent::{Agent, UpdateState};
use serde_json::json;
use std::time::Duration;

/// An agent serving on a loopback port and polling every 300 ms.
fn serving_agent(f: &Fleet, id: &str, edit: impl FnOnce(&mut edgeml_agent::AgentConfig)) -> Agent {
    let mut c = f.agent_config(id);
    c.serve.listen = "127.0.0.1:0".into();
    c.poll_interval = Duration::from_millis(300);
    edit(&mut c);
    Agent::start(c, crate::fleet::runtime()).expect("agent")
}

/// [`serving_agent`] with digits 1.0.0 pushed and installed (no health watch).
fn serving_v1(f: &Fleet, id: &str, edit: impl FnOnce(&mut edgeml_agent::AgentConfig)) -> Agent {
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let a = serving_agent(f, id, |c| {
        c.health.watch = Duration::ZERO;
        edit(c);
    });
    wait_for("1.0.0 installed", 60, || {
        a.status().state == UpdateState::Installed
    });
    a
}

fn png_request(i: usize) -> serde_json::Value {
    json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"content_type": "image/png"},
        "data": [base64::engine::general_purpose::STANDARD.encode(png(i))]}]})
}

fn infer_url(a: &Agent) -> String {
    format!("http://{}/v2/models/digits/infer", a.serve_addr().unwrap())
}

#[test]
fn bad_client_requests_do_not_veto_update() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let a = serving_agent(&f, "gw-veto", |c| {
        c.health.watch = Duration::from_secs(6);
        c.health.min_requests = 5;
        c.health.max_error_rate = 0.1;
    });
    wait_for("1.0.0 installed", 60, || {
        version_of(&a).as_deref() == Some("1.0.0") && a.status().state == UpdateState::Installed
    });
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    wait_for("1.1.0 under watch", 60, || {
        a.status().state == UpdateState::Checking
    });
    // While 1.1.0 is watched, a local client sends nothing but garbage.
    let url = infer_url(&a);
    let garbage = [
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "image/png"}, "data": [base64::engine::general_purpose::STANDARD.encode(b"not a png")]}]}),
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "audio/wav"}, "data": ["AAAA"]}]}),
        json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}),
    ];
    let mut statuses = Vec::new();
    for i in 0..60 {
        let resp = f.http.post(&url).json(&garbage[i % 3]).send().unwrap();
        statuses.push(resp.status().as_u16());
    }
    let resp = f
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    statuses.push(resp.status().as_u16());
    assert!(
        statuses.iter().all(|s| *s == 400),
        "client errors are 400s: {statuses:?}"
    );
    wait_for("1.1.0 committed", 60, || {
        a.status().state != UpdateState::Checking
    });
    let s = a.status();
    assert_eq!(s.state, UpdateState::Installed, "{:?}", s.last_error);
    assert_eq!(version_of(&a).as_deref(), Some("1.1.0"));
    let resp: serde_json::Value = f
        .http
        .post(&url)
        .json(&png_request(0))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp["parameters"]["labels"][0]["label"], "7", "{resp}");
}

#[test]
fn rejects_cross_site_form_post() {
    let f = Fleet::new();
    let a = serving_v1(&f, "gw-csrf", |_| {});
    let url = infer_url(&a);
    let body = png_request(0).to_string();
    // What an HTML form or a `no-cors` fetch can send without a preflight.
    for content_type in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = f.http.post(&url).body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 415, "{content_type:?}");
    }
    let ok = f
        .http
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[test]
fn oversized_request_is_refused_with_413() {
    let f = Fleet::new();
    let a = serving_v1(&f, "gw-big", |_| {});
    let url = infer_url(&a);
    // 16 MiB of base64 "PNG", with a Content-Length ...
    let huge = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"content_type": "image/png"}, "data": ["A".repeat(16 << 20)]}]})
    .to_string();
    // Refused from the declared Content-Length alone: the head is sent, the
    // body never is, and the answer comes anyway (over a raw socket, since an
    // HTTP client writing the body may see the early close as a broken pipe).
    {
        use std::io::{Read, Write};
        let addr = a.serve_addr().unwrap();
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            conn,
            "POST /v2/models/digits/infer HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            huge.len()
        )
        .unwrap();
        let mut answer = [0u8; 12];
        conn.read_exact(&mut answer).unwrap();
        assert_eq!(
            &answer,
            b"HTTP/1.1 413",
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // ... and streamed without one (chunked).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = huge
        .into_bytes()
        .chunks(1 << 20)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = f
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(ChunkReader::new(chunks)))
        .send();
    // The agent may close the connection once it has refused the body.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    // Normal requests keep working.
    let ok = f.http.post(&url).json(&png_request(1)).send().unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(version_of(&a).as_deref(), Some("1.0.0"));
}

#[test]
fn overload_is_refused_with_503_and_retry_after() {
    let f = Fleet::new();
    let a = serving_v1(&f, "gw-busy", |c| {
        c.serve.max_concurrent = 1;
        c.serve.max_queue = 0;
    });
    let url = infer_url(&a);
    let body = png_request(0).to_string();
    let barrier = std::sync::Barrier::new(16);
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let http = reqwest::blocking::Client::new();
                    barrier.wait();
                    (0..25)
                        .map(|_| {
                            let r = http
                                .post(&url)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .unwrap();
                            let retry = r
                                .headers()
                                .get("retry-after")
                                .map(|v| v.to_str().unwrap().to_string());
                            (r.status().as_u16(), retry)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert!(!busy.is_empty(), "16 clients against one slot and no queue");
    assert!(busy.iter().all(|(_, r)| r.as_deref() == Some("1")));
    assert!(ok > 0);
    assert_eq!(ok + busy.len(), results.len(), "only 200 or 503");
}

/// A `Read` over chunks, for a request body of unknown length.
struct ChunkReader {
    chunks: std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl ChunkReader {
    fn new(chunks: Vec<Result<Vec<u8>, std::io::Error>>) -> Self {
        ChunkReader {
            chunks: chunks.into_iter(),
            current: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.chunks.next() {
                Some(c) => self.current = std::io::Cursor::new(c?),
                None => return Ok(0),
            }
        }
    }
}

/// Peak resident memory of a process, from /proc (kB → bytes).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The largest peak RSS the agent may reach under the load below: 16
/// clients sending 64 requests each, half of them 4 MiB PNG-sized bodies
/// the model refuses to decode, the rest 16 MiB bodies refused with 413.
/// Before the limits, one 16 MiB request took the agent to 1.08 GiB.
const LOAD_RSS_LIMIT: u64 = 320 << 20;

#[test]
fn bounded_load_keeps_agent_rss_under_limit() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let config = f.dir.path().join("agent.toml");
    let port = free_port();
    write_agent_toml(&f, &config, port);
    let mut child = workspace_bin("edgeml-agent")
        .args(["--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    wait_for("the agent serving", 60, || {
        http.get(format!("{base}/v2/health/ready"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    let url = format!("{base}/v2/models/digits/infer");
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![0x89u8; n]);
    let body = |n: usize| {
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "image/png"}, "data": [b64(n)]}]})
        .to_string()
    };
    let (medium, huge) = (body(3 << 20), body(12 << 20));
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (medium, huge, url) = (&medium, &huge, &url);
                s.spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    (0..64)
                        .map(|j| {
                            let b = if (i + j) % 2 == 0 { medium } else { huge };
                            http.post(url)
                                .header("content-type", "application/json")
                                .body(b.clone())
                                .send()
                                .map(|r| r.status().as_u16())
                                .unwrap_or(0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let peak = peak_rss(child.id());
    // Still serving after the load.
    let ok = http.post(&url).json(&png_request(0)).send().unwrap();
    assert_eq!(ok.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(statuses.len(), 16 * 64);
    assert!(
        statuses.iter().all(|s| matches!(s, 400 | 413 | 503 | 0)),
        "only refusals: {statuses:?}"
    );
    assert!(statuses.contains(&413) && statuses.contains(&400));
    eprintln!(
        "bounded load: {} requests in {:?}, agent peak RSS {} MiB",
        statuses.len(),
        started.elapsed(),
        peak >> 20
    );
    assert!(
        peak < LOAD_RSS_LIMIT,
        "agent peak RSS {} MiB over {} MiB",
        peak >> 20,
        LOAD_RSS_LIMIT >> 20
    );
}

/// A device configured with `backend = "onnxruntime"`: the agent installs
/// releases from the real server, health-checks an update and serves it, all
/// on onnxruntime, and its local API says which backend answers.
#[test]
fn agent_on_onnxruntime_installs_updates_and_serves() {
    let Some(library) = onnxruntime_library() else {
        return;
    };
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let mut c = f.agent_config("gw-ort");
    c.serve.listen = "127.0.0.1:0".into();
    c.poll_interval = Duration::from_millis(300);
    c.health.watch = Duration::from_secs(2);
    c.health.min_requests = 3;
    c.runtime.backend = edgeml_agent::BackendChoice::Onnxruntime;
    c.runtime.onnxruntime_library = Some(library);
    let rt = edgeml_agent::runtime(&mut c).expect("runtime on onnxruntime");
    assert_eq!(rt.backend(), "onnxruntime");
    let a = Agent::start(c, rt).expect("agent");
    wait_for("1.0.0 installed", 60, || {
        version_of(&a).as_deref() == Some("1.0.0") && a.status().state == UpdateState::Installed
    });
    let metadata = || -> serde_json::Value {
        let url = format!("http://{}/v2/models/digits", a.serve_addr().unwrap());
        f.http.get(url).send().unwrap().json().unwrap()
    };
    let meta = metadata();
    assert_eq!(meta["platform"], "edgeml/onnxruntime", "{meta}");
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    let url = infer_url(&a);
    let label = || -> Option<String> {
        let resp: serde_json::Value = f
            .http
            .post(&url)
            .json(&png_request(0))
            .send()
            .ok()?
            .json()
            .ok()?;
        resp["parameters"]["labels"][0]["label"]
            .as_str()
            .map(String::from)
    };
    // Requests keep coming while 1.1.0 is watched (the health check needs 3).
    let mut answers = Vec::new();
    wait_for("1.1.0 watched and committed on onnxruntime", 60, || {
        answers.extend(label());
        version_of(&a).as_deref() == Some("1.1.0") && a.status().state == UpdateState::Installed
    });
    assert!(answers.iter().all(|l| l == "7"), "{answers:?}");
    assert_eq!(label().as_deref(), Some("7"));
    let meta = metadata();
    assert_eq!(
        (meta["platform"].as_str(), meta["versions"][0].as_str()),
        (Some("edgeml/onnxruntime"), Some("1.1.0")),
        "{meta}"
    );
}
