//! The metadata attacks, one test each.

use crate::*;
use edgeml_bundle::SecretKey;
use std::time::{Duration, SystemTime};

struct Keys {
    root: SecretKey,
    release: Vec<SecretKey>,
    publisher: SecretKey,
}

fn keys(releases: usize) -> Keys {
    Keys {
        root: SecretKey::generate().unwrap(),
        release: (0..releases)
            .map(|_| SecretKey::generate().unwrap())
            .collect(),
        publisher: SecretKey::generate().unwrap(),
    }
}

fn in_days(d: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(d * 86400)
}

fn root_v1(k: &Keys, release_threshold: u32) -> Root {
    let release: Vec<_> = k.release.iter().map(|s| s.public_key()).collect();
    Root::new(
        1,
        in_days(365),
        (&[k.root.public_key()], 1),
        (&release, release_threshold),
        (&[k.publisher.public_key()], 1),
    )
}

fn trusted(k: &Keys, release_threshold: u32) -> TrustedRoot {
    let env = Envelope::sign(&root_v1(k, release_threshold), &[&k.root]).unwrap();
    TrustedRoot::bootstrap(&env.to_vec()).unwrap()
}

fn release(version: u64, model_version: &str) -> Release {
    Release {
        kind: "release".into(),
        channel: "stable".into(),
        version,
        expires: humantime::format_rfc3339_seconds(in_days(30)).to_string(),
        model: "digits".into(),
        model_version: model_version.parse().unwrap(),
        bundle: BundleRef {
            sha256: hex::encode(sha2::Sha256::digest(b"bundle")),
            size: 6,
        },
        rollout_percent: 100.0,
        allow_downgrade: false,
        artifacts: Vec::new(),
        target: None,
        schedule: None,
        abort: None,
    }
}
use sha2::Digest;

fn signed(r: &Release, keys: &[&SecretKey]) -> Vec<u8> {
    Envelope::sign(r, keys).unwrap().to_vec()
}

#[test]
fn accepts_release_signed_by_release_key() {
    let k = keys(1);
    let t = trusted(&k, 1);
    let r = t
        .verify_release(
            &signed(&release(1, "1.0.0"), &[&k.release[0]]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap();
    assert_eq!(r.model_version.to_string(), "1.0.0");
    r.check_bundle(b"bundle").unwrap();
}

#[test]
fn rejects_release_signed_with_wrong_key() {
    let k = keys(1);
    let t = trusted(&k, 1);
    // The publisher key is trusted, but not for release metadata.
    let err = t
        .verify_release(
            &signed(&release(1, "1.0.0"), &[&k.publisher]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongKey {
                role: "release",
                ..
            }
        ),
        "{err}"
    );
    let stranger = SecretKey::generate().unwrap();
    let err = t
        .verify_release(
            &signed(&release(1, "1.0.0"), &[&stranger]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongKey {
                role: "release",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_release_below_threshold() {
    let k = keys(3);
    let t = trusted(&k, 2);
    let err = t
        .verify_release(
            &signed(&release(1, "1.0.0"), &[&k.release[0]]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet {
                role: "release",
                have: 1,
                need: 2
            }
        ),
        "{err}"
    );
    // The same key twice is still one key.
    let mut env = Envelope::sign(&release(1, "1.0.0"), &[&k.release[0]]).unwrap();
    let dup = env.signatures[0].clone();
    env.signatures.push(dup);
    let err = t
        .verify_release(&env.to_vec(), "stable", SystemTime::now(), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet {
                have: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    t.verify_release(
        &signed(&release(1, "1.0.0"), &[&k.release[0], &k.release[2]]),
        "stable",
        SystemTime::now(),
        None,
    )
    .unwrap();
}

#[test]
fn rejects_expired_release() {
    let k = keys(1);
    let t = trusted(&k, 1);
    let bytes = signed(&release(1, "1.0.0"), &[&k.release[0]]);
    let err = t
        .verify_release(&bytes, "stable", in_days(31), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Expired {
                role: "release",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_replayed_older_release_metadata() {
    let k = keys(1);
    let t = trusted(&k, 1);
    let seen = release(5, "1.2.0");
    let err = t
        .verify_release(
            &signed(&release(4, "1.3.0"), &[&k.release[0]]),
            "stable",
            SystemTime::now(),
            Some(&seen),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MetadataRollback {
                seen: 5,
                offered: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = t
        .verify_release(
            &signed(&release(5, "1.3.0"), &[&k.release[0]]),
            "stable",
            SystemTime::now(),
            Some(&seen),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Equivocation { version: 5, .. }),
        "{err}"
    );
}

#[test]
fn rejects_rollback_version() {
    let installed: semver::Version = "1.2.0".parse().unwrap();
    let err = release(2, "1.1.0")
        .check_version(Some(&installed))
        .unwrap_err();
    assert!(matches!(err, Error::Rollback { .. }), "{err}");
    let mut allowed = release(2, "1.1.0");
    allowed.allow_downgrade = true;
    allowed.check_version(Some(&installed)).unwrap();
}

#[test]
fn rejects_mix_and_match_bundle() {
    let r = release(1, "1.0.0");
    let err = r.check_bundle(b"BUNDLE").unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    let err = r.check_bundle(b"bund").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                expected: 6,
                got: 4
            }
        ),
        "{err}"
    );
    let err = r.check_bundle(b"bundle!").unwrap_err();
    assert!(matches!(err, Error::TooLong { expected: 6 }), "{err}");
}

#[test]
fn rejects_release_for_another_channel() {
    let k = keys(1);
    let t = trusted(&k, 1);
    let err = t
        .verify_release(
            &signed(&release(1, "1.0.0"), &[&k.release[0]]),
            "beta",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::WrongChannel { .. }), "{err}");
}

#[test]
fn rejects_root_rotation_without_old_root_signatures() {
    let k = keys(1);
    let mut t = trusted(&k, 1);
    let new_root_key = SecretKey::generate().unwrap();
    let mut v2 = root_v1(&k, 1);
    v2.version = 2;
    v2.keys.clear();
    v2 = Root {
        version: 2,
        ..Root::new(
            2,
            in_days(365),
            (&[new_root_key.public_key()], 1),
            (&[k.release[0].public_key()], 1),
            (&[k.publisher.public_key()], 1),
        )
    };
    // Signed by the new root key only: an attacker's rotation.
    let only_new = Envelope::sign(&v2, &[&new_root_key]).unwrap().to_vec();
    let err = t.update(&only_new).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RootRotationUnsigned {
                version: 2,
                previous: 1,
                ..
            }
        ),
        "{err}"
    );
    // Signed by the old root key only: the new keys never accepted it.
    let only_old = Envelope::sign(&v2, &[&k.root]).unwrap().to_vec();
    let err = t.update(&only_old).unwrap_err();
    assert!(matches!(err, Error::WrongKey { role: "root", .. }), "{err}");
    // Both: a proper rotation. Release keys keep working.
    t.update(
        &Envelope::sign(&v2, &[&k.root, &new_root_key])
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(t.root().version, 2);
    // Skipping a version is refused.
    let mut v4 = v2.clone();
    v4.version = 4;
    let err = t
        .update(&Envelope::sign(&v4, &[&new_root_key]).unwrap().to_vec())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RootVersion {
                expected: 3,
                found: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_release_signed_by_revoked_key() {
    let k = keys(2);
    let mut t = trusted(&k, 1);
    // Root v2 revokes release key 0 (say it leaked) and keeps key 1.
    let mut v2 = Root::new(
        2,
        in_days(365),
        (&[k.root.public_key()], 1),
        (&[k.release[1].public_key()], 1),
        (&[k.publisher.public_key()], 1),
    );
    let leaked = k.release[0].public_key();
    v2.keys
        .insert(leaked.id().to_string(), hex::encode(leaked.to_bytes()));
    v2.revoked.insert(leaked.id().to_string());
    t.update(&Envelope::sign(&v2, &[&k.root]).unwrap().to_vec())
        .unwrap();
    let err = t
        .verify_release(
            &signed(&release(1, "1.0.0"), &[&k.release[0]]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RevokedKey {
                role: "release",
                ..
            }
        ),
        "{err}"
    );
    // Even alongside a valid signature.
    let err = t
        .verify_release(
            &signed(&release(1, "1.0.0"), &[&k.release[1], &k.release[0]]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::RevokedKey { .. }), "{err}");
    t.verify_release(
        &signed(&release(1, "1.0.0"), &[&k.release[1]]),
        "stable",
        SystemTime::now(),
        None,
    )
    .unwrap();
    // A later root cannot quietly un-revoke it.
    let mut v3 = v2.clone();
    v3.version = 3;
    v3.revoked.clear();
    let err = t
        .update(&Envelope::sign(&v3, &[&k.root]).unwrap().to_vec())
        .unwrap_err();
    assert!(matches!(err, Error::Unrevoked { version: 3, .. }), "{err}");
}

#[test]
fn rejects_tampered_payload() {
    let k = keys(1);
    let t = trusted(&k, 1);
    let mut env = Envelope::sign(&release(1, "1.0.0"), &[&k.release[0]]).unwrap();
    env.payload = env
        .payload
        .replace("\"rollout_percent\": 100.0", "\"rollout_percent\": 50.0");
    assert!(env.payload.contains("50.0"));
    let err = t
        .verify_release(&env.to_vec(), "stable", SystemTime::now(), None)
        .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
}

#[test]
fn rejects_expired_root() {
    let k = keys(1);
    let mut root = root_v1(&k, 1);
    root.expires = "2001-01-01T00:00:00Z".into();
    let t = TrustedRoot::bootstrap(&Envelope::sign(&root, &[&k.root]).unwrap().to_vec()).unwrap();
    let err = t.check_fresh(SystemTime::now()).unwrap_err();
    assert!(matches!(err, Error::Expired { role: "root", .. }), "{err}");
}

#[test]
fn rollout_share_is_stable_and_monotonic() {
    let mut r = release(1, "1.0.0");
    let devices: Vec<String> = (0..2000).map(|i| format!("gw-{i}")).collect();
    let no_tags = crate::Tags::new();
    r.rollout_percent = 10.0;
    let ten: Vec<_> = devices
        .iter()
        .filter(|d| r.includes(d, &no_tags, None))
        .collect();
    assert!(
        (150..=250).contains(&ten.len()),
        "{} of 2000 at 10%",
        ten.len()
    );
    r.rollout_percent = 50.0;
    assert!(
        ten.iter().all(|d| r.includes(d, &no_tags, None)),
        "raising the share keeps every device"
    );
    r.rollout_percent = 0.0;
    assert!(devices.iter().all(|d| !r.includes(d, &no_tags, None)));
    r.rollout_percent = 100.0;
    assert!(devices.iter().all(|d| r.includes(d, &no_tags, None)));
}

#[test]
fn artifact_signers_are_the_build_keys_when_root_names_them() {
    let k = keys(1);
    let publisher_only = root_v1(&k, 1).artifact_policy().unwrap();
    assert_eq!(publisher_only.keys(), &[k.publisher.public_key()]);
    let build = SecretKey::generate().unwrap();
    let root = root_v1(&k, 1).with_build(&[build.public_key()]);
    root.validate().unwrap();
    let policy = root.artifact_policy().unwrap();
    assert_eq!(
        policy.keys(),
        &[build.public_key()],
        "publisher keys no longer sign artifacts"
    );
    // A root with a build role still parses after a round trip, and one
    // without it serialises without the field (older devices parse it).
    let env = Envelope::sign(&root, &[&k.root]).unwrap();
    let t = TrustedRoot::bootstrap(&env.to_vec()).unwrap();
    assert_eq!(t.root().roles.build, root.roles.build);
    let plain = serde_json::to_string(&root_v1(&k, 1)).unwrap();
    assert!(!plain.contains("build"), "{plain}");
}

#[test]
fn release_offers_the_artifact_for_the_device_target_and_engine() {
    let artifact = |target: &str, engine: &str| ArtifactRef {
        target: target.into(),
        engine: engine.into(),
        sha256: "00".repeat(32),
        size: 1,
    };
    let mut r = release(1, "1.0.0");
    assert!(!serde_json::to_string(&r).unwrap().contains("artifacts"));
    r.artifacts = vec![
        artifact("aarch64-unknown-linux-gnu", "e1"),
        artifact("pulley32", "e1"),
    ];
    assert_eq!(
        r.artifact_for("aarch64", "e1").map(|a| a.target.as_str()),
        Some("aarch64-unknown-linux-gnu")
    );
    assert_eq!(
        r.artifact_for("pulley32", "e1").map(|a| a.target.as_str()),
        Some("pulley32")
    );
    assert!(r.artifact_for("aarch64", "e2").is_none(), "another engine");
    assert!(r.artifact_for("x86_64", "e1").is_none(), "another target");
    assert!(
        r.artifact_for("pulley64", "e1").is_none(),
        "another Pulley width"
    );
}

#[test]
fn rejects_artifact_signers_weaker_than_the_publisher_threshold() {
    let k = keys(1);
    let second = SecretKey::generate().unwrap();
    let two_publishers = Root::new(
        1,
        in_days(365),
        (&[k.root.public_key()], 1),
        (&[k.release[0].public_key()], 1),
        (&[k.publisher.public_key(), second.public_key()], 2),
    );
    let err = two_publishers.artifact_policy().unwrap_err();
    assert!(
        matches!(err, Error::InvalidRoot(ref m) if m.contains("name build keys")),
        "{err}"
    );
    let build = SecretKey::generate().unwrap();
    let with_build = two_publishers.clone().with_build(&[build.public_key()]);
    assert_eq!(
        with_build.artifact_policy().unwrap().keys(),
        &[build.public_key()]
    );
    // A build role with a threshold above 1 is refused: artifacts carry one signature.
    let mut strict = with_build;
    strict.roles.build.as_mut().unwrap().threshold = 2;
    assert!(
        matches!(strict.validate(), Err(Error::InvalidRoot(ref m)) if m.contains("build threshold"))
    );
}

#[test]
fn revoked_build_key_cannot_sign_artifacts() {
    let k = keys(1);
    let (old, new) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    let mut root = root_v1(&k, 1).with_build(&[old.public_key(), new.public_key()]);
    let old_id = old.public_key().id().to_string();
    root.revoked.insert(old_id.clone());
    // validate refuses a revoked key in a role; the policy leaves it out regardless.
    assert!(root.validate().is_err());
    assert_eq!(root.artifact_policy().unwrap().keys(), &[new.public_key()]);
}

fn tags(pairs: &[(&str, &str)]) -> crate::Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn release_target_limits_rollout_to_matching_tags() {
    let mut r = release(1, "1.0.0");
    r.target = Some("site=berlin, hw in (rpi4, jetson)".into());
    let berlin = tags(&[("site", "berlin"), ("hw", "rpi4")]);
    let paris = tags(&[("site", "paris"), ("hw", "rpi4")]);
    assert!(r.includes("gw-1", &berlin, None));
    assert!(!r.includes("gw-1", &paris, None));
    assert!(!r.includes("gw-1", &crate::Tags::new(), None));
    // A device refuses signed metadata whose target does not parse.
    let k = keys(1);
    let t = trusted(&k, 1);
    r.target = Some("site in (berlin".into());
    let err = t
        .verify_release(
            &signed(&r, &[&k.release[0]]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSelector { .. }), "{err}");
}

#[test]
fn schedule_steps_bound_the_share_the_server_can_name() {
    let mut r = release(1, "1.0.0");
    r.rollout_percent = 50.0;
    r.schedule = Some(crate::Schedule {
        steps: vec![1.0, 10.0, 50.0],
        min_step_secs: 60,
        min_step_devices: 2,
    });
    assert_eq!(r.share(None), 1.0, "no step named: the first");
    assert_eq!(r.share(Some(1)), 10.0);
    assert_eq!(r.share(Some(2)), 50.0);
    assert_eq!(r.share(Some(99)), 50.0, "a step past the last is the last");
    assert_eq!(r.last_step(), 2);
    let devices: Vec<String> = (0..2000).map(|i| format!("gw-{i}")).collect();
    let none = crate::Tags::new();
    let at = |step| {
        devices
            .iter()
            .filter(|d| r.includes(d, &none, step))
            .count()
    };
    let (one, ten, fifty, beyond) = (at(Some(0)), at(Some(1)), at(Some(2)), at(Some(7)));
    assert!(
        one < ten && ten < fifty && fifty == beyond,
        "{one} {ten} {fifty} {beyond}"
    );
    assert!((850..=1150).contains(&fifty), "{fifty}");
}

#[test]
fn rejects_release_with_inconsistent_schedule() {
    let k = keys(1);
    let t = trusted(&k, 1);
    let mut r = release(1, "1.0.0");
    for (steps, percent) in [
        (vec![10.0, 5.0, 100.0], 100.0),
        (vec![1.0, 10.0], 100.0),
        (vec![0.0, 100.0], 100.0),
        (vec![], 100.0),
    ] {
        r.rollout_percent = percent;
        r.schedule = Some(crate::Schedule {
            steps: steps.clone(),
            min_step_secs: 0,
            min_step_devices: 1,
        });
        let err = t
            .verify_release(
                &signed(&r, &[&k.release[0]]),
                "stable",
                SystemTime::now(),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, Error::InvalidSchedule(_)), "{steps:?}: {err}");
    }
    r.schedule = None;
    r.abort = Some(crate::AbortCriteria {
        failure_share: 1.5,
        min_devices: 3,
    });
    let err = t
        .verify_release(
            &signed(&r, &[&k.release[0]]),
            "stable",
            SystemTime::now(),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule(_)), "{err}");
}

#[test]
fn exponential_schedule_doubles_up_to_the_end() {
    assert_eq!(
        crate::Schedule::exponential(1.0, 2.0, 100.0).unwrap(),
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]
    );
    assert_eq!(
        crate::Schedule::exponential(10.0, 10.0, 100.0).unwrap(),
        vec![10.0, 100.0]
    );
    assert!(matches!(
        crate::Schedule::exponential(1.0, 1.0, 100.0),
        Err(Error::InvalidSchedule(_))
    ));
}
