//! Connecting to RabbitMQ when it is a cluster: `AMQP_URL` holds one URL or several,
//! comma-separated (one per node, e.g.
//! `amqp://u:p@rabbit-0:5672/%2f,amqp://u:p@rabbit-1:5672/%2f,amqp://u:p@rabbit-2:5672/%2f`).
//!
//! Each connection attempt goes to the next node in turn (round robin), so a service
//! whose node stopped reconnects to another one on its very next attempt, with the
//! caller's usual backoff between attempts. An attempt that gets no answer (a node
//! paused, or cut off by a partition, accepts TCP and then says nothing) is given up
//! after [`ATTEMPT_TIMEOUT`].
//!
//! Every later exchange with a node is bounded too, so a supervisor never waits for ever
//! on a node that stopped answering (a node restarting, or one whose quorum queue is
//! electing a leader, may complete the handshake and then not answer a declare):
//! setting a session up ([`Brokers::open`], [`setup`]) gets [`SETUP_TIMEOUT`], and
//! closing a connection ([`close`]) gets [`CLOSE_TIMEOUT`].

use lapin::{Connection, ConnectionProperties};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Longest wait for one node to complete the AMQP handshake.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a connected node to set a session up: channels opened, topology
/// declared, QoS and confirms selected.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a node to answer `connection.close` (after it, the socket is dropped).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one step of setting a session up, given up after [`SETUP_TIMEOUT`] with an I/O
/// `TimedOut` error (so the caller retries, on the next node, as after a refusal).
pub async fn setup<T>(step: impl Future<Output = lapin::Result<T>>) -> lapin::Result<T> {
    match tokio::time::timeout(SETUP_TIMEOUT, step).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(format!(
            "the broker did not answer within {SETUP_TIMEOUT:?} while setting the session up"
        ))),
    }
}

/// Closes `connection` with reply code 200 and `reason`, waiting at most
/// [`CLOSE_TIMEOUT`] for the broker's `close-ok`; errors are ignored (the connection is
/// being given up either way).
pub async fn close(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
}

fn timed_out(what: String) -> lapin::Error {
    lapin::Error::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// The nodes of `AMQP_URL`; cheap to share.
#[derive(Debug)]
pub struct Brokers {
    urls: Vec<String>,
    next: AtomicUsize,
}

impl Brokers {
    /// Splits `AMQP_URL` on commas (blanks ignored). Each URL must be `amqp://` or
    /// `amqps://`.
    pub fn parse(list: &str) -> Result<Self, crate::settings::ConfigError> {
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(crate::settings::ConfigError("AMQP_URL is empty".into()));
        }
        for url in &urls {
            let shown = crate::settings::redact_url(url);
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(crate::settings::ConfigError(format!(
                    "AMQP_URL: {shown:?} is not an amqp:// or amqps:// URL"
                )));
            }
            // lapin's own parser: what it cannot read would otherwise fail at every retry.
            if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
                let e = e.replace(url.as_str(), &shown);
                return Err(crate::settings::ConfigError(format!(
                    "AMQP_URL: {shown:?} cannot be parsed: {e}"
                )));
            }
        }
        Ok(Self {
            urls,
            next: AtomicUsize::new(0),
        })
    }

    /// What a failed attempt means, for the log line: refused credentials, a vhost the
    /// user may not use, or a broker that cannot be reached are different problems.
    pub fn explain(error: &lapin::Error) -> &'static str {
        let text = error.to_string();
        if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
            "RabbitMQ refused the credentials in AMQP_URL (ACCESS_REFUSED)"
        } else if text.contains("NOT_ALLOWED") || text.contains("NOT-ALLOWED") {
            "RabbitMQ refused the vhost in AMQP_URL (NOT_ALLOWED: missing, or not permitted to this user)"
        } else if matches!(error.kind(), lapin::ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::TimedOut)
        {
            "RabbitMQ took the connection but did not answer in time (overloaded, paused or cut off from its cluster)"
        } else if matches!(error.kind(), lapin::ErrorKind::IOError(_)) {
            "RabbitMQ cannot be reached (network, address or port)"
        } else {
            "RabbitMQ connection failed"
        }
    }

    /// Every node, passwords masked, for logs.
    pub fn redacted(&self) -> String {
        self.urls
            .iter()
            .map(|u| crate::settings::redact_url(u))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One attempt on the next node in turn; the redacted URL of the node tried comes
    /// back with the outcome.
    pub async fn connect(
        &self,
        props: ConnectionProperties,
    ) -> (String, lapin::Result<Connection>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
        let url = &self.urls[i];
        let outcome =
            match tokio::time::timeout(ATTEMPT_TIMEOUT, Connection::connect(url, props)).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(format!(
                    "no AMQP handshake within {ATTEMPT_TIMEOUT:?}"
                ))),
            };
        (crate::settings::redact_url(url), outcome)
    }

    /// One attempt on the next node in turn ([`Brokers::connect`]), then `session` run on
    /// the new connection within [`SETUP_TIMEOUT`] to open its channels and declare what
    /// it needs. If the setup fails or times out, the connection is closed ([`close`]) and
    /// the error comes back; the redacted URL of the node tried comes back either way.
    pub async fn open<T>(
        &self,
        props: ConnectionProperties,
        session: impl AsyncFnOnce(&Connection) -> lapin::Result<T>,
    ) -> (String, lapin::Result<(Connection, T)>) {
        let (node, connection) = match self.connect(props).await {
            (node, Ok(connection)) => (node, connection),
            (node, Err(e)) => return (node, Err(e)),
        };
        match setup(session(&connection)).await {
            Ok(t) => (node, Ok((connection, t))),
            Err(e) => {
                close(&connection, "session setup failed").await;
                (node, Err(e))
            }
        }
    }

    /// Tries every node once, in turn from the next one; the first that answers wins.
    pub async fn connect_any(&self, props: ConnectionProperties) -> lapin::Result<Connection> {
        let mut last = None;
        for _ in 0..self.urls.len() {
            match self.connect(props.clone()).await {
                (_, Ok(c)) => return Ok(c),
                (_, Err(e)) => last = Some(e),
            }
        }
        Err(last.expect("at least one URL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_stops_answering_is_told_apart_from_one_that_cannot_be_reached() {
        let silent = timed_out("the broker did not answer".into());
        assert!(Brokers::explain(&silent).contains("did not answer in time"));
        let refused =
            lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(Brokers::explain(&refused).contains("cannot be reached"));
    }

    #[test]
    fn one_or_several_nodes() {
        assert_eq!(Brokers::parse("amqp://a/%2f").unwrap().urls.len(), 1);
        let b = Brokers::parse("amqp://u:secret@a:5672/%2f, amqp://u:secret@b:5672/%2f,").unwrap();
        assert_eq!(b.urls.len(), 2);
        assert!(!b.redacted().contains("secret"));
        assert!(Brokers::parse(" , ").is_err());
        let err = Brokers::parse("amqp://a,http://u:secret@b")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not an amqp") && !err.contains("secret"),
            "{err}"
        );
    }
}
