//! `guardctl log ...`: verify copies of the audit log, run the benchmark.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::checkpoint::load_verifying_key;
use super::verify::{verify, CopySpec, Role, Trust};

#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Check the local audit log and any remote copies: each chain, signature
    /// and receipt, and that the copies agree. Exits non-zero on any problem.
    Verify(VerifyArgs),
    /// Measure sustained throughput of chain + journal + three collectors on loopback.
    Bench(super::bench::BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The host's local log directory (or its records.jsonl).
    #[arg(long)]
    pub local: Option<PathBuf>,
    /// A remote copy: a collector's directory for this host
    /// (`<store>/hosts/<host>`), as PATH or LABEL=PATH. Repeat for each copy.
    #[arg(long = "remote", value_name = "[LABEL=]PATH")]
    pub remotes: Vec<String>,
    /// File with the host's trusted Ed25519 public key (hex).
    #[arg(long)]
    pub host_key: Option<PathBuf>,
    /// File with a trusted collector public key (hex); receipts by other keys are flagged.
    #[arg(long = "collector-key")]
    pub collector_keys: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `guardctl log` subcommand.
pub fn run(command: LogCommand) -> anyhow::Result<()> {
    match command {
        LogCommand::Verify(args) => run_verify(args),
        LogCommand::Bench(args) => super::bench::run(args),
    }
}

fn copy_specs(args: &VerifyArgs) -> anyhow::Result<Vec<CopySpec>> {
    let mut specs = Vec::new();
    if let Some(local) = &args.local {
        specs.push(CopySpec {
            label: "local".into(),
            path: local.clone(),
            role: Role::Local,
        });
    }
    for (i, remote) in args.remotes.iter().enumerate() {
        let (label, path) = match remote.split_once('=') {
            Some((label, path)) if !label.is_empty() && !label.contains('/') => {
                (label.to_owned(), PathBuf::from(path))
            }
            _ => (format!("remote{}", i + 1), PathBuf::from(remote)),
        };
        if specs.iter().any(|s| s.label == label) {
            bail!("copy label {label:?} is used twice");
        }
        specs.push(CopySpec {
            label,
            path,
            role: Role::Remote,
        });
    }
    if specs.is_empty() {
        bail!("nothing to verify: give --local DIR and/or --remote PATH");
    }
    for spec in &specs {
        if !spec.path.exists() {
            bail!("{} copy {} does not exist", spec.label, spec.path.display());
        }
    }
    Ok(specs)
}

fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let specs = copy_specs(&args)?;
    let trust = Trust {
        host_key: args
            .host_key
            .as_deref()
            .map(load_verifying_key)
            .transpose()?,
        collector_keys: args
            .collector_keys
            .iter()
            .map(|p| load_verifying_key(p))
            .collect::<anyhow::Result<_>>()?,
    };
    let report = verify(&specs, &trust);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("rendering the report")?
        );
    } else {
        print!("{}", report.render());
    }
    if !report.ok() {
        bail!(
            "audit log verification failed: {} problem(s)",
            report.findings.len()
        );
    }
    Ok(())
}
