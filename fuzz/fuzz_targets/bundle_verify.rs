#![no_main]
//! Any bytes as a bundle: verify, inspect and the signature section decoder
//! return errors, never panic.

use edgeml_bundle::{inspect, signature::SignatureData, verify, SecretKey, TrustPolicy};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn policy() -> &'static TrustPolicy {
    static P: OnceLock<TrustPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let key = SecretKey::generate().expect("key");
        TrustPolicy::any_of(vec![key.public_key()]).expect("policy")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = verify(data.to_vec(), policy());
    let _ = inspect(data);
    let _ = SignatureData::decode(data, 0);
});
