//! Freshness: a root may name an online timestamp role. The fleet server
//! then signs a short-lived timestamp of each channel's current release,
//! and devices refuse a release without a fresh timestamp for exactly that
//! release, so a server or proxy that freezes a device on old metadata is
//! noticed within the timestamp's lifetime (a day by default; seconds here).
//! A real fleet server on 127.0.0.1; the attacks replay channel views
//! through a proxy, as a compromised server or a man in the middle would.

use crate::common::*;
use crate::fleet::*;
use edgeml_agent::{Agent, Error, PollOutcome};
use edgeml_bundle::SecretKey;
use edgeml_client::wire::fleet::ChannelView;
use edgeml_fleet::{Envelope, Root};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A fleet whose server holds `key` as its timestamp key (timestamps valid
/// for `ttl`), and whose root version 2 names it.
fn fleet_with_timestamps(ttl: Duration) -> (Fleet, SecretKey) {
    let key = SecretKey::generate().unwrap();
    let held = SecretKey::from_bytes(&key.to_bytes()).unwrap();
    let f = Fleet::with_settings(|s| {
        s.fleet.timestamp_key = Some(Arc::new(held));
        s.fleet.timestamp_ttl = ttl;
    });
    let rel: Vec<_> = f.release.iter().map(|k| k.public_key()).collect();
    let v2 = Root::new(
        2,
        SystemTime::now() + Duration::from_secs(365 * 86400),
        (&[f.root_key.public_key()], 1),
        (&rel, 2),
        (&[f.publisher.public_key()], 1),
    )
    .with_timestamp(&[key.public_key()], 1);
    f.publish_root(2, Envelope::sign(&v2, &[&f.root_key]).unwrap().to_vec())
        .unwrap();
    (f, key)
}

fn channel_view(f: &Fleet) -> ChannelView {
    f.http
        .get(format!("{}/v1/fleet/channels/stable", f.url()))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// A proxy that answers channel polls with `view` (always 200, a fixed
/// ETag) and forwards everything else to the fleet server.
fn replaying_proxy(f: &Fleet, view: &ChannelView) -> String {
    let upstream = f.url();
    let body = serde_json::to_vec(view).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::new();
        for conn in listener.incoming().take(100) {
            let Ok(mut conn) = conn else { continue };
            let (head, path) = read_request_head(&mut conn);
            let (status, payload) = if path == "/v1/fleet/channels/stable" {
                (200, body.clone())
            } else if head.starts_with("GET ") {
                let r = http
                    .get(format!("{upstream}{path}"))
                    .bearer_auth(ADMIN)
                    .send()
                    .unwrap();
                (r.status().as_u16(), r.bytes().unwrap().to_vec())
            } else {
                // Status reports: swallowed.
                (200, b"{}".to_vec())
            };
            let out = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\netag: \"frozen\"\r\nconnection: close\r\n\r\n",
                payload.len()
            );
            let _ = conn.write_all(out.as_bytes());
            let _ = conn.write_all(&payload);
        }
    });
    format!("http://{addr}")
}

/// The agent for `gw-1`, talking to `server`.
fn agent_via(f: &Fleet, server: String) -> Agent {
    let mut c = f.agent_config("gw-1");
    c.server = server;
    Agent::open(c, crate::fleet::runtime()).unwrap()
}

#[test]
fn installs_with_fresh_timestamp() {
    let (f, _) = fleet_with_timestamps(Duration::from_secs(3600));
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let a = f.agent("gw-1");
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    assert_eq!(a.status().root_version, 2);
    // The server reuses its timestamp: the next poll is a 304.
    assert!(matches!(a.poll(), Ok(PollOutcome::NotModified)));
}

#[test]
fn rejects_missing_timestamp() {
    let (f, _) = fleet_with_timestamps(Duration::from_secs(3600));
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    let mut view = channel_view(&f);
    view.timestamp = None;
    let a = agent_via(&f, replaying_proxy(&f, &view));
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::MissingTimestamp { root_version: 2 })
        ),
        "{err}"
    );
    still_serving_v1(&a);
}

#[test]
fn rejects_stale_timestamp() {
    let (f, _) = fleet_with_timestamps(Duration::from_secs(2));
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // A new release is published; a man in the middle keeps serving the
    // device the old view, whose timestamp runs out.
    let frozen = channel_view(&f);
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    std::thread::sleep(Duration::from_secs(3));
    let a = agent_via(&f, replaying_proxy(&f, &frozen));
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::Expired {
                role: "timestamp",
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(a.status().error_kind.as_deref(), Some("timestamp_expired"));
    still_serving_v1(&a);
}

#[test]
fn rejects_timestamp_for_other_release() {
    let (f, _) = fleet_with_timestamps(Duration::from_secs(3600));
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    {
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    let old = channel_view(&f);
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    let new = channel_view(&f);
    // The new release's fresh timestamp stapled to a different release.
    let mut mixed = old.clone();
    mixed.timestamp = new.timestamp.clone();
    let a = agent_via(&f, replaying_proxy(&f, &mixed));
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(edgeml_fleet::Error::TimestampMismatch {
                expected_version: 1,
                found_version: 2,
                ..
            })
        ),
        "{err}"
    );
    still_serving_v1(&a);
}
