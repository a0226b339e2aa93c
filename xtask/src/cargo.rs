//! Building the workspace's binaries and test executables for the guests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::command::{self, repo_root};

/// Cargo's target directory for the workspace (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let metadata = command::output(Command::new("cargo").current_dir(repo_root()).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let metadata: Value =
        serde_json::from_str(&metadata).context("cargo metadata printed invalid JSON")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata gave no target_directory")
}

/// Builds guardd and guardctl in release mode; returns the directory holding them,
/// which the guest tests find through GUARD_BIN_DIR.
pub fn build_guard_binaries() -> Result<PathBuf> {
    command::run(Command::new("cargo").current_dir(repo_root()).args([
        "build",
        "--release",
        "-p",
        "guard-user",
        "--bins",
    ]))?;
    Ok(target_dir()?.join("release"))
}

/// A test executable of the guard-tests crate.
#[derive(Clone, Debug)]
pub struct TestBinary {
    /// The cargo target's name: `guest_env` for tests/tests/guest_env.rs.
    pub name: String,
    pub path: PathBuf,
}

/// Builds guard-tests' test executables (release) without running them.
pub fn build_guest_test_binaries() -> Result<Vec<TestBinary>> {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(repo_root())
        .args([
            "test",
            "-p",
            "guard-tests",
            "--release",
            "--no-run",
            "--message-format=json",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let shown = command::describe(&cargo);
    eprintln!("xtask: running {shown}");
    let output = cargo
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !output.status.success() {
        bail!("`{shown}` failed ({})", output.status);
    }
    let manifest = repo_root().join("tests/Cargo.toml");
    let binaries = test_binaries(&String::from_utf8_lossy(&output.stdout), &manifest);
    if binaries.is_empty() {
        bail!("`{shown}` produced no test executables");
    }
    Ok(binaries)
}

/// The test executables of the package at `manifest` among cargo's JSON messages.
fn test_binaries(messages: &str, manifest: &Path) -> Vec<TestBinary> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["profile"]["test"] == true)
        .filter(|message| message["manifest_path"].as_str().map(Path::new) == Some(manifest))
        .filter_map(|message| {
            Some(TestBinary {
                name: message["target"]["name"].as_str()?.to_owned(),
                path: PathBuf::from(message["executable"].as_str()?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_executables_of_the_chosen_package_are_picked() {
        let messages = [
            r#"{"reason":"compiler-artifact","manifest_path":"/r/tests/Cargo.toml","target":{"name":"guest_env"},"profile":{"test":true},"executable":"/r/target/release/deps/guest_env-1"}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/r/tests/Cargo.toml","target":{"name":"guard_tests"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/r/guard-user/Cargo.toml","target":{"name":"guard"},"profile":{"test":true},"executable":"/r/target/release/deps/guard-2"}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        let binaries = test_binaries(&messages, Path::new("/r/tests/Cargo.toml"));
        assert_eq!(binaries.len(), 1);
        assert_eq!(binaries[0].name, "guest_env");
        assert_eq!(
            binaries[0].path,
            Path::new("/r/target/release/deps/guest_env-1")
        );
    }
}
