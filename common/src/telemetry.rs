//! Logging set-up and trace identifiers.
//!
//! Logs are JSON lines on stdout. Every answer and every processed message carries a
//! W3C trace id: taken from an incoming `traceparent` when there is one, made up
//! otherwise, sent along in the AMQP headers, and logged at each step, so an error's
//! `traceId` leads to every log line of that event.

use rand::RngCore;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the JSON log subscriber (`RUST_LOG`, default `info`). Safe to call twice.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new random 16-byte trace id, as 32 lowercase hex digits.
pub fn new_trace_id() -> String {
    random_hex(16)
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id_from_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && hex(flags, 2);
    valid.then(|| trace.to_ascii_lowercase())
}

/// A `traceparent` for a new span in `trace_id` (sampled).
pub fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{}-01", random_hex(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_valid_traceparent_and_refuses_others() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_from_traceparent(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn made_up_ids_are_valid_w3c_ids() {
        let id = new_trace_id();
        assert_eq!(trace_id_from_traceparent(&traceparent(&id)), Some(id));
    }
}
