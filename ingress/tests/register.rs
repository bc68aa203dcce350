//! `ingress register` against a local fake of Dojo's registration endpoint.

use simulator::fake_api::FakeDojoApi;
use std::process::{Command, Output};

async fn ingress(api_url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingress"));
    cmd.args(args)
        .env("DOJO_API_URL", api_url)
        .env("DOJO_API_KEY", "sk_sandbox_0123456789abcdef")
        .env("DOJO_SOFTWARE_HOUSE_ID", "softhouse-1")
        .env("DOJO_RESELLER_ID", "reseller-9")
        .env_remove("DOJO_REST_USERNAME")
        .env_remove("DOJO_REST_PASSWORD");
    tokio::task::spawn_blocking(move || cmd.output().expect("ingress runs"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_ws_sends_both_capabilities_with_dojo_headers() {
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    let out = ingress(&api.url, &["register", "ws"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("registered with Dojo"));

    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/epos/integrations/ws")
    );
    assert_eq!(
        r.headers["authorization"],
        "Basic sk_sandbox_0123456789abcdef"
    );
    assert_eq!(r.headers["software-house-id"], "softhouse-1");
    assert_eq!(r.headers["reseller-id"], "reseller-9");
    assert!(r.headers.contains_key("version"));
    assert_eq!(
        r.body,
        serde_json::json!({"capabilities": [
            {"name": "HandleEvent:payment_intent.created", "version": "v1"},
            {"name": "HandleEvent:payment_intent.status_updated", "version": "v1"}
        ]})
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rest_sends_the_url_and_basic_credentials() {
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    let out = ingress(
        &api.url,
        &[
            "register",
            "rest",
            "--url",
            "https://pos.example/dojo",
            "--username",
            "dojo",
            "--password",
            "pw",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &api.requests()[0];
    assert_eq!(r.path, "/epos/integrations/rest");
    assert_eq!(r.body["url"], "https://pos.example/dojo");
    assert_eq!(
        r.body["auth"],
        serde_json::json!({"authType": "basic", "basic": {"username": "dojo", "password": "pw"}})
    );
    assert_eq!(r.body["capabilities"].as_array().unwrap().len(), 2);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dojo_refusing_shows_its_problem_details_and_fails() {
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.answer_with(
        400,
        serde_json::json!({"type": "https://tools.ietf.org/html/rfc7231#section-6.5.1", "title": "One or more validation errors occurred.", "status": 400, "errors": {"Capabilities[0].Version": ["The version v9 is not supported."]}, "traceId": "00-feed"}),
    );
    let out = ingress(&api.url, &["register", "ws"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Dojo refused the registration (400 Bad Request)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("One or more validation errors occurred."),
        "{stderr}"
    );
    assert!(
        stderr.contains("Capabilities[0].Version: The version v9 is not supported."),
        "{stderr}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_request_and_sends_nothing() {
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    let out = ingress(
        &api.url,
        &[
            "register",
            "rest",
            "--url",
            "https://pos.example",
            "--username",
            "u",
            "--password",
            "hunter2",
            "--dry-run",
        ],
    )
    .await;
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("PUT {}/epos/integrations/rest", api.url)),
        "{stdout}"
    );
    assert!(stdout.contains("software-house-id: softhouse-1"));
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("0123456789abcdef"),
        "{stdout}"
    );
    assert!(api.requests().is_empty());

    let unreachable = ingress("http://127.0.0.1:1", &["register", "ws"]).await;
    assert_eq!(unreachable.status.code(), Some(1));
    let err = String::from_utf8_lossy(&unreachable.stderr);
    assert!(err.contains("cannot reach Dojo"), "{err}");
    // The cause is shown (not only "error sending request"), and only once.
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert_eq!(err.matches("error sending request").count(), 1, "{err}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_location_registers_with_its_own_key_and_one_failure_stops_no_other() {
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    let sims = simulator::locations::generate(3, 42);
    let path = std::env::temp_dir().join(format!("register-{}.toml", std::process::id()));
    std::fs::write(&path, simulator::locations::to_toml(&sims, true)).unwrap();
    let run = |args: &'static [&'static str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingress"));
        cmd.args(args)
            .env("DOJO_API_URL", &api.url)
            .env("DOJO_LOCATIONS_FILE", &path)
            .env("DOJO_SOFTWARE_HOUSE_ID", "softhouse-1")
            .env_remove("DOJO_API_KEY");
        tokio::task::spawn_blocking(move || cmd.output().expect("ingress runs"))
    };

    let one = run(&["register", "ws", "--location", "loc-0002"])
        .await
        .unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Basic {}", sims[1].api_key)
    );

    api.refuse_key(&sims[0].api_key);
    let all = run(&["register", "rest", "--url", "https://pos.example", "--all"])
        .await
        .unwrap();
    assert_eq!(all.status.code(), Some(1), "one location failed");
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert!(
        stderr.contains("location loc-0001") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 3 registrations failed"), "{stderr}");
    let rest: Vec<_> = api.requests().into_iter().skip(1).collect();
    assert_eq!(rest.len(), 3, "the failure did not stop the others");
    assert_eq!(
        rest[2].body["url"],
        "https://pos.example/locations/loc-0003"
    );
    assert_eq!(
        rest[2].body["auth"]["basic"]["username"],
        sims[2].rest_username
    );
    assert_eq!(
        rest[2].headers["authorization"],
        format!("Basic {}", sims[2].api_key)
    );
    let stdout = String::from_utf8_lossy(&all.stdout);
    assert!(!stdout.contains(&sims[2].rest_password) && !stderr.contains(&sims[0].api_key));

    let unknown = run(&["register", "ws", "--location", "nowhere"])
        .await
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    let _ = std::fs::remove_file(&path);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_ws_all_without_a_websocket_location_says_so() {
    let sims = simulator::locations::generate(2, 7);
    let path = std::env::temp_dir().join(format!("register-nows-{}.toml", std::process::id()));
    std::fs::write(&path, simulator::locations::to_toml(&sims, false)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingress"));
    cmd.args(["register", "ws", "--all"])
        .env("DOJO_LOCATIONS_FILE", &path)
        .env("DOJO_API_URL", "http://127.0.0.1:1")
        .env("DOJO_SOFTWARE_HOUSE_ID", "softhouse-1")
        .env_remove("DOJO_API_KEY");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("ingress runs"))
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("websocket = true"), "{stderr}");
}
