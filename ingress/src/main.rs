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
    version,
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

/// Which locations to register (none given: the single-location variables).
#[derive(clap::Args)]
struct Which {
    /// Register this location of DOJO_LOCATIONS_FILE, with its own API key.
    #[arg(long, conflicts_with = "all")]
    location: Option<String>,
    /// Register every location of DOJO_LOCATIONS_FILE that has the channel (ws:
    /// websocket = true; rest: rest_username and rest_password); one failing does not
    /// stop the others.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum Channel {
    /// For the WebSocket channel (the POS opens the socket).
    Ws {
        /// Print the request instead of sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        which: Which,
    },
    /// For the REST channel: Dojo will call POST {url}/v1/events (with locations:
    /// {url}/locations/{id}/v1/events, with the location's credentials).
    Rest {
        /// This POS's public base URL.
        #[arg(long)]
        url: String,
        #[arg(long, env = "DOJO_REST_USERNAME", hide_env_values = true)]
        username: Option<String>,
        #[arg(long, env = "DOJO_REST_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        which: Which,
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
            // Only the address: the probe needs no channel configured (Settings would).
            let addr = ingress::settings::listen_addr(&common::settings::Env);
            common::health::run("ingress", &addr, ready)
        }
    }
}

async fn register(channel: Channel) {
    let env = &common::settings::Env;
    let (which, rest_url, dry_run, single) = match channel {
        Channel::Ws { dry_run, which } => (which, None, dry_run, Some(Target::Ws)),
        Channel::Rest {
            url,
            username,
            password,
            dry_run,
            which,
        } => {
            let single = username
                .zip(password)
                .map(|(username, password)| Target::Rest {
                    url: url.clone(),
                    username,
                    password: Secret::new(password),
                });
            (which, Some(url), dry_run, single)
        }
    };
    // Configuration every registration needs: exit 2 once, not a failure per location.
    if common::settings::optional(env, "DOJO_SOFTWARE_HOUSE_ID").is_none() {
        fail(2, "DOJO_SOFTWARE_HOUSE_ID is required to register");
    }
    let registrations: Vec<(String, Result<Registration, String>)> =
        if which.location.is_some() || which.all {
            let locations = common::locations::Locations::from_source(env, false)
                .unwrap_or_else(|e| fail(2, e));
            Registration::chosen(&locations, which.location.as_deref(), rest_url.is_none())
                .unwrap_or_else(|e| fail(2, e))
                .into_iter()
                .map(|l| {
                    let r = Registration::for_location(env, l, rest_url.as_deref());
                    (l.id.clone(), r.map_err(|e| e.to_string()))
                })
                .collect()
        } else {
            let target = single.unwrap_or_else(|| {
                fail(
                    2,
                    "--username and --password (or DOJO_REST_USERNAME/PASSWORD) are required",
                )
            });
            let r = Registration::from_source(env, target).unwrap_or_else(|e| fail(2, e));
            vec![(String::new(), Ok(r))]
        };
    if registrations.is_empty() {
        // `--all` over a file where no location has this channel: say so, not silence.
        let channel = if rest_url.is_some() {
            "`rest_username` and `rest_password`"
        } else {
            "`websocket = true`"
        };
        fail(
            2,
            format!("no location to register: no location of the file has {channel}"),
        );
    }
    // The shared Dojo client's configuration: timeouts, URL and version in one place.
    let http = common::dojo_api::ApiConfig::from_source(env)
        .unwrap_or_else(|e| fail(2, e))
        .http();
    let mut failed = 0;
    for (location, registration) in &registrations {
        let label = if location.is_empty() {
            String::new()
        } else {
            format!("location {location}: ")
        };
        let outcome = match registration {
            Err(e) => Err(e.clone()),
            Ok(r) if dry_run => Ok(r.describe()),
            Ok(r) => r.send(&http).await.map_err(|e| common::error_chain(&e)),
        };
        match outcome {
            Ok(text) => println!("{label}{text}"),
            Err(e) => {
                failed += 1;
                eprintln!("ingress: {label}{e}");
            }
        }
    }
    if failed > 0 {
        fail(
            1,
            format!("{failed} of {} registrations failed", registrations.len()),
        );
    }
}

async fn serve() {
    // SIGHUP is the locations file's reload, from the very start: never a stop.
    common::locations::directory::take_hangup();
    let telemetry = common::telemetry::init("ingress").unwrap_or_else(|e| fail(2, e));
    let settings = Settings::from_env().unwrap_or_else(|e| fail(2, e));
    let app =
        Application::build(settings).unwrap_or_else(|e| fail(1, common::error_chain(e.as_ref())));
    tracing::info!(addr = %app.local_addr(), "ingress listening");
    let result = app.run_until_stopped(common::shutdown_signal()).await;
    // Spans still buffered are exported before exit (bounded).
    telemetry.shutdown();
    if let Err(e) = result {
        fail(1, common::error_chain(e.as_ref()));
    }
}
