//! JSON-RPC over the Dojo socket: `HandleEventV1` is validated and published through the
//! same confirmed path as HTTP, and answered `result: {}` only after the broker's ack.
//! Errors are EPOSError objects (not JSON-RPC's `{code, message}`), and every reply
//! echoes `id` and `method`, as Dojo's spec requires.

use crate::accept::{AcceptError, Intake};
use common::locations::Location;
use common::telemetry::Ids;
use common::{Channel, EposError, ErrorType, RequestorHeaders};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::time::Instant;
use tracing::Instrument;

pub const HANDLE_EVENT: &str = "HandleEventV1";

#[derive(Deserialize)]
struct Frame<'a> {
    id: Option<Value>,
    method: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

fn reply(id: &Value, method: &str, outcome: Result<(), EposError>) -> String {
    match outcome {
        Ok(()) => json!({"jsonrpc": "2.0", "id": id, "method": method, "result": {}}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "method": method, "error": error}),
    }
    .to_string()
}

/// A header value as a string, whether Dojo sent it as a string or a number.
fn text(headers: &Value, name: &str) -> Option<String> {
    match headers.get(name)? {
        Value::String(s) => Some(s.chars().take(256).collect()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The members of a JSON object in their order, each value as its raw text.
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object (the event)")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Splits `params` into the event (everything but `headers`) and the requestor headers.
/// The event's members are kept as their raw text, byte for byte: whatever an HTTP
/// route would store, the socket stores too (a value `serde_json::Value` cannot hold,
/// such as a lone surrogate escape or a number beyond `f64`, included).
fn split_params(params: &RawValue) -> Result<(Vec<u8>, RequestorHeaders), String> {
    let Members(members) = serde_json::from_str(params.get())
        .map_err(|e| format!("params must be an object (the event): {e}"))?;
    let mut event = Vec::with_capacity(params.get().len());
    let mut headers = Value::Null;
    event.push(b'{');
    for (key, value) in members {
        if key == "headers" {
            headers = serde_json::from_str(value.get()).unwrap_or(Value::Null);
            continue;
        }
        if event.len() > 1 {
            event.push(b',');
        }
        serde_json::to_writer(&mut event, &key).expect("a key serialises");
        event.push(b':');
        event.extend_from_slice(value.get().as_bytes());
    }
    event.push(b'}');
    let requestor = RequestorHeaders {
        waiter_id: text(&headers, "waiterId"),
        dojo_requesting_product: text(&headers, "dojoRequestingProduct"),
        device_id: text(&headers, "deviceId"),
        device_type: text(&headers, "deviceType"),
    };
    Ok((event, requestor))
}

/// Handles one text frame, in a span of its own (a new trace: Dojo sends no trace
/// context over the socket). `None`: nothing to answer (not JSON, or a notification
/// without an `id`); those are logged, and the socket carries on.
pub async fn handle(intake: &Intake, frame: &str, location: &Location) -> Option<String> {
    let started = Instant::now();
    let (span, ids) = crate::accept::delivery_span("HandleEventV1", "ws", None);
    span.record("location", location.id.as_str());
    let (reply, answer) = answer(intake, frame, &ids, location)
        .instrument(span.clone())
        .await;
    span.record("dojo.answer", answer);
    if answer == "unavailable" {
        span.record("otel.status_code", "ERROR");
    }
    intake.metrics.answered("ws", answer, &location.id, started);
    reply
}

/// The reply (if any) and the metrics' `answer` label.
async fn answer(
    intake: &Intake,
    frame: &str,
    ids: &Ids,
    location: &Location,
) -> (Option<String>, &'static str) {
    let parsed: Frame = match serde_json::from_str(frame) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, frame = %frame.chars().take(200).collect::<String>(), "malformed WebSocket frame ignored");
            return (None, "malformed");
        }
    };
    let Some(id) = parsed.id else {
        tracing::warn!(method = ?parsed.method, "WebSocket frame without id ignored");
        return (None, "malformed");
    };
    let fail = |kind: ErrorType, message: String| {
        tracing::warn!(id = %id, error = %message, "WebSocket request rejected");
        Err(EposError::new(kind, message, &ids.trace_id))
    };
    let method = parsed.method.unwrap_or_default();
    let (outcome, label) = if method != HANDLE_EVENT {
        (
            fail(
                ErrorType::NotFound,
                format!("method {method:?} is not implemented by this POS"),
            ),
            "not_found",
        )
    } else {
        match parsed.params.map(split_params) {
            None => (
                fail(ErrorType::InvalidRequest, "missing params".into()),
                "invalid",
            ),
            Some(Err(message)) => (fail(ErrorType::InvalidRequest, message), "invalid"),
            Some(Ok((event, headers))) => match intake
                .accept(Channel::Ws, headers, &event, ids, location)
                .await
            {
                Ok(_) => (Ok(()), "accepted"),
                Err(e @ AcceptError::TooLarge) => {
                    (fail(ErrorType::InvalidRequest, e.to_string()), "too_large")
                }
                Err(AcceptError::Invalid(e)) => (fail(ErrorType::InvalidRequest, e.0), "invalid"),
                Err(e @ AcceptError::WrongAccount { .. }) => (
                    fail(ErrorType::InvalidRequest, e.to_string()),
                    "wrong_account",
                ),
                Err(AcceptError::NotQueued(e)) => {
                    tracing::error!(error = %e, "WebSocket event not queued");
                    let body = EposError::new(
                        ErrorType::UnexpectedError,
                        "the event could not be stored; retry later",
                        &ids.trace_id,
                    );
                    (Err(body), "unavailable")
                }
            },
        }
    };
    (Some(reply(&id, &method, outcome)), label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_split_from_the_event() {
        let params = RawValue::from_string(
            r#"{"id":"e","headers":{"waiterId":42,"deviceType":"Dojo Terminal"},"accountId":"a"}"#
                .into(),
        )
        .unwrap();
        let (event, headers) = split_params(&params).unwrap();
        let event: Value = serde_json::from_slice(&event).unwrap();
        assert_eq!(event, json!({"id": "e", "accountId": "a"}));
        assert_eq!(headers.waiter_id.as_deref(), Some("42"));
        assert_eq!(headers.device_type.as_deref(), Some("Dojo Terminal"));
        assert_eq!(headers.device_id, None);
    }

    #[test]
    fn what_serde_json_values_cannot_hold_stays_as_sent() {
        let raw = r#"{"id":"e","odd":"\ud800x","big":1e999999,"n":12345678901234567890123,"headers":{"waiterId":"7"},"x":[1, 2]}"#;
        let params = RawValue::from_string(raw.into()).unwrap();
        let (event, headers) = split_params(&params).unwrap();
        assert_eq!(
            String::from_utf8(event).unwrap(),
            r#"{"id":"e","odd":"\ud800x","big":1e999999,"n":12345678901234567890123,"x":[1, 2]}"#
        );
        assert_eq!(headers.waiter_id.as_deref(), Some("7"));
    }

    #[test]
    fn params_must_be_an_object() {
        let params = RawValue::from_string("[1,2]".into()).unwrap();
        assert!(split_params(&params).unwrap_err().contains("object"));
    }

    #[test]
    fn replies_echo_id_and_method() {
        let ok: Value =
            serde_json::from_str(&reply(&json!("c0ffee-1"), HANDLE_EVENT, Ok(()))).unwrap();
        assert_eq!(
            ok,
            json!({"jsonrpc":"2.0","id":"c0ffee-1","method":"HandleEventV1","result":{}})
        );
        let err = EposError::new(ErrorType::NotFound, "nope", "t");
        let err: Value =
            serde_json::from_str(&reply(&json!(7), "SearchOrdersV1", Err(err))).unwrap();
        assert_eq!(err["error"]["errorType"], "NotFound");
        assert_eq!(err["method"], "SearchOrdersV1");
        assert_eq!(err["id"], 7);
    }
}
