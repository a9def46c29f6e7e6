//! A guest that misbehaves is stopped, reported with a typed error, and the
//! host (and the next call) carries on. Uses guest/test-hostile.

use crate::common::*;
use edgeml_runtime::{Config, Error, Input, Runtime, Tensor};
use std::time::{Duration, Instant};

fn hostile(config: &Config) -> (Runtime, edgeml_runtime::Model) {
    let rt = Runtime::new(config).unwrap();
    let (_, model) = load(&HOSTILE, &rt);
    (rt, model)
}

fn still_serves(model: &edgeml_runtime::Model) {
    let x = Tensor::from_f32("X", vec![1, 64], &[0.5; 64]);
    let p = model
        .predict(Input::Tensors(vec![x]))
        .expect("the next call works");
    assert_eq!(p.output("probabilities").unwrap().shape, vec![1, 10]);
}

#[test]
fn stops_guest_that_loops_forever() {
    let mut config = Config::new();
    config.timeout(Duration::from_millis(300));
    let (_rt, model) = hostile(&config);
    let t = Instant::now();
    let err = model.predict(media("x-test/loop", vec![])).unwrap_err();
    assert!(
        matches!(err, Error::Timeout { limit } if limit == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    still_serves(&model);
}

#[test]
fn stops_guest_that_grows_memory_without_bound() {
    let mut config = Config::new();
    config.max_memory_bytes(64 << 20);
    let (_rt, model) = hostile(&config);
    let err = model.predict(media("x-test/grow", vec![])).unwrap_err();
    assert!(
        matches!(err, Error::ResourceLimit { what: "memory", limit } if limit == 64 << 20),
        "{err:?}"
    );
    still_serves(&model);
}

#[test]
fn reports_guest_panic_as_trap_with_its_message() {
    let (_rt, model) = hostile(&Config::new());
    let err = model.predict(media("x-test/panic", vec![])).unwrap_err();
    match &err {
        Error::Trap { guest_stderr, .. } => assert!(
            guest_stderr.contains("hostile guest panicked on purpose"),
            "{err}"
        ),
        other => panic!("expected a trap, got {other:?}"),
    }
    still_serves(&model);
}

#[test]
fn refuses_guest_loading_model_bytes_it_brought() {
    let (_rt, model) = hostile(&Config::new());
    let err = model
        .predict(media("x-test/load-bytes", vec![]))
        .unwrap_err();
    assert!(
        matches!(err, Error::Inference(ref m) if m.contains("Security") && m.contains("not the bundle's signed model")),
        "{err:?}"
    );
}

#[test]
fn guest_sees_no_filesystem_environment_or_arguments() {
    // Even with secrets in the host's environment.
    std::env::set_var("EDGEML_TEST_SECRET", "hunter2");
    let (_rt, model) = hostile(&Config::new());
    let p = model.predict(media("x-test/escape", vec![])).unwrap();
    assert_eq!(
        p.monitoring,
        vec![0.0, 0.0, 0.0],
        "fs entries, env vars, args visible to the guest"
    );
}

#[test]
fn concurrent_calls_each_get_their_own_instance() {
    let (_rt, model) = hostile(&Config::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10 {
                    still_serves(&model);
                }
            });
        }
    });
}

fn garbage_model_bundle(p: &Publisher) -> Vec<u8> {
    // Valid protobuf framing, nonsense graph: a truncated real model.
    let digits = read(model_path("digits/digits.onnx"));
    p.sign(&pack_generic_as_digits(
        &digits[..digits.len() / 3],
        semver::Version::new(0, 1, 0),
    ))
}

#[test]
fn malformed_model_is_a_load_error_naming_the_backend() {
    let p = Publisher::new();
    for (kind, name) in [
        (Kind::Tract, "tract"),
        (Kind::OnnxRuntime, "onnxruntime"),
        (Kind::Sandboxed, "sandboxed"),
    ] {
        let Some(rt) = shared_runtime(kind) else {
            continue;
        };
        let v = rt.verify(garbage_model_bundle(&p), &p.policy()).unwrap();
        let err = rt.load(&v).unwrap_err();
        assert!(
            matches!(err, Error::Model { backend, .. } if backend == name),
            "{kind:?}: {err:?}"
        );
        // The runtime still loads good bundles.
        let (_, model) = load(&DIGITS_GENERIC, &rt);
        still_serves(&model);
    }
}

#[test]
fn auto_backend_does_not_retry_a_model_onnxruntime_refuses_on_tract() {
    let Some(mut config) = onnxruntime_config() else {
        return;
    };
    config.backend(edgeml_runtime::Backend::Auto);
    let rt = Runtime::new(&config).unwrap();
    assert_eq!((rt.backend(), rt.backend_note()), ("onnxruntime", None));
    let p = Publisher::new();
    let v = rt.verify(garbage_model_bundle(&p), &p.policy()).unwrap();
    let err = rt.load(&v).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Model {
                backend: "onnxruntime",
                ..
            }
        ),
        "{err:?}"
    );
    // The same bundle on tract, asked for explicitly for this bundle only.
    let err = rt.load_on(&v, &edgeml_runtime::Backend::Tract).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Model {
                backend: "tract",
                ..
            }
        ),
        "{err:?}"
    );
    let (_, model) = load(&DIGITS_GENERIC, &rt);
    assert_eq!(model.backend(), "onnxruntime");
}

#[test]
fn sandboxed_backend_is_held_to_its_own_memory_limit() {
    let mut config = sandboxed_config();
    config.sandbox_max_memory_bytes(2 << 20);
    let rt = Runtime::new(&config).unwrap();
    let p = Publisher::new();
    let v = rt.verify(p.sign(&pack(&SQUEEZENET)), &p.policy()).unwrap();
    let err = rt.load(&v).unwrap_err();
    assert!(
        matches!(err, Error::Model { backend: "sandboxed", ref reason } if reason.contains("memory limit")),
        "{err:?}"
    );
}

#[test]
fn guest_tensor_flood_is_trapped() {
    // The guest reuses one 1 MiB buffer for every tensor: its own memory
    // stays small, the host's grows. One budget covers both.
    let mut config = Config::new();
    config.max_memory_bytes(64 << 20);
    let (_rt, model) = hostile(&config);
    let err = model
        .predict(media("x-test/tensor-flood", vec![]))
        .unwrap_err();
    assert!(
        matches!(err, Error::ResourceLimit { what: "memory", limit } if limit == 64 << 20),
        "{err:?}"
    );
    still_serves(&model);
}

#[test]
fn guest_context_flood_is_trapped() {
    let configs = [
        Some(Config::new()),
        onnxruntime_config(),
        Some(sandboxed_config()),
    ];
    for config in configs.into_iter().flatten() {
        let (rt, model) = hostile(&config);
        let backend = rt.backend();
        let err = model
            .predict(media("x-test/context-flood", vec![]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ResourceLimit {
                    what: "wasi-nn execution contexts",
                    limit: 4
                }
            ),
            "{backend:?}: {err:?}"
        );
        still_serves(&model);
    }
}
