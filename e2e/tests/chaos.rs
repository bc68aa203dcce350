//! Breaking things for real while events flow: the broker, the database, Redis, hostile
//! clients. Each test breaks only its own vhost, database or Redis server, and prints
//! what it measured (sent, acknowledged, applied).

mod support;

use chrono::{Duration as Span, Utc};
use e2e::isolation::{Services, TestRedis};
use e2e::wait_until;
use simulator::event::Event;
use simulator::scenario::lifecycles;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(120);

async fn applied_ids(pool: &sqlx::PgPool) -> HashSet<String> {
    sqlx::query_scalar::<_, String>("SELECT event_id FROM dojo_events")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Sends `events` one after another at about `per_second`, returning the ids answered
/// 200, how many were refused, and when the last refusal came.
async fn stream(
    dojo: &simulator::Dojo,
    events: &[Event],
    per_second: u32,
) -> (Vec<String>, usize, Option<Instant>) {
    let start = Instant::now();
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut last_refusal = None;
    for (i, e) in events.iter().enumerate() {
        tokio::time::sleep_until(
            (start + Duration::from_secs_f64(i as f64 / f64::from(per_second))).into(),
        )
        .await;
        match dojo.webhook(&e.body()).await.map(|r| r.status().as_u16()) {
            Ok(200) => acked.push(e.id.clone()),
            _ => {
                refused += 1;
                last_refusal = Some(Instant::now());
            }
        }
    }
    (acked, refused, last_refusal)
}

fn events(prefix: &str, n: usize) -> Vec<Event> {
    let t0 = Utc::now() - Span::minutes(5);
    (0..n)
        .map(|i| {
            Event::new(
                &format!("evt_{prefix}_{i}"),
                "payment_intent.created",
                &format!("pi_{prefix}_{i}"),
                "Created",
                t0,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_no_acknowledged_event() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[("INGRESS_PUBLISH_TIMEOUT_MS", "1000")]);
    let processor = processor(&services, &[]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    // 3,600 events over 18 s; the broker goes early on (its outage takes rabbitmqctl calls
    // of seconds each, plus 2 s), and the stream goes on well past its return.
    let all = events("br", 3600);

    // The stream is a task of its own: `rabbitmqctl` (seconds per call) blocks the test's
    // task, never the pace of the stream.
    let sender = tokio::spawn({
        let (dojo, all) = (dojo.clone(), all.clone());
        async move { stream(&dojo, &all, 200).await }
    });
    // The outage starts once events flow end to end...
    processor.settled(100).await;
    tokio::task::block_in_place(|| services.vhost.outage().unwrap());
    // ...and lasts 2 s: a duration of the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| services.vhost.restore().unwrap());
    let restored = Instant::now();
    let (acked, refused, last_refusal) = sender.await.unwrap();
    assert!(refused > 0, "the outage was felt");
    assert_eq!(
        acked.last(),
        all.last().map(|e| &e.id),
        "ingress recovered by itself"
    );
    // Refusals end soon after the broker is back (reconnect backoff capped at 300 ms here).
    let recovered_in = last_refusal.unwrap().saturating_duration_since(restored);
    assert!(
        recovered_in < Duration::from_secs(3),
        "still refusing {recovered_in:?} after the broker came back"
    );

    let pool = services.db.pool().await.unwrap();
    let applied = wait_until("every acknowledged event applied", LONG, || async {
        let applied = applied_ids(&pool).await;
        acked
            .iter()
            .all(|id| applied.contains(id))
            .then_some(applied)
    })
    .await;
    assert!(
        processor.worker.consuming.load(Ordering::SeqCst),
        "processor recovered by itself"
    );
    println!(
        "broker restart: sent {}, acknowledged {}, refused {refused}, applied {}",
        all.len(),
        acked.len(),
        applied.len()
    );
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gone_for_30_seconds_delays_but_loses_and_dead_letters_nothing() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[("PROCESSOR_RETRY_DELAYS", "1s,2s,5s")]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let all = events("pg", 300);

    services.db.outage().await.unwrap();
    let outage = Instant::now();
    // Events keep arriving throughout the outage (10/s for 30 s); ingress needs no database.
    let (acked, refused, _) = stream(&dojo, &all, 10).await;
    for path in ["/readyz", "/readyz/serving"] {
        let status = reqwest::get(format!("{}{path}", processor.running.url))
            .await
            .unwrap()
            .status();
        assert_eq!(
            status, 503,
            "{path}: processor not ready without its database"
        );
    }
    tokio::time::sleep_until((outage + Duration::from_secs(30)).into()).await;
    services.db.restore().await.unwrap();

    let pool = services.db.pool().await.unwrap();
    wait_until("every event applied", LONG, || async {
        (applied_ids(&pool).await.len() == all.len()).then_some(())
    })
    .await;
    assert_eq!((acked.len(), refused), (300, 0));
    assert_eq!(
        services
            .vhost
            .ready_messages(common::topology::DEAD_QUEUE)
            .await
            .unwrap(),
        0,
        "nothing dead-lettered"
    );
    let retried = processor.worker.settled.load(Ordering::SeqCst);
    println!(
        "postgres outage: sent {}, acknowledged {}, applied {}, deliveries settled {retried} (retries included), dead letters 0",
        all.len(),
        acked.len(),
        all.len()
    );
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_keeps_exactly_once() {
    let services = Services::new().await.unwrap();
    let mut redis = TestRedis::start().unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[("REDIS_URL", &redis.url())]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let scenario = lifecycles("acc_redis_kill", 300, 0.5, 11);
    let (first, second) = scenario.deliveries.split_at(scenario.deliveries.len() / 2);

    let send = |batch: &'static [Event]| {
        let dojo = dojo.clone();
        async move {
            for e in batch {
                assert_eq!(dojo.rest(&e.body()).await.unwrap().status(), 200);
            }
        }
    };
    let first: &'static [Event] = Box::leak(first.to_vec().into_boxed_slice());
    let second: &'static [Event] = Box::leak(second.to_vec().into_boxed_slice());
    send(first).await;
    processor.settled(first.len() as u64).await;
    let redis_up = |page: String| page.lines().any(|l| l == "dojo_processor_redis_up 1");
    let metrics_url = format!("{}/metrics", processor.running.url);
    let page = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(redis_up(page), "Redis seen up before the kill");
    redis.kill();
    // Everything again after the kill: duplicates of the first half, and the second half.
    send(first).await;
    send(second).await;
    let total = (2 * first.len() + second.len()) as u64;
    processor.settled(total).await;
    let page = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!redis_up(page), "the loss of Redis is visible in /metrics");

    let pool = services.db.pool().await.unwrap();
    assert_final_states(&pool, &scenario).await;
    println!(
        "redis killed: sent {total}, acknowledged {total}, distinct {} applied once each",
        scenario.distinct
    );
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_clients_are_cut_off_while_others_are_served() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    ready(&ingress.url).await;
    let addr = ingress.url.trim_start_matches("http://").to_owned();
    let dojo = dojo(&ingress);

    // 40 slowloris clients: headers started, never finished.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/webhooks/dojo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(s);
    }
    // One slow body: complete headers, a few bytes of a promised kilobyte.
    let mut slow_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow_body
        .write_all(b"POST /v1/webhooks/dojo HTTP/1.1\r\nHost: x\r\ndojo-signature: sha256=00\r\nContent-Length: 1000\r\n\r\n{\"id\":")
        .await
        .unwrap();

    // Others are served meanwhile, promptly.
    for e in events("slow", 20) {
        let started = Instant::now();
        assert_eq!(dojo.webhook(&e.body()).await.unwrap().status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Oversized: refused from the headers alone, or cut off while streaming.
    let http = reqwest::Client::new();
    let big = http
        .post(format!("{}/v1/events", ingress.url))
        .basic_auth(REST_USER, Some(REST_PASSWORD))
        .body(vec![b'x'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let huge_header = http
        .post(format!("{}/v1/events", ingress.url))
        .header("x-padding", "p".repeat(100 * 1024))
        .body("{}")
        .send()
        .await;
    assert!(
        huge_header
            .map(|r| r.status().is_client_error())
            .unwrap_or(true),
        "a 100 KiB header is refused"
    );

    // The stalled ones are closed by the server (request timeout), not left hanging.
    let started = Instant::now();
    for mut s in stalled {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "slowloris connection still open after {:?}",
            started.elapsed()
        );
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), slow_body.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "slow body: {answer}");
    // And the service still serves.
    let e = Event::new(
        "evt_still_here",
        "payment_intent.created",
        "pi_still",
        "Created",
        Utc::now(),
    );
    assert_eq!(dojo.webhook(&e.body()).await.unwrap().status(), 200);
    println!(
        "hostile clients: 40 stalled headers closed in {:?}; slow body answered 408",
        started.elapsed()
    );
    ingress.stop().await;
}

/// Without a broker the processor consumes nothing, but its database answers: `/readyz`
/// says 503 (not consuming) while `/readyz/serving`, the readiness of the Service that
/// routes the read API, the feed and the console, stays 200, and the read API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_the_processor_still_serves_its_read_api() {
    let services = Services::new().await.unwrap();
    // Port 1: no broker listens there.
    let p = processor_serving(
        &services,
        &[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    )
    .await;
    let get = |path: &str| {
        reqwest::Client::new()
            .get(format!("{}{path}", p.running.url))
            .bearer_auth(API_TOKEN)
            .send()
    };
    for (path, status) in [("/readyz", 503), ("/readyz/serving", 200)] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"consuming": false, "database": true}),
            "{path}"
        );
    }
    // The read API answers (an unknown payment is a 404 EPOSError, not a 503).
    let r = get("/v1/payment-intents/pi_none").await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(!p.worker.consuming.load(Ordering::SeqCst));
    p.running.stop().await;
}
