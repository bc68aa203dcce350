//! `dojo-simulator` as a person runs it: its help shows no secret, and a run waiting for
//! a WebSocket that never comes ends with a hint instead of hanging.

use std::process::Command;

const SECRETS: [(&str, &str); 4] = [
    ("DOJO_API_KEY", "sk_sandbox_never_shown_1"),
    ("DOJO_WEBHOOK_SECRETS", "whsec_never_shown_2"),
    ("DOJO_REST_PASSWORD", "pw_never_shown_3"),
    ("PROCESSOR_API_TOKEN", "token_never_shown_4"),
];

fn simulator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dojo-simulator"))
        .args(args)
        .envs(SECRETS)
        .output()
        .expect("dojo-simulator runs")
}

#[test]
fn help_shows_no_secret_from_the_environment_or_a_default() {
    let out = simulator(&["run", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--webhook-secret"), "{text}");
    for (_, secret) in SECRETS {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    assert!(!text.contains(simulator::event::DOC_SECRET), "{text}");
}

#[test]
fn waiting_for_a_websocket_that_never_comes_ends_with_a_hint() {
    let out = simulator(&["run", "--ws-listen", "127.0.0.1:0", "--ws-wait", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DOJO_WS_URL=ws://127.0.0.1:"), "{err}");
    assert!(err.contains("leave out --ws-listen"), "{err}");
    for (_, secret) in SECRETS {
        assert!(!err.contains(secret), "{err}");
    }
}

#[test]
fn version_is_the_workspace_version() {
    let out = simulator(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("dojo-simulator {}", env!("CARGO_PKG_VERSION"))
    );
}
