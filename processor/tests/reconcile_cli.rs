//! `processor reconcile`: a sweep from the command line records what Dojo knows and the
//! database does not (intents never delivered at all), once: a second run repairs nothing.
//! And records left unfinished past Dojo's own limits (a Manual intent authorised over 7
//! days ago, an intent created over 30 days ago), older than any window, are fetched and
//! put right; younger ones are left alone.

mod support;

use chrono::{Duration, Utc};
use e2e::isolation::Services;
use e2e::wait_until;
use rand::SeedableRng;
use simulator::event::Event;
use simulator::fake_api::FakeDojoApi;
use simulator::scenario::{lifecycles, Truth};
use std::collections::HashMap;
use support::*;

/// A locations file with one location `cli` (account `acc_cli`, key `sk_cli`).
fn locations_file(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("dojo-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("locations.toml");
    std::fs::write(
        &file,
        "[[location]]\nid = \"cli\"\naccount_id = \"acc_cli\"\napi_keys = [\"sk_cli\"]\n",
    )
    .unwrap();
    (dir, file)
}

/// The processor command with the locations file and the fake Dojo API at `api_url`.
fn located(services: &Services, file: &std::path::Path, api_url: &str) -> std::process::Command {
    let mut cmd = command(services);
    cmd.env("DOJO_LOCATIONS_FILE", file)
        .env("DOJO_API_URL", api_url);
    cmd
}

/// `processor <args>` with [`located`]'s environment, run to completion.
async fn reconcile(
    services: &Services,
    file: &std::path::Path,
    api_url: &str,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = located(services, file, api_url);
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn status(pool: &sqlx::PgPool, pi: &str) -> String {
    sqlx::query_scalar("SELECT status FROM payment_intents WHERE payment_intent_id = $1")
        .bind(pi)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_records_what_was_never_delivered_once() {
    let services = Services::new().await.unwrap();
    let scenario = lifecycles("acc_cli", 30, 0.0, 71);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [("sk_cli", "acc_cli")]);
    let (dir, file) = locations_file("cli");
    let run = |args| reconcile(&services, &file, &api.url, args);
    let first = run(&["reconcile", "--all", "--since", "2h"]).await;
    let second = run(&["reconcile", "--location", "cli", "--since", "2h"]).await;
    let unknown = run(&["reconcile", "--location", "nope", "--since", "2h"]).await;
    let (first, second) = (
        String::from_utf8_lossy(&first.stdout).into_owned(),
        String::from_utf8_lossy(&second.stdout).into_owned(),
    );
    print!("{first}{second}");
    assert!(
        first.contains("cli: 30 intents seen, 30 repaired, 30 details stored"),
        "{first}"
    );
    assert!(
        second.contains("cli: 30 intents seen, 0 repaired, 0 details stored"),
        "{second}"
    );
    assert_eq!(unknown.status.code(), Some(2));
    let pool = services.db.pool().await.unwrap();
    for (pi, want) in &scenario.expected {
        assert_eq!(&status(&pool, pi).await, want, "{pi}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    api.stop().await;
}

/// An intent of the overdue test: its id, whether Manual, its events as (status, days
/// ago), and Dojo's status now.
type Case = (
    &'static str,
    bool,
    &'static [(&'static str, i64)],
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_unfinished_past_dojos_limits_are_fetched_and_put_right() {
    let services = Services::new().await.unwrap();
    let now = Utc::now();
    let days = |d: i64| now - Duration::days(d);
    // (intent, manual, events as (status, days ago), Dojo's status now). Dojo reverses a
    // Manual intent left uncaptured 7 days and voids one left unauthorised 30 days.
    let cases: [Case; 4] = [
        (
            "pi_over_manual",
            true,
            &[("Created", 9), ("Authorized", 8)],
            "Reversed",
        ),
        ("pi_over_created", false, &[("Created", 31)], "Canceled"),
        // Not past the limits yet: not fetched, even though Dojo would say otherwise.
        (
            "pi_young_manual",
            true,
            &[("Created", 3), ("Authorized", 2)],
            "Reversed",
        ),
        ("pi_young_created", false, &[("Created", 20)], "Canceled"),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut truth = HashMap::new();
    let mut messages = Vec::new();
    for (n, (pi, manual, events, now_status)) in cases.iter().enumerate() {
        for (i, (event_status, ago)) in events.iter().enumerate() {
            let kind = if i == 0 {
                "payment_intent.created"
            } else {
                "payment_intent.status_updated"
            };
            let mut event =
                Event::new(&format!("evt_{pi}_{i}"), kind, pi, event_status, days(*ago));
            event.account_id = "acc_cli".into();
            event.capture_mode = if *manual { "Manual" } else { "Auto" }.into();
            messages.push((event.id.clone(), envelope(event.body())));
        }
        let mut steps: Vec<&str> = events.iter().map(|(s, _)| *s).collect();
        steps.push(now_status);
        let created = days(events[0].1);
        let intent = simulator::truth::intent(&mut rng, pi, n, &steps, *manual, created, days(1));
        let account_id = "acc_cli".to_string();
        truth.insert(pi.to_string(), Truth { account_id, intent });
    }
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&truth, [("sk_cli", "acc_cli")]);
    let (dir, file) = locations_file("overdue");

    // The events applied, with nothing else asking Dojo (no fetches, no periodic sweep).
    publish(&services, &messages).await;
    let processor = located(&services, &file, &api.url)
        .env("ENRICH_ENABLED", "false")
        .env("SWEEP_INTERVAL", "0")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pool = wait_until(
        "the events applied",
        std::time::Duration::from_secs(60),
        || async {
            let pool = services.db.pool().await.ok()?;
            (applied(&pool).await == messages.len() as i64).then_some(pool)
        },
    )
    .await;
    assert!(terminate(processor).success());
    assert_eq!(status(&pool, "pi_over_manual").await, "Authorized");
    assert_eq!(status(&pool, "pi_over_created").await, "Created");

    let run = || {
        reconcile(
            &services,
            &file,
            &api.url,
            &["reconcile", "--all", "--since", "2h"],
        )
    };
    let first = String::from_utf8_lossy(&run().await.stdout).into_owned();
    let second = String::from_utf8_lossy(&run().await.stdout).into_owned();
    print!("{first}{second}");
    // Outside the 2 h window: only the two overdue ones are seen, and both repaired.
    assert!(
        first.contains("cli: 2 intents seen, 2 repaired, 2 details stored"),
        "{first}"
    );
    // Final now: nothing is overdue any more.
    assert!(
        second.contains("cli: 0 intents seen, 0 repaired, 0 details stored"),
        "{second}"
    );
    assert_eq!(status(&pool, "pi_over_manual").await, "Reversed");
    assert_eq!(status(&pool, "pi_over_created").await, "Canceled");
    assert_eq!(status(&pool, "pi_young_manual").await, "Authorized");
    assert_eq!(status(&pool, "pi_young_created").await, "Created");
    let repairs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dojo_events WHERE channel = 'reconcile'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(repairs, 2, "one synthetic event per repair");
    let _ = std::fs::remove_dir_all(&dir);
    api.stop().await;
}
