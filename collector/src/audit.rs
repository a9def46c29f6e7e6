//! The audit log's server side: what the handlers record after a change,
//! and `GET /v1/audit` for `edgeml audit`. The chain itself (hashes,
//! verification) is in [`edgeml_client::wire::audit`], shared with the CLI.

use crate::api::{admin, blocking, err, ApiResult, AppState};
use crate::store::NewAuditEntry;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgeml_client::wire::audit::{AuditPage, OPERATOR_HEADER};
use edgeml_client::wire::ErrorBody;
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::IntoParams;

/// Most entries one `GET /v1/audit` returns.
pub const MAX_PAGE: usize = 1000;

/// The operator name a request claims: printable ASCII, at most 64
/// characters; anything else is ignored rather than refused (the action
/// is authorised by the token, not by the name).
pub(crate) fn operator(headers: &HeaderMap) -> Option<String> {
    operator_name(headers.get(OPERATOR_HEADER)?.to_str().ok()?)
}

/// An operator name as given (a header, the console's login form): kept if
/// printable ASCII of 1 to 64 characters after trimming, else ignored.
pub(crate) fn operator_name(given: &str) -> Option<String> {
    let v = given.trim();
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| (0x20..0x7f).contains(&b));
    ok.then(|| v.to_string())
}

/// Who asked for a change made with the admin credential: the name they
/// gave (claimed, not authenticated) and the way they came (`api`, or
/// `console`: the web console records `via = console` in the details).
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    pub name: Option<String>,
    pub console: bool,
}

impl Operator {
    /// An API caller: the name in its `Edgeml-Operator` header.
    pub(crate) fn api(headers: &HeaderMap) -> Operator {
        Operator {
            name: operator(headers),
            console: false,
        }
    }
}

/// An entry for an action taken with the admin token.
pub(crate) fn by_admin(
    headers: &HeaderMap,
    action: &str,
    target: impl Into<String>,
) -> NewAuditEntry {
    by(&Operator::api(headers), action, target)
}

/// An entry for an action an operator took with the admin credential.
pub(crate) fn by(op: &Operator, action: &str, target: impl Into<String>) -> NewAuditEntry {
    let mut entry = NewAuditEntry {
        actor: "admin".into(),
        operator: op.name.clone(),
        action: action.into(),
        target: target.into(),
        ..NewAuditEntry::default()
    };
    if op.console {
        entry.details.insert("via".into(), "console".into());
    }
    entry
}

/// Named values for [`NewAuditEntry::details`].
pub(crate) fn details<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Append an entry for a change that has been made (blob uploads, roots,
/// enrolments, label uploads; releases and rollout decisions go in with
/// their own transaction). If the log cannot be written
/// the caller gets a 500 saying so: the change stands, and the operator
/// knows it is missing from the log.
pub(crate) async fn record(st: &AppState, entry: NewAuditEntry) -> ApiResult<()> {
    let store = st.store.clone();
    let what = format!("{} {}", entry.action, entry.target);
    match blocking(move || store.append_audit(&entry, crate::fleet::now_ms())).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(action = %what, error = ?e, "audit log append failed");
            Err(err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("`{what}` was done, but it could not be written to the audit log; check the database"),
            ))
        }
    }
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct AuditQuery {
    /// Entries after this position (default 0: from the start).
    #[serde(default)]
    after: u64,
    /// At most this many (default and most: 1000).
    #[serde(default)]
    limit: Option<usize>,
}

/// The audit log, oldest first, a page at a time, with the head the server
/// recorded. Verify it with `edgeml audit verify`.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    security(("admin" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "Entries after `after`, and the server's head", body = AuditPage),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(crate) async fn log(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let store = st.store.clone();
    // The head first: entries appended meanwhile only make the page longer.
    let (head, entries) = blocking(move || {
        let head = store.audit_head()?;
        Ok((head, store.audit(q.after, limit)?))
    })
    .await?;
    Ok(Json(AuditPage { entries, head }).into_response())
}

/// An entry for a rollout decision (`rollout.<to-state>`): by an operator
/// (`by` given) or by the server itself (the canary gate, rollback
/// evidence).
pub(crate) fn decision(
    by_operator: Option<&Operator>,
    seen: &crate::store::StoredRelease,
    d: &crate::store::Decision,
) -> NewAuditEntry {
    let action = match (d.to, by_operator.is_some()) {
        // A move to another step of a paced release: by the pacer, or an
        // operator's promote.
        (edgeml_client::wire::fleet::RolloutState::Active, true) if d.step.is_some() => {
            "rollout.promote"
        }
        (edgeml_client::wire::fleet::RolloutState::Active, false) if d.step.is_some() => {
            "rollout.step"
        }
        (edgeml_client::wire::fleet::RolloutState::Active, _) => "rollout.resume",
        (edgeml_client::wire::fleet::RolloutState::Paused, _) => "rollout.pause",
        (edgeml_client::wire::fleet::RolloutState::Halted, true) => "rollout.abort",
        (edgeml_client::wire::fleet::RolloutState::Halted, false) => "rollout.halt",
    };
    let mut entry = match by_operator {
        Some(op) => by(op, action, &seen.channel),
        None => NewAuditEntry {
            actor: "server".into(),
            action: action.into(),
            target: seen.channel.clone(),
            ..NewAuditEntry::default()
        },
    };
    entry.details.extend(details([
        ("model", seen.release.model.clone()),
        ("model_version", seen.release.model_version.to_string()),
        ("from", seen.state.name().to_string()),
        ("to", d.to.name().to_string()),
        ("source", d.source.name().to_string()),
        ("replica", d.replica.clone()),
    ]));
    if let Some(r) = &d.reason {
        entry.details.insert("reason".into(), r.clone());
    }
    if let Some(step) = d.step {
        entry
            .details
            .insert("from_step".into(), (seen.step + 1).to_string());
        entry
            .details
            .insert("to_step".into(), (step + 1).to_string());
        entry.details.insert(
            "share".into(),
            format!("{}%", seen.release.share(Some(step))),
        );
    }
    entry
}
