//! The payment feed under load: N SSE clients (tills) across L locations while events
//! flow end to end at a rate; commit-to-client latency, missed updates, and the
//! processor's resident memory.

use crate::procs;
use crate::stats::{self, percentiles};
use e2e::isolation::Services;
use simulator::run::{Options, Targets, Via};
use simulator::till::{follow, Received};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub async fn run(clients: usize, locations: usize, rate: f64, seconds: u64) -> anyhow::Result<()> {
    let services = Services::new().await?;
    let sims = simulator::locations::generate(locations, 9);
    let path = std::env::temp_dir().join(format!("bench-feed-{}.toml", std::process::id()));
    std::fs::write(&path, simulator::locations::to_toml(&sims, false))?;
    let file = path.to_string_lossy().into_owned();
    let env = [
        ("DOJO_LOCATIONS_FILE", file.as_str()),
        ("ENRICH_ENABLED", "false"),
        ("SWEEP_INTERVAL", "0"),
    ];
    let ingress = procs::ingress_with(&services, &env)?;
    let processor = procs::processor_with(&services, &env)?;
    ingress.ready().await?;
    processor.ready().await?;

    // Clients spread evenly over the locations, connected before the first event.
    let (stop, stopped) = watch::channel(false);
    let url = format!("{}/v1/payment-updates/stream", processor.url);
    let mut tills = Vec::new();
    for n in 0..clients {
        let l = &sims[n % sims.len()];
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(follow(
            url.clone(),
            l.feed_token.clone(),
            tx,
            stopped.clone(),
        ));
        tills.push((l.id.clone(), rx, Vec::<Received>::new()));
    }
    let idle_rss = processor.rss_mib();

    // About three events per payment.
    let per_location = ((rate * seconds as f64) / 3.0 / locations as f64).ceil() as usize;
    let scenario = simulator::locations::lifecycles(&sims, per_location.max(1), 0.0, 9);
    let targets = Targets {
        ws: None,
        http: None,
        locations: sims
            .iter()
            .map(|l| (l.account_id.clone(), l.target(Some(&ingress.url))))
            .collect(),
    };
    let options = Options {
        channels: vec![Via::Webhook],
        rate: Some(rate),
        concurrency: 256,
        doubling: 0.0,
        seed: 9,
        timeout: Duration::from_secs(30),
    };
    let anchor = (Instant::now(), chrono::Utc::now());
    let peak = std::cell::Cell::new(0.0f64);
    let sampling = async {
        loop {
            peak.set(peak.get().max(processor.rss_mib()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let report = tokio::select! {
        r = simulator::run::run(&scenario, &targets, &options) => r,
        _ = sampling => unreachable!("samples forever"),
    };
    let mut peak_rss = peak.get();
    let location_of: HashMap<&str, &str> = sims
        .iter()
        .map(|l| (l.account_id.as_str(), l.id.as_str()))
        .collect();
    let mut expected: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for e in &scenario.deliveries {
        expected
            .entry(location_of[e.account_id.as_str()])
            .or_default()
            .insert(
                &e.payment_intent_id,
                &scenario.expected[&e.payment_intent_id],
            );
    }

    // Wait (bounded) until every client has every final status of its location.
    let deadline = Instant::now() + Duration::from_secs(60);
    let complete = loop {
        peak_rss = peak_rss.max(processor.rss_mib());
        let mut complete = 0;
        for (location, rx, got) in &mut tills {
            while let Ok(r) = rx.try_recv() {
                got.push(r);
            }
            let mut last: HashMap<&str, &str> = HashMap::new();
            for r in got.iter() {
                if let (Some(pi), Some(s)) = (
                    r.update["paymentIntentId"].as_str(),
                    r.update["status"].as_str(),
                ) {
                    last.insert(pi, s);
                }
            }
            let want = &expected[location.as_str()];
            if want.iter().all(|(pi, s)| last.get(pi) == Some(s)) {
                complete += 1;
            }
        }
        if complete == tills.len() || Instant::now() > deadline {
            break complete;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop.send(true);

    let mut latency = stats::histogram();
    let (mut updates, mut out_of_order) = (0usize, 0usize);
    for (_, _, got) in &tills {
        updates += got.len();
        out_of_order += got.windows(2).filter(|w| w[0].seq >= w[1].seq).count();
        for r in got {
            let Some(committed) = r.update["committedAt"]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            else {
                continue;
            };
            let arrived =
                anchor.1 + chrono::Duration::from_std(r.at - anchor.0).unwrap_or_default();
            stats::record(
                &mut latency,
                (arrived - committed).to_std().unwrap_or_default(),
            );
        }
    }
    println!(
        "feed: {clients} SSE clients over {locations} locations, {rate:.0} events/s for {seconds} s: \
         {} sent, {} acknowledged, {} failed; {updates} updates delivered, {complete}/{clients} clients \
         with every final status, {out_of_order} out of order; commit to client {}; processor RSS idle with \
         the clients {idle_rss:.0} MiB, peak {peak_rss:.0} MiB",
        report.sent,
        report.acknowledged,
        report.failed,
        percentiles(&latency)
    );
    ingress.stop();
    processor.stop();
    let _ = std::fs::remove_file(&path);
    Ok(())
}
