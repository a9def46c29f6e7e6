//! Precompiled artifacts: a bundle compiled ahead of time for a target,
//! bound to the bundle, the engine configuration and the target, and
//! signed. Each refusal is named after what it refuses.

use crate::common::*;
use edgeml_runtime::{ArtifactError, CacheOutcome, Config, Error, Input, Runtime, Tensor};

fn host_triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// A signed digits bundle and a runtime that verified it.
struct Setup {
    publisher: Publisher,
    runtime: Runtime,
    bundle: edgeml_runtime::VerifiedBundle,
}

fn setup() -> Setup {
    let publisher = Publisher::new();
    let runtime = runtime();
    let bundle = runtime
        .verify(publisher.sign(&pack(&DIGITS_GENERIC)), &publisher.policy())
        .unwrap();
    Setup {
        publisher,
        runtime,
        bundle,
    }
}

fn digit() -> Input {
    Input::Tensors(vec![Tensor::from_f32("X", vec![1, 64], &[0.5; 64])])
}

#[test]
fn precompiled_artifact_loads_and_predicts_like_a_compiled_bundle() {
    let s = setup();
    let artifact = s
        .runtime
        .precompile(&s.bundle, &host_triple(), &s.publisher.key)
        .unwrap();
    let claims = edgeml_runtime::bundle::artifact::read_claims(&artifact).unwrap();
    assert_eq!(claims.bundle_sha256, s.bundle.digest_hex());
    assert_eq!(claims.target, host_triple());
    let model = s
        .runtime
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap();
    assert_eq!(model.load_info().cache, CacheOutcome::Precompiled);
    let compiled = s.runtime.load(&s.bundle).unwrap();
    assert_eq!(
        model.predict(digit()).unwrap().outputs,
        compiled.predict(digit()).unwrap().outputs
    );
}

#[test]
fn precompiled_code_is_cached_for_the_next_start() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new();
    config.cache_dir(dir.path());
    let device = Runtime::new(&config).unwrap();
    let artifact = s
        .runtime
        .precompile(&s.bundle, &host_triple(), &s.publisher.key)
        .unwrap();
    let first = device
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap();
    assert_eq!(first.load_info().cache, CacheOutcome::Precompiled);
    // A restart: the bundle alone loads from the cache, nothing compiled.
    let restarted = Runtime::new(&config).unwrap();
    let again = restarted.load(&s.bundle).unwrap();
    assert_eq!(again.load_info().cache, CacheOutcome::Hit);
}

#[test]
fn rejects_artifact_for_other_target() {
    let s = setup();
    let other = if std::env::consts::ARCH == "aarch64" {
        "x86_64-unknown-linux-gnu"
    } else {
        "aarch64-unknown-linux-gnu"
    };
    let artifact = s
        .runtime
        .precompile(&s.bundle, other, &s.publisher.key)
        .unwrap();
    let err = s
        .runtime
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Artifact(ArtifactError::OtherTarget { artifact, .. }) if artifact == other),
        "{err}"
    );
}

#[test]
fn rejects_artifact_for_other_engine() {
    let s = setup();
    // Made by an engine with another memory reservation (different code).
    let mut config = Config::new();
    config.memory_reservation(Some(64 << 20));
    let other = Runtime::new(&config).unwrap();
    let artifact = other
        .precompile(&s.bundle, &host_triple(), &s.publisher.key)
        .unwrap();
    let err = s
        .runtime
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Artifact(ArtifactError::OtherEngine { artifact, host })
            if artifact.contains("memory-reservation 67108864") && host.contains("memory-reservation default")),
        "{err}"
    );
}

#[test]
fn rejects_artifact_for_other_bundle() {
    let s = setup();
    // The same model signed by a second publisher is another bundle.
    let second = Publisher::new();
    let policy = edgeml_runtime::TrustPolicy::any_of(vec![
        s.publisher.key.public_key(),
        second.key.public_key(),
    ])
    .unwrap();
    let other = s
        .runtime
        .verify(second.sign(&pack(&DIGITS_IMAGE)), &policy)
        .unwrap();
    let artifact = s
        .runtime
        .precompile(&other, &host_triple(), &s.publisher.key)
        .unwrap();
    let err = s
        .runtime
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Artifact(ArtifactError::OtherBundle { artifact, bundle })
            if *artifact == other.digest_hex() && *bundle == s.bundle.digest_hex()),
        "{err}"
    );
}

/// The artifact with its signature removed (the documented layout:
/// `EDGEMLPA` ‖ u32 LE header length ‖ header JSON ‖ code).
fn without_signature(artifact: &[u8]) -> Vec<u8> {
    let len = u32::from_le_bytes(artifact[8..12].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&artifact[12..12 + len]).unwrap();
    header["signature"] = "".into();
    header["key_id"] = "".into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = b"EDGEMLPA".to_vec();
    out.extend((header.len() as u32).to_le_bytes());
    out.extend(&header);
    out.extend(&artifact[12 + len..]);
    out
}

#[test]
fn rejects_unsigned_artifact() {
    let s = setup();
    let artifact = s
        .runtime
        .precompile(&s.bundle, &host_triple(), &s.publisher.key)
        .unwrap();
    let err = s
        .runtime
        .load_precompiled(
            &s.bundle,
            &without_signature(&artifact),
            &s.publisher.policy(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Artifact(ArtifactError::Unsigned)),
        "{err}"
    );
}

#[test]
fn rejects_artifact_signed_by_untrusted_key() {
    let s = setup();
    let stranger = Publisher::new();
    let artifact = s
        .runtime
        .precompile(&s.bundle, &host_triple(), &stranger.key)
        .unwrap();
    let err = s
        .runtime
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Artifact(ArtifactError::BadSignature { key_id })
            if *key_id == stranger.key.public_key().id().to_string()),
        "{err}"
    );
}

#[test]
fn rejects_artifact_with_changed_code() {
    let s = setup();
    let mut artifact = s
        .runtime
        .precompile(&s.bundle, &host_triple(), &s.publisher.key)
        .unwrap();
    let last = artifact.len() - 1;
    artifact[last] ^= 0x01;
    let err = s
        .runtime
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap_err();
    assert!(
        matches!(err, Error::Artifact(ArtifactError::CodeDigest)),
        "{err}"
    );
}
