//! Who may halt a rollout. A halt is a fleet-wide action, so the evidence
//! for it must come from devices that were actually served the release,
//! count once per device, come from enough distinct devices, and be fresh
//! (a resume starts a new evidence window). Status reports cannot be
//! replayed. A real fleet server on 127.0.0.1 and real agents; forged
//! reports are signed with the device's own key, as a compromised device
//! would sign them.

use crate::common::*;
use crate::fleet::*;
use edgeml_agent::{Agent, Error, PollOutcome, UpdateState};
use edgeml_client::wire::fleet::{Installed, RolloutState, StatusReport};
use edgeml_telemetry::{wire, DeviceIdentity};
use std::time::{Duration, Instant};

/// A status report signed with `id`'s device key, as its agent stored it.
fn send_report(f: &Fleet, id: &str, report: &StatusReport) -> reqwest::blocking::Response {
    let identity =
        DeviceIdentity::load_or_create(&f.dir.path().join("devices").join(id), id).unwrap();
    let body = serde_json::to_vec(report).unwrap();
    f.http
        .post(format!("{}/v1/fleet/report", f.url()))
        .header("content-type", "application/json")
        .header(wire::DEVICE_HEADER, id)
        .header(wire::SIGNATURE_HEADER, identity.sign_batch(&body))
        .body(body)
        .send()
        .unwrap()
}

/// What a device that claims to have rolled back `version` (`sha256`) sends.
fn rollback_claim(version: &str, sha256: &str, seq: u64) -> StatusReport {
    StatusReport {
        channel: "stable".into(),
        state: UpdateState::RolledBack,
        installed: Some(Installed {
            model: "digits".into(),
            version: "1.0.0".into(),
            sha256: "00".repeat(32),
        }),
        last_good: None,
        target: Some(version.into()),
        target_sha256: Some(sha256.into()),
        last_error: Some(format!("{version}: self-test `000.png` failed")),
        error_kind: Some("self_test".into()),
        root_version: 1,
        host_target: None,
        engine: None,
        can_compile: true,
        seq,
        tags: Default::default(),
    }
}

fn now_ms() -> u64 {
    edgeml_telemetry::now_ms()
}

#[test]
fn device_cannot_halt_rollout_it_is_not_in() {
    // One device's evidence would be enough here: what stops the attacker
    // is that it was never offered the release.
    let f = Fleet::with_canary(|c| c.min_devices = 1);
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 10.0);
    let outside = (0..200)
        .map(|i| format!("gw-{i}"))
        .find(|id| !r.includes(id, &Default::default(), None))
        .unwrap();
    let inside = (0..200)
        .map(|i| format!("gw-{i}"))
        .find(|id| r.includes(id, &Default::default(), None))
        .unwrap();
    let (a_out, a_in) = (f.agent(&outside), f.agent(&inside));
    assert!(matches!(a_out.poll(), Ok(PollOutcome::Installed(_))));
    assert!(matches!(a_in.poll(), Ok(PollOutcome::Installed(_))));
    let env = edgeml_fleet::Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
    f.publish_release(env.to_vec()).unwrap();
    assert!(matches!(a_out.poll(), Ok(PollOutcome::NotInRollout)));

    // The outsider cannot fetch the bundle to get itself into the cohort ...
    let identity =
        DeviceIdentity::load_or_create(&f.dir.path().join("devices").join(&outside), &outside)
            .unwrap();
    let path = format!("/v1/fleet/bundles/{}", r.bundle.sha256);
    let t = now_ms();
    let resp = f
        .http
        .get(format!("{}{path}", f.url()))
        .header(wire::DEVICE_HEADER, &outside)
        .header(wire::TIME_HEADER, t.to_string())
        .header(
            wire::SIGNATURE_HEADER,
            identity.sign_batch(&wire::get_signing_body("GET", &path, t)),
        )
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    // ... and its signed rollback claims are stored but never count.
    for _ in 0..5 {
        let resp = send_report(
            &f,
            &outside,
            &rollback_claim("1.1.0", &r.bundle.sha256, now_ms()),
        );
        assert_eq!(resp.status(), 200);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(f.channel_state().0, RolloutState::Active);

    // A device that was served the release does count.
    assert!(matches!(a_in.poll(), Ok(PollOutcome::Installed(_))));
    let resp = send_report(
        &f,
        &inside,
        &rollback_claim("1.1.0", &r.bundle.sha256, now_ms() + 10_000),
    );
    assert_eq!(resp.status(), 200);
    let (state, reason) = f.channel_state();
    assert_eq!(state, RolloutState::Halted);
    assert!(reason.unwrap().contains(&inside));
}

#[test]
fn one_noisy_device_cannot_halt_canary() {
    let f = Fleet::with_canary(|c| c.min_predictions = 20);
    let agents = telemetry_agents(&f, "noisy", 2);
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // 1.1.0 takes tensors only: PNG requests fail on it.
    f.push(&f.signed(&DIGITS_GENERIC, "1.1.0"), "1.1.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    let fail = |a: &Agent, n: usize| {
        for i in 0..n {
            let r = a.predict(edgeml_runtime::Input::Media {
                media_type: "image/png".into(),
                bytes: png(i % 10),
            });
            assert!(r.is_err());
        }
    };
    // One device sends a flood of failures (far above min_predictions) ...
    fail(&agents[0].0, 200);
    std::thread::sleep(Duration::from_millis(600));
    agents[0].1.flush(Duration::from_secs(10));
    // ... and the gate, looking every 300 ms, does not halt on it alone.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        f.channel_state().0,
        RolloutState::Active,
        "one device decided: {:?}",
        f.channel_state().1
    );
    // A second device with the same evidence: now the gate halts.
    fail(&agents[1].0, 10);
    std::thread::sleep(Duration::from_millis(600));
    agents[1].1.flush(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.channel_state().0 != RolloutState::Halted {
        assert!(
            Instant::now() < deadline,
            "two devices did not halt the canary"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reason = f.channel_state().1.unwrap();
    assert!(reason.contains("mean of 2 devices"), "{reason}");
}

#[test]
fn resume_does_not_rehalt_on_old_evidence() {
    let f = Fleet::new();
    let agents: Vec<Agent> = (0..2).map(|i| f.agent(&format!("gw-{i}"))).collect();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for a in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // 1.2.0's labels are shifted: its self-test fails on both devices.
    let broken = f.sign(pack_custom(
        &DIGITS_IMAGE,
        "1.2.0",
        None,
        vec![self_test_png("7")],
        |labels| labels.rotate_left(1),
    ));
    f.push(&broken, "1.2.0", 100.0);
    for a in &agents {
        assert!(matches!(
            a.poll(),
            Err(Error::Model {
                source: edgeml_runtime::Error::SelfTest { .. },
                ..
            })
        ));
    }
    let (state, reason) = f.channel_state();
    assert_eq!(state, RolloutState::Halted);
    assert!(reason.unwrap().starts_with("2 of 2 device(s)"));
    // The operator resumes; the devices keep reporting their old rollback.
    let resp = f
        .http
        .post(format!("{}/v1/fleet/channels/stable/rollout", f.url()))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"action": "resume"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    for _ in 0..3 {
        for a in &agents {
            a.poll().unwrap();
            assert_eq!(a.status().state, UpdateState::RolledBack);
            assert_eq!(version_of(a).as_deref(), Some("1.0.0"));
        }
    }
    assert_eq!(
        f.channel_state().0,
        RolloutState::Active,
        "halted again on evidence from before the resume"
    );
}

#[test]
fn rejects_replayed_status_report() {
    let (f, _a) = on_v1();
    let r = f.store().release("stable").unwrap().unwrap();
    let report = rollback_claim("1.0.0", &r.release.bundle.sha256, now_ms() + 60_000);
    assert_eq!(send_report(&f, "gw-1", &report).status(), 200);
    // The same signed report again, and an older one.
    assert_eq!(send_report(&f, "gw-1", &report).status(), 409);
    let mut older = report.clone();
    older.seq -= 1;
    older.state = UpdateState::Idle;
    assert_eq!(send_report(&f, "gw-1", &older).status(), 409);
    assert_eq!(
        device_report(&f, "gw-1").unwrap().state,
        UpdateState::RolledBack,
        "the replay changed nothing"
    );
}
