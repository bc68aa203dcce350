//! `processor reconcile`: a sweep from the command line records what Dojo knows and the
//! database does not (intents never delivered at all), once: a second run repairs nothing.

mod support;

use e2e::isolation::Services;
use simulator::fake_api::FakeDojoApi;
use simulator::scenario::lifecycles;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_records_what_was_never_delivered_once() {
    let services = Services::new().await.unwrap();
    let scenario = lifecycles("acc_cli", 30, 0.0, 71);
    let api = FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(&scenario.truth, [("sk_cli", "acc_cli")]);
    let dir = std::env::temp_dir().join(format!("dojo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("locations.toml");
    std::fs::write(
        &file,
        "[[location]]\nid = \"cli\"\naccount_id = \"acc_cli\"\napi_keys = [\"sk_cli\"]\n",
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let mut cmd = command(&services);
        cmd.env("DOJO_LOCATIONS_FILE", &file)
            .env("DOJO_API_URL", &api.url)
            .args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let first = run(&["reconcile", "--all", "--since", "2h"]).await.unwrap();
    let second = run(&["reconcile", "--location", "cli", "--since", "2h"])
        .await
        .unwrap();
    let unknown = run(&["reconcile", "--location", "nope", "--since", "2h"])
        .await
        .unwrap();
    let (first, second) = (
        String::from_utf8_lossy(&first.stdout).into_owned(),
        String::from_utf8_lossy(&second.stdout).into_owned(),
    );
    print!("{first}{second}");
    assert!(
        first.contains("cli: 30 intents seen, 30 repaired, 30 details stored"),
        "{first}"
    );
    assert!(
        second.contains("cli: 30 intents seen, 0 repaired, 0 details stored"),
        "{second}"
    );
    assert_eq!(unknown.status.code(), Some(2));
    let pool = services.db.pool().await.unwrap();
    for (pi, status) in &scenario.expected {
        let got: String =
            sqlx::query_scalar("SELECT status FROM payment_intents WHERE payment_intent_id = $1")
                .bind(pi)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(&got, status, "{pi}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    api.stop().await;
}
