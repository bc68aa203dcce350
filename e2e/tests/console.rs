//! The ops console (docs/CONSOLE.md), used the way support staff use it: in a real,
//! headless Chromium (Debian's, through chromedriver; `deploy/setup-browser.sh`).
//! After a simulator run with duplicates and disorder: a wrong login gets nothing; an
//! operator signs in, finds an event by id, reads its payment's timeline (every
//! delivery with its outcome, as the database has them), sees a poisoned message in
//! dead letters, repairs the cause and replays it, and sees it applied; a viewer cannot
//! replay; the audit shows who did what; the live tail shows a new payment.
//! With `UPDATE_SCREENSHOTS=1` the screenshots replace those in `docs/console/`.

mod support;

use chrono::Utc;
use e2e::browser::Browser;
use e2e::isolation::Services;
use e2e::wait_until;
use fantoccini::{Client, Locator};
use simulator::event::Event;
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

const ALICE: (&str, &str) = ("alice", "alice-token-0123456789");
const BOB: (&str, &str) = ("bob", "bob-token-9876543210");
const ACCOUNT: &str = "acc_console";

/// The text of the first element matching `css`, once one exists.
async fn text(client: &Client, css: &str) -> String {
    let c = client.clone();
    let css = css.to_owned();
    wait_until(&format!("an element {css}"), PATIENCE, || {
        let (c, css) = (c.clone(), css.clone());
        async move { c.find(Locator::Css(&css)).await.ok()?.text().await.ok() }
    })
    .await
}

/// Waits until the first `css` element's text contains `wanted` (reloading with `reload`).
async fn wait_text(client: &Client, css: &str, wanted: &str, reload: bool) -> String {
    let c = client.clone();
    wait_until(&format!("{css} showing {wanted:?}"), PATIENCE, || {
        let c = c.clone();
        async move {
            if reload {
                c.refresh().await.ok()?;
            }
            let t = c.find(Locator::Css(css)).await.ok()?.text().await.ok()?;
            t.contains(wanted).then_some(t)
        }
    })
    .await
}

/// Dojo's `payment_intent.created` of `pi`, as event `id`, acknowledged by ingress.
async fn deliver(ingress: &Running, id: &str, pi: &str) {
    let event = Event::new(id, "payment_intent.created", pi, "Created", Utc::now());
    let answer = dojo(ingress).webhook(&event.body()).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{id} acknowledged");
}

/// Waits until the dead-letter queue holds exactly the events `ids`.
async fn dead_letters_are(amqp: &str, ids: &[&str]) {
    let mut wanted: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    wanted.sort();
    wait_until(&format!("dead letters {ids:?}"), PATIENCE, || async {
        let mut got: Vec<String> = processor::dlq::list(amqp)
            .await
            .ok()?
            .letters
            .into_iter()
            .filter_map(|d| d.event_id)
            .collect();
        got.sort();
        (got == wanted).then_some(())
    })
    .await;
}

async fn sign_in(client: &Client, url: &str, (name, token): (&str, &str)) {
    client.goto(&format!("{url}/console/login")).await.unwrap();
    client
        .find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    client
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    client
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn sign_out(client: &Client) {
    client
        .find(Locator::Css(".who button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until("signed out", PATIENCE, || async {
        client
            .current_url()
            .await
            .ok()
            .filter(|u| u.path() == "/console/login")
    })
    .await;
}

/// Saves what the browser shows as `docs/console/{name}.png` (with UPDATE_SCREENSHOTS=1)
/// or in the temporary directory; checks it is a PNG.
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG of {name}");
    let dir = if std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console")
    } else {
        std::env::temp_dir().join("console-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn support_staff_find_a_payment_replay_a_repaired_dead_letter_and_viewers_cannot() {
    let services = Services::new().await.unwrap();
    let users = format!(
        "{}:operator:{},{}:viewer:{}",
        ALICE.0, ALICE.1, BOB.0, BOB.1
    );
    let ingress = ingress(&services, &[]);
    let metrics = format!("{}/metrics", ingress.url);
    let p = processor(
        &services,
        &[
            ("CONSOLE_USERS", &users),
            ("CONSOLE_INGRESS_METRICS", &metrics),
            ("ENRICH_ENABLED", "false"),
            ("SWEEP_INTERVAL", "0"),
            ("FEED_POLL_MS", "200"),
        ],
    )
    .await;
    ready(&ingress.url).await;
    let pool = p.worker.pool.clone();
    let url = p.running.url.clone();

    // Payments with duplicates (30%), channel doubling and late deliveries.
    let scenario = simulator::scenario::lifecycles(ACCOUNT, 30, 0.3, 21).with_late(0.1, 21);
    let targets = simulator::run::Targets {
        http: Some(dojo(&ingress)),
        ..Default::default()
    };
    let options = simulator::run::Options {
        channels: vec![simulator::run::Via::Webhook, simulator::run::Via::Rest],
        rate: None,
        concurrency: 8,
        doubling: 0.2,
        seed: 21,
        timeout: Duration::from_secs(10),
    };
    let report = simulator::run::run(&scenario, &targets, &options).await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    p.settled(report.sent).await;
    // Every delivery is on record: the first of each event in dojo_events, each later
    // one in dojo_event_duplicates (kept in its batch's transaction, or just after its ack).
    wait_until("every delivery recorded", PATIENCE, || async {
        let recorded = count(&pool, "SELECT count(*) FROM dojo_events").await
            + count(&pool, "SELECT count(*) FROM dojo_event_duplicates").await;
        (recorded == report.sent as i64).then_some(())
    })
    .await;

    // A payment that was delivered more than once, and its deliveries as stored.
    let pi: String = sqlx::query_scalar(
        "SELECT payment_intent_id FROM dojo_event_duplicates GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("the run had duplicate deliveries");
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    let firsts: Vec<(String, String)> =
        sqlx::query_as("SELECT event_id, outcome FROM dojo_events WHERE payment_intent_id = $1")
            .bind(&pi)
            .fetch_all(&pool)
            .await
            .unwrap();
    for (_, outcome) in &firsts {
        *stored.entry(outcome.clone()).or_default() += 1;
    }
    let duplicates = count(
        &pool,
        &format!("SELECT count(*) FROM dojo_event_duplicates WHERE payment_intent_id = '{pi}'"),
    )
    .await as usize;
    stored.insert("duplicate".into(), duplicates);
    let event_id = firsts[0].0.clone();

    let browser = Browser::start()
        .await
        .expect("chromium (deploy/setup-browser.sh)");
    let client = browser.client.clone();

    // A wrong login gets nothing: the form again, and every page still asks to sign in.
    client.goto(&format!("{url}/console")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/console/login");
    sign_in(&client, &url, (ALICE.0, "not-alices-token-at-all")).await;
    assert_eq!(text(&client, "#login-error").await, "Wrong name or token.");
    client.goto(&format!("{url}/console/events")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/console/login");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let refused = http
        .post(format!("{url}/console/login"))
        .form(&[("name", ALICE.0), ("token", "wrong-token-0000000")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    let forged = http
        .get(format!("{url}/console/events"))
        .header("cookie", "dojo_console=alice:operator:9999999999")
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status().as_u16(),
        303,
        "an unsigned cookie is no session"
    );

    // The operator signs in and finds the event by its id.
    sign_in(&client, &url, ALICE).await;
    assert_eq!(text(&client, "#signed-in").await, "alice (operator)");
    screenshot(&client, "overview").await;
    client.goto(&format!("{url}/console/events")).await.unwrap();
    let search = client.find(Locator::Id("search")).await.unwrap();
    search.send_keys(&event_id).await.unwrap();
    client
        .find(Locator::Id("apply-filters"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let found = wait_text(&client, "#events tbody", &event_id, false).await;
    assert!(found.contains(&pi), "{found}");
    screenshot(&client, "events").await;

    // Its payment's timeline: every delivery, with the outcomes the database recorded.
    client
        .find(Locator::LinkText(&pi))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "#payment-id", &pi, false).await;
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    for cell in client
        .find_all(Locator::Css("#timeline tr.kind-delivery td.outcome"))
        .await
        .unwrap()
    {
        *shown.entry(cell.text().await.unwrap()).or_default() += 1;
    }
    println!("timeline of {pi}: {shown:?} (database: {stored:?})");
    assert_eq!(shown, stored.into_iter().filter(|(_, n)| *n > 0).collect());
    assert!(shown["duplicate"] >= 1 && shown["applied"] >= 1);
    assert_eq!(
        text(&client, "#payment-status").await,
        scenario.expected[&pi],
        "the record's final status"
    );
    screenshot(&client, "payment").await;

    // A poisoned message: the database refuses this one event (a fault for an operator).
    sqlx::query("ALTER TABLE dojo_events ADD CONSTRAINT no_evil CHECK (event_id <> 'evt_evil')")
        .execute(&pool)
        .await
        .unwrap();
    deliver(&ingress, "evt_evil", "pi_evil").await;
    let amqp = services.vhost.amqp_url();
    dead_letters_are(&amqp, &["evt_evil"]).await;
    client
        .goto(&format!("{url}/console/dead-letters"))
        .await
        .unwrap();
    let listed = wait_text(&client, "#dead-letters tbody", "evt_evil", false).await;
    assert!(
        listed.contains("no_evil"),
        "the reason names the cause: {listed}"
    );
    screenshot(&client, "dead-letters").await;

    // A viewer sees it but cannot replay: no button, and the server refuses the form.
    sign_out(&client).await;
    sign_in(&client, &url, BOB).await;
    assert_eq!(text(&client, "#signed-in").await, "bob (viewer)");
    client
        .goto(&format!("{url}/console/dead-letters"))
        .await
        .unwrap();
    wait_text(&client, "#dead-letters tbody", "evt_evil", false).await;
    assert!(client
        .find_all(Locator::Css("button.replay"))
        .await
        .unwrap()
        .is_empty());
    let session = client.get_named_cookie("dojo_console").await.unwrap();
    let viewer = http
        .post(format!("{url}/console/dead-letters/replay"))
        .header("cookie", format!("dojo_console={}", session.value()))
        .form(&[("event_id", "evt_evil")])
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status().as_u16(), 403);
    assert_eq!(
        processor::dlq::list(&amqp).await.unwrap().letters.len(),
        1,
        "still dead"
    );
    sign_out(&client).await;

    // The operator repairs the cause, replays it, and sees it applied.
    sqlx::query("ALTER TABLE dojo_events DROP CONSTRAINT no_evil")
        .execute(&pool)
        .await
        .unwrap();
    sign_in(&client, &url, ALICE).await;
    text(&client, "#signed-in").await;
    client
        .goto(&format!("{url}/console/dead-letters"))
        .await
        .unwrap();
    client
        .find(Locator::Css("button.replay[data-event='evt_evil']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text(&client, "#replay-done").await,
        "Replayed 1 (event evt_evil)."
    );
    client
        .goto(&format!("{url}/console/payments/pi_evil"))
        .await
        .unwrap();
    wait_text(&client, "#payment-status", "Created", true).await;
    assert!(processor::dlq::list(&amqp)
        .await
        .unwrap()
        .letters
        .is_empty());

    // Bulk replay: two more poisoned, repaired, then "Replay all" says how many and asks.
    sqlx::query(
        "ALTER TABLE dojo_events ADD CONSTRAINT no_bulk CHECK (event_id NOT LIKE 'evt_bulk_%')",
    )
    .execute(&pool)
    .await
    .unwrap();
    deliver(&ingress, "evt_bulk_1", "pi_bulk_1").await;
    deliver(&ingress, "evt_bulk_2", "pi_bulk_2").await;
    dead_letters_are(&amqp, &["evt_bulk_1", "evt_bulk_2"]).await;
    sqlx::query("ALTER TABLE dojo_events DROP CONSTRAINT no_bulk")
        .execute(&pool)
        .await
        .unwrap();
    client
        .goto(&format!("{url}/console/dead-letters"))
        .await
        .unwrap();
    client
        .find(Locator::Id("replay-all"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text(&client, "#replay-count")
        .await
        .starts_with("2 dead letters would be replayed"));
    // One more dies while the operator reads the confirmation: not part of what they
    // confirmed, so not replayed.
    sqlx::query("ALTER TABLE dojo_events ADD CONSTRAINT no_late CHECK (event_id <> 'evt_late')")
        .execute(&pool)
        .await
        .unwrap();
    deliver(&ingress, "evt_late", "pi_late").await;
    dead_letters_are(&amqp, &["evt_bulk_1", "evt_bulk_2", "evt_late"]).await;
    client
        .find(Locator::Id("confirm-replay-all"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text(&client, "#replay-done").await,
        "Replayed 2 (the 2 dead letters confirmed)."
    );
    let left: Vec<Option<String>> = processor::dlq::list(&amqp)
        .await
        .unwrap()
        .letters
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    assert_eq!(
        left,
        [Some("evt_late".to_owned())],
        "only what was confirmed"
    );
    wait_until("both applied", PATIENCE, || async {
        let n = count(
            &pool,
            "SELECT count(*) FROM dojo_events WHERE event_id LIKE 'evt_bulk_%' AND outcome = 'applied'",
        )
        .await;
        (n == 2).then_some(())
    })
    .await;

    // The audit: who did what.
    client.goto(&format!("{url}/console/audit")).await.unwrap();
    let audit = text(&client, "#audit tbody").await;
    for line in ["sign in refused", "replay", "replayed"] {
        assert!(audit.contains(line), "{line} in {audit}");
    }
    let replays = count(
        &pool,
        "SELECT count(*) FROM console_audit WHERE actor = 'alice' AND action = 'replayed' AND detail = '1 replayed'",
    )
    .await;
    assert_eq!(replays, 1, "the single replay");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM console_audit WHERE actor = 'bob' AND action IN ('replay', 'replayed')"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM console_audit WHERE actor = 'bob' AND action = 'replay refused'"
        )
        .await,
        1,
        "the viewer's refused replay is audited"
    );

    // Input no record can match is a 400 that says why, never a 5xx.
    let session = client.get_named_cookie("dojo_console").await.unwrap();
    let long = "x".repeat(300);
    for path in [
        "/console/payments/pi_%00".to_owned(),
        "/console/events?q=%00".to_owned(),
        "/console/live/stream?location=%00".to_owned(),
        format!("/console/events?q={long}"),
        "/console/events?after=garbage".to_owned(),
        "/console/events?from=yesterday".to_owned(),
    ] {
        let answer = http
            .get(format!("{url}{path}"))
            .header("cookie", format!("dojo_console={}", session.value()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{path}");
        let page = answer.text().await.unwrap();
        assert!(!page.contains("database"), "{path}: {page}");
    }

    // The live tail shows a payment as it is committed.
    client.goto(&format!("{url}/console/live")).await.unwrap();
    wait_text(&client, "#live-state", "Following", false).await;
    deliver(&ingress, "evt_live", "pi_live").await;
    wait_text(&client, "#live tbody", "pi_live", false).await;
    screenshot(&client, "live").await;

    browser.close().await;
    p.running.stop().await;
    ingress.stop().await;
}
