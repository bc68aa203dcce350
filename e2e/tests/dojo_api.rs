//! The shared Dojo API client against the simulator's faithful Dojo API: look-ups with
//! `returnCanceled`, search paging, 404, a refused key (and its replacement, used at
//! once), 429 with `Retry-After`, the per-key rate.

use common::dojo_api::{
    ApiConfig, ApiError, ApiMetrics, Credentials, Cursor, DojoApi, SearchRequest,
};
use common::settings::Secret;
use simulator::fake_api::{FakeDojoApi, Fault};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn client(url: &str, rate: u32) -> DojoApi {
    let src: HashMap<String, String> = [
        ("DOJO_API_URL".to_owned(), url.to_owned()),
        ("DOJO_API_RATE".to_owned(), rate.to_string()),
        ("DOJO_API_MAX_WAIT_MS".to_owned(), "3000".to_owned()),
    ]
    .into();
    let config = ApiConfig::from_source(&src).unwrap();
    DojoApi::new(config, ApiMetrics::new(&prometheus::Registry::new()))
}

fn creds(key: &str) -> Credentials {
    Credentials {
        location: "loc".into(),
        key: Secret::new(key),
    }
}

#[tokio::test]
async fn lookups_and_search_pages_match_the_truth() {
    let scenario = simulator::scenario::lifecycles("acc_a", 120, 0.0, 7);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [("sk_a", "acc_a")]);
    let dojo = client(&api.url, 1000);
    let key = creds("sk_a");
    for (pi, truth) in &scenario.truth {
        let got = dojo.get_payment_intent(&key, pi).await.unwrap();
        assert_eq!(&got, &truth.intent, "{pi}");
    }
    // Canceled intents are 404 without returnCanceled=true (Dojo's behaviour).
    let canceled = scenario
        .expected
        .iter()
        .find(|(_, s)| *s == "Canceled")
        .map(|(pi, _)| pi.clone())
        .unwrap();
    let bare = reqwest::Client::new()
        .get(format!("{}/payment-intents/{canceled}", api.url))
        .header("authorization", "Basic sk_a")
        .header("version", "2024-02-05")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 404);
    assert!(matches!(
        dojo.get_payment_intent(&key, "pi_nobody").await,
        Err(ApiError::NotFound)
    ));
    let mut seen = Vec::new();
    let request = SearchRequest {
        cursor: Cursor {
            limit: 25,
            ..Cursor::default()
        },
        ..SearchRequest::default()
    };
    let total = dojo
        .search_all(&key, request, |page| {
            assert!(page.len() <= 25);
            seen.extend(page.into_iter().filter_map(|p| p.id));
        })
        .await
        .unwrap();
    seen.sort();
    seen.dedup();
    println!(
        "120 intents: {total} found over pages of 25, {} distinct",
        seen.len()
    );
    assert_eq!((total, seen.len()), (120, 120));
    api.stop().await;
}

#[tokio::test]
async fn refused_keys_throttling_and_retry_after() {
    let scenario = simulator::scenario::lifecycles("acc_a", 4, 0.0, 8);
    let pi = scenario.truth.keys().next().unwrap().clone();
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(
        &scenario.truth,
        [("sk_a", "acc_a"), ("sk_revoked", "acc_a")],
    );
    api.refuse_key("sk_revoked");
    let dojo = client(&api.url, 20);

    // A refused key: one call reaches Dojo, the next ones fail fast (no storm).
    let revoked = Credentials {
        location: "revoked".into(),
        key: Secret::new("sk_revoked"),
    };
    for _ in 0..5 {
        assert!(matches!(
            dojo.get_payment_intent(&revoked, &pi).await,
            Err(ApiError::KeyBroken { .. })
        ));
    }
    let revoked_calls = api
        .intent_calls()
        .iter()
        .filter(|(_, k)| k == "sk_revoked")
        .count();
    assert_eq!(revoked_calls, 1, "a broken key is not retried at once");
    // The operator replaces the location's key: the new one is used at once, not after
    // the refused key's cooldown.
    let replaced = Credentials {
        location: "revoked".into(),
        key: Secret::new("sk_a"),
    };
    let intent = dojo.get_payment_intent(&replaced, &pi).await.unwrap();
    assert_eq!(intent.id.as_deref(), Some(pi.as_str()));

    // Five fetches at once with another refused key: they queue for the key's turn, and
    // only the first is sent; the others see the refusal when their turn comes.
    api.refuse_key("sk_revoked_too");
    let revoked_too = Credentials {
        location: "revoked_too".into(),
        key: Secret::new("sk_revoked_too"),
    };
    let answers =
        futures::future::join_all((0..5).map(|_| dojo.get_payment_intent(&revoked_too, &pi))).await;
    assert!(answers
        .iter()
        .all(|a| matches!(a, Err(ApiError::KeyBroken { .. }))));
    let concurrent_calls = api
        .intent_calls()
        .iter()
        .filter(|(_, k)| k == "sk_revoked_too")
        .count();
    assert_eq!(
        concurrent_calls, 1,
        "queued calls behind a refusal are not sent"
    );

    // 40 calls at 20/s with no burst: at least ~1.95 s, never two within 50 ms.
    let key = creds("sk_a");
    let started = Instant::now();
    for _ in 0..40 {
        dojo.get_payment_intent(&key, &pi).await.unwrap();
    }
    let took = started.elapsed();
    let mut times: Vec<Instant> = api
        .intent_calls()
        .into_iter()
        .filter(|(_, k)| k == "sk_a")
        .map(|(t, _)| t)
        .collect();
    times.sort();
    let closest = times.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    // Arrival times at the fake Dojo jitter around the 50 ms the limiter spaces calls
    // by (more on a loaded machine): the rate is judged over whole seconds.
    let busiest = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u - *t < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    println!("40 calls at DOJO_API_RATE=20: {took:?}, at most {busiest} in one second, closest two {closest:?}");
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(busiest <= 21, "{busiest} calls in one second");

    // 429 with Retry-After: 1 s, then healthy: the call waits as asked and succeeds.
    api.set_fault(Fault::TooManyRequests {
        retry_after_secs: 1,
    });
    let before = api.intent_calls().len();
    let started = Instant::now();
    let task = tokio::spawn({
        let pi = pi.clone();
        async move {
            let r = dojo.get_payment_intent(&creds("sk_a"), &pi).await;
            (r.is_ok(), started.elapsed())
        }
    });
    e2e::wait_until("the first 429", Duration::from_secs(5), || async {
        (api.intent_calls().len() > before).then_some(())
    })
    .await;
    api.set_fault(Fault::None);
    let (ok, waited) = task.await.unwrap();
    println!("429 Retry-After 1: answered after {waited:?}");
    assert!(ok && waited >= Duration::from_millis(950), "{waited:?}");
    // A Retry-After past DOJO_API_MAX_WAIT_MS ends the call with Dojo's ask.
    api.set_fault(Fault::TooManyRequests {
        retry_after_secs: 30,
    });
    let dojo = client(&api.url, 20);
    match dojo.get_payment_intent(&creds("sk_a"), &pi).await {
        Err(ApiError::Unavailable { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)))
        }
        other => panic!("{other:?}"),
    }
    api.stop().await;
}

/// An answer about another payment intent than the one asked for (a misbehaving proxy or
/// API) is refused, never stored under the id it names.
#[tokio::test]
async fn an_answer_for_another_intent_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 8192];
                let _ = socket.read(&mut request).await;
                let body = r#"{"id":"pi_other","status":"Captured","captureMode":"Auto"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let dojo = client(&url, 1000);
    match dojo.get_payment_intent(&creds("sk_a"), "pi_asked").await {
        Err(ApiError::Decode(m)) => {
            assert!(m.contains("pi_asked") && m.contains("pi_other"), "{m}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
