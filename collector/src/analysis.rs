//! Fleet statistics and drift over time, from merged window sketches.

use crate::store::StoredWindow;
use edgeml_bundle::Baseline;
pub use edgeml_client::wire::telemetry::{DriftAlert, DriftBucket, DriftReport, FleetStats};
use edgeml_telemetry::drift::{DriftStatus, DriftThresholds};
use edgeml_telemetry::{GridCounts, Sketch};
use std::collections::{BTreeMap, BTreeSet};

fn decode(s: &str, what: &str, id: &str) -> Result<Sketch, String> {
    Sketch::from_base64(s).map_err(|e| format!("window {id}: {what}: {e}"))
}

/// Merge windows into fleet statistics.
pub fn stats(windows: &[StoredWindow]) -> Result<FleetStats, String> {
    let mut latency = Sketch::default();
    let mut errors_by_kind = BTreeMap::new();
    let mut devices = BTreeSet::new();
    let mut count = 0;
    for w in windows {
        latency.merge(&decode(&w.latency_us, "latency", &w.id)?);
        for (k, n) in &w.errors {
            *errors_by_kind.entry(k.clone()).or_insert(0) += n;
        }
        devices.insert(&w.device_id);
        count += w.count;
    }
    let errors: u64 = errors_by_kind.values().sum();
    let from_ms = windows.iter().map(|w| w.start_ms).min();
    let to_ms = windows.iter().map(|w| w.end_ms).max();
    let span_s = match (from_ms, to_ms) {
        (Some(a), Some(b)) => ((b.saturating_sub(a)) as f64 / 1000.0).max(1.0),
        _ => 1.0,
    };
    let latency_us = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        .into_iter()
        .filter_map(|(k, r)| latency.quantile(r).map(|v| (k.to_string(), v)))
        .collect();
    Ok(FleetStats {
        windows: windows.len() as u64,
        devices: devices.len() as u64,
        count,
        errors,
        errors_by_kind,
        error_rate: if count == 0 {
            0.0
        } else {
            errors as f64 / count as f64
        },
        throughput_per_s: count as f64 / span_s,
        latency_us,
        from_ms,
        to_ms,
    })
}

/// Merge windows into time buckets and compare each with the baseline.
pub fn drift(
    baseline: &Baseline,
    windows: &[StoredWindow],
    bucket_ms: u64,
    thresholds: &DriftThresholds,
) -> Result<DriftReport, String> {
    let bucket_ms = bucket_ms.max(1);
    #[derive(Default)]
    struct Acc<'a> {
        count: u64,
        devices: BTreeSet<&'a str>,
        binned: BTreeMap<String, GridCounts>,
        categorical: BTreeMap<String, BTreeMap<String, u64>>,
    }
    let mut buckets: BTreeMap<u64, Acc<'_>> = BTreeMap::new();
    for w in windows {
        let acc = buckets
            .entry(w.start_ms / bucket_ms * bucket_ms)
            .or_default();
        acc.count += w.count;
        acc.devices.insert(&w.device_id);
        // Each baseline feature on the baseline's grid: exact counts from
        // devices that bin, counts read off the sketch from older ones.
        for b in &baseline.numeric {
            let Some(counts) = grid_counts(b, w)? else {
                continue;
            };
            let merged = acc
                .binned
                .entry(b.name.clone())
                .or_insert_with(|| GridCounts::new(b.quantiles.len()));
            // Ingest refuses counts on another grid; one stored before
            // that check is left out rather than failing the whole report.
            let _ = merged.merge(&counts);
        }
        for (name, counts) in &w.categorical {
            let e = acc.categorical.entry(name.clone()).or_default();
            for (c, n) in counts {
                *e.entry(c.clone()).or_insert(0) += n;
            }
        }
    }
    let mut out = Vec::new();
    let mut alerts = Vec::new();
    for (start, acc) in buckets {
        let features =
            edgeml_telemetry::window_drift(baseline, &acc.binned, &acc.categorical, thresholds);
        for f in &features {
            if f.status >= DriftStatus::PossibleDrift {
                alerts.push(DriftAlert {
                    start_ms: start,
                    feature: f.clone(),
                });
            }
        }
        out.push(DriftBucket {
            start_ms: start,
            end_ms: start + bucket_ms,
            count: acc.count,
            devices: acc.devices.len() as u64,
            drifted: features.iter().any(|f| f.status == DriftStatus::Drift),
            features,
        });
    }
    Ok(DriftReport {
        baseline_examples: baseline.examples,
        thresholds: thresholds.clone(),
        bucket_ms,
        buckets: out,
        alerts,
    })
}

/// A window's counts of a baseline feature on the baseline's grid: exact
/// from devices that bin, read off the sketch from older ones; `None` when
/// the window does not have the feature.
fn grid_counts(
    b: &edgeml_bundle::NumericBaseline,
    w: &StoredWindow,
) -> Result<Option<GridCounts>, String> {
    Ok(match (w.binned.get(&b.name), w.numeric.get(&b.name)) {
        (Some(g), _) => Some(
            GridCounts::from_base64(g).map_err(|e| format!("window {}: {}: {e}", w.id, b.name))?,
        ),
        (None, Some(s)) => Some(GridCounts::from_sketch(
            &b.quantiles,
            &decode(s, &b.name, &w.id)?,
        )),
        (None, None) => None,
    })
}

/// One feature's distribution in some windows next to its baseline's.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// The feature.
    pub feature: String,
    /// Observations in the windows.
    pub count: u64,
    /// The bins: numeric features by the baseline's deciles (and what lies
    /// outside the baseline's range), categorical ones by category.
    pub bins: Vec<DistributionBin>,
}

/// One bin of a [`Distribution`].
#[derive(Debug, Clone, PartialEq)]
pub struct DistributionBin {
    /// What the bin holds (`0.12 – 0.56`, `above 3.1`, `cat`).
    pub label: String,
    /// The baseline's share in it (0 to 1).
    pub baseline: f64,
    /// The windows' share in it (0 to 1; 0 without observations).
    pub current: f64,
}

/// The distribution of `feature` over `windows` beside the baseline's, for
/// looking at a drift alert: numeric features between the baseline's
/// deciles (values at or below its least and above its largest are bins of
/// their own; tied deciles merge), categorical features per category.
/// `None` if the baseline does not have the feature.
pub fn distribution(
    baseline: &Baseline,
    windows: &[StoredWindow],
    feature: &str,
) -> Result<Option<Distribution>, String> {
    let share = |n: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    if let Some(b) = baseline.numeric.iter().find(|b| b.name == feature) {
        let q = &b.quantiles;
        if q.len() < 2 {
            return Ok(None);
        }
        let mut merged = GridCounts::new(q.len());
        for w in windows {
            if let Some(c) = grid_counts(b, w)? {
                let _ = merged.merge(&c);
            }
        }
        let bins = merged.bins();
        let total = merged.count();
        let n = q.len() - 1;
        // Both CDFs on the grid, as the drift statistics read them: the
        // baseline's is the rank of the largest quantile <= x (ties count
        // once), the windows' the share of values at or below x.
        let base_cdf = |x: f64| {
            q.iter()
                .rposition(|&p| p <= x)
                .map_or(0.0, |i| i as f64 / n as f64)
        };
        let win_cdf = |x: f64| {
            let upto = q.partition_point(|&p| p <= x).min(bins.len());
            share(bins[..upto].iter().sum(), total)
        };
        let mut edges: Vec<f64> = (0..=10).map(|d| q[d * n / 10]).collect();
        edges.dedup();
        let mut out = Vec::with_capacity(edges.len() + 1);
        out.push(DistributionBin {
            label: format!("≤ {}", short(edges[0])),
            baseline: base_cdf(edges[0]),
            current: win_cdf(edges[0]),
        });
        for w in edges.windows(2) {
            out.push(DistributionBin {
                label: format!("{} – {}", short(w[0]), short(w[1])),
                baseline: base_cdf(w[1]) - base_cdf(w[0]),
                current: win_cdf(w[1]) - win_cdf(w[0]),
            });
        }
        let last = edges[edges.len() - 1];
        out.push(DistributionBin {
            label: format!("> {}", short(last)),
            baseline: 1.0 - base_cdf(last),
            current: if total == 0 { 0.0 } else { 1.0 - win_cdf(last) },
        });
        return Ok(Some(Distribution {
            feature: feature.into(),
            count: total,
            bins: out,
        }));
    }
    if let Some(b) = baseline.categorical.iter().find(|b| b.name == feature) {
        let mut current: BTreeMap<&str, u64> = BTreeMap::new();
        for w in windows {
            for (c, n) in w.categorical.get(feature).into_iter().flatten() {
                *current.entry(c).or_insert(0) += n;
            }
        }
        let base_total: u64 = b.counts.values().sum();
        let total: u64 = current.values().sum();
        let categories: BTreeSet<&str> = b
            .counts
            .keys()
            .map(String::as_str)
            .chain(current.keys().copied())
            .collect();
        return Ok(Some(Distribution {
            feature: feature.into(),
            count: total,
            bins: categories
                .into_iter()
                .map(|c| DistributionBin {
                    label: c.to_string(),
                    baseline: share(b.counts.get(c).copied().unwrap_or(0), base_total),
                    current: share(current.get(c).copied().unwrap_or(0), total),
                })
                .collect(),
        }));
    }
    Ok(None)
}

/// A number in few characters.
fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.2e}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// Labelled predictions with a score needed to judge calibration.
pub const MIN_CALIBRATION_LABELS: u64 = 50;

/// Largest expected calibration error at which a CBPE estimate is `valid`.
pub const MAX_CALIBRATION_ERROR: f64 = 0.05;

/// Accuracy per model version: measured from labelled predictions (overall,
/// per class with precision, recall and F1, per device, per window of
/// prediction time with `window_ms`) and estimated from the windows' top
/// scores (CBPE), with the estimate's validity checked against the labels
/// where there are enough. A prediction without a top label (a model
/// without labels) counts as wrong.
///
/// `tags` gives each device's tags: accuracy per tag is over the labelled
/// predictions of the devices carrying it.
pub fn accuracy(
    outcomes: &[crate::store::StoredOutcome],
    windows: &[StoredWindow],
    window_ms: Option<u64>,
    tags: &BTreeMap<String, edgeml_fleet::Tags>,
) -> Vec<edgeml_client::wire::telemetry::VersionAccuracy> {
    use crate::store::StoredOutcome;
    use edgeml_client::wire::telemetry::{
        ClassMetrics, GroupAccuracy, VersionAccuracy, WindowAccuracy,
    };
    fn ratio(n: u64, d: u64) -> Option<f64> {
        (d > 0).then(|| n as f64 / d as f64)
    }
    let bucket = |t: u64| window_ms.filter(|w| *w > 0).map(|w| t / w * w);
    let mut versions: BTreeSet<&str> = outcomes.iter().map(|o| o.model.version.as_str()).collect();
    versions.extend(windows.iter().map(|w| w.model.version.as_str()));
    let mut out: Vec<VersionAccuracy> = versions
        .into_iter()
        .map(|version| {
            let version_outcomes = outcomes.iter().filter(|o| o.model.version == version);
            // A regression's outcomes carry its value; they have no class.
            let (regression, os): (Vec<&StoredOutcome>, Vec<&StoredOutcome>) =
                version_outcomes.partition(|o| o.value.is_some());
            let ws: Vec<&StoredWindow> = windows
                .iter()
                .filter(|w| w.model.version == version)
                .collect();
            let right = |o: &StoredOutcome| o.prediction.as_deref() == Some(o.label.as_str());
            let correct = os.iter().filter(|o| right(o)).count() as u64;
            // label -> (support, predicted, correct)
            let mut classes: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
            let mut devices: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
            // start -> (labelled, correct, confidence sum, scored)
            let mut series: BTreeMap<u64, (u64, u64, f64, u64)> = BTreeMap::new();
            for o in &os {
                let ok = right(o) as u64;
                classes.entry(&o.label).or_default().0 += 1;
                if let Some(p) = o.prediction.as_deref() {
                    let c = classes.entry(p).or_default();
                    c.1 += 1;
                    c.2 += ok;
                }
                let d = devices.entry(&o.device_id).or_default();
                d.0 += 1;
                d.1 += ok;
                if let Some(b) = bucket(o.predicted_ms) {
                    let e = series.entry(b).or_default();
                    e.0 += 1;
                    e.1 += ok;
                }
            }
            for w in &ws {
                if let Some(b) = bucket(w.start_ms) {
                    let e = series.entry(b).or_default();
                    e.2 += w.confidence_sum;
                    e.3 += w.scored;
                }
            }
            let classes: Vec<ClassMetrics> = classes
                .into_iter()
                .map(|(label, (support, predicted, correct))| {
                    let precision = ratio(correct, predicted);
                    let recall = ratio(correct, support);
                    let f1 = match (precision, recall) {
                        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                        (Some(_), Some(_)) => Some(0.0),
                        _ => None,
                    };
                    ClassMetrics {
                        label: label.to_string(),
                        support,
                        predicted,
                        correct,
                        precision,
                        recall,
                        f1,
                    }
                })
                .collect();
            // Classes that occur but have no F1 (never predicted, or never
            // true) count as 0, as scikit-learn's macro average does.
            let macro_f1 = (!classes.is_empty()).then(|| {
                classes.iter().map(|c| c.f1.unwrap_or(0.0)).sum::<f64>() / classes.len() as f64
            });
            let mut by_tag: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for (device, (labelled, correct)) in &devices {
                for (k, v) in tags.get(*device).into_iter().flatten() {
                    let e = by_tag.entry(format!("{k}={v}")).or_default();
                    e.0 += labelled;
                    e.1 += correct;
                }
            }
            let group = |(name, (labelled, correct)): (String, (u64, u64))| GroupAccuracy {
                name,
                labelled,
                correct,
                accuracy: ratio(correct, labelled).unwrap_or(0.0),
            };
            VersionAccuracy {
                version: version.to_string(),
                labelled: os.len() as u64,
                correct,
                accuracy: ratio(correct, os.len() as u64),
                macro_f1,
                estimated: estimate(&ws, calibration_error(&score_bins(&os))),
                regression: regression_error(&regression),
                classes,
                devices: devices
                    .into_iter()
                    .map(|(name, counts)| group((name.to_string(), counts)))
                    .collect(),
                tags: by_tag.into_iter().map(group).collect(),
                windows: series
                    .into_iter()
                    .map(
                        |(start_ms, (labelled, correct, sum, scored))| WindowAccuracy {
                            start_ms,
                            labelled,
                            correct,
                            accuracy: ratio(correct, labelled),
                            estimated: (scored > 0).then(|| sum / scored as f64),
                        },
                    )
                    .collect(),
            }
        })
        .collect();
    // Semantic version order where the versions parse (1.10.0 after 1.9.0).
    out.sort_by(|a, b| {
        match (
            semver::Version::parse(&a.version),
            semver::Version::parse(&b.version),
        ) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.version.cmp(&b.version),
        }
    });
    out
}

/// Mean absolute and root mean squared error of regression outcomes whose
/// label is a number; `None` without any.
fn regression_error(
    outcomes: &[&crate::store::StoredOutcome],
) -> Option<edgeml_client::wire::telemetry::RegressionError> {
    let errors: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| Some(o.value? - o.label.trim().parse::<f64>().ok()?))
        .filter(|e| e.is_finite())
        .collect();
    if errors.is_empty() {
        return None;
    }
    let n = errors.len() as f64;
    Some(edgeml_client::wire::telemetry::RegressionError {
        labelled: errors.len() as u64,
        mae: errors.iter().map(|e| e.abs()).sum::<f64>() / n,
        rmse: (errors.iter().map(|e| e * e).sum::<f64>() / n).sqrt(),
    })
}

/// CBPE over `windows`, checked against the calibration error `ece` (and
/// the number of labelled predictions it comes from) where there is one.
pub fn estimate(
    windows: &[&StoredWindow],
    ece: Option<(f64, u64)>,
) -> Option<edgeml_client::wire::telemetry::EstimatedAccuracy> {
    use edgeml_client::wire::telemetry::{EstimateValidity, EstimatedAccuracy};
    let answered: u64 = windows
        .iter()
        .map(|w| w.count.saturating_sub(w.errors.values().sum::<u64>()))
        .sum();
    let scored: u64 = windows.iter().map(|w| w.scored).sum();
    let sum: f64 = windows.iter().map(|w| w.confidence_sum).sum();
    if answered == 0 {
        return None;
    }
    if (scored as f64) < 0.9 * answered as f64 {
        let any = scored > 0;
        return any.then(|| EstimatedAccuracy {
            accuracy: sum / scored as f64,
            predictions: scored,
            validity: EstimateValidity::NotProbabilities,
            reason: format!(
                "only {scored} of {answered} predictions had a top score in [0, 1]: the scores are not probabilities, so they say nothing about accuracy"
            ),
            calibration_error: None,
        });
    }
    let accuracy = sum / scored as f64;
    let (validity, reason) = match ece {
        Some((e, n)) if e <= MAX_CALIBRATION_ERROR => (
            EstimateValidity::Valid,
            format!("the scores are calibrated on {n} labelled predictions (ECE {e:.3} <= {MAX_CALIBRATION_ERROR})"),
        ),
        Some((e, n)) => (
            EstimateValidity::Miscalibrated,
            format!("the scores are not calibrated on {n} labelled predictions (ECE {e:.3} > {MAX_CALIBRATION_ERROR}): the estimate is biased"),
        ),
        None => (
            EstimateValidity::Unverified,
            format!("fewer than {MIN_CALIBRATION_LABELS} labelled predictions with a score: the estimate assumes calibrated scores"),
        ),
    };
    Some(EstimatedAccuracy {
        accuracy,
        predictions: scored,
        validity,
        reason,
        calibration_error: ece.map(|(e, _)| e),
    })
}

/// The labelled predictions that carry a top score in [0, 1], in ten
/// bins of it: (bin, count, right, sum of scores), as
/// [`crate::store::OutcomeSummary::calibration`] has them.
fn score_bins(labelled: &[&crate::store::StoredOutcome]) -> Vec<(u8, u64, u64, f64)> {
    let mut bins = [(0u64, 0u64, 0f64); 10];
    for o in labelled {
        let Some(s) = o.score.filter(|s| (0.0..=1.0).contains(s)) else {
            continue;
        };
        let b = ((s * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += (o.prediction.as_deref() == Some(o.label.as_str())) as u64;
        bins[b].2 += f64::from(s);
    }
    (0u8..)
        .zip(bins)
        .filter(|(_, b)| b.0 > 0)
        .map(|(i, (n, right, sum))| (i, n, right, sum))
        .collect()
}

/// Expected calibration error over score bins, with how many predictions
/// they hold; `None` under [`MIN_CALIBRATION_LABELS`].
pub fn calibration_error(bins: &[(u8, u64, u64, f64)]) -> Option<(f64, u64)> {
    let n: u64 = bins.iter().map(|b| b.1).sum();
    if n < MIN_CALIBRATION_LABELS {
        return None;
    }
    let ece = bins
        .iter()
        .filter(|b| b.1 > 0)
        .map(|&(_, count, right, sum)| {
            let acc = right as f64 / count as f64;
            let conf = sum / count as f64;
            (count as f64 / n as f64) * (acc - conf).abs()
        })
        .sum();
    Some((ece, n))
}

#[cfg(test)]
mod accuracy_tests {
    use super::accuracy;
    use crate::store::StoredOutcome;
    use edgeml_telemetry::wire::ModelRef;
    use std::collections::BTreeMap;

    fn o(version: &str, device: &str, at: u64, predicted: &str, label: &str) -> StoredOutcome {
        StoredOutcome {
            device_id: device.into(),
            prediction_id: format!("{device}-{at}"),
            model: ModelRef {
                name: "m".into(),
                version: version.into(),
                digest: "d".into(),
            },
            predicted_ms: at,
            prediction: Some(predicted.into()),
            score: None,
            value: None,
            label: label.into(),
            labelled_ms: at + 1,
            source: "device".into(),
        }
    }

    #[test]
    fn per_class_metrics_match_a_hand_count() {
        // Truth a a b b; predicted a b b a: per class a: P 1/2 R 1/2; b: P 1/2 R 1/2.
        let os = vec![
            o("1.0.0", "d1", 0, "a", "a"),
            o("1.0.0", "d1", 10, "b", "a"),
            o("1.0.0", "d2", 20, "b", "b"),
            o("1.0.0", "d2", 1_000, "a", "b"),
            o("1.10.0", "d1", 0, "a", "a"),
            o("1.9.0", "d1", 0, "b", "a"),
        ];
        // d1 is in Berlin; d2 in Berlin and on an rpi4.
        let tags: BTreeMap<String, edgeml_fleet::Tags> = [
            ("d1", vec![("site", "berlin")]),
            ("d2", vec![("site", "berlin"), ("hw", "rpi4")]),
        ]
        .into_iter()
        .map(|(d, t)| {
            (
                d.to_string(),
                t.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            )
        })
        .collect();
        let v = accuracy(&os, &[], Some(1_000), &tags);
        assert_eq!(
            v.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
            ["1.0.0", "1.9.0", "1.10.0"]
        );
        let v1 = &v[0];
        assert_eq!((v1.labelled, v1.correct), (4, 2));
        assert_eq!(v1.accuracy, Some(0.5));
        assert_eq!(v1.estimated, None);
        assert_eq!(v1.classes.len(), 2);
        for c in &v1.classes {
            assert_eq!((c.support, c.predicted, c.correct), (2, 2, 1));
            assert_eq!(
                (c.precision, c.recall, c.f1),
                (Some(0.5), Some(0.5), Some(0.5))
            );
        }
        assert_eq!(v1.macro_f1, Some(0.5));
        assert_eq!(v1.devices[1].name, "d2");
        assert_eq!((v1.devices[1].labelled, v1.devices[1].correct), (2, 1));
        let by_tag: Vec<(&str, u64, u64)> = v1
            .tags
            .iter()
            .map(|g| (g.name.as_str(), g.labelled, g.correct))
            .collect();
        assert_eq!(by_tag, [("hw=rpi4", 2, 1), ("site=berlin", 4, 2)]);
        assert_eq!(v1.windows.len(), 2);
        assert_eq!(
            (
                v1.windows[0].start_ms,
                v1.windows[0].labelled,
                v1.windows[0].correct
            ),
            (0, 3, 2)
        );
        assert_eq!(v1.windows[1].accuracy, Some(0.0));
        // 1.9.0 never predicted `a` and never saw a true `b`: no precision
        // for `a`, no recall for `b`, both F1 undefined, macro F1 0.
        let v9 = &v[1];
        assert_eq!(v9.accuracy, Some(0.0));
        assert!(v9.classes.iter().all(|c| c.f1.is_none()));
        assert_eq!(v9.macro_f1, Some(0.0));
    }

    fn window(
        version: &str,
        count: u64,
        confidence_sum: f64,
        scored: u64,
    ) -> crate::store::StoredWindow {
        crate::store::StoredWindow {
            id: "w".into(),
            device_id: "d1".into(),
            model: ModelRef {
                name: "m".into(),
                version: version.into(),
                digest: "d".into(),
            },
            start_ms: 0,
            end_ms: 1,
            count,
            errors: Default::default(),
            latency_us: String::new(),
            numeric: Default::default(),
            binned: Default::default(),
            categorical: Default::default(),
            confidence_sum,
            scored,
        }
    }

    /// Labelled predictions at top score `score`, `right` of `n` right.
    fn scored(n: u64, right: u64, score: f32) -> Vec<StoredOutcome> {
        (0..n)
            .map(|i| {
                let mut x = o("1.0.0", "d1", i, "a", if i < right { "a" } else { "b" });
                x.score = Some(score);
                x
            })
            .collect()
    }

    #[test]
    fn cbpe_estimate_is_valid_only_when_labels_show_calibration() {
        use edgeml_client::wire::telemetry::EstimateValidity;
        // 1000 predictions with a mean top score of 0.8.
        let w = [window("1.0.0", 1000, 800.0, 1000)];
        // No labels: the estimate stands, unverified.
        let v = &accuracy(&[], &w, None, &BTreeMap::new())[0];
        let e = v.estimated.as_ref().unwrap();
        assert_eq!((e.accuracy, e.predictions), (0.8, 1000));
        assert_eq!(e.validity, EstimateValidity::Unverified);
        assert_eq!(v.accuracy, None);
        // 100 labels at score 0.8, 80 right: calibrated.
        let v = &accuracy(&scored(100, 80, 0.8), &w, None, &BTreeMap::new())[0];
        let e = v.estimated.as_ref().unwrap();
        assert_eq!(e.validity, EstimateValidity::Valid, "{}", e.reason);
        assert!(e.calibration_error.unwrap() < 1e-6);
        assert_eq!(v.accuracy, Some(0.8));
        // ... 50 right: overconfident by 0.3.
        let v = &accuracy(&scored(100, 50, 0.8), &w, None, &BTreeMap::new())[0];
        let e = v.estimated.as_ref().unwrap();
        assert_eq!(e.validity, EstimateValidity::Miscalibrated);
        assert!((e.calibration_error.unwrap() - 0.3).abs() < 1e-6);
        // Logits: most top scores outside [0, 1].
        let logits = [window("1.0.0", 1000, 40.0, 50)];
        let e = accuracy(&[], &logits, None, &BTreeMap::new())[0]
            .estimated
            .clone()
            .unwrap();
        assert_eq!(e.validity, EstimateValidity::NotProbabilities);
        // A regression's outcomes: MAE and RMSE, no class metrics.
        let mut reg = o("1.0.0", "d1", 1, "x", "3.5");
        reg.prediction = None;
        reg.value = Some(2.5);
        let mut reg2 = reg.clone();
        reg2.value = Some(6.5);
        let v = &accuracy(&[reg, reg2], &[], None, &BTreeMap::new())[0];
        let r = v.regression.as_ref().unwrap();
        assert_eq!((r.labelled, r.mae, r.rmse), (2, 2.0, (5.0f64).sqrt()));
        assert_eq!((v.labelled, v.accuracy), (0, None));
        // Windows from devices that send no scores: no estimate.
        assert_eq!(
            accuracy(&[], &[window("1.0.0", 10, 0.0, 0)], None, &BTreeMap::new())[0].estimated,
            None
        );
    }
}

#[cfg(test)]
mod distribution_tests {
    use super::distribution;
    use crate::store::StoredWindow;
    use edgeml_bundle::{Baseline, CategoricalBaseline, NumericBaseline};
    use edgeml_telemetry::wire::ModelRef;
    use edgeml_telemetry::GridCounts;

    /// A baseline whose feature `x` is uniform on [0, 100] (quantile k at k)
    /// and whose `prediction` is `a` three times out of four.
    fn baseline() -> Baseline {
        Baseline {
            examples: 1000,
            numeric: vec![NumericBaseline {
                name: "x".into(),
                count: 1000,
                quantiles: (0..=100).map(f64::from).collect(),
            }],
            categorical: vec![CategoricalBaseline {
                name: "prediction".into(),
                counts: [("a".to_string(), 750), ("b".to_string(), 250)].into(),
            }],
        }
    }

    fn window(values: &[f32], predicted: &[(&str, u64)]) -> StoredWindow {
        let grid: Vec<f64> = (0..=100).map(f64::from).collect();
        let mut counts = GridCounts::new(grid.len());
        for &v in values {
            counts.add(&grid, v);
        }
        StoredWindow {
            id: "w".into(),
            device_id: "d1".into(),
            model: ModelRef {
                name: "m".into(),
                version: "1.0.0".into(),
                digest: "d".into(),
            },
            start_ms: 0,
            end_ms: 1,
            count: values.len() as u64,
            errors: Default::default(),
            latency_us: String::new(),
            numeric: Default::default(),
            binned: [("x".to_string(), counts.to_base64())].into(),
            categorical: [(
                "prediction".to_string(),
                predicted.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            )]
            .into(),
            confidence_sum: 0.0,
            scored: 0,
        }
    }

    #[test]
    fn numeric_feature_by_baseline_deciles_with_values_outside_its_range() {
        // Half the values in the first decile, a fifth in the last, a fifth
        // above the baseline's largest value, a tenth at its least.
        let mut values = vec![5.0_f32; 50];
        values.extend([95.0; 20]);
        values.extend([250.0; 20]);
        values.extend([-3.0; 10]);
        let d = distribution(&baseline(), &[window(&values, &[])], "x")
            .unwrap()
            .unwrap();
        assert_eq!(d.count, 100);
        let labels: Vec<&str> = d.bins.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels[..3], ["≤ 0", "0 – 10", "10 – 20"]);
        assert_eq!(labels[11], "> 100");
        let current: Vec<f64> = d
            .bins
            .iter()
            .map(|b| (b.current * 100.0).round() / 100.0)
            .collect();
        assert_eq!(
            current,
            [0.1, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.2]
        );
        assert!(d.bins[1..11]
            .iter()
            .all(|b| (b.baseline - 0.1).abs() < 1e-12));
        assert_eq!((d.bins[0].baseline, d.bins[11].baseline), (0.0, 0.0));
    }

    #[test]
    fn constant_feature_is_one_bin_where_baseline_and_current_agree() {
        let mut b = baseline();
        b.numeric[0].quantiles = vec![0.0; 101];
        let mut w = window(&[], &[]);
        let mut counts = GridCounts::new(101);
        for _ in 0..10 {
            counts.add(&b.numeric[0].quantiles, 0.0);
        }
        w.binned.insert("x".into(), counts.to_base64());
        let d = distribution(&b, &[w], "x").unwrap().unwrap();
        let bins: Vec<(&str, f64, f64)> = d
            .bins
            .iter()
            .map(|b| (b.label.as_str(), b.baseline, b.current))
            .collect();
        assert_eq!(bins, [("≤ 0", 1.0, 1.0), ("> 0", 0.0, 0.0)]);
    }

    #[test]
    fn categorical_feature_by_category_including_new_ones() {
        let w = window(&[], &[("a", 1), ("b", 2), ("c", 1)]);
        let d = distribution(&baseline(), &[w], "prediction")
            .unwrap()
            .unwrap();
        let bins: Vec<(&str, f64, f64)> = d
            .bins
            .iter()
            .map(|b| (b.label.as_str(), b.baseline, b.current))
            .collect();
        assert_eq!(
            bins,
            [("a", 0.75, 0.25), ("b", 0.25, 0.5), ("c", 0.0, 0.25)]
        );
    }

    #[test]
    fn unknown_feature_has_no_distribution() {
        assert_eq!(distribution(&baseline(), &[], "nope").unwrap(), None);
    }
}
