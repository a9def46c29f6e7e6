//! The bundle's threat model, one test per attack. Each asserts the exact
//! error, and that nothing was compiled (verification runs before loading).

use crate::common::*;
use edgeml_runtime::bundle::{self, Error, SecretKey};
use edgeml_runtime::{PublicKey, TrustPolicy};

fn signed_digits() -> (Publisher, Vec<u8>) {
    let p = Publisher::new();
    let signed = p.sign(&pack(&DIGITS_GENERIC));
    (p, signed)
}

#[test]
fn accepts_bundle_signed_by_trusted_key() {
    let (p, signed) = signed_digits();
    let v = bundle::verify(signed, &p.policy()).unwrap();
    assert_eq!(v.manifest().name, "digits");
    assert_eq!(v.signers(), &[p.key.public_key().id()]);
}

#[test]
fn rejects_unsigned_bundle() {
    let p = Publisher::new();
    let err = bundle::verify(pack(&DIGITS_GENERIC), &p.policy()).unwrap_err();
    assert!(matches!(err, Error::Unsigned), "{err}");
}

#[test]
fn rejects_bundle_with_any_single_byte_changed() {
    let (p, signed) = signed_digits();
    let policy = p.policy();
    let n = signed.len();
    // Every byte of the first and last 256, and 400 spread over the rest.
    let mut positions: Vec<usize> = (0..256).chain(n - 256..n).collect();
    positions.extend((0..400).map(|i| 256 + i * (n - 512) / 400));
    for pos in positions {
        let mut tampered = signed.clone();
        tampered[pos] ^= 0x01;
        let err = bundle::verify(tampered, &policy)
            .err()
            .unwrap_or_else(|| panic!("byte {pos} changed but the bundle verified"));
        assert!(
            matches!(
                err,
                Error::NotAComponent { .. }
                    | Error::Malformed { .. }
                    | Error::ContentMismatch { .. }
                    | Error::BadSignature { .. }
                    | Error::UntrustedSigner { .. }
                    | Error::UnsupportedSignature(_)
                    | Error::Unsigned
                    | Error::MisplacedSignature
                    | Error::LimitExceeded { .. }
            ),
            "byte {pos}: unexpected error {err:?}"
        );
    }
}

#[test]
fn rejects_content_modified_after_signing() {
    let (p, signed) = signed_digits();
    let mut tampered = signed.clone();
    let last = tampered.len() - 1; // inside the trailing delimiter section
    tampered[last] ^= 0xff;
    assert!(matches!(
        bundle::verify(tampered, &p.policy()),
        Err(Error::ContentMismatch { .. })
    ));
}

#[test]
fn rejects_altered_signature_bytes() {
    let (p, signed) = signed_digits();
    let info = bundle::inspect(&signed).unwrap();
    let sig_section = &info.sections[0];
    assert_eq!(sig_section.name, "signature");
    // The ed25519 signature is the last 64 bytes of the signature section.
    let end = 8 + sig_section.size as usize;
    let mut tampered = signed.clone();
    tampered[end - 10] ^= 0x40;
    let err = bundle::verify(tampered, &p.policy()).unwrap_err();
    assert!(
        matches!(err, Error::BadSignature { ref key_id } if *key_id == p.key.public_key().id().to_string()),
        "{err:?}"
    );
}

#[test]
fn rejects_truncated_bundle() {
    let (p, signed) = signed_digits();
    for cut in [signed.len() - 1, signed.len() / 2, 100, 9] {
        let err = bundle::verify(signed[..cut].to_vec(), &p.policy()).unwrap_err();
        assert!(
            matches!(err, Error::Malformed { .. } | Error::ContentMismatch { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn rejects_signature_by_untrusted_key() {
    let (_, signed) = signed_digits();
    let stranger = Publisher::new();
    let err = bundle::verify(signed, &stranger.policy()).unwrap_err();
    assert!(
        matches!(err, Error::UntrustedSigner { ref signers } if signers.len() == 1),
        "{err:?}"
    );
}

#[test]
fn rejects_too_few_signatures_for_threshold() {
    let (a, b, c) = (Publisher::new(), Publisher::new(), Publisher::new());
    let policy = TrustPolicy::new(
        vec![a.key.public_key(), b.key.public_key(), c.key.public_key()],
        2,
    )
    .unwrap();
    let once = a.sign(&pack(&DIGITS_GENERIC));
    let err = bundle::verify(once.clone(), &policy).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet {
                valid: 1,
                required: 2
            }
        ),
        "{err:?}"
    );
    // The same key signing twice still counts once.
    let twice = a.sign(&once);
    assert!(matches!(
        bundle::verify(twice, &policy),
        Err(Error::ThresholdNotMet {
            valid: 1,
            required: 2
        })
    ));
    // A second distinct trusted key meets the threshold.
    let two = c.sign(&once);
    let v = bundle::verify(two, &policy).unwrap();
    assert_eq!(v.signers().len(), 2);
}

#[test]
fn rejects_policy_listing_same_key_twice() {
    let p = Publisher::new();
    let err = TrustPolicy::new(vec![p.key.public_key(), p.key.public_key()], 2).unwrap_err();
    assert!(matches!(err, Error::InvalidPolicy(_)));
    assert!(matches!(
        TrustPolicy::new(vec![p.key.public_key()], 0),
        Err(Error::InvalidPolicy(_))
    ));
    assert!(matches!(
        TrustPolicy::new(vec![p.key.public_key()], 2),
        Err(Error::InvalidPolicy(_))
    ));
}

#[test]
fn rejects_file_that_is_not_a_component() {
    let p = Publisher::new();
    let err = bundle::verify(b"PK\x03\x04 this is a zip file".to_vec(), &p.policy()).unwrap_err();
    assert!(matches!(err, Error::NotAComponent { .. }), "{err:?}");
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let err = bundle::verify(core_module, &p.policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotAComponent {
                found: "a core module"
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        bundle::verify(Vec::new(), &p.policy()),
        Err(Error::NotAComponent { .. })
    ));
}

#[test]
fn rejects_signature_section_not_first() {
    let (p, signed) = signed_digits();
    let info = bundle::inspect(&signed).unwrap();
    let sig_len = info.sections[0].size as usize;
    // Move the signature section to the end.
    let mut moved = signed[..8].to_vec();
    moved.extend_from_slice(&signed[8 + sig_len..]);
    moved.extend_from_slice(&signed[8..8 + sig_len]);
    assert!(matches!(
        bundle::verify(moved, &p.policy()),
        Err(Error::MisplacedSignature)
    ));
}

#[test]
fn rejects_manifest_whose_model_digest_does_not_match() {
    // A publisher's tooling bug or a hand-edited manifest: signed, yet the
    // manifest's model digest is not the model's.
    let p = Publisher::new();
    let unsigned = pack(&DIGITS_GENERIC);
    let info = bundle::inspect(&unsigned).unwrap();
    let digest = info.manifest.unwrap().model.digest.sha256;
    let forged_digest = "0".repeat(64);
    let text = unsafe_replace(&unsigned, digest.as_bytes(), forged_digest.as_bytes());
    let err = bundle::verify(p.sign(&text), &p.policy()).unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { what: "model", .. }),
        "{err:?}"
    );
}

/// Replace one occurrence of `from` by `to` (same length).
fn unsafe_replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let pos = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = hay.to_vec();
    out[pos..pos + to.len()].copy_from_slice(to);
    out
}

#[test]
fn rejects_bundle_over_size_limit() {
    let (p, signed) = signed_digits();
    let limits = bundle::Limits {
        max_bundle_bytes: 1024,
        ..Default::default()
    };
    let err = bundle::verify_with_limits(signed, &p.policy(), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                what: "bundle size",
                limit: 1024,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn rejects_bundle_file_over_size_limit_before_reading_it() {
    let (p, signed) = signed_digits();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.wasm");
    std::fs::write(&path, &signed).unwrap();
    let limits = bundle::Limits {
        max_bundle_bytes: 1024,
        ..Default::default()
    };
    let err = bundle::read_file(&path, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                what: "bundle size",
                limit: 1024,
                found,
            } if found == signed.len() as u64
        ),
        "{err:?}"
    );
    // Within the limit, the file reads whole and verifies.
    let bytes = bundle::read_file(&path, &bundle::Limits::default()).unwrap();
    assert_eq!(&bytes[..], &signed[..]);
    bundle::verify(bytes, &p.policy()).unwrap();
    // A missing file is an I/O error naming it.
    let missing = dir.path().join("missing.wasm");
    let err = bundle::read_file(&missing, &bundle::Limits::default()).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if *path == missing),
        "{err:?}"
    );
}

#[test]
fn rejects_bundle_for_newer_host() {
    let p = Publisher::new();
    let model = read(model_path("digits/digits.onnx"));
    let unsigned = pack_generic_as_digits(&model, semver::Version::new(99, 0, 0));
    let rt = runtime();
    let verified = rt.verify(p.sign(&unsigned), &p.policy()).unwrap();
    let err = rt.load(&verified).unwrap_err();
    assert!(
        matches!(err, edgeml_runtime::Error::Bundle(Error::HostTooOld { .. })),
        "{err:?}"
    );
}

#[test]
fn keys_round_trip_in_tool_conventions_format() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let (secret, public) = key.write_pair(dir.path(), "k").unwrap();
    assert_eq!(std::fs::read(&public).unwrap().len(), 33);
    assert_eq!(std::fs::read(&secret).unwrap().len(), 65);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(PublicKey::from_file(&public).unwrap(), key.public_key());
    assert_eq!(
        SecretKey::from_file(&secret).unwrap().public_key(),
        key.public_key()
    );
    // A secret key where a public key belongs, and the reverse, are refused.
    assert!(matches!(
        PublicKey::from_file(&secret),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        SecretKey::from_file(&public),
        Err(Error::InvalidKey { .. })
    ));
    // Never overwrite a key.
    assert!(matches!(
        key.write_pair(dir.path(), "k"),
        Err(Error::Io { .. })
    ));
}

#[test]
fn rejects_signature_flood() {
    // 65 signers: each signature could cost a check per trusted key, so the
    // section is refused before any signature is checked.
    let p = Publisher::new();
    let mut signed = p.sign(&pack(&DIGITS_GENERIC));
    for _ in 0..bundle::signature::MAX_TOTAL_SIGNATURES {
        signed = bundle::sign(&signed, &SecretKey::generate().unwrap()).unwrap();
    }
    let err = bundle::verify(signed, &p.policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                what: "signatures in the signature section",
                limit: 64,
                found: 65
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_section_flood() {
    // Millions of tiny sections would cost memory before any check: bounded.
    let p = Publisher::new();
    let mut bundle = pack(&DIGITS_GENERIC);
    for _ in 0..bundle::wasm::MAX_SECTIONS {
        bundle.extend_from_slice(&[0, 2, 1, b'x']);
    }
    let err = bundle::sign(&bundle, &p.key).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                what: "top-level sections",
                ..
            }
        ),
        "{err}"
    );
}
