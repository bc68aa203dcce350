//! What competes for the machine, second by second, during a run: the CPU time of each
//! service (ingress, processor, RabbitMQ, PostgreSQL, the load generator itself), the
//! machine's idle, I/O-wait and steal shares, the disk's writes, and PostgreSQL's
//! checkpoint writes. Sampled beside `dojo-bench e2e`'s per-second answers, so a
//! second whose acknowledgements stalled can be laid next to what the machine did then.
//!
//! Sources: `/proc/stat` (the `cpu` line, proc(5), in clock ticks of 1/100 s),
//! `/proc/<pid>/stat`, `/proc/diskstats` (the kernel's `iostats.rst`: sectors of 512
//! bytes, milliseconds), and `pg_stat_bgwriter` (PostgreSQL 15: 8 KiB buffers).

use crate::procs::cpu_seconds;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One second of the machine: times in milliseconds of CPU used during that second
/// (1,000 is one core busy for the whole second), shares in percent of all cores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineSecond {
    pub ingress_cpu_ms: f64,
    pub processor_cpu_ms: f64,
    /// Every `beam.smp` process (RabbitMQ nodes).
    pub broker_cpu_ms: f64,
    /// Every `postgres` process (backends, WAL writer, checkpointer, autovacuum).
    pub postgres_cpu_ms: f64,
    /// This process: the load generator and the sampler.
    pub bench_cpu_ms: f64,
    pub idle_pct: f64,
    pub iowait_pct: f64,
    pub steal_pct: f64,
    /// Written to every disk, MiB.
    pub disk_write_mib: f64,
    /// Milliseconds the disks spent with I/O in flight (1,000 is busy all second).
    pub disk_busy_ms: f64,
    /// Buffers written by PostgreSQL's checkpointer (8 KiB each).
    pub checkpoint_buffers: f64,
}

#[derive(Clone, Default)]
struct Totals {
    ingress: f64,
    processor: f64,
    broker: f64,
    postgres: f64,
    bench: f64,
    /// `/proc/stat` cpu line: (all ticks, idle, iowait, steal).
    ticks: (f64, f64, f64, f64),
    /// (sectors written, ms doing I/O), summed over whole disks.
    disk: (f64, f64),
    checkpoint_buffers: f64,
}

/// A sampler started with [`Sampler::start`]; [`Sampler::stop`] returns its seconds.
pub struct Sampler {
    seconds: Arc<Mutex<Vec<MachineSecond>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Samples every second until stopped. `ingress` and `processor` are pids; `pg` reads
    /// `pg_stat_bgwriter`.
    pub fn start(ingress: u32, processor: u32, pg: sqlx::PgPool) -> Self {
        let seconds = Arc::new(Mutex::new(Vec::new()));
        let out = seconds.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last = totals(ingress, processor, &pg).await;
            loop {
                tick.tick().await;
                let now = totals(ingress, processor, &pg).await;
                out.lock().unwrap().push(difference(&last, &now));
                last = now;
            }
        });
        Self { seconds, task }
    }

    pub fn stop(self) -> Vec<MachineSecond> {
        self.task.abort();
        self.seconds.lock().unwrap().clone()
    }
}

fn difference(a: &Totals, b: &Totals) -> MachineSecond {
    let ms = |x: f64, y: f64| ((y - x) * 1000.0).max(0.0);
    let all = (b.ticks.0 - a.ticks.0).max(1.0);
    let pct = |x: f64, y: f64| 100.0 * (y - x).max(0.0) / all;
    MachineSecond {
        ingress_cpu_ms: ms(a.ingress, b.ingress),
        processor_cpu_ms: ms(a.processor, b.processor),
        broker_cpu_ms: ms(a.broker, b.broker),
        postgres_cpu_ms: ms(a.postgres, b.postgres),
        bench_cpu_ms: ms(a.bench, b.bench),
        idle_pct: pct(a.ticks.1, b.ticks.1),
        iowait_pct: pct(a.ticks.2, b.ticks.2),
        steal_pct: pct(a.ticks.3, b.ticks.3),
        disk_write_mib: (b.disk.0 - a.disk.0).max(0.0) * 512.0 / (1024.0 * 1024.0),
        disk_busy_ms: (b.disk.1 - a.disk.1).max(0.0),
        checkpoint_buffers: (b.checkpoint_buffers - a.checkpoint_buffers).max(0.0),
    }
}

async fn totals(ingress: u32, processor: u32, pg: &sqlx::PgPool) -> Totals {
    let checkpoint_buffers: f64 =
        sqlx::query_scalar("SELECT buffers_checkpoint::float8 FROM pg_stat_bgwriter")
            .fetch_one(pg)
            .await
            .unwrap_or(0.0);
    let (broker, postgres) = by_command();
    Totals {
        ingress: cpu_seconds(&ingress.to_string()),
        processor: cpu_seconds(&processor.to_string()),
        broker,
        postgres,
        bench: cpu_seconds("self"),
        ticks: cpu_ticks(),
        disk: disk(),
        checkpoint_buffers,
    }
}

/// CPU seconds of every `beam.smp` and of every `postgres` process.
fn by_command() -> (f64, f64) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0.0, 0.0);
    };
    let (mut broker, mut postgres) = (0.0, 0.0);
    for pid in dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        match comm.trim() {
            "beam.smp" => broker += cpu_seconds(&pid),
            "postgres" => postgres += cpu_seconds(&pid),
            _ => {}
        }
    }
    (broker, postgres)
}

/// The `cpu` line of `/proc/stat`: (all ticks, idle, iowait, steal).
fn cpu_ticks() -> (f64, f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all: f64 = (0..8).map(at).sum();
    (all, at(3), at(4), at(7))
}

/// (sectors written, ms doing I/O) over whole disks (`vd*`, `sd*`, `nvme*n*`, not
/// partitions), from `/proc/diskstats`.
fn disk() -> (f64, f64) {
    let stats = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    stats
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.get(2)?;
            let whole = (name.starts_with("vd") || name.starts_with("sd"))
                && !name.ends_with(|c: char| c.is_ascii_digit())
                || name.starts_with("nvme") && !name.contains('p');
            whole.then(|| {
                let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                (n(9), n(12))
            })
        })
        .fold((0.0, 0.0), |(s, t), (a, b)| (s + a, t + b))
}

/// Prints the `n` seconds with the highest acknowledgement p99 beside what the machine
/// did in them, then a row `all`: the mean second of the run (its p99 is the median
/// second's).
pub fn print_slowest(answers: &[crate::load::Second], machine: &[MachineSecond], n: usize) {
    let mut order: Vec<usize> = (0..answers.len().min(machine.len())).collect();
    if order.is_empty() {
        return;
    }
    order.sort_by(|&a, &b| answers[b].p99_ms.total_cmp(&answers[a].p99_ms));
    println!(
        "  slowest seconds (ack p99) and what the machine did in them (CPU ms in that second):"
    );
    println!("    second   answers  p99 ms | ingress processor broker postgres bench | idle% iowait% steal% | disk MiB busy ms | checkpoint buffers");
    let row = |label: String, a: (f64, f64), m: &MachineSecond| {
        println!(
            "    {label:>6} {:>9.0} {:>7.1} | {:>7.0} {:>9.0} {:>6.0} {:>8.0} {:>5.0} | {:>5.1} {:>7.1} {:>6.1} | {:>8.1} {:>7.0} | {:>6.0}",
            a.0, a.1, m.ingress_cpu_ms, m.processor_cpu_ms, m.broker_cpu_ms, m.postgres_cpu_ms,
            m.bench_cpu_ms, m.idle_pct, m.iowait_pct, m.steal_pct, m.disk_write_mib,
            m.disk_busy_ms, m.checkpoint_buffers
        )
    };
    for &i in order.iter().take(n) {
        row(
            i.to_string(),
            (answers[i].ok as f64, answers[i].p99_ms),
            &machine[i],
        );
    }
    let k = order.len() as f64;
    let mean =
        |f: &dyn Fn(&MachineSecond) -> f64| machine[..order.len()].iter().map(f).sum::<f64>() / k;
    let mean_second = MachineSecond {
        ingress_cpu_ms: mean(&|m| m.ingress_cpu_ms),
        processor_cpu_ms: mean(&|m| m.processor_cpu_ms),
        broker_cpu_ms: mean(&|m| m.broker_cpu_ms),
        postgres_cpu_ms: mean(&|m| m.postgres_cpu_ms),
        bench_cpu_ms: mean(&|m| m.bench_cpu_ms),
        idle_pct: mean(&|m| m.idle_pct),
        iowait_pct: mean(&|m| m.iowait_pct),
        steal_pct: mean(&|m| m.steal_pct),
        disk_write_mib: mean(&|m| m.disk_write_mib),
        disk_busy_ms: mean(&|m| m.disk_busy_ms),
        checkpoint_buffers: mean(&|m| m.checkpoint_buffers),
    };
    let answers_mean = answers[..order.len()]
        .iter()
        .map(|a| a.ok as f64)
        .sum::<f64>()
        / k;
    let mut p99s: Vec<f64> = answers[..order.len()].iter().map(|a| a.p99_ms).collect();
    p99s.sort_by(f64::total_cmp);
    row(
        "all".into(),
        (answers_mean, p99s[p99s.len() / 2]),
        &mean_second,
    );
}
