//! The processor binary, SIGKILLed while details fetches are pending (Dojo answering
//! 500), completes every one of them after its restart; over the logs of the whole run
//! (debug level, both processes), no card number, auth code or API key appears, and a
//! refused key raised its alarm without a retry storm.

mod support;

use e2e::isolation::Services;
use e2e::wait_until;
use simulator::fake_api::{FakeDojoApi, Fault};
use simulator::scenario::lifecycles;
use std::time::Duration;
use support::*;

const PATIENCE: Duration = Duration::from_secs(90);
const KEY: &str = "sk_sandbox_crash_key_0001";
const REVOKED: &str = "sk_sandbox_revoked_key_0002";

fn start_logged(
    services: &Services,
    api: &FakeDojoApi,
    file: &str,
    log: &std::path::Path,
) -> Spawned {
    let out = std::fs::File::create(log).unwrap();
    command(services)
        .env("RUST_LOG", "debug")
        .env("DOJO_LOCATIONS_FILE", file)
        .env("DOJO_API_URL", &api.url)
        .env("DOJO_API_ATTEMPTS", "1")
        .env("ENRICH_DELAY_MS", "100")
        // Rows the killed process had taken come back after their lease (default 60 s).
        .env("ENRICH_LEASE_MS", "3000")
        .env("ENRICH_BACKOFF_MS", "200")
        .env("ENRICH_BACKOFF_MAX_MS", "1000")
        .env("SWEEP_INTERVAL", "0")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("processor starts")
        .into()
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_fetches_pending_loses_none_and_no_log_line_holds_card_data_or_keys() {
    let services = Services::new().await.unwrap();
    let dir = std::env::temp_dir().join(format!("dojo-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("locations.toml");
    std::fs::write(
        &file,
        format!(
            "[[location]]\nid = \"main\"\naccount_id = \"acc_main\"\napi_keys = [\"{KEY}\"]\n\
             [[location]]\nid = \"revoked\"\naccount_id = \"acc_rev\"\napi_keys = [\"{REVOKED}\"]\n"
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let main = lifecycles("acc_main", 150, 0.2, 61);
    let revoked = lifecycles("acc_rev", 5, 0.0, 62);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&main.truth, [(KEY, "acc_main")]);
    api.serve_truth(&revoked.truth, [(REVOKED, "acc_rev")]);
    api.refuse_key(REVOKED);
    api.set_fault(Fault::ServerError);
    let messages: Vec<(String, Vec<u8>)> = main
        .deliveries
        .iter()
        .chain(&revoked.deliveries)
        .map(|e| (e.id.clone(), envelope(e.body())))
        .collect();
    publish(&services, &messages).await;

    let logs = [dir.join("first.log"), dir.join("second.log")];
    let mut processor = start_logged(&services, &api, &file, &logs[0]);
    let pool = wait_until("the database", PATIENCE, || async {
        services.db.pool().await.ok()
    })
    .await;
    let distinct = (main.distinct + revoked.distinct) as i64;
    let intents = (main.expected.len() + revoked.expected.len()) as i64;
    wait_until(
        "every event applied and every fetch pending",
        PATIENCE,
        || async {
            let pending = count(&pool, "SELECT count(*) FROM enrichment_outbox").await;
            let tried = count(
                &pool,
                "SELECT count(*) FROM enrichment_outbox WHERE attempts > 0",
            )
            .await;
            (applied(&pool).await == distinct && pending == intents && tried > 10).then_some(())
        },
    )
    .await;
    let pending_at_kill = count(&pool, "SELECT count(*) FROM enrichment_outbox").await;
    let failed_attempts = count(
        &pool,
        "SELECT coalesce(sum(attempts), 0) FROM enrichment_outbox",
    )
    .await;
    processor.kill().unwrap(); // SIGKILL
    processor.wait().unwrap();

    api.set_fault(Fault::None);
    let restarted = std::time::Instant::now();
    processor = start_logged(&services, &api, &file, &logs[1]);
    wait_until("every fetch of the main location done", PATIENCE, || async {
        let main_pending = count(&pool, "SELECT count(*) FROM enrichment_outbox WHERE account_id = 'acc_main'").await;
        let stored = count(&pool, "SELECT count(*) FROM payment_intents WHERE account_id = 'acc_main' AND dojo_updated_at IS NOT NULL").await;
        (main_pending == 0 && stored == main.expected.len() as i64).then_some(())
    })
    .await;
    let took = restarted.elapsed();
    assert!(terminate(processor).success(), "SIGTERM exits 0");

    for (pi, t) in &main.truth {
        let (total, refunded): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT total_value, refunded_amount FROM payment_intents WHERE payment_intent_id = $1",
        )
        .bind(pi)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            total,
            t.intent.total_amount.as_ref().map(|m| m.value),
            "{pi}"
        );
        assert_eq!(refunded, t.intent.refunded_amount, "{pi}");
    }
    // The refused key's fetches wait in the outbox (for a new key), not lost, not stormed.
    let still = count(
        &pool,
        "SELECT count(*) FROM enrichment_outbox WHERE account_id = 'acc_rev'",
    )
    .await;
    let revoked_calls = api
        .intent_calls()
        .iter()
        .filter(|(_, k)| k == REVOKED)
        .count();

    let text: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .collect();
    let mut secrets: Vec<String> = vec![KEY.into(), REVOKED.into()];
    for t in main.truth.values().chain(revoked.truth.values()) {
        if let Some(d) = &t.intent.payment_details {
            secrets.extend(d.auth_code.clone());
            secrets.extend(d.card.as_ref().and_then(|c| c.card_number.clone()));
        }
    }
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .collect();
    let lines = text.lines().count();
    println!(
        "{distinct} events, {intents} intents; at the SIGKILL {pending_at_kill} fetches pending after {failed_attempts} \
         failed attempts (Dojo answering 500); after the restart all {} of the main location stored in {:.1}s; \
         {still} fetches of the revoked key kept, {revoked_calls} calls with it in all; \
         {lines} log lines (debug) checked for {} secrets: {} found",
        main.expected.len(),
        took.as_secs_f64(),
        secrets.len(),
        leaked.len()
    );
    assert!(leaked.is_empty(), "leaked into the logs: {leaked:?}");
    assert!(
        text.contains("Dojo refuses this location's API key"),
        "the alarm is logged"
    );
    assert_eq!(still, revoked.expected.len() as i64);
    assert!(
        revoked_calls <= 4,
        "{revoked_calls} calls with a refused key"
    );
    let _ = std::fs::remove_dir_all(&dir);
    api.stop().await;
}
