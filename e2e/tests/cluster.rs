//! The real broker cluster: three RabbitMQ nodes on this machine (`e2e::cluster`), the
//! services connected with every node in `AMQP_URL`, 1,000 events/s through ingress,
//! and a node stopped (the work queue's leader), restarted one after the other, and
//! frozen as in a partition. Each time: no acknowledged event lost, none applied twice,
//! refusals (503) rather than acknowledgements while the broker cannot confirm, and
//! both services carry on without a restart.

mod support;

use chrono::Utc;
use common::topology::PROCESSOR_QUEUE;
use e2e::cluster::Cluster;
use e2e::isolation::Services;
use e2e::wait_until;
use simulator::{Dojo, Event};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const RATE: u64 = 1000;

/// How long after a fault ends ingress may take to acknowledge again.
const RECOVERY: Duration = Duration::from_secs(90);

/// Something done to the cluster (off the async runtime: `rabbitmqctl` blocks).
type ClusterStep = Box<dyn FnOnce(&Cluster) -> anyhow::Result<()> + Send>;

/// One delivery: its event id, when it was answered, and whether it was acknowledged
/// (else why not: the status and the start of ingress's answer, or the transport error).
struct Answer {
    id: String,
    at: Instant,
    ok: bool,
    why: Option<String>,
}

/// What ingress answered to one webhook: `None` for an acknowledgement (200).
async fn refusal(dojo: &Dojo, body: &str) -> Option<String> {
    match dojo.webhook(body).await {
        Ok(r) if r.status() == 200 => None,
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            Some(format!(
                "{status} {}",
                text.chars().take(90).collect::<String>()
            ))
        }
        Err(e) => Some(format!("transport: {e}")),
    }
}

/// Sends fresh `created` events at [`RATE`] per second until `stop`, and returns once
/// ingress has acknowledged half a second's worth (the stream flows before any fault).
async fn stream(
    dojo: Dojo,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Answer>> {
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let task = tokio::spawn({
        let answers = answers.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let mut sends = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let (dojo, answers) = (dojo.clone(), answers.clone());
                sends.spawn(async move {
                    let id = format!("evt_{prefix}_{n}");
                    let body = Event::new(
                        &id,
                        "payment_intent.created",
                        &format!("pi_{prefix}_{n}"),
                        "Created",
                        Utc::now(),
                    )
                    .body();
                    let why = refusal(&dojo, &body).await;
                    answers.lock().unwrap().push(Answer {
                        id,
                        at: Instant::now(),
                        ok: why.is_none(),
                        why,
                    });
                });
                while sends.try_join_next().is_some() {}
            }
            while sends.join_next().await.is_some() {}
            std::mem::take(&mut *answers.lock().unwrap())
        }
    });
    wait_until(
        &format!("{prefix}: the stream acknowledged"),
        PATIENCE,
        || {
            let acked = answers.lock().unwrap().iter().filter(|a| a.ok).count();
            async move { (acked as u64 >= RATE / 2).then_some(()) }
        },
    )
    .await;
    task
}

/// Checks and prints one scenario: every acknowledged event applied once.
async fn verify(
    name: &str,
    answers: &[Answer],
    fault_at: Instant,
    pool: &sqlx::PgPool,
    prefix: &str,
) {
    let acked: HashSet<&str> = answers
        .iter()
        .filter(|a| a.ok)
        .map(|a| a.id.as_str())
        .collect();
    let refused = answers.len() - acked.len();
    let acked_after_fault = answers.iter().filter(|a| a.ok && a.at > fault_at).count();
    let last_refusal = answers
        .iter()
        .filter(|a| !a.ok && a.at > fault_at)
        .map(|a| a.at)
        .max();
    let recovered_in = last_refusal.map_or(Duration::ZERO, |t| t - fault_at);
    let like = format!("evt_{prefix}_%");
    let stored = || async {
        sqlx::query_scalar::<_, String>("SELECT event_id FROM dojo_events WHERE event_id LIKE $1")
            .bind(&like)
            .fetch_all(pool)
            .await
            .unwrap()
    };
    // Every acknowledged event applied, or two minutes passed (then `lost` says how many not).
    let deadline = Instant::now() + Duration::from_secs(120);
    let rows = loop {
        let rows = stored().await;
        let have: HashSet<&str> = rows.iter().map(String::as_str).collect();
        if acked.iter().all(|id| have.contains(id)) || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let applied: HashSet<&str> = rows.iter().map(String::as_str).collect();
    let lost = acked.difference(&applied).count();
    let doubled = rows.len() - applied.len();
    let invented = applied.difference(&acked).count();
    println!(
        "{name}: sent {}, acknowledged {}, refused {refused}, applied {}, lost {lost}, doubled {doubled}, acknowledged after the fault {acked_after_fault}, last refusal {recovered_in:?} after the fault",
        answers.len(), acked.len(), applied.len()
    );
    let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
    for why in answers.iter().filter_map(|a| a.why.as_deref()) {
        *reasons.entry(why).or_default() += 1;
    }
    println!("{name}: refusals by answer: {reasons:?}");
    assert_eq!(lost, 0, "{name}: acknowledged events lost");
    assert_eq!(doubled, 0, "{name}: applied twice");
    // A refused event may still have been stored (confirm lost in the election): that is
    // Dojo's retry made early, never a loss; but nothing that was never sent.
    assert!(
        applied.iter().all(|id| answers.iter().any(|a| a.id == *id)),
        "{name}: {invented} unknown events"
    );
    assert!(
        acked_after_fault > 0,
        "{name}: ingress never acknowledged again during the fault"
    );
}

/// Waits (at most [`RECOVERY`]) until ingress acknowledges a fresh event again after the
/// fault of scenario `slug`, so the next scenario starts on a working cluster; prints how
/// long that took. On timeout, fails with ingress's last answer, its readiness (which
/// names its broker state) and the work queue's members as RabbitMQ lists them.
async fn acknowledging_again(slug: &str, ingress: &str, dojo: &Dojo, cluster: &Arc<Cluster>) {
    let started = Instant::now();
    let mut last = None;
    for n in 0.. {
        let body = Event::new(
            &format!("evt_probe_{slug}_{n}"),
            "payment_intent.created",
            &format!("pi_probe_{slug}_{n}"),
            "Created",
            Utc::now(),
        )
        .body();
        match refusal(dojo, &body).await {
            None => {
                println!(
                    "{slug}: ingress acknowledging {:?} after the scenario ended",
                    started.elapsed()
                );
                return;
            }
            Some(why) if started.elapsed() > RECOVERY => {
                last = Some(why);
                break;
            }
            Some(why) => last = Some(why),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = cluster.clone();
    let queue = tokio::task::spawn_blocking(move || c.queue_state(PROCESSOR_QUEUE))
        .await
        .unwrap();
    let readiness = match reqwest::get(format!("{ingress}/readyz")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    panic!("{slug}: ingress not acknowledging {RECOVERY:?} after the scenario; last answer {last:?}; readiness {readiness}; work queue: {queue:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_nothing_through_a_leader_stop_a_rolling_restart_and_a_partition(
) {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let cluster = Arc::new(cluster);
    let services = Services::new().await.unwrap();
    let url = cluster.amqp_url();
    let ingress = ingress(
        &services,
        &[
            ("AMQP_URL", &url),
            ("INGRESS_PUBLISH_TIMEOUT_MS", "2000"),
            ("INGRESS_RECONNECT_MAX_MS", "1000"),
        ],
    );
    let processor = processor(&services, &[("AMQP_URL", &url)]).await;
    ready(&ingress.url).await;
    let c = cluster.clone();
    wait_until("the work queue on three nodes", PATIENCE, || {
        let c = c.clone();
        async move { (c.online_members(PROCESSOR_QUEUE).ok()? == 3).then_some(()) }
    })
    .await;
    let pool = services.db.pool().await.unwrap();
    let dojo = dojo(&ingress);
    let blocking = |f: ClusterStep| {
        let c = cluster.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&c))
                .await
                .unwrap()
                .unwrap()
        }
    };

    // 1. The node leading dojo.events.processor stops for good (until the end of the stream).
    let leader = cluster.leader_of(PROCESSOR_QUEUE).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = stream(dojo.clone(), "leader", stop.clone()).await;
    let fault = Instant::now();
    blocking(Box::new(move |c| c.stop(leader))).await;
    tokio::time::sleep(Duration::from_secs(8)).await; // the node stays down this long
    stop.store(true, Ordering::SeqCst);
    let answers = load.await.unwrap();
    verify("leader stopped", &answers, fault, &pool, "leader").await;
    blocking(Box::new(move |c| c.restart(leader))).await;
    acknowledging_again("leader", &ingress.url, &dojo, &cluster).await;

    // 2. Rolling restart: each node stopped and started again, one after the other.
    let stop = Arc::new(AtomicBool::new(false));
    let load = stream(dojo.clone(), "rolling", stop.clone()).await;
    let fault = Instant::now();
    for i in 0..3 {
        blocking(Box::new(move |c| c.stop(i))).await;
        tokio::time::sleep(Duration::from_secs(2)).await; // down for a moment, as in a restart
        blocking(Box::new(move |c| c.restart(i))).await;
        let c = cluster.clone();
        wait_until(
            "the work queue back on three nodes",
            Duration::from_secs(60),
            || {
                let c = c.clone();
                async move {
                    (tokio::task::spawn_blocking(move || c.online_members(PROCESSOR_QUEUE))
                        .await
                        .ok()?
                        .ok()?
                        == 3)
                        .then_some(())
                }
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let answers = load.await.unwrap();
    verify("rolling restart", &answers, fault, &pool, "rolling").await;
    acknowledging_again("rolling", &ingress.url, &dojo, &cluster).await;

    // 3. A partition: one node frozen (SIGSTOP), unreachable to its peers and clients.
    let frozen = cluster.leader_of(PROCESSOR_QUEUE).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = stream(dojo.clone(), "partition", stop.clone()).await;
    let fault = Instant::now();
    cluster.pause(frozen).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await; // partitioned this long
    cluster.resume(frozen).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let answers = load.await.unwrap();
    verify("partition", &answers, fault, &pool, "partition").await;
    acknowledging_again("partition", &ingress.url, &dojo, &cluster).await;

    // Both services carried on without a restart.
    ready(&ingress.url).await;
    assert!(processor.worker.consuming.load(Ordering::SeqCst));
    ingress.stop().await;
    processor.running.stop().await;
}
