//! `dojo-bench`: the project's throughput and latency next to the machine's own limits,
//! measured in one run on the services of this machine (each step on its own RabbitMQ
//! vhost, database and Redis prefix).
//!
//! ```text
//! cargo build --release -p ingress -p processor -p bench
//! target/release/dojo-bench all            # everything, then one table
//! target/release/dojo-bench ingress --concurrency 64 --count 100000
//! target/release/dojo-bench drain --count 100000
//! target/release/dojo-bench enrich --intents 20000 --runs 2   # fetching details: its cost
//! target/release/dojo-bench e2e --rate 5000 --seconds 60 --json e2e.json
//! target/release/dojo-bench thin --count 60000 --runs 3 --json thin.json   # against the thinnest receiver
//! bench/plot.py e2e.json thin.json --out docs/bench   # PNG plots of those files
//! target/release/dojo-bench feed --clients 500 --locations 50 --rate 2000 --seconds 30
//! target/release/dojo-bench console --events 1000000
//! ```

mod baseline;
mod console;
mod enrich;
mod feed;
mod load;
mod machine;
mod procs;
mod sockets;
mod stats;
mod thin;

use clap::{Parser, Subcommand};
use e2e::isolation::Services;
use load::Mode;
use stats::{percentiles, print_table, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "dojo-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every measurement below, then the table of ratios.
    All {
        #[arg(long, default_value_t = 60)]
        e2e_seconds: u64,
    },
    /// The machine's limits only.
    Baselines,
    /// Ingress, closed loop: signed webhooks (and some REST) at a fixed concurrency.
    Ingress {
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 100_000)]
        count: usize,
    },
    /// Ingress, open loop at a fixed rate: ack latency percentiles.
    IngressOpen {
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Processor drain: N deliveries waiting in the queue, time until all committed.
    Drain {
        #[arg(long, default_value_t = 100_000)]
        count: usize,
    },
    /// Enrichment's cost: the processor drains a backlog of `intents` payments' events
    /// with and without fetching their details from the simulator's fake Dojo API
    /// (alternating, `runs` pairs); drain rate of each, fetches per second, details right.
    Enrich {
        #[arg(long, default_value_t = 20_000)]
        intents: usize,
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// `DOJO_API_RATE` of the processor (calls per second with the one key).
        #[arg(long, default_value_t = 2_000)]
        api_rate: u32,
    },
    /// Idle WebSockets: ingress's resident memory with N locations connected to the
    /// simulator's Dojo endpoint, against the same locations without sockets.
    Sockets {
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// The payment feed: SSE clients (tills) over locations while events flow end to
    /// end; commit-to-client latency, missed updates, processor memory.
    Feed {
        #[arg(long, default_value_t = 500)]
        clients: usize,
        #[arg(long, default_value_t = 50)]
        locations: usize,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Ingress against the thinnest durable receiver (bench/src/bin/thin-receiver.rs),
    /// closed loop, on each route: req/s, p99, and ingress's share of the receiver's rate.
    Thin {
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Each run's deliveries in this many slices, given to both servers in turns.
        #[arg(long, default_value_t = 6)]
        slices: usize,
        /// Also write the runs as JSON to this file (for bench/plot.py).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The console's event list with a million stored events: page latency per kind.
    Console {
        #[arg(long, default_value_t = 1_000_000)]
        events: i64,
        #[arg(long, default_value_t = 20)]
        repeat: usize,
    },
    /// End to end at a sustained rate: ack-to-commit lag, nothing lost or doubled.
    E2e {
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Also write the figures and the per-second series as JSON to this file (for
        /// bench/plot.py).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

/// Writes `figures` (a JSON object) as pretty JSON to `path`, when one was given, with
/// `bench` (which benchmark) and `date` (now, RFC 3339) added: what bench/plot.py reads.
fn write_json(
    path: Option<&std::path::Path>,
    bench: &str,
    mut figures: serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        figures["bench"] = bench.into();
        figures["date"] = chrono::Utc::now().to_rfc3339().into();
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

struct Limits {
    publish: f64,
    consume: f64,
    postgres: f64,
    redis: f64,
}

async fn baselines() -> anyhow::Result<Limits> {
    let services = Services::new().await?;
    let amqp = services.vhost.amqp_url();
    let publish = baseline::confirmed_publish(&amqp, 64, 100_000, baseline::Shape::Raw).await?;
    println!(
        "raw confirmed publish: {:.0} msg/s ({})",
        publish.per_second, publish.detail
    );
    let shaped =
        baseline::confirmed_publish(&amqp, 64, 100_000, baseline::Shape::LikeIngress).await?;
    println!(
        "confirmed publish shaped like ingress's (520 bytes, fanout exchange, mandatory, headers): {:.0} msg/s ({})",
        shaped.per_second, shaped.detail
    );
    let consume = baseline::consume_ack(&amqp, 100_000).await?;
    println!(
        "raw consume and ack: {:.0} msg/s ({})",
        consume.per_second, consume.detail
    );
    let postgres = baseline::batched_postgres(&services.db.url(), 16, 200_000).await?;
    println!(
        "raw batched PostgreSQL writes: {:.0} events/s ({})",
        postgres.per_second, postgres.detail
    );
    let redis = baseline::redis_claims("redis://127.0.0.1:6379", 4, 400_000).await?;
    println!(
        "raw Redis claims: {:.0} ops/s ({})",
        redis.per_second, redis.detail
    );
    Ok(Limits {
        publish: publish.per_second,
        consume: consume.per_second,
        postgres: postgres.per_second,
        redis: redis.per_second,
    })
}

/// Unique lifecycles with about 10% duplicates, as many deliveries as asked.
fn deliveries(count: usize, seed: u64) -> Vec<simulator::Event> {
    simulator::scenario::lifecycles(&format!("acc_bench_{seed}"), count / 2 + 10, 0.1, seed)
        .truncate(count)
        .deliveries
}

fn prepared(count: usize, seed: u64) -> Arc<Vec<load::Prepared>> {
    Arc::new(load::prepare(
        &deliveries(count, seed),
        procs::SECRET,
        procs::REST_USER,
        procs::REST_PASSWORD,
        10,
    ))
}

async fn ingress_closed(concurrency: usize, count: usize) -> anyhow::Result<(load::Report, f64)> {
    let services = Services::new().await?;
    let ingress = procs::ingress(&services)?;
    ingress.ready().await?;
    let requests = prepared(count, 1);
    let report = load::run(&ingress.url, requests, Mode::Closed { concurrency }).await;
    let rss = ingress.peak_rss_mib();
    println!(
        "ingress closed loop ({concurrency} connections): {:.0} req/s, {} ok, {} errors, ack {}, peak RSS {rss:.0} MiB",
        report.rate(), report.ok, report.errors, percentiles(&report.latency)
    );
    ingress.stop();
    Ok((report, rss))
}

async fn ingress_open(rate: f64, seconds: u64) -> anyhow::Result<load::Report> {
    let services = Services::new().await?;
    let ingress = procs::ingress(&services)?;
    ingress.ready().await?;
    let requests = prepared((rate * seconds as f64) as usize, 2);
    let report = load::run(&ingress.url, requests, Mode::Open { rate }).await;
    println!(
        "ingress open loop at {rate:.0}/s for {seconds} s: {} ok, {} errors, ack {}",
        report.ok,
        report.errors,
        percentiles(&report.latency)
    );
    ingress.stop();
    Ok(report)
}

/// Queues `events` on the services' vhost as ingress would: envelopes, persistent,
/// routed by event type, every publish confirmed by the broker.
pub(crate) async fn queue_backlog(
    services: &Services,
    events: &[simulator::Event],
) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(&services.vhost.amqp_url(), Default::default()).await?;
    let channel = conn.create_channel().await?;
    common::topology::declare(&channel).await?;
    channel.confirm_select(Default::default()).await?;
    for e in events {
        let raw = serde_json::value::RawValue::from_string(e.body())?;
        let body =
            common::Envelope::new(common::Channel::Webhook, Default::default(), &raw).to_bytes();
        let confirm = channel
            .basic_publish(
                common::topology::EXCHANGE.into(),
                e.kind.as_str().into(),
                Default::default(),
                &body,
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(e.id.as_str().into()),
            )
            .await?;
        drop(confirm);
    }
    channel.wait_for_confirms().await?;
    let _ = conn.close(200, "queued".into()).await;
    Ok(())
}

/// Waits until `dojo_events` holds `distinct` rows; an error after ten minutes. Progress
/// is the processor's own count of settled deliveries (`dojo_processor_events_total`,
/// outcomes applied, stale and ignored, counted after their commit), polled every 20
/// ms; the table is counted to confirm, and once a second anyway (a batch committed
/// but retried is counted as a duplicate, so the metric alone could stay short).
/// Counting the table every 20 ms (a scan of up to 100,000 rows) took CPU from the run
/// it measured.
pub(crate) async fn wait_stored(
    processor: &procs::Proc,
    pool: &sqlx::PgPool,
    distinct: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    for poll in 1u64.. {
        let page = processor.metrics().await;
        let settled: f64 = ["applied", "stale", "ignored"]
            .iter()
            .map(|o| {
                procs::sample(
                    &page,
                    "dojo_processor_events_total",
                    &format!("outcome=\"{o}\""),
                )
            })
            .sum();
        if settled as usize >= distinct || poll % 50 == 0 {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dojo_events")
                .fetch_one(pool)
                .await?;
            if n as usize >= distinct {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{n} of {distinct} events stored after ten minutes"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("an endless range")
}

async fn drain(count: usize) -> anyhow::Result<(f64, String, f64)> {
    let services = Services::new().await?;
    let events = deliveries(count, 3);
    let distinct: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    queue_backlog(&services, &events).await?;

    let processor = procs::processor(&services)?;
    let started = processor.ready().await?;
    let pool = sqlx::PgPool::connect(&services.db.url()).await?;
    wait_stored(&processor, &pool, distinct.len()).await?;
    let elapsed = started.elapsed();
    let rate = count as f64 / elapsed.as_secs_f64();
    // The payment feed (migration 0007, absent in older processors): how long after the
    // last commit until the sequencer has numbered every update.
    let has_feed: bool =
        sqlx::query_scalar("SELECT to_regclass('payment_updates_pending') IS NOT NULL")
            .fetch_one(&pool)
            .await?;
    let feed = if has_feed {
        let last_commit = std::time::Instant::now();
        loop {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_updates_pending")
                .fetch_one(&pool)
                .await?;
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let updates: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_updates")
            .fetch_one(&pool)
            .await?;
        format!(
            "; feed: {updates} updates, all numbered {:.0} ms after the last event's commit",
            last_commit.elapsed().as_secs_f64() * 1000.0
        )
    } else {
        String::new()
    };
    let page = processor.metrics().await;
    // Each channel commits one batch at a time: stage time over channels x wall time is
    // the share of the channels' time spent in that stage.
    let channels: f64 = std::env::var("PROCESSOR_CHANNELS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(8.0);
    let channel_time = channels * elapsed.as_secs_f64();
    let breakdown: Vec<String> = ["parse", "redis_claim", "db_apply", "redis_done", "ack"]
        .iter()
        .map(|stage| {
            let (sum, _) = procs::sum_count(
                &page,
                "dojo_processor_stage_seconds",
                &format!("stage=\"{stage}\""),
            );
            format!("{stage} {:.0}%", 100.0 * sum / channel_time)
        })
        .collect();
    let (size_sum, size_count) = procs::sum_count(&page, "dojo_processor_batch_size", "");
    let rss = processor.peak_rss_mib();
    let detail = format!(
        "{} batches, {:.0} deliveries per batch on average; share of the {channels} channels' time per stage: {}",
        size_count,
        size_sum / size_count.max(1.0),
        breakdown.join(", ")
    ) + &feed;
    println!("processor drain of {count} deliveries ({} distinct): {:.2} s, {rate:.0} events/s; {detail}; peak RSS {rss:.0} MiB", distinct.len(), elapsed.as_secs_f64());
    assert!(processor.stop(), "processor exits 0 on SIGTERM");
    Ok((rate, detail, rss))
}

async fn end_to_end(
    rate: f64,
    seconds: u64,
    json: Option<&std::path::Path>,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let services = Services::new().await?;
    let ingress = procs::ingress(&services)?;
    let processor = procs::processor(&services)?;
    ingress.ready().await?;
    processor.ready().await?;
    let requests = prepared((rate * seconds as f64) as usize, 4);
    let pool = sqlx::PgPool::connect(&services.db.url()).await?;
    let sampler = machine::Sampler::start(ingress.pid(), processor.pid(), pool.clone());
    let report = load::run(&ingress.url, requests.clone(), Mode::Open { rate }).await;
    let machine = sampler.stop();
    machine::print_slowest(&report.per_second, &machine, 8);
    // First acknowledgement of each distinct event.
    let mut first_ack = std::collections::HashMap::new();
    for (p, at) in requests.iter().zip(&report.acked_at) {
        if let Some(at) = at {
            first_ack
                .entry(p.event_id.clone())
                .and_modify(|t: &mut std::time::SystemTime| *t = (*t).min(*at))
                .or_insert(*at);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = loop {
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT event_id, processed_at FROM dojo_events")
                .fetch_all(&pool)
                .await?;
        if rows.len() >= first_ack.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut lag = stats::histogram();
    for (id, committed) in &rows {
        if let Some(acked) = first_ack.get(id) {
            let acked: chrono::DateTime<chrono::Utc> = (*acked).into();
            stats::record(&mut lag, (*committed - acked).to_std().unwrap_or_default());
        }
    }
    let page = processor.metrics().await;
    let (size_sum, size_count) = procs::sum_count(&page, "dojo_processor_batch_size", "");
    let (apply_sum, _) =
        procs::sum_count(&page, "dojo_processor_stage_seconds", "stage=\"db_apply\"");
    println!(
        "  processor: {size_count} batches, {:.1} deliveries per batch, {:.2} ms per database transaction",
        size_sum / size_count.max(1.0),
        1000.0 * apply_sum / size_count.max(1.0)
    );
    // By event id: each acknowledged event must have its row; the primary key allows
    // one per event, and the count says so rather than assuming it.
    let stored: std::collections::HashMap<&str, usize> =
        rows.iter().fold(Default::default(), |mut n, (id, _)| {
            *n.entry(id.as_str()).or_default() += 1;
            n
        });
    let lost = first_ack
        .keys()
        .filter(|id| !stored.contains_key(id.as_str()))
        .count();
    let most_rows = stored.values().copied().max().unwrap_or(0);
    let (ingress_rss, processor_rss) = (ingress.peak_rss_mib(), processor.peak_rss_mib());
    println!(
        "end to end at {rate:.0}/s for {seconds} s: {} sent, {} acknowledged, {} errors, {} distinct acknowledged, {} committed ({} rows per event at most: primary key), {lost} lost; ack {}; ack to commit {}; peak RSS ingress {ingress_rss:.0} MiB, processor {processor_rss:.0} MiB",
        report.sent, report.ok, report.errors, first_ack.len(), rows.len(), most_rows, percentiles(&report.latency), percentiles(&lag)
    );
    let ms = |v: u64| v as f64 / 1000.0;
    write_json(
        json,
        "e2e",
        serde_json::json!({
            "rate": rate,
            "seconds": seconds,
            "sent": report.sent,
            "acknowledged": report.ok,
            "errors": report.errors,
            "distinct_acknowledged": first_ack.len(),
            "committed": rows.len(),
            "lost": lost,
            "ack_ms": {"p50": ms(report.latency.value_at_quantile(0.5)), "p99": ms(report.latency.value_at_quantile(0.99)), "max": ms(report.latency.max())},
            "ack_to_commit_ms": {"p50": ms(lag.value_at_quantile(0.5)), "p99": ms(lag.value_at_quantile(0.99)), "max": ms(lag.max())},
            "peak_rss_mib": {"ingress": ingress_rss, "processor": processor_rss},
            "per_second": report.per_second,
            // What the machine did in each of those seconds (bench/src/machine.rs).
            "machine_per_second": machine,
        }),
    )?;
    ingress.stop();
    processor.stop();
    Ok((
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        report.rate(),
        ingress_rss,
        processor_rss,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    tokio::select! {
        done = run(command) => done,
        _ = tokio::signal::ctrl_c() => {
            // The run's future is dropped here, and with it its services, vhost,
            // database and processes: an interrupted run leaves nothing behind.
            eprintln!("dojo-bench: interrupted; the run's services, vhost and database are removed");
            std::process::exit(130);
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Baselines => {
            baselines().await?;
        }
        Command::Ingress { concurrency, count } => {
            ingress_closed(concurrency, count).await?;
        }
        Command::IngressOpen { rate, seconds } => {
            ingress_open(rate, seconds).await?;
        }
        Command::Drain { count } => {
            drain(count).await?;
        }
        Command::Enrich {
            intents,
            runs,
            api_rate,
        } => {
            enrich::run(intents, runs, api_rate).await?;
        }
        Command::E2e {
            rate,
            seconds,
            json,
        } => {
            end_to_end(rate, seconds, json.as_deref()).await?;
        }
        Command::Feed {
            clients,
            locations,
            rate,
            seconds,
        } => {
            feed::run(clients, locations, rate, seconds).await?;
        }
        Command::Sockets { count } => {
            sockets::idle(count).await?;
        }
        Command::Thin {
            concurrency,
            count,
            runs,
            slices,
            json,
        } => {
            thin::compare(concurrency, count, runs, slices, json.as_deref()).await?;
        }
        Command::Console { events, repeat } => {
            console::run(events, repeat).await?;
        }
        Command::All { e2e_seconds } => {
            let limits = baselines().await?;
            let (closed, ingress_rss) = ingress_closed(64, 100_000).await?;
            let open = ingress_open(5000.0, 20).await?;
            let (drained, detail, processor_rss) = drain(100_000).await?;
            let (lag_p99, e2e_rate, e2e_ingress_rss, e2e_processor_rss) =
                end_to_end(5000.0, e2e_seconds, None).await?;
            let processor_limit = limits.consume.min(limits.postgres);
            let limit_name = if limits.consume < limits.postgres {
                "raw consume and ack"
            } else {
                "raw batched PostgreSQL"
            };
            print_table(&[
                Row {
                    what: "ingress, signed webhooks, 64 connections".into(),
                    project: closed.rate(),
                    limit: Some(("raw confirmed publish".into(), limits.publish)),
                    unit: "/s",
                    note: format!(
                        "{} errors; ack {}",
                        closed.errors,
                        percentiles(&closed.latency)
                    ),
                },
                Row {
                    what: "ingress ack p99 at 5,000/s open loop".into(),
                    project: open.latency.value_at_quantile(0.99) as f64 / 1000.0,
                    limit: None,
                    unit: "ms",
                    note: format!("{} errors", open.errors),
                },
                Row {
                    what: "processor drain".into(),
                    project: drained,
                    limit: Some((limit_name.into(), processor_limit)),
                    unit: "events/s",
                    note: detail,
                },
                Row {
                    what: "raw Redis claims".into(),
                    project: limits.redis,
                    limit: None,
                    unit: "ops/s",
                    note: "the dedupe fast path's ceiling".into(),
                },
                Row {
                    what: format!("end to end at 5,000/s for {e2e_seconds} s, ack to commit p99"),
                    project: lag_p99,
                    limit: None,
                    unit: "ms",
                    note: format!("{e2e_rate:.0}/s acknowledged"),
                },
                Row {
                    what: "peak RSS (ingress / processor)".into(),
                    project: ingress_rss.max(e2e_ingress_rss),
                    limit: None,
                    unit: "MiB",
                    note: format!("processor {:.0} MiB", processor_rss.max(e2e_processor_rss)),
                },
            ]);
        }
    }
    Ok(())
}
