//! Ingress metrics, served at `/metrics` in Prometheus text format.

use common::metrics::{counter, counter_vec, gauge, histogram, histogram_vec, LATENCY_BUCKETS};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use std::time::Instant;

pub struct Metrics {
    pub registry: Registry,
    /// Deliveries by channel and answer (`accepted`, `invalid`, `unauthorized`, ...).
    pub received: IntCounterVec,
    /// Time from receiving a delivery to answering it, by channel and answer.
    pub ack_latency: HistogramVec,
    /// Time from publishing to the broker's confirm.
    pub confirm_latency: Histogram,
    pub broker_connected: IntGauge,
    pub websocket_configured: IntGauge,
    pub websocket_connected: IntGauge,
    pub websocket_reconnects: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        Self {
            received: counter_vec(
                &registry,
                "dojo_ingress_events_received_total",
                "Deliveries received, by channel and answer",
                &["channel", "answer"],
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
            websocket_configured: gauge(
                &registry,
                "dojo_ingress_websocket_configured",
                "1 if this ingress keeps a WebSocket to Dojo",
            ),
            websocket_connected: gauge(
                &registry,
                "dojo_ingress_websocket_connected",
                "1 while the WebSocket to Dojo is open",
            ),
            websocket_reconnects: counter(
                &registry,
                "dojo_ingress_websocket_reconnects_total",
                "WebSocket connections to Dojo opened after the first",
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Counts one answered delivery.
    pub fn answered(&self, channel: &str, answer: &str, started: Instant) {
        self.received.with_label_values(&[channel, answer]).inc();
        self.ack_latency
            .with_label_values(&[channel, answer])
            .observe(started.elapsed().as_secs_f64());
    }
}
