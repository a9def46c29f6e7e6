//! Drift of a window's distributions against the bundle's baseline:
//! population stability index (PSI), Jensen-Shannon divergence and the
//! Kolmogorov-Smirnov statistic, with bands and a minimum-sample guard.
//!
//! Numeric features are compared on ten bins cut at the baseline's deciles
//! (ties merged, so a constant feature has two bins: `<= v` and `> v`);
//! categorical features on the union of categories. Empty bins and unseen
//! categories are smoothed for PSI, so no metric is ever NaN or infinite.

use crate::grid::GridCounts;
use crate::sketch::Sketch;
use edgeml_bundle::manifest::{CategoricalBaseline, NumericBaseline, BASELINE_QUANTILES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Additive smoothing for empty bins in PSI.
const EPSILON: f64 = 1e-4;

/// Which metric decides a feature's [`DriftStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Population stability index.
    #[default]
    Psi,
    /// Jensen-Shannon divergence (base 2, 0..=1).
    Js,
    /// Kolmogorov-Smirnov statistic (numeric features; categorical ones fall back to PSI).
    Ks,
}

/// Bands and guards for drift decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct DriftThresholds {
    /// The metric that decides the status.
    pub metric: Metric,
    /// Fewer observations than this in a window: `insufficient_data`, never an alert.
    pub min_samples: u64,
    /// PSI: possible drift at or above the first, drift at or above the second.
    pub psi: [f64; 2],
    /// Jensen-Shannon bands.
    pub js: [f64; 2],
    /// Kolmogorov-Smirnov bands.
    pub ks: [f64; 2],
}

impl Default for DriftThresholds {
    fn default() -> Self {
        DriftThresholds {
            metric: Metric::Psi,
            min_samples: 100,
            // The usual PSI rule of thumb.
            psi: [0.1, 0.25],
            // JS near PSI's bands for small shifts (JS ~ PSI / 5.5 in bits).
            js: [0.02, 0.05],
            ks: [0.1, 0.2],
        }
    }
}

impl DriftThresholds {
    fn band(&self, metric: Metric) -> [f64; 2] {
        match metric {
            Metric::Psi => self.psi,
            Metric::Js => self.js,
            Metric::Ks => self.ks,
        }
    }
}

/// A feature's drift verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DriftStatus {
    /// Too few observations to say.
    InsufficientData,
    /// Below the possible-drift band.
    Stable,
    /// In the possible-drift band.
    PossibleDrift,
    /// At or above the drift band.
    Drift,
}

/// Drift of one feature in one window (or merged time bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureDrift {
    /// Feature name.
    pub name: String,
    /// Observations in the window.
    pub count: u64,
    /// Population stability index.
    pub psi: f64,
    /// Jensen-Shannon divergence, base 2.
    pub js: f64,
    /// Kolmogorov-Smirnov statistic (numeric features only).
    pub ks: Option<f64>,
    /// The verdict.
    pub status: DriftStatus,
}

/// The baseline's CDF at `x`: the largest rank whose quantile is `<= x`.
fn baseline_cdf(quantiles: &[f64], x: f64) -> f64 {
    let steps = (quantiles.len().max(2) - 1) as f64;
    match quantiles.iter().rposition(|&q| q <= x) {
        Some(i) => i as f64 / steps,
        None => 0.0,
    }
}

/// Bin probabilities from CDF values at the edges (last bin is `> last edge`).
fn bins_from_cdf(cdf: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(cdf.len() + 1);
    let mut prev = 0.0;
    for &c in cdf {
        out.push((c - prev).max(0.0));
        prev = c;
    }
    out.push((1.0 - prev).max(0.0));
    out
}

fn smooth(p: &[f64]) -> Vec<f64> {
    let total: f64 = p.iter().sum::<f64>() + EPSILON * p.len() as f64;
    p.iter().map(|x| (x + EPSILON) / total).collect()
}

/// Population stability index of `actual` against `expected` (both summing to ~1).
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    let (e, a) = (smooth(expected), smooth(actual));
    e.iter()
        .zip(&a)
        .map(|(e, a)| (a - e) * (a / e).ln())
        .sum::<f64>()
        .max(0.0)
}

/// Jensen-Shannon divergence in bits (0 for identical, 1 for disjoint).
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let norm = |v: &[f64]| {
        let t: f64 = v.iter().sum();
        if t > 0.0 {
            v.iter().map(|x| x / t).collect::<Vec<_>>()
        } else {
            vec![0.0; v.len()]
        }
    };
    let (p, q) = (norm(p), norm(q));
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, m)| a * (a / m).log2())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    (0.5 * kl(&p, &m) + 0.5 * kl(&q, &m)).clamp(0.0, 1.0)
}

fn status(
    thresholds: &DriftThresholds,
    count: u64,
    psi: f64,
    js: f64,
    ks: Option<f64>,
) -> DriftStatus {
    if count < thresholds.min_samples.max(1) {
        return DriftStatus::InsufficientData;
    }
    let (metric, value) = match (thresholds.metric, ks) {
        (Metric::Psi, _) | (Metric::Ks, None) => (Metric::Psi, psi),
        (Metric::Js, _) => (Metric::Js, js),
        (Metric::Ks, Some(ks)) => (Metric::Ks, ks),
    };
    let [possible, drift] = thresholds.band(metric);
    if value >= drift {
        DriftStatus::Drift
    } else if value >= possible {
        DriftStatus::PossibleDrift
    } else {
        DriftStatus::Stable
    }
}

/// Drift of a numeric feature's window sketch against its baseline: the
/// sketch's counts on the baseline's grid, then [`grid_drift`].
pub fn numeric_drift(
    baseline: &NumericBaseline,
    window: &Sketch,
    thresholds: &DriftThresholds,
) -> FeatureDrift {
    grid_drift(
        baseline,
        &GridCounts::from_sketch(&baseline.quantiles, window),
        thresholds,
    )
}

/// Drift of a numeric feature's counts on its baseline's quantile grid.
/// PSI and JS compare the ten bins cut at the baseline's deciles; KS is the
/// largest CDF gap over the grid (1% resolution in rank).
pub fn grid_drift(
    baseline: &NumericBaseline,
    window: &GridCounts,
    thresholds: &DriftThresholds,
) -> FeatureDrift {
    let q = &baseline.quantiles;
    let count = window.count();
    let bins = window.bins();
    // Fraction of the window at or below `x`, for `x` on the grid: every
    // bin whose upper grid point is <= x.
    let window_cdf = |x: f64| -> f64 {
        let upto = q.partition_point(|&p| p <= x).min(bins.len());
        bins[..upto].iter().sum::<u64>() as f64 / count.max(1) as f64
    };
    let (psi_v, js_v, ks_v) = if count == 0 || q.len() < 2 {
        (0.0, 0.0, 0.0)
    } else {
        let mut edges: Vec<f64> = (1..10).map(|d| q[d * (q.len() - 1) / 10]).collect();
        edges.dedup();
        let expected = bins_from_cdf(
            &edges
                .iter()
                .map(|&e| baseline_cdf(q, e))
                .collect::<Vec<_>>(),
        );
        let actual = bins_from_cdf(&edges.iter().map(|&e| window_cdf(e)).collect::<Vec<_>>());
        let ks = q
            .iter()
            .map(|&x| (baseline_cdf(q, x) - window_cdf(x)).abs())
            .fold(0.0, f64::max);
        (
            psi(&expected, &actual),
            jensen_shannon(&expected, &actual),
            ks,
        )
    };
    FeatureDrift {
        name: baseline.name.clone(),
        count,
        psi: psi_v,
        js: js_v,
        ks: Some(ks_v),
        status: status(thresholds, count, psi_v, js_v, Some(ks_v)),
    }
}

/// Drift of a categorical feature's window counts against its baseline.
/// Categories unseen in the baseline count as drift, smoothed, never NaN.
pub fn categorical_drift(
    baseline: &CategoricalBaseline,
    window: &BTreeMap<String, u64>,
    thresholds: &DriftThresholds,
) -> FeatureDrift {
    let categories: BTreeSet<&String> = baseline.counts.keys().chain(window.keys()).collect();
    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>().max(1) as f64;
    let (bt, wt) = (total(&baseline.counts), total(window));
    let expected: Vec<f64> = categories
        .iter()
        .map(|c| *baseline.counts.get(*c).unwrap_or(&0) as f64 / bt)
        .collect();
    let actual: Vec<f64> = categories
        .iter()
        .map(|c| *window.get(*c).unwrap_or(&0) as f64 / wt)
        .collect();
    let count = window.values().sum();
    let (psi_v, js_v) = if count == 0 {
        (0.0, 0.0)
    } else {
        (psi(&expected, &actual), jensen_shannon(&expected, &actual))
    };
    FeatureDrift {
        name: baseline.name.clone(),
        count,
        psi: psi_v,
        js: js_v,
        ks: None,
        status: status(thresholds, count, psi_v, js_v, None),
    }
}

/// Exact quantiles of reference values at ranks 0, 1/100, ..., 1, for a
/// [`NumericBaseline`]. Non-finite values are skipped; `None` if none is left.
pub fn baseline_quantiles(values: &mut Vec<f32>) -> Option<Vec<f64>> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f32::total_cmp);
    let n = values.len();
    Some(
        (0..BASELINE_QUANTILES)
            .map(|i| {
                // Nearest rank: the smallest value with at least i% of the data at or below it.
                let rank = i as f64 / (BASELINE_QUANTILES - 1) as f64;
                let idx = ((rank * n as f64).ceil() as usize).clamp(1, n) - 1;
                f64::from(values[idx])
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(values: impl Iterator<Item = f32>) -> NumericBaseline {
        let mut v: Vec<f32> = values.collect();
        NumericBaseline {
            name: "x".into(),
            count: v.len() as u64,
            quantiles: baseline_quantiles(&mut v).unwrap(),
        }
    }

    fn sketch(values: impl Iterator<Item = f32>) -> Sketch {
        let mut s = Sketch::default();
        values.for_each(|v| s.update(v));
        s
    }

    fn uniform(n: usize, shift: f32) -> impl Iterator<Item = f32> {
        (0..n).map(move |i| (i as f32 * 7919.0 % n as f32) / n as f32 + shift)
    }

    #[test]
    fn same_distribution_is_stable() {
        let d = numeric_drift(
            &baseline(uniform(5000, 0.0)),
            &sketch(uniform(3000, 0.0)),
            &DriftThresholds::default(),
        );
        assert_eq!(d.status, DriftStatus::Stable, "{d:?}");
        assert!(d.psi < 0.02 && d.js < 0.01 && d.ks.unwrap() < 0.03, "{d:?}");
    }

    #[test]
    fn shifted_distribution_is_drift() {
        let d = numeric_drift(
            &baseline(uniform(5000, 0.0)),
            &sketch(uniform(3000, 0.5)),
            &DriftThresholds::default(),
        );
        assert_eq!(d.status, DriftStatus::Drift, "{d:?}");
        assert!((d.ks.unwrap() - 0.5).abs() < 0.03, "{d:?}");
    }

    #[test]
    fn constant_feature_has_no_nan() {
        let b = baseline(std::iter::repeat_n(3.0, 500));
        let same = numeric_drift(
            &b,
            &sketch(std::iter::repeat_n(3.0, 500)),
            &DriftThresholds::default(),
        );
        assert_eq!((same.psi, same.js, same.ks), (0.0, 0.0, Some(0.0)));
        assert_eq!(same.status, DriftStatus::Stable);
        let moved = numeric_drift(
            &b,
            &sketch(std::iter::repeat_n(4.0, 500)),
            &DriftThresholds::default(),
        );
        assert!(moved.psi.is_finite() && moved.psi > 1.0, "{moved:?}");
        assert_eq!(moved.status, DriftStatus::Drift);
        let empty = numeric_drift(&b, &Sketch::default(), &DriftThresholds::default());
        assert_eq!(empty.status, DriftStatus::InsufficientData);
        assert_eq!((empty.psi, empty.js), (0.0, 0.0));
    }

    #[test]
    fn unseen_category_is_finite_drift() {
        let b = CategoricalBaseline {
            name: "prediction".into(),
            counts: [("a".to_string(), 500), ("b".to_string(), 500)].into(),
        };
        let w: BTreeMap<String, u64> = [("c".to_string(), 300)].into();
        let d = categorical_drift(&b, &w, &DriftThresholds::default());
        assert!(d.psi.is_finite() && d.js.is_finite());
        assert!((d.js - 1.0).abs() < 1e-9, "{d:?}");
        assert_eq!(d.status, DriftStatus::Drift);
    }

    #[test]
    fn few_samples_are_insufficient_data() {
        let d = numeric_drift(
            &baseline(uniform(5000, 0.0)),
            &sketch(uniform(20, 5.0)),
            &DriftThresholds::default(),
        );
        assert_eq!(d.status, DriftStatus::InsufficientData);
    }
}
