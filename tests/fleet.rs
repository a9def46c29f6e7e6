//! Fleet push, the device agent, staged rollouts, health checks, rollback,
//! and the update attacks. A real fleet server (the collector) on
//! 127.0.0.1 with a SQLite file and a bundle directory, real signatures,
//! real bundles. "Compromised server" attacks write straight into the
//! server's database or bundle directory, or put a hostile proxy in front
//! of it, because the real server refuses to publish them.

use crate::common::*;
use crate::db::TestDb;
use edgeml_agent::{Agent, AgentConfig, Error, PollOutcome, UpdateState};
use edgeml_bundle::{SecretKey, SelfTest, SelfTestInput};
use edgeml_client::wire::fleet::RolloutState;
use edgeml_collector::{Server, Settings, Store};
use edgeml_fleet::{BundleRef, Envelope, Release, Root};
use edgeml_runtime::{Config, Runtime};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub(crate) const ADMIN: &str = "fleet-admin-token";
pub(crate) const ENROL: &str = "fleet-enrolment-token";

pub(crate) struct Fleet {
    pub dir: tempfile::TempDir,
    /// The server's database (SQLite or PostgreSQL: `EDGEML_TEST_DB`).
    pub db: TestDb,
    /// Where the server (or the load balancer in front of replicas) listens.
    pub url: String,
    /// The in-process server, when the fleet has one (dropping it stops it).
    pub _server: Option<Server>,
    pub root_key: SecretKey,
    pub release: Vec<SecretKey>,
    pub publisher: SecretKey,
    /// Raw HTTP, for what the typed client refuses to send.
    pub http: reqwest::blocking::Client,
    /// The operator's client (admin token).
    pub client: edgeml_client::Client,
}

pub(crate) fn in_days(d: i64) -> String {
    let t = if d >= 0 {
        SystemTime::now() + Duration::from_secs(d as u64 * 86400)
    } else {
        SystemTime::now() - Duration::from_secs((-d) as u64 * 86400)
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One runtime for every in-process agent without telemetry: components
/// compile once into a shared cache.
pub(crate) fn runtime() -> Runtime {
    static RT: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let mut c = Config::new();
        c.cache_dir(std::env::temp_dir().join("edgeml-fleet-test-cache"));
        Runtime::new(&c).expect("runtime")
    })
    .clone()
}

impl Fleet {
    pub(crate) fn new() -> Fleet {
        Fleet::with_canary(|_| {})
    }

    pub(crate) fn with_canary(edit: impl FnOnce(&mut edgeml_collector::CanaryPolicy)) -> Fleet {
        Fleet::with_settings(|s| edit(&mut s.fleet.canary))
    }

    pub(crate) fn with_settings(edit: impl FnOnce(&mut Settings)) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(ADMIN, ENROL);
        settings.fleet.bundle_dir = Some(dir.path().join("bundles"));
        settings.fleet.canary.interval = Duration::from_millis(300);
        edit(&mut settings);
        let db = TestDb::new(dir.path());
        let server =
            Server::start_with(db.open(), settings, "127.0.0.1:0".parse().unwrap()).unwrap();
        let url = server.url();
        Fleet::attach(dir, db, url, Some(server))
    }

    /// A fleet on a server that is already running at `url` (for example
    /// `edgeml-server` processes) on `db`: keys made, root v1 published.
    pub(crate) fn attach(
        dir: tempfile::TempDir,
        db: TestDb,
        url: String,
        server: Option<Server>,
    ) -> Fleet {
        let server_url = url.clone();
        let f = Fleet {
            dir,
            db,
            url,
            _server: server,
            root_key: SecretKey::generate().unwrap(),
            release: (0..3).map(|_| SecretKey::generate().unwrap()).collect(),
            publisher: SecretKey::generate().unwrap(),
            http: reqwest::blocking::Client::new(),
            client: edgeml_client::Client::new(&server_url)
                .unwrap()
                .with_admin_token(ADMIN),
        };
        let root = f.root_v1();
        std::fs::write(f.dir.path().join("root.json"), root.to_vec()).unwrap();
        f.publish_root(1, root.to_vec()).unwrap();
        f
    }

    pub(crate) fn url(&self) -> String {
        self.url.clone()
    }

    /// Root v1: one root key; release keys 2 of 3; one publisher.
    pub(crate) fn root_v1(&self) -> Envelope {
        let rel: Vec<_> = self.release.iter().map(|k| k.public_key()).collect();
        let root = Root::new(
            1,
            SystemTime::now() + Duration::from_secs(365 * 86400),
            (&[self.root_key.public_key()], 1),
            (&rel, 2),
            (&[self.publisher.public_key()], 1),
        );
        Envelope::sign(&root, &[&self.root_key]).unwrap()
    }

    /// What `edgeml root publish` does.
    pub(crate) fn publish_root(
        &self,
        version: u64,
        envelope: Vec<u8>,
    ) -> Result<(), edgeml_client::Error> {
        self.client.publish_root(version, envelope).map(|_| ())
    }

    /// Publish signed release metadata to `stable`, as `edgeml push` does.
    pub(crate) fn publish_release(&self, envelope: Vec<u8>) -> Result<(), edgeml_client::Error> {
        self.client.publish_release("stable", envelope).map(|_| ())
    }

    /// The server's database, opened again (what another replica sees).
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        self.db.open()
    }

    pub(crate) fn upload(&self, bundle: &[u8]) -> BundleRef {
        let sha256 = hex::encode(Sha256::digest(bundle));
        self.client.upload_bundle(&sha256, bundle.to_vec()).unwrap();
        BundleRef {
            sha256,
            size: bundle.len() as u64,
        }
    }

    pub(crate) fn next_version(&self) -> u64 {
        self.store()
            .release("stable")
            .unwrap()
            .map_or(1, |r| r.version + 1)
    }

    pub(crate) fn release_for(&self, bundle: &[u8], model_version: &str, percent: f64) -> Release {
        let bref = self.upload(bundle);
        Release {
            kind: "release".into(),
            channel: "stable".into(),
            version: self.next_version(),
            expires: in_days(30),
            model: "digits".into(),
            model_version: model_version.parse().unwrap(),
            bundle: bref,
            rollout_percent: percent,
            allow_downgrade: false,
            artifacts: Vec::new(),
            target: None,
            schedule: None,
            abort: None,
        }
    }

    /// What `edgeml precompile --target TARGET --key publisher.key` and the
    /// upload of `edgeml push --artifact` do: `bundle` compiled for
    /// `target` by this machine's runtime, signed by the publisher.
    pub(crate) fn artifact(&self, bundle: &[u8], target: &str) -> edgeml_fleet::ArtifactRef {
        let bytes = self.precompiled(bundle, target, &self.publisher);
        self.upload_artifact(bytes)
    }

    /// `bundle` compiled for `target` and signed by `key`, not uploaded.
    pub(crate) fn precompiled(&self, bundle: &[u8], target: &str, key: &SecretKey) -> Vec<u8> {
        let rt = runtime();
        let policy =
            edgeml_runtime::TrustPolicy::any_of(vec![self.publisher.public_key()]).unwrap();
        let verified = rt.verify(bundle.to_vec(), &policy).unwrap();
        rt.precompile(&verified, target, key).unwrap()
    }

    /// Upload an artifact; its reference for release metadata.
    pub(crate) fn upload_artifact(&self, bytes: Vec<u8>) -> edgeml_fleet::ArtifactRef {
        let claims = edgeml_bundle::artifact::read_claims(&bytes).unwrap();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        self.client.upload_artifact(&sha256, bytes).unwrap();
        edgeml_fleet::ArtifactRef {
            target: claims.target,
            engine: claims.engine,
            sha256,
            size,
        }
    }

    /// What `edgeml push` does, through the real server.
    pub(crate) fn push(&self, bundle: &[u8], model_version: &str, percent: f64) -> Release {
        let r = self.release_for(bundle, model_version, percent);
        let env = Envelope::sign(&r, &[&self.release[0], &self.release[1]]).unwrap();
        self.publish_release(env.to_vec()).unwrap();
        r
    }

    /// Put release metadata in the server's database without the server's
    /// checks: what a compromised server would serve.
    pub(crate) fn inject(&self, r: &Release, keys: &[&SecretKey]) {
        let env = Envelope::sign(r, keys).unwrap();
        self.store()
            .put_release(r, &String::from_utf8(env.to_vec()).unwrap(), 0)
            .unwrap();
    }

    pub(crate) fn signed(&self, spec: &Spec, version: &str) -> Vec<u8> {
        self.sign(pack_custom(spec, version, None, Vec::new(), |_| {}))
    }

    /// Digits packed with its labels shifted by one line and a self-test
    /// that `000.png` is a 7: a bundle every device refuses after loading it.
    pub(crate) fn shifted_labels(&self, version: &str) -> Vec<u8> {
        self.sign(pack_custom(
            &DIGITS_IMAGE,
            version,
            None,
            vec![self_test_png("7")],
            |labels| labels.rotate_left(1),
        ))
    }

    pub(crate) fn sign(&self, bundle: Vec<u8>) -> Vec<u8> {
        edgeml_bundle::sign(&bundle, &self.publisher).unwrap()
    }

    pub(crate) fn agent_config(&self, id: &str) -> AgentConfig {
        let mut c = AgentConfig::new(
            id,
            self.dir.path().join("devices").join(id),
            self.url(),
            "stable",
            self.dir.path().join("root.json"),
        );
        c.enrolment_token = Some(ENROL.into());
        c.health.watch = Duration::ZERO;
        c.serve.listen = "off".into();
        c.download.timeout = Duration::from_secs(20);
        c
    }

    pub(crate) fn agent(&self, id: &str) -> Agent {
        Agent::open(self.agent_config(id), runtime()).expect("agent")
    }

    pub(crate) fn channel_state(&self) -> (RolloutState, Option<String>) {
        let r = self.store().release("stable").unwrap().unwrap();
        (r.state, r.reason)
    }
}

pub(crate) fn version_of(agent: &Agent) -> Option<String> {
    agent.status().installed.map(|i| i.version)
}

pub(crate) fn png(i: usize) -> Vec<u8> {
    read(model_path(&format!("digits/holdout/{i:03}.png")))
}

pub(crate) fn predicts(agent: &Agent) -> String {
    let p = agent
        .predict(edgeml_runtime::Input::Media {
            media_type: "image/png".into(),
            bytes: png(0),
        })
        .expect("the agent keeps serving");
    p.scores.unwrap()[0].label.clone()
}

/// A fleet with one agent serving digits 1.0.0.
pub(crate) fn on_v1() -> (Fleet, Agent) {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let a = f.agent("gw-1");
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    assert_eq!(version_of(&a).as_deref(), Some("1.0.0"));
    (f, a)
}

/// After an attack: still serving 1.0.0 and answering.
pub(crate) fn still_serving_v1(a: &Agent) {
    assert_eq!(version_of(a).as_deref(), Some("1.0.0"));
    assert_eq!(predicts(a), "7");
}

#[test]
fn agent_installs_and_polls_conditionally() {
    let (_f, a) = on_v1();
    assert!(matches!(a.poll(), Ok(PollOutcome::NotModified)));
    let s = a.status();
    assert_eq!(s.state, UpdateState::Installed);
    assert_eq!(predicts(&a), "7");
}

#[test]
fn rejects_rollback_version() {
    let (f, a) = on_v1();
    let r = f.release_for(&f.signed(&DIGITS_IMAGE, "0.9.0"), "0.9.0", 100.0);
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(err, Error::Metadata(edgeml_fleet::Error::Rollback { .. })),
        "{err}"
    );
    assert_eq!(a.status().error_kind.as_deref(), Some("rollback"));
    still_serving_v1(&a);
    // A signed downgrade is allowed.
    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "0.9.0"), "0.9.0", 100.0);
    r.allow_downgrade = true;
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    assert_eq!(version_of(&a).as_deref(), Some("0.9.0"));
}

#[test]
fn rejects_expired_release() {
    let (f, a) = on_v1();
    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    r.expires = in_days(-1);
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::Expired {
                role: "release",
                ..
            })
        ),
        "{err}"
    );
    still_serving_v1(&a);
}

#[test]
fn rejects_release_signed_with_wrong_key() {
    let (f, a) = on_v1();
    let r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    let stranger = SecretKey::generate().unwrap();
    let other = SecretKey::generate().unwrap();
    f.inject(&r, &[&stranger, &other]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::WrongKey {
                role: "release",
                ..
            })
        ),
        "{err}"
    );
    still_serving_v1(&a);
}

#[test]
fn rejects_release_below_threshold() {
    let (f, a) = on_v1();
    let r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    f.inject(&r, &[&f.release[0]]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::ThresholdNotMet {
                have: 1,
                need: 2,
                ..
            })
        ),
        "{err}"
    );
    still_serving_v1(&a);
}

#[test]
fn rejects_release_signed_by_revoked_key() {
    let (f, a) = on_v1();
    // Root v2 (properly signed) revokes release key 2.
    let leaked = f.release[2].public_key();
    let rel = [f.release[0].public_key(), f.release[1].public_key()];
    let mut v2 = Root::new(
        2,
        SystemTime::now() + Duration::from_secs(365 * 86400),
        (&[f.root_key.public_key()], 1),
        (&rel, 2),
        (&[f.publisher.public_key()], 1),
    );
    v2.keys
        .insert(leaked.id().to_string(), hex::encode(leaked.to_bytes()));
    v2.revoked.insert(leaked.id().to_string());
    f.publish_root(2, Envelope::sign(&v2, &[&f.root_key]).unwrap().to_vec())
        .unwrap();
    let r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    f.inject(&r, &[&f.release[0], &f.release[2]]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(err, Error::Metadata(edgeml_fleet::Error::RevokedKey { .. })),
        "{err}"
    );
    assert_eq!(
        a.status().root_version,
        2,
        "the device followed the root chain"
    );
    still_serving_v1(&a);
}

#[test]
fn rejects_root_rotation_without_old_root_signatures() {
    let (f, a) = on_v1();
    let attacker = SecretKey::generate().unwrap();
    let rel: Vec<_> = [&attacker].iter().map(|k| k.public_key()).collect();
    let v2 = Root::new(
        2,
        SystemTime::now() + Duration::from_secs(365 * 86400),
        (&[attacker.public_key()], 1),
        (&rel, 1),
        (&[attacker.public_key()], 1),
    );
    // The server refuses it ...
    let refused = f.publish_root(2, Envelope::sign(&v2, &[&attacker]).unwrap().to_vec());
    assert!(
        matches!(refused, Err(edgeml_client::Error::Refused { ref message, .. }) if message.contains("not signed by")),
        "server checks the chain too: {refused:?}"
    );
    // ... so write it into a compromised server's database.
    let env = Envelope::sign(&v2, &[&attacker]).unwrap();
    f.store()
        .put_root(2, &String::from_utf8(env.to_vec()).unwrap(), 0)
        .unwrap();
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::RootRotationUnsigned {
                version: 2,
                previous: 1,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(a.status().root_version, 1);
    still_serving_v1(&a);
}

/// Overwrite the stored bundle for `r` with `bytes` (a compromised mirror).
pub(crate) fn replace_blob(f: &Fleet, r: &Release, bytes: &[u8]) {
    let path = f
        .dir
        .path()
        .join("bundles")
        .join("sha256")
        .join(&r.bundle.sha256);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn rejects_mix_and_match_bundle() {
    let (f, a) = on_v1();
    let v11 = f.signed(&DIGITS_IMAGE, "1.1.0");
    let v12 = f.signed(&DIGITS_IMAGE, "1.2.0");
    assert_eq!(
        v11.len(),
        v12.len(),
        "same-length bundles, so only the digest tells them apart"
    );
    let r = f.push(&v11, "1.1.0", 100.0);
    replace_blob(&f, &r, &v12);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::DigestMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(a.status().error_kind.as_deref(), Some("mix_and_match"));
    still_serving_v1(&a);
}

#[test]
fn rejects_corrupted_download() {
    let (f, a) = on_v1();
    let v11 = f.signed(&DIGITS_IMAGE, "1.1.0");
    let r = f.push(&v11, "1.1.0", 100.0);
    let mut bad = v11.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    replace_blob(&f, &r, &bad);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::DigestMismatch { .. })
        ),
        "{err}"
    );
    still_serving_v1(&a);
    // Once the mirror is fixed, the update goes through.
    replace_blob(&f, &r, &v11);
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
}

/// Read an HTTP request's head from `conn`: the head and the request path.
pub(crate) fn read_request_head(conn: &mut std::net::TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    (head, path)
}

/// A hostile mirror in front of the fleet server: bundle downloads get
/// `serve`'s treatment, everything else is forwarded.
pub(crate) fn hostile_proxy(
    upstream: String,
    serve: fn(&mut std::net::TcpStream, &[u8]),
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::new();
        for conn in listener.incoming().take(200) {
            let Ok(mut conn) = conn else { continue };
            let (_, path) = read_request_head(&mut conn);
            // A mirror holds the bundles: it fetches them with its own credentials.
            let upstream_resp = http
                .get(format!("{upstream}{path}"))
                .bearer_auth(ADMIN)
                .send()
                .unwrap();
            let status = upstream_resp.status().as_u16();
            let etag = upstream_resp
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_string());
            let body = upstream_resp.bytes().unwrap().to_vec();
            if path.starts_with("/v1/fleet/bundles/") && status == 200 {
                serve(&mut conn, &body);
                continue;
            }
            let mut out = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            if let Some(e) = etag {
                out.push_str(&format!("etag: {e}\r\n"));
            }
            out.push_str("\r\n");
            let _ = conn.write_all(out.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    format!("http://{addr}")
}

pub(crate) fn proxied_agent(f: &Fleet, proxy: String, timeout: Duration) -> Agent {
    let mut c = f.agent_config("gw-1");
    c.server = proxy;
    c.download.timeout = timeout;
    Agent::open(c, runtime()).unwrap()
}

#[test]
fn rejects_endless_data() {
    let (f, a) = on_v1();
    drop(a);
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    let proxy = hostile_proxy(f.url(), |conn, body| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        let _ = conn.write_all(body);
        let junk = vec![0u8; 64 << 10];
        for _ in 0..4096 {
            if conn.write_all(&junk).is_err() {
                break;
            }
        }
    });
    let a = proxied_agent(&f, proxy, Duration::from_secs(30));
    let err = a.poll().unwrap_err();
    assert!(
        matches!(err, Error::Server(edgeml_client::Error::EndlessData { .. })),
        "{err}"
    );
    assert_eq!(a.status().error_kind.as_deref(), Some("endless_data"));
    still_serving_v1(&a);
}

#[test]
fn rejects_slow_retrieval() {
    let (f, a) = on_v1();
    drop(a);
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    let proxy = hostile_proxy(f.url(), |conn, body| {
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        for b in body.chunks(64).take(100) {
            if conn.write_all(b).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let started = Instant::now();
    let a = proxied_agent(&f, proxy, Duration::from_secs(1));
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server(edgeml_client::Error::SlowRetrieval { .. })
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the time cap held: {:?}",
        started.elapsed()
    );
    still_serving_v1(&a);
}

#[test]
fn rejects_truncated_download_then_resumes_with_range() {
    let (f, a) = on_v1();
    drop(a);
    let v11 = f.signed(&DIGITS_IMAGE, "1.1.0");
    f.push(&v11, "1.1.0", 100.0);
    let proxy = hostile_proxy(f.url(), |conn, body| {
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        let _ = conn.write_all(&body[..body.len() / 2]);
    });
    let a = proxied_agent(&f, proxy, Duration::from_secs(20));
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server(_) | Error::Metadata(edgeml_fleet::Error::Truncated { .. })
        ),
        "{err}"
    );
    still_serving_v1(&a);
    let part = f
        .dir
        .path()
        .join("devices/gw-1/downloads")
        .join(format!("{}.part", hex::encode(Sha256::digest(&v11))));
    let kept = std::fs::metadata(&part)
        .expect("partial download kept")
        .len();
    assert!(kept > 0 && kept < v11.len() as u64, "kept {kept} bytes");
    drop(a);
    // Straight to the server: the agent asks for the rest only.
    let a = f.agent("gw-1");
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    assert_eq!(version_of(&a).as_deref(), Some("1.1.0"));
    assert!(!part.exists());
}

pub(crate) fn self_test_png(label: &str) -> SelfTest {
    use base64::Engine as _;
    SelfTest {
        name: "000.png".into(),
        input: SelfTestInput::Media {
            media_type: "image/png".into(),
            base64: base64::engine::general_purpose::STANDARD.encode(png(0)),
        },
        label: Some(label.into()),
        outputs: Vec::new(),
        tolerance: 1e-3,
    }
}

#[test]
fn staged_rollout_reaches_its_share_and_a_failing_self_test_rolls_back_and_halts() {
    let f = Fleet::new();
    let agents: Vec<Agent> = (0..20)
        .map(|i| f.agent(&format!("gateway-{i:02}")))
        .collect();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for a in &agents {
        assert!(
            matches!(a.poll(), Ok(PollOutcome::Installed(_))),
            "{}",
            a.device_id()
        );
    }
    // 1.1.0 to 10%.
    let good = f.sign(pack_custom(
        &DIGITS_IMAGE,
        "1.1.0",
        None,
        vec![self_test_png("7")],
        |_| {},
    ));
    let r = f.push(&good, "1.1.0", 10.0);
    let expected: Vec<_> = agents
        .iter()
        .filter(|a| r.includes(a.device_id(), &Default::default(), None))
        .map(|a| a.device_id().to_string())
        .collect();
    for a in &agents {
        a.poll().unwrap();
    }
    let on_new: Vec<_> = agents
        .iter()
        .filter(|a| version_of(a).as_deref() == Some("1.1.0"))
        .map(|a| a.device_id().to_string())
        .collect();
    assert_eq!(
        on_new, expected,
        "exactly the devices whose bucket is in the first 10%"
    );
    assert!(
        (1..=5).contains(&on_new.len()),
        "about 10% of 20: {}",
        on_new.len()
    );
    // Widen to 100% (re-signed release metadata).
    let mut wider = r.clone();
    wider.version += 1;
    wider.rollout_percent = 100.0;
    let env = Envelope::sign(&wider, &[&f.release[0], &f.release[1]]).unwrap();
    f.publish_release(env.to_vec()).unwrap();
    for a in &agents {
        a.poll().unwrap();
        assert_eq!(version_of(a).as_deref(), Some("1.1.0"), "{}", a.device_id());
    }
    // 1.2.0 was packed with its labels shifted by one: its self-test (000.png is a 7) fails.
    let broken = f.shifted_labels("1.2.0");
    f.push(&broken, "1.2.0", 100.0);
    let mut rolled_back = 0;
    for a in &agents {
        match a.poll() {
            Err(Error::Model {
                source: edgeml_runtime::Error::SelfTest { .. },
                ..
            }) => {
                rolled_back += 1;
                assert_eq!(a.status().state, UpdateState::RolledBack);
                assert_eq!(a.status().error_kind.as_deref(), Some("self_test"));
            }
            Ok(PollOutcome::Waiting) => {}
            other => panic!("{}: {other:?}", a.device_id()),
        }
        assert_eq!(
            version_of(a).as_deref(),
            Some("1.1.0"),
            "{} keeps 1.1.0",
            a.device_id()
        );
        assert_eq!(predicts(a), "7");
    }
    assert!(rolled_back >= 1);
    let (state, reason) = f.channel_state();
    assert_eq!(state, RolloutState::Halted);
    assert!(
        reason.unwrap().contains("self-test"),
        "halt reason names the failure"
    );
    // The server's halt is in the audit log, as the server's own act.
    let halt = last_audit(&f, "rollout.halt");
    assert_eq!(halt.actor, "server");
    assert_eq!(halt.details["source"], "rollbacks");
    assert!(halt.details["reason"].contains("self-test"));
}

/// The newest audit entry with `action`.
pub(crate) fn last_audit(f: &Fleet, action: &str) -> edgeml_client::wire::audit::AuditEntry {
    let (entries, _) = f.client.audit_log().unwrap();
    entries
        .into_iter()
        .rev()
        .find(|e| e.action == action)
        .unwrap_or_else(|| panic!("no `{action}` in the audit log"))
}

pub(crate) fn telemetry_runtime(f: &Fleet, id: &str) -> (Runtime, edgeml_runtime::Telemetry) {
    telemetry_runtime_with(f, id, |_| {})
}

/// [`telemetry_runtime`] with its telemetry configuration edited first.
pub(crate) fn telemetry_runtime_with(
    f: &Fleet,
    id: &str,
    edit: impl FnOnce(&mut edgeml_runtime::TelemetryConfig),
) -> (Runtime, edgeml_runtime::Telemetry) {
    let mut tc = edgeml_runtime::TelemetryConfig::new(id, f.dir.path().join("telemetry").join(id));
    tc.window = Duration::from_millis(500);
    let mut cc = edgeml_runtime::telemetry::CollectorConfig::new(f.url());
    cc.enrolment_token = Some(ENROL.into());
    cc.interval = Duration::from_millis(200);
    tc.collector = Some(cc);
    edit(&mut tc);
    std::fs::create_dir_all(&tc.dir).unwrap();
    let t = edgeml_runtime::Telemetry::start(tc).unwrap();
    let mut c = Config::new();
    c.cache_dir(std::env::temp_dir().join("edgeml-fleet-test-cache"));
    c.telemetry(t.clone());
    (Runtime::new(&c).unwrap(), t)
}

/// `n` agents (`{prefix}-{i}`) whose runtimes ship telemetry to the fleet
/// server, sharing one device key with it.
pub(crate) fn telemetry_agents(
    f: &Fleet,
    prefix: &str,
    n: usize,
) -> Vec<(Agent, edgeml_runtime::Telemetry)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let (rt, t) = telemetry_runtime(f, &id);
            let mut c = f.agent_config(&id);
            c.identity_dir = Some(t.config().dir.clone());
            (Agent::open(c, rt).unwrap(), t)
        })
        .collect()
}

#[test]
fn high_error_rate_halts_the_canary_and_devices_roll_back() {
    let f = Fleet::with_canary(|c| c.min_predictions = 20);
    let agents = telemetry_agents(&f, "canary", 4);
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // 1.1.0 takes tensors only: the gateway's PNG clients now fail.
    f.push(&f.signed(&DIGITS_GENERIC, "1.1.0"), "1.1.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
        for i in 0..10 {
            let r = a.predict(edgeml_runtime::Input::Media {
                media_type: "image/png".into(),
                bytes: png(i),
            });
            assert!(r.is_err());
        }
    }
    for (_, t) in &agents {
        std::thread::sleep(Duration::from_millis(600));
        t.flush(Duration::from_secs(10));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.channel_state().0 != RolloutState::Halted {
        assert!(
            Instant::now() < deadline,
            "the canary gate did not halt the rollout"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reason = f.channel_state().1.unwrap();
    assert!(reason.contains("error rate"), "{reason}");
    let halt = last_audit(&f, "rollout.halt");
    assert_eq!(
        (halt.actor.as_str(), halt.details["source"].as_str()),
        ("server", "canary")
    );
    assert_eq!(halt.details["reason"], reason);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::RolledBack(_))));
        assert_eq!(version_of(a).as_deref(), Some("1.0.0"));
        assert_eq!(a.status().error_kind.as_deref(), Some("halted"));
        assert_eq!(predicts(a), "7");
    }
}

pub(crate) fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn device_report(
    f: &Fleet,
    id: &str,
) -> Option<edgeml_client::wire::fleet::StatusReport> {
    f.store()
        .fleet_devices()
        .unwrap()
        .into_iter()
        .find(|d| d.device_id == id)
        .map(|d| d.status)
}

pub(crate) fn write_agent_toml(f: &Fleet, path: &Path, port: u16) {
    std::fs::write(f.dir.path().join("enrol.token"), ENROL).unwrap();
    std::fs::write(
        path,
        format!(
            "device_id = \"gw-kill\"\ndir = \"state\"\nserver = \"{}\"\nchannel = \"stable\"\nroot = \"root.json\"\nenrolment_token_file = \"enrol.token\"\npoll_interval = \"300ms\"\n[health]\nwatch = \"4s\"\n[serve]\nlisten = \"127.0.0.1:{port}\"\n",
            f.url()
        ),
    )
    .unwrap();
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn agent_killed_mid_update_restarts_on_last_known_good() {
    let f = Fleet::new();
    let config: PathBuf = f.dir.path().join("agent.toml");
    let port = free_port();
    write_agent_toml(&f, &config, port);
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let spawn = || {
        workspace_bin("edgeml-agent")
            .args(["--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    wait_for("1.0.0 installed", 60, || {
        device_report(&f, "gw-kill").is_some_and(|r| r.state == UpdateState::Installed)
    });
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    wait_for("1.1.0 under watch", 60, || {
        device_report(&f, "gw-kill").is_some_and(|r| r.state == UpdateState::Checking)
    });
    child.kill().unwrap(); // SIGKILL, mid health check
    child.wait().unwrap();
    let mut child = spawn();
    let http = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the restarted agent", 60, || {
        http.get(format!("{base}/v2/health/ready"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    let meta: serde_json::Value = http
        .get(format!("{base}/v2/models/digits"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(meta["versions"], serde_json::json!(["1.0.0"]), "{meta}");
    // Open Inference Protocol request with a PNG as BYTES.
    use base64::Engine as _;
    let req = serde_json::json!({"id": "q1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"content_type": "image/png"}, "data": [base64::engine::general_purpose::STANDARD.encode(png(0))]}]});
    let resp: serde_json::Value = http
        .post(format!("{base}/v2/models/digits/infer"))
        .json(&req)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp["model_version"], "1.0.0", "{resp}");
    assert_eq!(resp["parameters"]["labels"][0]["label"], "7", "{resp}");
    assert_eq!(resp["id"], "q1");
    wait_for("the recovery report", 30, || {
        device_report(&f, "gw-kill").is_some_and(|r| r.error_kind.as_deref() == Some("interrupted"))
    });
    let r = device_report(&f, "gw-kill").unwrap();
    assert_eq!(r.installed.unwrap().version, "1.0.0");
    // The interrupted bundle is not retried.
    std::thread::sleep(Duration::from_secs(1));
    let meta: serde_json::Value = http
        .get(format!("{base}/v2/models/digits"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(meta["versions"], serde_json::json!(["1.0.0"]));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Root `version` with the given release keys (2 of them needed), signed by the root key.
fn root_with_release_keys(f: &Fleet, version: u64, release: &[&SecretKey]) -> Envelope {
    let rel: Vec<_> = release.iter().map(|k| k.public_key()).collect();
    let root = Root::new(
        version,
        SystemTime::now() + Duration::from_secs(365 * 86400),
        (&[f.root_key.public_key()], 1),
        (&rel, 2),
        (&[f.publisher.public_key()], 1),
    );
    Envelope::sign(&root, &[&f.root_key]).unwrap()
}

#[test]
fn recovers_from_fast_forward_after_release_key_rotation() {
    let (f, a) = on_v1();
    // A threshold of release keys leaks; the attacker publishes version 2^62
    // (through a compromised server) and the device accepts it: it is validly signed.
    let mut r = f.store().release("stable").unwrap().unwrap().release;
    r.version = 1 << 62;
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    assert!(matches!(a.poll(), Ok(PollOutcome::UpToDate)));
    // The operator rotates the release keys away in root version 2 and
    // publishes 1.1.0 under the new keys with an honest version number.
    let new_keys: Vec<SecretKey> = (0..2).map(|_| SecretKey::generate().unwrap()).collect();
    f.publish_root(
        2,
        root_with_release_keys(&f, 2, &[&new_keys[0], &new_keys[1]]).to_vec(),
    )
    .unwrap();
    let mut next = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    // A version the channel already used is a conflict, not a server error.
    next.version = 1;
    let env = Envelope::sign(&next, &[&new_keys[0], &new_keys[1]]).unwrap();
    let taken = f.publish_release(env.to_vec()).unwrap_err();
    assert_eq!(taken.status(), Some(409), "{taken}");
    next.version = 2;
    let env = Envelope::sign(&next, &[&new_keys[0], &new_keys[1]]).unwrap();
    f.publish_release(env.to_vec())
        .expect("the server drops the ratchet of metadata signed by rotated-away keys");
    // The device follows the root, drops the fast-forwarded version, and updates.
    let outcome = a.poll();
    assert!(
        matches!(outcome, Ok(PollOutcome::Installed(_))),
        "{outcome:?}"
    );
    assert_eq!(version_of(&a).as_deref(), Some("1.1.0"));
    assert_eq!(a.status().root_version, 2);
    // The model-version anti-rollback still holds after the reset.
    let mut old = f.release_for(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    old.version = 3;
    f.inject(&old, &[&new_keys[0], &new_keys[1]]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(err, Error::Metadata(edgeml_fleet::Error::Rollback { .. })),
        "{err}"
    );
    assert_eq!(version_of(&a).as_deref(), Some("1.1.0"));
}

#[test]
fn rejects_endless_root_chain() {
    let (f, a) = on_v1();
    let limit = edgeml_fleet::MAX_ROOT_UPDATES;
    for v in 2..=limit + 8 {
        f.publish_root(
            v,
            root_with_release_keys(&f, v, &[&f.release[0], &f.release[1]]).to_vec(),
        )
        .unwrap();
    }
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::RootChainTooLong { limit: l, reached })
                if l == limit && reached == limit + 1
        ),
        "{err}"
    );
    let s = a.status();
    assert_eq!(s.root_version, limit + 1, "stopped after {limit} rotations");
    assert_eq!(s.error_kind.as_deref(), Some("root_chain_too_long"));
    still_serving_v1(&a);
    // The rest of a legitimate chain is followed on the next poll.
    a.poll().unwrap();
    assert_eq!(a.status().root_version, limit + 8);
}

#[test]
fn rejects_release_version_out_of_range() {
    let (f, a) = on_v1();
    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    r.version = i64::MAX as u64 + 1;
    let env = Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
    let refused = f.publish_release(env.to_vec()).unwrap_err();
    assert_eq!(refused.status(), Some(422), "{refused}");
    assert!(
        refused.to_string().contains("above the largest allowed"),
        "{refused}"
    );
    // Served anyway by a compromised server: the device refuses it too.
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::VersionOutOfRange { .. })
        ),
        "{err}"
    );
    still_serving_v1(&a);
}

#[test]
fn detects_freeze_when_server_answers_not_modified() {
    let f = Fleet::new();
    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    // Metadata that expires in a few seconds (enough for a first install on
    // a slow, busy machine); the server then keeps answering 304 for it.
    let expires = SystemTime::now() + Duration::from_secs(12);
    r.expires = humantime::format_rfc3339_seconds(expires).to_string();
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    let a = f.agent("gw-1");
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    assert!(matches!(a.poll(), Ok(PollOutcome::NotModified)));
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    std::thread::sleep(left + Duration::from_secs(1));
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::Expired {
                role: "release",
                ..
            })
        ),
        "{err}"
    );
    let s = a.status();
    assert_eq!(s.error_kind.as_deref(), Some("release_expired"));
    assert_eq!(
        device_report(&f, "gw-1")
            .and_then(|r| r.error_kind)
            .as_deref(),
        Some("release_expired"),
        "the server sees the freeze"
    );
    still_serving_v1(&a);
}

#[test]
fn rejects_non_hex_digest() {
    let (f, a) = on_v1();
    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    r.bundle.sha256 = "../../../../etc/passwd".into();
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::InvalidDigest { ref found }) if found == "../../../../etc/passwd"
        ),
        "{err}"
    );
    assert!(!f.dir.path().join("etc").exists());
    still_serving_v1(&a);
}

#[test]
fn rejects_unauthenticated_bundle_download() {
    let f = Fleet::new();
    let r = f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let url = format!("{}/v1/fleet/bundles/{}", f.url(), r.bundle.sha256);
    let anonymous = f.http.get(&url).send().unwrap();
    assert_eq!(anonymous.status(), 401);
    // Admins get it, streamed with Range and a strong ETag.
    let part = f
        .http
        .get(&url)
        .bearer_auth(ADMIN)
        .header("range", "bytes=0-99")
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", r.bundle.sha256)
    );
    assert_eq!(part.bytes().unwrap().len(), 100);
}

#[test]
fn starts_after_damaged_state_file() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // A power cut on a bad flash card: state.json is garbage, root.json too.
    let dir = f.dir.path().join("devices").join("gw-1");
    std::fs::write(dir.join("state.json"), b"{\"current\": {\"mod").unwrap();
    std::fs::write(dir.join("root.json"), b"\0\0\0").unwrap();
    let a = f.agent("gw-1");
    let s = a.status();
    assert_eq!(s.state, UpdateState::Recovered);
    assert_eq!(s.error_kind.as_deref(), Some("state_discarded"));
    assert!(
        s.last_error
            .as_deref()
            .unwrap()
            .contains("state.json.damaged"),
        "{:?}",
        s.last_error
    );
    assert!(dir.join("state.json.damaged").exists());
    // Rebuilt from the verified bundles: the release's 1.1.0 serves, 1.0.0 is the one before.
    assert_eq!(version_of(&a).as_deref(), Some("1.1.0"));
    assert_eq!(s.last_good.unwrap().version, "1.1.0");
    assert_eq!(predicts(&a), "7");
    assert!(matches!(a.poll(), Ok(PollOutcome::UpToDate)));
}

#[test]
fn rejects_tampered_installed_bundle_on_restart() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    let r = f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // Someone with access to the disk swaps the installed bundle for another
    // validly signed one (1.2.0): it is not what the release pinned.
    let other = f.signed(&DIGITS_IMAGE, "1.2.0");
    let path = f
        .dir
        .path()
        .join("devices/gw-1/bundles")
        .join(format!("{}.wasm", r.bundle.sha256));
    std::fs::write(&path, &other).unwrap();
    let a = f.agent("gw-1");
    let s = a.status();
    assert_eq!(
        s.error_kind.as_deref(),
        Some("mix_and_match"),
        "{:?}",
        s.last_error
    );
    assert_eq!(
        version_of(&a).as_deref(),
        Some("1.0.0"),
        "back on the bundle before it"
    );
    assert_eq!(predicts(&a), "7");
}

#[test]
fn rejects_zero_canary_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(ADMIN, ENROL);
    settings.fleet.bundle_dir = Some(dir.path().join("bundles"));
    settings.fleet.canary.interval = Duration::ZERO;
    let err = Server::start_with(
        TestDb::new(dir.path()).open(),
        settings,
        "127.0.0.1:0".parse().unwrap(),
    )
    .err()
    .expect("a zero interval is refused, not a panic");
    assert!(
        matches!(err, edgeml_collector::Error::Settings(ref m) if m.contains("canary interval")),
        "{err}"
    );
}

#[test]
fn damaged_state_does_not_revive_rolled_back_bundle() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
        // 1.1.0 fails its self-test on this device and is rolled back.
        let broken = f.sign(pack_custom(
            &DIGITS_IMAGE,
            "1.1.0",
            None,
            vec![self_test_png("7")],
            |labels| labels.rotate_left(1),
        ));
        f.push(&broken, "1.1.0", 100.0);
        assert!(matches!(a.poll(), Err(Error::Model { .. })));
        assert_eq!(version_of(&a).as_deref(), Some("1.0.0"));
    }
    // The list of failed bundles is lost with the state file; the failed
    // bundle itself was deleted when it failed, so it cannot come back.
    let dir = f.dir.path().join("devices").join("gw-1");
    std::fs::write(dir.join("state.json"), b"not json").unwrap();
    let a = f.agent("gw-1");
    assert_eq!(a.status().error_kind.as_deref(), Some("state_discarded"));
    assert_eq!(version_of(&a).as_deref(), Some("1.0.0"));
    assert_eq!(predicts(&a), "7");
}

#[test]
fn refused_release_is_logged_with_its_reason() {
    let f = Fleet::new();
    let config: PathBuf = f.dir.path().join("agent.toml");
    write_agent_toml(&f, &config, free_port());
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let mut child = workspace_bin("edgeml-agent")
        .args(["--config", config.to_str().unwrap()])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let wait_line = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(v) if ok(&v) => return v,
                Ok(_) => {}
                Err(_) => panic!("no log line for {what}"),
            }
        }
    };
    let installed = wait_line("the install", &|v| {
        v["message"] == "installed and committed"
    });
    assert_eq!(installed["level"], "INFO");
    assert_eq!(installed["version"], "1.0.0");
    // A release signed by keys the root does not name.
    let r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    let stranger = SecretKey::generate().unwrap();
    f.inject(&r, &[&stranger]);
    let refused = wait_line("the refusal", &|v| v["error_kind"] == "wrong_key");
    assert_eq!(refused["level"], "WARN");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("which is not a release key in root version 1"),
        "{refused}"
    );
    // The report (written to the state directory before it is sent).
    wait_for("the refusal reported", 30, || {
        device_report(&f, "gw-kill").is_some_and(|r| r.error_kind.as_deref() == Some("wrong_key"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // The state, read without the server.
    let out = workspace_bin("edgeml-agent")
        .args(["status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("installed:   digits 1.0.0"), "{text}");
    assert!(text.contains("not a release key"), "{text}");
}

/// `HH:MM` on the device's wall clock (`date`, local time) `offset`
/// minutes from now.
fn local_hhmm(offset: i64) -> String {
    let out = std::process::Command::new("date")
        .arg("+%H %M")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hm: Vec<i64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let m = (hm[0] * 60 + hm[1] + offset).rem_euclid(1440);
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn window(from: i64, to: i64) -> Option<edgeml_agent::MaintenanceWindow> {
    Some(
        edgeml_agent::MaintenanceWindow::parse(&format!("{}-{}", local_hhmm(from), local_hhmm(to)))
            .unwrap(),
    )
}

#[test]
fn defers_install_outside_maintenance_window() {
    let (f, a) = on_v1();
    drop(a);
    // The window opens in two hours.
    let mut c = f.agent_config("gw-1");
    c.install.window = window(120, 180);
    let a = Agent::open(c, runtime()).unwrap();
    let r = f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    assert!(matches!(a.poll(), Ok(PollOutcome::Deferred(i)) if i.version == "1.1.0"));
    assert_eq!(a.status().state, UpdateState::Deferred);
    assert_eq!(a.status().target.as_deref(), Some("1.1.0"));
    still_serving_v1(&a);
    // Each poll sees the release again (no 304) and keeps waiting.
    assert!(matches!(a.poll(), Ok(PollOutcome::Deferred(_))));
    still_serving_v1(&a);
    drop(a);
    // In the window it installs the copy it downloaded and verified, not a
    // new download: the server no longer has the bundle.
    std::fs::remove_file(f.dir.path().join("bundles/sha256").join(&r.bundle.sha256)).unwrap();
    let mut c = f.agent_config("gw-1");
    c.install.window = window(-60, 60);
    let a = Agent::open(c, runtime()).unwrap();
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(i)) if i.version == "1.1.0"));
    assert_eq!(predicts(&a), "7");
    assert!(!f.dir.path().join("devices/gw-1/deferred.wasm").exists());
}

#[test]
fn rejects_tampered_bundle_kept_for_maintenance_window() {
    let (f, a) = on_v1();
    drop(a);
    let mut c = f.agent_config("gw-1");
    c.install.window = window(120, 180);
    let a = Agent::open(c, runtime()).unwrap();
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    assert!(matches!(a.poll(), Ok(PollOutcome::Deferred(_))));
    drop(a);
    // Someone with access to the device's disk swaps the kept bundle.
    let kept = f.dir.path().join("devices/gw-1/deferred.wasm");
    let mut bytes = std::fs::read(&kept).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 1;
    std::fs::write(&kept, bytes).unwrap();
    let mut c = f.agent_config("gw-1");
    c.install.window = window(-60, 60);
    let a = Agent::open(c, runtime()).unwrap();
    // The pinned digest no longer matches: downloaded again, and installed.
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(i)) if i.version == "1.1.0"));
    assert_eq!(predicts(&a), "7");
}

#[test]
fn operator_abort_sends_devices_back_and_is_audited() {
    let (f, a) = on_v1();
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(i)) if i.version == "1.1.0"));
    let alice = edgeml_client::Client::new(&f.url())
        .unwrap()
        .with_admin_token(ADMIN)
        .with_operator("alice");
    let changed = alice
        .rollout("stable", edgeml_client::wire::fleet::RolloutAction::Abort)
        .unwrap();
    assert_eq!(changed.state, RolloutState::Halted);
    assert_eq!(
        f.channel_state(),
        (RolloutState::Halted, Some("aborted by an operator".into()))
    );
    assert!(matches!(a.poll(), Ok(PollOutcome::RolledBack(i)) if i.version == "1.0.0"));
    still_serving_v1(&a);
    let abort = last_audit(&f, "rollout.abort");
    assert_eq!(
        (abort.actor.as_str(), abort.operator.as_deref()),
        ("admin", Some("alice"))
    );
    assert_eq!(abort.details["model_version"], "1.1.0");
}
