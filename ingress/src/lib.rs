//! Ingress: receives Dojo Events and answers Dojo only once RabbitMQ has confirmed them.
//!
//! - [`routes`]: the HTTP routes (`/v1/events`, `/v1/webhooks/dojo`, health);
//! - [`auth`]: Basic credentials of the REST channel (webhook signatures are in `common`);
//! - [`accept`]: validate, envelope, publish: the path shared by every channel;
//! - [`broker`]: the confirmed publisher and its reconnecting supervisor;
//! - [`locations`]: the locations served now, reloaded without a restart;
//! - [`ws`]: the WebSockets to Dojo, one per location (JSON-RPC `HandleEventV1`);
//! - [`register`]: `ingress register ws|rest`, capability registration with Dojo;
//! - [`settings`]: configuration from the environment.

pub mod accept;
pub mod auth;
pub mod broker;
pub mod error;
pub mod locations;
pub mod metrics;
pub mod openapi;
pub mod register;
pub mod routes;
pub mod settings;
pub mod ws;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use broker::{Publisher, PublisherConfig};
use settings::Settings;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use ws::Sockets;

/// What every handler can reach.
pub struct State {
    pub settings: Settings,
    /// The locations served now (the settings' set, or a reloaded one).
    pub locations: locations::Directory,
    pub publisher: Publisher,
    pub intake: accept::Intake,
    /// The WebSockets to Dojo.
    pub sockets: Arc<Sockets>,
}

/// A bound, not yet running ingress.
pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
    publisher: Publisher,
    sockets: Arc<Sockets>,
    locations: locations::Directory,
    /// Stops the lease holder and the locations file watcher.
    background: watch::Sender<bool>,
    lease: tokio::task::JoinHandle<()>,
}

/// How long in-flight requests (and their confirms) get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Application {
    /// Binds the listener and starts connecting to the broker. Must be called inside a
    /// Tokio runtime.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&settings.addr)
            .with_context(|| format!("cannot listen on {}", settings.addr))?;
        let addr = listener.local_addr()?;
        let publisher = Publisher::start(PublisherConfig {
            url: settings.amqp_url.clone(),
            channels: settings.publish_channels,
            confirm_timeout: settings.publish_timeout,
            reconnect_max: settings.reconnect_max,
        });
        let workers = settings.workers;
        let metrics = Arc::new(metrics::Metrics::default());
        metrics.locations.set(settings.locations.len() as i64);
        metrics.know_locations(&settings.locations);
        log_channels(&settings);
        let intake = accept::Intake {
            publisher: publisher.clone(),
            metrics: metrics.clone(),
        };
        let directory = locations::Directory::new(settings.locations.clone());
        let (background, stopped) = watch::channel(false);
        let (held, lease_held) = watch::channel(false);
        let lease = tokio::spawn(ws::lease::hold(
            settings.amqp_url.clone(),
            settings.ws.lease_retry,
            settings.ws.lease_grace,
            held,
            metrics.clone(),
            stopped.clone(),
        ));
        let sockets = Arc::new(Sockets::start(
            directory.clone(),
            ws::client::Shared {
                settings: Arc::new(settings.ws.clone()),
                intake: intake.clone(),
                handshakes: ws::handshakes::Handshakes::new(settings.ws.handshakes_per_sec),
            },
            lease_held,
        ));
        // Also without a file: a SIGHUP is then logged, and never stops ingress.
        tokio::spawn(locations::reload::watch_file(
            settings.locations_file.clone(),
            settings.locations_poll,
            directory.clone(),
            metrics.clone(),
            stopped,
        ));
        let state = web::Data::new(State {
            settings,
            locations: directory.clone(),
            publisher: publisher.clone(),
            intake,
            sockets: sockets.clone(),
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .service(post_only(
                    "/v1/events",
                    web::post().to(routes::events::handle),
                ))
                .service(post_only(
                    "/v1/webhooks/dojo",
                    web::post().to(routes::webhook::handle),
                ))
                .service(post_only(
                    "/locations/{location}/v1/events",
                    web::post().to(routes::events::handle_at),
                ))
                .service(post_only(
                    "/locations/{location}/v1/webhooks/dojo",
                    web::post().to(routes::webhook::handle_at),
                ))
                .route("/healthz", web::get().to(routes::health::healthz))
                .route("/readyz", web::get().to(routes::health::readyz))
                .route("/metrics", web::get().to(routes::health::metrics))
                .route("/openapi.json", web::get().to(routes::health::openapi))
                .default_service(web::to(routes::not_found))
        })
        // Signals are handled by the caller, which then drains in order: HTTP first,
        // then the broker connection.
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        // A client that does not send its headers in time is cut off (408); the body
        // has its own deadline (routes::BODY_DEADLINE), below the keep-alive timeout so
        // that a stalled upload gets its 408 before the connection is reaped.
        .client_request_timeout(Duration::from_secs(5))
        .keep_alive(Duration::from_secs(15))
        .client_disconnect_timeout(Duration::from_secs(2))
        .listen(listener)?;
        if let Some(n) = workers {
            server = server.workers(n);
        }
        Ok(Self {
            server: server.run(),
            addr,
            publisher,
            sockets,
            locations: directory,
            background,
            lease,
        })
    }

    /// The locations served now (tests read and replace it).
    pub fn locations(&self) -> &locations::Directory {
        &self.locations
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish (their confirms included) and closes the broker connection.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        // HTTP and WebSocket drain side by side: no new requests, in-flight ones answered.
        tokio::join!(handle.stop(true), self.sockets.shutdown());
        server.await??;
        // The lease goes only now: the sockets are closed, another replica may take over.
        self.background.send_replace(true);
        let _ = self.lease.await;
        self.publisher.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// An event route: `post` answers POST, any other method is a 405.
fn post_only(path: &str, post: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(post)
        .default_service(web::to(routes::method_not_allowed))
}

/// Says at start which channels are on, for how many locations (no secret).
fn log_channels(settings: &Settings) {
    let l = &settings.locations;
    let count =
        |f: &dyn Fn(&common::locations::Location) -> bool| l.iter().filter(|x| f(x)).count();
    tracing::info!(
        locations = l.len(),
        file = settings
            .locations_file
            .as_deref()
            .unwrap_or("(single-location variables)"),
        webhook = count(&|x| !x.webhook_secrets.is_empty()),
        rest = count(&|x| x.rest.is_some()),
        websocket = count(&|x| x.websocket),
        "locations served"
    );
}
