//! The OpenAPI 3.1 description of ingress's HTTP routes, generated from the handlers'
//! annotations (utoipa) so that it cannot drift from the code; served at
//! `/openapi.json`, committed as `docs/openapi/ingress.json` (a test compares the two).

use crate::ws::sockets::SocketsStatus;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dojo Events receiver: ingress",
        description = "Receives Dojo Events (REST HandleEvent, webhooks) and answers only once RabbitMQ has confirmed them. The operating contract: docs/CONTRACT.md."
    ),
    paths(
        crate::routes::events::handle,
        crate::routes::events::handle_at,
        crate::routes::webhook::handle,
        crate::routes::webhook::handle_at,
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::health::metrics,
        crate::routes::health::openapi,
    ),
    components(schemas(common::DojoEvent, common::EposError, Accepted, Readiness, Health)),
    modifiers(&Security),
    tags(
        (name = "events", description = "Dojo's deliveries"),
        (name = "operations", description = "Health, readiness, metrics, this description"),
    )
)]
pub struct IngressApi;

/// The answer to an accepted event: an empty object, sent only after the broker's confirm.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({}))]
pub struct Accepted {}

/// The answers of every event route (the same rules on each, CONTRACT.md).
#[derive(IntoResponses)]
#[allow(dead_code)] // describes answers built in crate::error and crate::routes
pub enum DeliveryAnswers {
    /// Durably queued: RabbitMQ confirmed the persistent message.
    #[response(status = 200)]
    Accepted(Accepted),
    /// Not a valid event (missing or mistyped field, NUL in an id, `createdAt` out of range).
    #[response(status = 400)]
    Invalid(common::EposError),
    /// Missing or wrong credentials or signature, or an `accountId` that is not the
    /// location's (REST routes add a Basic `WWW-Authenticate` challenge).
    #[response(status = 401)]
    Unauthorized(common::EposError),
    /// No such location, or the route is not configured (no credentials or secrets).
    #[response(status = 404)]
    NotFound(common::EposError),
    /// The body did not arrive within 10 s.
    #[response(status = 408)]
    Timeout(common::EposError),
    /// Body over 64 KiB.
    #[response(status = 413)]
    TooLarge(common::EposError),
    /// A content type other than JSON.
    #[response(status = 415)]
    NotJson(common::EposError),
    /// Not confirmed by the broker in time: nothing was acknowledged, retry.
    #[response(status = 503, headers(("Retry-After" = String, description = "Seconds to wait")))]
    Unavailable(common::EposError),
}

/// `/healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `/readyz`: whether events can be durably accepted, the broker's state, and the
/// WebSockets to Dojo (information only).
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `connected`, `disconnected`, `blocked` (a resource alarm) or `failing`.
    #[schema(example = "connected")]
    pub broker: &'static str,
    /// Only while `broker` is `disconnected`: what ingress is doing about it, or the
    /// last connection attempt's error with the node tried (password masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "amqp://app:***@rabbit-1:5672/%2f: IO error: Connection refused (os error 111)"
    )]
    pub broker_detail: Option<String>,
    pub websockets: SocketsStatus,
}

/// Headers Dojo may send with a REST delivery (kept in the queue envelope).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // describes headers, read from the request directly
pub struct RequestorHeaderParams {
    #[param(rename = "waiter-id")]
    waiter_id: Option<String>,
    #[param(rename = "dojo-requesting-product")]
    dojo_requesting_product: Option<String>,
    #[param(rename = "device-id")]
    device_id: Option<String>,
    #[param(rename = "device-type")]
    device_type: Option<String>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "dojoSignature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "dojo-signature",
                "sha256= then the HMAC-SHA256 of the raw body with a webhook secret, uppercase hex pairs joined by '-' (dojo-api.md §2b)",
            ))),
        );
    }
}
