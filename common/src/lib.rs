//! Shared types of the Dojo Events receiver.
//!
//! Both services speak through these: the Dojo event as it arrives ([`event`]), the
//! versioned message that travels over RabbitMQ ([`envelope`]), the broker topology
//! names ([`topology`]), the error body Dojo expects ([`error`]), webhook signatures
//! ([`signature`]), configuration pieces ([`settings`]) and logging set-up
//! ([`telemetry`]), and the one Dojo API client ([`dojo_api`]). Nothing here knows
//! about HTTP server frameworks.

pub mod amqp;
pub mod dojo_api;
pub mod envelope;
pub mod error;
pub mod event;
pub mod health;
pub mod locations;
pub mod metrics;
pub mod settings;
pub mod signature;
pub mod telemetry;
pub mod time;
pub mod topology;

pub use envelope::{Channel, Envelope, RequestorHeaders, ENVELOPE_VERSION};
pub use error::{EposError, ErrorType};
pub use event::{CaptureMode, DojoEvent, EventType, PaymentStatus, ValidationError};
pub use time::DojoTime;

/// An error and its causes on one line, each cause once: `a: b: c`. A cause whose text
/// its parent already shows (a `Display` that includes its source) is not repeated, and
/// a cause that a parent hides (reqwest's "error sending request") is shown.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

/// A JSON answer's text: the value, then a newline, as any text a person may `curl`
/// should end (both services' HTTP answers use it).
pub fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let mut body = serde_json::to_string(value).expect("JSON values serialise");
    body.push('\n');
    body
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn each_cause_once_and_none_hidden() {
        let io =
            || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            super::error_chain(&Repeats(io())),
            "outer: connection refused"
        );
        assert_eq!(
            super::error_chain(&Hides(io())),
            "outer: connection refused"
        );
    }
}
