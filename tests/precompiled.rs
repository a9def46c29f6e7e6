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

/// Precompiled code stays out of the compiled-code cache: a later plain
/// `load` compiles, so code whose signer is revoked later does not live on
/// as a cache hit.
#[test]
fn precompiled_code_is_not_put_in_the_compile_cache() {
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
    let restarted = Runtime::new(&config).unwrap();
    let again = restarted.load(&s.bundle).unwrap();
    assert_eq!(again.load_info().cache, CacheOutcome::Miss);
}

/// Claims that match, over code wasmtime cannot load (damaged, or for
/// another operating system): refused before anything runs, and
/// `check_precompiled` (what the agent runs before staging) says so too.
#[test]
fn rejects_artifact_wasmtime_refuses() {
    let s = setup();
    let claims = edgeml_runtime::ArtifactClaims {
        format: 0,
        bundle_sha256: s.bundle.digest_hex(),
        target: host_triple(),
        engine: s.runtime.engine_fingerprint(),
        code_sha256: String::new(),
    };
    let artifact = edgeml_runtime::bundle::artifact::seal(
        claims,
        b"\0asm not compiled code",
        Some(&s.publisher.key),
    )
    .unwrap();
    let err = s
        .runtime
        .check_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap_err();
    assert!(
        matches!(err, Error::Artifact(ArtifactError::Incompatible(_))),
        "{err}"
    );
    let err = s
        .runtime
        .load_precompiled(&s.bundle, &artifact, &s.publisher.policy())
        .unwrap_err();
    assert!(
        matches!(err, Error::Artifact(ArtifactError::Incompatible(_))),
        "{err}"
    );
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

// ---- through the fleet ---------------------------------------------------

mod fleet {
    use super::host_triple;
    use crate::common::*;
    use crate::fleet::{device_report, predicts, runtime, version_of, Fleet};
    use edgeml_agent::PollOutcome;
    use edgeml_fleet::Envelope;
    use sha2::Digest as _;

    /// The artifact the agent `id` keeps with its installed bundle.
    fn stored_artifact(f: &Fleet, id: &str, bundle_sha256: &str) -> std::path::PathBuf {
        f.dir
            .path()
            .join("devices")
            .join(id)
            .join("bundles")
            .join(format!("{bundle_sha256}.edgemlpa"))
    }

    #[test]
    fn agent_installs_a_release_through_its_precompiled_artifact() {
        let f = Fleet::new();
        let v1 = f.signed(&DIGITS_IMAGE, "1.0.0");
        let mut r = f.release_for(&v1, "1.0.0", 100.0);
        // An artifact for another architecture too: the agent takes its own.
        let other = if cfg!(target_arch = "x86_64") {
            "aarch64-unknown-linux-gnu"
        } else {
            "x86_64-unknown-linux-gnu"
        };
        r.artifacts = vec![f.artifact(&v1, other), f.artifact(&v1, &host_triple())];
        let env = Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
        f.publish_release(env.to_vec()).unwrap();

        // Its own compiled-code cache: empty afterwards means nothing was
        // compiled (precompiled code is never cached).
        let cache = tempfile::tempdir().unwrap();
        let mut config = edgeml_runtime::Config::new();
        config.cache_dir(cache.path());
        let rt = edgeml_runtime::Runtime::new(&config).unwrap();
        let a = edgeml_agent::Agent::open(f.agent_config("gw-1"), rt.clone()).unwrap();
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
        assert_eq!(predicts(&a), "7");
        assert_eq!(
            std::fs::read_dir(cache.path()).unwrap().count(),
            0,
            "the agent loaded the artifact; it compiled nothing"
        );
        let kept = std::fs::read(stored_artifact(&f, "gw-1", &r.bundle.sha256)).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&kept)),
            r.artifacts[1].sha256,
            "the agent keeps its own target's artifact"
        );
        // It told the server what code it runs.
        let report = device_report(&f, "gw-1").unwrap();
        assert_eq!(report.host_target.as_deref(), Some(std::env::consts::ARCH));
        assert_eq!(report.engine, Some(runtime().engine_fingerprint()));
        assert!(report.can_compile);

        // A restart loads the installed bundle with its artifact.
        drop(a);
        let a = edgeml_agent::Agent::open(f.agent_config("gw-1"), rt).unwrap();
        assert_eq!(version_of(&a).as_deref(), Some("1.0.0"));
        assert_eq!(predicts(&a), "7");
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
    }

    #[test]
    fn agent_with_a_compiler_compiles_when_the_artifact_is_for_another_bundle() {
        let f = Fleet::new();
        let v1 = f.signed(&DIGITS_IMAGE, "1.0.0");
        f.push(&v1, "1.0.0", 100.0);
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
        let v11 = f.signed(&DIGITS_IMAGE, "1.1.0");
        let mut r = f.release_for(&v11, "1.1.0", 100.0);
        r.artifacts = vec![f.artifact(&v1, &host_triple())];
        // The server refuses to publish it ...
        let env = Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
        let refused = f.publish_release(env.to_vec());
        assert!(
            matches!(&refused, Err(edgeml_client::Error::Refused { status: 422, message, .. })
                if message.contains("was compiled from bundle")),
            "{refused:?}"
        );
        // ... a compromised one serves it: the device refuses the artifact
        // and, having a compiler, compiles the verified bundle instead.
        f.inject(&r, &[&f.release[0], &f.release[1]]);
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
        assert_eq!(version_of(&a).as_deref(), Some("1.1.0"));
        assert_eq!(predicts(&a), "7");
        assert!(!stored_artifact(&f, "gw-1", &r.bundle.sha256).exists());
    }

    #[test]
    fn server_rejects_artifact_signed_by_untrusted_key() {
        let f = Fleet::new();
        let v1 = f.signed(&DIGITS_IMAGE, "1.0.0");
        f.upload(&v1);
        let stranger = edgeml_bundle::SecretKey::generate().unwrap();
        let bytes = f.precompiled(&v1, &host_triple(), &stranger);
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let refused = f.client.upload_artifact(&sha256, bytes);
        assert!(
            matches!(&refused, Err(edgeml_client::Error::Refused { status: 422, message, .. })
                if message.contains("not from a trusted key")),
            "{refused:?}"
        );
    }

    /// The operator's commands: a root naming a build key, `edgeml
    /// precompile` signing with it, `edgeml push --artifact`; an agent
    /// installs through the artifact.
    #[test]
    fn cli_pushes_an_artifact_signed_by_a_build_key() {
        let f = Fleet::new();
        let keys = f.dir.path().join("keys");
        let build = edgeml_bundle::SecretKey::generate().unwrap();
        build.write_pair(&keys, "build").unwrap();
        f.publisher.write_pair(&keys, "publisher").unwrap();
        f.release[0].write_pair(&keys, "release-0").unwrap();
        f.release[1].write_pair(&keys, "release-1").unwrap();
        std::fs::write(keys.join("admin-token"), crate::fleet::ADMIN).unwrap();
        // Root v2 names the build key (what `edgeml root rotate --build-key` writes).
        let rel: Vec<_> = f.release.iter().map(|k| k.public_key()).collect();
        let root = edgeml_fleet::Root::new(
            2,
            std::time::SystemTime::now() + std::time::Duration::from_secs(86400),
            (&[f.root_key.public_key()], 1),
            (&rel, 2),
            (&[f.publisher.public_key()], 1),
        )
        .with_build(&[build.public_key()]);
        let env = Envelope::sign(&root, &[&f.root_key]).unwrap();
        f.publish_root(2, env.to_vec()).unwrap();

        let bundle = f.dir.path().join("digits.wasm");
        std::fs::write(&bundle, f.signed(&DIGITS_IMAGE, "1.0.0")).unwrap();
        let artifact = f.dir.path().join("digits.edgemlpa");
        // `edgeml precompile`, signing with `key`.
        let precompile = |key: &str| {
            let out = edgeml()
                .arg("precompile")
                .arg(&bundle)
                .arg("--trust")
                .arg(keys.join("publisher.pub"))
                .arg("--key")
                .arg(keys.join(key))
                .args(["--target", &host_triple()])
                .arg("--out")
                .arg(&artifact)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        precompile("build.key");
        let out = edgeml()
            .arg("push")
            .arg(&bundle)
            .arg("--artifact")
            .arg(&artifact)
            .args(["--server", &f.url(), "--channel", "stable"])
            .arg("--admin-token-file")
            .arg(keys.join("admin-token"))
            .arg("--key")
            .arg(keys.join("release-0.key"))
            .arg("--key")
            .arg(keys.join("release-1.key"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("precompiled for {}", host_triple())),
            "{stdout}"
        );
        let release: edgeml_fleet::Release = f.store().release("stable").unwrap().unwrap().release;
        assert_eq!(release.artifacts.len(), 1);
        assert_eq!(release.artifacts[0].target, host_triple());

        // The agent ships with root v1 and follows the chain to v2.
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
        assert_eq!(predicts(&a), "7");
        assert!(stored_artifact(&f, "gw-1", &release.bundle.sha256).exists());

        // An artifact signed by the publisher key is no longer accepted:
        // root v2 names a build key.
        precompile("publisher.key");
        let bytes = std::fs::read(&artifact).unwrap();
        let refused = f
            .client
            .upload_artifact(&hex::encode(sha2::Sha256::digest(&bytes)), bytes);
        assert!(
            matches!(
                &refused,
                Err(edgeml_client::Error::Refused { status: 422, .. })
            ),
            "{refused:?}"
        );
    }
}
