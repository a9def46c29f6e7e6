//! The device agent on 64- and 32-bit ARM, under qemu-user, following a
//! server on this (x86_64) machine. The ARM programs are the release
//! builds of `edgeml-agent` that `scripts/cross-build.sh` makes; the x86
//! reference is the same signed bundle run here, in process.
//!
//! qemu emulates the CPU: these tests prove the agent is correct on the
//! target, and say nothing about its speed there.
//!
//! Without the cross builds or qemu (outside CI) the tests print why and
//! pass; in CI (`CI` set) a missing piece fails them.

use crate::common::*;
use crate::fleet::{free_port, png, Fleet, ENROL};
use edgeml_client::wire::fleet::{StatusReport, UpdateState};
use edgeml_fleet::{BundleRef, Envelope, Release};
use edgeml_runtime::Input;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Arch {
    triple: &'static str,
    qemu: &'static str,
    sysroot: &'static str,
}

const AARCH64: Arch = Arch {
    triple: "aarch64-unknown-linux-gnu",
    qemu: "qemu-aarch64-static",
    sysroot: "/usr/aarch64-linux-gnu",
};

const ARMV7: Arch = Arch {
    triple: "armv7-unknown-linux-gnueabihf",
    qemu: "qemu-arm-static",
    sysroot: "/usr/arm-linux-gnueabihf",
};

/// The cross-built agent, or `None` (with the reason printed) when it or
/// qemu is missing outside CI.
fn cross_agent(arch: &Arch) -> Option<PathBuf> {
    // <target>/debug/edgeml -> <target>/<triple>/release/edgeml-agent
    let target = Path::new(env!("CARGO_BIN_EXE_edgeml"))
        .parent()
        .and_then(Path::parent)
        .unwrap();
    let bin = target.join(arch.triple).join("release/edgeml-agent");
    let qemu = Command::new(arch.qemu).arg("--version").output().is_ok();
    let missing = match (bin.is_file(), qemu) {
        (true, true) => return Some(bin),
        (false, _) => format!(
            "{} is missing: run scripts/cross-build.sh {}",
            bin.display(),
            arch.triple
        ),
        (true, false) => format!("{} is missing: apt-get install qemu-user-static", arch.qemu),
    };
    if std::env::var_os("CI").is_some() {
        panic!("{missing}");
    }
    eprintln!("skipped: {missing}");
    None
}

/// One ARM agent process under qemu, following `channel` on the fleet.
struct Device {
    child: Child,
    port: u16,
    log: PathBuf,
    id: String,
}

impl Device {
    fn start(f: &Fleet, arch: &Arch, bin: &Path, id: &str, channel: &str) -> Device {
        let port = free_port();
        let dir = f.dir.path();
        std::fs::write(dir.join("enrol.token"), ENROL).unwrap();
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "device_id = \"{id}\"\ndir = \"{id}\"\nserver = \"{}\"\nchannel = \"{channel}\"\n\
                 root = \"root.json\"\nenrolment_token_file = \"enrol.token\"\n\
                 poll_interval = \"500ms\"\n[download]\ntimeout = \"5m\"\n\
                 [health]\nwatch = \"0s\"\n[serve]\nlisten = \"127.0.0.1:{port}\"\n\
                 [runtime]\ncall_timeout = \"120s\"\n",
                f.url()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(arch.qemu)
            .arg("-L")
            .arg(arch.sysroot)
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Device {
            child,
            port,
            log,
            id: id.into(),
        }
    }

    fn report(&self, f: &Fleet) -> Option<StatusReport> {
        crate::fleet::device_report(f, &self.id)
    }

    /// Wait (emulated devices are slow: compiling a component under qemu
    /// takes tens of seconds) until the device reports `state` for `version`.
    fn wait_for(&mut self, f: &Fleet, what: &str, done: impl Fn(&StatusReport) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if self.report(f).is_some_and(|r| done(&r)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{}: the agent exited ({status}) before {what}\n{}",
                    self.id,
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: timed out waiting for {what}: {:?}\n{}",
                    self.id,
                    self.report(f),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Wait until the local API says `model` is ready (after a restart).
    fn wait_ready(&mut self, model: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let url = format!("http://127.0.0.1:{}/v2/models/{model}/ready", self.port);
        loop {
            let ok = reqwest::blocking::get(&url).is_ok_and(|r| r.status() == 200);
            if ok {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{}: the agent exited ({status})\n{}", self.id, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{}: {model} not ready\n{}",
                self.id,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// One KServe v2 request to the device's local API.
    fn infer(&self, model: &str, request: &Value) -> Value {
        let resp = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap()
            .post(format!(
                "http://127.0.0.1:{}/v2/models/{model}/infer",
                self.port
            ))
            .json(request)
            .send()
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(version: &'static str) -> impl Fn(&StatusReport) -> bool {
    move |r| {
        r.state == UpdateState::Installed
            && r.installed.as_ref().is_some_and(|i| i.version == version)
    }
}

/// Publish `bundle` as `model` `version` to `channel`, signed by the release keys.
fn publish(f: &Fleet, channel: &str, model: &str, bundle: &[u8], version: &str) {
    let mut r: Release = f.release_for(bundle, version, 100.0);
    r.channel = channel.into();
    r.model = model.into();
    r.version = f.client.channel(channel).unwrap().map_or(1, |v| {
        v.release.payload_unverified::<Release>().unwrap().version + 1
    });
    let env = Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
    f.client.publish_release(channel, env.to_vec()).unwrap();
}

fn media_request(input: &str, content_type: &str, bytes: &[u8]) -> Value {
    use base64::Engine as _;
    json!({"inputs": [{"name": input, "shape": [1], "datatype": "BYTES",
        "parameters": {"content_type": content_type},
        "data": [base64::engine::general_purpose::STANDARD.encode(bytes)]}]})
}

fn output(resp: &Value, name: &str) -> Vec<f32> {
    resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output `{name}` in {resp}"))["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// The same signed bundle, run on this machine: the x86 reference.
fn x86_reference(bundle: &[u8], f: &Fleet, input: Input, output: &str) -> Vec<f32> {
    let rt = crate::fleet::runtime();
    let policy = edgeml_runtime::TrustPolicy::any_of(vec![f.publisher.public_key()]).unwrap();
    let verified = rt.verify(bundle.to_vec(), &policy).unwrap();
    let model = rt.load(&verified).unwrap();
    model
        .predict(input)
        .unwrap()
        .output(output)
        .unwrap()
        .to_f32()
        .unwrap()
}

/// Digits over the local API: label 7 and the x86 probabilities.
fn check_digits(f: &Fleet, dev: &Device, bundle: &[u8], version: &str) {
    let resp = dev.infer("digits", &media_request("image", "image/png", &png(0)));
    assert_eq!(resp["model_version"], version, "{resp}");
    assert_eq!(resp["parameters"]["labels"][0]["label"], "7", "{resp}");
    let expected = x86_reference(
        bundle,
        f,
        Input::Media {
            media_type: "image/png".into(),
            bytes: png(0),
        },
        "probabilities",
    );
    assert_close(
        &output(&resp, "probabilities"),
        &expected,
        "digits on ARM vs x86",
    );
}

#[test]
fn aarch64_agent_follows_x86_server_infers_and_rolls_back_a_bad_release() {
    let Some(bin) = cross_agent(&AARCH64) else {
        return;
    };
    let f = Fleet::new();
    let v1 = f.signed(&DIGITS_IMAGE, "1.0.0");
    f.push(&v1, "1.0.0", 100.0);
    let vad = f.signed(&VAD, "1.0.0");
    publish(&f, "vad", "silero-vad", &vad, "1.0.0");
    let mut digits = Device::start(&f, &AARCH64, &bin, "arm64-digits", "stable");
    let mut voice = Device::start(&f, &AARCH64, &bin, "arm64-vad", "vad");
    digits.wait_for(&f, "digits 1.0.0 installed", installed("1.0.0"));
    check_digits(&f, &digits, &v1, "1.0.0");

    // VAD over the local API: the WAV's per-frame probabilities, against
    // onnxruntime's and against this machine's.
    voice.wait_for(&f, "silero-vad 1.0.0 installed", installed("1.0.0"));
    let wav = read(model_path("vad/speech.wav"));
    let resp = voice.infer("silero-vad", &media_request("audio", "audio/wav", &wav));
    let probs = output(&resp, "probs");
    let (_, onnxruntime) = npy_f32("vad/ref_probs.npy");
    for (i, (a, b)) in probs.iter().zip(&onnxruntime).enumerate() {
        assert!(
            (a - b).abs() <= 1e-3,
            "frame {i}: {a} on aarch64 vs onnxruntime {b}"
        );
    }
    let x86 = x86_reference(
        &vad,
        &f,
        Input::Media {
            media_type: "audio/wav".into(),
            bytes: wav,
        },
        "probs",
    );
    assert_close(&probs, &x86, "VAD on aarch64 vs x86");

    // A bad release (labels shifted by one; its self-test fails): the
    // device rolls back to 1.0.0 and keeps serving it.
    let broken = f.shifted_labels("1.1.0");
    f.push(&broken, "1.1.0", 100.0);
    digits.wait_for(&f, "1.1.0 rolled back", |r| {
        r.state == UpdateState::RolledBack && r.target.as_deref() == Some("1.1.0")
    });
    let r = digits.report(&f).unwrap();
    assert_eq!(r.error_kind.as_deref(), Some("self_test"), "{r:?}");
    assert_eq!(r.installed.unwrap().version, "1.0.0");
    check_digits(&f, &digits, &v1, "1.0.0");
    let logs = digits.logs();
    assert!(logs.contains("self-test `000.png` failed"), "{logs}");
}

/// Publish `bundle` as digits `version` to `stable` with an artifact
/// precompiled for `target`, as `edgeml precompile` and `edgeml push
/// --artifact` do.
fn push_precompiled(f: &Fleet, bundle: &[u8], version: &str, target: &str) -> Release {
    let mut r = f.release_for(bundle, version, 100.0);
    r.artifacts = vec![f.artifact(bundle, target)];
    let env = Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
    f.publish_release(env.to_vec()).unwrap();
    r
}

/// The 32-bit ARM agent is built without a compiler (`--no-default-features
/// --features pulley`): it runs only Pulley code precompiled on this machine.
#[test]
fn armv7_agent_without_compiler_serves_precompiled_artifacts_and_refuses_others() {
    let Some(bin) = cross_agent(&ARMV7) else {
        return;
    };
    let f = Fleet::new();
    let v1 = f.signed(&DIGITS_IMAGE, "1.0.0");
    push_precompiled(&f, &v1, "1.0.0", "pulley32");
    let mut dev = Device::start(&f, &ARMV7, &bin, "armv7-digits", "stable");
    dev.wait_for(&f, "digits 1.0.0 installed", installed("1.0.0"));
    check_digits(&f, &dev, &v1, "1.0.0");
    let r = dev.report(&f).unwrap();
    assert_eq!(r.host_target.as_deref(), Some("pulley32"), "{r:?}");
    assert!(!r.can_compile, "{r:?}");
    assert_eq!(
        r.engine.as_deref(),
        Some(crate::fleet::runtime().engine_fingerprint().as_str()),
        "the device's engine fingerprint is the one the artifact was made for"
    );

    // 1.1.0 without an artifact for it: refused before the download, with
    // what to do; still serving 1.0.0.
    let v11 = f.signed(&DIGITS_IMAGE, "1.1.0");
    f.push(&v11, "1.1.0", 100.0);
    dev.wait_for(&f, "1.1.0 refused", |r| {
        r.state == UpdateState::Failed && r.target.as_deref() == Some("1.1.0")
    });
    let r = dev.report(&f).unwrap();
    assert_eq!(r.error_kind.as_deref(), Some("no_artifact"), "{r:?}");
    assert!(
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("edgeml precompile --target pulley32")),
        "{r:?}"
    );
    check_digits(&f, &dev, &v1, "1.0.0");

    // A compromised server pairs 1.1.0 with 1.0.0's artifact (the server
    // itself refuses to publish that): refused as made for another bundle.
    let mut r = f.release_for(&v11, "1.1.0", 100.0);
    r.artifacts = vec![f.artifact(&v1, "pulley32")];
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    dev.wait_for(&f, "1.1.0's borrowed artifact refused", |r| {
        r.state == UpdateState::Failed && r.error_kind.as_deref() == Some("artifact")
    });
    let r = dev.report(&f).unwrap();
    assert!(
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("was compiled from bundle")),
        "{r:?}"
    );
    assert_eq!(r.installed.unwrap().version, "1.0.0", "still serving 1.0.0");

    // 1.2.0 signed by a key the root does not name as a publisher. The
    // server refuses such an upload, so a compromised server serves it, with
    // release metadata the release keys signed: the device still refuses.
    let stranger = edgeml_bundle::SecretKey::generate().unwrap();
    let forged = edgeml_bundle::sign(
        &pack_custom(&DIGITS_IMAGE, "1.2.0", None, Vec::new(), |_| {}),
        &stranger,
    )
    .unwrap();
    let mut r = f.release_for(&v1, "1.2.0", 100.0);
    r.bundle = BundleRef {
        sha256: hex::encode(Sha256::digest(&forged)),
        size: forged.len() as u64,
    };
    r.artifacts = vec![f.artifact(&v1, "pulley32")];
    crate::fleet::replace_blob(&f, &r, &forged);
    f.inject(&r, &[&f.release[0], &f.release[1]]);
    dev.wait_for(&f, "1.2.0 refused", |r| {
        r.state == UpdateState::Failed && r.target.as_deref() == Some("1.2.0")
    });
    let r = dev.report(&f).unwrap();
    assert!(
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no signature by a trusted key")),
        "{r:?}"
    );
    assert_eq!(r.installed.unwrap().version, "1.0.0", "still serving 1.0.0");
    let logs = dev.logs();
    assert!(
        logs.contains("\"level\":\"WARN\"") && logs.contains("no signature by a trusted key"),
        "the refusal and its reason are logged: {logs}"
    );

    // 1.3.0 with its artifact: installed and served, and after a restart
    // the device serves it again from its state directory.
    let v13 = f.signed(&DIGITS_IMAGE, "1.3.0");
    push_precompiled(&f, &v13, "1.3.0", "pulley32");
    dev.wait_for(&f, "1.3.0 installed", installed("1.3.0"));
    check_digits(&f, &dev, &v13, "1.3.0");
    drop(dev);
    let mut dev = Device::start(&f, &ARMV7, &bin, "armv7-digits", "stable");
    dev.wait_ready("digits");
    check_digits(&f, &dev, &v13, "1.3.0");
}
