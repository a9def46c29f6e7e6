//! The web console under `/ui`: server-rendered pages over the same store
//! and the same action functions as the API, so what an operator does here
//! is what `edgeml rollout ...` does, audit entry included.
//!
//! - **Sessions**: log in with the admin token (views and actions) or the
//!   viewer token (views only). The session is an encrypted, authenticated
//!   cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` unless the
//!   insecure HTTP setting is on) holding the role, the operator's name for
//!   the audit log, a CSRF token and the expiry.
//! - **Actions** are `POST` forms behind a confirmation page; each carries
//!   the session's CSRF token and must come from this origin
//!   (`Sec-Fetch-Site` / `Origin`).
//! - **Assets** (stylesheet, script, the vendored uPlot chart library) are
//!   embedded in the binary and served under a content hash; every page has
//!   a strict Content-Security-Policy: no inline script, no inline style,
//!   nothing from another origin.

mod charts;
mod views;

use crate::api::{token_matches, ApiError, AppState};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use maud::{html, Markup, DOCTYPE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The session cookie's name.
const COOKIE: &str = "edgeml_session";

/// What every console response may load: its own scripts, styles and
/// images, and `data:` images and audio (drift samples).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The key that encrypts session cookies: the configured one (64 bytes or
/// more), else a random one.
pub(crate) fn session_key(given: Option<&[u8]>) -> Result<Key, String> {
    match given {
        Some(k) if k.len() >= 64 => {
            Key::try_from(k).map_err(|e| format!("console session key: {e}"))
        }
        Some(k) => Err(format!(
            "the console session key has {} bytes; it needs at least 64",
            k.len()
        )),
        None => {
            let mut k = [0u8; 64];
            getrandom::fill(&mut k)
                .map_err(|e| format!("no randomness for the console session key: {e}"))?;
            Key::try_from(&k[..]).map_err(|e| format!("console session key: {e}"))
        }
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/fleet", get(views::fleet))
        .route("/ui/rollouts", get(views::rollouts))
        .route(
            "/ui/rollouts/{channel}/{action}",
            get(views::confirm).post(views::act),
        )
        .route("/ui/audit", get(views::audit))
        .route("/ui/models", get(charts::models))
        .route("/ui/models/{name}", get(charts::model))
        .route("/ui/models/{name}/{version}/drift", get(charts::drift))
        .route("/ui/samples", get(charts::samples))
        .route("/ui/static/{version}/{name}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

// ---------------------------------------------------------------- assets

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../console/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../console/console.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../console/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../console/vendor/uPlot.min.css"),
    },
];

/// A digest of every asset: their URLs change when any does, so browsers
/// may cache them for good.
static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for a in ASSETS {
        h.update(a.name.as_bytes());
        h.update(a.bytes);
    }
    hex::encode(&h.finalize()[..6])
});

fn asset_url(name: &str) -> String {
    format!("/ui/static/{}/{name}", *ASSET_VERSION)
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such console asset").into_response();
    };
    let cache = if version == *ASSET_VERSION {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        a.bytes,
    )
        .into_response()
}

// --------------------------------------------------------------- sessions

/// What a login may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Every view and action (the admin token).
    Admin,
    /// Every view, no action (the viewer token).
    Viewer,
}

/// A logged-in operator, from the session cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    role: Role,
    /// The name given at login, for the audit log (claimed, like the API's
    /// `Edgeml-Operator` header).
    operator: Option<String>,
    /// Every form's CSRF token.
    csrf: String,
    expires_ms: u64,
    /// Which token logged in ([`token_tag`]): a session ends when its
    /// token is replaced.
    token: String,
}

/// A short digest naming a token (not enough to find it).
fn token_tag(token: &str) -> String {
    hex::encode(&Sha256::digest(format!("edgeml-console-session\n{}", token.trim()))[..8])
}

/// The token a role logs in with now.
fn role_token(st: &AppState, role: Role) -> Option<&str> {
    match role {
        Role::Admin => Some(&st.settings.admin_token),
        Role::Viewer => st.settings.console.viewer_token.as_deref(),
    }
}

impl Session {
    pub(crate) fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The audit log's view of this operator.
    pub(crate) fn operator(&self) -> crate::audit::Operator {
        crate::audit::Operator {
            name: self.operator.clone(),
            console: true,
        }
    }

    /// A hidden form field with the CSRF token.
    pub(crate) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// Whether a form carries this session's CSRF token (digests compared:
    /// the time says nothing about the token).
    fn csrf_ok(&self, csrf: &str) -> bool {
        Sha256::digest(csrf.as_bytes()) == Sha256::digest(self.csrf.as_bytes())
    }

    /// Whether a form post may act: an admin session, the session's CSRF
    /// token, and a request from this origin.
    pub(crate) fn check_action(&self, headers: &HeaderMap, csrf: &str) -> Result<(), UiError> {
        if !same_origin(headers) {
            return Err(UiError::new(
                StatusCode::FORBIDDEN,
                "This request came from another site. Actions are only taken from the console's own pages.",
            ));
        }
        if !self.csrf_ok(csrf) {
            return Err(UiError::new(
                StatusCode::FORBIDDEN,
                "The form's CSRF token does not match your session (it may be from an older login). Reload the page and try again.",
            ));
        }
        if !self.is_admin() {
            return Err(UiError::new(
                StatusCode::FORBIDDEN,
                "You are logged in as a viewer, who can see the fleet but not change it. Log in with the admin token to act.",
            ));
        }
        Ok(())
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let jar = PrivateCookieJar::<Key>::from_headers(&parts.headers, st.console_key.clone());
        let now = crate::fleet::now_ms();
        match jar
            .get(COOKIE)
            .and_then(|c| serde_json::from_str::<Session>(c.value()).ok())
            .filter(|s| s.expires_ms > now)
            .filter(|s| role_token(st, s.role).is_some_and(|t| token_tag(t) == s.token))
        {
            Some(s) => Ok(s),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/ui/fleet", |p| p.as_str());
                Err(
                    Redirect::to(&format!("/ui/login?{}", query(&[("next", next)])))
                        .into_response(),
                )
            }
        }
    }
}

/// `Sec-Fetch-Site` says same-origin (or a typed URL), or else `Origin`
/// names this host. A request with neither is not from a browser page.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .is_some_and(|(_, rest)| Some(rest) == host)
        }
    }
}

/// A URL query string.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Where to go after logging in: a console page, never another site (and
/// nothing a `Location` header cannot hold).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.contains("//")
                && n.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\') =>
        {
            n
        }
        _ => "/ui/fleet",
    }
}

/// A value as one URL path segment (model names and versions come from
/// devices: `/`, `?`, `#` and `..` must not change where a link goes).
pub(crate) fn seg(s: &str) -> String {
    /// Everything but RFC 3986's unreserved characters.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Markup {
    login_form(q.next.as_deref(), None)
}

fn login_form(next: Option<&str>, error: Option<&str>) -> Markup {
    page(
        None,
        "Log in",
        "",
        html! {
            @if let Some(e) = error {
                p.notice.bad role="alert" { (e) }
            }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="next" value=(safe_next(next));
                p {
                    label for="token" { "Token" }
                    input #token type="password" name="token" required autocomplete="current-password" autofocus;
                    span.hint { "The server's admin token (view and act) or viewer token (view only)." }
                }
                p {
                    label for="operator" { "Your name (optional)" }
                    input #operator type="text" name="operator" maxlength="64" autocomplete="username";
                    span.hint { "Recorded with your actions in the audit log." }
                }
                p { button type="submit" { "Log in" } }
            }
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    operator: String,
    next: Option<String>,
}

async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar<Key>,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return UiError::new(StatusCode::FORBIDDEN, "Log in from the console's own page.")
            .into_response();
    }
    let matches = |role| role_token(&st, role).is_some_and(|t| token_matches(&f.token, t));
    let role = if matches(Role::Admin) {
        Role::Admin
    } else if matches(Role::Viewer) {
        Role::Viewer
    } else {
        tracing::warn!("console login with a wrong token");
        let mut resp = login_form(
            f.next.as_deref(),
            Some("That token is neither the admin token nor the viewer token. Check it and try again."),
        )
        .into_response();
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return resp;
    };
    let operator = crate::audit::operator_name(&f.operator);
    // Logins are in the audit log (who came in, with which credential);
    // a login that cannot be recorded does not happen.
    let entry = crate::store::NewAuditEntry {
        actor: match role {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
        .into(),
        operator: operator.clone(),
        action: "console.login".into(),
        target: "console".into(),
        ..Default::default()
    };
    if let Err(e) = crate::audit::record(&st, entry).await {
        return UiError::from(e).into_response();
    }
    let mut csrf = [0u8; 32];
    if getrandom::fill(&mut csrf).is_err() {
        return UiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server has no randomness for a session; try again.",
        )
        .into_response();
    }
    let ttl = st.settings.console.session_ttl;
    let session = Session {
        role,
        operator,
        csrf: hex::encode(csrf),
        expires_ms: crate::fleet::now_ms().saturating_add(ttl.as_millis() as u64),
        token: role_token(&st, role).map(token_tag).unwrap_or_default(),
    };
    let Ok(value) = serde_json::to_string(&session) else {
        return UiError::new(StatusCode::INTERNAL_SERVER_ERROR, "session").into_response();
    };
    let cookie = Cookie::build((COOKIE, value))
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(!st.settings.console.insecure_http)
        .max_age(time::Duration::seconds(ttl.as_secs() as i64))
        .build();
    tracing::info!(role = ?role, operator = ?session.operator, "console login");
    (jar.add(cookie), Redirect::to(safe_next(f.next.as_deref()))).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    session: Session,
    headers: HeaderMap,
    jar: PrivateCookieJar<Key>,
    Form(f): Form<CsrfForm>,
) -> Response {
    // A viewer may log out too: only the origin and token are checked.
    if !same_origin(&headers) || !session.csrf_ok(&f.csrf) {
        return UiError::new(
            StatusCode::FORBIDDEN,
            "Log out from the console's own page.",
        )
        .into_response();
    }
    let gone = Cookie::build((COOKIE, "")).path("/ui").build();
    (jar.remove(gone), Redirect::to("/ui/login")).into_response()
}

// ------------------------------------------------------------------ pages

/// An error page: what went wrong and what to do.
#[derive(Debug)]
pub(crate) struct UiError(StatusCode, String);

impl UiError {
    pub(crate) fn new(status: StatusCode, msg: impl Into<String>) -> UiError {
        UiError(status, msg.into())
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e.0, e.1)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = match self.0 {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Changed meanwhile",
            s if s.is_client_error() => "Cannot do that",
            _ => "Server error",
        };
        let body = page(
            None,
            title,
            "",
            html! {
                p.notice.bad role="alert" { (self.1) }
                p { a href="/ui/fleet" { "Back to the console" } }
            },
        );
        (self.0, body).into_response()
    }
}

/// The console's pages, in the navigation's order.
const NAV: &[(&str, &str)] = &[
    ("/ui/fleet", "Fleet"),
    ("/ui/rollouts", "Rollouts"),
    ("/ui/models", "Models"),
    ("/ui/samples", "Samples"),
    ("/ui/audit", "Audit log"),
];

/// A whole page: navigation, who is logged in, and `body`.
pub(crate) fn page(session: Option<&Session>, title: &str, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · edgeml console" }
                link rel="stylesheet" href=(asset_url("uPlot.min.css"));
                link rel="stylesheet" href=(asset_url("console.css"));
                script src=(asset_url("uPlot.iife.min.js")) defer {}
                script src=(asset_url("console.js")) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "edgeml" }
                    @if let Some(s) = session {
                        nav aria-label="Console" {
                            ul {
                                @for (href, name) in NAV {
                                    li {
                                        a href=(href) aria-current=[(*name == active).then_some("page")] { (name) }
                                    }
                                }
                            }
                        }
                        div.who {
                            span {
                                (s.operator.as_deref().unwrap_or("operator"))
                                " · "
                                strong { @if s.is_admin() { "admin" } @else { "viewer (read-only)" } }
                            }
                            form method="post" action="/ui/logout" {
                                (s.csrf_field())
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// `ms` since the epoch as RFC 3339 (UTC, seconds).
pub(crate) fn iso(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A time: readable, with its exact value for machines and tooltips.
pub(crate) fn when(ms: u64) -> Markup {
    let now = crate::fleet::now_ms();
    let ago = now.saturating_sub(ms) / 1000;
    let rel = match ago {
        0..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} d ago", ago / 86_400),
    };
    let exact = iso(ms);
    html! { time datetime=(exact) title=(exact) { (rel) } }
}
