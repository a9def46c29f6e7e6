//! Models (charts per version), drift (heatmap and distributions) and
//! drift samples (images, waveforms).

use super::{iso, page, query, seg, when, Session, UiError};
use crate::analysis;
use crate::api::{blocking, AppState};
use crate::store::{Query as StoreQuery, StoredSample, StoredWindow};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use edgeml_bundle::Dtype;
use edgeml_telemetry::drift::DriftStatus;
use edgeml_telemetry::wire::{SampleInput, TensorData};
use maud::{html, Markup};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Run a page's rendering on the blocking pool (it merges sketches,
/// verifies hashes or draws samples: not work for the async workers).
pub(crate) async fn off_runtime(
    f: impl FnOnce() -> Result<Markup, UiError> + Send + 'static,
) -> Result<Markup, UiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        UiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the page failed: {e}"),
        )
    })?
}

/// Default look-back of the charts and drift pages.
const DEFAULT_HOURS: u64 = 24;

/// Bucket lengths the charts choose from (seconds).
const BUCKETS: &[u64] = &[1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86_400];

/// The shortest bucket that cuts `span_ms` into at most `points`.
fn bucket_for(span_ms: u64, points: u64) -> u64 {
    let span_s = span_ms / 1000 + 1;
    BUCKETS
        .iter()
        .copied()
        .find(|b| span_s / b <= points)
        .unwrap_or(86_400)
}

#[derive(Deserialize)]
pub(crate) struct Range {
    /// Hours back from now (default 24).
    hours: Option<u64>,
    /// Bucket length in seconds (default: about 40 points over the data).
    bucket: Option<u64>,
    /// The drift page's feature to show against its baseline.
    feature: Option<String>,
    /// ... in this bucket (start, Unix ms); default: the whole range.
    at: Option<u64>,
}

impl Range {
    /// The bucket asked for, within 1 s and 30 days.
    fn bucket_s(&self) -> Option<u64> {
        self.bucket.map(|b| b.clamp(1, 30 * 86_400))
    }

    fn start_ms(&self) -> u64 {
        let hours = self.hours.unwrap_or(DEFAULT_HOURS).clamp(1, 24 * 90);
        crate::fleet::now_ms().saturating_sub(hours * 3_600_000)
    }
}

fn range_form(action: &str, r: &Range) -> Markup {
    html! {
        form.filters method="get" action=(action) aria-label="Time range" {
            p {
                label for="hours" { "Last" }
                select #hours name="hours" {
                    @for (h, label) in [(1, "hour"), (6, "6 hours"), (24, "24 hours"), (168, "7 days"), (720, "30 days")] {
                        option value=(h) selected[r.hours.unwrap_or(DEFAULT_HOURS) == h] { (label) }
                    }
                }
                " " button type="submit" { "Show" }
            }
        }
    }
}

pub(crate) async fn models(State(st): State<AppState>, s: Session) -> Result<Markup, UiError> {
    let store = st.store.clone();
    let models = blocking(move || store.models()).await?;
    let mut by_name: BTreeMap<&str, Vec<&edgeml_client::wire::telemetry::ModelVersionInfo>> =
        BTreeMap::new();
    for m in &models {
        by_name.entry(&m.model.name).or_default().push(m);
    }
    let body = html! {
        @if models.is_empty() {
            p { "No device has sent telemetry yet." }
        }
        table #models {
            thead { tr { th scope="col" { "Model" } th scope="col" { "Versions" } th scope="col" { "Devices per version" } th scope="col" { "Drift" } } }
            tbody {
                @for (name, versions) in &by_name {
                    tr {
                        th scope="row" { a href=(format!("/ui/models/{}", seg(name))) { (name) } }
                        td { @for v in versions { (v.model.version) " " } }
                        td { @for v in versions { (v.model.version) ": " (v.devices) " " } }
                        td {
                            @for v in versions {
                                @if v.baseline.is_some() {
                                    a href=(format!("/ui/models/{}/{}/drift", seg(name), seg(&v.model.version))) { "drift of " (v.model.version) } " "
                                } @else {
                                    span.hint { (v.model.version) ": no baseline" } " "
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(Some(&s), "Models", "Models", body))
}

/// What `console.js` draws with uPlot: one x axis (Unix seconds) and a
/// series per model version.
#[derive(Serialize)]
struct Chart {
    id: String,
    title: String,
    unit: String,
    x: Vec<u64>,
    series: Vec<Series>,
}

#[derive(Serialize)]
struct Series {
    label: String,
    values: Vec<Option<f64>>,
}

/// A chart, and its numbers as a table for screen readers and for reading
/// exact values.
fn chart(c: &Chart) -> Markup {
    let json = serde_json::to_string(c).unwrap_or_default();
    html! {
        figure.chart {
            div.plot id=(c.id) data-chart=(json) role="img" aria-label=(format!("{} over time, by version", c.title)) {}
            figcaption {
                details {
                    summary { (c.title) ": the numbers" }
                    table {
                        thead { tr { th scope="col" { "Time (UTC)" } @for s in &c.series { th scope="col" { (s.label) } } } }
                        tbody {
                            @for (i, x) in c.x.iter().enumerate() {
                                tr {
                                    td { (iso(x * 1000)) }
                                    @for s in &c.series {
                                        td.num { @match s.values.get(i).copied().flatten() { Some(v) => (format!("{v:.3}")), None => "—" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn model(
    State(st): State<AppState>,
    s: Session,
    Path(name): Path<String>,
    Query(r): Query<Range>,
) -> Result<Markup, UiError> {
    let q = StoreQuery {
        model: Some(name.clone()),
        from_ms: Some(r.start_ms()),
        ..StoreQuery::default()
    };
    let store = st.store.clone();
    let (windows, outcomes, devices) = blocking(move || {
        Ok((
            store.windows(&q)?,
            store.outcomes(&q)?,
            store.fleet_devices()?,
        ))
    })
    .await?;
    off_runtime(move || model_page(s, name, r, windows, outcomes, devices)).await
}

/// The model page from what the store gave (sketch merges: on the
/// blocking pool).
fn model_page(
    s: Session,
    name: String,
    r: Range,
    windows: Vec<StoredWindow>,
    outcomes: Vec<crate::store::StoredOutcome>,
    devices: Vec<edgeml_client::wire::fleet::FleetDevice>,
) -> Result<Markup, UiError> {
    let fail = |e: String| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e);
    let mut by_version: BTreeMap<String, Vec<StoredWindow>> = BTreeMap::new();
    for w in windows {
        by_version
            .entry(w.model.version.clone())
            .or_default()
            .push(w);
    }
    let all: Vec<&StoredWindow> = by_version.values().flatten().collect();
    let first = all.iter().map(|w| w.start_ms).min().unwrap_or(0);
    let last = all.iter().map(|w| w.end_ms).max().unwrap_or(0);
    let bucket_s = r
        .bucket_s()
        .unwrap_or_else(|| bucket_for(last.saturating_sub(first), 40));
    let bucket_ms = bucket_s * 1000;
    // Per version and bucket: the windows' statistics.
    let mut starts: BTreeSet<u64> = BTreeSet::new();
    let mut per: BTreeMap<&str, BTreeMap<u64, analysis::FleetStats>> = BTreeMap::new();
    let mut totals: BTreeMap<&str, analysis::FleetStats> = BTreeMap::new();
    for (v, ws) in &by_version {
        let mut buckets: BTreeMap<u64, Vec<StoredWindow>> = BTreeMap::new();
        for w in ws {
            buckets
                .entry(w.start_ms / bucket_ms * bucket_ms)
                .or_default()
                .push(w.clone());
        }
        for (b, ws) in buckets {
            starts.insert(b);
            per.entry(v)
                .or_default()
                .insert(b, analysis::stats(&ws).map_err(fail)?);
        }
        totals.insert(v, analysis::stats(ws).map_err(fail)?);
    }
    let tags = devices.into_iter().map(|d| (d.device_id, d.tags)).collect();
    let flat: Vec<StoredWindow> = by_version.values().flatten().cloned().collect();
    let accuracy = analysis::accuracy(&outcomes, &flat, Some(bucket_ms), &tags);
    for a in &accuracy {
        starts.extend(
            a.windows
                .iter()
                .filter(|w| w.labelled > 0)
                .map(|w| w.start_ms),
        );
    }
    let x: Vec<u64> = starts.iter().map(|b| b / 1000).collect();
    let series = |f: &dyn Fn(&analysis::FleetStats) -> Option<f64>| -> Vec<Series> {
        per.iter()
            .map(|(v, b)| Series {
                label: v.to_string(),
                values: starts.iter().map(|t| b.get(t).and_then(f)).collect(),
            })
            .collect()
    };
    let mut charts = vec![
        Chart {
            id: "chart-latency-p50".into(),
            title: "Latency p50".into(),
            unit: "ms".into(),
            x: x.clone(),
            series: series(&|s| s.latency_us.get("p50").map(|v| v / 1000.0)),
        },
        Chart {
            id: "chart-latency-p99".into(),
            title: "Latency p99".into(),
            unit: "ms".into(),
            x: x.clone(),
            series: series(&|s| s.latency_us.get("p99").map(|v| v / 1000.0)),
        },
        Chart {
            id: "chart-errors".into(),
            title: "Error rate".into(),
            unit: "%".into(),
            x: x.clone(),
            series: series(&|s| (s.count > 0).then_some(s.error_rate * 100.0)),
        },
        Chart {
            id: "chart-throughput".into(),
            title: "Throughput".into(),
            unit: "predictions/s".into(),
            x: x.clone(),
            series: series(&|s| Some(s.throughput_per_s)),
        },
    ];
    let labelled = accuracy.iter().any(|a| a.labelled > 0);
    if labelled {
        charts.push(Chart {
            id: "chart-accuracy".into(),
            title: "Accuracy (from labels)".into(),
            unit: "%".into(),
            x: x.clone(),
            // The versions in the other charts' order, so each keeps its
            // colour and dash.
            series: per
                .keys()
                .map(|v| Series {
                    label: v.to_string(),
                    values: starts
                        .iter()
                        .map(|t| {
                            accuracy
                                .iter()
                                .find(|a| a.version == *v)
                                .and_then(|a| a.windows.iter().find(|w| w.start_ms == *t))
                                .and_then(|w| w.accuracy)
                                .map(|v| v * 100.0)
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    let body = html! {
        (range_form(&format!("/ui/models/{}", seg(&name)), &r))
        @if by_version.is_empty() {
            p { "No telemetry for " (name) " in this range." }
        } @else {
            table #versions {
                caption { "Each version over the range (buckets of " (bucket_s) " s in the charts)" }
                thead { tr {
                    th scope="col" { "Version" } th scope="col" { "Devices" } th scope="col" { "Predictions" }
                    th scope="col" { "Error rate" } th scope="col" { "Throughput" }
                    th scope="col" { "p50" } th scope="col" { "p90" } th scope="col" { "p99" }
                    th scope="col" { "Accuracy" } th scope="col" { "Drift" }
                } }
                tbody {
                    @for (v, t) in &totals {
                        @let acc = accuracy.iter().find(|a| a.version == *v);
                        tr {
                            th scope="row" { (v) }
                            td.num { (t.devices) }
                            td.num { (t.count) }
                            td.num { (format!("{:.2}%", t.error_rate * 100.0)) }
                            td.num { (format!("{:.1}/s", t.throughput_per_s)) }
                            @for p in ["p50", "p90", "p99"] {
                                td.num { @match t.latency_us.get(p) { Some(us) => (format!("{:.2} ms", us / 1000.0)), None => "—" } }
                            }
                            td.num {
                                @match acc {
                                    Some(a) if a.labelled > 0 => (format!("{:.1}% of {}", a.accuracy.unwrap_or(0.0) * 100.0, a.labelled)),
                                    Some(a) => @match &a.estimated { Some(e) => (format!("~{:.1}% (estimated)", e.accuracy * 100.0)), None => "—" },
                                    None => "—",
                                }
                            }
                            td { a href=(format!("/ui/models/{}/{}/drift", seg(&name), seg(v))) { "heatmap" } }
                        }
                    }
                }
            }
            div.charts {
                @for c in &charts { (chart(c)) }
            }
            @if !labelled { p.hint { "No labels for this model in the range: accuracy shows once labels come in (" code { "edgeml collector labels" } " or the agent's feedback endpoint)." } }
            p { a href=(format!("/ui/samples?{}", query(&[("model", &name)]))) { "Drift samples of " (name) } }
        }
    };
    Ok(page(Some(&s), &format!("Model {name}"), "Models", body))
}

/// The heatmap cell's class and mark: never colour alone.
fn status_look(s: DriftStatus) -> (&'static str, &'static str, &'static str) {
    match s {
        DriftStatus::InsufficientData => ("few", "·", "too few observations"),
        DriftStatus::Stable => ("stable", "", "stable"),
        DriftStatus::PossibleDrift => ("possible", "!", "possible drift"),
        DriftStatus::Drift => ("drift", "!!", "drift"),
    }
}

pub(crate) async fn drift(
    State(st): State<AppState>,
    s: Session,
    Path((name, version)): Path<(String, String)>,
    Query(r): Query<Range>,
) -> Result<Markup, UiError> {
    let store = st.store.clone();
    let q = StoreQuery {
        model: Some(name.clone()),
        version: Some(version.clone()),
        from_ms: Some(r.start_ms()),
        ..StoreQuery::default()
    };
    let (models, windows) = blocking(move || Ok((store.models()?, store.windows(&q)?))).await?;
    let thresholds = st.settings.drift.clone();
    off_runtime(move || drift_page(s, name, version, r, models, windows, thresholds)).await
}

/// The drift page from what the store gave (on the blocking pool).
fn drift_page(
    s: Session,
    name: String,
    version: String,
    r: Range,
    models: Vec<edgeml_client::wire::telemetry::ModelVersionInfo>,
    windows: Vec<StoredWindow>,
    thresholds: edgeml_telemetry::drift::DriftThresholds,
) -> Result<Markup, UiError> {
    let Some(baseline) = models
        .into_iter()
        .filter(|m| m.model.name == name && m.model.version == version)
        .find_map(|m| m.baseline)
    else {
        return Err(UiError::new(
            StatusCode::NOT_FOUND,
            format!("No baseline for {name} {version}: no device has reported it yet, or it was packed without --reference."),
        ));
    };
    let fail = |e: String| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e);
    let first = windows.iter().map(|w| w.start_ms).min().unwrap_or(0);
    let last = windows.iter().map(|w| w.end_ms).max().unwrap_or(0);
    let bucket_s = r
        .bucket_s()
        .unwrap_or_else(|| bucket_for(last.saturating_sub(first), 24));
    let report =
        analysis::drift(&baseline, &windows, bucket_s * 1000, &thresholds).map_err(fail)?;
    let features: BTreeSet<&str> = report
        .buckets
        .iter()
        .flat_map(|b| b.features.iter().map(|f| f.name.as_str()))
        .collect();
    let feature = r.feature.clone().or_else(|| {
        report
            .alerts
            .iter()
            .max_by(|a, b| a.feature.psi.total_cmp(&b.feature.psi))
            .map(|a| a.feature.name.clone())
    });
    let in_bucket: Vec<StoredWindow> = match r.at {
        Some(at) => windows
            .iter()
            .filter(|w| w.start_ms / (bucket_s * 1000) * (bucket_s * 1000) == at)
            .cloned()
            .collect(),
        None => windows.clone(),
    };
    let dist = match &feature {
        Some(f) => analysis::distribution(&baseline, &in_bucket, f).map_err(fail)?,
        None => None,
    };
    let base = format!("/ui/models/{}/{}/drift", seg(&name), seg(&version));
    let hours = r.hours.unwrap_or(DEFAULT_HOURS).to_string();
    let bucket = bucket_s.to_string();
    let body = html! {
        (range_form(&base, &r))
        p {
            "Drift of each feature against the baseline packed with " (name) " " (version)
            " (" (report.baseline_examples) " examples), by " (format!("{:?}", thresholds.metric).to_uppercase())
            " in buckets of " (bucket_s) " s. Cells show PSI; "
            strong { "!" } " marks possible drift, " strong { "!!" } " drift, " strong { "·" } " too few observations. Pick a cell to compare that feature's distribution with the baseline."
        }
        @if report.buckets.is_empty() {
            p { "No telemetry for this version in the range." }
        } @else {
            div.heatmap-wrap {
                table.heatmap #heatmap {
                    caption.sr-only { "Drift heatmap: features by time bucket" }
                    thead { tr {
                        th scope="col" { "Feature" }
                        @for b in &report.buckets { th scope="col" { time datetime=(iso(b.start_ms)) title=(iso(b.start_ms)) { (iso(b.start_ms).get(11..19).unwrap_or("")) } } }
                    } }
                    tbody {
                        @for f in &features {
                            tr {
                                th scope="row" { (f) }
                                @for b in &report.buckets {
                                    @match b.features.iter().find(|x| x.name == *f) {
                                        Some(fd) => {
                                            @let (class, mark, words) = status_look(fd.status);
                                            @let level = ((fd.psi / 0.5).clamp(0.0, 1.0) * 9.0).round() as u32;
                                            td class=(format!("cell {class} l{level}")) data-feature=(f) data-status=(class) {
                                                a href=(format!("{base}?{}", query(&[("hours", &hours), ("bucket", &bucket), ("feature", f), ("at", &b.start_ms.to_string())]))) title=(format!("{f} at {}: PSI {:.3}, JS {:.3}{}, {} observations: {words}", iso(b.start_ms), fd.psi, fd.js, fd.ks.map(|k| format!(", KS {k:.3}")).unwrap_or_default(), fd.count)) {
                                                    (format!("{:.2}", fd.psi)) @if !mark.is_empty() { " " strong { (mark) } }
                                                    span.sr-only { " " (words) }
                                                }
                                            }
                                        }
                                        None => td.cell.none { "—" },
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !report.alerts.is_empty() {
                p #drift-alerts { strong { (report.alerts.len()) } " alerts in the range." }
            }
        }
        @if let Some(d) = &dist {
            section #distribution aria-labelledby="dist-h" {
                h2 #dist-h { (d.feature) ": baseline and current" }
                p { (d.count) " observations "
                    @match r.at { Some(at) => { "in the bucket from " (iso(at)) }, None => { "over the range" } }
                    "; the baseline's share per bin is outlined, the current one filled." }
                (bars(d))
                details {
                    summary { "The numbers" }
                    table {
                        thead { tr { th scope="col" { "Bin" } th scope="col" { "Baseline" } th scope="col" { "Current" } } }
                        tbody { @for b in &d.bins { tr { td { (b.label) } td.num { (format!("{:.1}%", b.baseline * 100.0)) } td.num { (format!("{:.1}%", b.current * 100.0)) } } } }
                    }
                }
            }
        }
    };
    Ok(page(
        Some(&s),
        &format!("Drift of {name} {version}"),
        "Models",
        body,
    ))
}

/// Baseline and current shares per bin as grouped bars (SVG, no script).
fn bars(d: &analysis::Distribution) -> Markup {
    let (w, h, pad) = (720.0_f64, 240.0_f64, 30.0_f64);
    let max = d
        .bins
        .iter()
        .map(|b| b.baseline.max(b.current))
        .fold(0.0_f64, f64::max)
        .max(0.01);
    let slot = (w - 2.0 * pad) / d.bins.len().max(1) as f64;
    let y = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    html! {
        svg.bars #dist-chart viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(format!("{}: baseline and current share per bin", d.feature)) {
            line x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) stroke="#555" {}
            text x=(pad) y="14" font-size="11" { "share (max " (format!("{:.0}%", max * 100.0)) ")" }
            @for (i, b) in d.bins.iter().enumerate() {
                @let x0 = pad + i as f64 * slot;
                rect x=(format!("{:.1}", x0 + slot * 0.1)) y=(format!("{:.1}", y(b.baseline))) width=(format!("{:.1}", slot * 0.38)) height=(format!("{:.1}", h - pad - y(b.baseline))) fill="none" stroke="#555" stroke-width="1.5" {
                    title { (b.label) ": baseline " (format!("{:.1}%", b.baseline * 100.0)) }
                }
                rect.current x=(format!("{:.1}", x0 + slot * 0.5)) y=(format!("{:.1}", y(b.current))) width=(format!("{:.1}", slot * 0.38)) height=(format!("{:.1}", h - pad - y(b.current))) fill="#1f5fbf" {
                    title { (b.label) ": current " (format!("{:.1}%", b.current * 100.0)) }
                }
                text x=(format!("{:.1}", x0 + slot / 2.0)) y=(format!("{:.1}", h - pad + 14.0)) font-size="9" text-anchor="middle" { (b.label.chars().take(16).collect::<String>()) }
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct SampleFilter {
    model: Option<String>,
    version: Option<String>,
    device: Option<String>,
    hours: Option<u64>,
}

/// Most samples the page draws (newest first).
const SAMPLES_SHOWN: usize = 40;

/// Largest side of a tensor drawn as an image (cells; larger ones are
/// drawn from every n-th pixel).
const MAX_IMAGE_SIDE: usize = 64;

/// Most tensors of one sample drawn.
const MAX_TENSORS_DRAWN: usize = 4;

pub(crate) async fn samples(
    State(st): State<AppState>,
    s: Session,
    Query(f): Query<SampleFilter>,
) -> Result<Markup, UiError> {
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let hours = f.hours.unwrap_or(DEFAULT_HOURS).clamp(1, 24 * 90);
    let q = StoreQuery {
        model: nonempty(&f.model),
        version: nonempty(&f.version),
        device: nonempty(&f.device),
        from_ms: Some(crate::fleet::now_ms().saturating_sub(hours * 3_600_000)),
        to_ms: None,
    };
    let store = st.store.clone();
    let mut samples = blocking(move || store.samples(&q)).await?;
    samples.sort_by_key(|s| std::cmp::Reverse(s.at_ms));
    let total = samples.len();
    samples.truncate(SAMPLES_SHOWN);
    off_runtime(move || {
    let body = html! {
        form.filters method="get" action="/ui/samples" aria-label="Filter samples" {
            p { label for="model" { "Model" } input #model type="text" name="model" value=[f.model.as_deref()]; }
            p { label for="sversion" { "Version" } input #sversion type="text" name="version" value=[f.version.as_deref()]; }
            p { label for="device" { "Device" } input #device type="text" name="device" value=[f.device.as_deref()]; }
            p { label for="shours" { "Hours back" } input #shours type="number" min="1" name="hours" value=(hours); }
            p { button type="submit" { "Filter" } }
        }
        p #samples-count { (samples.len()) " of " (total) " samples shown, newest first" }
        div.samples {
            @for sample in &samples { (sample_card(sample)) }
        }
    };
    Ok(page(Some(&s), "Drift samples", "Samples", body))
    })
    .await
}

fn sample_card(s: &StoredSample) -> Markup {
    html! {
        article.sample data-sample=(s.id) aria-label=(format!("sample {}", s.id)) {
            div.input { (input_view(&s.input)) }
            dl {
                dt { "When" } dd { (when(s.at_ms)) }
                dt { "Device" } dd { (s.device_id) }
                dt { "Model" } dd { (s.model.name) " " (s.model.version) }
                dt { "Why kept" } dd { (format!("{:?}", s.reason).to_lowercase()) }
                dt { "Prediction" } dd.prediction { (s.prediction.as_deref().unwrap_or("—")) }
                dt { "Label" } dd.label {
                    @match &s.label {
                        Some(l) if Some(l) == s.prediction.as_ref() => { (l) " " span.ok { "✔ right" } }
                        Some(l) => { (l) " " span.bad { "✖ wrong" } }
                        None => "not labelled",
                    }
                }
            }
        }
    }
}

/// Image media drawn as such; WAV audio as a waveform and a player;
/// tensors as a grayscale image when square, else as a line.
fn input_view(input: &SampleInput) -> Markup {
    match input {
        SampleInput::Media { media_type, data } => {
            let mt = media_type.as_str();
            if matches!(
                mt,
                "image/png" | "image/jpeg" | "image/jpg" | "image/gif" | "image/webp"
            ) {
                return html! { img.sample-image src=(format!("data:{mt};base64,{data}")) alt="the sample's input image"; };
            }
            if matches!(mt, "audio/wav" | "audio/x-wav" | "audio/wave") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap_or_default();
                return match wav_samples(&bytes) {
                    Ok((rate, values)) => html! {
                        (waveform(&values, &format!("waveform, {:.2} s at {rate} Hz", values.len() as f64 / rate.max(1) as f64)))
                        audio controls src=(format!("data:audio/wav;base64,{data}")) aria-label="play the sample" {}
                    },
                    Err(e) => html! { p.hint { "WAV that does not decode: " (e) } },
                };
            }
            html! { p.hint { (mt) ", " (data.len() * 3 / 4) " bytes (not drawn)" } }
        }
        SampleInput::Tensors { tensors } => html! {
            @for t in tensors.iter().take(MAX_TENSORS_DRAWN) { (tensor_view(t)) }
            @if tensors.len() > MAX_TENSORS_DRAWN {
                p.hint { (tensors.len() - MAX_TENSORS_DRAWN) " more inputs not drawn" }
            }
        },
    }
}

fn wav_samples(bytes: &[u8]) -> Result<(u32, Vec<f32>), String> {
    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let spec = r.spec();
    let channels = spec.channels.max(1) as usize;
    let values: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r
            .samples::<f32>()
            .step_by(channels)
            .collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            r.samples::<i32>()
                .step_by(channels)
                .map(|v| v.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
        }
    }
    .map_err(|e| e.to_string())?;
    Ok((spec.sample_rate, values))
}

fn tensor_values(t: &TensorData) -> Option<Vec<f64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&t.data)
        .ok()?;
    let size = t.dtype.size();
    Some(
        bytes
            .chunks_exact(size)
            .map(|c| match t.dtype {
                Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                Dtype::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
                Dtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                Dtype::I64 => {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
                }
                Dtype::U8 => c[0] as f64,
            })
            .collect(),
    )
}

fn tensor_view(t: &TensorData) -> Markup {
    let Some(values) = tensor_values(t) else {
        return html! { p.hint { (t.name) ": data that does not decode" } };
    };
    let n = values.len();
    // An image: the last two dimensions (both 4 or more), or a square.
    let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let hw = match dims.as_slice() {
        [.., h, w] if *h >= 4 && *w >= 4 && h.checked_mul(*w).is_some_and(|p| p <= n) => {
            Some((*h, *w))
        }
        _ => {
            let side = (n as f64).sqrt().round() as usize;
            (side >= 4 && side * side == n).then_some((side, side))
        }
    };
    let shape = format!("{:?}", t.shape);
    match hw {
        Some((h, w)) => {
            let px = &values[..h * w];
            let (lo, hi) = px
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let span = (hi - lo).max(1e-12);
            // At most 64×64 cells: larger images are drawn from every
            // `step`-th pixel, so a page stays small whatever devices send.
            let step = h.max(w).div_ceil(MAX_IMAGE_SIDE).max(1);
            let (ch, cw) = (h.div_ceil(step), w.div_ceil(step));
            let drawn = if step == 1 {
                String::new()
            } else {
                format!(", every {step}th pixel")
            };
            html! {
                svg.sample-image viewBox=(format!("0 0 {cw} {ch}")) role="img" aria-label=(format!("{} {shape} drawn as a {h}×{w} grayscale image{drawn}", t.name)) shape-rendering="crispEdges" {
                    @for y in 0..ch {
                        @for x in 0..cw {
                            @let v = px[(y * step) * w + x * step];
                            @let g = (255.0 - (v - lo) / span * 255.0).round() as u8;
                            rect x=(x) y=(y) width="1" height="1" fill=(format!("#{g:02x}{g:02x}{g:02x}")) {}
                        }
                    }
                }
            }
        }
        _ => waveform(
            &values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &format!("{} {shape}, {n} values", t.name),
        ),
    }
}

/// Values as a waveform: each of up to 400 columns spans the lowest and
/// highest value it covers.
fn waveform(values: &[f32], label: &str) -> Markup {
    let (w, h) = (400usize, 100.0_f32);
    let cols = values.len().clamp(1, w);
    let per = values.len().div_ceil(cols).max(1);
    let peak = values.iter().fold(1e-9_f32, |m, v| m.max(v.abs()));
    let mut d = String::new();
    for (i, chunk) in values.chunks(per).enumerate() {
        let (lo, hi) = chunk
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let y = |v: f32| h / 2.0 - v / peak * (h / 2.0 - 2.0);
        let x = i as f32 * w as f32 / cols as f32;
        d.push_str(&format!(
            "M{x:.1} {:.1}V{:.1}",
            y(hi),
            y(lo).max(y(hi) + 0.5)
        ));
    }
    html! {
        svg.waveform viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) preserveAspectRatio="none" {
            line x1="0" y1=(h / 2.0) x2=(w) y2=(h / 2.0) stroke="#bbb" {}
            path d=(d) stroke="#1f5fbf" stroke-width="1" fill="none" {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for &s in samples {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    #[test]
    fn audio_sample_is_drawn_as_a_waveform_with_a_player() {
        // A second of a 440 Hz tone at 16 kHz.
        let tone: Vec<i16> = (0..16_000)
            .map(|i| {
                ((i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin() * 20_000.0) as i16
            })
            .collect();
        let html = input_view(&SampleInput::media("audio/wav", &wav(&tone, 16_000))).into_string();
        assert!(html.contains("<svg class=\"waveform\""), "{html}");
        assert!(html.contains("1.00 s at 16000 Hz"), "{html}");
        assert!(
            html.contains("<audio controls src=\"data:audio/wav;base64,"),
            "{html}"
        );
        // 400 columns, each a vertical stroke.
        let d = html
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches('M').count(), 400);
    }

    #[test]
    fn broken_wav_sample_says_so_instead_of_failing_the_page() {
        let html = input_view(&SampleInput::media("audio/wav", b"RIFF not really")).into_string();
        assert!(html.contains("WAV that does not decode"), "{html}");
    }

    #[test]
    fn square_tensor_sample_is_drawn_as_a_grayscale_image() {
        let values: Vec<u8> = (0..64u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = TensorData::new("image", Dtype::F32, &[1, 64], &values);
        let html = input_view(&SampleInput::Tensors { tensors: vec![t] }).into_string();
        assert!(html.contains("drawn as a 8×8 grayscale image"), "{html}");
        assert_eq!(html.matches("<rect").count(), 64);
        // The smallest value is white, the largest black.
        assert!(
            html.contains("fill=\"#ffffff\"") && html.contains("fill=\"#000000\""),
            "{html}"
        );
    }

    #[test]
    fn other_media_is_named_not_embedded() {
        let html = input_view(&SampleInput::media(
            "image/svg+xml",
            b"<svg onload=alert(1)>",
        ))
        .into_string();
        assert!(html.contains("image/svg+xml, "), "{html}");
        assert!(!html.contains("data:image/svg"), "{html}");
    }
}
