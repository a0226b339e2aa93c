//! `cargo xtask build-ebpf`: builds the kernel programs with the nightly toolchain.
//! guard-user's build.rs embeds the result, target/ebpf/bpfel-unknown-none/release/guard.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Result};

use crate::command::{self, repo_root};

/// Where guard-user/build.rs expects the kernel object.
pub fn object_path() -> PathBuf {
    repo_root().join("target/ebpf/bpfel-unknown-none/release/guard")
}

pub fn build() -> Result<()> {
    let root = repo_root();
    command::run(
        Command::new("cargo")
            .current_dir(&root)
            .args([
                "+nightly",
                "build",
                "--release",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core"])
            .arg("--manifest-path")
            .arg(root.join("guard-ebpf/Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("target/ebpf")),
    )?;
    let object = object_path();
    ensure!(
        object.is_file(),
        "the eBPF build succeeded but left no {}",
        object.display()
    );
    Ok(())
}
