//! Root and release metadata under random input: never a panic, always a
//! typed error.

use crate::{Envelope, Release, Root, Timestamp, TrustedRoot};
use edgeml_bundle::SecretKey;
use proptest::prelude::*;
use std::time::{Duration, SystemTime};

fn trusted() -> (TrustedRoot, SecretKey) {
    let k = SecretKey::generate().unwrap();
    let root = Root::new(
        1,
        SystemTime::now() + Duration::from_secs(86400),
        (&[k.public_key()], 1),
        (&[k.public_key()], 1),
        (&[k.public_key()], 1),
    )
    .with_timestamp(&[k.public_key()], 1);
    let t = TrustedRoot::bootstrap(&Envelope::sign(&root, &[&k]).unwrap().to_vec()).unwrap();
    (t, k)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (mut t, _) = trusted();
        prop_assert!(TrustedRoot::bootstrap(&bytes).is_err());
        prop_assert!(t.update(&bytes).is_err());
        prop_assert!(t.verify_release(&bytes, "stable", SystemTime::now(), None).is_err());
    }

    /// Signed envelopes whose payload is arbitrary text: valid signatures
    /// over nonsense must still be refused with a typed error.
    #[test]
    fn signed_nonsense_never_panics(payload in "\\PC{0,200}", version in any::<u64>(), percent in any::<f64>()) {
        let (mut t, k) = trusted();
        let mut env = Envelope { payload: payload.clone(), signatures: vec![] };
        env.add_signature::<Release>(&k);
        let _ = t.verify_release(&env.to_vec(), "stable", SystemTime::now(), None);
        env.add_signature::<Root>(&k);
        let _ = t.update(&env.to_vec());
        let _ = t.verify_timestamp(&env.to_vec(), &env, "stable", SystemTime::now());
        // A structurally valid release with arbitrary numbers.
        let r = Release {
            kind: "release".into(), channel: "stable".into(), version,
            expires: "2999-01-01T00:00:00Z".into(), model: "m".into(),
            model_version: "1.0.0".parse().unwrap(),
            bundle: crate::BundleRef { sha256: "ab".repeat(32), size: 1 },
            rollout_percent: percent, allow_downgrade: false, artifacts: Vec::new(),
            target: None, schedule: None, abort: None,
        };
        let env = Envelope::sign(&r, &[&k]).unwrap();
        match t.verify_release(&env.to_vec(), "stable", SystemTime::now(), None) {
            Ok(ok) => {
                prop_assert!((0.0..=100.0).contains(&ok.rollout_percent));
                prop_assert!(ok.version <= crate::MAX_RELEASE_VERSION);
                let _ = ok.includes("device", &crate::Tags::new(), None);
            }
            Err(_) => {}
        }
        let ts = Timestamp::for_release(&env, SystemTime::now() + Duration::from_secs(60)).unwrap();
        let ts = Envelope::sign(&ts, &[&k]).unwrap();
        if t.verify_release(&env.to_vec(), "stable", SystemTime::now(), None).is_ok() {
            prop_assert!(t.verify_timestamp(&ts.to_vec(), &env, "stable", SystemTime::now()).is_ok());
        }
    }
}
