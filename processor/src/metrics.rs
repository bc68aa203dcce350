//! Processor metrics, served at `/metrics` in Prometheus text format.

use common::metrics::{
    counter, counter_vec, gauge, gauge_vec, histogram, histogram_vec, LAG_BUCKETS, LATENCY_BUCKETS,
};
use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Deliveries by outcome: applied, stale, ignored, duplicate, retried, dead.
    pub processed: IntCounterVec,
    /// Time to handle one delivery (parse, dedupe, apply).
    pub processing: Histogram,
    /// Now minus Dojo's `createdAt`, at commit.
    pub lag: Histogram,
    /// Duplicates caught, by layer: redis (no database work) or database.
    pub dedupe_hits: IntCounterVec,
    pub consuming: IntGauge,
    /// 1 while Redis answers (the deduplication fast path works).
    pub redis_up: IntGauge,
    pub broker_reconnects: IntCounter,
    /// Where a batch's time goes: parse, redis_claim, db_apply, redis_done, ack.
    pub stage: HistogramVec,
    /// Deliveries per batch.
    pub batch_size: Histogram,
    /// Dojo API calls by location, operation and status; broken keys.
    pub api: common::dojo_api::ApiMetrics,
    /// Rows of `enrichment_outbox`: details fetches scheduled and not done yet.
    pub fetches_pending: IntGauge,
    /// Details fetches by outcome: stored, not_newer, deferred, retried, key_broken,
    /// not_found, no_key.
    pub fetches: IntCounterVec,
    /// Synthetic `reconcile` events applied, by source (enrichment, sweep, overdue)
    /// and reason (status_behind, unknown_intent).
    pub repairs: IntCounterVec,
    /// Time of one sweep of one location, by kind (window, overdue).
    pub sweep_duration: HistogramVec,
    /// End of the window of the last completed sweep, per location with an API key
    /// (Unix seconds; 0 until one completes): `time() - this` is the sweep lag.
    pub sweep_last_success: IntGaugeVec,
    /// Open payment-feed streams.
    pub feed_clients: IntGauge,
    /// Stream clients cut off for reading too slowly.
    pub feed_cutoffs: IntCounter,
    /// Reconnects of the feed's LISTEN connection.
    pub feed_listener_reconnects: IntCounter,
    /// Payment updates numbered by this process's sequencer (crate::feed::sequencer).
    pub feed_numbered: IntCounter,
    /// The oldest `seq` kept in the outbox (0: empty), and its age in seconds.
    pub feed_oldest_seq: IntGauge,
    pub feed_oldest_age: IntGauge,
    /// Locations file reloads, by result (applied, refused): the processor checks more
    /// than ingress (no till token may equal `PROCESSOR_API_TOKEN`), so it can refuse a
    /// file ingress applied. Both results exist at 0 from the start.
    pub locations_reloads: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        Self {
            processed: counter_vec(
                &registry,
                "dojo_processor_events_total",
                "Deliveries settled, by outcome",
                &["outcome"],
            ),
            processing: histogram(
                &registry,
                "dojo_processor_processing_seconds",
                "Time to handle one delivery",
                LATENCY_BUCKETS,
            ),
            lag: histogram(
                &registry,
                "dojo_processor_end_to_end_lag_seconds",
                "Dojo's createdAt to our commit",
                LAG_BUCKETS,
            ),
            dedupe_hits: counter_vec(
                &registry,
                "dojo_processor_dedupe_hits_total",
                "Duplicates caught, by layer",
                &["layer"],
            ),
            consuming: gauge(
                &registry,
                "dojo_processor_consuming",
                "1 while a consumer is attached to the work queue",
            ),
            redis_up: gauge(
                &registry,
                "dojo_processor_redis_up",
                "1 while Redis answers (the deduplication fast path works); 0: the database alone",
            ),
            stage: histogram_vec(
                &registry,
                "dojo_processor_stage_seconds",
                "Time per batch stage",
                &["stage"],
                LATENCY_BUCKETS,
            ),
            batch_size: histogram(
                &registry,
                "dojo_processor_batch_size",
                "Deliveries per batch",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            broker_reconnects: counter(
                &registry,
                "dojo_processor_broker_reconnects_total",
                "Broker connections opened after the first",
            ),
            api: common::dojo_api::ApiMetrics::new(&registry),
            fetches_pending: gauge(
                &registry,
                "dojo_processor_fetches_pending",
                "Payment-details fetches scheduled and not done yet",
            ),
            fetches: counter_vec(
                &registry,
                "dojo_processor_fetches_total",
                "Payment-details fetches, by outcome",
                &["outcome"],
            ),
            repairs: counter_vec(
                &registry,
                "dojo_processor_repairs_total",
                "Records repaired from Dojo's API (synthetic reconcile events applied)",
                &["source", "reason"],
            ),
            sweep_duration: histogram_vec(
                &registry,
                "dojo_processor_sweep_duration_seconds",
                "Time of one reconciliation sweep of one location, by kind",
                &["kind"],
                LAG_BUCKETS,
            ),
            sweep_last_success: gauge_vec(
                &registry,
                "dojo_processor_sweep_last_success_timestamp_seconds",
                "End of the window of the location's last completed sweep (0: none yet)",
                &["location"],
            ),
            feed_clients: gauge(
                &registry,
                "dojo_processor_feed_clients",
                "Open payment-feed streams (Server-Sent Events)",
            ),
            feed_cutoffs: counter(
                &registry,
                "dojo_processor_feed_slow_cutoffs_total",
                "Payment-feed stream clients cut off for reading too slowly",
            ),
            feed_listener_reconnects: counter(
                &registry,
                "dojo_processor_feed_listener_reconnects_total",
                "Reconnects of the payment feed's LISTEN connection",
            ),
            feed_numbered: counter(
                &registry,
                "dojo_processor_feed_updates_numbered_total",
                "Payment updates this process's sequencer numbered (moved from pending into the feed)",
            ),
            feed_oldest_seq: gauge(
                &registry,
                "dojo_processor_feed_oldest_seq",
                "The oldest seq kept in the payment feed (0: empty)",
            ),
            feed_oldest_age: gauge(
                &registry,
                "dojo_processor_feed_oldest_age_seconds",
                "Age of the oldest update kept in the payment feed",
            ),
            locations_reloads: {
                let reloads = counter_vec(
                    &registry,
                    "dojo_processor_locations_reloads_total",
                    "Locations file reloads, by result (applied, refused)",
                    &["result"],
                );
                // At 0 before the first reload: a counter that first appears at 1 shows
                // no increase() (the alert would miss the first refusal).
                for result in ["applied", "refused"] {
                    reloads.with_label_values(&[result]);
                }
                reloads
            },
            registry,
        }
    }
}
