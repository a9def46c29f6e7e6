//! Guest SDK for edgeml model components.
//!
//! A model component implements [`Guest`] (two functions: `metadata` and
//! `predict`) and calls [`export!`]. The SDK gives it:
//!
//! - the bundle's signed [`Manifest`] ([`manifest()`]), with its IO schema,
//!   labels and the component's preprocessing parameters;
//! - inference through `wasi:nn` ([`compute`]), on the model the host loaded
//!   from the bundle's signed model section;
//! - tensor helpers ([`tensor`]) and classifier helpers ([`top_k`], [`stats`]).
//!
//! ```ignore
//! use edgeml_guest::{Guest, Input, Prediction, Error, Metadata};
//! struct Echo;
//! impl Guest for Echo {
//!     fn metadata() -> Result<Metadata, Error> { edgeml_guest::metadata("echo@0.1.0", &[], &[]) }
//!     fn predict(input: Input) -> Result<Prediction, Error> {
//!         let Input::Tensors(t) = input else { return Err(Error::UnsupportedMedia("tensors only".into())) };
//!         Ok(Prediction { outputs: edgeml_guest::compute(t)?, scores: None, monitoring: vec![] })
//!     }
//! }
//! edgeml_guest::export!(Echo);
//! ```

#![deny(missing_docs)]

/// Bindings generated from `wit/` (the `edgeml:model/model` world and `wasi:nn`).
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "edgeml:model/model",
        pub_export_macro: true,
        default_bindings_module: "edgeml_guest::bindings",
        generate_all,
    });
}

mod manifest;
mod nn;
pub mod tensor;

pub use bindings::edgeml::model::types::{
    Dim, Dtype, Error, Input, Media, Metadata, Prediction, ScoredLabel, Tensor, TensorSpec,
};
pub use bindings::{export, Guest};
pub use manifest::{manifest, Manifest};
pub use nn::compute;

/// Build the component's [`Metadata`] from the manifest plus what the
/// component itself declares: its own name@version, the media types it
/// decodes, and the names of its monitoring features.
pub fn metadata(
    component: &str,
    media_types: &[&str],
    monitoring: &[&str],
) -> Result<Metadata, Error> {
    let m = manifest()?;
    Ok(Metadata {
        name: m.name.clone(),
        version: m.version.clone(),
        component: component.to_string(),
        inputs: m.inputs.iter().map(|s| s.to_wit()).collect(),
        outputs: m.outputs.iter().map(|s| s.to_wit()).collect(),
        labels: m.labels.clone(),
        media_types: media_types.iter().map(|s| s.to_string()).collect(),
        monitoring_features: monitoring.iter().map(|s| s.to_string()).collect(),
    })
}

/// The `k` best scores, best first, labelled from `labels` (the index is used
/// as label when `labels` is shorter than `scores`). NaN scores sort last.
pub fn top_k(scores: &[f32], labels: &[String], k: usize) -> Vec<ScoredLabel> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
    });
    idx.into_iter()
        .take(k)
        .map(|i| ScoredLabel {
            index: i as u32,
            label: labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
            score: scores[i],
        })
        .collect()
}

/// Numerically stable softmax.
pub fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = v.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Mean, standard deviation, minimum and maximum of `v` (all 0 for an empty
/// slice). Over 4096 values, an even stride of at most 4096 of them is used,
/// so monitoring stays cheap next to inference on large inputs.
pub fn stats(v: &[f32]) -> [f32; 4] {
    const SAMPLE: usize = 4096;
    if v.is_empty() {
        return [0.0; 4];
    }
    let step = v.len().div_ceil(SAMPLE);
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in v.iter().step_by(step) {
        n += 1.0;
        sum += x as f64;
        sq += (x as f64) * (x as f64);
        min = min.min(x);
        max = max.max(x);
    }
    let mean = sum / n;
    let var = (sq / n - mean * mean).max(0.0);
    [mean as f32, var.sqrt() as f32, min, max]
}

/// Shannon entropy (nats) of a probability vector; a low-confidence signal.
pub fn entropy(p: &[f32]) -> f32 {
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f32>()
}

/// The best labels (best first) and the full score vector they came from.
pub type LabelScores = (Vec<ScoredLabel>, Vec<f32>);

/// Classifier scores: the first row of the output called `scores_output`
/// (or, when `None`, of the first `f32` output whose last dimension equals the
/// number of labels), optionally softmaxed, with its `k` best labels.
/// Returns `None` when the manifest has no labels.
pub fn label_scores(
    outputs: &[Tensor],
    scores_output: Option<&str>,
    k: usize,
    apply_softmax: bool,
) -> Result<Option<LabelScores>, Error> {
    let labels = &manifest()?.labels;
    if labels.is_empty() {
        return Ok(None);
    }
    let t = match scores_output {
        Some(name) => tensor::find(outputs, name)?,
        None => match outputs
            .iter()
            .find(|t| t.dtype == Dtype::F32 && t.shape.last().copied() == Some(labels.len() as u64))
        {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    let all = tensor::to_f32(t)?;
    let row: Vec<f32> = all.into_iter().take(labels.len()).collect();
    let probs = if apply_softmax { softmax(&row) } else { row };
    Ok(Some((top_k(&probs, labels, k), probs)))
}
