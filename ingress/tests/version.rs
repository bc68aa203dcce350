//! One version everywhere: `ingress --version`, the image label, the changelog.

#[test]
fn the_binary_the_image_and_the_changelog_agree_on_the_version() {
    let version = env!("CARGO_PKG_VERSION");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingress"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ingress {version}")
    );
    let dockerfile = include_str!("../../deploy/Dockerfile");
    assert!(
        dockerfile.contains(&format!("ARG VERSION={version}\n")),
        "deploy/Dockerfile's VERSION"
    );
    let changelog = include_str!("../../CHANGELOG.md");
    assert!(
        changelog.contains(&format!("\n## {version}")),
        "CHANGELOG.md has {version}"
    );
}
