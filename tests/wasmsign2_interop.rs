//! Byte compatibility with wasmsign2, the reference implementation of the
//! WebAssembly tool-conventions signature format. The vectors were computed
//! from wasmsign2 0.2.8's source (message, key id, section layout); the
//! interop test runs the real `wasmsign2` CLI in both directions. It is
//! skipped when the tool is missing outside CI, and fails in CI
//! (`.ci/run` installs it with `cargo install --locked wasmsign2-cli`).

use crate::common::*;
use edgeml_runtime::bundle::{self, SecretKey};
use std::process::Command;

fn key(seed_start: u8) -> SecretKey {
    let seed: Vec<u8> = (seed_start..seed_start + 32).collect();
    let pk = ed25519_dalek::SigningKey::from_bytes(&seed.clone().try_into().unwrap())
        .verifying_key()
        .to_bytes();
    let mut file = vec![0x81];
    file.extend_from_slice(&seed);
    file.extend_from_slice(&pk);
    SecretKey::from_bytes(&file).unwrap()
}

/// A component with one custom section `x` = "hi" and a delimiter 00..0f.
fn content() -> Vec<u8> {
    hex::decode("0061736d0d0001000004017868690024137369676e61747572655f64656c696d69746572000102030405060708090a0b0c0d0e0f").unwrap()
}

#[test]
fn key_id_is_wasmsign2s() {
    assert_eq!(
        hex::encode(key(0).public_key().wasm_key_id()),
        "a87b10d4934d3a04633a3faf"
    );
    assert_eq!(
        hex::encode(key(0x20).public_key().wasm_key_id()),
        "1b3e7ee50e0b7c24934a4e01"
    );
}

#[test]
fn signs_byte_for_byte_like_wasmsign2() {
    // `wasmsign2 sign -k sk1 -K pk1`.
    let one = bundle::sign(&content(), &key(0)).unwrap();
    assert_eq!(
        hex::encode(&one),
        "0061736d0d000100008101097369676e6174757265010101017201d8bd87511c5d71d98cd8af4db99b7a7f1522dc759c362de1ca0e52b14e2553e2014f0ca87b10d4934d3a04633a3faf0140e49d57a6ab5e944a82c556f08d66aefa8fae98cdfe428b23c82c0d758d7024f8498fa390a6f814007b017061c872b0833d33d63729f6ae33ed613640581d70070004017868690024137369676e61747572655f64656c696d69746572000102030405060708090a0b0c0d0e0f"
    );
    // A second signer joins the same hash set, as `wasmsign2 sign` does.
    let two = bundle::sign(&one, &key(0x20)).unwrap();
    assert_eq!(
        hex::encode(&two),
        "0061736d0d00010000d201097369676e617475726501010101c20101d8bd87511c5d71d98cd8af4db99b7a7f1522dc759c362de1ca0e52b14e2553e2024f0ca87b10d4934d3a04633a3faf0140e49d57a6ab5e944a82c556f08d66aefa8fae98cdfe428b23c82c0d758d7024f8498fa390a6f814007b017061c872b0833d33d63729f6ae33ed613640581d70074f0c1b3e7ee50e0b7c24934a4e0101407301a617a8c676e9efd468730cc39f9bc1f24a2c2584214e1a4dfadbdf40da7a5e4610d9c121f4bbfb9652f0360f058892f48b24765392501da1ba8f45a234040004017868690024137369676e61747572655f64656c696d69746572000102030405060708090a0b0c0d0e0f"
    );
}

fn wasmsign2() -> Option<Command> {
    let found = Command::new("wasmsign2")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "wasmsign2 is missing in CI: cargo install --locked wasmsign2-cli"
        );
        eprintln!("skipping: wasmsign2 is not installed (cargo install --locked wasmsign2-cli)");
        return None;
    }
    Some(Command::new("wasmsign2"))
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

#[test]
fn wasmsign2_cli_interop_both_directions() {
    let Some(_) = wasmsign2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    for name in ["ours", "theirs"] {
        run({
            let mut c = edgeml();
            c.args(["keygen", "--out", &p("keys"), "--name", name]);
            c
        });
    }
    std::fs::write(d.join("bundle.wasm"), pack(&DIGITS_IMAGE)).unwrap();

    // edgeml signs, wasmsign2 verifies.
    std::fs::copy(d.join("bundle.wasm"), d.join("a.wasm")).unwrap();
    run({
        let mut c = edgeml();
        c.args(["sign", &p("a.wasm"), "--key", &p("keys/ours.key")]);
        c
    });
    run({
        let mut c = wasmsign2().unwrap();
        c.args(["verify", "-i", &p("a.wasm"), "-K", &p("keys/ours.pub")]);
        c
    });
    // ... and refuses it with another key.
    let other = wasmsign2()
        .unwrap()
        .args(["verify", "-i", &p("a.wasm"), "-K", &p("keys/theirs.pub")])
        .output()
        .unwrap();
    assert!(!other.status.success(), "wasmsign2 accepted the wrong key");

    // wasmsign2 adds a second signature; edgeml counts both (2 of 2).
    run({
        let mut c = wasmsign2().unwrap();
        c.args([
            "sign",
            "-i",
            &p("a.wasm"),
            "-o",
            &p("b.wasm"),
            "-k",
            &p("keys/theirs.key"),
            "-K",
            &p("keys/theirs.pub"),
        ]);
        c
    });
    run({
        let mut c = edgeml();
        c.args([
            "verify",
            &p("b.wasm"),
            "--trust",
            &p("keys/ours.pub"),
            "--trust",
            &p("keys/theirs.pub"),
            "--threshold",
            "2",
        ]);
        c
    });

    // wasmsign2 signs alone, without a key id; edgeml verifies and runs it.
    run({
        let mut c = wasmsign2().unwrap();
        c.args([
            "sign",
            "-i",
            &p("bundle.wasm"),
            "-o",
            &p("c.wasm"),
            "-k",
            &p("keys/theirs.key"),
        ]);
        c
    });
    let out = run({
        let mut c = edgeml();
        c.args([
            "run",
            &p("c.wasm"),
            "--trust",
            &p("keys/theirs.pub"),
            "--input",
            model_path("digits/holdout/000.png").to_str().unwrap(),
            "--no-cache",
        ]);
        c
    });
    assert!(out.contains('7'), "{out}");
}

#[test]
fn accepts_bundle_signed_by_edgeml_0_1() {
    // edgeml 0.1 signed "wasmsig" ‖ 01 ‖ 01 ‖ hashes (no content-type byte)
    // under an 8-byte key id. Devices must keep verifying bundles they
    // installed then.
    use bundle::signature::{RawSignature, SignatureData, SignedHashes};
    use sha2::Digest as _;
    let p = Publisher::new();
    let unsigned = pack(&DIGITS_GENERIC);
    let h: [u8; 32] = sha2::Sha256::digest(&unsigned[8..]).into();
    let mut set = SignedHashes {
        hashes: vec![h],
        signatures: vec![],
    };
    let sig = p.key.sign(&set.legacy_message());
    set.signatures.push(RawSignature {
        key_id: p.key.public_key().id().0.to_vec(),
        alg: 1,
        sig: sig.clone(),
    });
    let data = SignatureData { signed: vec![set] };
    let mut legacy = unsigned[..8].to_vec();
    legacy.extend_from_slice(&bundle::wasm::custom_section("signature", &data.encode()));
    legacy.extend_from_slice(&unsigned[8..]);
    let v = bundle::verify(legacy.clone(), &p.policy()).expect("a 0.1 signature verifies");
    assert_eq!(v.signers(), &[p.key.public_key().id()]);
    // A changed 0.1-style signature under this key's id is refused as bad.
    let mut tampered = legacy;
    let sig_at = tampered
        .windows(sig.len())
        .position(|w| w == sig.as_slice())
        .unwrap();
    tampered[sig_at] ^= 1;
    let err = bundle::verify(tampered, &p.policy()).unwrap_err();
    assert!(matches!(err, bundle::Error::BadSignature { .. }), "{err:?}");
}
