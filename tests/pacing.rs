//! Device tags, tag-targeted releases and paced rollouts, against the real
//! server and in-process agents: the schedule and the target are signed
//! with the release; the server only decides when a step starts.

use crate::common::*;
use crate::fleet::*;
use edgeml_agent::{Agent, PollOutcome};
use edgeml_client::wire::fleet::{DecisionSource, RolloutAction, RolloutState, UpdateState};
use edgeml_client::DownloadLimits;
use edgeml_fleet::{AbortCriteria, Envelope, Release, Schedule, Tags};
use edgeml_telemetry::DeviceIdentity;
use std::time::Duration;

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tagged_agent(f: &Fleet, id: &str, t: &[(&str, &str)]) -> Agent {
    let mut c = f.agent_config(id);
    c.tags = tags(t);
    Agent::open(c, crate::fleet::runtime()).expect("agent")
}

fn publish(f: &Fleet, r: &Release) {
    let env = Envelope::sign(r, &[&f.release[0], &f.release[1]]).unwrap();
    f.publish_release(env.to_vec()).unwrap();
}

fn paced(
    f: &Fleet,
    bundle: &[u8],
    version: &str,
    steps: &[f64],
    secs: u64,
    devices: u32,
) -> Release {
    let mut r = f.release_for(bundle, version, *steps.last().unwrap());
    r.schedule = Some(Schedule {
        steps: steps.to_vec(),
        min_step_secs: secs,
        min_step_devices: devices,
    });
    publish(f, &r);
    r
}

fn step(f: &Fleet) -> u32 {
    f.store().release("stable").unwrap().unwrap().step
}

fn on(agents: &[Agent], version: &str) -> Vec<String> {
    agents
        .iter()
        .filter(|a| version_of(a).as_deref() == Some(version))
        .map(|a| a.device_id().to_string())
        .collect()
}

#[test]
fn release_targets_devices_by_tag_and_admin_tags_retarget_them() {
    let f = Fleet::new();
    let berlin = tagged_agent(&f, "gw-berlin", &[("site", "berlin"), ("hw", "rpi4")]);
    let paris = tagged_agent(&f, "gw-paris", &[("site", "paris"), ("hw", "rpi4")]);
    let bare = f.agent("gw-bare");
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for a in [&berlin, &paris, &bare] {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // The server sees each device's own tags.
    let devices = f.client.fleet_devices().unwrap();
    let seen = |id: &str| {
        devices
            .iter()
            .find(|d| d.device_id == id)
            .unwrap()
            .tags
            .clone()
    };
    assert_eq!(seen("gw-paris"), tags(&[("site", "paris"), ("hw", "rpi4")]));
    assert!(seen("gw-bare").is_empty());

    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    r.target = Some("site=berlin, hw in (rpi4, jetson)".into());
    publish(&f, &r);
    assert!(matches!(berlin.poll(), Ok(PollOutcome::Installed(_))));
    assert!(matches!(paris.poll(), Ok(PollOutcome::NotInRollout)));
    assert!(matches!(bare.poll(), Ok(PollOutcome::NotInRollout)));
    assert_eq!(version_of(&paris).as_deref(), Some("1.0.0"));

    // The server checks the target too: a device outside it cannot fetch
    // the bundle, whatever it claims.
    let dir = f.dir.path().join("devices").join("gw-bare");
    let identity = DeviceIdentity::load_or_create(&dir, "gw-bare").unwrap();
    let limits = DownloadLimits {
        max_bytes: 1 << 30,
        timeout: Duration::from_secs(20),
    };
    let err = edgeml_client::Client::new(&f.url())
        .unwrap()
        .download_bundle(&identity, &r, &dir.join("stolen.part"), limits)
        .unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 403, .. }),
        "{err}"
    );

    // An admin moves the Paris gateway to Berlin: the admin's tag takes
    // the place of the device's own, the device learns it with its next
    // report and takes the release at the poll after.
    let now = f
        .client
        .set_device_tags("gw-paris", &tags(&[("site", "berlin")]))
        .unwrap();
    assert_eq!(now, tags(&[("site", "berlin"), ("hw", "rpi4")]));
    let entry = last_audit(&f, "device.tags");
    assert_eq!(entry.target, "gw-paris");
    assert_eq!(entry.details["tag.site"], "berlin");
    // This poll still matched the old tags (or was not modified); its
    // report brings the new ones.
    let _ = paris.poll();
    assert!(
        matches!(
            paris.poll(),
            Ok(PollOutcome::Installed(_)) | Ok(PollOutcome::UpToDate)
        ),
        "the retagged device takes the release"
    );
    assert_eq!(version_of(&paris).as_deref(), Some("1.1.0"));
    assert!(matches!(
        bare.poll(),
        Ok(PollOutcome::NotModified | PollOutcome::NotInRollout)
    ));
    assert_eq!(version_of(&bare).as_deref(), Some("1.0.0"));

    // Unknown devices and invalid tags are refused.
    let err = f
        .client
        .set_device_tags("gw-nobody", &tags(&[("site", "x")]))
        .unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 404, .. }),
        "{err}"
    );
    let err = f
        .client
        .set_device_tags("gw-bare", &tags(&[("site", "two words")]))
        .unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 422, .. }),
        "{err}"
    );
}

#[test]
fn rejects_retargeting_by_server_when_server_tags_are_off() {
    // A device provisioned to match release targets against its own tags
    // only: what the server says its tags are cannot move it into a
    // release signed for other sites.
    let f = Fleet::new();
    let mut c = f.agent_config("gw-strict");
    c.tags = tags(&[("site", "paris")]);
    c.server_tags = false;
    let strict = Agent::open(c, crate::fleet::runtime()).expect("agent");
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    assert!(matches!(strict.poll(), Ok(PollOutcome::Installed(_))));
    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    r.target = Some("site=berlin".into());
    publish(&f, &r);
    assert!(matches!(strict.poll(), Ok(PollOutcome::NotInRollout)));
    // The server (an admin, or whoever holds it) says it is in Berlin now.
    f.client
        .set_device_tags("gw-strict", &tags(&[("site", "berlin")]))
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            strict.poll(),
            Ok(PollOutcome::NotInRollout | PollOutcome::NotModified)
        ));
    }
    assert_eq!(version_of(&strict).as_deref(), Some("1.0.0"));
}

#[test]
fn rejects_release_with_unparsable_target() {
    let f = Fleet::new();
    let mut r = f.release_for(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    r.target = Some("site in (berlin".into());
    let env = Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
    let err = f.publish_release(env.to_vec()).unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 422, message, .. }
            if message.contains("tag selector")),
        "{err}"
    );
    // A server that serves it anyway: the device refuses it.
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    let a = f.agent("gw-1");
    let err = a.poll().unwrap_err();
    assert!(
        matches!(
            err,
            edgeml_agent::Error::Metadata(edgeml_fleet::Error::InvalidSelector { .. })
        ),
        "{err}"
    );
    assert_eq!(version_of(&a), None);
}

#[test]
fn paced_rollout_grows_step_by_step_after_each_step_passes() {
    let f = Fleet::new();
    let agents: Vec<Agent> = (0..16).map(|i| f.agent(&format!("gw-{i:02}"))).collect();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for a in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    let r = paced(
        &f,
        &f.sign(pack_custom(
            &DIGITS_IMAGE,
            "1.1.0",
            None,
            vec![self_test_png("7")],
            |_| {},
        )),
        "1.1.0",
        &[20.0, 50.0, 100.0],
        1,
        2,
    );
    let none = Tags::new();
    let mut previous = 0;
    for (i, share) in [20.0, 50.0, 100.0].into_iter().enumerate() {
        assert_eq!(step(&f), i as u32);
        for a in &agents {
            a.poll().unwrap();
        }
        let expected: Vec<String> = agents
            .iter()
            .filter(|a| r.includes(a.device_id(), &none, Some(i as u32)))
            .map(|a| a.device_id().to_string())
            .collect();
        assert_eq!(
            on(&agents, "1.1.0"),
            expected,
            "exactly step {}'s {share}%",
            i + 1
        );
        assert!(expected.len() >= previous);
        previous = expected.len();
        if i < 2 {
            // The pacer moves on once the step had its time and two devices
            // run the release (their reports came with the polls).
            wait_for("the next step", 30, || step(&f) == i as u32 + 1);
        }
    }
    assert_eq!(on(&agents, "1.1.0").len(), 16);
    // Each step is a decision by the pacer, with its evidence, and audited.
    let steps: Vec<_> = f
        .store()
        .decisions(Some("stable"))
        .unwrap()
        .into_iter()
        .filter(|d| d.source == DecisionSource::Pacer)
        .collect();
    assert_eq!(
        steps.iter().map(|d| d.step).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    assert!(
        steps[0].reason.as_deref().unwrap().contains("20% -> 50%"),
        "{:?}",
        steps[0].reason
    );
    let entry = last_audit(&f, "rollout.step");
    assert_eq!(entry.actor, "server");
    assert_eq!(entry.details["to_step"], "3");
    assert_eq!(entry.details["share"], "100%");
}

#[test]
fn paced_rollout_waits_for_its_step_time_and_operator_promotes_it() {
    let f = Fleet::new();
    let agents: Vec<Agent> = (0..8).map(|i| f.agent(&format!("gw-{i:02}"))).collect();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for a in &agents {
        a.poll().unwrap();
    }
    paced(
        &f,
        &f.signed(&DIGITS_IMAGE, "1.1.0"),
        "1.1.0",
        &[25.0, 100.0],
        3600,
        1,
    );
    for a in &agents {
        a.poll().unwrap();
    }
    let first = on(&agents, "1.1.0").len();
    assert!(first < 8, "{first} of 8 at 25%");
    // The step's hour has not passed: the pacer holds.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(step(&f), 0);
    // Pause and resume keep the step; promote goes to the last one.
    f.client.rollout("stable", RolloutAction::Pause).unwrap();
    f.client.rollout("stable", RolloutAction::Resume).unwrap();
    assert_eq!(step(&f), 0);
    let changed = f.client.rollout("stable", RolloutAction::Promote).unwrap();
    assert_eq!(
        (changed.state, changed.step),
        (RolloutState::Active, Some(1))
    );
    let entry = last_audit(&f, "rollout.promote");
    assert_eq!(entry.actor, "admin");
    assert_eq!(
        (
            entry.details["from_step"].as_str(),
            entry.details["to_step"].as_str()
        ),
        ("1", "2")
    );
    for a in &agents {
        a.poll().unwrap();
    }
    assert_eq!(on(&agents, "1.1.0").len(), 8);
    // A release without a schedule cannot be promoted, and a halted one
    // must be resumed first.
    f.push(&f.signed(&DIGITS_IMAGE, "1.2.0"), "1.2.0", 50.0);
    let err = f
        .client
        .rollout("stable", RolloutAction::Promote)
        .unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 409, .. }),
        "{err}"
    );
    paced(
        &f,
        &f.signed(&DIGITS_IMAGE, "1.3.0"),
        "1.3.0",
        &[25.0, 100.0],
        3600,
        1,
    );
    f.client.rollout("stable", RolloutAction::Abort).unwrap();
    let err = f
        .client
        .rollout("stable", RolloutAction::Promote)
        .unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 409, message, .. } if message.contains("resume")),
        "{err}"
    );
}

#[test]
fn abort_criteria_halt_rollout_once_failure_share_is_reached_after_n_devices() {
    // The rollback evidence rule alone would need 100 devices: only the
    // release's abort criteria can halt this rollout.
    let f = Fleet::with_canary(|c| c.min_devices = 100);
    let agents: Vec<Agent> = (0..4).map(|i| f.agent(&format!("gw-{i:02}"))).collect();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    for a in &agents {
        a.poll().unwrap();
    }
    let mut r = f.release_for(&f.shifted_labels("1.1.0"), "1.1.0", 100.0);
    r.abort = Some(AbortCriteria {
        failure_share: 0.5,
        min_devices: 2,
    });
    publish(&f, &r);
    // One device fails it: one of one is above the share, but fewer than
    // two devices ran it, so the rollout goes on.
    assert!(agents[0].poll().is_err());
    assert_eq!(agents[0].status().state, UpdateState::RolledBack);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(f.channel_state().0, RolloutState::Active);
    // A second failure: 2 of 2 devices.
    assert!(agents[1].poll().is_err());
    wait_for("the abort criteria to halt the rollout", 30, || {
        f.channel_state().0 == RolloutState::Halted
    });
    let halt = f
        .store()
        .decisions(Some("stable"))
        .unwrap()
        .into_iter()
        .next_back()
        .unwrap();
    assert_eq!(halt.source, DecisionSource::Abort);
    let reason = halt.reason.unwrap();
    assert!(
        reason.contains("2 of 2 device(s)") && reason.contains("50%"),
        "{reason}"
    );
    assert_eq!(last_audit(&f, "rollout.halt").details["source"], "abort");
    // The devices that did not take it wait; every device serves 1.0.0.
    for a in &agents[2..] {
        assert!(matches!(a.poll(), Ok(PollOutcome::Waiting)));
    }
    assert_eq!(on(&agents, "1.0.0").len(), 4);
}
