//! What fetching payment details costs (issue 11's enrichment, measured for issue 15):
//! the processor drains the same backlog twice on fresh vhosts and databases, once with
//! enrichment off (`ENRICH_ENABLED=false`) and once fetching every intent from the
//! simulator's fake Dojo API (`GET /payment-intents/{id}`, one key, `DOJO_API_RATE` as
//! given), alternating; in between, once with fetches scheduled but held back
//! (`ENRICH_DELAY_MS` of an hour), which isolates the cost of writing the fetch outbox
//! in each batch transaction from that of the fetches themselves. Printed per run: the drain rate (events/s until every distinct
//! event is stored), the fetches per second (intents whose details are stored, over the
//! span between the first and the last `details_fetched_at`), the API calls made, and
//! whether every intent's stored amounts and order link equal Dojo's truth.

use crate::procs;
use e2e::isolation::Services;
use simulator::fake_api::FakeDojoApi;
use simulator::scenario::Scenario;
use std::time::{Duration, Instant};

const KEY: &str = "sk_bench_enrich";
const ACCOUNT: &str = "acc_bench_enrich";

/// One drain's figures.
struct Drain {
    /// Distinct events stored per second of the drain.
    rate: f64,
    /// CPU seconds (user + system) until every event was stored: of the processor (from
    /// its start), and of this process (the fake Dojo API and the polling, from the
    /// processor's readiness).
    cpu: (f64, f64),
    /// With enrichment on.
    fetched: Option<Fetched>,
}

/// What enrichment did in one drain.
struct Fetched {
    /// Intents whose details were stored.
    intents: i64,
    /// Those over the span from the first to the last `details_fetched_at`.
    per_second: f64,
    /// Payment-intent calls the fake Dojo API answered.
    calls: usize,
    /// Intents whose stored total, refunded amount, reference or order id differ from
    /// Dojo's truth (0 expected).
    wrong: i64,
    /// Repairs applied (`channel = 'reconcile'`): a fetch that saw a status before the
    /// event that explains it was applied (the fake API serves each intent's final state
    /// from the start).
    repairs: i64,
    /// Seconds from the processor's readiness to the last intent's details.
    done: f64,
}

/// A stored record's details: id, total, refunded amount, reference, order id.
type Details = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// `runs` alternating pairs over `intents` payments' lifecycles (10% duplicates).
pub async fn run(intents: usize, runs: usize, api_rate: u32) -> anyhow::Result<()> {
    let scenario = simulator::scenario::lifecycles(ACCOUNT, intents, 0.1, 11);
    let api = FakeDojoApi::start("127.0.0.1:0")?;
    api.serve_truth(&scenario.truth, [(KEY, ACCOUNT)]);
    println!(
        "{} deliveries of {} distinct events for {} payment intents; fake Dojo API at {}, DOJO_API_RATE={api_rate}",
        scenario.deliveries.len(),
        scenario.distinct,
        scenario.truth.len(),
        api.url
    );
    let mut costs = Vec::new();
    let mut scheduling = Vec::new();
    for n in 1..=runs {
        let plain = drain(&scenario, Mode::Off, api_rate).await?;
        println!(
            "run {n}, enrichment off: drain {:.0} events/s; CPU during the drain: processor {:.1} s, bench {:.1} s",
            plain.rate, plain.cpu.0, plain.cpu.1
        );
        let held = drain(&scenario, Mode::Scheduled(&api), api_rate).await?;
        scheduling.push(1.0 - held.rate / plain.rate);
        println!(
            "run {n}, fetches scheduled, none made: drain {:.0} events/s ({:+.0}% against off); CPU during the drain: processor {:.1} s",
            held.rate,
            -100.0 * (1.0 - held.rate / plain.rate),
            held.cpu.0
        );
        let enriched = drain(&scenario, Mode::On(&api), api_rate).await?;
        let f = enriched.fetched.expect("enriched run");
        let cost = 1.0 - enriched.rate / plain.rate;
        costs.push(cost);
        println!(
            "run {n}, enrichment on: drain {:.0} events/s ({:+.0}% against off); CPU during the drain: processor {:.1} s, bench with the fake API {:.1} s; details of {}/{} intents stored, {:.0} fetches/s, {} API calls, {} differing from Dojo's truth, {} repairs; last detail {:.1} s after start",
            enriched.rate,
            -100.0 * cost,
            enriched.cpu.0,
            enriched.cpu.1,
            f.intents,
            scenario.truth.len(),
            f.per_second,
            f.calls,
            f.wrong,
            f.repairs,
            f.done
        );
    }
    let mean = |v: &[f64]| 100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "enrichment's cost to the drain rate: {:.0}%, of which scheduling the fetches (the outbox) {:.0}% (means of {} runs)",
        mean(&costs),
        mean(&scheduling),
        costs.len()
    );
    api.stop().await;
    Ok(())
}

/// How a drain treats payment details.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// `ENRICH_ENABLED=false`.
    Off,
    /// Fetches scheduled (the outbox written) but not due for an hour.
    Scheduled(&'a FakeDojoApi),
    /// Fetched from this API as shipped (`ENRICH_DELAY_MS` default).
    On(&'a FakeDojoApi),
}

async fn drain(scenario: &Scenario, mode: Mode<'_>, api_rate: u32) -> anyhow::Result<Drain> {
    let services = Services::new().await?;
    crate::queue_backlog(&services, &scenario.deliveries).await?;
    let rate = api_rate.to_string();
    let mut env: Vec<(&str, &str)> = Vec::new();
    let api = match mode {
        Mode::Off => {
            env.push(("ENRICH_ENABLED", "false"));
            None
        }
        Mode::Scheduled(api) | Mode::On(api) => {
            env.extend([
                ("DOJO_API_KEY", KEY),
                ("DOJO_API_URL", api.url.as_str()),
                ("DOJO_API_RATE", rate.as_str()),
            ]);
            if matches!(mode, Mode::Scheduled(_)) {
                env.push(("ENRICH_DELAY_MS", "3600000"));
            }
            Some(api)
        }
    };
    let calls_before = api.map(|a| a.intent_calls().len()).unwrap_or(0);
    let processor = procs::processor_with(&services, &env)?;
    let started = processor.ready().await?;
    let pool = sqlx::PgPool::connect(&services.db.url()).await?;
    let bench_cpu = procs::cpu_seconds("self");
    crate::wait_stored(&processor, &pool, scenario.distinct).await?;
    let rate = scenario.distinct as f64 / started.elapsed().as_secs_f64();
    let cpu = (
        processor.cpu_seconds(),
        procs::cpu_seconds("self") - bench_cpu,
    );
    let intents = scenario.truth.len() as i64;
    let Mode::On(api) = mode else {
        if matches!(mode, Mode::Scheduled(_)) {
            let scheduled: i64 = sqlx::query_scalar("SELECT count(*) FROM enrichment_outbox")
                .fetch_one(&pool)
                .await?;
            anyhow::ensure!(
                scheduled == intents,
                "{scheduled} fetches scheduled for {intents} intents"
            );
        }
        processor.stop();
        return Ok(Drain {
            rate,
            cpu,
            fetched: None,
        });
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (done, waiting): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM payment_intents WHERE details_fetched_at IS NOT NULL),
                    (SELECT count(*) FROM enrichment_outbox)",
        )
        .fetch_one(&pool)
        .await?;
        if done >= intents && waiting == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "details of {done}/{intents} intents after 600 s ({waiting} fetches waiting)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = started.elapsed().as_secs_f64();
    let calls = api.intent_calls().len() - calls_before;
    let (fetched, span): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM max(details_fetched_at) - min(details_fetched_at))::float8, 0)
           FROM payment_intents WHERE details_fetched_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await?;
    let stored: Vec<Details> = sqlx::query_as(
        "SELECT payment_intent_id, total_value, refunded_amount, reference, order_id
               FROM payment_intents",
    )
    .fetch_all(&pool)
    .await?;
    let wrong = stored
        .iter()
        .filter(|(pi, total, refunded, reference, order)| {
            scenario.truth.get(pi).is_none_or(|t| {
                let i = &t.intent;
                *total != i.total_amount.as_ref().map(|m| m.value)
                    || *refunded != i.refunded_amount
                    || reference.as_deref() != i.reference.as_deref()
                    || order.as_deref() != i.order_id()
            })
        })
        .count() as i64;
    let repairs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied'",
    )
    .fetch_one(&pool)
    .await?;
    processor.stop();
    Ok(Drain {
        rate,
        cpu,
        fetched: Some(Fetched {
            intents: fetched,
            per_second: fetched as f64 / span.max(1e-3),
            calls,
            wrong,
            repairs,
            done,
        }),
    })
}
