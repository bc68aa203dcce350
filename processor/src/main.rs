//! The `processor` binary: consumes and applies events (default), inspects and
//! replays dead letters (`processor dlq list|replay`), or sweeps Dojo's API for what was
//! never delivered (`processor reconcile --location ID|--all --since DURATION`).

use clap::{Parser, Subcommand};
use processor::dlq::{self, Selection};
use processor::settings::Settings;
use processor::Application;
use std::io::Write;

#[derive(Parser)]
#[command(
    name = "processor",
    version,
    about = "Applies queued Dojo Events to the POS payment records"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the running processor answers /healthz (or /readyz) with 200; for
    /// container health checks.
    Healthcheck {
        #[arg(long)]
        ready: bool,
    },
    /// Page through Dojo's payment intents created over the last DURATION and repair
    /// the records (missed statuses, intents never delivered), then fetch the overdue
    /// ones; prints what each location's sweep did. Exit 1 if a sweep failed.
    Reconcile {
        /// Only this location (an id of DOJO_LOCATIONS_FILE, or `default`).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        location: Option<String>,
        /// Every location with an API key.
        #[arg(long)]
        all: bool,
        /// How far back: 90m, 24h, 7d, ...
        #[arg(long, value_parser = parse_since)]
        since: std::time::Duration,
    },
    /// Inspect or replay the dead-letter queue (dojo.events.dead).
    Dlq {
        #[command(subcommand)]
        action: Dlq,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// Count the dead letters and show each: event id, reason, attempts, first failure.
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to the work queue (each dead copy once).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["all", "event_id"])))]
    Replay {
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Only the dead letters of this event id.
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        event_id: Option<String>,
    },
    /// Remove an event's dead letters without replaying them (after inspection: data no
    /// processor will ever take). To empty the whole queue, `rabbitmqctl purge_queue
    /// dojo.events.dead`.
    Discard {
        /// The dead letters of this event id.
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        event_id: String,
    },
}

fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    processor::retry::parse_delay(text)
        .ok_or_else(|| format!("{text:?}: a duration like 90m, 24h, 7d (at most 3650d)"))
}

fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    eprintln!("processor: {message}");
    std::process::exit(code);
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        None => serve().await,
        Some(Command::Dlq { action }) => dead_letters(action).await,
        Some(Command::Reconcile {
            location, since, ..
        }) => reconcile(location, since).await,
        Some(Command::Healthcheck { ready }) => {
            // Only the address, as the service reads it.
            let addr = processor::settings::listen_addr(&common::settings::Env);
            common::health::run("processor", &addr, ready)
        }
    }
}

async fn dead_letters(action: Dlq) {
    // Only the broker's address: the rest of the processor's settings need not be valid.
    let amqp_url =
        processor::settings::amqp_url(&common::settings::Env).unwrap_or_else(|e| fail(2, e));
    let queue = common::topology::DEAD_QUEUE;
    let more_than_a_pass = |held: u32| {
        format!(
            "{queue} holds {held} messages and one pass looks at the oldest {}: run it again for the rest",
            dlq::MAX_BATCH
        )
    };
    let none_of = |id: &str, pass: dlq::Pass| -> ! {
        if pass.partial() {
            fail(
                1,
                format!(
                    "no dead letter of event {id} among the oldest {} of the {} in {queue}: run again",
                    dlq::MAX_BATCH,
                    pass.held
                ),
            )
        }
        fail(1, format!("no dead letter of event {id} in {queue}"))
    };
    match action {
        Dlq::List { json } => {
            let listing = dlq::list(&amqp_url)
                .await
                .unwrap_or_else(|e| fail(1, common::error_chain(e.as_ref())));
            // Written whole, errors ignored: `processor dlq list | head` closing the pipe
            // early is not a failure (println! would panic on it).
            let mut out = std::io::stdout().lock();
            let letters = listing.letters;
            if json {
                let doc = serde_json::json!({"count": letters.len(), "held": listing.held, "messages": letters});
                let _ = writeln!(out, "{}", serde_json::to_string_pretty(&doc).expect("JSON"));
                return;
            }
            let _ = writeln!(out, "{} dead letter(s) in {queue}", listing.held);
            if listing.held > dlq::MAX_BATCH {
                let _ = writeln!(out, "(the oldest {} below)", letters.len());
            }
            if !letters.is_empty() {
                let _ = writeln!(
                    out,
                    "{:<36} {:>8}  {:<35} REASON",
                    "EVENT ID", "RETRIES", "FIRST FAILURE"
                );
            }
            for l in letters {
                let line = writeln!(
                    out,
                    "{:<36} {:>8}  {:<35} {}",
                    l.event_id.as_deref().unwrap_or("-"),
                    l.attempts,
                    l.first_failure.as_deref().unwrap_or("-"),
                    l.reason
                );
                if line.is_err() {
                    return;
                }
            }
        }
        Dlq::Replay { event_id, .. } => {
            let selection = event_id
                .clone()
                .map(Selection::EventId)
                .unwrap_or(Selection::All);
            let pass = dlq::replay(&amqp_url, &selection)
                .await
                .unwrap_or_else(|e| fail(1, common::error_chain(e.as_ref())));
            if let (Some(id), 0) = (&event_id, pass.chosen) {
                none_of(id, pass);
            }
            println!(
                "replayed {} dead letter(s) to {}",
                pass.chosen,
                common::topology::EXCHANGE
            );
            if pass.partial() {
                println!("{}", more_than_a_pass(pass.held));
            }
        }
        Dlq::Discard { event_id } => {
            let pass = dlq::discard(&amqp_url, &Selection::EventId(event_id.clone()))
                .await
                .unwrap_or_else(|e| fail(1, common::error_chain(e.as_ref())));
            if pass.chosen == 0 {
                none_of(&event_id, pass);
            }
            println!(
                "discarded {} dead letter(s) of event {event_id}",
                pass.chosen
            );
            if pass.partial() {
                println!("{}", more_than_a_pass(pass.held));
            }
        }
    }
}

async fn reconcile(only: Option<String>, since: std::time::Duration) {
    let _telemetry = common::telemetry::init("processor").unwrap_or_else(|e| fail(2, e));
    let settings = Settings::from_env().unwrap_or_else(|e| fail(2, e));
    let locations: Vec<_> = match &only {
        Some(id) => vec![settings
            .locations
            .get(id)
            .cloned()
            .unwrap_or_else(|| fail(2, format!("no location {id:?}")))],
        None => settings
            .locations
            .iter()
            .filter(|l| l.api_key().is_some())
            .cloned()
            .collect(),
    };
    let worker = processor::Worker::connect(settings)
        .await
        .unwrap_or_else(|e| fail(1, common::error_chain(e.as_ref())));
    let until = chrono::Utc::now();
    let from = until - chrono::Duration::from_std(since).unwrap_or_else(|e| fail(2, e));
    let mut failed = false;
    for location in locations {
        match processor::sweep::sweep_location(&worker, &location, from, until).await {
            Ok(r) if r.skipped => {
                println!("{}: another replica is sweeping it; skipped", r.location)
            }
            Ok(r) => println!(
                "{}: {} intents seen, {} repaired, {} details stored",
                r.location, r.seen, r.repaired, r.stored
            ),
            Err(e) => {
                failed = true;
                println!(
                    "{}: sweep failed: {}",
                    location.id,
                    common::error_chain(e.as_ref())
                );
            }
        }
    }
    worker.pool.close().await;
    if failed {
        std::process::exit(1);
    }
}

async fn serve() {
    // A SIGHUP while waiting for PostgreSQL is not a stop (the file watcher starts later).
    common::locations::directory::take_hangup();
    let telemetry = common::telemetry::init("processor").unwrap_or_else(|e| fail(2, e));
    let settings = Settings::from_env().unwrap_or_else(|e| fail(2, e));
    if (settings.db_pool as usize) < settings.channels {
        // Works, slower: channels wait for a connection to commit (README, configuration).
        tracing::warn!(
            db_pool = settings.db_pool,
            channels = settings.channels,
            "PROCESSOR_DB_POOL is smaller than PROCESSOR_CHANNELS: channels will wait for a connection; keep the pool at least as large"
        );
    }
    // Building waits for PostgreSQL as long as it takes; a stop meanwhile is a clean
    // exit (0), as it is once running: nothing has been consumed yet.
    // `biased`: the shutdown branch is polled first, so the SIGTERM and SIGINT handlers
    // exist before building logs anything (a signal sent on seeing "PostgreSQL
    // unreachable" could otherwise meet the default action and kill the process).
    let app = tokio::select! {
        biased;
        () = common::shutdown_signal() => {
            tracing::info!("stopped before starting: nothing consumed");
            telemetry.shutdown();
            return;
        }
        app = Application::build(settings) => {
            app.unwrap_or_else(|e| fail(1, common::error_chain(e.as_ref())))
        }
    };
    tracing::info!(addr = %app.local_addr(), "processor listening");
    let result = app.run_until_stopped(common::shutdown_signal()).await;
    // Spans still buffered are exported before exit (bounded).
    telemetry.shutdown();
    if let Err(e) = result {
        fail(1, common::error_chain(e.as_ref()));
    }
}
