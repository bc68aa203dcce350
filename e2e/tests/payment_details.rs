//! Payment details from Dojo's API (issue 11), against the simulator's faithful Dojo
//! API: every intent's amounts, refunded amount and order link equal Dojo's truth, a
//! burst of events gives one or two fetches, and none of it holds an acknowledgement.

mod support;

use e2e::isolation::Services;
use e2e::wait_until;
use serde_json::Value;
use simulator::fake_api::FakeDojoApi;
use simulator::run::{Options, Targets, Via};
use simulator::scenario::Scenario;
use std::time::Duration;
use support::*;

pub const KEY: &str = "sk_sandbox_details";
pub const ACCOUNT: &str = "acc_details";

/// What the read API must show for an intent, from the simulator's truth.
fn want(scenario: &Scenario, pi: &str) -> Value {
    let t = &scenario.truth[pi].intent;
    let money = |m: &Option<common::dojo_api::Money>| {
        m.as_ref()
            .map(|m| serde_json::json!({"value": m.value, "currencyCode": m.currency_code}))
            .unwrap_or(Value::Null)
    };
    serde_json::json!({
        "status": t.status, "amount": money(&t.amount), "tipsAmount": money(&t.tips_amount),
        "totalAmount": money(&t.total_amount), "refundedAmount": t.refunded_amount,
        "reference": t.reference, "orderId": t.order_id(), "waiterId": t.waiter_id(),
    })
}

/// The same fields as the read API serves them.
async fn got(processor_url: &str, pi: &str) -> Value {
    let body: Value = reqwest::Client::new()
        .get(format!("{processor_url}/v1/payment-intents/{pi}"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = [
        "status",
        "amount",
        "tipsAmount",
        "totalAmount",
        "refundedAmount",
        "reference",
        "orderId",
        "waiterId",
    ];
    Value::Object(
        keys.iter()
            .map(|k| (k.to_string(), body[k].clone()))
            .collect(),
    )
}

/// Waits until no fetch is pending and every intent of `scenario` has its details.
pub async fn all_details(pool: &sqlx::PgPool, scenario: &Scenario, patience: Duration) {
    let n = scenario.expected.len() as i64;
    wait_until("every intent's details stored", patience, || async {
        let pending = count(pool, "SELECT count(*) FROM enrichment_outbox").await;
        let done = count(
            pool,
            "SELECT count(*) FROM payment_intents WHERE dojo_updated_at IS NOT NULL",
        )
        .await;
        (pending == 0 && done == n).then_some(())
    })
    .await;
}

pub fn processor_env(api: &FakeDojoApi) -> Vec<(&'static str, String)> {
    vec![
        ("DOJO_API_KEY", KEY.to_owned()),
        ("DOJO_API_URL", api.url.clone()),
        ("DOJO_API_RATE", "200".to_owned()),
        ("ENRICH_DELAY_MS", "300".to_owned()),
        ("ENRICH_POLL_MS", "50".to_owned()),
    ]
}

pub async fn send(scenario: &Scenario, ingress: &Running) -> simulator::run::Report {
    let targets = Targets {
        http: Some(dojo(ingress)),
        ..Targets::default()
    };
    let options = Options {
        channels: vec![Via::Webhook, Via::Rest],
        rate: None,
        concurrency: 16,
        doubling: 0.1,
        seed: 11,
        timeout: Duration::from_secs(10),
    };
    let report = simulator::run::run(scenario, &targets, &options).await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_refunds_and_order_links_equal_dojos_truth() {
    let services = Services::new().await.unwrap();
    let scenario = simulator::scenario::lifecycles(ACCOUNT, 200, 0.3, 11).with_late(0.05, 11);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [(KEY, ACCOUNT)]);
    let ingress = ingress(&services, &[]);
    let env = processor_env(&api);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let processor = processor(&services, &env).await;
    ready(&ingress.url).await;

    let report = send(&scenario, &ingress).await;
    let pool = services.db.pool().await.unwrap();
    all_details(&pool, &scenario, Duration::from_secs(60)).await;

    let mut matched = 0;
    for pi in scenario.expected.keys() {
        assert_eq!(
            got(&processor.running.url, pi).await,
            want(&scenario, pi),
            "{pi}"
        );
        matched += 1;
    }
    let fetches = api.intent_calls().len();
    let refunds = scenario
        .truth
        .values()
        .filter(|t| t.intent.refunded_amount.unwrap_or(0) > 0)
        .count();
    let partial = scenario
        .truth
        .values()
        .filter(|t| {
            let r = t.intent.refunded_amount.unwrap_or(0);
            r > 0 && r < t.intent.total_amount.as_ref().unwrap().value
        })
        .count();
    println!(
        "{} intents ({refunds} refunded, {partial} of them partly), {} distinct events in {} deliveries: \
         {matched} with amounts, refunds, reference and order id equal to Dojo's; {fetches} fetches",
        scenario.expected.len(),
        scenario.distinct,
        report.sent
    );
    // Coalesced: about one fetch per intent, never one per event.
    assert!(fetches <= 2 * scenario.expected.len(), "{fetches} fetches");
    assert!(fetches < scenario.distinct, "{fetches} fetches");
    processor.running.stop().await;
    ingress.stop().await;
    api.stop().await;
}

/// Intents of `scenario` with at least one delivered event whose final event was lost:
/// what a details fetch alone must repair.
fn behind_but_known(scenario: &Scenario) -> Vec<String> {
    let delivered: std::collections::HashSet<&str> = scenario
        .deliveries
        .iter()
        .map(|e| e.payment_intent_id.as_str())
        .collect();
    let mut last: std::collections::HashMap<&str, &simulator::Event> = Default::default();
    for e in scenario.deliveries.iter().chain(&scenario.lost) {
        let slot = last.entry(e.payment_intent_id.as_str()).or_insert(e);
        if e.created_at > slot.created_at {
            *slot = e;
        }
    }
    let lost: std::collections::HashSet<&str> =
        scenario.lost.iter().map(|e| e.id.as_str()).collect();
    last.into_iter()
        .filter(|(pi, e)| delivered.contains(pi) && lost.contains(e.id.as_str()))
        .map(|(pi, _)| pi.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_no_event_explains_is_repaired_once_by_the_details_fetch() {
    let services = Services::new().await.unwrap();
    let scenario = simulator::scenario::lifecycles(ACCOUNT, 150, 0.2, 12).lose(0.15, 12);
    let behind = behind_but_known(&scenario);
    assert!(!behind.is_empty());
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [(KEY, ACCOUNT)]);
    let ingress = ingress(&services, &[]);
    let env = processor_env(&api);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let processor = processor(&services, &env).await;
    ready(&ingress.url).await;
    let report = send(&scenario, &ingress).await;
    processor.settled(report.sent).await;
    let pool = services.db.pool().await.unwrap();
    let known = count(&pool, "SELECT count(*) FROM payment_intents").await;
    wait_until("no fetch pending", Duration::from_secs(60), || async {
        let n = count(&pool, "SELECT count(*) FROM enrichment_outbox").await;
        let fetched = count(
            &pool,
            "SELECT count(*) FROM payment_intents WHERE dojo_updated_at IS NOT NULL",
        )
        .await;
        (n == 0 && fetched == known).then_some(())
    })
    .await;
    for pi in &behind {
        let truth = &scenario.expected[pi];
        assert_eq!(&intent(&pool, pi).await.unwrap().status, truth, "{pi}");
    }
    let repairs = count(
        &pool,
        "SELECT count(*) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied'",
    )
    .await;
    // Every intent fetched again: nothing more to repair, nothing recorded twice.
    sqlx::query("INSERT INTO enrichment_outbox (payment_intent_id, account_id, due_at) SELECT payment_intent_id, account_id, now() FROM payment_intents")
        .execute(&pool)
        .await
        .unwrap();
    wait_until(
        "second round of fetches",
        Duration::from_secs(60),
        || async {
            (count(&pool, "SELECT count(*) FROM enrichment_outbox").await == 0).then_some(())
        },
    )
    .await;
    let again = count(
        &pool,
        "SELECT count(*) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied'",
    )
    .await;
    // A fetch can also beat a delivery still on its way (shuffled, late): that repair is
    // right too, and the delivery then finds the record already there (stale).
    let preempted = count(
        &pool,
        "SELECT count(*) FROM dojo_events r JOIN dojo_events d USING (payment_intent_id, payment_status)
         WHERE r.channel = 'reconcile' AND r.outcome = 'applied' AND d.channel <> 'reconcile' AND d.outcome = 'stale'",
    )
    .await;
    let per_intent = count(
        &pool,
        "SELECT count(DISTINCT payment_intent_id) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied'",
    )
    .await;
    println!(
        "150 intents, {} distinct events lost: {} intents known with a lost last event; {repairs} repaired by the fetch \
         ({preempted} of them before a late delivery, which was then stale); after fetching all {known} again: {again} repairs in all",
        scenario.lost.len(),
        behind.len()
    );
    assert_eq!(repairs, behind.len() as i64 + preempted);
    assert_eq!(per_intent, repairs, "one repair per intent");
    assert_eq!(again, repairs);
    processor.running.stop().await;
    ingress.stop().await;
    api.stop().await;
}

/// A locations file with one location of `ACCOUNT` and `KEY`; kept while the test runs.
pub fn locations_file() -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::create();
    let path = dir.0.join("locations.toml");
    std::fs::write(
        &path,
        format!(
            "[[location]]\nid = \"main\"\naccount_id = \"{ACCOUNT}\"\napi_keys = [\"{KEY}\"]\n"
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

pub mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn create() -> Self {
            let p = std::env::temp_dir().join(format!("dojo-details-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_never_delivered_are_right_after_one_sweep_and_a_second_repairs_nothing() {
    let services = Services::new().await.unwrap();
    let scenario = simulator::scenario::lifecycles(ACCOUNT, 300, 0.2, 13).lose(0.05, 13);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [(KEY, ACCOUNT)]);
    let (_dir, file) = locations_file();
    let ingress = ingress(&services, &[]);
    let mut env = processor_env(&api);
    env.retain(|(k, _)| *k != "DOJO_API_KEY");
    env.push(("DOJO_LOCATIONS_FILE", file));
    env.push(("SWEEP_INTERVAL", "0".into()));
    // The sweep alone, here: no details fetch repairs anything first.
    env.push(("ENRICH_ENABLED", "false".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let processor = processor(&services, &env).await;
    ready(&ingress.url).await;
    let report = send(&scenario, &ingress).await;
    processor.settled(report.sent).await;
    let pool = services.db.pool().await.unwrap();
    let known = count(&pool, "SELECT count(*) FROM payment_intents").await;
    let mut wrong = 0;
    for (pi, status) in &scenario.expected {
        wrong += usize::from(intent(&pool, pi).await.is_none_or(|i| &i.status != status));
    }

    let worker = &processor.worker;
    let location = worker.settings.locations.get("main").unwrap().clone();
    let (since, until) = (
        chrono::Utc::now() - chrono::Duration::hours(2),
        chrono::Utc::now(),
    );
    // Another replica holding the location's lock: this sweep skips it.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('dojo-sweep:main', 0))")
        .execute(&mut *other)
        .await
        .unwrap();
    let skipped = processor::sweep::sweep_location(worker, &location, since, until)
        .await
        .unwrap();
    assert!(skipped.skipped);
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *other)
        .await
        .unwrap();

    let first = processor::sweep::sweep_location(worker, &location, since, until)
        .await
        .unwrap();
    for (pi, status) in &scenario.expected {
        let record = intent(&pool, pi)
            .await
            .unwrap_or_else(|| panic!("{pi} recorded"));
        assert_eq!(&record.status, status, "{pi}");
        assert_eq!(
            got(&processor.running.url, pi).await,
            want(&scenario, pi),
            "{pi}"
        );
    }
    let repairs = count(
        &pool,
        "SELECT count(*) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied'",
    )
    .await;
    let intents_repaired = count(
        &pool,
        "SELECT count(DISTINCT payment_intent_id) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied'",
    )
    .await;
    let second = processor::sweep::sweep_location(worker, &location, since, until)
        .await
        .unwrap();
    let after = count(
        &pool,
        "SELECT count(*) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied'",
    )
    .await;
    println!(
        "300 intents, {} of {} distinct events never delivered; before the sweep {known} intents known, \
         {wrong} not in their final status; first sweep: {} seen, {} repaired; \
         all 300 right with their amounts; {repairs} repairs for {intents_repaired} intents; second sweep: {} seen, {} repaired",
        scenario.lost.len(),
        scenario.distinct + scenario.lost.len(),
        first.seen,
        first.repaired,
        second.seen,
        second.repaired
    );
    assert_eq!(first.seen, 300);
    assert_eq!(repairs, intents_repaired, "each repair recorded once");
    assert_eq!((repairs, first.repaired), (wrong as i64, wrong));
    assert_eq!((second.repaired, after), (0, repairs));
    processor.running.stop().await;
    ingress.stop().await;
    api.stop().await;
}

/// Most calls within any one second, and the closest two, of these instants.
fn busiest_second(mut times: Vec<std::time::Instant>) -> (usize, Duration) {
    times.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    // The shortest span of five calls in a row: a single call delayed on its way
    // (scheduling on two busy cores) shortens one gap, never a span of four.
    let closest = times
        .windows(5)
        .map(|w| w[4] - w[0])
        .min()
        .unwrap_or(Duration::MAX);
    (most, closest)
}

/// Dojo answers 429 for 30 s, then 500 for 30 s, while deliveries flow for the whole
/// minute (every failed fetch is rescheduled in its row, with backoff capped at 1 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dojo_answering_429_then_500_holds_no_ack_loses_no_fetch_and_keeps_the_rate() {
    use simulator::fake_api::Fault;
    const RATE: usize = 10;
    /// How long each fault lasts.
    const PHASE: Duration = Duration::from_secs(30);
    let services = Services::new().await.unwrap();
    let scenario = simulator::scenario::lifecycles(ACCOUNT, 120, 0.2, 14);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [(KEY, ACCOUNT)]);
    api.set_fault(Fault::TooManyRequests {
        retry_after_secs: 1,
    });
    let ingress = ingress(&services, &[]);
    let mut env = processor_env(&api);
    env.retain(|(k, _)| *k != "DOJO_API_RATE");
    env.extend([
        ("DOJO_API_RATE", RATE.to_string()),
        ("DOJO_API_ATTEMPTS", "2".into()),
        ("DOJO_API_MAX_WAIT_MS", "300".into()),
        ("ENRICH_BACKOFF_MS", "200".into()),
        ("ENRICH_BACKOFF_MAX_MS", "1000".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let processor = processor(&services, &env).await;
    ready(&ingress.url).await;

    let targets = Targets {
        http: Some(dojo(&ingress)),
        ..Targets::default()
    };
    // Every acknowledgement within 2 s (a slower one counts as failed), at a rate that
    // spreads the deliveries over both phases.
    let options = Options {
        channels: vec![Via::Webhook, Via::Rest],
        rate: Some(6.5),
        concurrency: 16,
        doubling: 0.0,
        seed: 14,
        timeout: Duration::from_secs(2),
    };
    let phases = async {
        // The length of a phase, not a wait for anything.
        tokio::time::sleep(PHASE).await;
        api.set_fault(Fault::ServerError);
        tokio::time::sleep(PHASE).await;
        api.set_fault(Fault::None);
        std::time::Instant::now()
    };
    let (report, recovered) =
        tokio::join!(simulator::run::run(&scenario, &targets, &options), phases);
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    processor.settled(report.sent).await;
    let pool = services.db.pool().await.unwrap();
    all_details(&pool, &scenario, Duration::from_secs(60)).await;
    let after_recovery = recovered.elapsed();
    for pi in scenario.expected.keys() {
        assert_eq!(
            got(&processor.running.url, pi).await,
            want(&scenario, pi),
            "{pi}"
        );
    }
    let calls = api.intent_calls();
    let statuses = processor.worker.metrics.api.calls.clone();
    let by = |s: &str| statuses.with_label_values(&["default", "get", s]).get();
    let (most, closest) = busiest_second(calls.iter().map(|(t, _)| *t).collect());
    println!(
        "{} deliveries over {:.1}s, all acknowledged within 2 s; Dojo: 429 for {PHASE:?}, 500 for {PHASE:?}; {} calls \
         ({} answered 429, {} answered 500, {} answered 200); at most {most} calls in one second, shortest span of five {:?} \
         (DOJO_API_RATE={RATE}); all {} intents' details stored {:.1}s after recovery",
        report.sent,
        report.seconds,
        calls.len(),
        by("429"),
        by("500"),
        by("200"),
        closest,
        scenario.expected.len(),
        after_recovery.as_secs_f64()
    );
    assert!(by("429") > 0 && by("500") > 0);
    assert!(most <= RATE + 1, "{most} calls in one second");
    // Spaced 1/RATE when sent (GCRA without burst), so five calls span 4/RATE; seen at
    // the server with some jitter.
    assert!(
        closest >= Duration::from_millis(4 * 1000 / RATE as u64 - 150),
        "{closest:?}"
    );
    assert!(after_recovery < Duration::from_secs(60));
    processor.running.stop().await;
    ingress.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_sweep_repairs_lost_events_alone() {
    let services = Services::new().await.unwrap();
    let scenario = simulator::scenario::lifecycles(ACCOUNT, 80, 0.0, 15).lose(0.1, 15);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [(KEY, ACCOUNT)]);
    let (_dir, file) = locations_file();
    let ingress = ingress(&services, &[]);
    let mut env = processor_env(&api);
    env.retain(|(k, _)| *k != "DOJO_API_KEY");
    env.extend([
        ("DOJO_LOCATIONS_FILE", file),
        ("SWEEP_INTERVAL", "2s".into()),
        ("ENRICH_ENABLED", "false".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let processor = processor(&services, &env).await;
    ready(&ingress.url).await;
    let started = std::time::Instant::now();
    send(&scenario, &ingress).await;
    let pool = services.db.pool().await.unwrap();
    wait_until("every intent right", Duration::from_secs(30), || async {
        for (pi, status) in &scenario.expected {
            if intent(&pool, pi).await.is_none_or(|i| &i.status != status) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let took = started.elapsed();
    let metrics = &processor.worker.metrics;
    let swept = wait_until("a completed sweep", Duration::from_secs(30), || async {
        let at = metrics
            .sweep_last_success
            .with_label_values(&["main"])
            .get();
        (at > 0).then_some(at)
    })
    .await;
    let repairs: u64 = ["status_behind", "unknown_intent"]
        .iter()
        .map(|r| metrics.repairs.with_label_values(&["sweep", r]).get())
        .sum();
    println!(
        "80 intents, {} events never delivered: all right {:.1}s after the first send, by the periodic sweep (SWEEP_INTERVAL=2s): {repairs} repairs",
        scenario.lost.len(),
        took.as_secs_f64()
    );
    assert!(swept > 0 && repairs > 0);
    processor.running.stop().await;
    ingress.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_is_dropped_after_its_404s_not_after_its_other_failures() {
    use simulator::fake_api::Fault;
    const NOT_FOUND_LIMIT: i32 = 3;
    let services = Services::new().await.unwrap();
    // Dojo does not know the intent: its fetch is a 404 once Dojo answers.
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    let other = simulator::scenario::lifecycles(ACCOUNT, 1, 0.0, 1);
    api.serve_truth(&other.truth, [(KEY, ACCOUNT)]);
    api.set_fault(Fault::ServerError);
    let ingress = ingress(&services, &[]);
    let mut env = processor_env(&api);
    env.extend([
        ("DOJO_API_ATTEMPTS", "1".into()),
        ("ENRICH_BACKOFF_MS", "50".into()),
        ("ENRICH_BACKOFF_MAX_MS", "100".into()),
        ("ENRICH_NOT_FOUND_ATTEMPTS", NOT_FOUND_LIMIT.to_string()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let processor = processor(&services, &env).await;
    ready(&ingress.url).await;

    let ghost = simulator::Event::new(
        "evt_ghost",
        "payment_intent.created",
        "pi_ghost",
        "Created",
        chrono::Utc::now(),
    );
    let answer = dojo(&ingress).webhook(&ghost.body()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let pool = services.db.pool().await.unwrap();
    // First an outage: more failed fetches than the 404 limit.
    wait_until("five failed fetches", PATIENCE, || async {
        let attempts: Option<i32> = sqlx::query_scalar(
            "SELECT attempts FROM enrichment_outbox WHERE payment_intent_id = 'pi_ghost'",
        )
        .fetch_optional(&pool)
        .await
        .ok()?;
        (attempts? >= 5).then_some(())
    })
    .await;
    let calls = processor.worker.metrics.api.calls.clone();
    let by = |s: &str| calls.with_label_values(&["default", "get", s]).get();
    assert_eq!(by("404"), 0);
    // Dojo answers again, 404: the fetch is dropped after exactly the limit of 404s.
    api.set_fault(Fault::None);
    wait_until("the fetch dropped", PATIENCE, || async {
        let left = count(
            &pool,
            "SELECT count(*) FROM enrichment_outbox WHERE payment_intent_id = 'pi_ghost'",
        )
        .await;
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(by("404"), NOT_FOUND_LIMIT as u64);
    assert!(by("500") >= 5);
    processor.running.stop().await;
    ingress.stop().await;
    api.stop().await;
}
