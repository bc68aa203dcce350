//! The Dojo event as it arrives on every channel, and its validation.
//!
//! Parsing is strict about what the contract requires (`id`, `accountId`, `event`,
//! `createdAt`, `data`, with the right types) and lenient about everything Dojo may add
//! later: unknown event types, statuses and capture modes are kept as strings, never
//! rejected, because a receiver that rejects them makes Dojo retry them forever.

use crate::time::DojoTime;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// Why a body is not an acceptable Dojo event. The message is safe to show to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// Longest `id` or `accountId` accepted.
pub const MAX_ID_LEN: usize = 255;

/// Deepest nesting of arrays and objects accepted in an event (the event object itself
/// is level 1), the same as serde_json's limit for what it builds.
pub const MAX_NESTING: usize = 128;

/// The deepest nesting of arrays and objects in `json` (already parsed as valid JSON:
/// brackets inside strings, escaped quotes included, are not counted).
fn nesting(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A Dojo event (dojo-api.md §1). Other fields Dojo adds are accepted and kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "evt_hnnHxIKR_Uy6bhZCusCltw", "event": "payment_intent.created", "accountId": "acc_test", "createdAt": "2022-02-01T13:07:41.8667859Z", "data": {"paymentIntentId": "pi_vpwd4ooAPEqyNAQe4z89WQ", "paymentStatus": "Created", "captureMode": "Auto"}}))]
pub struct DojoEvent {
    /// Unique event id, the same on every redelivery (1 to 255 bytes, no NUL).
    #[schema(min_length = 1, max_length = 255)]
    pub id: String,
    /// `payment_intent.created`, `payment_intent.status_updated`, or a type Dojo adds later.
    #[schema(value_type = String, min_length = 1, example = "payment_intent.status_updated")]
    pub event: EventType,
    /// The Dojo account (one per location) the event is for.
    #[schema(min_length = 1, max_length = 255)]
    pub account_id: String,
    /// RFC 3339, 0 to 9 fractional digits, from 1970-01-01 to before 2262-01-01.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DojoTime,
    pub data: EventData,
}

/// The payment intent an event is about. For the two known event types,
/// `paymentIntentId` and `paymentStatus` are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventData {
    #[schema(max_length = 255)]
    pub payment_intent_id: Option<String>,
    /// `Created`, `Authorized`, `Captured`, `Reversed`, `Refunded`, `Canceled`, or a
    /// status Dojo adds later (kept, never changes known state).
    #[schema(value_type = Option<String>, example = "Captured")]
    pub payment_status: Option<PaymentStatus>,
    /// `Auto`, `Manual`, or a mode Dojo adds later.
    #[schema(value_type = Option<String>, example = "Auto")]
    pub capture_mode: Option<CaptureMode>,
}

impl DojoEvent {
    /// Parses and validates a raw body. Unknown fields are ignored here (the raw body is
    /// what gets stored), unknown enum values are kept.
    ///
    /// # Errors
    /// Not JSON; not a JSON object (serde would read an array as the fields in order);
    /// arrays and objects nested deeper than [`MAX_NESTING`] (serde_json caps the depth
    /// only of what it builds, not of the fields it skips, and PostgreSQL's `jsonb` has
    /// a stack limit of its own); a missing or invalid field.
    pub fn from_json(body: &[u8]) -> Result<Self, ValidationError> {
        let event: Self = serde_json::from_slice(body).map_err(|e| {
            ValidationError(match e.classify() {
                serde_json::error::Category::Data => format!("invalid event: {e}"),
                _ => format!("body is not valid JSON: {e}"),
            })
        })?;
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ValidationError(
                "invalid event: the body must be a JSON object".into(),
            ));
        }
        if nesting(body) > MAX_NESTING {
            return Err(ValidationError(format!(
                "invalid event: arrays and objects nested deeper than {MAX_NESTING} levels"
            )));
        }
        event.validate()?;
        Ok(event)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let fail = |m: &str| Err(ValidationError(m.to_owned()));
        if self.id.trim().is_empty() {
            return fail("invalid event: `id` is empty");
        }
        if self.account_id.trim().is_empty() {
            return fail("invalid event: `accountId` is empty");
        }
        if self.event.as_str().trim().is_empty() {
            return fail("invalid event: `event` is empty");
        }
        // Ids travel as AMQP short strings (message_id) and Redis keys.
        let pi_len = self.data.payment_intent_id.as_ref().map_or(0, String::len);
        if self.id.len() > MAX_ID_LEN || self.account_id.len() > MAX_ID_LEN || pi_len > MAX_ID_LEN {
            return fail(
                "invalid event: `id`, `accountId` or `data.paymentIntentId` is longer than 255 bytes",
            );
        }
        self.check_storable()?;
        if self.event.is_known() {
            match &self.data.payment_intent_id {
                Some(id) if !id.trim().is_empty() => {}
                _ => return fail("invalid event: `data.paymentIntentId` is missing or empty"),
            }
            if self.data.payment_status.is_none() {
                return fail("invalid event: `data.paymentStatus` is missing");
            }
        }
        Ok(())
    }

    /// Every field stored in a PostgreSQL `text` column must be text PostgreSQL can hold:
    /// it refuses NUL (U+0000) in `text`. (Rust strings are always valid UTF-8, and
    /// serde refuses lone surrogates in them, so NUL is the only such character.)
    /// Refused here, on every channel, so that ingress never acknowledges an event the
    /// processor cannot record.
    fn check_storable(&self) -> Result<(), ValidationError> {
        let data = &self.data;
        let fields = [
            ("id", Some(self.id.as_str())),
            ("accountId", Some(self.account_id.as_str())),
            ("event", Some(self.event.as_str())),
            ("data.paymentIntentId", data.payment_intent_id.as_deref()),
            (
                "data.paymentStatus",
                data.payment_status.as_ref().map(PaymentStatus::as_str),
            ),
            (
                "data.captureMode",
                data.capture_mode.as_ref().map(CaptureMode::as_str),
            ),
        ];
        match fields
            .into_iter()
            .find(|(_, value)| value.is_some_and(|v| v.contains('\0')))
        {
            Some((name, _)) => Err(ValidationError(format!(
                "invalid event: `{name}` contains a NUL character (U+0000)"
            ))),
            None => Ok(()),
        }
    }
}

/// Declares an enum of known Dojo strings that keeps unknown ones in `Other`.
macro_rules! open_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A value this version does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(s) => s,
                }
            }

            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok(Self::from(s.as_ref()))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

open_enum!(
    /// The `event` field.
    EventType {
        Created => "payment_intent.created",
        StatusUpdated => "payment_intent.status_updated",
    }
);

open_enum!(
    /// `data.paymentStatus` (US spelling, as Dojo writes it).
    PaymentStatus {
        Created => "Created",
        Authorized => "Authorized",
        Captured => "Captured",
        Reversed => "Reversed",
        Refunded => "Refunded",
        Canceled => "Canceled",
    }
);

open_enum!(
    /// `data.captureMode`.
    CaptureMode {
        Auto => "Auto",
        Manual => "Manual",
    }
);

impl PaymentStatus {
    /// Lifecycle stage, used to break ties between events with the same `createdAt`:
    /// `Created` < `Authorized` < `Captured` < `Reversed` = `Refunded` = `Canceled`.
    /// Unknown statuses have no stage: they never change a record.
    pub fn stage(&self) -> Option<i16> {
        match self {
            Self::Created => Some(1),
            Self::Authorized => Some(2),
            Self::Captured => Some(3),
            Self::Reversed | Self::Refunded | Self::Canceled => Some(4),
            Self::Other(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const VECTOR: &str = r#"{"id":"evt_hnnHxIKR_Uy6bhZCusCltw","event":"payment_intent.created","accountId":"acc_test","createdAt":"2022-02-01T13:07:41.8667859Z","data":{"paymentIntentId":"pi_vpwd4ooAPEqyNAQe4z89WQ","paymentStatus":"Created","captureMode":"Auto"}}"#;

    #[test]
    fn parses_the_documented_event() {
        let e = DojoEvent::from_json(VECTOR.as_bytes()).unwrap();
        assert_eq!(e.id, "evt_hnnHxIKR_Uy6bhZCusCltw");
        assert_eq!(e.event, EventType::Created);
        assert_eq!(e.account_id, "acc_test");
        assert_eq!(
            e.data.payment_intent_id.as_deref(),
            Some("pi_vpwd4ooAPEqyNAQe4z89WQ")
        );
        assert_eq!(e.data.payment_status, Some(PaymentStatus::Created));
        assert_eq!(e.data.capture_mode, Some(CaptureMode::Auto));
    }

    #[test]
    fn keeps_unknown_types_and_values() {
        let body = VECTOR
            .replace("payment_intent.created", "payment_intent.amount_adjusted")
            .replace("\"Created\"", "\"PartiallyRefunded\"")
            .replace("\"Auto\"", "\"Deferred\"");
        let e = DojoEvent::from_json(body.as_bytes()).unwrap();
        assert_eq!(
            e.event,
            EventType::Other("payment_intent.amount_adjusted".into())
        );
        assert_eq!(
            e.data.payment_status,
            Some(PaymentStatus::Other("PartiallyRefunded".into()))
        );
        assert_eq!(e.data.payment_status.unwrap().stage(), None);
        assert_eq!(
            e.data.capture_mode,
            Some(CaptureMode::Other("Deferred".into()))
        );
    }

    #[test]
    fn unknown_event_type_needs_no_payment_data() {
        let body = r#"{"id":"e","event":"refund.created","accountId":"a","createdAt":"2024-01-01T00:00:00Z","data":{"refundId":"r"}}"#;
        assert!(DojoEvent::from_json(body.as_bytes()).is_ok());
    }

    #[test]
    fn rejects_each_broken_body_with_a_clear_message() {
        let without = |field: &str| {
            let mut v: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
            v.as_object_mut().unwrap().remove(field);
            v.to_string()
        };
        let cases = [
            ("not json".to_owned(), "not valid JSON"),
            ("{\"id\":".to_owned(), "not valid JSON"),
            ("[]".to_owned(), "invalid event"),
            (without("id"), "`id`"),
            (without("accountId"), "`accountId`"),
            (without("event"), "`event`"),
            (without("createdAt"), "`createdAt`"),
            (without("data"), "`data`"),
            (VECTOR.replace("\"acc_test\"", "42"), "invalid type"),
            (
                VECTOR.replace("2022-02-01T13:07:41.8667859Z", "yesterday"),
                "createdAt",
            ),
            (
                VECTOR.replace("\"pi_vpwd4ooAPEqyNAQe4z89WQ\"", "\"\""),
                "paymentIntentId",
            ),
            (
                VECTOR.replace("\"evt_hnnHxIKR_Uy6bhZCusCltw\"", "\"\""),
                "`id` is empty",
            ),
            (
                VECTOR.replace("evt_hnnHxIKR_Uy6bhZCusCltw", &"e".repeat(256)),
                "255 bytes",
            ),
            // Found by Schemathesis: an empty type is no type.
            (
                VECTOR.replace("\"payment_intent.created\"", "\"\""),
                "`event` is empty",
            ),
            (
                VECTOR.replace("\"payment_intent.created\"", "\"  \""),
                "`event` is empty",
            ),
            (
                VECTOR.replace("pi_vpwd4ooAPEqyNAQe4z89WQ", &"p".repeat(256)),
                "255 bytes",
            ),
            (
                VECTOR.replace("2022-02-01T13:07:41.8667859Z", "2300-01-01T00:00:00Z"),
                "outside the accepted range",
            ),
            (
                VECTOR.replace("2022-02-01T13:07:41.8667859Z", "1400-01-01T00:00:00Z"),
                "outside the accepted range",
            ),
        ];
        for (body, expected) in cases {
            let err = DojoEvent::from_json(body.as_bytes()).unwrap_err();
            assert!(err.0.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn nul_in_any_stored_text_field_is_refused() {
        // Each field PostgreSQL stores as `text`, with NUL at the start, middle and end.
        let fields = [
            ("evt_hnnHxIKR_Uy6bhZCusCltw", "`id`"),
            ("acc_test", "`accountId`"),
            ("payment_intent.created", "`event`"),
            ("pi_vpwd4ooAPEqyNAQe4z89WQ", "`data.paymentIntentId`"),
            ("Created", "`data.paymentStatus`"),
            ("Auto", "`data.captureMode`"),
        ];
        for (value, field) in fields {
            for nul in [
                format!("\\u0000{value}"),
                format!("{}\\u0000{}", &value[..2], &value[2..]),
                format!("{value}\\u0000"),
                "\\u0000".to_owned(),
            ] {
                let body = VECTOR.replace(&format!("\"{value}\""), &format!("\"{nul}\""));
                let err = DojoEvent::from_json(body.as_bytes()).unwrap_err();
                assert!(
                    err.0.contains(field) && err.0.contains("NUL"),
                    "{body}: {err}"
                );
            }
        }
        // The same in an event of an unknown type.
        let unknown = r#"{"id":"e","event":"refund.\u0000created","accountId":"a","createdAt":"2024-01-01T00:00:00Z","data":{}}"#;
        assert!(DojoEvent::from_json(unknown.as_bytes()).is_err());
        // Lone surrogates in a text field are not text at all: refused by the parser.
        for bad in ["\\ud800", "x\\udfffy", "\\ud800\\u0041"] {
            let body = VECTOR.replace("acc_test", bad);
            assert!(DojoEvent::from_json(body.as_bytes()).is_err(), "{body}");
        }
        // Anything else, in unknown fields included, is accepted (the processor keeps it).
        let odd = VECTOR.replace(
            "\"captureMode\"",
            r#""note":"a\u0000b","lone":"\ud800","big":1e999999,"captureMode""#,
        );
        assert!(DojoEvent::from_json(odd.as_bytes()).is_ok(), "{odd}");
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(DojoEvent::from_json(body.as_bytes()).is_err());
        // In a field serde skips: counted by hand, up to the limit and no further.
        let deep = |levels: usize| {
            VECTOR.replace(
                "\"captureMode\"",
                &format!(
                    r#""extra":{}"[{{\"]"{},"captureMode""#,
                    "[".repeat(levels),
                    "]".repeat(levels)
                ),
            )
        };
        assert!(DojoEvent::from_json(deep(MAX_NESTING - 2).as_bytes()).is_ok());
        let e = DojoEvent::from_json(deep(30_000).as_bytes()).unwrap_err();
        assert!(e.0.contains("nested deeper than 128"), "{e}");
        assert!(DojoEvent::from_json(deep(MAX_NESTING - 1).as_bytes()).is_err());
    }

    #[test]
    fn an_array_is_not_an_event() {
        let event: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
        let fields: Vec<_> = ["id", "event", "accountId", "createdAt", "data"]
            .iter()
            .map(|k| event[k].clone())
            .collect();
        let body = serde_json::to_vec(&fields).unwrap();
        let e = DojoEvent::from_json(&body).unwrap_err();
        assert!(e.0.contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn stages_order_the_lifecycle() {
        use PaymentStatus::*;
        assert!(Created.stage() < Authorized.stage());
        assert!(Authorized.stage() < Captured.stage());
        assert!(Captured.stage() < Refunded.stage());
        assert_eq!(Reversed.stage(), Canceled.stage());
    }
}
