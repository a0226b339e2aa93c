//! guardd: the guard daemon. Arms the LSM programs (or adopts armed ones),
//! applies policies on request from guardctl, and writes every decision the
//! kernel reports to the systemd journal.
use clap::Parser;
use guard::{control, daemon, loader};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// bpffs folder where programs, links and maps are pinned.
    #[arg(long, default_value = loader::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Where the applied policy record is kept.
    #[arg(long, default_value = "/var/lib/guard")]
    state_dir: PathBuf,
    /// Control socket for guardctl.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Kernel BTF to resolve struct layouts from.
    #[arg(long, default_value = guard::offsets::VMLINUX_BTF)]
    btf: PathBuf,
    /// Decision events per CPU per second sent before the kernel suppresses
    /// the rest (their number is reported in a later journal entry).
    #[arg(long, default_value_t = guard_common::DEFAULT_EVENTS_PER_SEC_PER_CPU)]
    event_rate: u32,
    /// Nobody but guardd may signal (kill, stop) or trace guardd. Stays on,
    /// across guardd restarts, until a clean `guardctl stop`.
    #[arg(long)]
    protect_self: bool,
    /// Audit trail configuration (JSON: local folder, host key, collectors,
    /// syslog). Without it the trail is kept only locally, under the state folder.
    #[arg(long)]
    audit_config: Option<PathBuf>,
    /// Records of the encrypted volumes to unlock at start (wrapped keys only).
    #[arg(long, default_value = "/var/lib/guard/volumes")]
    volume_dir: PathBuf,
    /// How to reach the KMS that unwraps the volume keys.
    #[arg(long, default_value = "/etc/guard/kms.json")]
    kms_config: PathBuf,
    /// Public key file (`guardctl keygen`) of the off-host key that must sign
    /// policies and disarm/stop orders. Pinned with the guard's pins when it
    /// is armed; a restarted guardd adopts the pinned key and refuses another.
    /// Turns self-protection on. Without it, and nothing pinned, policy signing is off.
    #[arg(long)]
    trust_key: Option<PathBuf>,
    /// A kernel module to load before guard arms (repeatable): while it is
    /// armed nothing loads modules, not even the kernel's own modprobe.
    /// Those guard's volumes need (device-mapper, dm-crypt, loop, their
    /// ciphers and fscrypt's SHA-512) are always loaded.
    #[arg(long = "preload-module", value_name = "NAME")]
    preload_modules: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let audit = match &args.audit_config {
        Some(path) => match read_audit_config(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("guardd: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => daemon::Config::local_audit(&args.state_dir),
    };
    let config = daemon::Config {
        pin_dir: args.pin_dir,
        state_dir: args.state_dir,
        socket: args.socket,
        btf: args.btf,
        events_per_sec: args.event_rate,
        protect_self: args.protect_self,
        audit,
        volume_dir: args.volume_dir,
        kms_config: args.kms_config,
        trust_key: args.trust_key,
        preload_modules: args.preload_modules,
    };
    match daemon::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guardd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn read_audit_config(path: &std::path::Path) -> anyhow::Result<guard::audit::TrailConfig> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading audit config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("audit config {}", path.display()))
}
