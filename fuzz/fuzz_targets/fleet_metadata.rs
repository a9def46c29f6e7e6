#![no_main]
//! Any bytes as root or release metadata: typed errors, never a panic.

use edgeml_bundle::SecretKey;
use edgeml_fleet::{Envelope, Root, TrustedRoot};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

fn trusted() -> &'static TrustedRoot {
    static T: OnceLock<TrustedRoot> = OnceLock::new();
    T.get_or_init(|| {
        let k = SecretKey::generate().expect("key");
        let root = Root::new(
            1,
            SystemTime::now() + Duration::from_secs(86400),
            (&[k.public_key()], 1),
            (&[k.public_key()], 1),
            (&[k.public_key()], 1),
        );
        let env = Envelope::sign(&root, &[&k]).expect("sign");
        TrustedRoot::bootstrap(&env.to_vec()).expect("root")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = TrustedRoot::bootstrap(data);
    let mut t = trusted().clone();
    let _ = t.update(data);
    let _ = t.verify_release(data, "stable", SystemTime::now(), None);
});
