//! A real browser for the console's tests: Debian's `chromium`, headless, driven over
//! WebDriver by `chromedriver` (package `chromium-driver`), both installed by
//! `deploy/setup-browser.sh` (which `.ci/run` calls). Each [`Browser`] is its own
//! chromedriver process on a free port with its own profile, so tests run in parallel;
//! dropping it ends both.

use fantoccini::{Client, ClientBuilder};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian puts them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless chromium session (1280x900 window).
    pub async fn start() -> anyhow::Result<Self> {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            anyhow::ensure!(
                std::path::Path::new(path).exists(),
                "{path} is missing: run deploy/setup-browser.sh (installs Debian's {package})"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver answers /status once it listens.
        let http = reqwest::Client::new();
        let status = format!("{url}/status");
        crate::wait_until(
            "chromedriver listening",
            Duration::from_secs(20),
            || async { http.get(&status).send().await.ok().map(|_| ()) },
        )
        .await;
        let profile =
            std::env::temp_dir().join(format!("console-chromium-{}", uuid::Uuid::new_v4()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        // fantoccini's TLS client needs a process-wide crypto provider (two are linked:
        // ring, ours, and aws-lc-rs, lapin's), though it only speaks plain HTTP here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()?
            .capabilities(caps)
            .connect(&url)
            .await?;
        Ok(Self {
            client,
            driver,
            profile,
        })
    }

    /// Ends the session (then the driver, on drop).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
