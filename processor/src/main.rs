//! The `processor` binary: configuration, logging, run until SIGTERM/SIGINT.

use processor::settings::Settings;
use processor::Application;

#[tokio::main]
async fn main() {
    common::telemetry::init_logging();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("processor: {e}");
            std::process::exit(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("processor: {e:#}");
            std::process::exit(1);
        }
    };
    tracing::info!(addr = %app.local_addr(), "processor listening");
    if let Err(e) = app.run_until_stopped(common::shutdown_signal()).await {
        eprintln!("processor: {e:#}");
        std::process::exit(1);
    }
}
