//! `dojo-simulator`: drive a running ingress as Dojo would, and check the outcome.
//!
//! ```text
//! dojo-simulator run --ingress http://127.0.0.1:8080 --ws-listen 127.0.0.1:9000 \
//!     --intents 200 --verify-url http://127.0.0.1:8081 --tills http://127.0.0.1:8081
//! dojo-simulator fake-api --listen 127.0.0.1:9100
//! ```

use clap::{Parser, Subcommand};
use simulator::run::{Options, Targets, Via};
use simulator::{scenario, verify, ws::DojoWs, Dojo};
use std::time::Duration;

/// A fraction from 0 to 1 (`--duplicates`, `--doubling`, `--lose`, `--late`).
fn fraction(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err("must be from 0 to 1".into())
    }
}

/// Deliveries per second: more than 0, at most a million.
fn positive_rate(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if x > 0.0 && x <= 1e6 {
        Ok(x)
    } else {
        Err("must be more than 0 and at most 1000000".into())
    }
}

#[derive(Parser)]
#[command(
    name = "dojo-simulator",
    version,
    about = "A stand-in for Dojo: sends payment events and checks they land"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate payment lifecycles and deliver them over WebSocket, webhooks and REST.
    Run(Box<RunArgs>),
    /// Print the locations file of `--count` simulated locations (the same ones
    /// `run --locations N` plays): start ingress with it as DOJO_LOCATIONS_FILE.
    Locations {
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Give every location a WebSocket (`websocket = true`).
        #[arg(long)]
        websocket: bool,
    },
    /// Serve a fake of Dojo's registration API (for trying `ingress register`).
    FakeApi {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Ingress base URL, for webhooks and REST.
    #[arg(long)]
    ingress: Option<String>,
    /// Act as Dojo's WebSocket endpoint on this address and wait for ingress to connect
    /// (start ingress with DOJO_WS_URL=ws://ADDR/epos).
    #[arg(long)]
    ws_listen: Option<String>,
    /// API key the WebSocket handshake must present (any, if unset).
    #[arg(long, env = "DOJO_API_KEY", hide_env_values = true)]
    ws_api_key: Option<String>,
    /// Webhook signing secret (the first of DOJO_WEBHOOK_SECRETS; default: Dojo's
    /// published test secret, as deploy/run-local.sh uses).
    #[arg(
        long,
        env = "DOJO_WEBHOOK_SECRETS",
        hide_env_values = true,
        hide_default_value = true,
        default_value = simulator::event::DOC_SECRET
    )]
    webhook_secret: String,
    #[arg(long, env = "DOJO_REST_USERNAME", default_value = "dojo")]
    rest_username: String,
    /// REST password (default: deploy/run-local.sh's).
    #[arg(
        long,
        env = "DOJO_REST_PASSWORD",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "change-me"
    )]
    rest_password: String,
    /// Seconds to wait for ingress's WebSocket(s) with --ws-listen (ingress retries with
    /// a backoff of up to 30 s, so the default outlasts one full pause).
    #[arg(long, default_value_t = 45)]
    ws_wait: u64,
    /// Channels to use (default: every one configured above).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<Via>,
    #[arg(long, default_value_t = 100)]
    intents: usize,
    #[arg(long, default_value = "acc_simulator")]
    account: String,
    /// Play N locations (those of `dojo-simulator locations --count N`): each location's
    /// --intents payments go over its own socket, routes and secrets.
    #[arg(long)]
    locations: Option<usize>,
    /// Fraction of events delivered twice.
    #[arg(long, default_value_t = 0.3, value_parser = fraction)]
    duplicates: f64,
    /// Fraction of deliveries also sent over a second channel.
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    doubling: f64,
    /// Fraction of distinct events never sent on any channel (lost for good). The
    /// processor repairs them from the Dojo API of --api-listen: its details fetches and
    /// sweeps fix intents it knows; only a sweep with a locations file also finds intents
    /// it never heard of (docs/OPERATIONS.md). The simulator starts no sweep: run
    /// `processor reconcile` while it still serves the API.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    lose: f64,
    /// Serve Dojo's payment-intent API here (GET /payment-intents/{id}, POST
    /// /payment-intents/search) over the generated payments: point the processor's
    /// DOJO_API_URL at it. Keys: each location's, or --ws-api-key (default sk_sandbox_demo).
    #[arg(long)]
    api_listen: Option<String>,
    /// Fraction of deliveries held back to the end (late retries).
    #[arg(long, default_value_t = 0.05, value_parser = fraction)]
    late: f64,
    /// Deliveries per second (open loop); unset: as fast as --concurrency allows.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Processor base URL: check every intent's final status through its read API.
    #[arg(long)]
    verify_url: Option<String>,
    /// Bearer token of the read API (default: deploy/run-local.sh's).
    #[arg(
        long,
        env = "PROCESSOR_API_TOKEN",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "change-me"
    )]
    api_token: String,
    /// Processor base URL: before sending, subscribe one till per location (with its
    /// feed token; without --locations, one with --api-token) to the payment feed, and
    /// report whether each payment's final status reached its till, in order, and how
    /// late (commit to till, p50/p99).
    #[arg(long)]
    tills: Option<String>,
    /// Write the JSON report here as well.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args).await,
        Command::FakeApi { listen } => fake_api(&listen).await,
        Command::Locations { count, websocket } => {
            print!(
                "{}",
                simulator::locations::to_toml(&simulator::locations::generate(count, 1), websocket)
            );
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("dojo-simulator: {e:#}");
        std::process::exit(1);
    }
}

async fn fake_api(listen: &str) -> anyhow::Result<()> {
    let api = simulator::fake_api::FakeDojoApi::start(listen)?;
    println!(
        "fake Dojo API on {} (PUT /epos/integrations/ws|rest); Ctrl-C to stop",
        api.url
    );
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for r in api.requests().into_iter().skip(seen) {
            seen += 1;
            println!(
                "{} {}\n{}",
                r.method,
                r.path,
                serde_json::to_string_pretty(&r.body)?
            );
        }
    }
    api.stop().await;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut targets = Targets::default();
    let sims = args
        .locations
        .map(|n| simulator::locations::generate(n, 1))
        .unwrap_or_default();
    if let Some(addr) = &args.ws_listen {
        let ws = if sims.is_empty() {
            DojoWs::bind(addr, args.ws_api_key.clone()).await?
        } else {
            DojoWs::bind_keys(addr, Some(sims.iter().map(|l| l.api_key.clone()).collect())).await?
        };
        let want = sims.len().max(1);
        println!(
            "Dojo WebSocket endpoint at {}; waiting for {want} socket(s) from ingress...",
            ws.url()
        );
        ws.wait_for_open(want, Duration::from_secs(args.ws_wait))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}. Is ingress running with DOJO_WS_URL={} and DOJO_API_KEY set (or a \
                     locations file from `dojo-simulator locations --websocket`)? To send \
                     webhooks and REST only, leave out --ws-listen.",
                    ws.url()
                )
            })?;
        targets.ws = Some(ws);
    }
    for l in &sims {
        targets
            .locations
            .insert(l.account_id.clone(), l.target(args.ingress.as_deref()));
    }
    if let Some(url) = &args.ingress {
        targets.http = Some(Dojo::new(
            url,
            // The first secret signs, as Dojo signs with the newest during a rotation.
            args.webhook_secret
                .split(',')
                .next()
                .unwrap_or_default()
                .trim(),
            &args.rest_username,
            &args.rest_password,
        ));
    }
    let mut channels = args.channels.clone();
    if channels.is_empty() {
        if targets.ws.is_some() {
            channels.push(Via::Ws);
        }
        if targets.http.is_some() {
            channels.extend([Via::Webhook, Via::Rest]);
        }
    }
    anyhow::ensure!(
        !channels.is_empty(),
        "nothing to send to: give --ingress and/or --ws-listen"
    );
    let scenario = if sims.is_empty() {
        scenario::lifecycles(&args.account, args.intents, args.duplicates, args.seed)
    } else {
        simulator::locations::lifecycles(&sims, args.intents, args.duplicates, args.seed)
    }
    .with_late(args.late, args.seed)
    .lose(args.lose, args.seed);
    let _api = match &args.api_listen {
        None => None,
        Some(addr) => {
            let api = simulator::fake_api::FakeDojoApi::start(addr)?;
            let single = args
                .ws_api_key
                .clone()
                .unwrap_or_else(|| "sk_sandbox_demo".into());
            let keys: Vec<(&str, &str)> = if sims.is_empty() {
                vec![(single.as_str(), args.account.as_str())]
            } else {
                sims.iter()
                    .map(|l| (l.api_key.as_str(), l.account_id.as_str()))
                    .collect()
            };
            api.serve_truth(&scenario.truth, keys);
            println!("Dojo payment-intent API at {}", api.url);
            Some(api)
        }
    };
    if !scenario.lost.is_empty() {
        println!(
            "{} distinct events lost for good (never sent)",
            scenario.lost.len()
        );
    }
    let tills = args.tills.as_deref().map(|url| {
        let subscriptions: Vec<(String, String)> = if sims.is_empty() {
            vec![("default".into(), args.api_token.clone())]
        } else {
            sims.iter()
                .map(|l| (l.id.clone(), l.feed_token.clone()))
                .collect()
        };
        simulator::till::Tills::start(url, &subscriptions)
    });
    let options = Options {
        channels,
        rate: args.rate,
        concurrency: args.concurrency,
        doubling: args.doubling,
        seed: args.seed,
        timeout: Duration::from_secs(10),
    };
    let report = simulator::run::run(&scenario, &targets, &options).await;
    println!(
        "sent {} deliveries of {} distinct events for {} payment intents in {:.2}s: {} acknowledged, {} failed",
        report.sent, report.distinct_events, report.intents, report.seconds, report.acknowledged, report.failed
    );
    for (via, c) in &report.channels {
        println!(
            "  {via:?}: sent {}, acknowledged {}, failed {}",
            c.sent, c.acknowledged, c.failed
        );
    }
    if report.retried > 0 {
        println!(
            "  {} sent again after 408 Request Timeout, as Dojo retries (run::HEAD_TIMEOUT_RETRIES)",
            report.retried
        );
    }
    for f in &report.failures {
        println!("  failure: {f}");
    }
    // What was sent, and what each payment intent must end as: checkable against the
    // payment tables with SQL as well as through --verify-url.
    let mut json = serde_json::json!({"run": report, "expected": scenario.expected});
    let mut ok = report.failed == 0;
    if args.verify_url.is_some() && report.acknowledged == 0 {
        // Records found now would be an earlier run's: nothing of this one to wait for.
        println!("not verified: nothing was acknowledged");
        ok = false;
    } else if let Some(url) = &args.verify_url {
        let v = verify::verify(
            url,
            &args.api_token,
            &scenario.expected,
            Duration::from_secs(60),
        )
        .await;
        println!(
            "verified {} payment intents: {} in their expected final status",
            v.checked, v.matched
        );
        for (pi, want, got) in v.mismatched.iter().take(10) {
            println!("  {pi}: expected {want}, found {got}");
        }
        ok &= v.mismatched.is_empty();
        json["verification"] = serde_json::to_value(&v)?;
    }
    if let Some(tills) = tills {
        let location_of: std::collections::HashMap<&str, &str> = sims
            .iter()
            .map(|l| (l.account_id.as_str(), l.id.as_str()))
            .collect();
        let mut expected: std::collections::BTreeMap<_, std::collections::BTreeMap<_, _>> =
            Default::default();
        for e in &scenario.deliveries {
            if let Some(status) = scenario.expected.get(&e.payment_intent_id) {
                let location = location_of
                    .get(e.account_id.as_str())
                    .copied()
                    .unwrap_or("default");
                expected
                    .entry(location.to_owned())
                    .or_default()
                    .insert(e.payment_intent_id.clone(), status.clone());
            }
        }
        let reports = tills.finish(&expected, Duration::from_secs(60)).await;
        for (location, r) in &reports {
            println!(
                "till {location}: {} updates, {}/{} final statuses, in order: {}, other locations' updates: {}, commit to till p50 {:.1} ms, p99 {:.1} ms",
                r.updates,
                r.final_reached,
                r.final_reached + r.missing.len(),
                r.in_order,
                r.foreign,
                r.latency_p50_ms,
                r.latency_p99_ms
            );
            ok &= r.missing.is_empty() && r.in_order && r.foreign == 0;
        }
        json["tills"] = serde_json::to_value(&reports)?;
    }
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    anyhow::ensure!(ok, "the run did not fully succeed");
    Ok(())
}
