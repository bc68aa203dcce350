//! Idle WebSockets (issue "many locations"): what one open socket to Dojo costs ingress.
//!
//! The same locations file twice: once with `websocket = false` (no socket), once with
//! `websocket = true` (one socket per location, all connected to the simulator's Dojo
//! endpoint on loopback). The difference of resident memory, divided by the sockets,
//! is the memory per socket; goal: 1,000 sockets with ingress under 100 MiB.

use crate::procs;
use e2e::isolation::Services;
use simulator::locations;
use simulator::ws::DojoWs;
use std::time::{Duration, Instant};

/// Resident memory of an ingress serving `file`, once it is ready and, if `ws` is given,
/// once `count` sockets are open; measured after a settling second.
async fn rss_with(
    services: &Services,
    file: &std::path::Path,
    ws: &DojoWs,
    count: Option<usize>,
) -> anyhow::Result<(f64, Duration)> {
    let path = file.to_string_lossy().into_owned();
    let url = ws.url();
    let ingress = procs::ingress_with(
        services,
        &[
            ("DOJO_LOCATIONS_FILE", &path),
            ("DOJO_WS_URL", &url),
            ("INGRESS_WS_HANDSHAKES_PER_SEC", "500"),
        ],
    )?;
    let started = Instant::now();
    ingress.ready().await?;
    if let Some(n) = count {
        ws.wait_for_open(n, Duration::from_secs(120)).await?;
    }
    let took = started.elapsed();
    // Let allocations of the start settle (a measurement pause, not synchronisation).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = ingress.rss_mib();
    ingress.stop();
    Ok((rss, took))
}

pub async fn idle(count: usize) -> anyhow::Result<()> {
    let services = Services::new().await?;
    let sims = locations::generate(count, 1);
    let keys = Some(sims.iter().map(|l| l.api_key.clone()).collect());
    let ws = DojoWs::bind_keys("127.0.0.1:0", keys).await?;
    let dir = std::env::temp_dir();
    let without = dir.join(format!("bench-locations-{}-off.toml", std::process::id()));
    let with = dir.join(format!("bench-locations-{}-on.toml", std::process::id()));
    std::fs::write(&without, locations::to_toml(&sims, false))?;
    std::fs::write(&with, locations::to_toml(&sims, true))?;
    let (base, _) = rss_with(&services, &without, &ws, None).await?;
    let (open, took) = rss_with(&services, &with, &ws, Some(count)).await?;
    let per_socket = (open - base) * 1024.0 / count as f64;
    println!(
        "idle sockets: {count} locations; ingress RSS {base:.1} MiB without sockets, {open:.1} MiB with {count} open ({per_socket:.1} KiB per socket); all open {took:.1?} after start (handshake cap 500/s)"
    );
    let _ = std::fs::remove_file(&without);
    let _ = std::fs::remove_file(&with);
    Ok(())
}
