//! Two ingress replicas (the real binary) sharing a locations file: each location's
//! WebSocket is open on exactly one of them (the lease), and when that replica is killed
//! with SIGKILL the other opens every socket.

use e2e::isolation::TestVhost;
use e2e::wait_until;
use simulator::locations;
use simulator::ws::DojoWs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_RETRY_MS: &str = "500";

/// A running replica, killed when dropped (a failing test leaves no process behind).
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn replica(vhost: &TestVhost, file: &std::path::Path, ws: &DojoWs) -> (Replica, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_ingress"))
        .env("INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", vhost.amqp_url())
        .env("DOJO_LOCATIONS_FILE", file)
        .env("DOJO_WS_URL", ws.url())
        .env("INGRESS_WS_LEASE_RETRY_MS", LEASE_RETRY_MS)
        .env("INGRESS_WS_HANDSHAKES_PER_SEC", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    (Replica(child), format!("http://127.0.0.1:{port}"))
}

async fn sockets(url: &str) -> Option<serde_json::Value> {
    let r = reqwest::get(format!("{url}/readyz")).await.ok()?;
    let body: serde_json::Value = r.json().await.ok()?;
    Some(body["websockets"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_socket_is_on_exactly_one_replica_and_a_killed_ones_are_taken_over() {
    let vhost = TestVhost::new().unwrap();
    let sims = locations::generate(20, 8);
    let file = std::env::temp_dir().join(format!("replicas-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&file, locations::to_toml(&sims, true)).unwrap();
    let keys = sims.iter().map(|l| l.api_key.clone()).collect();
    let ws = DojoWs::bind_keys("127.0.0.1:0", Some(keys)).await.unwrap();
    let (first, first_url) = replica(&vhost, &file, &ws);
    let (second, second_url) = replica(&vhost, &file, &ws);

    ws.wait_for_open(20, Duration::from_secs(30)).await.unwrap();
    // Both replicas up and settled: one holds the lease and all 20 sockets, the other none.
    let (a, b) = wait_until("both replicas report", Duration::from_secs(30), || async {
        let (a, b) = (sockets(&first_url).await?, sockets(&second_url).await?);
        (a["open"].as_u64()? + b["open"].as_u64()? == 20).then_some((a, b))
    })
    .await;
    assert_ne!(
        a["lease"], b["lease"],
        "exactly one holds the lease: {a} {b}"
    );
    assert_eq!(ws.connections(), 20, "no location ever had two sockets");
    let (mut holder, _standby, standby_url) = if a["lease"] == true {
        (first, second, second_url.clone())
    } else {
        (second, first, first_url.clone())
    };
    assert_eq!(sockets(&standby_url).await.unwrap()["open"], 0);

    // SIGKILL the holder: the standby takes every location over.
    let killed = Instant::now();
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    wait_until(
        "the standby holds every socket",
        Duration::from_secs(30),
        || async {
            let s = sockets(&standby_url).await?;
            (s["lease"] == true && s["open"] == 20).then_some(())
        },
    )
    .await;
    let took = killed.elapsed();
    println!("20 sockets taken over {took:?} after SIGKILL (lease retry {LEASE_RETRY_MS} ms)");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(ws.open_connections(), 20);
    let _ = std::fs::remove_file(&file);
}
