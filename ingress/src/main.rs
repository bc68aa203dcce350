//! The `ingress` binary: serves Dojo's deliveries (default), or registers the
//! HandleEvent capabilities with Dojo (`ingress register ws|rest`).

use clap::{Parser, Subcommand};
use common::settings::Secret;
use ingress::register::{Registration, Target};
use ingress::settings::Settings;
use ingress::Application;

#[derive(Parser)]
#[command(
    name = "ingress",
    about = "Receives Dojo Events and queues them durably"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the running ingress answers /healthz (or /readyz) with 200; for
    /// container health checks.
    Healthcheck {
        #[arg(long)]
        ready: bool,
    },
    /// Register this POS's HandleEvent capabilities with Dojo.
    Register {
        #[command(subcommand)]
        channel: Channel,
    },
}

#[derive(Subcommand)]
enum Channel {
    /// For the WebSocket channel (the POS opens the socket).
    Ws {
        /// Print the request instead of sending it.
        #[arg(long)]
        dry_run: bool,
    },
    /// For the REST channel: Dojo will call POST {url}/v1/events.
    Rest {
        /// This POS's public base URL.
        #[arg(long)]
        url: String,
        #[arg(long, env = "DOJO_REST_USERNAME", hide_env_values = true)]
        username: String,
        #[arg(long, env = "DOJO_REST_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        dry_run: bool,
    },
}

fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    eprintln!("ingress: {message}");
    std::process::exit(code);
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        None => serve().await,
        Some(Command::Register { channel }) => register(channel).await,
        Some(Command::Healthcheck { ready }) => {
            let addr = Settings::from_env().unwrap_or_else(|e| fail(2, e)).addr;
            common::health::run("ingress", &addr, ready)
        }
    }
}

async fn register(channel: Channel) {
    let (target, dry_run) = match channel {
        Channel::Ws { dry_run } => (Target::Ws, dry_run),
        Channel::Rest {
            url,
            username,
            password,
            dry_run,
        } => (
            Target::Rest {
                url,
                username,
                password: Secret::new(password),
            },
            dry_run,
        ),
    };
    let registration =
        Registration::from_source(&common::settings::Env, target).unwrap_or_else(|e| fail(2, e));
    if dry_run {
        println!("{}", registration.describe());
        return;
    }
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| fail(1, e));
    match registration.send(&http).await {
        Ok(summary) => println!("{summary}"),
        Err(e) => fail(1, e),
    }
}

async fn serve() {
    let telemetry = common::telemetry::init("ingress").unwrap_or_else(|e| fail(2, e));
    let settings = Settings::from_env().unwrap_or_else(|e| fail(2, e));
    let app = Application::build(settings).unwrap_or_else(|e| fail(1, format!("{e:#}")));
    tracing::info!(addr = %app.local_addr(), "ingress listening");
    let result = app.run_until_stopped(common::shutdown_signal()).await;
    // Spans still buffered are exported before exit (bounded).
    telemetry.shutdown();
    if let Err(e) = result {
        fail(1, format!("{e:#}"));
    }
}
