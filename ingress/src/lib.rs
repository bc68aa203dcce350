//! Ingress: receives Dojo Events and answers Dojo only once RabbitMQ has confirmed them.
//!
//! - [`routes`]: the HTTP routes (`/v1/events`, `/v1/webhooks/dojo`, health);
//! - [`auth`]: Basic credentials of the REST channel (webhook signatures are in `common`);
//! - [`accept`]: validate, envelope, publish: the path shared by every channel;
//! - [`broker`]: the confirmed publisher and its reconnecting supervisor;
//! - [`ws`]: the WebSocket to Dojo (JSON-RPC `HandleEventV1`);
//! - [`register`]: `ingress register ws|rest`, capability registration with Dojo;
//! - [`settings`]: configuration from the environment.

pub mod accept;
pub mod auth;
pub mod broker;
pub mod error;
pub mod metrics;
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
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use ws::WsClient;

/// What every handler can reach.
pub struct State {
    pub settings: Settings,
    pub publisher: Publisher,
    pub intake: accept::Intake,
    /// Whether the WebSocket to Dojo is open; `None` when that channel is not configured.
    pub ws_connected: Option<Arc<AtomicBool>>,
}

/// A bound, not yet running ingress.
pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
    publisher: Publisher,
    ws: Option<WsClient>,
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
        let intake = accept::Intake {
            publisher: publisher.clone(),
            metrics: Arc::new(metrics::Metrics::default()),
        };
        let ws = settings
            .ws
            .clone()
            .map(|ws| WsClient::start(ws, intake.clone()));
        let state = web::Data::new(State {
            settings,
            publisher: publisher.clone(),
            intake,
            ws_connected: ws.as_ref().map(WsClient::connected_flag),
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/v1/events", web::post().to(routes::events::handle))
                .route("/v1/webhooks/dojo", web::post().to(routes::webhook::handle))
                .route("/healthz", web::get().to(routes::health::healthz))
                .route("/readyz", web::get().to(routes::health::readyz))
                .route("/metrics", web::get().to(routes::health::metrics))
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
            ws,
        })
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
        let ws_drained = async {
            if let Some(ws) = self.ws {
                ws.shutdown().await;
            }
        };
        tokio::join!(handle.stop(true), ws_drained);
        server.await??;
        self.publisher.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
