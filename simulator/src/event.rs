//! Events as Dojo writes them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

/// Dojo's documented example event, byte for byte (no trailing newline).
pub const DOC_EVENT: &str = r#"{"id":"evt_hnnHxIKR_Uy6bhZCusCltw","event":"payment_intent.created","accountId":"acc_test","createdAt":"2022-02-01T13:07:41.8667859Z","data":{"paymentIntentId":"pi_vpwd4ooAPEqyNAQe4z89WQ","paymentStatus":"Created","captureMode":"Auto"}}"#;
/// The first published secret and its signature of [`DOC_EVENT`].
pub const DOC_SECRET: &str = "ws_OYsyzcrH70GpJfs8MMkKpg";
pub const DOC_SIGNATURE: &str = "sha256=94-AC-93-67-D6-8B-69-6D-15-A2-C2-45-40-98-B5-E7-64-72-38-C5-1F-6D-32-D0-5F-CB-91-20-A9-20-64-F4";

/// One payment-intent event, as Dojo would send it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub account_id: String,
    pub payment_intent_id: String,
    pub status: String,
    pub capture_mode: String,
    pub created_at: DateTime<Utc>,
}

impl Event {
    pub fn new(id: &str, kind: &str, pi: &str, status: &str, created_at: DateTime<Utc>) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            account_id: "acc_test".into(),
            payment_intent_id: pi.into(),
            status: status.into(),
            capture_mode: "Auto".into(),
            created_at,
        }
    }

    /// The JSON body, with `createdAt` in Dojo's 7-digit form.
    pub fn body(&self) -> String {
        let at = self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        // Dojo writes 100 ns ticks: 7 fractional digits.
        let at = format!("{}Z", &at[..at.len() - 3]);
        json!({
            "id": self.id,
            "event": self.kind,
            "accountId": self.account_id,
            "createdAt": at,
            "data": {
                "paymentIntentId": self.payment_intent_id,
                "paymentStatus": self.status,
                "captureMode": self.capture_mode,
            }
        })
        .to_string()
    }
}
