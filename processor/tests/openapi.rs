//! The committed description (`docs/openapi/processor.json`) is the one the code
//! generates and serves: CI fails when they differ. `UPDATE_OPENAPI=1 cargo nextest run
//! -p processor -E 'binary(openapi)'` rewrites the committed copy after a deliberate change.

use utoipa::OpenApi;

const COMMITTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/openapi/processor.json"
);

#[test]
fn the_committed_description_is_the_generated_one() {
    let generated = processor::api::ProcessorApi::openapi()
        .to_pretty_json()
        .unwrap()
        + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi/processor.json differs from the code's description: review, then UPDATE_OPENAPI=1"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let record = &doc["components"]["schemas"]["PaymentIntentView"]["properties"];
    for field in [
        "amount",
        "tipsAmount",
        "totalAmount",
        "refundedAmount",
        "reference",
        "orderId",
        "waiterId",
        "dojoUpdatedAt",
        "events",
    ] {
        assert!(record.get(field).is_some(), "{field} in the record");
    }
}
