//! What goes wrong, on purpose: bad input, a broker outage, Redis gone or forgetful,
//! poison messages. Each test breaks only its own vhost, database or Redis prefix.

mod support;

use chrono::{Duration as Span, Utc};
use common::topology::{DEAD_QUEUE, EXCHANGE, PROCESSOR_QUEUE};
use e2e::isolation::Services;
use e2e::wait_until;
use simulator::event::{Event, DOC_EVENT};
use simulator::scenario::lifecycles;
use support::*;

async fn ready_count(services: &Services, queue: &str, expected: u32) {
    wait_until(
        &format!("{expected} messages in {queue}"),
        PATIENCE,
        || async { (services.vhost.ready_messages(queue).await.ok()? == expected).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_nothing_is_queued() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let http = reqwest::Client::new();
    let webhook = format!("{}/v1/webhooks/dojo", ingress.url);
    let events = format!("{}/v1/events", ingress.url);
    let signed = |body: &str| common::signature::sign(SECRET, body.as_bytes());
    let without = |field: &str| {
        let mut v: serde_json::Value = serde_json::from_str(DOC_EVENT).unwrap();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    };
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));

    // (what, request, expected status, expected errorType)
    let mut cases: Vec<(String, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "webhook without signature".into(),
            http.post(&webhook).body(DOC_EVENT),
            401,
            "InvalidRequest",
        ),
        (
            "webhook with a wrong signature".into(),
            http.post(&webhook)
                .header("dojo-signature", signed("other"))
                .body(DOC_EVENT),
            401,
            "InvalidRequest",
        ),
        (
            "signed webhook that is not JSON".into(),
            http.post(&webhook)
                .header("dojo-signature", signed("nope"))
                .body("nope"),
            400,
            "InvalidRequest",
        ),
        (
            "createdAt not a date-time".into(),
            {
                let b = DOC_EVENT.replace("2022-02-01T13:07:41.8667859Z", "last tuesday");
                http.post(&webhook)
                    .header("dojo-signature", signed(&b))
                    .body(b)
            },
            400,
            "InvalidRequest",
        ),
        (
            "accountId of the wrong type".into(),
            {
                let b = DOC_EVENT.replace("\"acc_test\"", "12");
                http.post(&webhook)
                    .header("dojo-signature", signed(&b))
                    .body(b)
            },
            400,
            "InvalidRequest",
        ),
        (
            "text/plain content type".into(),
            http.post(&webhook)
                .header("content-type", "text/plain")
                .header("dojo-signature", signed(DOC_EVENT))
                .body(DOC_EVENT),
            415,
            "InvalidRequest",
        ),
        (
            "body over 64 KiB".into(),
            http.post(&webhook)
                .header("dojo-signature", signed(&huge))
                .body(huge.clone()),
            413,
            "InvalidRequest",
        ),
        (
            "REST without credentials".into(),
            http.post(&events).body(DOC_EVENT),
            401,
            "InvalidRequest",
        ),
        (
            "REST with a wrong password".into(),
            http.post(&events)
                .basic_auth(REST_USER, Some("wrong"))
                .body(DOC_EVENT),
            401,
            "InvalidRequest",
        ),
        (
            "REST body over 64 KiB".into(),
            http.post(&events)
                .basic_auth(REST_USER, Some(REST_PASSWORD))
                .body(huge.clone()),
            413,
            "InvalidRequest",
        ),
    ];
    let deep = DOC_EVENT.replacen(
        "{",
        &format!("{{\"deep\":{}{},", "[".repeat(200), "]".repeat(200)),
        1,
    );
    // The event's fields in order, as an array (serde would read it as the struct).
    let doc: serde_json::Value = serde_json::from_str(DOC_EVENT).unwrap();
    let array = serde_json::Value::Array(
        ["id", "event", "accountId", "createdAt", "data"]
            .iter()
            .map(|k| doc[k].clone())
            .collect(),
    )
    .to_string();
    for (what, body) in [
        ("REST event nested 200 levels deep", deep),
        ("REST event that is a JSON array", array),
    ] {
        cases.push((
            what.into(),
            http.post(&events)
                .basic_auth(REST_USER, Some(REST_PASSWORD))
                .body(body),
            400,
            "InvalidRequest",
        ));
    }
    cases.push((
        "GET on the webhook route".into(),
        http.get(&webhook),
        405,
        "InvalidRequest",
    ));
    for field in ["id", "accountId", "event", "createdAt", "data"] {
        let b = without(field);
        cases.push((
            format!("REST event without {field}"),
            http.post(&events)
                .basic_auth(REST_USER, Some(REST_PASSWORD))
                .body(b),
            400,
            "InvalidRequest",
        ));
    }

    for (what, request, status, error_type) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        // A Basic challenge only where Basic credentials are asked for (RFC 7235).
        let challenge = response.headers().get("www-authenticate").is_some();
        assert_eq!(
            challenge,
            status == 401 && what.starts_with("REST"),
            "{what}"
        );
        let text = response.text().await.unwrap();
        assert!(text.ends_with('\n'), "{what}: a JSON answer ends its line");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["errorType"], error_type, "{what}: {body}");
        assert!(
            body["traceId"].as_str().is_some_and(|t| t.len() == 32),
            "{what}: {body}"
        );
        assert!(
            body["debugMessage"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    assert_eq!(
        services
            .vhost
            .ready_messages(PROCESSOR_QUEUE)
            .await
            .unwrap(),
        0
    );

    // Not vacuous: a good event, literal Basic form, does get queued.
    let literal = http
        .post(&events)
        .header(
            "authorization",
            format!("Basic {REST_USER}:{REST_PASSWORD}"),
        )
        .body(DOC_EVENT)
        .send()
        .await
        .unwrap();
    assert_eq!(literal.status(), 200);
    assert_eq!(dojo.webhook(DOC_EVENT).await.unwrap().status(), 200);
    ready_count(&services, PROCESSOR_QUEUE, 2).await;

    // Unconfigured routes are 404 with an EPOSError.
    let bare = support::ingress(
        &services,
        &[
            ("DOJO_WEBHOOK_SECRETS", ""),
            ("DOJO_REST_USERNAME", ""),
            ("INGRESS_ALLOW_NO_CHANNELS", "true"),
            ("DOJO_REST_PASSWORD", ""),
        ],
    );
    let bare_dojo = support::dojo(&bare);
    for response in [
        bare_dojo.webhook(DOC_EVENT).await.unwrap(),
        bare_dojo.rest(DOC_EVENT).await.unwrap(),
    ] {
        assert_eq!(response.status(), 404);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errorType"], "NotFound");
    }
    bare.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_gives_503_never_200_and_ingress_recovers_by_itself() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let http = reqwest::Client::new();
    let readyz = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    let t0 = Utc::now();
    let before = Event::new(
        "evt_before",
        "payment_intent.created",
        "pi_o1",
        "Created",
        t0,
    );
    assert_eq!(dojo.webhook(&before.body()).await.unwrap().status(), 200);

    services.vhost.outage().unwrap();
    wait_until("readyz 503", PATIENCE, || async {
        (readyz(format!("{}/readyz", ingress.url)).await == 503).then_some(())
    })
    .await;
    // The body says why: the refused attempt, with the node tried and its password masked.
    let detail = wait_until("readiness names the refused attempt", PATIENCE, || async {
        let body: serde_json::Value = http
            .get(format!("{}/readyz", ingress.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let detail = body["broker_detail"].as_str()?.to_owned();
        (body["broker"] == "disconnected"
            && detail.contains("***@127.0.0.1")
            && !detail.contains("lost"))
        .then_some(detail)
    })
    .await;
    println!("broker outage: readiness says {detail:?}");
    assert!(!detail.contains(":guest@"), "password shown: {detail}");
    let during: Vec<_> = (0..10)
        .map(|i| {
            Event::new(
                &format!("evt_during_{i}"),
                "payment_intent.created",
                "pi_o2",
                "Created",
                t0,
            )
            .body()
        })
        .collect();
    let answers = futures::future::join_all(during.iter().map(|b| dojo.rest(b))).await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 503);
        assert!(answer.headers().contains_key("retry-after"));
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["errorType"], "UnexpectedError");
    }

    services.vhost.restore().unwrap();
    ready(&ingress.url).await;
    let after = Event::new(
        "evt_after",
        "payment_intent.created",
        "pi_o3",
        "Created",
        t0,
    );
    assert_eq!(dojo.webhook(&after.body()).await.unwrap().status(), 200);
    // Exactly the two events answered 200 are queued.
    ready_count(&services, PROCESSOR_QUEUE, 2).await;
    ingress.stop().await;
}

/// Sends every delivery of a scenario, alternating channels, 16 at a time.
async fn send_all(dojo: &simulator::Dojo, deliveries: &[Event]) {
    use futures::StreamExt;
    let statuses: Vec<u16> = futures::stream::iter(deliveries.iter().enumerate())
        .map(|(i, e)| async move {
            let body = e.body();
            let r = if i % 2 == 0 {
                dojo.webhook(&body).await
            } else {
                dojo.rest(&body).await
            };
            r.unwrap().status().as_u16()
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_or_with_redis_forgetting_every_event_is_applied_once() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let pool = services.db.pool().await;
    let scenario = lifecycles("acc_redis", 40, 0.5, 7);

    // Redis unreachable: nothing listens on port 1.
    let blind = processor(&services, &[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    send_all(&dojo, &scenario.deliveries).await;
    blind.settled(scenario.deliveries.len() as u64).await;
    let pool = pool.unwrap_or(services.db.pool().await.unwrap());
    assert_final_states(&pool, &scenario).await;
    blind.running.stop().await;

    // Redis up but with none of the keys (as after a flush): everything again, twice.
    let forgetful = processor(&services, &[("REDIS_KEY_PREFIX", "test:fresh:")]).await;
    let mut again = scenario.deliveries.clone();
    again.extend(scenario.deliveries.iter().cloned());
    send_all(&dojo, &again).await;
    forgetful.settled(again.len() as u64).await;
    assert_final_states(&pool, &scenario).await;
    forgetful.running.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason_and_work_goes_on() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions};
    let services = Services::new().await.unwrap();
    let processor = processor(&services, &[]).await;
    let conn = lapin::Connection::connect(&services.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let poison: [&[u8]; 3] = [
        b"\x00\x01 not json",
        br#"{"v":1,"hello":"world"}"#,
        br#"{"v":99,"event":{}}"#,
    ];
    for body in poison {
        channel
            .basic_publish(
                EXCHANGE.into(),
                "x".into(),
                BasicPublishOptions::default(),
                body,
                Default::default(),
            )
            .await
            .unwrap();
    }
    processor.settled(3).await;
    ready_count(&services, DEAD_QUEUE, 3).await;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let got = channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a dead letter");
        let headers = got.delivery.properties.headers().clone().unwrap();
        match headers.inner().get(common::topology::DEAD_REASON_HEADER) {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                reasons.push(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            other => panic!("no reason header: {other:?}"),
        }
    }
    assert!(
        reasons.iter().any(|r| r.contains("not JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not an event envelope")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown envelope version 99")),
        "{reasons:?}"
    );

    // The processor carries on with good work.
    let ingress = ingress(&services, &[]);
    ready(&ingress.url).await;
    let e = Event::new(
        "evt_after_poison",
        "payment_intent.created",
        "pi_p",
        "Created",
        Utc::now() - Span::seconds(1),
    );
    assert_eq!(
        dojo(&ingress).webhook(&e.body()).await.unwrap().status(),
        200
    );
    processor.settled(4).await;
    let pool = services.db.pool().await.unwrap();
    assert_eq!(intent(&pool, "pi_p").await.unwrap().status, "Created");
    let _ = conn.close(200, "done".into()).await;
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_does_not_trust_redis_markers_written_for_another() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    ready(&ingress.url).await;
    let e = Event::new(
        "evt_marker",
        "payment_intent.created",
        "pi_marker",
        "Created",
        Utc::now(),
    );

    let first = processor(&services, &[]).await;
    assert_eq!(
        dojo(&ingress).webhook(&e.body()).await.unwrap().status(),
        200
    );
    first.settled(1).await;
    first.running.stop().await;

    // Same Redis prefix, a brand-new database: the event must land there too.
    let other = e2e::isolation::TestDatabase::new().await.unwrap();
    let second = processor(&services, &[("DATABASE_URL", &other.url())]).await;
    assert_eq!(
        dojo(&ingress).webhook(&e.body()).await.unwrap().status(),
        200
    );
    second.settled(1).await;
    let pool = other.pool().await.unwrap();
    assert_eq!(intent(&pool, "pi_marker").await.unwrap().status, "Created");
    second.running.stop().await;
    ingress.stop().await;
}

/// GET `url`: its status and body, or `None` while nothing answers.
async fn status_and_body(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// A processor started before PostgreSQL can be reached waits for it, alive and not
/// ready: `/healthz` answers 200 meanwhile, so a liveness probe does not restart a process
/// that is only waiting (docs/OPERATIONS.md, DojoProcessorNotConsuming), `/readyz` and
/// every other route 503; once the database answers it serves and consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_waiting_for_postgresql_is_alive_and_not_ready_then_serves() {
    let services = Services::new().await.unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    // Nothing listens at `db` yet: the database server is unreachable.
    let (http, db) = (free(), free());
    let (addr, url) = (
        http.to_string(),
        format!("postgres://postgres@{db}/{}", services.db.name),
    );
    let overrides = [
        ("PROCESSOR_ADDR", addr.as_str()),
        ("DATABASE_URL", url.as_str()),
    ];
    let starting = processor_serving(&services, &overrides);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{http}{path}");
    let probing = async {
        wait_until("/healthz answering while waiting", PATIENCE, || async {
            status_and_body(&client, &url("/healthz"))
                .await
                .filter(|(status, _)| *status == 200)
        })
        .await;
        // Still waiting: the server that answers does not reach the database.
        let (status, body) = status_and_body(&client, &url("/readyz")).await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"consuming": false, "database": false})
        );
        let (status, body) = status_and_body(&client, &url("/v1/payment-intents/pi_1"))
            .await
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("waiting for its database"), "{body}");

        // PostgreSQL appears at that address (a forwarder to the real server).
        let listener = tokio::net::TcpListener::bind(db).await.unwrap();
        let forwarder = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut server).await;
                    }
                });
            }
        });
        forwarder.abort_handle()
    };
    let (processor, forwarder) =
        tokio::time::timeout(PATIENCE * 2, futures::future::join(starting, probing))
            .await
            .expect("the processor starts once the database answers");
    wait_until("/readyz 200 once consuming", PATIENCE, || async {
        status_and_body(&client, &url("/readyz"))
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    processor.running.stop().await;
    forwarder.abort();
}
