//! The payment feed (docs/FEED.md): the outbox written with every change of a record,
//! the cursor API and the Server-Sent Events stream, per-location tokens.
//! Changes are made through the processor's own apply path (processor::apply), on the
//! test's database; the last test drives the whole chain from the simulator.

mod support;

use chrono::Utc;
use e2e::isolation::Services;
use e2e::wait_until;
use processor::apply::{apply, Incoming};
use serde_json::Value;
use simulator::event::Event;
use simulator::till::{follow, subscribe_once, Received};
use std::time::{Duration, Instant};
use support::*;
use tokio::sync::{mpsc, watch};

const TOKEN_A: &str = "till-token-soho";
const TOKEN_B: &str = "till-token-leeds";

/// Two locations, `soho` (acc_soho) and `leeds` (acc_leeds), each with a till token.
struct Locations(std::path::PathBuf);

impl Locations {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("feed-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            format!(
                "[[location]]\nid = \"soho\"\naccount_id = \"acc_soho\"\nwebhook_secrets = [\"{SECRET}\"]\nfeed_tokens = [\"{TOKEN_A}\"]\n\n\
                 [[location]]\nid = \"leeds\"\naccount_id = \"acc_leeds\"\nwebhook_secrets = [\"whsec_leeds_0001\"]\nfeed_tokens = [\"{TOKEN_B}\"]\n"
            ),
        )
        .unwrap();
        Self(path)
    }
}

impl Drop for Locations {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn feed_processor(
    services: &Services,
    locations: &Locations,
    poll_ms: &str,
) -> RunningProcessor {
    let path = locations.0.to_string_lossy().into_owned();
    feed_processor_with(
        services,
        &path,
        &[("FEED_POLL_MS", poll_ms), ("FEED_HEARTBEAT_SECS", "1")],
    )
    .await
}

/// A processor serving the locations file at `path`, without detail fetches or sweeps,
/// with `extra` settings.
async fn feed_processor_with(
    services: &Services,
    path: &str,
    extra: &[(&str, &str)],
) -> RunningProcessor {
    let mut env = vec![
        ("DOJO_LOCATIONS_FILE", path),
        ("ENRICH_ENABLED", "false"),
        ("SWEEP_INTERVAL", "0"),
    ];
    env.extend_from_slice(extra);
    processor(services, &env).await
}

/// Applies one event of `account` through the processor's apply path.
async fn change(pool: &sqlx::PgPool, account: &str, id: &str, pi: &str, status: &str) {
    let mut e = Event::new(id, "payment_intent.status_updated", pi, status, Utc::now());
    e.account_id = account.into();
    let body = e.body();
    let event = common::DojoEvent::from_json(body.as_bytes()).unwrap();
    let incoming = Incoming {
        event: &event,
        channel: common::Channel::Webhook,
        received_at: Utc::now(),
        payload: &body,
    };
    apply(pool, &[incoming], None, None).await.expect("applied");
}

/// Waits until the sequencer has numbered every update written so far (none pending):
/// from then on the cursor API returns them.
async fn numbered(pool: &sqlx::PgPool) {
    wait_until("every written update numbered", PATIENCE, || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_updates_pending")
            .fetch_one(pool)
            .await
            .unwrap();
        (pending == 0).then_some(())
    })
    .await;
}

/// Applies `n` events of new intents of `account` in one batch (one transaction).
async fn many(pool: &sqlx::PgPool, account: &str, prefix: &str, n: usize) {
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            let mut e = Event::new(
                &format!("{prefix}_{i}"),
                "payment_intent.created",
                &format!("pi_{prefix}_{i}"),
                "Created",
                Utc::now(),
            );
            e.account_id = account.into();
            e.body()
        })
        .collect();
    let events: Vec<common::DojoEvent> = bodies
        .iter()
        .map(|b| common::DojoEvent::from_json(b.as_bytes()).unwrap())
        .collect();
    let batch: Vec<Incoming> = events
        .iter()
        .zip(&bodies)
        .map(|(event, body)| Incoming {
            event,
            channel: common::Channel::Rest,
            received_at: Utc::now(),
            payload: body,
        })
        .collect();
    apply(pool, &batch, None, None).await.expect("applied");
}

/// Every update the cursor API returns for `query`, page by page (`limit=7`).
async fn all_pages(url: &str, token: &str, query: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    // The first page without `after`: from the oldest kept.
    let (mut after, mut out) = (String::new(), Vec::new());
    loop {
        let page: Value = client
            .get(format!("{url}/v1/payment-updates?limit=7{after}{query}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let updates = page["updates"].as_array().unwrap().clone();
        if updates.is_empty() {
            return out;
        }
        after = format!("&after={}", page["next"]);
        out.extend(updates);
    }
}

fn seqs(updates: &[Value]) -> Vec<i64> {
    updates.iter().map(|u| u["seq"].as_i64().unwrap()).collect()
}

/// Receives until `n` updates arrived.
async fn take(rx: &mut mpsc::UnboundedReceiver<Received>, n: usize) -> Vec<Received> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("an update in time");
        got.push(r.expect("stream open"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_till_resuming_with_last_event_id_gets_exactly_what_it_missed() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let pool = p.worker.pool.clone();
    let url = format!("{}/v1/payment-updates/stream", p.running.url);

    // Updates flow for both locations all along.
    let writer = tokio::spawn({
        let pool = pool.clone();
        async move {
            for n in 0..60 {
                let (acc, pi) = if n % 3 == 0 {
                    ("acc_leeds", format!("pi_l{}", n / 6))
                } else {
                    ("acc_soho", format!("pi_s{}", n / 6))
                };
                let status = ["Authorized", "Captured"][n % 2];
                change(&pool, acc, &format!("evt_{n}"), &pi, status).await;
                tokio::task::yield_now().await;
            }
        }
    });

    // The till reads some, drops the connection, and resumes from its last id.
    let client = reqwest::Client::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_stop, mut stopped) = watch::channel(false);
    let first = tokio::spawn({
        let (client, url, tx, mut stopped) =
            (client.clone(), url.clone(), tx.clone(), stopped.clone());
        async move {
            let mut last = None;
            let _ = subscribe_once(&client, &url, TOKEN_A, &mut last, &tx, &mut stopped).await;
        }
    });
    let before = take(&mut rx, 5).await;
    first.abort();
    let _ = first.await;
    while let Ok(r) = rx.try_recv() {
        drop(r); // arrived before the abort: the till never processed it
    }
    let mut last = before.last().map(|r| r.seq);
    let second = tokio::spawn({
        let (url, tx) = (url.clone(), tx.clone());
        async move {
            let client = reqwest::Client::new();
            let _ = subscribe_once(&client, &url, TOKEN_A, &mut last, &tx, &mut stopped).await;
        }
    });
    writer.await.unwrap();
    numbered(&pool).await;
    let cursor = all_pages(&p.running.url, API_TOKEN, "&location=soho").await;
    assert_eq!(cursor.len(), 40, "two thirds of the 60 changes are soho's");
    let after = take(&mut rx, cursor.len() - before.len()).await;
    second.abort();

    let streamed: Vec<i64> = before.iter().chain(&after).map(|r| r.seq).collect();
    assert_eq!(
        streamed,
        seqs(&cursor),
        "no gap, no duplicate, same order as the cursor API"
    );
    assert!(streamed.windows(2).all(|w| w[0] < w[1]), "seq order");
    assert!(before
        .iter()
        .chain(&after)
        .all(|r| r.update["location"] == "soho"));
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sees_its_own_location_only() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let pool = p.worker.pool.clone();
    change(&pool, "acc_soho", "evt_1", "pi_soho", "Captured").await;
    change(&pool, "acc_leeds", "evt_2", "pi_leeds", "Authorized").await;
    numbered(&pool).await;
    let url = &p.running.url;
    let client = reqwest::Client::new();

    let leeds = all_pages(url, TOKEN_B, "").await;
    assert_eq!(leeds.len(), 1);
    assert_eq!(leeds[0]["paymentIntentId"], "pi_leeds");
    assert_eq!(leeds[0]["location"], "leeds");
    assert_eq!(leeds[0]["accountId"], "acc_leeds");
    assert_eq!(leeds[0]["cause"], "evt_2");
    assert_eq!(
        all_pages(url, API_TOKEN, "").await.len(),
        2,
        "the global token sees all"
    );
    assert!(all_pages(url, TOKEN_B, "&paymentIntentId=pi_soho")
        .await
        .is_empty());

    let status = |path: String, token: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(path)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status(format!("{url}/v1/payment-updates?location=soho"), TOKEN_B).await,
        403
    );
    assert_eq!(
        status(
            format!("{url}/v1/payment-updates/stream?location=soho"),
            TOKEN_B
        )
        .await,
        403
    );
    assert_eq!(
        status(format!("{url}/v1/payment-updates"), "wrong").await,
        401
    );
    assert_eq!(
        status(format!("{url}/v1/payment-updates/stream"), "wrong").await,
        401
    );
    assert_eq!(
        status(format!("{url}/v1/payment-intents/pi_soho"), TOKEN_B).await,
        404,
        "never another location's record"
    );
    assert_eq!(
        status(format!("{url}/v1/payment-intents/pi_leeds"), TOKEN_B).await,
        200
    );
    assert_eq!(
        status(format!("{url}/v1/payment-intents/pi_soho"), API_TOKEN).await,
        200
    );
    // The scheme's name in any case (RFC 9110 §11.1).
    let lower = client
        .get(format!("{url}/v1/payment-intents/pi_leeds"))
        .header("authorization", format!("bearer {TOKEN_B}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_change_leaves_no_update() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let pool = p.worker.pool.clone();
    change(&pool, "acc_soho", "evt_1", "pi_1", "Authorized").await;

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE payment_intents SET status = 'Captured', last_event_id = 'evt_x' WHERE payment_intent_id = 'pi_1'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let inside: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_updates_pending WHERE cause = 'evt_x'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(inside, 1, "the update is written with the change");
    tx.rollback().await.unwrap();

    change(&pool, "acc_soho", "evt_2", "pi_1", "Captured").await;
    numbered(&pool).await;
    let all = all_pages(&p.running.url, API_TOKEN, "").await;
    let causes: Vec<&str> = all.iter().map(|u| u["cause"].as_str().unwrap()).collect();
    assert_eq!(
        causes,
        ["evt_1", "evt_2"],
        "nothing of the rolled-back change"
    );
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_committed_late_is_numbered_late_so_a_cursor_never_skips() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let pool = p.worker.pool.clone();
    change(&pool, "acc_soho", "evt_0", "pi_a", "Created").await;
    change(&pool, "acc_soho", "evt_1", "pi_b", "Created").await;

    // A transaction writes an update and stays open...
    let mut first = pool.begin().await.unwrap();
    sqlx::query("UPDATE payment_intents SET status = 'Authorized', last_event_id = 'evt_2' WHERE payment_intent_id = 'pi_a'")
        .execute(&mut *first)
        .await
        .unwrap();
    // ...a second, of another payment, started later, commits meanwhile without waiting
    // for it, and is numbered: a reader's cursor moves past it.
    tokio::time::timeout(
        PATIENCE,
        change(&pool, "acc_soho", "evt_3", "pi_b", "Authorized"),
    )
    .await
    .expect("the second writer does not wait for the first");
    numbered(&pool).await;
    let seen = all_pages(&p.running.url, API_TOKEN, "").await;
    let causes: Vec<&str> = seen.iter().map(|u| u["cause"].as_str().unwrap()).collect();
    assert_eq!(
        causes,
        ["evt_0", "evt_1", "evt_3"],
        "the open one is not visible"
    );
    let cursor = seen.last().unwrap()["seq"].as_i64().unwrap();
    // The first commits late: it is numbered after the cursor, not skipped behind it.
    first.commit().await.unwrap();
    numbered(&pool).await;
    let next: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/payment-updates?after={cursor}",
            p.running.url
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let causes: Vec<&str> = next["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["evt_2"], "numbered in commit order");

    // Under concurrency: a reader following the cursor while 8 writers commit, and
    // three more sequencers (as other replicas run) take turns with this processor's,
    // sees every update the table ends with.
    let (halt, halted) = watch::channel(false);
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let (pool, halted) = (pool.clone(), halted.clone());
            tokio::spawn(async move {
                while !*halted.borrow() {
                    processor::feed::sequencer::number(&pool).await.unwrap();
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for n in 0..25 {
                    let status = ["Authorized", "Captured"][n % 2];
                    change(
                        &pool,
                        "acc_soho",
                        &format!("evt_w{w}_{n}"),
                        &format!("pi_w{w}_{}", n / 2),
                        status,
                    )
                    .await;
                }
            })
        })
        .collect();
    let client = reqwest::Client::new();
    let (mut after, mut followed) = (0i64, Vec::new());
    let mut done = false;
    while !done {
        // The last round reads after every write is committed and numbered.
        done = writers.iter().all(|w| w.is_finished()) && {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_updates_pending")
                .fetch_one(&pool)
                .await
                .unwrap();
            pending == 0
        };
        loop {
            let page: Value = client
                .get(format!(
                    "{}/v1/payment-updates?after={after}&limit=1000",
                    p.running.url
                ))
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let updates = page["updates"].as_array().unwrap();
            if updates.is_empty() {
                break;
            }
            after = page["next"].as_i64().unwrap();
            followed.extend(seqs(updates));
        }
    }
    let _ = halt.send(true);
    for r in replicas {
        r.await.unwrap();
    }
    let total: Vec<i64> = sqlx::query_scalar("SELECT seq FROM payment_updates ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(total.len(), 4 + 8 * 25);
    assert!(total.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(followed, total, "the follower skipped nothing");
    let orders: Vec<Vec<String>> = sqlx::query_scalar(
        "SELECT array_agg(status ORDER BY seq) FROM payment_updates
         WHERE payment_intent_id LIKE 'pi_w%' GROUP BY payment_intent_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(orders.len(), 8 * 13);
    for statuses in &orders {
        assert!(
            statuses == &["Authorized"] || statuses == &["Authorized", "Captured"],
            "one payment's updates in the order of their commits: {statuses:?}"
        );
    }
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_listener_delays_by_at_most_the_poll_and_loses_nothing() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let poll = Duration::from_millis(500);
    let p = feed_processor(&services, &locations, "500").await;
    let pool = p.worker.pool.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let till = tokio::spawn(follow(
        format!("{}/v1/payment-updates/stream", p.running.url),
        TOKEN_A.into(),
        tx,
        stopped,
    ));
    change(&pool, "acc_soho", "evt_0", "pi_0", "Created").await;
    take(&mut rx, 1).await;

    let (mut worst, mut kills) = (Duration::ZERO, 0);
    // Backends already terminated may still be listed while they exit: not counted again.
    let mut dead: Vec<i32> = Vec::new();
    for n in 1..=5 {
        let killed: Vec<i32> = sqlx::query_scalar(
            "WITH l AS MATERIALIZED (SELECT pid FROM pg_stat_activity
                 WHERE application_name = 'dojo-feed-listener' AND datname = current_database()
                   AND pid <> ALL($1))
             SELECT pid FROM l WHERE pg_terminate_backend(pid)",
        )
        .bind(&dead)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(killed.len() <= 1, "one listener per process: {killed:?}");
        kills += killed.len();
        dead.extend(killed);
        let at = Instant::now();
        change(
            &pool,
            "acc_soho",
            &format!("evt_{n}"),
            &format!("pi_{n}"),
            "Created",
        )
        .await;
        let got = take(&mut rx, 1).await;
        worst = worst.max(got[0].at - at);
        assert_eq!(
            got[0].update["cause"],
            format!("evt_{n}"),
            "nothing lost, in order"
        );
    }
    assert!(kills >= 1, "the listener was found and killed");
    // A notification that never arrives at all (an update written without NOTIFY): the
    // fallback poll alone delivers it.
    let at = Instant::now();
    sqlx::query(
        "INSERT INTO payment_updates_pending (location_id, account_id, payment_intent_id, status, cause)
         VALUES ('soho', 'acc_soho', 'pi_silent', 'Created', 'evt_silent')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let got = take(&mut rx, 1).await;
    let silent = got[0].at - at;
    assert_eq!(got[0].update["cause"], "evt_silent");
    println!("worst delay with the listener killed: {worst:?}; without any notification: {silent:?} (poll {poll:?})");
    assert!(
        worst.max(silent) <= poll + Duration::from_millis(400),
        "{worst:?} {silent:?}"
    );
    let w = p.worker.clone();
    wait_until("the listener reconnected", PATIENCE, || async {
        (w.metrics.feed_listener_reconnects.get() >= 1).then_some(())
    })
    .await;
    let _ = stop.send(true);
    till.await.unwrap();
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_retention_is_told_to_resync() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let pool = p.worker.pool.clone();
    for n in 0..3 {
        change(
            &pool,
            "acc_soho",
            &format!("evt_{n}"),
            &format!("pi_{n}"),
            "Created",
        )
        .await;
    }
    numbered(&pool).await;
    sqlx::query("UPDATE payment_updates SET committed_at = now() - interval '8 days' WHERE cause IN ('evt_0', 'evt_1')")
        .execute(&pool)
        .await
        .unwrap();
    let oldest = processor::feed::store::prune(&pool, Duration::from_secs(7 * 86400))
        .await
        .unwrap();
    let all = all_pages(&p.running.url, API_TOKEN, "").await;
    assert_eq!(all.len(), 1);
    assert_eq!(oldest.map(|o| o.0), all[0]["seq"].as_i64());
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/payment-updates?after=0", p.running.url))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 410);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["debugMessage"].as_str().unwrap().contains("resync"),
        "{body}"
    );
    // A cursor beyond the newest update comes from another database (a restored or
    // replaced one): told to resync too, on both routes, never followed in silence.
    let head = all[0]["seq"].as_i64().unwrap();
    let ahead = (head + 1000).to_string();
    let http = reqwest::Client::new();
    for req in [
        http.get(format!(
            "{}/v1/payment-updates?after={ahead}",
            p.running.url
        )),
        http.get(format!("{}/v1/payment-updates/stream", p.running.url))
            .header("last-event-id", &ahead),
    ] {
        let resp = req.bearer_auth(API_TOKEN).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 410);
        let body: Value = resp.json().await.unwrap();
        let message = body["debugMessage"].as_str().unwrap();
        assert!(
            message.contains("ahead") && message.contains("resync"),
            "{body}"
        );
    }
    // Not vacuous: the newest update's own number is a good cursor (nothing after it).
    let resp = http
        .get(format!("{}/v1/payment-updates?after={head}", p.running.url))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_with_a_hint_to_resume() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let path = locations.0.to_string_lossy().into_owned();
    let p = feed_processor_with(&services, &path, &[("FEED_CLIENT_BUFFER", "2")]).await;
    for b in 0..20 {
        many(&p.worker.pool, "acc_soho", &format!("b{b}"), 1000).await;
    }
    // A client that connects and never reads.
    let mut stream = tokio::net::TcpStream::connect(p.running.url.trim_start_matches("http://"))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(format!("GET /v1/payment-updates/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let w = p.worker.clone();
    wait_until("the slow client is cut off", PATIENCE, || async {
        (w.metrics.feed_cutoffs.get() == 1 && w.metrics.feed_clients.get() == 0).then_some(())
    })
    .await;
    drop(stream);
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tills_of_every_location_end_with_each_payment_final_status_and_nothing_else() {
    use simulator::locations;
    use simulator::run::{Options, Targets, Via};
    use simulator::ws::DojoWs;
    use std::collections::BTreeMap;

    let services = Services::new().await.unwrap();
    let sims = locations::generate(5, 12);
    let path = std::env::temp_dir().join(format!("feed-sim-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, locations::to_toml(&sims, true)).unwrap();
    let file = path.to_string_lossy().into_owned();
    let ws = DojoWs::bind_keys(
        "127.0.0.1:0",
        Some(sims.iter().map(|l| l.api_key.clone()).collect()),
    )
    .await
    .unwrap();
    let ws_url = ws.url();
    let ingress = ingress(
        &services,
        &[
            ("DOJO_LOCATIONS_FILE", &file),
            ("DOJO_WS_URL", &ws_url),
            ("DOJO_SOFTWARE_HOUSE_ID", "shid-test"),
        ],
    );
    let p = feed_processor_with(&services, &file, &[]).await;
    ws.wait_for_open(sims.len(), PATIENCE).await.unwrap();
    ready(&ingress.url).await;

    // One till per location (the simulator's till mode), subscribed before the first payment.
    let tills = simulator::till::Tills::start(
        &p.running.url,
        &sims
            .iter()
            .map(|l| (l.id.clone(), l.feed_token.clone()))
            .collect::<Vec<_>>(),
    );
    let w = p.worker.clone();
    wait_until("every till connected", PATIENCE, || async {
        (w.metrics.feed_clients.get() == sims.len() as i64).then_some(())
    })
    .await;

    let scenario = locations::lifecycles(&sims, 15, 0.3, 5);
    let targets = Targets {
        ws: Some(ws.clone()),
        http: None,
        locations: sims
            .iter()
            .map(|l| (l.account_id.clone(), l.target(Some(&ingress.url))))
            .collect(),
    };
    let options = Options {
        channels: vec![Via::Ws, Via::Webhook, Via::Rest],
        rate: None,
        concurrency: 16,
        doubling: 0.2,
        seed: 5,
        timeout: Duration::from_secs(30),
    };
    let report = simulator::run::run(&scenario, &targets, &options).await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    p.settled(report.sent).await;

    let mut expected: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for e in &scenario.deliveries {
        let location = sims.iter().find(|l| l.account_id == e.account_id).unwrap();
        expected.entry(location.id.clone()).or_default().insert(
            e.payment_intent_id.clone(),
            scenario.expected[&e.payment_intent_id].clone(),
        );
    }
    let reports = tills.finish(&expected, PATIENCE).await;
    assert_eq!(reports.len(), sims.len());
    for (location, r) in &reports {
        println!(
            "till {location}: {} updates, {}/{} final statuses, commit-to-till p50 {:.1} ms p99 {:.1} ms",
            r.updates, r.final_reached, expected[location].len(), r.latency_p50_ms, r.latency_p99_ms
        );
        assert_eq!(expected[location].len(), 15);
        assert!(
            r.missing.is_empty(),
            "{location} never heard of {:?}",
            r.missing
        );
        assert_eq!(r.foreign, 0, "no update of another location");
        assert!(r.in_order, "seq order, no duplicate");
    }
    ingress.stop().await;
    p.running.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_the_pos_holds_does_not_stall_other_payments() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let pool = p.worker.pool.clone();
    change(&pool, "acc_soho", "evt_0", "pi_held", "Created").await;

    // The POS holds pi_held's row; a change of it waits (up to the lock timeout).
    let mut pos = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM payment_intents WHERE payment_intent_id = 'pi_held' FOR UPDATE")
        .execute(&mut *pos)
        .await
        .unwrap();
    let held = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut e = Event::new(
                "evt_1",
                "payment_intent.status_updated",
                "pi_held",
                "Authorized",
                Utc::now(),
            );
            e.account_id = "acc_soho".into();
            let body = e.body();
            let event = common::DojoEvent::from_json(body.as_bytes()).unwrap();
            let incoming = Incoming {
                event: &event,
                channel: common::Channel::Webhook,
                received_at: Utc::now(),
                payload: &body,
            };
            apply(&pool, &[incoming], None, None).await
        }
    });
    wait_until("the change of the held row waits for it", PATIENCE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (waiting == 1).then_some(())
    })
    .await;
    // Another payment's change commits at once, and is in the feed.
    let at = Instant::now();
    change(&pool, "acc_soho", "evt_2", "pi_free", "Created").await;
    let took = at.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "{took:?}: stalled behind the held row"
    );
    numbered(&pool).await;
    let causes: Vec<String> = all_pages(&p.running.url, API_TOKEN, "")
        .await
        .iter()
        .map(|u| u["cause"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(causes, ["evt_0", "evt_2"]);
    pos.rollback().await.unwrap();
    let _ = held.await.unwrap();
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_processor_ends_its_streams_with_a_hint_instead_of_waiting_for_them() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/payment-updates/stream", p.running.url))
        .bearer_auth(TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let w = p.worker.clone();
    wait_until("the stream is served", PATIENCE, || async {
        (w.metrics.feed_clients.get() == 1).then_some(())
    })
    .await;
    let mut resp = resp;
    let mut body = String::new();
    while !body.contains("\n\n") {
        let chunk = tokio::time::timeout(PATIENCE, resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let at = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), p.running.stop())
        .await
        .expect("stopped without waiting for the stream");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
    println!("stopped in {:?}", at.elapsed());
    assert!(body.starts_with("retry: 2000\n\n"), "{body:?}");
    assert!(
        body.ends_with(": server shutting down, resume with Last-Event-ID\n\n"),
        "{body:?}"
    );
}

/// The processor follows the locations file (docs/LOCATIONS.md, "Reload without
/// restart"): tokens added, rotated and removed, and a new location's account recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_locations_file_changes_the_tills_tokens_and_labels_new_locations() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let path = locations.0.to_string_lossy().into_owned();
    let p = feed_processor_with(&services, &path, &[("PROCESSOR_LOCATIONS_POLL_MS", "50")]).await;
    let url = p.running.url.clone();
    let pool = p.worker.pool.clone();
    let client = reqwest::Client::new();
    let status = |token: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(format!("{url}/v1/payment-updates"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    const ANGEL: &str = "till-token-angel";
    const LEEDS_NEW: &str = "till-token-leeds-rotated";
    assert_eq!(status(TOKEN_B).await, 200);
    assert_eq!(status(ANGEL).await, 401, "not in the file yet");
    // Leeds's token rotated, location angel added.
    std::fs::write(
        &locations.0,
        format!(
            "[[location]]\nid = \"soho\"\naccount_id = \"acc_soho\"\nwebhook_secrets = [\"{SECRET}\"]\nfeed_tokens = [\"{TOKEN_A}\"]\n\n\
             [[location]]\nid = \"leeds\"\naccount_id = \"acc_leeds\"\nwebhook_secrets = [\"whsec_leeds_0001\"]\nfeed_tokens = [\"{LEEDS_NEW}\"]\n\n\
             [[location]]\nid = \"angel\"\naccount_id = \"acc_angel\"\nwebhook_secrets = [\"whsec_angel_0001\"]\nfeed_tokens = [\"{ANGEL}\"]\n"
        ),
    )
    .unwrap();
    wait_until("the new token served", PATIENCE, || async {
        (status(ANGEL).await == 200).then_some(())
    })
    .await;
    assert_eq!(status(LEEDS_NEW).await, 200);
    assert_eq!(status(TOKEN_B).await, 401, "a rotated token stops at once");
    assert_eq!(status(TOKEN_A).await, 200);
    // The new location's account is recorded for the feed, and its updates carry it.
    wait_until("acc_angel recorded for the feed", PATIENCE, || async {
        let l: Option<String> = sqlx::query_scalar(
            "SELECT location_id FROM feed_locations WHERE account_id = 'acc_angel'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        (l.as_deref() == Some("angel")).then_some(())
    })
    .await;
    change(&pool, "acc_angel", "evt_angel", "pi_angel", "Captured").await;
    numbered(&pool).await;
    let angel = all_pages(&url, ANGEL, "").await;
    assert_eq!(angel.len(), 1, "{angel:?}");
    assert_eq!(angel[0]["location"], "angel");
    assert_eq!(angel[0]["paymentIntentId"], "pi_angel");
    p.running.stop().await;
}

/// Found by Schemathesis: filters no record can have reached the database (a NUL: 503),
/// and malformed numbers got actix's plain-text 400 or were ignored (`Last-Event-ID`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_a_400_epos_error() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let http = reqwest::Client::new();
    let get = |path: &str, last_event_id: Option<&str>| {
        let mut r = http
            .get(format!("{}{path}", p.running.url))
            .bearer_auth(API_TOKEN);
        if let Some(id) = last_event_id {
            r = r.header("last-event-id", id);
        }
        r.send()
    };
    let cases: [(&str, Option<&str>); 9] = [
        ("/v1/payment-updates?after=-1", None),
        ("/v1/payment-updates?limit=0", None),
        ("/v1/payment-updates/stream", Some("-5")),
        ("/v1/payment-updates?location=a%00b", None),
        ("/v1/payment-updates?paymentIntentId=pi%00", None),
        ("/v1/payment-updates?limit=9223372036854775808", None),
        ("/v1/payment-updates?after=ten", None),
        ("/v1/payment-updates/stream?orderId=o%00", None),
        ("/v1/payment-updates/stream", Some("9223372036854775808")),
    ];
    for (path, last) in cases {
        let r = get(path, last).await.unwrap();
        assert_eq!(r.status(), 400, "{path} {last:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errorType"], "InvalidRequest", "{path}: {body}");
    }
    // An id no record can have is unknown (never a 5xx from the database).
    let r = get("/v1/payment-intents/pi%00", None).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["errorType"], "NotFound");
    // A route or method the processor does not serve: an EPOSError too, with its traceId.
    for r in [
        get("/v1/nothing-here", None).await.unwrap(),
        http.post(format!("{}/readyz", p.running.url))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errorType"], "NotFound", "{body}");
        assert!(
            body["traceId"].as_str().is_some_and(|t| t.len() == 32),
            "{body}"
        );
    }
    // Not vacuous: the same routes answer well-formed queries.
    assert_eq!(
        get("/v1/payment-updates?location=soho&limit=5", None)
            .await
            .unwrap()
            .status(),
        200
    );
    p.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_snapshot_of_details_is_an_update_and_an_older_or_equal_one_is_not() {
    let services = Services::new().await.unwrap();
    let locations = Locations::new();
    let p = feed_processor(&services, &locations, "1000").await;
    let pool = p.worker.pool.clone();
    change(&pool, "acc_soho", "evt_1", "pi_snap", "Captured").await;
    let snapshot: common::dojo_api::PaymentIntent = serde_json::from_value(serde_json::json!({
        "id": "pi_snap", "status": "Captured", "captureMode": "Auto",
        "amount": {"value": 1250, "currencyCode": "GBP"},
        "totalAmount": {"value": 1400, "currencyCode": "GBP"},
        "refundedAmount": 0, "reference": "table 12",
        "orderDetails": {"externalId": "ord-12"},
        "updatedAt": "2026-11-30T12:00:00Z"
    }))
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert!(processor::snapshot::store(&mut conn, "pi_snap", &snapshot)
        .await
        .unwrap());
    // The same snapshot again changes nothing: no update.
    assert!(!processor::snapshot::store(&mut conn, "pi_snap", &snapshot)
        .await
        .unwrap());
    drop(conn);
    numbered(&pool).await;
    let all = all_pages(&p.running.url, API_TOKEN, "&orderId=ord-12").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        all[0]["cause"],
        "snapshot:pi_snap:2026-11-30T12:00:00.000000Z"
    );
    assert_eq!(all[0]["amount"]["value"], 1250);
    assert_eq!(all[0]["totalAmount"]["value"], 1400);
    assert_eq!(all[0]["reference"], "table 12");
    assert_eq!(all[0]["status"], "Captured");
    assert_eq!(
        all_pages(&p.running.url, API_TOKEN, "&paymentIntentId=pi_snap")
            .await
            .len(),
        2,
        "the event's update and the snapshot's"
    );
    p.running.stop().await;
}
