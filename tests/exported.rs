//! Models with what exporters put into real-world ONNX files (symbolic
//! dimensions feeding Squeeze and Reshape, `If` on a scalar input, int64
//! scalar inputs, half-precision weights), built with onnx's helper by
//! models/exported/build.py. Each is packed by `edgeml pack` with the generic
//! component (and `--input-shape` / `--constant` where it needs them), signed,
//! and run on every backend against onnxruntime's outputs on the original file.

use crate::common::*;
use edgeml_runtime::{Dtype, Input, Tensor};
use std::path::Path;

/// `edgeml pack` of models/exported/NAME.onnx with the generic component.
fn pack_exported(dir: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    edgeml()
        .arg("pack")
        .arg("--model")
        .arg(model_path(&format!("exported/{name}.onnx")))
        .args(["--name", name, "--version", "1.0.0", "--out"])
        .arg(dir.join(format!("{name}.wasm")))
        .args(extra)
        .output()
        .unwrap()
}

/// A named tensor from an .npy file of f32 or i64 (any rank, scalars too).
fn npy_any(name: &str, rel: &str) -> Tensor {
    let bytes = read(model_path(rel));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    let (dtype, data) = match f.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float => (
            Dtype::F32,
            f.into_vec::<f32>()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Int => (
            Dtype::I64,
            f.into_vec::<i64>()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => panic!("{rel}: {other:?}"),
    };
    Tensor {
        name: name.into(),
        dtype,
        shape,
        data,
    }
}

/// Pack (with `extra`), sign, and run NAME on every backend with its
/// recorded inputs; every output must match onnxruntime's on the original.
fn runs_everywhere(name: &str, extra: &[&str], inputs: &[&str], outputs: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = pack_exported(tmp.path(), name, extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = Publisher::new();
    let signed = p.sign(&read(tmp.path().join(format!("{name}.wasm"))));
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|i| npy_any(i, &format!("exported/{name}.in.{i}.npy")))
        .collect();
    for kind in [Kind::Tract, Kind::OnnxRuntime, Kind::Sandboxed] {
        let Some(rt) = shared_runtime(kind) else {
            continue;
        };
        let model = rt
            .load(&rt.verify(signed.clone(), &p.policy()).unwrap())
            .unwrap();
        let prediction = model
            .predict(Input::Tensors(inputs.clone()))
            .unwrap_or_else(|e| panic!("{name} on {kind:?}: {e}"));
        for o in outputs {
            let got = prediction
                .output(o)
                .unwrap_or_else(|| panic!("{name}: no output {o}"));
            let (shape, expected) = npy_f32(&format!("exported/{name}.out.{o}.npy"));
            assert_eq!(got.shape, shape, "{name} on {kind:?}: shape of {o}");
            assert_close(
                &got.to_f32().unwrap(),
                &expected,
                &format!("{name} on {kind:?}: {o}"),
            );
        }
    }
}

#[test]
fn symbolic_dimensions_feeding_squeeze_and_reshape_pack_with_input_shape() {
    runs_everywhere(
        "symbolic_squeeze",
        &["--input-shape", "x=1,1,16"],
        &["x"],
        &["y"],
    );
}

#[test]
fn if_on_a_scalar_input_folds_away_with_constant() {
    runs_everywhere("if_mode", &["--constant", "mode=1"], &["x"], &["y"]);
}

#[test]
fn if_folds_to_its_else_branch_too() {
    // mode=0 takes the else branch (y = -x, shape 1x8).
    let tmp = tempfile::tempdir().unwrap();
    let out = pack_exported(tmp.path(), "if_mode", &["--constant", "mode=0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = Publisher::new();
    let signed = p.sign(&read(tmp.path().join("if_mode.wasm")));
    let x = npy_any("x", "exported/if_mode.in.x.npy");
    let (_, xs) = npy_f32("exported/if_mode.in.x.npy");
    let negated: Vec<f32> = xs.iter().map(|v| -v).collect();
    for kind in [Kind::Tract, Kind::OnnxRuntime] {
        let Some(rt) = shared_runtime(kind) else {
            continue;
        };
        let model = rt
            .load(&rt.verify(signed.clone(), &p.policy()).unwrap())
            .unwrap();
        let y = model.predict(Input::Tensors(vec![x.clone()])).unwrap();
        let y = y.output("y").unwrap();
        assert_eq!(y.shape, vec![1, 8], "{kind:?}");
        assert_close(&y.to_f32().unwrap(), &negated, &format!("{kind:?}"));
    }
}

#[test]
fn int64_scalar_input_runs_on_every_backend() {
    runs_everywhere("int64_scalar", &[], &["x", "sample_rate"], &["y"]);
}

#[test]
fn half_precision_weights_run_on_every_backend() {
    runs_everywhere("fp16_weights", &[], &["x"], &["y"]);
}

#[test]
fn pack_refuses_a_model_tract_cannot_plan_naming_the_node_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, node) in [
        ("symbolic_squeeze", "squeeze_channel"),
        ("if_mode", "branch_on_mode"),
    ] {
        let out = pack_exported(tmp.path(), name, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(
            err.contains(node),
            "{name}: the error names node {node}: {err}"
        );
        assert!(err.contains("--input-shape NAME=DIMS"), "{err}");
        assert!(!tmp.path().join(format!("{name}.wasm")).exists());
    }
    // --no-check packs it anyway, for a bundle meant for onnxruntime only.
    let out = pack_exported(tmp.path(), "symbolic_squeeze", &["--no-check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pack_refuses_specialisations_that_do_not_fit_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, expected) in [
        (["--input-shape", "nope=1"], "has no input `nope`"),
        (["--input-shape", "x=1,16"], "has rank 3"),
        (["--input-shape", "x=1,0,16"], "is not a positive integer"),
        (["--constant", "x=1"], "symbolic dimension"),
    ] {
        let out = pack_exported(tmp.path(), "symbolic_squeeze", &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
    for (extra, expected) in [
        (["--constant", "mode=1,2"], "takes 1 value(s), 2 given"),
        (["--constant", "mode=1.5"], "1.5 is not a 64-bit integer"),
    ] {
        let out = pack_exported(tmp.path(), "if_mode", &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
}
