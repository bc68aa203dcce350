//! The services under test, as their real release binaries.

use anyhow::Context;
use e2e::isolation::Services;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "bench-webhook-secret";
pub const REST_USER: &str = "dojo";
pub const REST_PASSWORD: &str = "bench-pass";
pub const API_TOKEN: &str = "bench-token";

pub struct Proc {
    child: Child,
    pub url: String,
}

/// A binary next to this one (build with `cargo build --release -p ingress -p processor -p bench`).
fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it next to dojo-bench",
        path.display()
    );
    Ok(path)
}

/// The service's log goes to `$BENCH_LOG_DIR/<name>.log` when that is set.
fn log_file(name: &str) -> Stdio {
    match std::env::var("BENCH_LOG_DIR") {
        Ok(dir) => std::fs::File::create(format!("{dir}/{name}.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
        Err(_) => Stdio::null(),
    }
}

/// A port the OS says is free and this run has not handed out before: the OS may offer
/// the same port again before the service given it has bound it (two services then
/// raced for one port, and ingress failed with "Address already in use").
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("lock");
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

pub fn ingress(services: &Services) -> anyhow::Result<Proc> {
    ingress_with(services, &[])
}

/// Ingress with more (or overriding) environment variables.
pub fn ingress_with(services: &Services, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
    let port = free_port()?;
    let child = Command::new(bin("ingress")?)
        .envs(extra.iter().copied())
        .env("INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", services.vhost.amqp_url())
        .env("DOJO_WEBHOOK_SECRETS", SECRET)
        .env("DOJO_REST_USERNAME", REST_USER)
        .env("DOJO_REST_PASSWORD", REST_PASSWORD)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(log_file("ingress"))
        .spawn()
        .context("ingress")?;
    Ok(Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

/// The thinnest durable receiver (`thin-receiver`, the fair ceiling for ingress).
pub fn thin_receiver(services: &Services) -> anyhow::Result<Proc> {
    let port = free_port()?;
    let child = Command::new(bin("thin-receiver")?)
        .env("THIN_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", services.vhost.amqp_url())
        .stdout(log_file("thin-receiver"))
        .spawn()
        .context("thin-receiver")?;
    Ok(Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

pub fn processor(services: &Services) -> anyhow::Result<Proc> {
    processor_with(services, &[])
}

/// The processor with more (or overriding) environment variables.
pub fn processor_with(services: &Services, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
    let port = free_port()?;
    // BENCH_PROCESSOR_NICE=N runs it under `nice -n N` (CPU priority below ingress's).
    let mut command = match std::env::var("BENCH_PROCESSOR_NICE") {
        Ok(n) => {
            let mut c = Command::new("nice");
            c.args(["-n", &n]).arg(bin("processor")?);
            c
        }
        Err(_) => Command::new(bin("processor")?),
    };
    let child = command
        .envs(extra.iter().copied())
        .env("PROCESSOR_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", services.vhost.amqp_url())
        .env("DATABASE_URL", services.db.url())
        .env("REDIS_KEY_PREFIX", &services.redis_prefix)
        .env("PROCESSOR_DONE_TTL_SECS", "600")
        .env("PROCESSOR_API_TOKEN", API_TOKEN)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(log_file("processor"))
        .spawn()
        .context("processor")?;
    Ok(Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

impl Proc {
    /// Waits for `/readyz` 200; returns when it was first seen.
    pub async fn ready(&self) -> anyhow::Result<Instant> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::bail!("{} never became ready", self.url)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// Resident memory now (VmRSS), in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    }

    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("{}/metrics", self.url)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// SIGTERM and wait; true if it exited 0.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// CPU time (user + system, in seconds) of the process `pid` (a number or `self`), from
/// `/proc/<pid>/stat` (proc(5): fields 14 and 15, in clock ticks of 1/100 s); 0 if gone.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let field = |n: usize| {
        after
            .split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(14) + field(15)) / 100.0
}

/// CPU time (seconds) of every RabbitMQ node on the machine (`beam.smp` processes).
pub fn broker_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

/// The value of one sample (`name{labels} value`, or `name value` without labels;
/// Prometheus text format) on a metrics page; 0 if absent.
pub fn sample(page: &str, name: &str, labels: &str) -> f64 {
    let series = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    page.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The `_sum` and `_count` of a Prometheus histogram (with these labels) in a page.
pub fn sum_count(page: &str, name: &str, labels: &str) -> (f64, f64) {
    (
        sample(page, &format!("{name}_sum"), labels),
        sample(page, &format!("{name}_count"), labels),
    )
}
