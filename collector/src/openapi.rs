//! The API description, generated from the handlers and the wire types
//! (utoipa) and served at `/openapi.json`.

use crate::api::{err, ApiResult};
use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use edgeml_client::wire::ErrorBody;
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, ServerBuilder};

/// The document's header: what the routes add their paths to.
pub(crate) fn base() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("edgeml server")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The edgeml collector and fleet server. Devices enrol once with the fleet's \
                     enrolment token, then send signed telemetry batches and status reports and \
                     poll their channel for signed releases. Operators read devices, statistics, \
                     drift and samples, publish roots, bundles and releases, and steer rollouts \
                     with the admin token. Every error is `{\"error\": \"<reason>\"}`.",
                ))
                .build(),
        )
        .servers(Some([ServerBuilder::new()
            .url("http://127.0.0.1:7070")
            .build()]))
        .tags(Some([
            tag(
                "telemetry",
                "Enrolment, telemetry ingest, statistics, drift and samples",
            ),
            tag(
                "fleet",
                "Roots, bundles, artifacts, releases, rollouts and device status",
            ),
            tag(
                "audit",
                "The hash-chained log of every admin change, enrolment and rollout decision",
            ),
            tag("operations", "Liveness, metrics and this document"),
        ]))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin",
        bearer("The server's admin token (--admin-token-file)."),
    );
    components.add_security_scheme(
        "enrolment",
        bearer("The fleet's enrolment token, held by devices until they enrol."),
    );
    components.add_security_scheme(
        "metrics",
        bearer("The metrics token (--metrics-token-file), given to the scraper."),
    );
    components.add_security_scheme(
        "device",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            edgeml_telemetry::wire::SIGNATURE_HEADER,
            "Hex Ed25519 signature by the device's enrolled key, with the device id in \
             `x-edgeml-device`. Uploads (ingest, report) sign the body as sent; downloads \
             (bundles, artifacts) sign the method, path and `x-edgeml-time`.",
        ))),
    );
    doc
}

fn tag(name: &str, description: &str) -> utoipa::openapi::Tag {
    TagBuilder::new()
        .name(name)
        .description(Some(description))
        .build()
}

fn bearer(description: &str) -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(description))
            .build(),
    )
}

/// The whole API description.
pub fn document() -> OpenApi {
    let defaults = crate::Settings::new("", "");
    crate::api::routes(defaults.max_body_bytes, defaults.fleet.max_bundle_bytes).into_openapi()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI description of every route", content_type = "application/json"),
        (status = 500, description = "The document could not be serialised", body = ErrorBody),
    )
)]
pub(crate) async fn serve() -> ApiResult<impl IntoResponse> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    let json = JSON
        .get_or_init(|| document().to_json().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the API description failed to serialise: {e}"),
            )
        })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json.as_str()))
}
