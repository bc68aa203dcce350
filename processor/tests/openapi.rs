//! The committed description (`docs/openapi/processor.json`) is the one the code
//! generates and serves: CI fails when they differ. `UPDATE_OPENAPI=1 cargo nextest run
//! -p processor -E 'binary(openapi)'` rewrites the committed copy after a deliberate change.

use utoipa::OpenApi;

#[test]
fn the_committed_description_is_the_generated_one() {
    let doc = e2e::openapi::check_committed(
        "processor",
        processor::api::ProcessorApi::openapi()
            .to_pretty_json()
            .unwrap(),
    );
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
