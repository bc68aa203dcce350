//! Running the real services in-process against a test's isolated slice.

#![allow(dead_code)]

use e2e::isolation::Services;
use e2e::wait_until;
use processor::Worker;
use simulator::Dojo;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = simulator::event::DOC_SECRET;
pub const REST_USER: &str = "dojo";
pub const REST_PASSWORD: &str = "s3cret-pass";
pub const API_TOKEN: &str = "test-token";
pub const PATIENCE: Duration = Duration::from_secs(30);

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A service running on the test's runtime, stopped gracefully by [`Running::stop`].
pub struct Running {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        (&mut self.task)
            .await
            .expect("service task")
            .expect("clean stop");
    }
}

fn spawn<F>(addr: std::net::SocketAddr, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    Running {
        url: format!("http://{addr}"),
        stop: Some(tx),
        task: tokio::spawn(run(rx)),
    }
}

/// `TEST_LOG=1` shows the services' logs (JSON lines) on the test's output.
fn logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        common::telemetry::init_logging();
    }
}

/// Ingress on the test's vhost, both event routes configured; `extra` overrides.
pub fn ingress(services: &Services, extra: &[(&str, &str)]) -> Running {
    logs();
    let amqp = services.vhost.amqp_url();
    let mut env = vars(&[
        ("INGRESS_ADDR", "127.0.0.1:0"),
        ("INGRESS_WORKERS", "2"),
        ("AMQP_URL", &amqp),
        ("DOJO_WEBHOOK_SECRETS", &format!("some-old-secret,{SECRET}")),
        ("DOJO_REST_USERNAME", REST_USER),
        ("DOJO_REST_PASSWORD", REST_PASSWORD),
        ("INGRESS_RECONNECT_MAX_MS", "300"),
        ("INGRESS_PUBLISH_TIMEOUT_MS", "3000"),
    ]);
    env.extend(vars(extra));
    let settings = ingress::settings::Settings::from_source(&env).expect("ingress settings");
    let app = ingress::Application::build(settings).expect("ingress builds");
    spawn(app.local_addr(), |rx| async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
    })
}

/// Waits until ingress says it can accept events.
pub async fn ready(url: &str) {
    let client = reqwest::Client::new();
    wait_until("ready", PATIENCE, || async {
        let r = client.get(format!("{url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

pub struct RunningProcessor {
    pub running: Running,
    pub worker: Arc<Worker>,
}

/// Processor on the test's vhost, database and Redis prefix; `extra` overrides.
pub async fn processor(services: &Services, extra: &[(&str, &str)]) -> RunningProcessor {
    let p = processor_serving(services, extra).await;
    let w = p.worker.clone();
    wait_until("processor consuming", PATIENCE, || async {
        w.consuming.load(Ordering::SeqCst).then_some(())
    })
    .await;
    p
}

/// The same, returned as soon as it serves HTTP, consuming or not.
pub async fn processor_serving(services: &Services, extra: &[(&str, &str)]) -> RunningProcessor {
    logs();
    let (amqp, db) = (services.vhost.amqp_url(), services.db.url());
    let mut env = vars(&[
        ("PROCESSOR_ADDR", "127.0.0.1:0"),
        ("AMQP_URL", &amqp),
        ("DATABASE_URL", &db),
        ("REDIS_KEY_PREFIX", &services.redis_prefix),
        ("PROCESSOR_API_TOKEN", API_TOKEN),
        ("PROCESSOR_DONE_TTL_SECS", "600"),
        ("PROCESSOR_DB_POOL", "8"),
    ]);
    env.extend(vars(extra));
    let settings = processor::settings::Settings::from_source(&env).expect("processor settings");
    let app = processor::Application::build(settings)
        .await
        .expect("processor builds");
    let worker = app.worker();
    let running = spawn(app.local_addr(), |rx| async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
    });
    RunningProcessor { running, worker }
}

impl RunningProcessor {
    /// Waits until at least `n` deliveries have been settled.
    pub async fn settled(&self, n: u64) {
        let w = self.worker.clone();
        wait_until(&format!("{n} deliveries settled"), PATIENCE, || async {
            (w.settled.load(Ordering::SeqCst) >= n).then_some(())
        })
        .await;
    }
}

pub fn dojo(ingress: &Running) -> Dojo {
    Dojo::new(&ingress.url, SECRET, REST_USER, REST_PASSWORD)
}

/// A payment intent as the POS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub status: String,
    pub capture_mode: Option<String>,
    pub last_event_id: String,
}

pub async fn intent(pool: &sqlx::PgPool, id: &str) -> Option<Intent> {
    let row: Option<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT status, capture_mode, last_event_id FROM payment_intents WHERE payment_intent_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .expect("query payment_intents");
    row.map(|(status, capture_mode, last_event_id)| Intent {
        status,
        capture_mode,
        last_event_id,
    })
}

/// `(event_id, channel, outcome)` of every `dojo_events` row of an intent, oldest first.
pub async fn events_of(pool: &sqlx::PgPool, pi: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT event_id, channel, outcome FROM dojo_events WHERE payment_intent_id = $1 ORDER BY created_at, event_id",
    )
    .bind(pi)
    .fetch_all(pool)
    .await
    .expect("query dojo_events")
}

pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// One `dojo_events` row per distinct event, and every intent in its expected final
/// status.
pub async fn assert_final_states(pool: &sqlx::PgPool, scenario: &simulator::scenario::Scenario) {
    assert_eq!(
        count(pool, "SELECT count(*) FROM dojo_events").await,
        scenario.distinct as i64,
        "one row per distinct event"
    );
    for (pi, status) in &scenario.expected {
        assert_eq!(
            &intent(pool, pi).await.expect("intent exists").status,
            status,
            "{pi}"
        );
    }
}

/// A POS transaction holding the payment rows of `ids` (`SELECT ... FOR UPDATE`), open
/// on a connection of its own until it is committed or rolled back.
pub async fn pos_holds(
    pool: &sqlx::PgPool,
    ids: &[&str],
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT payment_intent_id FROM payment_intents WHERE payment_intent_id = ANY($1) FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(held.len(), ids.len(), "every row held");
    tx
}
