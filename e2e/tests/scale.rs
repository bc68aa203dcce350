//! Scaling out keeps every guarantee: three processors and two ingresses on the same
//! broker, Redis and database, 5,000 deliveries with heavy duplication and disorder.

mod support;

use e2e::isolation::Services;
use e2e::wait_until;
use futures::StreamExt;
use simulator::scenario::lifecycles;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processors_and_two_ingresses_apply_every_event_once() {
    let services = Services::new().await.unwrap();
    let ingresses = [ingress(&services, &[]), ingress(&services, &[])];
    let mut processors = Vec::new();
    for _ in 0..3 {
        processors.push(processor(&services, &[]).await);
    }
    for i in &ingresses {
        ready(&i.url).await;
    }
    let dojos = [dojo(&ingresses[0]), dojo(&ingresses[1])];

    // Half of the events twice, all shuffled, late ones at the end: 5,000 deliveries.
    let scenario = lifecycles("acc_scale", 1300, 0.5, 5000)
        .with_late(0.05, 5000)
        .truncate(5000);
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(scenario.deliveries.iter().enumerate())
        .map(|(i, e)| {
            let dojo = &dojos[i % 2];
            async move {
                let body = e.body();
                let r = if i % 3 == 0 {
                    dojo.rest(&body).await
                } else {
                    dojo.webhook(&body).await
                };
                r.unwrap().status().as_u16()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let accepted = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200));

    let settled = || {
        processors
            .iter()
            .map(|p| p.worker.settled.load(Ordering::SeqCst))
            .sum::<u64>()
    };
    wait_until(
        "every delivery settled",
        Duration::from_secs(120),
        || async { (settled() >= scenario.deliveries.len() as u64).then_some(()) },
    )
    .await;
    let drained = started.elapsed();
    let shares: Vec<u64> = processors
        .iter()
        .map(|p| p.worker.settled.load(Ordering::SeqCst))
        .collect();
    assert!(
        shares.iter().all(|n| *n > 0),
        "every processor took work: {shares:?}"
    );

    let pool = services.db.pool().await.unwrap();
    assert_final_states(&pool, &scenario).await;
    println!(
        "scale: {} deliveries ({} distinct) through 2 ingresses accepted in {:.2}s ({:.0}/s), applied by 3 processors {shares:?} in {:.2}s ({:.0}/s)",
        scenario.deliveries.len(),
        scenario.distinct,
        accepted.as_secs_f64(),
        scenario.deliveries.len() as f64 / accepted.as_secs_f64(),
        drained.as_secs_f64(),
        scenario.deliveries.len() as f64 / drained.as_secs_f64(),
    );
    for p in processors {
        p.running.stop().await;
    }
    for i in ingresses {
        i.stop().await;
    }
}
