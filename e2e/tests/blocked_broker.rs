//! RabbitMQ blocks publishers during a memory or disk alarm (both are raised here, one
//! after the other). Ingress then says it is
//! not ready and refuses deliveries at once (503), rather than making each wait the
//! whole confirm timeout; when the alarm clears it accepts again by itself. On a
//! private node: an alarm is node-wide and would block every other test.

mod support;

use chrono::Utc;
use e2e::isolation::Services;
use e2e::private_broker::PrivateBroker;
use e2e::wait_until;
use simulator::event::Event;
use std::time::{Duration, Instant};
use support::*;

const CONFIRM_TIMEOUT_MS: u64 = 3000;

fn created(i: usize) -> String {
    let pi = format!("pi_alarm_{i}");
    Event::new(
        &format!("evt_alarm_{i}"),
        "payment_intent.created",
        &pi,
        "Created",
        Utc::now(),
    )
    .body()
}

async fn readyz(url: &str) -> u16 {
    reqwest::get(format!("{url}/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_makes_ingress_unready_and_refuse_at_once_until_it_clears() {
    let broker = tokio::task::spawn_blocking(PrivateBroker::start)
        .await
        .unwrap()
        .expect("a private RabbitMQ node");
    let services = Services::new().await.unwrap();
    let amqp = broker.amqp_url();
    let timeout = CONFIRM_TIMEOUT_MS.to_string();
    let ingress = ingress(
        &services,
        &[
            ("AMQP_URL", &amqp),
            ("INGRESS_PUBLISH_TIMEOUT_MS", &timeout),
        ],
    );
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    assert_eq!(dojo.webhook(&created(0)).await.unwrap().status(), 200);

    // Both of RabbitMQ's resource alarms block publishers the same way.
    type Alarm = fn(&PrivateBroker, bool) -> anyhow::Result<()>;
    let alarms: [(&str, Alarm); 2] = [
        ("memory", PrivateBroker::memory_alarm),
        ("disk", PrivateBroker::disk_alarm),
    ];
    for (round, (name, alarm)) in alarms.into_iter().enumerate() {
        let n = 100 * (round + 1);
        alarm(&broker, true).unwrap();
        // The first delivery may be the one that meets the block.
        let _ = dojo.webhook(&created(n + 1)).await.unwrap();
        wait_until("ingress not ready while blocked", PATIENCE, || async {
            (readyz(&ingress.url).await == 503).then_some(())
        })
        .await;
        for i in n + 2..n + 7 {
            let started = Instant::now();
            let status = dojo.webhook(&created(i)).await.unwrap().status();
            let took = started.elapsed();
            assert_eq!(status, 503, "{name} alarm");
            assert!(
                took < Duration::from_millis(CONFIRM_TIMEOUT_MS / 3),
                "{name} alarm: {took:?}"
            );
            println!("{name} alarm: 503 in {took:?} (confirm timeout {CONFIRM_TIMEOUT_MS} ms)");
        }
        assert_eq!(readyz(&ingress.url).await, 503, "{name} alarm");

        alarm(&broker, false).unwrap();
        ready(&ingress.url).await;
        assert_eq!(
            dojo.webhook(&created(n + 10)).await.unwrap().status(),
            200,
            "{name} alarm cleared"
        );
    }
    ingress.stop().await;
}
