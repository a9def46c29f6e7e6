//! The voice-activity component: decodes 16 kHz mono WAV inside the sandbox,
//! frames it, carries the model's recurrent state across frames, and returns
//! per-frame speech probabilities and speech segments.
//!
//! Outputs: `probs` (f32, one per frame) and `segments` (f32, `[n, 2]`, start
//! and end in seconds). Preprocessing parameters (see models/vad/preprocess.json):
//! `sample_rate`, `frame_samples`, `context_samples`, `input`, `state_input`,
//! `output`, `state_output`, `state_shape`, `threshold`, `min_speech_ms`,
//! `min_silence_ms`, and `max_seconds` (default 600: longer audio is refused).
//!
//! Monitoring features: RMS level in dBFS, speech fraction, mean speech
//! probability, duration in seconds.

use edgeml_guest::{tensor, Error, Guest, Input, Metadata, Prediction};
use std::io::Cursor;

struct VoiceActivity;

#[derive(serde::Deserialize)]
struct Params {
    sample_rate: u32,
    frame_samples: usize,
    #[serde(default)]
    context_samples: usize,
    input: String,
    state_input: String,
    output: String,
    state_output: String,
    state_shape: Vec<u64>,
    #[serde(default = "default_threshold")]
    threshold: f32,
    #[serde(default = "default_min_speech")]
    min_speech_ms: u32,
    #[serde(default = "default_min_silence")]
    min_silence_ms: u32,
    #[serde(default = "default_max_seconds")]
    max_seconds: u32,
}

fn default_threshold() -> f32 {
    0.5
}
fn default_min_speech() -> u32 {
    250
}
fn default_min_silence() -> u32 {
    100
}
fn default_max_seconds() -> u32 {
    600
}

const MONITORING: [&str; 4] = ["rms.dbfs", "speech.fraction", "prob.mean", "duration.s"];

impl Guest for VoiceActivity {
    fn metadata() -> Result<Metadata, Error> {
        edgeml_guest::metadata(
            concat!("edgeml-voice-activity@", env!("CARGO_PKG_VERSION")),
            &["audio/wav"],
            &MONITORING,
        )
    }

    fn predict(input: Input) -> Result<Prediction, Error> {
        let p: Params = edgeml_guest::manifest()?.preprocessing()?;
        let media = match input {
            // One raw frame (plus state) goes straight to the model.
            Input::Tensors(t) => {
                let outputs = edgeml_guest::compute(t)?;
                return Ok(Prediction {
                    outputs,
                    scores: None,
                    monitoring: Vec::new(),
                });
            }
            Input::Media(m) if m.media_type == "audio/wav" || m.media_type == "audio/x-wav" => m,
            Input::Media(m) => {
                return Err(Error::UnsupportedMedia(format!(
                    "the voice-activity component takes audio/wav, not {}",
                    m.media_type
                )))
            }
        };
        let audio = decode_wav(&media.bytes, &p)?;
        let probs = run_frames(&audio, &p)?;
        let segments = segments(&probs, &p);
        let duration = audio.len() as f32 / p.sample_rate as f32;
        let rms = (audio.iter().map(|x| x * x).sum::<f32>() / audio.len().max(1) as f32).sqrt();
        let speech_frames = probs.iter().filter(|&&x| x >= p.threshold).count();
        let monitoring = vec![
            20.0 * rms.max(1e-10).log10(),
            speech_frames as f32 / probs.len().max(1) as f32,
            edgeml_guest::stats(&probs)[0],
            duration,
        ];
        let flat: Vec<f32> = segments.iter().flat_map(|s| [s.0, s.1]).collect();
        Ok(Prediction {
            outputs: vec![
                tensor::from_f32("probs", vec![probs.len() as u64], &probs),
                tensor::from_f32("segments", vec![segments.len() as u64, 2], &flat),
            ],
            scores: None,
            monitoring,
        })
    }
}

fn decode_wav(bytes: &[u8], p: &Params) -> Result<Vec<f32>, Error> {
    let reader = hound::WavReader::new(Cursor::new(bytes))
        .map_err(|e| Error::Decode(format!("WAV: {e}")))?;
    let spec = reader.spec();
    if spec.channels != 1 || spec.sample_rate != p.sample_rate {
        return Err(Error::InvalidInput(format!(
            "expected {} Hz mono WAV, got {} Hz with {} channel(s); convert it first, e.g. `sox in.wav -r {} -c 1 out.wav`",
            p.sample_rate, spec.sample_rate, spec.channels, p.sample_rate
        )));
    }
    let max = u64::from(p.max_seconds) * u64::from(p.sample_rate);
    if u64::from(reader.duration()) > max {
        return Err(Error::InvalidInput(format!(
            "audio is {} s long, over the {} s limit",
            reader.duration() / p.sample_rate,
            p.max_seconds
        )));
    }
    let samples: Result<Vec<f32>, hound::Error> = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect(),
        hound::SampleFormat::Int => {
            let full = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 / full))
                .collect()
        }
    };
    samples.map_err(|e| Error::Decode(format!("WAV samples: {e}")))
}

fn run_frames(audio: &[f32], p: &Params) -> Result<Vec<f32>, Error> {
    let (frame, ctx_len) = (p.frame_samples, p.context_samples);
    if frame == 0 {
        return Err(Error::Config("frame_samples must be positive".into()));
    }
    let state_len: u64 = p.state_shape.iter().product();
    let mut state = tensor::from_f32(
        &p.state_input,
        p.state_shape.clone(),
        &vec![0.0; state_len as usize],
    );
    let mut context = vec![0f32; ctx_len];
    let mut probs = Vec::with_capacity(audio.len() / frame + 1);
    let mut window = vec![0f32; ctx_len + frame];
    for chunk in audio.chunks(frame) {
        window[..ctx_len].copy_from_slice(&context);
        window[ctx_len..ctx_len + chunk.len()].copy_from_slice(chunk);
        window[ctx_len + chunk.len()..].fill(0.0); // zero-pad the last, short frame
        let x = tensor::from_f32(&p.input, vec![1, (ctx_len + frame) as u64], &window);
        let outputs = edgeml_guest::compute(vec![x, state])?;
        let prob = tensor::to_f32(tensor::find(&outputs, &p.output)?)?;
        probs.push(prob.first().copied().unwrap_or(0.0));
        let mut next = tensor::find(&outputs, &p.state_output)?.clone();
        next.name = p.state_input.clone();
        state = next;
        if ctx_len > 0 {
            context.copy_from_slice(&window[frame..frame + ctx_len]);
        }
    }
    Ok(probs)
}

/// Hysteresis segmentation in the style of Silero's `get_speech_timestamps`:
/// speech starts at `threshold`, ends after `min_silence_ms` below
/// `threshold - 0.15`, and segments shorter than `min_speech_ms` are dropped.
fn segments(probs: &[f32], p: &Params) -> Vec<(f32, f32)> {
    let frame_s = p.frame_samples as f32 / p.sample_rate as f32;
    let neg = (p.threshold - 0.15).max(0.01);
    let min_silence = (p.min_silence_ms as f32 / 1000.0 / frame_s).ceil() as usize;
    let min_speech = p.min_speech_ms as f32 / 1000.0;
    let mut out = Vec::new();
    let (mut start, mut silent) = (None::<usize>, 0usize);
    for (i, &pr) in probs.iter().enumerate() {
        match start {
            None if pr >= p.threshold => {
                start = Some(i);
                silent = 0;
            }
            Some(s) => {
                if pr < neg {
                    silent += 1;
                    if silent >= min_silence {
                        let end = i + 1 - silent;
                        out.push((s as f32 * frame_s, end as f32 * frame_s));
                        start = None;
                    }
                } else {
                    silent = 0;
                }
            }
            None => {}
        }
    }
    if let Some(s) = start {
        out.push((s as f32 * frame_s, (probs.len() - silent) as f32 * frame_s));
    }
    out.retain(|(a, b)| b - a >= min_speech);
    out
}

edgeml_guest::export!(VoiceActivity);
