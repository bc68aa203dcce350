//! Processor: consumes queued Dojo Events and applies them, exactly once, to the POS
//! payment records in PostgreSQL.
//!
//! - [`consumer`]: the RabbitMQ side (connection, prefetch, acks, dead letters);
//! - [`batch`]: a batch of deliveries: parse, dedupe (Redis, one round trip), apply
//!   (one transaction), ack (`multiple`); [`handle`]: reading one message;
//!   [`settle`]: retry later ([`retry`]: the delay queues) or dead-letter;
//! - [`dedupe`]: the Redis fast path; [`apply`]: the batch transaction (the truth);
//! - [`rule`]: the payment state rule, as pure functions; [`payload`]: what of the body
//!   is stored where (any valid JSON, losslessly);
//! - [`api`]: health, readiness and the read API; [`db`]: pool and migrations;
//! - [`enrich`]: payment details fetched from Dojo's API through the outbox written by
//!   [`apply`], off the acknowledgement path; [`snapshot`]: storing them;
//!   [`reconcile`]: making the records agree with Dojo's snapshots; [`sweep`]: finding
//!   what was never delivered (search over a window, overdue intents);
//! - [`feed`]: the payment feed of the tills (outbox, cursor API, Server-Sent Events).

pub mod api;
pub mod apply;
pub mod batch;
pub mod console;
pub mod consumer;
pub mod db;
pub mod dedupe;
pub mod dlq;
pub mod enrich;
pub mod feed;
pub mod handle;
pub mod metrics;
pub mod payload;
pub mod reconcile;
pub mod retry;
pub mod rule;
pub mod settings;
pub mod settle;
pub mod snapshot;
pub mod sweep;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use dedupe::Dedupe;
use settings::Settings;
use sqlx::PgPool;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tokio::sync::watch;

/// What the consumer and the HTTP handlers share.
pub struct Worker {
    pub settings: Settings,
    pub pool: PgPool,
    pub dedupe: Dedupe,
    /// True while a consumer is attached to the queue.
    pub consuming: AtomicBool,
    /// Deliveries settled with the broker (acked, including duplicates and dead letters).
    pub settled: AtomicU64,
    /// When a consumer last took a full batch: a backlog, which payment-detail fetches
    /// yield to (crate::enrich).
    pub backlog: batch::Backlog,
    pub metrics: metrics::Metrics,
    /// Dojo's API (payment details, sweeps), throttled per location key.
    pub dojo: common::dojo_api::DojoApi,
    /// Wake-ups of the payment feed's streams (crate::feed::listener).
    pub feed: feed::listener::Hub,
    /// The locations served now: `settings.locations` at start, then each version of
    /// `DOJO_LOCATIONS_FILE` that validates (till tokens, API keys, accounts).
    pub locations: common::locations::Directory,
}

impl Worker {
    /// Connects to PostgreSQL (creating the database and applying migrations) and sets
    /// up Redis and the Dojo API client; consumes nothing.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect_and_migrate(
            &settings.database_url,
            settings.db_pool,
            settings.db_timeouts,
        )
        .await?;
        // Markers are only valid for the database they describe.
        let database_id = db::identity(&pool)
            .await
            .context("cannot read the database identity")?;
        let dedupe = Dedupe::new(
            &settings.redis_url,
            &format!("{}{database_id}:", settings.redis_prefix),
            settings.claim_lease,
            settings.done_ttl,
        );
        dedupe.check().await;
        feed::sync_locations(&pool, &settings.locations)
            .await
            .context("cannot record the locations of the payment feed")?;
        let metrics = metrics::Metrics::default();
        let dojo = common::dojo_api::DojoApi::new(settings.dojo_api.clone(), metrics.api.clone());
        Ok(Self {
            locations: common::locations::Directory::new(settings.locations.clone()),
            settings,
            pool,
            dedupe,
            consuming: AtomicBool::new(false),
            settled: AtomicU64::new(0),
            backlog: batch::Backlog::default(),
            metrics,
            dojo,
            feed: feed::listener::Hub::default(),
        })
    }

    /// Whether details of `account`'s intents can be fetched (a key for it).
    pub fn can_fetch(&self, account: &str) -> bool {
        enrich::credentials(&self.locations.current(), account).is_some()
    }
}

pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
    worker: Arc<Worker>,
}

impl Application {
    /// Binds the HTTP listener, connects to PostgreSQL (waiting for it as long as it
    /// takes, creating the database and applying migrations; meanwhile the listener
    /// answers as [`api::waiting`] says), then serves. Consuming starts in
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&settings.addr)
            .with_context(|| format!("cannot listen on {}", settings.addr))?;
        let addr = listener.local_addr()?;
        let waiting = api::waiting(listener.try_clone()?)?;
        let stop_waiting = waiting.handle();
        let waiting = tokio::spawn(waiting);
        let worker = Worker::connect(settings).await;
        stop_waiting.stop(false).await;
        let _ = waiting.await;
        let worker = Arc::new(worker?);
        let data = web::Data::new(worker.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(api::configure)
                .configure(console::configure)
                .default_service(web::to(api::not_found))
        })
        .disable_signals()
        .workers(1)
        .listen(listener)?
        .run();
        Ok(Self {
            server,
            addr,
            worker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pool(&self) -> &PgPool {
        &self.worker.pool
    }

    /// The shared state, for observing the running processor (tests, benchmarks).
    pub fn worker(&self) -> Arc<Worker> {
        self.worker.clone()
    }

    /// Consumes and serves until `shutdown` resolves; then stops consuming, finishes and
    /// acks in-flight work, and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let consumer = tokio::spawn(consumer::run(self.worker.clone(), stopped.clone()));
        let enricher = self
            .worker
            .settings
            .enrich
            .enabled
            .then(|| tokio::spawn(enrich::run(self.worker.clone(), stopped.clone())));
        let sweeper = self
            .worker
            .settings
            .sweep
            .periodic()
            .then(|| tokio::spawn(sweep::run_periodic(self.worker.clone(), stopped.clone())));
        let listener = tokio::spawn(feed::listener::run(self.worker.clone(), stopped.clone()));
        let pruner = tokio::spawn(feed::listener::prune(self.worker.clone(), stopped.clone()));
        let tail = tokio::spawn(feed::listener::tail(self.worker.clone(), stopped.clone()));
        let sequencer = tokio::spawn(feed::sequencer::run(self.worker.clone(), stopped.clone()));
        // Also without a file: a SIGHUP is then logged, and never stops the processor.
        let reloader = tokio::spawn(common::locations::directory::watch_file(
            self.worker.settings.locations_file.clone(),
            self.worker.settings.locations_poll,
            self.worker.locations.clone(),
            stopped.clone(),
            {
                let api_token = self.worker.settings.api_token.clone();
                move |l: &common::locations::Locations| {
                    settings::feed_tokens_apart(l, api_token.as_ref())
                }
            },
            {
                let worker = self.worker.clone();
                move |outcome: &Result<_, _>| {
                    let result = if outcome.is_ok() {
                        "applied"
                    } else {
                        "refused"
                    };
                    let reloads = &worker.metrics.locations_reloads;
                    reloads.with_label_values(&[result]).inc();
                }
            },
        ));
        let accounts = tokio::spawn(feed::follow_locations(self.worker.clone(), stopped.clone()));
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight messages");
        stop.send_replace(true);
        // Feed streams end now (their clients resume on another replica or after the
        // restart): the HTTP server's graceful stop would otherwise wait for them.
        self.worker.feed.close();
        consumer.await?;
        if let Some(enricher) = enricher {
            enricher.await?;
        }
        if let Some(sweeper) = sweeper {
            sweeper.await?;
        }
        listener.await?;
        pruner.await?;
        tail.await?;
        sequencer.await?;
        reloader.await?;
        accounts.await?;
        handle.stop(true).await;
        server.await??;
        self.worker.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
