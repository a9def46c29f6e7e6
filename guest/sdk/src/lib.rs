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
/// slice; NaNs are skipped by the minimum and maximum). Over 4096 values, an
/// even stride of at most 4096 of them is used, so monitoring stays cheap
/// next to inference on large inputs.
pub fn stats(v: &[f32]) -> [f32; 4] {
    let mut acc = Stats::default();
    for &x in v.iter().step_by(stats_step(v.len())) {
        acc.push(x);
    }
    acc.finish()
}

/// Most values [`stats`] looks at.
pub(crate) const STATS_SAMPLE: usize = 4096;

pub(crate) fn stats_step(len: usize) -> usize {
    len.div_ceil(STATS_SAMPLE).max(1)
}

/// Running mean, variance, minimum and maximum.
///
/// The minimum and maximum are plain comparisons, not `f32::min`/`max`:
/// those compile to calls into libm's `fminf`/`fmaxf` on wasm32 (their NaN
/// rule differs from `f32.min`), and were the largest part of a prediction's
/// cost outside inference on small models.
pub(crate) struct Stats {
    n: f64,
    sum: f64,
    sq: f64,
    min: f32,
    max: f32,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            n: 0.0,
            sum: 0.0,
            sq: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }
}

impl Stats {
    #[inline(always)]
    pub(crate) fn push(&mut self, x: f32) {
        let d = x as f64;
        self.n += 1.0;
        self.sum += d;
        self.sq += d * d;
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
    }

    /// 64 little-endian `f32` values in 16 lanes, summed in `f32` within
    /// the block and in `f64` across blocks; written so that the compiler
    /// can keep the lanes in SIMD registers (simd128).
    #[inline(always)]
    pub(crate) fn push_block(&mut self, block: &[u8; 256]) {
        let mut sum = [0f32; 16];
        let mut sq = [0f32; 16];
        let mut lo = [f32::INFINITY; 16];
        let mut hi = [f32::NEG_INFINITY; 16];
        for row in block.chunks_exact(64) {
            for l in 0..16 {
                let x = f32::from_le_bytes([
                    row[4 * l],
                    row[4 * l + 1],
                    row[4 * l + 2],
                    row[4 * l + 3],
                ]);
                sum[l] += x;
                sq[l] += x * x;
                lo[l] = if x < lo[l] { x } else { lo[l] };
                hi[l] = if x > hi[l] { x } else { hi[l] };
            }
        }
        self.n += 64.0;
        for l in 0..16 {
            self.sum += sum[l] as f64;
            self.sq += sq[l] as f64;
            if lo[l] < self.min {
                self.min = lo[l];
            }
            if hi[l] > self.max {
                self.max = hi[l];
            }
        }
    }

    pub(crate) fn finish(self) -> [f32; 4] {
        if self.n == 0.0 {
            return [0.0; 4];
        }
        let mean = self.sum / self.n;
        let var = (self.sq / self.n - mean * mean).max(0.0);
        [mean as f32, var.sqrt() as f32, self.min, self.max]
    }
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
