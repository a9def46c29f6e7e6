//! The three real models, end to end through signed bundles, against
//! reference outputs computed once by onnxruntime (models/build_models.py).
//! Every test runs on every backend: tract, onnxruntime, and tract compiled
//! to WebAssembly in its own sandbox.

use crate::common::*;
use edgeml_runtime::{Input, Runtime, Tensor};

fn digits_tensor_path_matches_onnxruntime(rt: &Runtime) {
    let (_, model) = load(&DIGITS_GENERIC, rt);
    let input = npy_tensor("X", "digits/ref_input.npy");
    let p = model.predict(Input::Tensors(vec![input])).unwrap();
    let probs = p.output("probabilities").expect("probabilities output");
    assert_eq!(probs.shape, vec![16, 10]);
    let (_, expected) = npy_f32("digits/ref_probabilities.npy");
    assert_close(&probs.to_f32().unwrap(), &expected, "digits probabilities");
    let labels = p.output("label").expect("label output").to_f32().unwrap();
    let bytes = read(model_path("digits/ref_label.npy"));
    let expected_labels = npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<i64>()
        .unwrap();
    assert_eq!(
        labels,
        expected_labels
            .iter()
            .map(|&l| l as f32)
            .collect::<Vec<_>>()
    );
    // The generic component labels the first row.
    let top = &p.scores.as_ref().expect("labelled scores")[0];
    assert_eq!(top.label, expected_labels[0].to_string());
}

fn digits_png_accuracy_on_held_out_digits_is_at_least_95_percent(rt: &Runtime) {
    let (_, model) = load(&DIGITS_IMAGE, rt);
    assert_eq!(
        model.metadata().media_types,
        vec!["image/png", "image/jpeg"]
    );
    let dir = model_path("digits/holdout");
    let labels: std::collections::BTreeMap<String, u32> =
        serde_json::from_slice(&read(dir.join("labels.json"))).unwrap();
    assert!(
        labels.len() >= 300,
        "held-out set too small: {}",
        labels.len()
    );
    let mut correct = 0;
    for (file, &label) in &labels {
        let p = model
            .predict(media("image/png", read(dir.join(file))))
            .unwrap();
        let scores = p.scores.expect("top-k labels");
        assert_eq!(scores.len(), 3);
        assert!(
            scores.windows(2).all(|w| w[0].score >= w[1].score),
            "scores sorted best first"
        );
        if scores[0].index == label {
            correct += 1;
        }
        assert_eq!(
            p.monitoring.len(),
            model.metadata().monitoring_features.len()
        );
    }
    let accuracy = correct as f64 / labels.len() as f64;
    println!(
        "digits accuracy through PNG: {accuracy:.4} ({correct}/{})",
        labels.len()
    );
    assert!(accuracy >= 0.95, "accuracy {accuracy:.4} < 0.95");
}

fn digits_jpeg_path_converts_resizes_and_classifies(rt: &Runtime) {
    // 64x64 RGB JPEGs: decoded, converted to gray and resized to 8x8 in the sandbox.
    let (_, model) = load(&DIGITS_IMAGE, rt);
    let dir = model_path("digits/jpeg");
    let labels: std::collections::BTreeMap<String, u32> =
        serde_json::from_slice(&read(dir.join("labels.json"))).unwrap();
    let correct = labels
        .iter()
        .filter(|(file, &label)| {
            let p = model
                .predict(media("image/jpeg", read(dir.join(file.as_str()))))
                .unwrap();
            p.scores.unwrap()[0].index == label
        })
        .count();
    assert!(
        correct >= 9,
        "only {correct}/10 JPEG digits classified correctly"
    );
}

fn squeezenet_matches_onnxruntime(rt: &Runtime) {
    let (_, model) = load(&SQUEEZENET, rt);
    assert_eq!(model.manifest().inputs.len(), 1, "weights are not inputs");
    let input = npy_tensor("data_0", "squeezenet/ref_input.npy");
    let p = model.predict(Input::Tensors(vec![input])).unwrap();
    let out = p.output("softmaxout_1").expect("softmaxout_1");
    assert_eq!(out.shape, vec![1, 1000, 1, 1]);
    let (_, expected) = npy_f32("squeezenet/ref_output.npy");
    assert_close(&out.to_f32().unwrap(), &expected, "squeezenet softmax");
}

fn sensor_matches_onnxruntime_and_reports_channel_means(rt: &Runtime) {
    let (_, model) = load(&SENSOR, rt);
    let name = model.manifest().inputs[0].name.clone();
    let input = npy_tensor(&name, "sensor/ref_input.npy");
    let (_, rows) = npy_f32("sensor/ref_input.npy");
    let p = model.predict(Input::Tensors(vec![input])).unwrap();
    let probs = p.output("probabilities").expect("probabilities output");
    assert_eq!(probs.shape, vec![16, 3]);
    let (_, expected) = npy_f32("sensor/ref_probabilities.npy");
    assert_close(&probs.to_f32().unwrap(), &expected, "sensor probabilities");
    // The first six monitoring features are the named channels' means over the rows.
    let features = &model.metadata().monitoring_features;
    assert_eq!(features[0], "temperature_c");
    assert_eq!(features[5], "acoustic_db");
    for (c, name) in features.iter().take(6).enumerate() {
        let mean = rows.iter().skip(c).step_by(6).sum::<f32>() / 16.0;
        assert!(
            (p.monitoring[c] - mean).abs() < 1e-3 * mean.abs().max(1.0),
            "{name}"
        );
    }
    // Then mean, std, min and max of the whole input, read in place by the guest.
    assert_eq!(
        features[6..10],
        [".mean", ".std", ".min", ".max"].map(|k| format!("{name}{k}"))
    );
    let n = rows.len() as f64;
    let mean = rows.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (rows.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = rows.iter().copied().fold(f32::INFINITY, f32::min);
    let max = rows.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (got, want, what) in [
        (p.monitoring[6], mean as f32, "mean"),
        (p.monitoring[7], std as f32, "std"),
        (p.monitoring[8], min, "min"),
        (p.monitoring[9], max, "max"),
    ] {
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1.0),
            "{what}: {got} != {want}"
        );
    }
}

fn vad_single_frame_matches_onnxruntime(rt: &Runtime) {
    let (_, model) = load(&VAD, rt);
    let input = npy_tensor("input", "vad/ref_frame_input.npy");
    let state = npy_tensor("state", "vad/ref_frame_state.npy");
    let p = model.predict(Input::Tensors(vec![input, state])).unwrap();
    let (_, out) = npy_f32("vad/ref_frame_output.npy");
    let (_, state_n) = npy_f32("vad/ref_frame_stateN.npy");
    assert_close(
        &p.output("output").unwrap().to_f32().unwrap(),
        &out,
        "vad output",
    );
    assert_close(
        &p.output("stateN").unwrap().to_f32().unwrap(),
        &state_n,
        "vad stateN",
    );
}

fn vad_wav_probabilities_match_onnxruntime_and_find_the_speech(rt: &Runtime) {
    let (_, model) = load(&VAD, rt);
    let p = model
        .predict(media("audio/wav", read(model_path("vad/speech.wav"))))
        .unwrap();
    let probs = p.output("probs").unwrap().to_f32().unwrap();
    let (_, expected) = npy_f32("vad/ref_probs.npy");
    // The guest zero-pads a last, partial frame that the reference skips.
    assert!(probs.len() == expected.len() || probs.len() == expected.len() + 1);
    // State is carried over ~250 frames; allow the recurrent error to accumulate a little.
    for (i, (a, b)) in probs.iter().zip(&expected).enumerate() {
        assert!((a - b).abs() <= 1e-3, "frame {i}: {a} vs onnxruntime {b}");
    }
    let segments = p.output("segments").unwrap();
    let seg = segments.to_f32().unwrap();
    let truth: serde_json::Value =
        serde_json::from_slice(&read(model_path("vad/speech_segments.json"))).unwrap();
    let truth: Vec<(f32, f32)> = truth["speech_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_f64().unwrap() as f32, s[1].as_f64().unwrap() as f32))
        .collect();
    assert_eq!(segments.shape[1], 2);
    // At least 80% of each spoken phrase is inside detected segments, and
    // less than 0.3 s of detected speech lies in the silences.
    let overlap = |a: f32, b: f32| {
        seg.chunks(2)
            .map(|s| (s[1].min(b) - s[0].max(a)).max(0.0))
            .sum::<f32>()
    };
    for &(start, end) in &truth {
        let covered = overlap(start, end);
        assert!(
            covered >= 0.8 * (end - start),
            "speech {start}-{end} s: only {covered} s found in {seg:?}"
        );
    }
    let detected: f32 = seg.chunks(2).map(|s| s[1] - s[0]).sum();
    let in_speech: f32 = truth.iter().map(|&(a, b)| overlap(a, b)).sum();
    assert!(
        detected - in_speech < 0.3,
        "{} s of speech detected in silence: {seg:?}",
        detected - in_speech
    );
    // Monitoring: rms dBFS, speech fraction, mean prob, duration.
    assert_eq!(
        model.metadata().monitoring_features,
        vec!["rms.dbfs", "speech.fraction", "prob.mean", "duration.s"]
    );
    assert!(
        (p.monitoring[3] - 7.28).abs() < 0.1,
        "duration {}",
        p.monitoring[3]
    );
    assert!(
        p.monitoring[1] > 0.3 && p.monitoring[1] < 0.9,
        "speech fraction {}",
        p.monitoring[1]
    );
}

fn symbolic_batch_dimension_takes_its_size_from_the_tensor(rt: &Runtime) {
    let (_, model) = load(&DIGITS_GENERIC, rt);
    for batch in [1u64, 3, 7] {
        let x = Tensor::from_f32("X", vec![batch, 64], &vec![0.25; batch as usize * 64]);
        let p = model.predict(Input::Tensors(vec![x])).unwrap();
        assert_eq!(p.output("probabilities").unwrap().shape, vec![batch, 10]);
    }
}

fn generic_component_takes_json_input(rt: &Runtime) {
    let (_, model) = load(&DIGITS_GENERIC, rt);
    let (_, x) = npy_f32("digits/ref_input.npy");
    let rows: Vec<Vec<f32>> = x.chunks(64).take(2).map(|r| r.to_vec()).collect();
    let json = serde_json::to_vec(&serde_json::json!({ "X": rows })).unwrap();
    let p = model.predict(media("application/json", json)).unwrap();
    let (_, expected) = npy_f32("digits/ref_probabilities.npy");
    assert_close(
        &p.output("probabilities").unwrap().to_f32().unwrap(),
        &expected[..20],
        "json path",
    );
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod tract {
            use crate::common::{shared_runtime, Kind};
            $(#[test] fn $name() { super::$name(&shared_runtime(Kind::Tract).unwrap()) })*
        }
        mod onnxruntime {
            use crate::common::{shared_runtime, Kind};
            $(#[test] fn $name() {
                if let Some(rt) = shared_runtime(Kind::OnnxRuntime) {
                    assert_eq!(rt.backend(), "onnxruntime");
                    super::$name(&rt)
                }
            })*
        }
        mod sandboxed {
            use crate::common::{shared_runtime, Kind};
            $(#[test] fn $name() { super::$name(&shared_runtime(Kind::Sandboxed).unwrap()) })*
        }
    };
}

on_every_backend!(
    digits_jpeg_path_converts_resizes_and_classifies,
    digits_tensor_path_matches_onnxruntime,
    digits_png_accuracy_on_held_out_digits_is_at_least_95_percent,
    squeezenet_matches_onnxruntime,
    sensor_matches_onnxruntime_and_reports_channel_means,
    vad_single_frame_matches_onnxruntime,
    vad_wav_probabilities_match_onnxruntime_and_find_the_speech,
    symbolic_batch_dimension_takes_its_size_from_the_tensor,
    generic_component_takes_json_input,
);

#[test]
fn every_backend_gives_the_same_outputs_on_every_model() {
    let tract = shared_runtime(Kind::Tract).unwrap();
    let mut others = vec![shared_runtime(Kind::Sandboxed).unwrap()];
    others.extend(shared_runtime(Kind::OnnxRuntime));
    let cases: [(&Spec, Vec<Tensor>); 3] = [
        (
            &DIGITS_GENERIC,
            vec![npy_tensor("X", "digits/ref_input.npy")],
        ),
        (
            &SQUEEZENET,
            vec![npy_tensor("data_0", "squeezenet/ref_input.npy")],
        ),
        (
            &VAD,
            vec![
                npy_tensor("input", "vad/ref_frame_input.npy"),
                npy_tensor("state", "vad/ref_frame_state.npy"),
            ],
        ),
    ];
    for (spec, inputs) in cases {
        let (_, a) = load(spec, &tract);
        assert_eq!(a.backend(), "tract");
        let pa = a.predict(Input::Tensors(inputs.clone())).unwrap();
        for rt in &others {
            let (_, b) = load(spec, rt);
            assert_eq!(b.backend(), rt.backend());
            let pb = b.predict(Input::Tensors(inputs.clone())).unwrap();
            assert_eq!(pa.outputs.len(), pb.outputs.len());
            for (x, y) in pa.outputs.iter().zip(&pb.outputs) {
                assert_eq!((&x.name, &x.shape, x.dtype), (&y.name, &y.shape, y.dtype));
                assert_close(
                    &y.to_f32().unwrap(),
                    &x.to_f32().unwrap(),
                    &format!("{} on {}: {}", spec.name, rt.backend(), x.name),
                );
            }
        }
    }
}
