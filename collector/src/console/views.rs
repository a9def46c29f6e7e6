//! Fleet, rollouts (with their actions) and the audit log.

use super::{page, query, seg, when, Session, UiError};
use crate::api::{blocking, AppState};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use edgeml_client::wire::audit::{verify_chain, AuditEntry};
use edgeml_client::wire::fleet::{
    FleetDevice, RolloutAction, RolloutDecision, RolloutState, UpdateState,
};
use edgeml_fleet::Selector;
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub(crate) struct FleetFilter {
    /// A tag selector (`site=plant-a,role in (pump)`).
    tag: Option<String>,
    /// `model@version`.
    version: Option<String>,
}

/// One row of the fleet table: a device from its status reports, its
/// telemetry, or both.
struct Row {
    id: String,
    model: Option<(String, String)>,
    arch: Option<String>,
    tags: BTreeMap<String, String>,
    last_seen_ms: Option<u64>,
    state: Option<UpdateState>,
    error: Option<(String, String)>,
    pending: Option<(u64, u64)>,
    channel: Option<String>,
}

pub(crate) async fn fleet(
    State(st): State<AppState>,
    s: Session,
    Query(f): Query<FleetFilter>,
) -> Result<Markup, UiError> {
    let store = st.store.clone();
    let (fleet, telemetry) =
        blocking(move || Ok((store.fleet_devices()?, store.devices()?))).await?;
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for d in fleet {
        let FleetDevice {
            device_id,
            last_seen_ms,
            status,
            tags,
            ..
        } = d;
        rows.insert(
            device_id.clone(),
            Row {
                id: device_id,
                model: status
                    .installed
                    .as_ref()
                    .map(|i| (i.model.clone(), i.version.clone())),
                arch: status.host_target.clone(),
                tags,
                last_seen_ms: Some(last_seen_ms),
                state: Some(status.state),
                error: status
                    .last_error
                    .clone()
                    .map(|e| (status.error_kind.clone().unwrap_or_default(), e)),
                pending: None,
                channel: Some(status.channel),
            },
        );
    }
    for d in telemetry {
        let latest = d.models.iter().max_by_key(|m| m.last_seen_ms);
        let row = rows.entry(d.device_id.clone()).or_insert_with(|| Row {
            id: d.device_id.clone(),
            model: latest.map(|m| (m.model.name.clone(), m.model.version.clone())),
            arch: None,
            tags: BTreeMap::new(),
            last_seen_ms: d.last_seen_ms,
            state: None,
            error: None,
            pending: None,
            channel: None,
        });
        row.pending = Some((d.pending_records, d.dropped_records));
        row.last_seen_ms = row.last_seen_ms.max(d.last_seen_ms);
    }
    let tag = f.tag.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let (selector, filter_error) = match tag.map(str::parse::<Selector>) {
        None => (None, None),
        Some(Ok(sel)) => (Some(sel), None),
        Some(Err(e)) => (None, Some(e.to_string())),
    };
    let version = f.version.as_deref().filter(|v| !v.is_empty());
    let versions: std::collections::BTreeSet<String> = rows
        .values()
        .filter_map(|r| r.model.as_ref().map(|(m, v)| format!("{m}@{v}")))
        .collect();
    let shown: Vec<&Row> = rows
        .values()
        .filter(|r| selector.as_ref().is_none_or(|sel| sel.matches(&r.tags)))
        .filter(|r| {
            version.is_none_or(|v| {
                r.model
                    .as_ref()
                    .is_some_and(|(m, ver)| format!("{m}@{ver}") == v)
            })
        })
        .collect();
    let body = html! {
        form.filters method="get" action="/ui/fleet" role="search" aria-label="Filter devices" {
            p {
                label for="tag" { "Tags" }
                input #tag type="text" name="tag" value=[tag] placeholder="site=plant-a,role in (pump)" aria-describedby="tag-hint";
                span #tag-hint .hint { "A label selector, as in release targets." }
            }
            p {
                label for="version" { "Model version" }
                select #version name="version" {
                    option value="" { "any" }
                    @for v in &versions {
                        option value=(v) selected[Some(v.as_str()) == version] { (v) }
                    }
                }
            }
            p { button type="submit" { "Filter" } " " a href="/ui/fleet" { "Clear" } }
        }
        @if let Some(e) = &filter_error {
            p.notice.bad role="alert" { "The tag filter does not parse: " (e) }
        }
        p #fleet-count { (shown.len()) " of " (rows.len()) " devices" }
        table #fleet {
            caption.sr-only { "Devices" }
            thead {
                tr {
                    th scope="col" { "Device" }
                    th scope="col" { "Model" }
                    th scope="col" { "Version" }
                    th scope="col" { "Architecture" }
                    th scope="col" { "Tags" }
                    th scope="col" { "Last seen" }
                    th scope="col" { "Health" }
                    th scope="col" { "Spool backlog" }
                }
            }
            tbody {
                @for r in &shown {
                    tr data-device=(r.id) {
                        th scope="row" { (r.id) @if let Some(c) = &r.channel { br; small { "channel " (c) } } }
                        td { @if let Some((m, _)) = &r.model { a href=(format!("/ui/models/{}", seg(m))) { (m) } } @else { "—" } }
                        td { @if let Some((_, v)) = &r.model { (v) } @else { "—" } }
                        td { (r.arch.as_deref().unwrap_or("—")) }
                        td { @for (k, v) in &r.tags { span.tag { (k) "=" (v) } " " } }
                        td { @if let Some(ms) = r.last_seen_ms { (when(ms)) } @else { "never" } }
                        td { (health(r.state, r.error.as_ref())) }
                        td.num {
                            @match r.pending {
                                Some((pending, dropped)) => {
                                    (pending) " records"
                                    @if dropped > 0 { br; span.bad { "⚠ " (dropped) " dropped" } }
                                }
                                None => "—",
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(Some(&s), "Fleet", "Fleet", body))
}

/// A device's health: its update state in words and a mark, and its last
/// error (never colour alone).
fn health(state: Option<UpdateState>, error: Option<&(String, String)>) -> Markup {
    let Some(state) = state else {
        return html! { "telemetry only" };
    };
    let (mark, class, words) = match state {
        UpdateState::RolledBack => ("✖", "bad", "rolled back"),
        UpdateState::Failed => ("✖", "bad", "update failed"),
        UpdateState::Recovered => ("⚠", "warn", "recovered"),
        UpdateState::Downloading => ("↻", "", "downloading"),
        UpdateState::Checking => ("↻", "", "checking"),
        UpdateState::Deferred => ("⏸", "", "deferred to its window"),
        UpdateState::Idle | UpdateState::Installed => ("✔", "ok", "healthy"),
    };
    html! {
        span class=(class) { span aria-hidden="true" { (mark) } " " (words) }
        @if let Some((kind, msg)) = error {
            br;
            small.error title=(msg) { (kind) ": " (truncate(msg, 120)) }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

#[derive(Deserialize)]
pub(crate) struct Notice {
    changed: Option<String>,
    state: Option<String>,
}

/// Decisions shown per channel.
const DECISIONS_SHOWN: usize = 8;

pub(crate) async fn rollouts(
    State(st): State<AppState>,
    s: Session,
    Query(n): Query<Notice>,
) -> Result<Markup, UiError> {
    let store = st.store.clone();
    let (channels, devices) = blocking(move || {
        let mut out = Vec::new();
        for c in store.channels()? {
            let decisions = store.decisions(Some(&c.channel))?;
            let rollbacks =
                store.rollbacks(&c.channel, &c.release.bundle.sha256, c.evidence_from_ms)?;
            out.push((c, decisions, rollbacks));
        }
        Ok((out, store.fleet_devices()?))
    })
    .await?;
    let body = html! {
        @if let (Some(c), Some(state)) = (&n.changed, &n.state) {
            p.notice.ok role="status" { "The rollout on channel " strong { (c) } " is now " strong { (state) } ". The audit log has the entry." }
        }
        @if channels.is_empty() {
            p { "Nothing is published yet. Push a release with " code { "edgeml push" } "." }
        }
        @for (c, decisions, rollbacks) in &channels {
            @let r = &c.release;
            @let on_new = devices.iter().filter(|d| d.status.channel == c.channel && d.status.installed.as_ref().is_some_and(|i| i.sha256 == r.bundle.sha256)).count();
            @let on_channel = devices.iter().filter(|d| d.status.channel == c.channel).count();
            section.rollout id=(format!("channel-{}", c.channel)) aria-labelledby=(format!("h-{}", c.channel)) data-state=(c.state.name()) {
                h2 id=(format!("h-{}", c.channel)) { "Channel " (c.channel) ": " (r.model) " " (r.model_version) }
                dl.facts {
                    dt { "State" } dd.state { (state_badge(c.state)) }
                    dt { "Share" }
                    dd {
                        @if let Some(sched) = &r.schedule {
                            "step " (c.step + 1) " of " (sched.steps.len()) ": " (r.share(Some(c.step))) "% of devices"
                            br; small { "schedule " (sched.steps_text()) ", each step at least " (sched.min_step_secs) " s and " (sched.min_step_devices) " devices; this step since " (when(c.step_started_ms)) }
                        } @else {
                            (r.rollout_percent) "% of devices"
                        }
                    }
                    dt { "Devices" } dd { (on_new) " of " (on_channel) " on this channel run " (r.model_version) }
                    @if let Some(t) = &r.target { dt { "Target" } dd { code { (t) } } }
                    dt { "Version before" } dd { (c.previous_version.as_deref().unwrap_or("none")) }
                    dt { "Published" } dd { (when(c.published_ms)) " (release metadata v" (c.version) ")" }
                    dt { "Evidence window" } dd { "since " (when(c.evidence_from_ms)) }
                    @if let Some(a) = &r.abort { dt { "Abort criteria" } dd { (format!("{:.0}", a.failure_share * 100.0)) "% of devices roll back, after " (a.min_devices) } }
                }
                @if let Some(reason) = &c.reason {
                    div.reason role=[(c.state == RolloutState::Halted).then_some("alert")] {
                        h3 { @if c.state == RolloutState::Halted { "Why it halted" } @else { "Why" } }
                        p.halt-reason { (reason) }
                    }
                }
                @if !rollbacks.is_empty() {
                    h3 { "Devices that rolled it back" }
                    ul.rollbacks {
                        @for (device, why) in rollbacks {
                            li { strong { (device) } ": " (why.as_deref().unwrap_or("no reason given")) }
                        }
                    }
                }
                @if let Some(g) = decisions.iter().rev().find(|d| d.reason.is_some() && d.reason != c.reason && !matches!(d.source, edgeml_client::wire::fleet::DecisionSource::Operator)) {
                    h3 { "Gate evidence" }
                    p.evidence { (when(g.at_ms)) ", " (g.source.name()) ": " (g.reason.as_deref().unwrap_or("")) }
                }
                (actions(&s, &c.channel, c.state, more_steps(c)))
                (decision_table(decisions))
            }
        }
    };
    Ok(page(Some(&s), "Rollouts", "Rollouts", body))
}

fn state_badge(state: RolloutState) -> Markup {
    let (mark, class) = match state {
        RolloutState::Active => ("▶", "ok"),
        RolloutState::Paused => ("⏸", "warn"),
        RolloutState::Halted => ("■", "bad"),
    };
    html! { span class=(format!("badge {class}")) { span aria-hidden="true" { (mark) } " " (state.name()) } }
}

/// Whether the console offers `action` on a rollout in `state`: pause an
/// active one, resume one that is not, promote a paced one with steps left
/// that is not halted, abort one that is not halted. (A pause must not turn
/// a halt into a pause: devices would keep the halted release.)
fn allowed(action: RolloutAction, state: RolloutState, more_steps: bool) -> bool {
    match action {
        RolloutAction::Pause => state == RolloutState::Active,
        RolloutAction::Resume => state != RolloutState::Active,
        RolloutAction::Promote => more_steps && state != RolloutState::Halted,
        RolloutAction::Abort => state != RolloutState::Halted,
    }
}

/// What the operator saw of a rollout when asked to confirm: the form
/// carries it, and the action is refused if the rollout moved meanwhile.
fn seen(c: &crate::store::StoredRelease) -> String {
    format!("{}:{}:{}", c.state.name(), c.version, c.step)
}

fn more_steps(c: &crate::store::StoredRelease) -> bool {
    c.release
        .schedule
        .as_ref()
        .is_some_and(|sc| c.step + 1 < sc.steps.len() as u32)
}

/// The buttons an admin may press on a rollout in `state` (links to their
/// confirmation pages).
fn actions(s: &Session, channel: &str, state: RolloutState, more_steps: bool) -> Markup {
    if !s.is_admin() {
        return html! { p.hint { "Read-only: log in with the admin token to pause, resume, promote or abort." } };
    }
    let buttons: Vec<(&str, &str)> = [
        (RolloutAction::Pause, "pause", "Pause"),
        (RolloutAction::Resume, "resume", "Resume"),
        (RolloutAction::Promote, "promote", "Promote"),
        (RolloutAction::Abort, "abort", "Abort"),
    ]
    .into_iter()
    .filter(|(a, _, _)| allowed(*a, state, more_steps))
    .map(|(_, path, label)| (path, label))
    .collect();
    html! {
        p.actions {
            @for (action, label) in buttons {
                a.button href=(format!("/ui/rollouts/{}/{action}", seg(channel))) data-action=(action) aria-label=(format!("{label} the rollout on channel {channel}")) { (label) }
                " "
            }
        }
    }
}

fn decision_table(decisions: &[RolloutDecision]) -> Markup {
    html! {
        @if !decisions.is_empty() {
            details.decisions {
                summary { "Decisions (" (decisions.len()) ")" }
                table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "By" } th scope="col" { "Step" } th scope="col" { "Reason" } th scope="col" { "Replica" } } }
                    tbody {
                        @for d in decisions.iter().rev().take(DECISIONS_SHOWN) {
                            tr {
                                td { (when(d.at_ms)) }
                                td { (d.from.name()) }
                                td { (d.to.name()) }
                                td { (d.source.name()) }
                                td { @if let Some(st) = d.step { (st + 1) } }
                                td { (d.reason.as_deref().unwrap_or("")) }
                                td { small { (d.replica) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn parse_action(action: &str) -> Option<RolloutAction> {
    match action {
        "pause" => Some(RolloutAction::Pause),
        "resume" => Some(RolloutAction::Resume),
        "promote" => Some(RolloutAction::Promote),
        "abort" => Some(RolloutAction::Abort),
        _ => None,
    }
}

/// What an action does, for its confirmation page.
fn effect(action: RolloutAction) -> &'static str {
    match action {
        RolloutAction::Pause => "Devices stop taking the release; those that run it keep it.",
        RolloutAction::Resume => "Devices take the release again. A halt is lifted, and the evidence window starts over.",
        RolloutAction::Promote => "The release goes to the last step of its schedule at once: every device it targets takes it.",
        RolloutAction::Abort => "The rollout halts, and devices that took the release go back to the version before.",
    }
}

/// `GET /ui/rollouts/{channel}/{action}`: the confirmation page.
pub(crate) async fn confirm(
    State(st): State<AppState>,
    s: Session,
    Path((channel, action)): Path<(String, String)>,
) -> Result<Markup, UiError> {
    let Some(act) = parse_action(&action) else {
        return Err(UiError::new(
            StatusCode::NOT_FOUND,
            format!("`{action}` is not a rollout action (pause, resume, promote, abort)."),
        ));
    };
    if !s.is_admin() {
        return Err(UiError::new(StatusCode::FORBIDDEN, "You are logged in as a viewer, who can see the fleet but not change it. Log in with the admin token to act."));
    }
    let current = published(&st, &channel).await?;
    if !allowed(act, current.state, more_steps(&current)) {
        return Err(not_now(&channel, act, &current));
    }
    let label = match act {
        RolloutAction::Pause => "Pause",
        RolloutAction::Resume => "Resume",
        RolloutAction::Promote => "Promote",
        RolloutAction::Abort => "Abort",
    };
    let body = html! {
        p.question {
            (label) " the rollout of " strong { (current.release.model) " " (current.release.model_version) }
            " on channel " strong { (channel) } " (now " (current.state.name()) ")?"
        }
        p { (effect(act)) }
        p { "The action goes into the audit log under your name." }
        form method="post" action=(format!("/ui/rollouts/{}/{action}", seg(&channel))) {
            (s.csrf_field())
            input type="hidden" name="seen" value=(seen(&current));
            button type="submit" #confirm { "Yes, " (label.to_lowercase()) }
            " "
            a href=(format!("/ui/rollouts#channel-{channel}")) { "Cancel" }
        }
    };
    Ok(page(
        Some(&s),
        &format!("{label} rollout?"),
        "Rollouts",
        body,
    ))
}

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
    /// The rollout as the confirmation page showed it.
    #[serde(default)]
    seen: String,
}

/// The channel's release and rollout state (404 if nothing is published).
async fn published(st: &AppState, channel: &str) -> Result<crate::store::StoredRelease, UiError> {
    let store = st.store.clone();
    let ch = channel.to_string();
    blocking(move || store.release(&ch)).await?.ok_or_else(|| {
        UiError::new(
            StatusCode::NOT_FOUND,
            format!("Nothing is published to channel `{channel}`."),
        )
    })
}

/// 409: the action does not apply to the rollout as it is.
fn not_now(channel: &str, act: RolloutAction, c: &crate::store::StoredRelease) -> UiError {
    let name = match act {
        RolloutAction::Pause => "pause",
        RolloutAction::Resume => "resume",
        RolloutAction::Promote => "promote",
        RolloutAction::Abort => "abort",
    };
    UiError::new(
        StatusCode::CONFLICT,
        format!(
            "The rollout on channel `{channel}` is {}{}: {name} does not apply to it now. Nothing was done; look at it again and decide.",
            c.state.name(),
            c.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        ),
    )
}

/// `POST /ui/rollouts/{channel}/{action}`: the same decision the API takes.
pub(crate) async fn act(
    State(st): State<AppState>,
    s: Session,
    headers: HeaderMap,
    Path((channel, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    if let Err(e) = s.check_action(&headers, &f.csrf) {
        return e.into_response();
    }
    let Some(act) = parse_action(&action) else {
        return UiError::new(
            StatusCode::NOT_FOUND,
            format!("`{action}` is not a rollout action."),
        )
        .into_response();
    };
    // Act only on the rollout the operator confirmed: if the gate (or
    // another operator) moved it since, say so instead.
    let current = match published(&st, &channel).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if f.seen != seen(&current) {
        return UiError::new(
            StatusCode::CONFLICT,
            format!(
                "The rollout on channel `{channel}` changed since you looked: it is now {}{}. Nothing was done; look at it again and decide.",
                current.state.name(),
                current.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        )
        .into_response();
    }
    if !allowed(act, current.state, more_steps(&current)) {
        return not_now(&channel, act, &current).into_response();
    }
    match crate::fleet::rollout_action(&st, channel, act, &s.operator()).await {
        Ok(changed) => Redirect::to(&format!(
            "/ui/rollouts?{}#channel-{}",
            query(&[
                ("changed", &changed.channel),
                ("state", changed.state.name())
            ]),
            changed.channel
        ))
        .into_response(),
        Err(e) => UiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct AuditFilter {
    /// Words every shown entry contains (action, target, operator, details).
    q: Option<String>,
}

/// Most entries the page shows (newest first).
const AUDIT_SHOWN: usize = 300;

pub(crate) async fn audit(
    State(st): State<AppState>,
    s: Session,
    Query(f): Query<AuditFilter>,
) -> Result<Markup, UiError> {
    let store = st.store.clone();
    let (head, entries) = blocking(move || {
        let head = store.audit_head()?;
        let mut all: Vec<AuditEntry> = Vec::new();
        loop {
            let after = all.last().map_or(0, |e| e.seq);
            let page = store.audit(after, crate::audit::MAX_PAGE)?;
            let done = page.len() < crate::audit::MAX_PAGE;
            all.extend(page);
            if done {
                break;
            }
        }
        Ok((head, all))
    })
    .await?;
    super::charts::off_runtime(move || audit_page(s, f, head, entries)).await
}

/// The audit page: the whole chain verified, then searched (on the
/// blocking pool: it hashes every entry).
fn audit_page(
    s: Session,
    f: AuditFilter,
    head: edgeml_client::wire::audit::AuditHead,
    entries: Vec<AuditEntry>,
) -> Result<Markup, UiError> {
    let verdict = verify_chain(&entries, Some(&head), None);
    let words: Vec<String> =
        f.q.as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
    let matches = |e: &AuditEntry| {
        let text = format!(
            "{} {} {} {} {} {}",
            e.actor,
            e.operator.as_deref().unwrap_or(""),
            e.action,
            e.target,
            e.key_ids.join(" "),
            e.details
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
        .to_lowercase();
        words.iter().all(|w| text.contains(w.as_str()))
    };
    let shown: Vec<&AuditEntry> = entries.iter().rev().filter(|e| matches(e)).collect();
    let body = html! {
        @match &verdict {
            Ok(h) => p.notice.ok #chain role="status" data-verified="true" {
                span aria-hidden="true" { "✔ " }
                "Chain verified: " (entries.len()) " entries up to #" (h.seq) ", every hash and link checked, and the head the server recorded (#" (head.seq) ", " code { (head.hash.get(..16).unwrap_or(&head.hash)) } "…) is in it. "
                small { "This is the server checking its own database; for a check that does not trust the server, keep a checkpoint with " code { "edgeml audit verify --checkpoint FILE" } "." }
            },
            Err(e) => p.notice.bad #chain role="alert" data-verified="false" {
                span aria-hidden="true" { "✖ " } "Chain verification failed: " (e.to_string())
            },
        }
        form.filters method="get" action="/ui/audit" role="search" aria-label="Search the audit log" {
            p {
                label for="q" { "Search" }
                input #q type="search" name="q" value=[f.q.as_deref()] placeholder="rollout.resume stable";
                " " button type="submit" { "Search" }
                " " a href="/ui/audit" { "Clear" }
            }
        }
        p #audit-count { (shown.len().min(AUDIT_SHOWN)) " of " (shown.len()) " matching entries shown, newest first (" (entries.len()) " in the log)" }
        table #audit {
            thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Target" } th scope="col" { "Details" } } }
            tbody {
                @for e in shown.iter().take(AUDIT_SHOWN) {
                    tr data-action=(e.action) {
                        td.num { (e.seq) }
                        td { (when(e.at_ms)) }
                        td { (e.actor) @if let Some(o) = &e.operator { " (" (o) ")" } }
                        td { code { (e.action) } }
                        td { (e.target) }
                        td {
                            @for (k, v) in &e.details { span.detail { (k) "=" (v) } " " }
                            @if !e.key_ids.is_empty() { span.detail { "keys=" (e.key_ids.join(",")) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(Some(&s), "Audit log", "Audit log", body))
}
