//! The committed OpenAPI descriptions (`docs/openapi/<service>.json`) must be the ones
//! the code generates: [`check_committed`] fails a test when they differ, and rewrites the
//! committed copy instead when `UPDATE_OPENAPI` is set (after a deliberate change).

/// Compares `generated` (pretty JSON) with `docs/openapi/{service}.json`; returns the
/// parsed description for further checks.
pub fn check_committed(service: &str, generated: String) -> serde_json::Value {
    let path = format!(
        "{}/../docs/openapi/{service}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let generated = generated + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write the committed description");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi/{service}.json differs from the code's description: review, then \
         UPDATE_OPENAPI=1 cargo nextest run -E 'binary(openapi)'"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}
