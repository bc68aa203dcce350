//! `dojo-bench thin`: ingress against the thinnest durable receiver
//! (`bench/src/bin/thin-receiver.rs`; issue "Performance, round 2"), closed loop, on each
//! route, with the CPU each process spent per request.
//!
//! Both servers run side by side during a run, each on a fresh vhost, and take the load
//! in turns: the run's deliveries are cut into `slices`, and each slice goes to both, in
//! the order receiver, ingress, then ingress, receiver (ABBA), so that a drift of the
//! machine's speed over the run weighs on both alike. On this shared machine the speed
//! of two back-to-back halves of a run differed by up to half, which the ratio then
//! measured instead of the servers.

use crate::load::{self, Mode, Report};
use crate::procs::{self, Proc};
use crate::stats::histogram;
use e2e::isolation::Services;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Duration;

/// CPU seconds used by the server under test, the broker and the load generator.
#[derive(Clone, Copy, Default)]
struct Cpu {
    receiver: f64,
    broker: f64,
    load: f64,
}

impl Cpu {
    fn now(receiver: &Proc) -> Self {
        Self {
            receiver: receiver.cpu_seconds(),
            broker: procs::broker_cpu_seconds(),
            load: procs::cpu_seconds("self"),
        }
    }

    fn minus(&self, earlier: &Self) -> Self {
        Self {
            receiver: self.receiver - earlier.receiver,
            broker: self.broker - earlier.broker,
            load: self.load - earlier.load,
        }
    }

    fn plus(&self, other: &Self) -> Self {
        Self {
            receiver: self.receiver + other.receiver,
            broker: self.broker + other.broker,
            load: self.load + other.load,
        }
    }

    /// Microseconds of CPU per request of each: receiver / broker / load generator.
    fn per_request(&self, requests: usize) -> String {
        let us = |s: f64| s * 1e6 / requests.max(1) as f64;
        format!(
            "{:.0} / {:.0} / {:.0}",
            us(self.receiver),
            us(self.broker),
            us(self.load)
        )
    }
}

/// What one server did over its slices of a run: answers, errors, time under load,
/// latencies (µs) and CPU.
struct Tally {
    ok: usize,
    errors: usize,
    busy: Duration,
    latency: Histogram<u64>,
    cpu: Cpu,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: 0,
            busy: Duration::ZERO,
            latency: histogram(),
            cpu: Cpu::default(),
        }
    }

    fn add(&mut self, slice: &Report, cpu: Cpu) {
        self.ok += slice.ok;
        self.errors += slice.errors;
        self.busy += slice.elapsed;
        self.latency
            .add(&slice.latency)
            .expect("histograms of the same bounds");
        self.cpu = self.cpu.plus(&cpu);
    }

    /// Answers (200) per second of its own slices.
    fn rate(&self) -> f64 {
        self.ok as f64 / self.busy.as_secs_f64()
    }

    fn p99_ms(&self) -> f64 {
        self.latency.value_at_quantile(0.99) as f64 / 1000.0
    }
}

/// One slice of load on `server`, and the CPU it cost.
async fn slice(
    server: &Proc,
    requests: Arc<Vec<load::Prepared>>,
    concurrency: usize,
) -> (Report, Cpu) {
    let before = Cpu::now(server);
    let report = load::run(&server.url, requests, Mode::Closed { concurrency }).await;
    (report, Cpu::now(server).minus(&before))
}

/// One run of `count` deliveries (all webhooks, or all REST) against the thin receiver
/// and ingress in turns (module docs), `slices` slices each.
async fn run(
    webhook: bool,
    concurrency: usize,
    count: usize,
    slices: usize,
) -> anyhow::Result<(Tally, Tally)> {
    let thin_services = Services::new().await?;
    let ingress_services = Services::new().await?;
    let thin = procs::thin_receiver(&thin_services)?;
    let ingress = procs::ingress(&ingress_services)?;
    thin.ready().await?;
    ingress.ready().await?;
    // The same deliveries for both (each on its own vhost), cut into slices.
    let all = load::prepare(
        &crate::deliveries(count, 5),
        procs::SECRET,
        procs::REST_USER,
        procs::REST_PASSWORD,
        if webhook { 0 } else { 1 },
    );
    let per = count.div_ceil(slices.max(1)).max(1);
    let mut parts = Vec::new();
    let mut rest = all.into_iter().peekable();
    while rest.peek().is_some() {
        parts.push(Arc::new(rest.by_ref().take(per).collect::<Vec<_>>()));
    }
    let (mut t, mut i) = (Tally::new(), Tally::new());
    for (n, part) in parts.into_iter().enumerate() {
        if n % 2 == 0 {
            let (r, c) = slice(&thin, part.clone(), concurrency).await;
            t.add(&r, c);
            let (r, c) = slice(&ingress, part, concurrency).await;
            i.add(&r, c);
        } else {
            let (r, c) = slice(&ingress, part.clone(), concurrency).await;
            i.add(&r, c);
            let (r, c) = slice(&thin, part, concurrency).await;
            t.add(&r, c);
        }
    }
    thin.stop();
    ingress.stop();
    Ok((t, i))
}

/// `dojo-bench thin`: `runs` runs on each route; prints one table row per run and
/// writes the runs to `json` (for `bench/plot.py`).
pub async fn compare(
    concurrency: usize,
    count: usize,
    runs: usize,
    slices: usize,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    println!("| route | run | thin receiver req/s | p99 ms | ingress req/s | p99 ms | ingress / thin | errors (thin, ingress) | CPU µs per request, thin: receiver / broker / load | ingress: receiver / broker / load |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (route, webhook) in [("webhook", true), ("REST", false)] {
        for run_no in 1..=runs {
            let (t, i) = run(webhook, concurrency, count, slices).await?;
            println!(
                "| {route} | {run_no} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} | {}, {} | {} | {} |",
                t.rate(),
                t.p99_ms(),
                i.rate(),
                i.p99_ms(),
                i.rate() / t.rate(),
                t.errors,
                i.errors,
                t.cpu.per_request(t.ok + t.errors),
                i.cpu.per_request(i.ok + i.errors),
            );
            rows.push(serde_json::json!({
                "route": route,
                "run": run_no,
                "thin": {"rate": t.rate(), "p99_ms": t.p99_ms(), "errors": t.errors},
                "ingress": {"rate": i.rate(), "p99_ms": i.p99_ms(), "errors": i.errors},
                "ratio": i.rate() / t.rate(),
            }));
        }
    }
    crate::write_json(
        json,
        "thin",
        serde_json::json!({
            "concurrency": concurrency,
            "count": count,
            "slices": slices,
            "runs": rows,
        }),
    )
}
