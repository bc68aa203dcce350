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

/// A JSON-RPC 2.0 request object. The `id` is kept as its raw text, so any id (a string
/// as Dojo sends, or a number beyond `f64`) is echoed byte for byte; `null` is none.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    method: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

/// The `id` and `method` of a request whose members do not fit [`Frame`] (a `method`
/// that is not a string, a repeated member): enough to answer it `InvalidRequest`
/// instead of leaving Dojo waiting for a reply.
fn loose_id(frame: &str) -> Option<(Box<RawValue>, String)> {
    let Value::Object(mut members) = serde_json::from_str(frame).ok()? else {
        return None;
    };
    let id = members.remove("id").filter(|id| !id.is_null())?;
    let method = match members.remove("method") {
        Some(Value::String(m)) => m,
        _ => String::new(),
    };
    Some((serde_json::value::to_raw_value(&id).ok()?, method))
}

/// A JSON-RPC response: `result: {}` or an EPOSError `error`, echoing `id` (as its raw
/// text, never through `f64`) and `method`.
fn reply<I: serde::Serialize + ?Sized>(
    id: &I,
    method: &str,
    outcome: Result<(), EposError>,
) -> String {
    #[derive(serde::Serialize)]
    struct Reply<'a, I: ?Sized> {
        jsonrpc: &'static str,
        id: &'a I,
        method: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<EposError>,
    }
    let (result, error) = match outcome {
        Ok(()) => (Some(json!({})), None),
        Err(error) => (None, Some(error)),
    };
    serde_json::to_string(&Reply {
        jsonrpc: "2.0",
        id,
        method,
        result,
        error,
    })
    .expect("a reply serialises")
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

/// One message read from the socket: a text frame, or a binary frame's bytes.
pub enum Incoming {
    Text(String),
    /// A binary frame that is valid UTF-8 is handled as text; one that is not is
    /// answered `InvalidRequest` (when an `id` can be read) and never stored.
    Binary(Vec<u8>),
}

/// Handles one message, in a span of its own (a new trace: Dojo sends no trace context
/// over the socket). `None`: nothing to answer (not a JSON object, a JSON-RPC batch, or
/// a notification without an `id`); those are logged, and the socket carries on.
pub async fn handle(intake: &Intake, message: Incoming, location: &Location) -> Option<String> {
    let started = Instant::now();
    let (span, ids) = crate::accept::delivery_span("HandleEventV1", "ws", None);
    span.record("location", location.id.as_str());
    let (frame, utf8) = match message {
        Incoming::Text(text) => (text, true),
        Incoming::Binary(bytes) => match String::from_utf8(bytes) {
            Ok(text) => (text, true),
            // Lossy only to find the id to answer: the event itself is refused.
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), false),
        },
    };
    let (reply, answer) = answer(intake, &frame, utf8, &ids, location)
        .instrument(span.clone())
        .await;
    span.record("dojo.answer", answer);
    if answer == "unavailable" {
        span.record("otel.status_code", "ERROR");
    }
    intake.metrics.answered("ws", answer, &location.id, started);
    reply
}

/// An `InvalidRequest` reply to the request `id` (echoed with `method`).
fn refuse<I: serde::Serialize + std::fmt::Display + ?Sized>(
    id: &I,
    method: &str,
    message: String,
    ids: &Ids,
) -> (Option<String>, &'static str) {
    tracing::warn!(id = %id, error = %message, "WebSocket request rejected");
    let error = EposError::new(ErrorType::InvalidRequest, message, &ids.trace_id);
    (Some(reply(id, method, Err(error))), "invalid")
}

/// What a message read from the socket is.
#[derive(Debug)]
enum Read<'a> {
    /// A request to handle (its method may still be unknown).
    Request {
        id: &'a RawValue,
        method: String,
        params: Option<&'a RawValue>,
    },
    /// A request with an `id` that cannot be handled: answered `InvalidRequest`.
    Refused {
        id: Box<RawValue>,
        method: String,
        why: &'static str,
    },
    /// Nothing to answer: not a JSON object, a batch, or no `id` (a notification).
    Ignored,
}

/// Reads one message (`utf8` false: a binary frame that was not UTF-8, read lossily).
fn read(frame: &str, utf8: bool) -> Read<'_> {
    // A request is a JSON object (JSON-RPC 2.0 §4); serde would also take an array as
    // the struct's members by position, and a batch (an array) is not Dojo's.
    let parsed: Option<Frame> = if frame.trim_start().starts_with('{') {
        serde_json::from_str(frame).ok()
    } else {
        None
    };
    let Some(parsed) = parsed else {
        return match loose_id(frame) {
            Some((id, method)) => Read::Refused {
                id,
                method,
                why: if utf8 {
                    "not a JSON-RPC request: `method` must be a string, each member given once"
                } else {
                    NOT_UTF8
                },
            },
            None => Read::Ignored,
        };
    };
    let Some(id) = parsed.id else {
        return Read::Ignored;
    };
    match parsed.method {
        None => Read::Refused {
            id: id.to_owned(),
            method: String::new(),
            why: "missing method",
        },
        Some(method) if !utf8 => Read::Refused {
            id: id.to_owned(),
            method,
            why: NOT_UTF8,
        },
        Some(method) => Read::Request {
            id,
            method,
            params: parsed.params,
        },
    }
}

const NOT_UTF8: &str = "message is not valid UTF-8";

/// The reply (if any) and the metrics' `answer` label.
async fn answer(
    intake: &Intake,
    frame: &str,
    utf8: bool,
    ids: &Ids,
    location: &Location,
) -> (Option<String>, &'static str) {
    let (id, method, params) = match read(frame, utf8) {
        Read::Request { id, method, params } => (id, method, params),
        Read::Refused { id, method, why } => return refuse(&*id, &method, why.into(), ids),
        Read::Ignored => {
            tracing::warn!(frame = %frame.chars().take(200).collect::<String>(), "malformed WebSocket frame ignored");
            return (None, "malformed");
        }
    };
    let fail = |kind: ErrorType, message: String| {
        tracing::warn!(id = %id, error = %message, "WebSocket request rejected");
        Err(EposError::new(kind, message, &ids.trace_id))
    };
    let (outcome, label) = if method != HANDLE_EVENT {
        (
            fail(
                ErrorType::NotFound,
                format!("method {method:?} is not implemented by this POS"),
            ),
            "not_found",
        )
    } else {
        match params.map(split_params) {
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

    fn refused(frame: &str, utf8: bool) -> (String, String, &'static str) {
        match read(frame, utf8) {
            Read::Refused { id, method, why } => (id.get().to_owned(), method, why),
            other => panic!("{frame}: {other:?}"),
        }
    }

    #[test]
    fn a_request_with_an_id_is_answered_even_when_it_cannot_be_handled() {
        let event = r#"{"id":"evt_1","accountId":"a"}"#;
        let (id, method, why) = refused(
            &format!(r#"{{"jsonrpc":"2.0","id":"m1","params":{event}}}"#),
            true,
        );
        assert_eq!(
            (id.as_str(), method.as_str(), why),
            (r#""m1""#, "", "missing method")
        );
        let (id, _, why) = refused(r#"{"id":"m2","method":5,"params":{}}"#, true);
        assert_eq!(id, r#""m2""#);
        assert!(why.contains("`method` must be a string"), "{why}");
        let (id, method, _) = refused(
            r#"{"id":"m3","id":"m3","method":"HandleEventV1","params":{}}"#,
            true,
        );
        assert_eq!((id.as_str(), method.as_str()), (r#""m3""#, "HandleEventV1"));
        // A binary frame that is not UTF-8 (read lossily): answered, never handled.
        let lossy = String::from_utf8_lossy(b"{\"id\":\"m4\",\"method\":\"HandleEventV1\",\"params\":{\"captureMode\":\"Au\xfft\"}}");
        let (id, method, why) = refused(&lossy, false);
        assert_eq!(
            (id.as_str(), method.as_str(), why),
            (r#""m4""#, "HandleEventV1", NOT_UTF8)
        );
    }

    #[test]
    fn only_a_json_object_with_an_id_is_a_request() {
        for frame in [
            "not json",
            r#"["pos-1","HandleEventV1",{"id":"evt_1"}]"#,
            r#"[{"jsonrpc":"2.0","id":"b1","method":"HandleEventV1","params":{}}]"#,
            r#"{"jsonrpc":"2.0","method":"HandleEventV1","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"HandleEventV1","params":{}}"#,
        ] {
            assert!(matches!(read(frame, true), Read::Ignored), "{frame}");
        }
        let frame =
            r#" {"jsonrpc":"2.0","id":"c0ffee-1","method":"HandleEventV1","params":{"id":"e"}}"#;
        let Read::Request { id, method, params } = read(frame, true) else {
            panic!("{frame}")
        };
        assert_eq!((id.get(), method.as_str()), (r#""c0ffee-1""#, HANDLE_EVENT));
        assert_eq!(params.unwrap().get(), r#"{"id":"e"}"#);
    }

    #[test]
    fn any_id_is_echoed_byte_for_byte() {
        for raw in [
            "123456789012345678901234567890",
            "1e400",
            r#""sim-1""#,
            "-0.5",
        ] {
            let frame = format!(r#"{{"id":{raw},"method":"SearchOrdersV1"}}"#);
            let Read::Request { id, .. } = read(&frame, true) else {
                panic!("{frame}")
            };
            let err = EposError::new(ErrorType::NotFound, "nope", "t");
            let answer = reply(id, "SearchOrdersV1", Err(err));
            assert!(answer.contains(&format!(r#""id":{raw}"#)), "{answer}");
        }
    }
}
