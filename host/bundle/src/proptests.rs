//! The bundle parser under random input: never a panic, always a typed error.

use crate::signature::SignatureData;
use crate::{inspect, sign, verify, Manifest, SecretKey, TrustPolicy};
use proptest::prelude::*;

/// A bundle (a tiny component, a manifest, a model section) signed by `key`.
fn signed(key: &SecretKey) -> Vec<u8> {
    use crate::manifest::{Dim, TensorSpec};
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    component.extend_from_slice(&crate::wasm::custom_section("x", b"hello"));
    let spec = |name: &str| TensorSpec {
        name: name.into(),
        dtype: crate::Dtype::F32,
        shape: vec![Dim::Fixed(1), Dim::Fixed(4)],
    };
    let bundle = crate::pack(&crate::PackOptions {
        name: "m",
        version: "1.0.0".parse().unwrap(),
        component: &component,
        model: b"not parsed by the bundle crate",
        inputs: vec![spec("x")],
        outputs: vec![spec("y")],
        labels: vec![],
        preprocessing: serde_json::Value::Null,
        min_host_version: "0.1.0".parse().unwrap(),
        created: None,
        baseline: None,
        self_test: vec![],
        card: None,
    })
    .expect("packing");
    sign(&bundle, key).expect("signing")
}

#[test]
fn the_unmutated_bundle_verifies() {
    let key = SecretKey::generate().unwrap();
    let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();
    verify(signed(&key), &policy).expect("the base of the mutation test is valid");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let key = SecretKey::generate().unwrap();
        let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();
        prop_assert!(verify(bytes.clone(), &policy).is_err());
        let _ = inspect(&bytes);
        let _ = SignatureData::decode(&bytes, 0);
    }

    #[test]
    fn mutated_signed_bundle_is_refused(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let key = SecretKey::generate().unwrap();
        let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();
        let mut b = signed(&key);
        for (i, x) in &flips {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        // Every byte is covered: a changed or truncated bundle never verifies.
        prop_assert!(verify(b.clone(), &policy).is_err());
        let _ = inspect(&b);
    }

    #[test]
    fn random_manifest_json_never_panics(s in "\\PC{0,300}") {
        if let Ok(m) = serde_json::from_str::<Manifest>(&s) {
            let _ = m.validate();
        }
    }
}
