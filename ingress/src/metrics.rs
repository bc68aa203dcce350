//! Ingress metrics, served at `/metrics` in Prometheus text format.
//!
//! Per-location series carry the `location` label: a location id from the locations
//! file (bounded by it), `unknown` for a path naming no location, or `none` before a
//! delivery was tied to a location (never free text from a request). A removed
//! location's socket and wrong-account series are removed with it; its delivery
//! counters stay until the process restarts (counters must not go backwards).

use common::metrics::{counter_vec, gauge, gauge_vec, histogram, histogram_vec, LATENCY_BUCKETS};
use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use std::time::Instant;

/// `location` label of a delivery not (yet) tied to a location.
pub const NO_LOCATION: &str = "none";
/// `location` label of a path that names no configured location.
pub const UNKNOWN_LOCATION: &str = "unknown";
/// The `channel` label's values: Dojo's three ways of delivering an event.
const CHANNELS: [&str; 3] = ["rest", "webhook", "ws"];

pub struct Metrics {
    pub registry: Registry,
    /// Deliveries by channel, answer (`accepted`, `invalid`, `unauthorized`, ...) and location.
    pub received: IntCounterVec,
    /// Time from receiving a delivery to answering it, by channel and answer.
    pub ack_latency: HistogramVec,
    /// Time from publishing to the broker's confirm.
    pub confirm_latency: Histogram,
    pub broker_connected: IntGauge,
    /// Authenticated deliveries whose `accountId` was not their location's, by location
    /// and channel.
    pub wrong_account: IntCounterVec,
    /// 1 for each location that should have a WebSocket to Dojo open on this replica.
    pub websocket_configured: IntGaugeVec,
    /// 1 while a location's WebSocket to Dojo is open.
    pub websocket_connected: IntGaugeVec,
    /// WebSocket connections to Dojo opened after a location's first, by location.
    pub websocket_reconnects: IntCounterVec,
    /// WebSocket handshakes attempted, by result (`open`, `failed`).
    pub websocket_handshakes: IntCounterVec,
    /// 1 while this replica holds the lease on the WebSockets to Dojo.
    pub websocket_lease_held: IntGauge,
    /// Locations served now.
    pub locations: IntGauge,
    /// Locations file reloads, by result (`applied`, `refused`).
    pub locations_reloads: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        Self {
            received: counter_vec(
                &registry,
                "dojo_ingress_events_received_total",
                "Deliveries received, by channel, answer and location",
                &["channel", "answer", "location"],
            ),
            ack_latency: histogram_vec(
                &registry,
                "dojo_ingress_ack_latency_seconds",
                "Time from receiving a delivery to answering it",
                &["channel", "answer"],
                LATENCY_BUCKETS,
            ),
            confirm_latency: histogram(
                &registry,
                "dojo_ingress_publish_confirm_seconds",
                "Time from publish to the broker's confirm",
                LATENCY_BUCKETS,
            ),
            broker_connected: gauge(
                &registry,
                "dojo_ingress_broker_connected",
                "1 while connected to RabbitMQ",
            ),
            wrong_account: counter_vec(
                &registry,
                "dojo_ingress_wrong_account_total",
                "Authenticated deliveries whose accountId is not their location's (refused)",
                &["location", "channel"],
            ),
            websocket_configured: gauge_vec(
                &registry,
                "dojo_ingress_websocket_configured",
                "1 for each location whose WebSocket to Dojo this ingress keeps open",
                &["location"],
            ),
            websocket_connected: gauge_vec(
                &registry,
                "dojo_ingress_websocket_connected",
                "1 while the location's WebSocket to Dojo is open",
                &["location"],
            ),
            websocket_reconnects: counter_vec(
                &registry,
                "dojo_ingress_websocket_reconnects_total",
                "WebSocket connections to Dojo opened after the location's first",
                &["location"],
            ),
            websocket_handshakes: counter_vec(
                &registry,
                "dojo_ingress_websocket_handshakes_total",
                "WebSocket handshakes with Dojo, by result",
                &["result"],
            ),
            websocket_lease_held: gauge(
                &registry,
                "dojo_ingress_websocket_lease_held",
                "1 while this replica holds the lease on the WebSockets to Dojo",
            ),
            locations: gauge(&registry, "dojo_ingress_locations", "Locations served now"),
            locations_reloads: counter_vec(
                &registry,
                "dojo_ingress_locations_reloads_total",
                "Locations file reloads, by result (applied, refused)",
                &["result"],
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Gives every location's wrong-account series (one per channel) and both reload
    /// results a value of 0 before anything happens: a counter that first appears at 1
    /// has no increase for Prometheus' `increase()` to see, so the first wrong-account
    /// delivery or refused file would not alert (`deploy/prometheus/alerts.yml`).
    /// Called at start and after every applied reload; existing series keep their count.
    pub fn know_locations(&self, locations: &common::locations::Locations) {
        for location in locations.iter() {
            for channel in CHANNELS {
                self.wrong_account
                    .with_label_values(&[&location.id, channel]);
            }
        }
        for result in ["applied", "refused"] {
            self.locations_reloads.with_label_values(&[result]);
        }
    }

    /// Counts one answered delivery.
    pub fn answered(&self, channel: &str, answer: &str, location: &str, started: Instant) {
        self.received
            .with_label_values(&[channel, answer, location])
            .inc();
        self.ack_latency
            .with_label_values(&[channel, answer])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Forgets a removed location's series.
    pub fn forget_location(&self, location: &str) {
        for vec in [&self.websocket_configured, &self.websocket_connected] {
            let _ = vec.remove_label_values(&[location]);
        }
        let _ = self.websocket_reconnects.remove_label_values(&[location]);
        for channel in CHANNELS {
            let _ = self.wrong_account.remove_label_values(&[location, channel]);
        }
    }
}
