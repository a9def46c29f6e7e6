//! The server's metrics, served at `GET /metrics` in the Prometheus text
//! format to a scraper holding the metrics token (`--metrics-token-file`):
//! requests by route and status, telemetry ingest, and, read from the
//! database at each scrape (so every replica reports the same fleet),
//! devices' spool backlog, rollout state and rollout decisions.

use crate::api::{blocking, err, token_ok, ApiResult, AppState};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edgeml_client::wire::fleet::RolloutState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

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
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut r = Registry::with_prefix("edgeml_server");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 250 µs to about 8 s.
            Histogram::new(exponential_buckets(0.00025, 2.0, 16))
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
    let m = &st.metrics;
    m.latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
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
    for d in devices {
        let labels = DeviceLabels {
            device: d.device_id,
        };
        m.spool_pending
            .get_or_create(&labels)
            .set(i64::try_from(d.pending_records).unwrap_or(i64::MAX));
        m.spool_dropped
            .get_or_create(&labels)
            .set(i64::try_from(d.dropped_records).unwrap_or(i64::MAX));
    }
    m.rollout.clear();
    for c in channels {
        for state in [
            RolloutState::Active,
            RolloutState::Paused,
            RolloutState::Halted,
        ] {
            m.rollout
                .get_or_create(&RolloutLabels {
                    channel: c.channel.clone(),
                    model_version: c.release.model_version.to_string(),
                    state: state.name(),
                })
                .set(i64::from(c.state == state));
        }
    }
    let mut counted: BTreeMap<(String, &'static str, &'static str), i64> = BTreeMap::new();
    for d in decisions {
        *counted
            .entry((d.channel, d.source.name(), d.to.name()))
            .or_default() += 1;
    }
    m.decisions.clear();
    for ((channel, source, to), n) in counted {
        m.decisions
            .get_or_create(&DecisionLabels {
                channel,
                source,
                to,
            })
            .set(n);
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
