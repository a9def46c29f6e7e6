//! Bad input gets a typed error that says what was wrong; the model keeps
//! serving afterwards.

use crate::common::*;
use edgeml_runtime::{Dtype, Error, Input, Tensor};

fn good_digits() -> Input {
    Input::Tensors(vec![Tensor::from_f32("X", vec![1, 64], &[0.5; 64])])
}

#[test]
fn rejects_unknown_input_name() {
    let rt = runtime();
    let (_, model) = load(&DIGITS_GENERIC, &rt);
    let err = model
        .predict(Input::Tensors(vec![Tensor::from_f32(
            "pixels",
            vec![1, 64],
            &[0.0; 64],
        )]))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("unknown input `pixels`") && m.contains("\"X\"")),
        "{err}"
    );
    model.predict(good_digits()).expect("still serving");
}

#[test]
fn rejects_wrong_shape() {
    let rt = runtime();
    let (_, model) = load(&DIGITS_GENERIC, &rt);
    let err = model
        .predict(Input::Tensors(vec![Tensor::from_f32(
            "X",
            vec![1, 63],
            &[0.0; 63],
        )]))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("dimension 1 is 63, expected 64")),
        "{err}"
    );
    let err = model
        .predict(Input::Tensors(vec![Tensor::from_f32(
            "X",
            vec![64],
            &[0.0; 64],
        )]))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("rank 1")),
        "{err}"
    );
    model.predict(good_digits()).expect("still serving");
}

#[test]
fn rejects_wrong_dtype() {
    let rt = runtime();
    let (_, model) = load(&DIGITS_GENERIC, &rt);
    let t = Tensor {
        name: "X".into(),
        dtype: Dtype::I64,
        shape: vec![1, 64],
        data: vec![0; 64 * 8],
    };
    let err = model.predict(Input::Tensors(vec![t])).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("is i64, the model expects f32")),
        "{err}"
    );
}

#[test]
fn rejects_data_length_not_matching_shape() {
    let rt = runtime();
    let (_, model) = load(&DIGITS_GENERIC, &rt);
    let t = Tensor {
        name: "X".into(),
        dtype: Dtype::F32,
        shape: vec![2, 64],
        data: vec![0; 64 * 4],
    };
    let err = model.predict(Input::Tensors(vec![t])).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("needs 512")),
        "{err}"
    );
}

#[test]
fn rejects_missing_input() {
    let rt = runtime();
    let (_, model) = load(&VAD, &rt);
    let err = model
        .predict(Input::Tensors(vec![Tensor::from_f32(
            "input",
            vec![1, 576],
            &[0.0; 576],
        )]))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("missing input `state`")),
        "{err}"
    );
}

#[test]
fn rejects_corrupt_png() {
    let rt = runtime();
    let (_, model) = load(&DIGITS_IMAGE, &rt);
    let mut png = read(model_path("digits/holdout/000.png"));
    let mid = png.len() / 2;
    png.truncate(mid);
    let err = model.predict(media("image/png", png)).unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
    let err = model
        .predict(media("image/png", b"not a png at all".to_vec()))
        .unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
    // The same instance pool keeps serving.
    let ok = model
        .predict(media(
            "image/png",
            read(model_path("digits/holdout/000.png")),
        ))
        .unwrap();
    assert!(ok.scores.is_some());
}

#[test]
fn rejects_unsupported_media_type() {
    let rt = runtime();
    let (_, model) = load(&DIGITS_IMAGE, &rt);
    let err = model
        .predict(media("audio/wav", read(model_path("vad/speech.wav"))))
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedMedia(ref m) if m.contains("audio/wav")),
        "{err:?}"
    );
}

#[test]
fn rejects_corrupt_wav() {
    let rt = runtime();
    let (_, model) = load(&VAD, &rt);
    let err = model
        .predict(media("audio/wav", b"RIFF\x10\0\0\0WAVEjunk".to_vec()))
        .unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
}

#[test]
fn rejects_wav_with_wrong_sample_rate() {
    let rt = runtime();
    let (_, model) = load(&VAD, &rt);
    let mut wav = read(model_path("vad/speech.wav"));
    // Patch the fmt chunk's sample rate (bytes 24..28) to 44100 Hz, and the
    // byte rate after it to match, so the header stays consistent.
    wav[24..28].copy_from_slice(&44100u32.to_le_bytes());
    wav[28..32].copy_from_slice(&(44100u32 * 2).to_le_bytes());
    let err = model.predict(media("audio/wav", wav)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("44100 Hz") && m.contains("sox")),
        "{err:?}"
    );
}

#[test]
fn rejects_malformed_json_input() {
    let rt = runtime();
    let (_, model) = load(&DIGITS_GENERIC, &rt);
    let err = model
        .predict(media(
            "application/json",
            b"{\"X\": [[1, 2], [3]]}".to_vec(),
        ))
        .unwrap_err();
    assert!(
        matches!(err, Error::Decode(ref m) if m.contains("ragged")),
        "{err:?}"
    );
    let err = model
        .predict(media("application/json", b"{\"Y\": [1]}".to_vec()))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("unknown input `Y`")),
        "{err:?}"
    );
}

/// Random and mutated PNG and WAV bytes through the image and voice
/// components: a typed error (or a prediction, for a mutation the decoder
/// tolerates), never a panic in the host, and the model serves the next
/// real input. The decoders run inside the guest, so a decoder panic would
/// surface as `Error::Trap`; that is refused too: they must return errors.
#[test]
fn random_media_gets_a_typed_error() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PtConfig, TestRunner};
    let rt = runtime();
    let (_, image) = load(&DIGITS_IMAGE, &rt);
    let (_, voice) = load(&VAD, &rt);
    let png = read(model_path("digits/holdout/000.png"));
    let wav = read(model_path("vad/speech.wav"));
    let mut runner = TestRunner::new(PtConfig::with_cases(64));
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
    );
    runner
        .run(&strategy, |(noise, flips, cut)| {
            for (model, media_type, good) in
                [(&image, "image/png", &png), (&voice, "audio/wav", &wav)]
            {
                // Noise, and a real file with bytes flipped and cut short.
                let mut mutated = good.clone();
                for (i, x) in &flips {
                    let at = i.index(mutated.len());
                    mutated[at] ^= x;
                }
                mutated.truncate(cut.index(mutated.len() + 1));
                for bytes in [noise.clone(), mutated] {
                    match model.predict(media(media_type, bytes)) {
                        Ok(_) | Err(Error::Decode(_)) | Err(Error::InvalidInput(_)) => {}
                        Err(e) => return Err(TestCaseError::fail(format!("{media_type}: {e:?}"))),
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    model_still_serves(&image, &png);
}

fn model_still_serves(model: &edgeml_runtime::Model, png: &[u8]) {
    let p = model.predict(media("image/png", png.to_vec())).unwrap();
    assert_eq!(p.scores.unwrap()[0].label, "7");
}
