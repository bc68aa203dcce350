//! `processor --version` says the workspace's version, like `ingress --version`.

#[test]
fn the_binary_says_its_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_processor"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("processor {}", env!("CARGO_PKG_VERSION"))
    );
}
