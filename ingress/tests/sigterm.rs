//! SIGTERM to the ingress binary under load: it stops accepting, finishes in-flight
//! requests and their confirms, exits 0, and every request it answered 200 is in the
//! queue.

use chrono::Utc;
use e2e::isolation::TestVhost;
use e2e::wait_until;
use futures::StreamExt;
use lapin::options::BasicGetOptions;
use simulator::{Dojo, Event};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_every_200_is_durable() {
    let vhost = TestVhost::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = simulator::event::DOC_SECRET;
    let mut ingress = Command::new(env!("CARGO_BIN_EXE_ingress"))
        .env("INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", vhost.amqp_url())
        .env("DOJO_WEBHOOK_SECRETS", secret)
        .env("DOJO_REST_USERNAME", "dojo")
        .env("DOJO_REST_PASSWORD", "pa55word-never-logged")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let log = ingress.stdout.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(log).unwrap());
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until("ready", Duration::from_secs(30), || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // Wrong credentials and a bad signature: rejected, and the secrets stay out of the log.
    let wrong = http
        .post(format!("{url}/v1/events"))
        .header(
            "authorization",
            "Basic dojo:pa55word-never-logged-but-wrong",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let dojo = Dojo::new(&url, secret, "", "");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 32 senders, each sending until the server is gone.
    let senders = futures::stream::iter(0..32)
        .map(|s| {
            let (dojo, acked, stopped) = (dojo.clone(), acked.clone(), stopped.clone());
            async move {
                let mut refused = 0;
                for i in 0.. {
                    let e = Event::new(
                        &format!("evt_term_{s}_{i}"),
                        "payment_intent.created",
                        "pi_term",
                        "Created",
                        Utc::now(),
                    );
                    match dojo.webhook(&e.body()).await {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push(e.id),
                        Ok(_) => {}
                        Err(_) if stopped.load(std::sync::atomic::Ordering::SeqCst) => break,
                        Err(_) => refused += 1,
                    }
                }
                refused
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let terminate = async {
        wait_until("load going", Duration::from_secs(30), || async {
            (acked.lock().unwrap().len() > 300).then_some(())
        })
        .await;
        let sent = Command::new("kill")
            .args(["-TERM", &ingress.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::task::spawn_blocking(move || ingress.wait().unwrap())
            .await
            .unwrap();
        stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        status
    };
    let (_, status) = tokio::join!(senders, terminate);
    assert!(status.success(), "exit status {status:?}");

    let acked: Vec<String> = acked.lock().unwrap().clone();
    let conn = lapin::Connection::connect(&vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut queued = HashSet::new();
    while let Some(m) = channel
        .basic_get(
            common::topology::PROCESSOR_QUEUE.into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        queued.insert(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string(),
        );
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !queued.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} answered 200 but not queued: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let log = log.join().unwrap();
    assert!(log.contains("\"level\":\"DEBUG\""), "debug logs were on");
    assert!(log.contains("request rejected"), "the 401 was logged");
    for secret in [secret, "pa55word-never-logged", "guest:guest"] {
        assert!(!log.contains(secret), "a secret reached the log: {secret}");
    }
    println!(
        "sigterm: {} answered 200, {} queued, 0 lost, exit 0",
        acked.len(),
        queued.len()
    );
}
