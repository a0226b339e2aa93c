//! `cargo xtask demo` and `cargo xtask bench`: boot a guest and run one job in it.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::cargo;
use crate::command::{self, repo_root};
use crate::ebpf;
use crate::kernels::KernelChoice;
use crate::setup::Installed;
use crate::vm;

const DEMO_SCRIPT: &str = include_str!("../demo/mariadb.sh");

/// The main job: Debian's MariaDB on a guard volume with keys from a KMS, its
/// data refused to root, backed up, locked, unlocked and crypto-shredded, shown
/// as a transcript (xtask/demo/mariadb.sh).
pub fn demo(setup: &Installed) -> Result<ExitCode> {
    ebpf::build()?;
    cargo::build_guard_binaries()?;
    run_in_guest(
        setup,
        KernelChoice::Backports,
        DEMO_SCRIPT,
        &vm::Options::default(),
    )
}

/// Which benchmark `cargo xtask bench` runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BenchSuite {
    /// open() latency with and without guard, policy apply time (guard-bench).
    Enforcement,
    /// sysbench on MariaDB and decision events per second (guard-mariadb-bench).
    Mariadb,
    /// Both, one after the other in the same guest.
    All,
}

impl BenchSuite {
    fn binaries(self) -> &'static [&'static str] {
        match self {
            BenchSuite::Enforcement => &["guard-bench"],
            BenchSuite::Mariadb => &["guard-mariadb-bench"],
            BenchSuite::All => &["guard-bench", "guard-mariadb-bench"],
        }
    }
}

/// The chosen benchmark tables, on each chosen kernel.
pub fn bench(setup: &Installed, suite: BenchSuite, kernel: KernelChoice) -> Result<ExitCode> {
    ebpf::build()?;
    let bin_dir = cargo::build_guard_binaries()?;
    let mut build = Command::new("cargo");
    build
        .current_dir(repo_root())
        .args(["build", "--release", "-p", "guard-tests"]);
    for binary in suite.binaries() {
        build.args(["--bin", binary]);
    }
    command::run(&mut build)?;
    let mut script = String::from("set -e\n");
    for binary in suite.binaries() {
        let path = bin_dir.join(binary);
        script.push_str(&vm::shell_quote(
            path.to_str().context("non-UTF-8 target path")?,
        ));
        script.push('\n');
    }
    // The open() microbenchmark reads a deterministic instruction clock; MariaDB
    // and sysbench need wall time (timeouts, sysbench's --time), so a guest that
    // runs them keeps the real clock.
    let options = match suite {
        BenchSuite::Enforcement => vm::Options {
            instruction_clock: true,
            env: vec![("GUARD_BENCH_CLOCK".into(), "instructions".into())],
            // One emulated vCPU counting instructions is slow on a busy host.
            timeout: std::time::Duration::from_secs(90 * 60),
            silence_timeout: std::time::Duration::from_secs(30 * 60),
        },
        BenchSuite::Mariadb | BenchSuite::All => vm::Options::default(),
    };
    run_in_guest(setup, kernel, &script, &options)
}

fn run_in_guest(
    setup: &Installed,
    kernel: KernelChoice,
    script: &str,
    options: &vm::Options,
) -> Result<ExitCode> {
    let mut worst = 0;
    for kernel in setup.kernels(kernel) {
        let code = vm::run_with(kernel, script, options, &mut |line| println!("{line}"))?;
        if code != 0 && worst == 0 {
            worst = code;
        }
    }
    Ok(ExitCode::from(u8::try_from(worst).unwrap_or(1)))
}
