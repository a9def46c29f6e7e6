//! Bundles in a real OCI registry (Debian's `docker-registry`, the CNCF
//! distribution registry, on loopback): `edgeml push --registry` stores a
//! signed bundle as a Wasm OCI artifact, the server keeps its bundles there
//! (`--registry`), devices download from the registry itself (the server
//! redirects them), digest-checked and resumable with `Range`.

use crate::common::*;
use crate::fleet::{free_port, predicts, version_of, Fleet, ADMIN};
use edgeml_agent::PollOutcome;
use edgeml_client::oci::{self, Registry};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` on a free loopback port, storing in a temporary
/// directory; stopped when dropped.
pub(crate) struct TestRegistry {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("docker-registry"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_none() => {
            eprintln!(
                "skipping: no docker-registry here (Debian: apt-get install docker-registry)"
            );
            None
        }
        None => panic!("docker-registry is required in CI (.ci/run installs it)"),
    }
}

impl TestRegistry {
    /// `None` (printed) outside CI when the registry is not installed.
    pub(crate) fn start() -> Option<TestRegistry> {
        let bin = program()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let r = TestRegistry {
            child,
            _dir: dir,
            origin: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::blocking::get(format!("{}/v2/", r.origin)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(r)
    }

    pub(crate) fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.origin)
    }
}

/// A fleet server keeping its bundles in `registry`'s `edgeml/bundles`.
fn fleet_on(registry: &TestRegistry) -> (String, Fleet) {
    let repo = registry.repo("edgeml/bundles");
    let f = Fleet::with_settings(|s| {
        s.fleet.bundle_dir = None;
        s.fleet.registry = Some(repo.clone());
    });
    (repo, f)
}

#[test]
fn push_stores_bundle_as_wasm_oci_artifact_and_agent_installs_from_registry() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let (repo, f) = fleet_on(&registry);
    // The publisher's side, as `edgeml push --registry` does it.
    let dir = f.dir.path();
    std::fs::write(dir.join("digits.wasm"), f.signed(&DIGITS_IMAGE, "1.0.0")).unwrap();
    f.release[0].write_pair(dir, "release-0").unwrap();
    f.release[1].write_pair(dir, "release-1").unwrap();
    let out = edgeml()
        .arg("push")
        .arg(dir.join("digits.wasm"))
        .args([
            "--server",
            &f.url(),
            "--channel",
            "stable",
            "--registry",
            &repo,
        ])
        .arg("--key")
        .arg(dir.join("release-0.key"))
        .arg("--key")
        .arg(dir.join("release-1.key"))
        .env("EDGEML_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = read(dir.join("digits.wasm"));
    let sha = hex::encode(Sha256::digest(&bundle));

    // What the registry holds: the Wasm OCI convention.
    let r = Registry::new(&repo).unwrap();
    let manifest = r.get_manifest("1.0.0").unwrap();
    assert_eq!(manifest.config.media_type, oci::WASM_CONFIG);
    assert_eq!(manifest.artifact_type.as_deref(), Some(oci::WASM_CONFIG));
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].media_type, oci::WASM_LAYER);
    assert_eq!(manifest.layers[0].digest, format!("sha256:{sha}"));
    assert_eq!(manifest.layers[0].size, bundle.len() as u64);
    assert_eq!(
        manifest.annotations["org.opencontainers.image.version"],
        "1.0.0"
    );
    let config_sha = manifest.config.digest.trim_start_matches("sha256:");
    let config: oci::WasmConfig =
        serde_json::from_slice(&r.get_blob(config_sha, 1 << 20).unwrap().unwrap()).unwrap();
    assert_eq!(
        (config.architecture.as_str(), config.os.as_str()),
        ("wasm", "wasip2")
    );
    assert_eq!(config.layer_digests, [format!("sha256:{sha}")]);

    // A device installs it; the bytes come from the registry.
    let a = f.agent("gw-oci");
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    assert_eq!(version_of(&a).as_deref(), Some("1.0.0"));
    assert_eq!(predicts(&a), "7");
    assert!(
        !dir.join("bundles").exists(),
        "the server stored no bundle itself"
    );
    assert_eq!(f.store().offered("stable", &sha).unwrap(), ["gw-oci"]);

    // The server redirects a download to the registry, which resumes with Range.
    let resp = f
        .http
        .get(format!("{}/v1/fleet/bundles/{sha}", f.url()))
        .bearer_auth(ADMIN)
        .header("range", "bytes=1000-")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert!(
        resp.url().as_str().starts_with(&registry.origin),
        "{}",
        resp.url()
    );
    assert_eq!(resp.bytes().unwrap().as_ref(), &bundle[1000..]);

    // A bundle pushed through the server lands in the registry too, tagged
    // by its digest.
    let second = f.signed(&DIGITS_IMAGE, "1.1.0");
    f.push(&second, "1.1.0", 100.0);
    let sha2 = hex::encode(Sha256::digest(&second));
    let m = r.get_manifest(&format!("sha256-{sha2}")).unwrap();
    assert_eq!(m.layers[0].digest, format!("sha256:{sha2}"));
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    assert_eq!(version_of(&a).as_deref(), Some("1.1.0"));
}

#[test]
fn rejects_registry_bundle_not_signed_by_publisher() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let (repo, f) = fleet_on(&registry);
    // Pushed straight to the registry by someone without the publisher key:
    // the server has never seen it, and refuses to publish a release of it.
    let stranger = edgeml_bundle::SecretKey::generate().unwrap();
    let forged = edgeml_bundle::sign(&pack(&DIGITS_IMAGE), &stranger).unwrap();
    Registry::new(&repo)
        .unwrap()
        .push_artifact(&forged, oci::WASM_LAYER, "forged", Default::default())
        .unwrap();
    let release = edgeml_fleet::Release {
        bundle: edgeml_fleet::BundleRef {
            sha256: hex::encode(Sha256::digest(&forged)),
            size: forged.len() as u64,
        },
        ..f.release_for(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0)
    };
    let env = edgeml_fleet::Envelope::sign(&release, &[&f.release[0], &f.release[1]]).unwrap();
    let err = f.publish_release(env.to_vec()).unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 422, message, .. }
            if message.contains("does not verify against the root's publisher keys")),
        "{err}"
    );
}
