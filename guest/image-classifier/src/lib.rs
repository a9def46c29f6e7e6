//! The image-classifier component: decodes PNG or JPEG inside the sandbox,
//! converts, resizes and normalises as the manifest says, runs the model and
//! returns its top-k labels.
//!
//! Preprocessing parameters (manifest `preprocessing`):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `width`, `height` | model input size; images are resized to it | required |
//! | `color` | `gray` or `rgb` | `rgb` |
//! | `layout` | `nchw`, `nhwc` or `flat` (one row of h*w*c values) | `nchw` |
//! | `scale` | multiplies each 0..255 pixel first | `1/255` |
//! | `mean`, `std` | per channel (or one value for all): `(px*scale - mean) / std` | `0`, `1` |
//! | `input` | model input to feed | the manifest's first input |
//! | `scores_output` | output holding class scores | first f32 output sized like the labels |
//! | `softmax` | apply softmax to the scores | `false` |
//! | `top_k` | labels returned | `5` |
//! | `max_pixels` | refuse larger images before decoding them | `16777216` |
//!
//! Monitoring features: mean, std, min and max of the normalised input,
//! the top-1 score, and the entropy of the scores.

use edgeml_guest::{tensor, Error, Guest, Input, Metadata, Prediction};
use image::{imageops::FilterType, ImageFormat, ImageReader};
use std::io::Cursor;

struct ImageClassifier;

#[derive(serde::Deserialize)]
struct Params {
    width: u32,
    height: u32,
    #[serde(default = "default_color")]
    color: String,
    #[serde(default = "default_layout")]
    layout: String,
    #[serde(default = "default_scale")]
    scale: f32,
    #[serde(default)]
    mean: Vec<f32>,
    #[serde(default)]
    std: Vec<f32>,
    input: Option<String>,
    scores_output: Option<String>,
    #[serde(default)]
    softmax: bool,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default = "default_max_pixels")]
    max_pixels: u64,
}

fn default_color() -> String {
    "rgb".into()
}
fn default_layout() -> String {
    "nchw".into()
}
fn default_scale() -> f32 {
    1.0 / 255.0
}
fn default_top_k() -> usize {
    5
}
fn default_max_pixels() -> u64 {
    16 << 20
}

const MONITORING: [&str; 6] = [
    "pixel.mean",
    "pixel.std",
    "pixel.min",
    "pixel.max",
    "top1.score",
    "scores.entropy",
];

impl Guest for ImageClassifier {
    fn metadata() -> Result<Metadata, Error> {
        edgeml_guest::metadata(
            concat!("edgeml-image-classifier@", env!("CARGO_PKG_VERSION")),
            &["image/png", "image/jpeg"],
            &MONITORING,
        )
    }

    fn predict(input: Input) -> Result<Prediction, Error> {
        let m = edgeml_guest::manifest()?;
        let p: Params = m.preprocessing()?;
        let inputs = match input {
            // Already-preprocessed tensors go straight to the model.
            Input::Tensors(t) => t,
            Input::Media(media) => {
                let format = match media.media_type.as_str() {
                    "image/png" => ImageFormat::Png,
                    "image/jpeg" | "image/jpg" => ImageFormat::Jpeg,
                    other => {
                        return Err(Error::UnsupportedMedia(format!(
                            "the image classifier takes image/png or image/jpeg, not {other}"
                        )))
                    }
                };
                vec![preprocess(&media.bytes, format, &p)?]
            }
        };
        let mut monitoring = tensor::stats(&inputs[0])?.to_vec();
        let outputs = edgeml_guest::compute(inputs)?;
        let scored =
            edgeml_guest::label_scores(&outputs, p.scores_output.as_deref(), p.top_k, p.softmax)?;
        let (top1, entropy) = match &scored {
            Some((top, probs)) => (
                top.first().map_or(0.0, |s| s.score),
                edgeml_guest::entropy(probs),
            ),
            None => (0.0, 0.0),
        };
        monitoring.extend([top1, entropy]);
        Ok(Prediction {
            outputs,
            scores: scored.map(|(top, _)| top),
            monitoring,
        })
    }
}

fn preprocess(
    bytes: &[u8],
    format: ImageFormat,
    p: &Params,
) -> Result<edgeml_guest::Tensor, Error> {
    let m = edgeml_guest::manifest()?;
    let channels: usize = match p.color.as_str() {
        "gray" => 1,
        "rgb" => 3,
        other => {
            return Err(Error::Config(format!(
                "color must be `gray` or `rgb`, not `{other}`"
            )))
        }
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(p.max_pixels.saturating_mul(4));
    reader.limits(limits);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::Decode(format!("{format:?} image: {e}")))?;
    if u64::from(w) * u64::from(h) > p.max_pixels {
        return Err(Error::InvalidInput(format!(
            "image is {w}x{h}, over the {} pixel limit",
            p.max_pixels
        )));
    }
    let img = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| Error::Decode(format!("{format:?} image: {e}")))?;
    let img = if img.width() != p.width || img.height() != p.height {
        img.resize_exact(p.width, p.height, FilterType::Triangle)
    } else {
        img
    };
    let raw: Vec<u8> = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    let per_channel = |v: &[f32], default: f32, c: usize| match v.len() {
        0 => default,
        1 => v[0],
        _ => v.get(c).copied().unwrap_or(default),
    };
    let (w, h) = (p.width as usize, p.height as usize);
    let mut values = vec![0f32; w * h * channels];
    for y in 0..h {
        for x in 0..w {
            for c in 0..channels {
                let px = raw[(y * w + x) * channels + c] as f32;
                let v = (px * p.scale - per_channel(&p.mean, 0.0, c)) / per_channel(&p.std, 1.0, c);
                let idx = match p.layout.as_str() {
                    "nchw" => c * h * w + y * w + x,
                    "nhwc" | "flat" => (y * w + x) * channels + c,
                    other => {
                        return Err(Error::Config(format!(
                            "layout must be nchw, nhwc or flat, not `{other}`"
                        )))
                    }
                };
                values[idx] = v;
            }
        }
    }
    let spec = match &p.input {
        Some(name) => m.inputs.iter().find(|s| &s.name == name),
        None => m.inputs.first(),
    }
    .ok_or_else(|| {
        Error::Config("the manifest names no model input to feed the image to".into())
    })?;
    let shape = spec.concrete_shape(1);
    let count: u64 = shape.iter().product();
    if count != values.len() as u64 {
        return Err(Error::Config(format!(
            "input `{}` has shape {shape:?} ({count} values) but preprocessing makes {w}x{h}x{channels} = {}",
            spec.name,
            values.len()
        )));
    }
    Ok(tensor::from_f32(&spec.name, shape, &values))
}

edgeml_guest::export!(ImageClassifier);
