//! The `ingress` binary: configuration, logging, run until SIGTERM/SIGINT.

use ingress::settings::Settings;
use ingress::Application;

#[tokio::main]
async fn main() {
    common::telemetry::init_logging();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ingress: {e}");
            std::process::exit(2);
        }
    };
    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("ingress: {e:#}");
            std::process::exit(1);
        }
    };
    tracing::info!(addr = %app.local_addr(), "ingress listening");
    if let Err(e) = app.run_until_stopped(common::shutdown_signal()).await {
        eprintln!("ingress: {e:#}");
        std::process::exit(1);
    }
}
