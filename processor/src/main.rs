//! The `processor` binary: consumes and applies events (default), or inspects and
//! replays dead letters (`processor dlq list|replay`).

use clap::{Parser, Subcommand};
use processor::dlq::{self, Selection};
use processor::settings::Settings;
use processor::Application;

#[derive(Parser)]
#[command(
    name = "processor",
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
    Replay {
        /// Every dead letter.
        #[arg(
            long,
            conflicts_with = "event_id",
            required_unless_present = "event_id"
        )]
        all: bool,
        /// Only the dead letters of this event id.
        #[arg(long)]
        event_id: Option<String>,
    },
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
        Some(Command::Healthcheck { ready }) => {
            let addr = Settings::from_env().unwrap_or_else(|e| fail(2, e)).addr;
            common::health::run("processor", &addr, ready)
        }
    }
}

async fn dead_letters(action: Dlq) {
    let amqp_url = Settings::from_env().unwrap_or_else(|e| fail(2, e)).amqp_url;
    match action {
        Dlq::List { json } => {
            let letters = dlq::list(&amqp_url)
                .await
                .unwrap_or_else(|e| fail(1, format!("{e:#}")));
            if json {
                let doc = serde_json::json!({"count": letters.len(), "messages": letters});
                println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
                return;
            }
            println!(
                "{} dead letter(s) in {}",
                letters.len(),
                common::topology::DEAD_QUEUE
            );
            if !letters.is_empty() {
                println!(
                    "{:<36} {:>8}  {:<32} REASON",
                    "EVENT ID", "ATTEMPTS", "FIRST FAILURE"
                );
            }
            for l in letters {
                println!(
                    "{:<36} {:>8}  {:<32} {}",
                    l.event_id.as_deref().unwrap_or("-"),
                    l.attempts,
                    l.first_failure.as_deref().unwrap_or("-"),
                    l.reason
                );
            }
        }
        Dlq::Replay { event_id, .. } => {
            let selection = event_id.map(Selection::EventId).unwrap_or(Selection::All);
            let n = dlq::replay(&amqp_url, &selection)
                .await
                .unwrap_or_else(|e| fail(1, format!("{e:#}")));
            println!(
                "replayed {n} dead letter(s) to {}",
                common::topology::EXCHANGE
            );
        }
    }
}

async fn serve() {
    let telemetry = common::telemetry::init("processor").unwrap_or_else(|e| fail(2, e));
    let settings = Settings::from_env().unwrap_or_else(|e| fail(2, e));
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|e| fail(1, format!("{e:#}")));
    tracing::info!(addr = %app.local_addr(), "processor listening");
    let result = app.run_until_stopped(common::shutdown_signal()).await;
    // Spans still buffered are exported before exit (bounded).
    telemetry.shutdown();
    if let Err(e) = result {
        fail(1, format!("{e:#}"));
    }
}
