//! The server's metrics, served at `GET /metrics` in the Prometheus text
//! format to a scraper holding the metrics token (`--metrics-token-file`):
//! requests by route and status, telemetry ingest, and, read from the
//! database at each scrape (so every replica reports the same fleet),
//! devices' spool backlog, rollout state and rollout decisions.
//!
//! With an OTLP export (`--otlp-endpoint`), the same metrics, under the
//! same names, are also pushed to an OpenTelemetry collector: events are
//! recorded into both, and the database-backed series are observable
//! gauges read at each export.

use crate::api::{blocking, err, token_ok, ApiResult, AppState};
use crate::store::Store;
use crate::store::StoreError;
use crate::store::StoredRelease;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edgeml_client::wire::fleet::RolloutDecision;
use edgeml_client::wire::fleet::RolloutState;
use edgeml_client::wire::telemetry::DeviceInfo;
use edgeml_otlp::{Attribute, Otlp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    channel: String,
    model_version: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    channel: String,
    source: &'static str,
    to: &'static str,
}

pub(crate) struct Metrics {
    /// Held from refreshing the database-backed series to encoding them,
    /// so two scrapes at once do not see each other's half.
    scrape: std::sync::Mutex<()>,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    records: Family<OutcomeLabels, Counter>,
    batches: Counter,
    spool_pending: Family<DeviceLabels, Gauge>,
    spool_dropped: Family<DeviceLabels, Gauge>,
    rollout: Family<RolloutLabels, Gauge>,
    decisions: Family<DecisionLabels, Gauge>,
    otel: Option<Otel>,
}

/// Points of a database-backed gauge: attributes and value.
type Points = Vec<(Vec<Attribute>, i64)>;

/// The same metrics as OpenTelemetry instruments (OTLP export).
struct Otel {
    requests: opentelemetry::metrics::Counter<u64>,
    latency: opentelemetry::metrics::Histogram<f64>,
    records: opentelemetry::metrics::Counter<u64>,
    batches: opentelemetry::metrics::Counter<u64>,
    /// Observed at each export, from the database; kept alive here.
    _gauges: Vec<opentelemetry::metrics::ObservableGauge<i64>>,
}

impl Otel {
    fn new(otlp: &Otlp, store: Arc<dyn Store>) -> Otel {
        let meter = otlp.meter();
        let name = |n: &str| format!("edgeml_server_{n}");
        let gauge =
            |n: &str, help: &'static str, series: fn(&dyn Store) -> Result<Points, StoreError>| {
                let store = store.clone();
                meter
                    .i64_observable_gauge(name(n))
                    .with_description(help)
                    .with_callback(move |observer| {
                        // A failed read skips this export's points; the next
                        // export tries again.
                        if let Ok(points) = series(&*store) {
                            for (attributes, value) in points {
                                observer.observe(value, &attributes);
                            }
                        }
                    })
                    .build()
            };
        let gauges = vec![
            gauge(
                "device_spool_pending_records",
                "Records waiting in a device's spool at its last batch",
                |s| {
                    Ok(spool_series(&s.devices()?)
                        .map(|(d, pending, _)| (vec![Attribute::new("device", d)], pending))
                        .collect())
                },
            ),
            gauge(
                "device_spool_dropped_records",
                "Records a device dropped because its spool was full, ever",
                |s| {
                    Ok(spool_series(&s.devices()?)
                        .map(|(d, _, dropped)| (vec![Attribute::new("device", d)], dropped))
                        .collect())
                },
            ),
            gauge(
                "rollout_state",
                "1 for the state each channel's rollout is in, 0 for the others",
                |s| {
                    Ok(rollout_series(&s.channels()?)
                        .into_iter()
                        .map(|(l, v)| {
                            (
                                vec![
                                    Attribute::new("channel", l.channel),
                                    Attribute::new("model_version", l.model_version),
                                    Attribute::new("state", l.state),
                                ],
                                v,
                            )
                        })
                        .collect())
                },
            ),
            gauge(
                "rollout_decisions",
                "Rollout decisions recorded in the database by all replicas",
                |s| {
                    Ok(decision_series(s.decisions(None)?)
                        .into_iter()
                        .map(|(l, v)| {
                            (
                                vec![
                                    Attribute::new("channel", l.channel),
                                    Attribute::new("source", l.source),
                                    Attribute::new("to", l.to),
                                ],
                                v,
                            )
                        })
                        .collect())
                },
            ),
        ];
        Otel {
            requests: meter
                .u64_counter(name("http_requests"))
                .with_description("HTTP requests by route, method and status")
                .build(),
            latency: meter
                .f64_histogram(name("http_request_duration_seconds"))
                .with_description("Time to answer, by route and method")
                .with_unit("s")
                .with_boundaries(latency_buckets().collect())
                .build(),
            records: meter
                .u64_counter(name("ingest_records"))
                .with_description("Telemetry records received by this replica: stored, or already stored (a retry)")
                .build(),
            batches: meter
                .u64_counter(name("ingest_batches"))
                .with_description("Telemetry batches stored by this replica")
                .build(),
            _gauges: gauges,
        }
    }
}

/// Request latency buckets: 250 µs to about 8 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00025, 2.0, 16)
}

/// Each device's spool backlog and drops.
fn spool_series(devices: &[DeviceInfo]) -> impl Iterator<Item = (String, i64, i64)> + '_ {
    devices.iter().map(|d| {
        (
            d.device_id.clone(),
            i64::try_from(d.pending_records).unwrap_or(i64::MAX),
            i64::try_from(d.dropped_records).unwrap_or(i64::MAX),
        )
    })
}

/// A 0/1 series per channel and rollout state.
fn rollout_series(channels: &[StoredRelease]) -> Vec<(RolloutLabels, i64)> {
    let mut out = Vec::new();
    for c in channels {
        for state in [
            RolloutState::Active,
            RolloutState::Paused,
            RolloutState::Halted,
        ] {
            out.push((
                RolloutLabels {
                    channel: c.channel.clone(),
                    model_version: c.release.model_version.to_string(),
                    state: state.name(),
                },
                i64::from(c.state == state),
            ));
        }
    }
    out
}

/// Decisions counted by channel, source and resulting state.
fn decision_series(decisions: Vec<RolloutDecision>) -> Vec<(DecisionLabels, i64)> {
    let mut counted: BTreeMap<(String, &'static str, &'static str), i64> = BTreeMap::new();
    for d in decisions {
        *counted
            .entry((d.channel, d.source.name(), d.to.name()))
            .or_default() += 1;
    }
    counted
        .into_iter()
        .map(|((channel, source, to), n)| {
            (
                DecisionLabels {
                    channel,
                    source,
                    to,
                },
                n,
            )
        })
        .collect()
}

impl Metrics {
    pub(crate) fn new(otlp: Option<&Otlp>, store: Arc<dyn Store>) -> Metrics {
        let mut r = Registry::with_prefix("edgeml_server");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 250 µs to about 8 s.
            Histogram::new(latency_buckets())
        });
        r.register(
            "http_request_duration_seconds",
            "Time to answer, by route and method",
            latency.clone(),
        );
        let records = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "ingest_records",
            "Telemetry records received by this replica: stored, or already stored (a retry)",
            records.clone(),
        );
        let batches = Counter::default();
        r.register(
            "ingest_batches",
            "Telemetry batches stored by this replica",
            batches.clone(),
        );
        let spool_pending = Family::<DeviceLabels, Gauge>::default();
        r.register(
            "device_spool_pending_records",
            "Records waiting in a device's spool at its last batch",
            spool_pending.clone(),
        );
        let spool_dropped = Family::<DeviceLabels, Gauge>::default();
        r.register(
            "device_spool_dropped_records",
            "Records a device dropped because its spool was full, ever",
            spool_dropped.clone(),
        );
        let rollout = Family::<RolloutLabels, Gauge>::default();
        r.register(
            "rollout_state",
            "1 for the state each channel's rollout is in, 0 for the others",
            rollout.clone(),
        );
        let decisions = Family::<DecisionLabels, Gauge>::default();
        r.register(
            "rollout_decisions",
            "Rollout decisions recorded in the database by all replicas (canary halts, rollback halts, operators)",
            decisions.clone(),
        );
        Metrics {
            scrape: std::sync::Mutex::new(()),
            registry: r,
            requests,
            latency,
            records,
            batches,
            spool_pending,
            spool_dropped,
            rollout,
            decisions,
            otel: otlp.map(|o| Otel::new(o, store)),
        }
    }

    /// A stored telemetry batch.
    pub(crate) fn ingested(&self, accepted: u64, duplicates: u64) {
        self.batches.inc();
        self.records
            .get_or_create(&OutcomeLabels { outcome: "stored" })
            .inc_by(accepted);
        self.records
            .get_or_create(&OutcomeLabels {
                outcome: "duplicate",
            })
            .inc_by(duplicates);
        if let Some(o) = &self.otel {
            o.batches.add(1, &[]);
            o.records
                .add(accepted, &[Attribute::new("outcome", "stored")]);
            o.records
                .add(duplicates, &[Attribute::new("outcome", "duplicate")]);
        }
    }

    /// An answered request.
    fn answered(&self, route: String, method: String, status: u16, seconds: f64) {
        if let Some(o) = &self.otel {
            let route_method = [
                Attribute::new("route", route.clone()),
                Attribute::new("method", method.clone()),
            ];
            o.latency.record(seconds, &route_method);
            let [r, m] = route_method;
            o.requests
                .add(1, &[r, m, Attribute::new("status", i64::from(status))]);
        }
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method: method.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }
}

/// Count every request by its route pattern (not its path: device ids and
/// digests would make a series each), method and status.
pub(crate) async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    st.metrics.answered(
        route,
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Prometheus metrics (text format), for the holder of the metrics token.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    security(("metrics" = [])),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "Missing or wrong metrics token", body = edgeml_client::wire::ErrorBody),
        (status = 404, description = "Metrics are off (no --metrics-token-file)", body = edgeml_client::wire::ErrorBody),
    )
)]
pub(crate) async fn scrape(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let Some(token) = st.settings.metrics_token.as_deref() else {
        return Err(err(
            StatusCode::NOT_FOUND,
            "metrics are off: start the server with a metrics token (--metrics-token-file) and give it to the scraper",
        ));
    };
    if !token_ok(&headers, token) {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "the metrics token is required (Authorization: Bearer)",
        ));
    }
    let store = st.store.clone();
    let (devices, channels, decisions) =
        blocking(move || Ok((store.devices()?, store.channels()?, store.decisions(None)?))).await?;
    let m = &st.metrics;
    let _one = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
    m.spool_pending.clear();
    m.spool_dropped.clear();
    for (device, pending, dropped) in spool_series(&devices) {
        let labels = DeviceLabels { device };
        m.spool_pending.get_or_create(&labels).set(pending);
        m.spool_dropped.get_or_create(&labels).set(dropped);
    }
    m.rollout.clear();
    for (labels, v) in rollout_series(&channels) {
        m.rollout.get_or_create(&labels).set(v);
    }
    m.decisions.clear();
    for (labels, n) in decision_series(decisions) {
        m.decisions.get_or_create(&labels).set(n);
    }
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry)
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        out,
    )
        .into_response())
}
