//! `dojo-bench console --events 1000000`: the console's event list over HTTP (sign-in,
//! then `GET /console/events` as a browser asks for it) against a database holding a
//! million events (inserted by SQL: 50 accounts, 7 days, every channel and outcome, a
//! third of the intents with an order reference), for the pages support staff open:
//! the first page, pages deep in the list, each filter, each kind of search.
//! Prints p50/p95/max per page kind over `--repeat` requests (docs/PERFORMANCE.md,
//! "The console's event list").

use crate::procs;
use e2e::isolation::Services;
use std::time::{Duration, Instant};

const USER: &str = "bench";
const TOKEN: &str = "bench-token-0123456789";

async fn seed(pool: &sqlx::PgPool, events: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    // Three events per intent; intents spread over 50 accounts and 7 days.
    sqlx::query(
        "INSERT INTO payment_intents (payment_intent_id, account_id, status, capture_mode,
                                      status_changed_at, status_changed_ns, status_stage,
                                      last_event_id, reference, order_id)
         SELECT 'pi_' || i, 'acc_' || (i % 50), 'Captured', 'Auto',
                now() - (i % 604800) * interval '1 second', 0, 3, 'evt_' || (i * 3 + 2),
                CASE WHEN i % 3 = 0 THEN 'table ' || i END,
                CASE WHEN i % 3 = 0 THEN 'ord-' || i END
         FROM generate_series(0, $1 / 3) AS i",
    )
    .bind(events)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO dojo_events (account_id, event_id, event_type, payment_intent_id,
                                  payment_status, capture_mode, created_at, received_at,
                                  channel, outcome, payload)
         SELECT 'acc_' || ((e / 3) % 50), 'evt_' || e,
                CASE WHEN e % 3 = 0 THEN 'payment_intent.created' ELSE 'payment_intent.status_updated' END,
                'pi_' || (e / 3),
                (ARRAY['Created', 'Authorized', 'Captured'])[e % 3 + 1], 'Auto',
                now() - ((e / 3) % 604800) * interval '1 second' + (e % 3) * interval '1 millisecond',
                now() - ((e / 3) % 604800) * interval '1 second' + (e % 3) * interval '1 millisecond',
                (ARRAY['ws', 'webhook', 'rest'])[e % 3 + 1],
                CASE WHEN e % 97 = 0 THEN 'stale' WHEN e % 89 = 0 THEN 'ignored' ELSE 'applied' END,
                '{}'::jsonb
         FROM generate_series(0, $1 - 1) AS e",
    )
    .bind(events)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE dojo_events").execute(pool).await?;
    sqlx::query("ANALYZE payment_intents").execute(pool).await?;
    println!(
        "seeded {events} events of {} intents in {:.0} s",
        events / 3,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(events: i64, repeat: usize) -> anyhow::Result<()> {
    let services = Services::new().await?;
    let users = format!("{USER}:viewer:{TOKEN}");
    let processor = procs::processor_with(
        &services,
        &[
            ("CONSOLE_USERS", users.as_str()),
            ("ENRICH_ENABLED", "false"),
            ("SWEEP_INTERVAL", "0"),
        ],
    )?;
    processor.ready().await?;
    let pool = sqlx::PgPool::connect(&services.db.url()).await?;
    seed(&pool, events).await?;

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = http
        .post(format!("{}/console/login", processor.url))
        .form(&[("name", USER), ("token", TOKEN)])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_owned();
    // A cursor deep in the list: the 500,000th newest event.
    let (t, account, id): (chrono::DateTime<chrono::Utc>, String, String) = sqlx::query_as(
        "SELECT received_at, account_id, event_id FROM dojo_events
         ORDER BY received_at DESC, account_id DESC, event_id DESC OFFSET $1 LIMIT 1",
    )
    .bind(events / 2)
    .fetch_one(&pool)
    .await?;
    let deep = format!(
        "{}|{account}|{id}",
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(30))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let hour_end = (chrono::Utc::now() - chrono::Duration::hours(29))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let pages: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("first page", vec![]),
        (
            "deep page (cursor at the middle)",
            vec![("after", deep.clone())],
        ),
        ("channel = ws", vec![("channel", "ws".into())]),
        ("outcome = stale (1%)", vec![("outcome", "stale".into())]),
        (
            "type + status",
            vec![
                ("type", "payment_intent.created".into()),
                ("status", "Created".into()),
            ],
        ),
        (
            "one hour, a day ago",
            vec![("from", hour_ago), ("to", hour_end)],
        ),
        (
            "search: event id",
            vec![("q", format!("evt_{}", events / 2 + 1))],
        ),
        (
            "search: payment intent id",
            vec![("q", format!("pi_{}", events / 7))],
        ),
        (
            "search: order reference",
            vec![("q", format!("ord-{}", (events / 9) * 3))],
        ),
        ("search: nothing matches", vec![("q", "evt_nope".into())]),
    ];
    println!(
        "console event list, {events} events, {repeat} requests each (HTTP round trip, rendered page):"
    );
    println!("| page | rows | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, query) in pages {
        let url = format!(
            "{}/console/events?{}",
            processor.url,
            serde_urlencoded::to_string(&query)?
        );
        let mut took = Vec::with_capacity(repeat);
        let mut rows = 0;
        for _ in 0..repeat {
            let started = Instant::now();
            let body = http
                .get(&url)
                .header("cookie", &cookie)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            took.push(started.elapsed());
            rows = body.matches("<td class=\"id\">evt_").count();
        }
        took.sort();
        println!(
            "| {name} | {rows} | {:.1} | {:.1} | {:.1} |",
            quantile(&took, 0.5),
            quantile(&took, 0.95),
            quantile(&took, 1.0)
        );
    }
    processor.stop();
    Ok(())
}
