//! Two `edgeml-server` processes on one PostgreSQL behave as one server:
//! devices reach either through a load balancer, each rollout decision is
//! taken once, and killing a replica while devices ship telemetry to it
//! loses nothing.
//!
//! The load balancer is a small TCP forwarder in this file (round robin,
//! skipping replicas that refuse connections): what a real one does for
//! this test, without installing one.

use crate::common::workspace_bin;
use crate::common::DIGITS_IMAGE;
use crate::db::TestDb;
use crate::fleet::{free_port, png, predicts, telemetry_agents, version_of, Fleet, ADMIN, ENROL};
use edgeml_agent::PollOutcome;
use edgeml_client::wire::fleet::{DecisionList, DecisionSource, RolloutState};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An `edgeml-server` process.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Replica {
    fn start(id: &str, db: &TestDb, bundles: &Path) -> Replica {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = workspace_bin("edgeml-server")
            .arg("--db")
            .arg(&db.url)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--bundles")
            .arg(bundles)
            .args(["--replica-id", id, "--canary-interval", "300ms"])
            .args(["--canary-min-predictions", "20"])
            .env("EDGEML_ADMIN_TOKEN", ADMIN)
            .env("EDGEML_ENROLMENT_TOKEN", ENROL)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting edgeml-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening on"), "{id}: {line}");
        Replica { child, addr }
    }

    /// SIGKILL: no graceful shutdown, requests in flight are cut.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Round-robin TCP forwarding to the replicas that accept connections.
struct Balancer {
    addr: SocketAddr,
    /// Connections forwarded to each replica.
    served: Arc<Vec<AtomicUsize>>,
}

impl Balancer {
    fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = served.clone();
        std::thread::spawn(move || {
            let mut next = 0;
            for client in listener.incoming().flatten() {
                let upstream = (0..backends.len()).find_map(|k| {
                    let i = (next + k) % backends.len();
                    TcpStream::connect_timeout(&backends[i], Duration::from_millis(500))
                        .ok()
                        .map(|s| (i, s))
                });
                next += 1;
                let Some((i, upstream)) = upstream else {
                    continue; // every replica is down: the client sees a reset
                };
                counts[i].fetch_add(1, Ordering::SeqCst);
                pipe(client, upstream);
            }
        });
        Balancer { addr, served }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self, i: usize) -> usize {
        self.served[i].load(Ordering::SeqCst)
    }
}

/// Copy both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one_way = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        })
    };
    one_way(a, b2);
    one_way(b, a2);
}

fn decisions(f: &Fleet) -> DecisionList {
    f.http
        .get(format!("{}/v1/fleet/decisions?channel=stable", f.url()))
        .bearer_auth(ADMIN)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap()
}

/// Records the database holds (each record id once).
fn stored_records(db: &TestDb) -> i64 {
    postgres::Client::connect(&db.url, postgres::NoTls)
        .unwrap()
        .query_one("SELECT COUNT(*) FROM records", &[])
        .unwrap()
        .get(0)
}

#[test]
fn two_replicas_decide_once_and_lose_nothing_when_one_is_killed() {
    let Some(db) = TestDb::postgres() else {
        return; // not in CI and no PostgreSQL here (printed)
    };
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    let mut a = Replica::start("replica-a", &db, &bundles);
    let b = Replica::start("replica-b", &db, &bundles);
    let lb = Balancer::start(vec![a.addr, b.addr]);
    let f = Fleet::attach(dir, db.clone(), lb.url(), None);

    // A bad release reaches four devices through both replicas.
    let agents = telemetry_agents(&f, "canary", 4);
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for (agent, _) in &agents {
        assert!(matches!(agent.poll(), Ok(PollOutcome::Installed(_))));
    }
    f.push(
        &f.signed(&crate::common::DIGITS_GENERIC, "1.1.0"),
        "1.1.0",
        100.0,
    );
    for (agent, _) in &agents {
        assert!(matches!(agent.poll(), Ok(PollOutcome::Installed(_))));
        for i in 0..10 {
            assert!(agent
                .predict(edgeml_runtime::Input::Media {
                    media_type: "image/png".into(),
                    bytes: png(i),
                })
                .is_err());
        }
    }
    for (_, t) in &agents {
        std::thread::sleep(Duration::from_millis(600));
        t.flush(Duration::from_secs(10));
    }
    assert!(
        lb.served(0) > 0 && lb.served(1) > 0,
        "devices reached both replicas ({} and {} connections)",
        lb.served(0),
        lb.served(1)
    );

    // Both canary gates judge it every 300 ms; one halt is recorded.
    crate::fleet::wait_for("the canary halt", 30, || {
        f.channel_state().0 == RolloutState::Halted
    });
    std::thread::sleep(Duration::from_secs(2));
    let log = decisions(&f).decisions;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].source, log[0].to),
        (DecisionSource::Canary, RolloutState::Halted)
    );
    assert!(
        ["replica-a", "replica-b"].contains(&log[0].replica.as_str()),
        "{log:?}"
    );
    for (agent, _) in &agents {
        assert!(matches!(agent.poll(), Ok(PollOutcome::RolledBack(_))));
        assert_eq!(version_of(agent).as_deref(), Some("1.0.0"));
    }

    // Devices keep shipping telemetry while replica A is killed.
    let shipping = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline {
                for (agent, t) in &agents {
                    assert_eq!(predicts(agent), "7");
                    t.flush(Duration::from_millis(300));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
        a.kill();
        load.join()
    });
    assert!(shipping.is_ok(), "the devices kept serving");
    let mut shipped = 0;
    for (_, t) in &agents {
        let stats = t.flush(Duration::from_secs(30));
        assert_eq!(stats.spool.pending_records, 0, "{stats:?}");
        assert_eq!(stats.spool.dropped_records, 0, "{stats:?}");
        shipped += stats.shipped_records;
    }
    // Every record a device saw acknowledged is stored, once.
    assert_eq!(stored_records(&db), shipped as i64);

    // The survivor takes the operator's decision.
    f.client
        .rollout("stable", edgeml_client::wire::fleet::RolloutAction::Resume)
        .unwrap();
    let log = decisions(&f).decisions;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        (log[1].source, log[1].to, log[1].replica.as_str()),
        (DecisionSource::Operator, RolloutState::Active, "replica-b")
    );
    drop(b);
}
