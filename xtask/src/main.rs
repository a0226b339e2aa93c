//! `cargo xtask`: the project's build, setup and test commands.
//!
//! Every command first runs `setup`, which installs what a
//! fresh Debian 12 machine lacks and is quick when everything is already there.

mod cargo;
mod command;
mod ebpf;
mod guest_run;
mod kernels;
mod setup;
mod test;
mod vm;
mod vm_test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use kernels::KernelChoice;

#[derive(Parser)]
#[command(
    about = "Build, setup and test commands for guard",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the apt packages, toolchain parts, bpf-linker, virtiofsd and guest kernels.
    Setup,
    /// Build the kernel programs (target/ebpf/bpfel-unknown-none/release/guard).
    BuildEbpf,
    /// Run the guest tests (ignored `guest:` tests of guard-tests) inside QEMU guests.
    VmTest(vm_test::Args),
    /// Boot a guest and run a shell command in it as root, e.g. `vm-shell -- 'uname -r'`.
    VmShell(VmShellArgs),
    /// Everything CI runs: host tests, then the guest tests on every kernel.
    Test,
    /// The main job: a guest on Debian's 6.12 kernel showing guard at work.
    Demo,
    /// Benchmarks: `enforcement` (open() latency with and without guard, policy
    /// apply), `mariadb` (sysbench TPS plain / fscrypt / fscrypt + guard, decision
    /// events per second), or `all` (both; the open() and sysbench parts share
    /// one instruction-clock guest, the decision events run in a second,
    /// real-clock guest).
    Bench {
        /// Which benchmark to run.
        #[arg(value_enum, default_value = "enforcement")]
        suite: guest_run::BenchSuite,
        /// Which guest kernels to measure on.
        #[arg(long, value_enum, default_value = "6.12")]
        kernel: KernelChoice,
    },
}

#[derive(clap::Args)]
struct VmShellArgs {
    /// Which guest kernel to boot.
    #[arg(long, value_enum, default_value = "6.12")]
    kernel: KernelChoice,
    /// The shell command to run in the guest (words are joined with spaces).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Setup => setup::run().map(|_| ExitCode::SUCCESS),
        Command::BuildEbpf => {
            setup::run()?;
            ebpf::build()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::VmTest(args) => Ok(vm_test::run(&setup::run()?, &args)?.exit_code()),
        Command::VmShell(args) => vm_shell(&setup::run()?, &args),
        // It runs setup itself: its failure, too, must reach the line CI reads.
        Command::Test => Ok(test::run()),
        Command::Demo => guest_run::demo(&setup::run()?),
        Command::Bench { suite, kernel } => guest_run::bench(&setup::run()?, suite, kernel),
    }
}

/// Runs the command in each chosen guest; exits with the first non-zero guest exit code.
fn vm_shell(setup: &setup::Installed, args: &VmShellArgs) -> Result<ExitCode> {
    let script = args.command.join(" ");
    let mut first_failure = 0;
    for kernel in setup.kernels(args.kernel) {
        let code = vm::run(kernel, &script)?;
        if code != 0 && first_failure == 0 {
            first_failure = code;
        }
    }
    Ok(ExitCode::from(u8::try_from(first_failure).unwrap_or(1)))
}
