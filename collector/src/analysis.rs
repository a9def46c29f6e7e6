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
            let counts = match (w.binned.get(&b.name), w.numeric.get(&b.name)) {
                (Some(g), _) => GridCounts::from_base64(g)
                    .map_err(|e| format!("window {}: {}: {e}", w.id, b.name))?,
                (None, Some(s)) => {
                    GridCounts::from_sketch(&b.quantiles, &decode(s, &b.name, &w.id)?)
                }
                (None, None) => continue,
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
