//! Running the real `processor` binary against a test's isolated services.

#![allow(dead_code)]

use common::{Channel, Envelope, RequestorHeaders};
use e2e::isolation::Services;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use serde_json::value::RawValue;
use std::process::{Child, Command, Output, Stdio};

pub fn command(services: &Services) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_processor"));
    cmd.env("PROCESSOR_ADDR", "127.0.0.1:0")
        .env("AMQP_URL", services.vhost.amqp_url())
        .env("DATABASE_URL", services.db.url())
        .env("REDIS_KEY_PREFIX", &services.redis_prefix)
        .env("PROCESSOR_DONE_TTL_SECS", "600")
        .env("RUST_LOG", "warn");
    cmd
}

pub fn start(services: &Services) -> Spawned {
    command(services)
        .stdout(Stdio::null())
        .spawn()
        .expect("processor starts")
        .into()
}

/// A child process killed when dropped (a test that fails midway leaves no service
/// running behind it); [`terminate`] stops it gracefully instead.
pub struct Spawned(Option<Child>);

impl From<Child> for Spawned {
    fn from(child: Child) -> Self {
        Self(Some(child))
    }
}

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `processor <args>` (for example `dlq list`), run to completion.
pub async fn run(services: &Services, args: &[&str]) -> Output {
    let mut cmd = command(services);
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("processor runs"))
        .await
        .unwrap()
}

/// SIGTERM, then the exit status.
pub fn terminate(child: impl Into<Spawned>) -> std::process::ExitStatus {
    let mut child = child.into().0.take().expect("running");
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait().unwrap()
}

/// Queues raw message bodies (already envelopes, or deliberately not) with confirms,
/// as ingress would, declaring the topology first.
pub async fn publish(services: &Services, messages: &[(String, Vec<u8>)]) {
    let conn = lapin::Connection::connect(&services.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    common::topology::declare(&channel).await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (message_id, body) in messages {
        // Confirms are awaited all at once below (wait_for_confirms).
        let confirm = channel
            .basic_publish(
                common::topology::EXCHANGE.into(),
                "payment_intent".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(message_id.as_str().into()),
            )
            .await
            .unwrap();
        drop(confirm);
    }
    assert!(channel.wait_for_confirms().await.unwrap().is_empty());
    let _ = conn.close(200, "published".into()).await;
}

/// The envelope ingress would publish for this event body.
pub fn envelope(body: String) -> Vec<u8> {
    let raw = RawValue::from_string(body).unwrap();
    Envelope::new(Channel::Rest, RequestorHeaders::default(), &raw).to_bytes()
}

pub async fn applied(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM dojo_events")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}
