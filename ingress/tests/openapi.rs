//! The committed description (`docs/openapi/ingress.json`) is the one the code generates
//! and serves: CI fails when they differ. `UPDATE_OPENAPI=1 cargo nextest run -p ingress
//! -E 'binary(openapi)'` rewrites the committed copy after a deliberate change.

use utoipa::OpenApi;

#[test]
fn the_committed_description_is_the_generated_one() {
    let doc = e2e::openapi::check_committed(
        "ingress",
        ingress::openapi::IngressApi::openapi()
            .to_pretty_json()
            .unwrap(),
    );
    for path in [
        "/v1/events",
        "/v1/webhooks/dojo",
        "/locations/{location}/v1/events",
        "/locations/{location}/v1/webhooks/dojo",
        "/readyz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
}
