//! The compiled-component cache: a cached load does not compile, a corrupt
//! entry is detected, removed and rebuilt.

use crate::common::*;
use edgeml_runtime::{CacheOutcome, Config, Input, Runtime, Tensor};

#[test]
fn second_load_comes_from_cache_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new();
    config.cache_dir(dir.path());
    let p = Publisher::new();
    let signed = p.sign(&pack(&DIGITS_GENERIC));

    let rt = Runtime::new(&config).unwrap();
    let first = rt
        .load(&rt.verify(signed.clone(), &p.policy()).unwrap())
        .unwrap();
    assert_eq!(first.load_info().cache, CacheOutcome::Miss);
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);

    // A new runtime (as after a restart) loads the artifact instead of compiling.
    let rt2 = Runtime::new(&config).unwrap();
    let second = rt2.load(&rt2.verify(signed, &p.policy()).unwrap()).unwrap();
    assert_eq!(second.load_info().cache, CacheOutcome::Hit);
    let x = Tensor::from_f32("X", vec![1, 64], &[0.5; 64]);
    let a = first.predict(Input::Tensors(vec![x.clone()])).unwrap();
    let b = second.predict(Input::Tensors(vec![x])).unwrap();
    assert_eq!(a.outputs, b.outputs);
}

#[test]
fn corrupt_cache_entry_is_detected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new();
    config.cache_dir(dir.path());
    let p = Publisher::new();
    let signed = p.sign(&pack(&DIGITS_GENERIC));
    let rt = Runtime::new(&config).unwrap();
    let verified = rt.verify(signed, &p.policy()).unwrap();
    rt.load(&verified).unwrap();
    let entry = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();

    let model = rt.load(&verified).unwrap();
    assert!(
        matches!(model.load_info().cache, CacheOutcome::Corrupt(ref why) if why.contains("checksum")),
        "{:?}",
        model.load_info().cache
    );
    let again = rt.load(&verified).unwrap();
    assert_eq!(again.load_info().cache, CacheOutcome::Hit);
}
