//! Starting the ingress binary as an operator would: bad configuration stops it with one
//! line and exit 2; a broker that refuses it says why, distinctly, in its log; and the
//! log says at start which channels are on.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ingress() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingress"));
    for var in [
        "DOJO_WEBHOOK_SECRETS",
        "DOJO_REST_USERNAME",
        "DOJO_REST_PASSWORD",
        "DOJO_WS_URL",
        "DOJO_API_KEY",
        "DOJO_LOCATIONS_FILE",
        "AMQP_URL",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("INGRESS_ADDR", "127.0.0.1:0");
    cmd
}

#[test]
fn bad_configuration_is_one_line_and_exit_2() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("DOJO_WEBHOOK_SECRET", "misspelt")],
            "no channel configured",
        ),
        (
            &[
                ("DOJO_WEBHOOK_SECRETS", "s"),
                ("AMQP_URL", "amqp://guest:hunter2@127.0.0.1:notaport/%2f"),
            ],
            "AMQP_URL",
        ),
        (
            &[("DOJO_WEBHOOK_SECRETS", "s"), ("AMQP_URL", "rabbit://x")],
            "not an amqp://",
        ),
        (
            &[("DOJO_LOCATIONS_FILE", "/nonexistent/locations.toml")],
            "DOJO_LOCATIONS_FILE",
        ),
    ];
    for (env, want) in cases {
        let out = ingress().envs(env.iter().copied()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(want), "{env:?}: {err}");
        assert!(!err.contains("hunter2"), "no password: {err}");
    }
}

/// Starts ingress against `amqp_url` and returns the first log line about the broker,
/// after checking the start-up line that says which channels are on.
fn first_broker_complaint(amqp_url: &str) -> String {
    let mut child = ingress()
        .env("DOJO_WEBHOOK_SECRETS", "s")
        .env("AMQP_URL", amqp_url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = String::new();
    let mut channels = None;
    for line in lines.map_while(Result::ok) {
        if line.contains("\"locations served\"") {
            channels = Some(line.clone());
        }
        // The supervisor may complain before the start-up line is written: wait for both
        // (the complaint repeats at every attempt).
        if found.is_empty() && line.contains("cannot connect to the broker") {
            found = line;
        }
        if !found.is_empty() && channels.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no complaint about the broker");
    }
    let _ = child.kill();
    let _ = child.wait();
    // Only the webhook is configured (DOJO_WEBHOOK_SECRETS), and the log says so.
    let channels: serde_json::Value =
        serde_json::from_str(&channels.expect("channels logged")).expect("a JSON log line");
    let fields = &channels["fields"];
    assert_eq!(
        (&fields["webhook"], &fields["rest"], &fields["websocket"]),
        (&1.into(), &0.into(), &0.into()),
        "{channels}"
    );
    found
}

#[test]
fn refused_credentials_an_unknown_vhost_and_an_unreachable_broker_are_told_apart() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        (
            "amqp://guest:wrong-password@127.0.0.1:5672/%2f",
            "refused the credentials",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost-here",
            "refused the vhost",
        ),
        (
            &*format!("amqp://guest:guest@127.0.0.1:{unused}/%2f"),
            "cannot be reached",
        ),
    ];
    for (url, want) in cases {
        let line = first_broker_complaint(url);
        assert!(line.contains(want), "{url}: {line}");
        assert!(!line.contains("wrong-password"), "{line}");
    }
}

/// `ingress healthcheck` (the images' probe) needs only the address: without any
/// channel configured it probes, and a closed port is "unhealthy" (exit 1), not bad
/// configuration (exit 2).
#[test]
fn the_healthcheck_needs_only_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = ingress()
        .env("INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .arg("healthcheck")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unhealthy"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}
