//! Poison messages reach the dead-letter queue with their reason; `processor dlq list`
//! shows them; `processor dlq replay` brings a repaired message back, exactly once.

mod support;

use chrono::Utc;
use e2e::isolation::Services;
use e2e::wait_until;
use simulator::Event;
use std::time::Duration;
use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_a_repaired_one_is_replayed_exactly_once() {
    let services = Services::new().await.unwrap();
    let processor = start(&services);
    let pool = wait_until("migrations", PATIENCE, || async {
        let pool = services.db.pool().await.ok()?;
        sqlx::query("SELECT 1 FROM dojo_events LIMIT 1")
            .execute(&pool)
            .await
            .ok()?;
        Some(pool)
    })
    .await;
    // A fault only an operator can fix: the database refuses one event.
    sqlx::query("ALTER TABLE dojo_events ADD CONSTRAINT no_evil CHECK (event_id <> 'evt_evil')")
        .execute(&pool)
        .await
        .unwrap();
    let evil = Event::new(
        "evt_evil",
        "payment_intent.created",
        "pi_evil",
        "Created",
        Utc::now(),
    );
    let good = Event::new(
        "evt_good",
        "payment_intent.created",
        "pi_good",
        "Created",
        Utc::now(),
    );
    publish(
        &services,
        &[
            ("garbage".into(), b"\xde\xad not json".to_vec()),
            (evil.id.clone(), envelope(evil.body())),
            (good.id.clone(), envelope(good.body())),
        ],
    )
    .await;
    wait_until("two dead letters", PATIENCE, || async {
        (services
            .vhost
            .ready_messages(common::topology::DEAD_QUEUE)
            .await
            .ok()?
            == 2)
            .then_some(())
    })
    .await;

    let listed = stdout(&run(&services, &["dlq", "list"]).await);
    assert!(
        listed.starts_with("2 dead letter(s) in dojo.events.dead"),
        "{listed}"
    );
    assert!(
        listed.contains("evt_evil") && listed.contains("database rejected the event"),
        "{listed}"
    );
    assert!(
        listed.contains("garbage") && listed.contains("not JSON"),
        "{listed}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&services, &["dlq", "list", "--json"]).await)).unwrap();
    assert_eq!(json["count"], 2);
    assert_eq!(json["held"], 2);
    assert!(json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["firstFailure"].is_string()));
    // Listing removed nothing.
    assert_eq!(
        services
            .vhost
            .ready_messages(common::topology::DEAD_QUEUE)
            .await
            .unwrap(),
        2
    );

    // Replayed before the cause is repaired, it dies again, and still shows when it
    // first failed (not when the replay failed).
    let evil_in = |listing: &serde_json::Value| {
        listing["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["eventId"] == "evt_evil")
            .cloned()
    };
    let before = evil_in(&json).expect("evt_evil listed");
    let replayed = stdout(&run(&services, &["dlq", "replay", "--event-id", "evt_evil"]).await);
    assert!(
        replayed.starts_with("replayed 1 dead letter(s)"),
        "{replayed}"
    );
    let again = wait_until("evt_evil dead again", PATIENCE, || async {
        let listing: serde_json::Value =
            serde_json::from_str(&stdout(&run(&services, &["dlq", "list", "--json"]).await))
                .ok()?;
        evil_in(&listing).filter(|m| m["deadAt"] != before["deadAt"])
    })
    .await;
    assert!(before["firstFailure"].is_string(), "{before}");
    assert_eq!(again["firstFailure"], before["firstFailure"], "{again}");

    // The operator repairs the cause, then replays that event.
    sqlx::query("ALTER TABLE dojo_events DROP CONSTRAINT no_evil")
        .execute(&pool)
        .await
        .unwrap();
    let replayed = stdout(&run(&services, &["dlq", "replay", "--event-id", "evt_evil"]).await);
    assert!(
        replayed.starts_with("replayed 1 dead letter(s)"),
        "{replayed}"
    );
    wait_until("the repaired event applied", PATIENCE, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dojo_events WHERE event_id = 'evt_evil'")
                .fetch_one(&pool)
                .await
                .ok()?;
        (n == 1).then_some(())
    })
    .await;
    // Again: nothing left to replay for it, which it says (exit 1, not a silent 0: an
    // operator's typo must not look like success); the garbage stays parked.
    let again = run(&services, &["dlq", "replay", "--event-id", "evt_evil"]).await;
    assert_eq!(again.status.code(), Some(1));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("no dead letter of event evt_evil in dojo.events.dead"),
        "{said}"
    );
    let listed = stdout(&run(&services, &["dlq", "list"]).await);
    assert!(listed.starts_with("1 dead letter(s)"), "{listed}");

    // Garbage no processor will ever take is discarded after inspection.
    let discarded = stdout(&run(&services, &["dlq", "discard", "--event-id", "garbage"]).await);
    assert!(
        discarded.starts_with("discarded 1 dead letter(s) of event garbage"),
        "{discarded}"
    );
    let listed = stdout(&run(&services, &["dlq", "list"]).await);
    assert!(listed.starts_with("0 dead letter(s)"), "{listed}");

    assert!(terminate(processor).success());
    let status: String = sqlx::query_scalar(
        "SELECT status FROM payment_intents WHERE payment_intent_id = 'pi_evil'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "Created");
    assert_eq!(applied(&pool).await, 2, "evt_good and evt_evil, once each");
}
