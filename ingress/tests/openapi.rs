//! The committed description (`docs/openapi/ingress.json`) is the one the code generates
//! and serves: CI fails when they differ. `UPDATE_OPENAPI=1 cargo nextest run -p ingress
//! -E 'binary(openapi)'` rewrites the committed copy after a deliberate change.

use utoipa::OpenApi;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi/ingress.json");

#[test]
fn the_committed_description_is_the_generated_one() {
    let generated = ingress::openapi::IngressApi::openapi()
        .to_pretty_json()
        .unwrap()
        + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi/ingress.json differs from the code's description: review, then UPDATE_OPENAPI=1"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
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
