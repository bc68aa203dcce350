//! Payment lifecycles as Dojo produces them, delivered with duplicates and disorder, and
//! the final state each intent must end in.

use crate::event::Event;
use chrono::{DateTime, Duration, Utc};
use common::dojo_api::PaymentIntent;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// The lifecycles of dojo-api.md.
const AUTO: [&[&str]; 4] = [
    &["Created", "Captured"],
    &["Created", "Captured", "Refunded"],
    &["Created", "Captured", "Reversed"],
    &["Created", "Canceled"],
];
const MANUAL: [&[&str]; 4] = [
    &["Created", "Authorized", "Captured"],
    &["Created", "Authorized", "Reversed"],
    &["Created", "Authorized", "Captured", "Refunded"],
    &["Created", "Canceled"],
];

pub struct Scenario {
    /// Every delivery, in sending order: duplicates included, order shuffled.
    pub deliveries: Vec<Event>,
    /// Distinct events in `deliveries` (the lost ones not counted).
    pub distinct: usize,
    /// Payment intent id -> its final status.
    pub expected: HashMap<String, String>,
    /// Payment intent id -> Dojo's truth about it (what its API serves): amounts, tips,
    /// refunds, captures, reference, order, card; `updatedAt` = its last event's time.
    pub truth: HashMap<String, Truth>,
    /// Distinct events never sent on any channel ([`Scenario::lose`]).
    pub lost: Vec<Event>,
}

/// One intent as Dojo knows it, with the account it belongs to.
#[derive(Debug, Clone)]
pub struct Truth {
    pub account_id: String,
    pub intent: PaymentIntent,
}

/// `intents` lifecycles (half Auto, half Manual) for `account`, each event sent once,
/// `duplicate_ratio` of them once more, all shuffled. Deterministic for a given seed.
pub fn lifecycles(account: &str, intents: usize, duplicate_ratio: f64, seed: u64) -> Scenario {
    let mut rng = StdRng::seed_from_u64(seed);
    // Microseconds: what PostgreSQL keeps, so Dojo's `updatedAt` compares exactly.
    let start = micros(Utc::now() - Duration::hours(1));
    let mut events = Vec::new();
    let mut expected = HashMap::new();
    let mut truth = HashMap::new();
    let mut money = StdRng::seed_from_u64(seed ^ 0x0030_11e7);
    for n in 0..intents {
        let manual = n % 2 == 1;
        let shapes = if manual { &MANUAL } else { &AUTO };
        let steps = shapes[rng.random_range(0..shapes.len())];
        let pi = format!("pi_{seed}_{n}");
        let mut at = start + Duration::milliseconds(n as i64);
        for (i, status) in steps.iter().enumerate() {
            let kind = if i == 0 {
                "payment_intent.created"
            } else {
                "payment_intent.status_updated"
            };
            let mut e = Event::new(&format!("evt_{seed}_{n}_{i}"), kind, &pi, status, at);
            e.account_id = account.into();
            e.capture_mode = if manual { "Manual" } else { "Auto" }.into();
            events.push(e);
            at += Duration::microseconds(rng.random_range(1..5_000_000));
        }
        let first = events[events.len() - steps.len()].created_at;
        let last = events[events.len() - 1].created_at;
        let intent = crate::truth::intent(&mut money, &pi, n, steps, manual, first, last);
        truth.insert(
            pi.clone(),
            Truth {
                account_id: account.into(),
                intent,
            },
        );
        expected.insert(pi, steps[steps.len() - 1].to_string());
    }
    let distinct = events.len();
    let extra: Vec<Event> = events
        .iter()
        .filter(|_| rng.random_bool(duplicate_ratio))
        .cloned()
        .collect();
    events.extend(extra);
    events.shuffle(&mut rng);
    Scenario {
        deliveries: events,
        distinct,
        expected,
        truth,
        lost: Vec::new(),
    }
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("a recent instant")
}

impl Scenario {
    /// Holds back about `ratio` of the deliveries until everything else was sent, as
    /// late retries from Dojo would arrive.
    pub fn with_late(mut self, ratio: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1a7e);
        let (late, mut on_time): (Vec<Event>, Vec<Event>) = self
            .deliveries
            .into_iter()
            .partition(|_| rng.random_bool(ratio));
        on_time.extend(late);
        self.deliveries = on_time;
        self
    }
}

impl Scenario {
    /// Keeps the first `n` deliveries; `distinct` and `expected` then describe what is
    /// left (an intent's expected status is that of its latest remaining event).
    pub fn truncate(mut self, n: usize) -> Self {
        self.deliveries.truncate(n);
        let mut latest: HashMap<&str, &Event> = HashMap::new();
        for e in &self.deliveries {
            let slot = latest.entry(e.payment_intent_id.as_str()).or_insert(e);
            if e.created_at > slot.created_at {
                *slot = e;
            }
        }
        let expected = latest
            .into_iter()
            .map(|(pi, e)| (pi.to_owned(), e.status.clone()))
            .collect();
        let distinct = self
            .deliveries
            .iter()
            .map(|e| e.id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        self.expected = expected;
        self.distinct = distinct;
        self.truth.retain(|pi, _| self.expected.contains_key(pi));
        for (pi, t) in &mut self.truth {
            t.intent.status = self.expected.get(pi).cloned();
        }
        self
    }

    /// Loses about `ratio` of the distinct events for good: no copy of them is sent on
    /// any channel (a long outage, an exhausted Dojo retry). `expected` and `truth` still
    /// say what Dojo knows; `lost` lists them.
    pub fn lose(mut self, ratio: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x105e);
        let mut ids: Vec<&str> = self.deliveries.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let lost: std::collections::HashSet<String> = ids
            .into_iter()
            .filter(|_| rng.random_bool(ratio))
            .map(str::to_owned)
            .collect();
        let (gone, kept): (Vec<Event>, Vec<Event>) = self
            .deliveries
            .into_iter()
            .partition(|e| lost.contains(&e.id));
        self.deliveries = kept;
        let mut seen = std::collections::HashSet::new();
        self.lost = gone
            .into_iter()
            .filter(|e| seen.insert(e.id.clone()))
            .collect();
        // `distinct` counts what is sent: the lost events are not.
        self.distinct -= self.lost.len();
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn distinct_counts_what_is_sent_after_a_loss() {
        let scenario = super::lifecycles("acc", 100, 0.3, 31).lose(0.2, 31);
        let sent: std::collections::HashSet<&str> =
            scenario.deliveries.iter().map(|e| e.id.as_str()).collect();
        assert!(!scenario.lost.is_empty());
        assert_eq!(scenario.distinct, sent.len());
    }
}
