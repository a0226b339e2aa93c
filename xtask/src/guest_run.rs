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
    /// Both: the enforcement and sysbench parts in one guest on the
    /// instruction clock, then the decision events in a second one.
    All,
}

/// The guest boots of a suite, each with the commands it runs (a binary and
/// its arguments) and on which clock.
impl BenchSuite {
    fn boots(self) -> Vec<Boot> {
        const ENFORCEMENT: &[&str] = &["guard-bench"];
        const SYSBENCH: &[&str] = &["guard-mariadb-bench", "sysbench"];
        const EVENTS: &[&str] = &["guard-mariadb-bench", "events"];
        match self {
            BenchSuite::Enforcement => vec![Boot::instructions(&[ENFORCEMENT])],
            BenchSuite::Mariadb => {
                vec![Boot::instructions(&[SYSBENCH]), Boot::real_time(&[EVENTS])]
            }
            BenchSuite::All => vec![
                Boot::instructions(&[ENFORCEMENT, SYSBENCH]),
                Boot::real_time(&[EVENTS]),
            ],
        }
    }
}

/// One guest boot of a benchmark.
struct Boot {
    commands: &'static [&'static [&'static str]],
    options: vm::Options,
}

/// Host variables handed to the guest when set: they shorten or lengthen the
/// sysbench part (rounds, guest seconds per run) for experiments.
const FORWARDED_ENV: [&str; 2] = ["GUARD_MARIADB_ROUNDS", "GUARD_MARIADB_SECONDS"];

impl Boot {
    /// A guest whose clock counts instructions (one vCPU): timings inside it do
    /// not depend on the load on the host. The open() microbenchmark and
    /// sysbench (whose --time and TPS are then in guest time) run here.
    fn instructions(commands: &'static [&'static [&'static str]]) -> Boot {
        let mut env = vec![("GUARD_BENCH_CLOCK".to_owned(), "instructions".to_owned())];
        env.extend(
            FORWARDED_ENV
                .iter()
                .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?))),
        );
        Boot {
            commands,
            options: vm::Options {
                instruction_clock: true,
                env,
                // One emulated vCPU counting instructions is slow on a busy host.
                timeout: std::time::Duration::from_secs(90 * 60),
                silence_timeout: std::time::Duration::from_secs(30 * 60),
            },
        }
    }

    /// A guest on the real clock with 2 vCPUs: the decision events measure how
    /// fast journald and guardd's trail keep up, in wall time.
    fn real_time(commands: &'static [&'static [&'static str]]) -> Boot {
        Boot {
            commands,
            options: vm::Options::default(),
        }
    }

    fn script(&self, bin_dir: &std::path::Path) -> Result<String> {
        let mut script = String::from("set -e\n");
        for command in self.commands {
            let (binary, args) = command.split_first().context("an empty bench command")?;
            let path = bin_dir.join(binary);
            script.push_str(&vm::shell_quote(
                path.to_str().context("non-UTF-8 target path")?,
            ));
            for arg in args {
                script.push(' ');
                script.push_str(&vm::shell_quote(arg));
            }
            script.push('\n');
        }
        Ok(script)
    }
}

/// The chosen benchmark tables, on each chosen kernel.
pub fn bench(setup: &Installed, suite: BenchSuite, kernel: KernelChoice) -> Result<ExitCode> {
    ebpf::build()?;
    let bin_dir = cargo::build_guard_binaries()?;
    let boots = suite.boots();
    let mut build = Command::new("cargo");
    build
        .current_dir(repo_root())
        .args(["build", "--release", "-p", "guard-tests"]);
    let mut binaries: Vec<&str> = boots
        .iter()
        .flat_map(|boot| boot.commands.iter().map(|command| command[0]))
        .collect();
    binaries.dedup();
    for binary in binaries {
        build.args(["--bin", binary]);
    }
    command::run(&mut build)?;
    let mut worst = 0;
    for kernel in setup.kernels(kernel) {
        for boot in &boots {
            let code = vm::run_with(
                kernel,
                &boot.script(&bin_dir)?,
                &boot.options,
                &mut |line| println!("{line}"),
            )?;
            if code != 0 && worst == 0 {
                worst = code;
            }
        }
    }
    Ok(ExitCode::from(u8::try_from(worst).unwrap_or(1)))
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
