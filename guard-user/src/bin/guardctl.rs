//! guardctl: the administrator's command line for guard.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use guard::control::{self, Request};
use guard::policy;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// guardd's control socket.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(flatten)]
    keys: guard::volume::cli::KeysOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate, apply and inspect policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Is the guard enforcing? Mode, policy hash, kernel, counters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop guardd: lifts its self-protection (journaled); the kernel keeps enforcing.
    Stop,
    /// Follow guard's decision alerts in the journal.
    Alerts(guard::alerts::AlertOptions),
    /// Verify the tamper-evident audit log and its remote copies.
    #[command(subcommand)]
    Log(guard::audit::LogCommand),
    /// Encrypted volumes: init, unlock, lock, status, migrate.
    #[command(subcommand)]
    Volume(guard::volume::cli::VolumeCommand),
    /// Volume keys in the KMS: rotate, revoke.
    #[command(subcommand)]
    Key(guard::volume::cli::KeyCommand),
    /// Prove a volume's bytes on disk are encrypted: decrypt them as the kernel does.
    VerifyEncryption(guard::recovery::VerifyEncryptionArgs),
    /// Read files out of an unmounted volume image with the key from the KMS.
    Recover(guard::recovery::RecoverArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Unlock latency end to end and verify-encryption throughput vs openssl.
    Keys(guard::volume::bench::BenchKeysArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file against its format and this system; list every problem.
    Validate { file: PathBuf },
    /// Apply a policy atomically; an invalid one changes nothing.
    Apply { file: PathBuf },
    /// Show the applied policy, its hash, when it was applied, and its binaries' state.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the policy format.
    Schema,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guardctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Policy(cmd) => run_policy(&cli.socket, cmd),
        Command::Status { json } => {
            let status = control::call(&cli.socket, &Request::Status)?;
            print_value(&status, json);
            Ok(())
        }
        Command::Stop => {
            control::call(&cli.socket, &Request::Stop)?;
            println!("guardd stopped; enforcement stays armed in the kernel");
            Ok(())
        }
        Command::Alerts(options) => guard::alerts::follow(options),
        Command::Log(command) => guard::audit::cli::run(command),
        Command::Volume(command) => guard::volume::cli::run_volume(command, &cli.keys),
        Command::Key(command) => guard::volume::cli::run_key(command, &cli.keys),
        Command::VerifyEncryption(args) => guard::recovery::run_verify_encryption(args, &cli.keys),
        Command::Recover(args) => guard::recovery::run_recover(args, &cli.keys),
        Command::Bench(BenchCommand::Keys(args)) => guard::volume::bench::run(args),
    }
}

fn run_policy(socket: &Path, cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Validate { file } => {
            let text = read_policy(&file)?;
            let resolved = policy::parse(&text)
                .and_then(|p| policy::resolve(&p))
                .map_err(|errors| {
                    anyhow::anyhow!("{}: invalid policy:\n{errors}", file.display())
                })?;
            println!(
                "{}: valid ({} protected directories, {} rules, hash {})",
                file.display(),
                resolved.points.len(),
                resolved.rules.len(),
                resolved.hash
            );
            Ok(())
        }
        PolicyCommand::Apply { file } => {
            let policy = read_policy(&file)?;
            let applied = control::call(socket, &Request::Apply { policy })
                .with_context(|| format!("applying {}", file.display()))?;
            println!(
                "applied {} (hash {}, generation {}, mode {})",
                file.display(),
                applied["hash"].as_str().unwrap_or("?"),
                applied["generation"],
                applied["mode"].as_str().unwrap_or("?"),
            );
            Ok(())
        }
        PolicyCommand::Show { json } => {
            let shown = control::call(socket, &Request::Show)?;
            print_value(&shown, json);
            Ok(())
        }
        PolicyCommand::Schema => {
            println!("{}", serde_json::to_string_pretty(&policy::schema())?);
            Ok(())
        }
    }
}

fn read_policy(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading policy {}", file.display()))
}

/// JSON as is, or as indented `key: value` lines.
fn print_value(value: &serde_json::Value, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print_text(value, 0);
    }
}

fn print_text(value: &serde_json::Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if v.is_object() || v.is_array() {
                    println!("{pad}{k}:");
                    print_text(v, indent + 1);
                } else {
                    println!("{pad}{k}: {}", scalar(v));
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                if v.is_object() || v.is_array() {
                    println!("{pad}-");
                    print_text(v, indent + 1);
                } else {
                    println!("{pad}- {}", scalar(v));
                }
            }
        }
        v => println!("{pad}{}", scalar(v)),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}
