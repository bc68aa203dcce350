//! The message ingress publishes and processor consumes.
//!
//! Versioned (`"v": 1`) so the two services can roll out independently: a processor
//! that meets a version it does not know dead-letters the message instead of guessing.
//! The event travels exactly as Dojo sent it (raw JSON), so the stored payload is what
//! was received, whatever fields Dojo adds.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

pub const ENVELOPE_VERSION: u32 = 1;

/// How the event reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Rest,
    Webhook,
    Ws,
    /// Not a delivery: a repair the processor made from Dojo's API (never queued).
    Reconcile,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Webhook => "webhook",
            Self::Ws => "ws",
            Self::Reconcile => "reconcile",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Optional headers Dojo sends with a REST delivery (or in `params.headers` over WebSocket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestorHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiter_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dojo_requesting_product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
}

impl RequestorHeaders {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Version 1 of the queue message. Borrows the raw event from the buffer it was read from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<'a> {
    pub v: u32,
    pub channel: Channel,
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "RequestorHeaders::is_empty")]
    pub headers: RequestorHeaders,
    /// The id of the location (`common::locations`) whose credentials or socket
    /// authenticated the delivery; absent from messages of older ingresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(borrow)]
    pub event: &'a RawValue,
}

/// Why a queued message can never be processed (it goes to the dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not an event envelope: {0}")]
    NotEnvelope(String),
    #[error("unknown envelope version {0}")]
    UnknownVersion(u64),
}

impl<'a> Envelope<'a> {
    pub fn new(channel: Channel, headers: RequestorHeaders, event: &'a RawValue) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            channel,
            received_at: Utc::now(),
            headers,
            location: None,
            event,
        }
    }

    /// The same message, marked with the location that authenticated it.
    pub fn at_location(mut self, location: &str) -> Self {
        self.location = Some(location.to_owned());
        self
    }

    /// The bytes of a version-1 envelope from `location` whose event is `event`, the JSON
    /// text of one event exactly as received, written in without being parsed again.
    /// The caller must already have parsed `event` as one complete JSON value (as
    /// [`crate::DojoEvent::from_json`] does); `&str` makes it valid UTF-8. Equal to
    /// `Envelope::new(..).at_location(location).to_bytes()` for the same event, without
    /// the second pass over the body that a `RawValue` takes.
    pub fn wrap(
        channel: Channel,
        headers: RequestorHeaders,
        location: &str,
        event: &str,
    ) -> Vec<u8> {
        const PLACEHOLDER: &[u8] = b"null}";
        let mut out = Envelope::new(channel, headers, RawValue::NULL)
            .at_location(location)
            .to_bytes();
        // `event` is the last field: the message ends `"event":null}`.
        debug_assert!(out.ends_with(PLACEHOLDER));
        out.truncate(out.len() - PLACEHOLDER.len());
        out.reserve(event.len() + 1);
        out.extend_from_slice(event.as_bytes());
        out.push(b'}');
        out
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising owned strings and a RawValue cannot fail.
        serde_json::to_vec(self).expect("envelope serialises")
    }

    /// Reads a message body, telling apart garbage, other shapes and other versions.
    pub fn parse(body: &'a [u8]) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Probe {
            v: Option<u64>,
        }
        let probe: Probe = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => EnvelopeError::NotEnvelope(e.to_string()),
            _ => EnvelopeError::NotJson(e.to_string()),
        })?;
        match probe.v {
            Some(v) if v == u64::from(ENVELOPE_VERSION) => {}
            Some(v) => return Err(EnvelopeError::UnknownVersion(v)),
            None => return Err(EnvelopeError::NotEnvelope("missing field `v`".into())),
        }
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotEnvelope(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_the_event_verbatim() {
        let raw = RawValue::from_string(r#"{"id":"e1",  "x":[1, 2]}"#.into()).unwrap();
        let headers = RequestorHeaders {
            waiter_id: Some("42".into()),
            ..Default::default()
        };
        let bytes = Envelope::new(Channel::Webhook, headers.clone(), &raw).to_bytes();
        let back = Envelope::parse(&bytes).unwrap();
        assert_eq!(back.channel, Channel::Webhook);
        assert_eq!(back.headers, headers);
        assert_eq!(back.event.get(), r#"{"id":"e1",  "x":[1, 2]}"#);
    }

    #[test]
    fn a_wrapped_event_reads_back_as_the_serialised_envelope_does() {
        let headers = RequestorHeaders {
            device_id: Some("till \"7\"".into()),
            ..Default::default()
        };
        for event in [
            r#"{"id":"e1",  "x":[1, 2]}"#,
            " {\"id\":\"é\\u00e9\"}\n",
            r#"{"id":"e2","nested":{"event":null}}"#,
        ] {
            let wrapped = Envelope::wrap(Channel::Rest, headers.clone(), "loc-1", event);
            let back = Envelope::parse(&wrapped).unwrap();
            let raw = RawValue::from_string(event.trim().into()).unwrap();
            let serialised = Envelope::new(Channel::Rest, headers.clone(), &raw)
                .at_location("loc-1")
                .to_bytes();
            let expected = Envelope::parse(&serialised).unwrap();
            assert_eq!(back.v, expected.v);
            assert_eq!(back.channel, expected.channel);
            assert_eq!(back.headers, expected.headers);
            assert_eq!(back.location, expected.location);
            assert_eq!(back.event.get(), expected.event.get());
            assert_eq!(back.event.get(), event.trim());
        }
    }

    #[test]
    fn tells_garbage_shapes_and_versions_apart() {
        assert!(matches!(
            Envelope::parse(b"\xff\x00"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert!(matches!(
            Envelope::parse(b"{}"),
            Err(EnvelopeError::NotEnvelope(_))
        ));
        assert!(matches!(
            Envelope::parse(b"[1]"),
            Err(EnvelopeError::NotEnvelope(_))
        ));
        assert!(matches!(
            Envelope::parse(br#"{"v":2,"whatever":true}"#),
            Err(EnvelopeError::UnknownVersion(2))
        ));
        assert!(matches!(
            Envelope::parse(br#"{"v":1,"channel":"fax"}"#),
            Err(EnvelopeError::NotEnvelope(_))
        ));
    }
}
