//! `guardctl volume ...` and `guardctl key ...`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::migrate::{migrate, Recovered};
use super::{dmcrypt, init_fscrypt, lock, revoke, rotate, status, unlock, VolumeStore};
use crate::kms::{Kms, KmsConfig};

/// Where guard keeps volume records and how it reaches the KMS.
#[derive(Debug, Clone, clap::Args)]
pub struct KeysOptions {
    /// Directory of volume records (wrapped keys and metadata; no secrets).
    #[arg(
        long,
        env = "GUARD_VOLUME_DIR",
        default_value = "/var/lib/guard/volumes",
        global = true
    )]
    pub volume_dir: PathBuf,
    /// KMS configuration (JSON: kind guard-kms or kmip, address, TLS files).
    #[arg(
        long,
        env = "GUARD_KMS_CONFIG",
        default_value = "/etc/guard/kms.json",
        global = true
    )]
    pub kms_config: PathBuf,
}

impl KeysOptions {
    pub fn store(&self) -> VolumeStore {
        VolumeStore::new(&self.volume_dir)
    }

    pub fn kms(&self) -> Result<Arc<dyn Kms>> {
        KmsConfig::load(&self.kms_config)?.connect()
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum VolumeCommand {
    /// Encrypt an empty directory (fscrypt v2, AES-256-XTS/CTS) or a block
    /// device (dm-crypt) with a new key from the KMS. Leaves it unlocked.
    Init {
        /// Volume name (A-Z a-z 0-9 - _).
        name: String,
        /// The empty directory to encrypt, on ext4 with the encrypt feature.
        #[arg(required_unless_present = "dm_crypt", conflicts_with = "dm_crypt")]
        dir: Option<PathBuf>,
        /// Encrypt this block device with dm-crypt instead.
        #[arg(long, value_name = "DEVICE")]
        dm_crypt: Option<PathBuf>,
    },
    /// Fetch the key from the KMS and install it in the kernel.
    Unlock {
        /// Volume to unlock.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Unlock every configured volume.
        #[arg(long)]
        all: bool,
    },
    /// Remove the key from the kernel; reports files still in use.
    Lock { name: String },
    /// Show each volume's key identifier and state.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy SRC into a new encrypted volume at DEST, verify every byte, then
    /// swap the two atomically. The old data is left at DEST. If a migrate was
    /// interrupted, run the same command again: it finishes or starts over.
    Migrate {
        src: PathBuf,
        dest: PathBuf,
        /// Name of the new volume.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeyCommand {
    /// Replace the key-encryption key(s) in the KMS and rewrap the data keys.
    /// No downtime, no data rewrite.
    Rotate {
        /// Volume to rotate (default: every volume).
        volume: Option<String>,
    },
    /// Make the KMS refuse the volume's key for good and remove it from the
    /// kernel: the data becomes unreadable (crypto-shredding).
    Revoke {
        volume: String,
        /// Required: revocation cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

pub fn run_volume(command: VolumeCommand, options: &KeysOptions) -> Result<()> {
    let store = options.store();
    match command {
        VolumeCommand::Init {
            name,
            dir,
            dm_crypt,
        } => {
            let kms = options.kms()?;
            let record = match (dir, dm_crypt) {
                (Some(dir), None) => init_fscrypt(&store, kms.as_ref(), &name, &dir)?,
                (None, Some(device)) => dmcrypt::init(&store, kms.as_ref(), &name, &device)?,
                _ => bail!("give either a directory or --dm-crypt DEVICE"),
            };
            println!(
                "volume {} initialised and unlocked: key identifier {}, KEK {} in {}",
                record.name,
                record.key_identifier,
                record.kek_id,
                kms.describe()
            );
        }
        VolumeCommand::Unlock { name, all } => {
            let kms = options.kms()?;
            let names = match (name, all) {
                (Some(name), false) => vec![name],
                _ => store
                    .list()?
                    .into_iter()
                    .filter(|r| !r.revoked)
                    .map(|r| r.name)
                    .collect(),
            };
            let mut failed = 0;
            for name in names {
                match unlock(&store, kms.as_ref(), &name) {
                    Ok(report) => println!(
                        "volume {name} unlocked (key {}, {:.1} ms)",
                        report.key_identifier,
                        report.elapsed.as_secs_f64() * 1000.0
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("volume {name} stays locked: {e:#}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} volume(s) stay locked");
            }
        }
        VolumeCommand::Lock { name } => {
            let report = lock(&store, &name)?;
            if report.files_busy {
                println!("volume {name}: key removed, but these files are still open and stay readable until closed:");
                for file in &report.busy_files {
                    println!("  {}", file.display());
                }
                println!("close them and run `guardctl volume lock {name}` again to finish");
            } else {
                println!("volume {name} locked");
            }
        }
        VolumeCommand::Status { json } => {
            let lines = status(&store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                println!(
                    "{:<16} {:<9} {:<34} {:<32} LOCATION",
                    "VOLUME", "TYPE", "STATE", "KEY IDENTIFIER"
                );
                for line in lines {
                    println!(
                        "{:<16} {:<9} {:<34} {:<32} {}",
                        line.name,
                        line.kind,
                        line.state,
                        line.key_identifier,
                        line.location.display()
                    );
                }
            }
        }
        VolumeCommand::Migrate { src, dest, name } => {
            let kms = options.kms()?;
            let report = migrate(&store, kms.as_ref(), &name, &src, &dest)?;
            match report.recovered {
                Some(Recovered::RolledBack) => println!(
                    "an interrupted migrate into volume {name} was found: its partial copy was removed and the migrate started over"
                ),
                Some(Recovered::Resumed) => println!(
                    "an interrupted migrate into volume {name} was found: its verified copy was swapped in"
                ),
                None => {}
            }
            println!(
                "migrated {} files ({} bytes) into volume {}; verified byte for byte and swapped.",
                report.files, report.bytes, report.record.name
            );
            println!(
                "the old, unencrypted data is at {}: shred it once you are satisfied",
                report.old_data.display()
            );
        }
    }
    Ok(())
}

pub fn run_key(command: KeyCommand, options: &KeysOptions) -> Result<()> {
    let store = options.store();
    let kms = options.kms()?;
    match command {
        KeyCommand::Rotate { volume } => {
            let names = match volume {
                Some(name) => vec![name],
                None => store
                    .list()?
                    .into_iter()
                    .filter(|r| !r.revoked)
                    .map(|r| r.name)
                    .collect(),
            };
            for name in names {
                let record = rotate(&store, kms.as_ref(), &name)?;
                println!(
                    "volume {name}: data key rewrapped under new KEK {}",
                    record.kek_id
                );
            }
        }
        KeyCommand::Revoke { volume, yes } => {
            if !yes {
                bail!("revoking makes volume {volume}'s data unreadable for good; add --yes to confirm");
            }
            let kek_id = store.load(&volume)?.kek_id;
            let report = revoke(&store, kms.as_ref(), &volume)?;
            println!("volume {volume}: key revoked in the KMS and removed from the kernel");
            journal_revocation(&volume, &kek_id);
            if report.lock.files_busy {
                println!("files still open stay readable until closed:");
                for file in &report.lock.busy_files {
                    println!("  {}", file.display());
                }
            }
        }
    }
    Ok(())
}

/// Records who revoked a volume's key in the journal. journald adds the
/// trusted fields that say who (`_UID`, `_PID`, `_COMM`) and when. The
/// revocation has already happened and cannot be undone, so a journal that
/// cannot be reached is reported, not an error.
fn journal_revocation(volume: &str, kek_id: &str) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();
    // The login uid survives su and sudo: the person behind a root shell.
    let login_uid = std::fs::read_to_string("/proc/self/loginuid")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    let sudo_user = std::env::var("SUDO_USER").unwrap_or_default();
    let message = format!(
        "volume {volume}: key-encryption key {kek_id} revoked by uid {uid} (login uid {login_uid}{}); the data is crypto-shredded",
        if sudo_user.is_empty() { String::new() } else { format!(", sudo by {sudo_user}") }
    );
    let sent = crate::journal::Journal::connect().and_then(|journal| {
        journal.send(&[
            ("MESSAGE_ID", crate::journal::message_id::KEY_REVOKED),
            ("MESSAGE", &message),
            ("PRIORITY", crate::journal::priority::WARNING),
            ("GUARD_VOLUME", volume),
            ("GUARD_KEK", kek_id),
            ("GUARD_UID", &uid),
            ("GUARD_LOGIN_UID", &login_uid),
            ("GUARD_SUDO_USER", &sudo_user),
        ])
    });
    if let Err(e) = sent {
        eprintln!("guardctl: warning: the revocation could not be written to the journal: {e}");
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, Subcommand};

    use super::*;
    use crate::recovery::{RecoverArgs, VerifyEncryptionArgs};
    use crate::volume::bench::BenchKeysArgs;

    /// The shape the lead wires into guardctl.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: KeysOptions,
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        #[command(subcommand)]
        Volume(VolumeCommand),
        #[command(subcommand)]
        Key(KeyCommand),
        VerifyEncryption(VerifyEncryptionArgs),
        Recover(RecoverArgs),
        BenchKeys(BenchKeysArgs),
    }

    #[test]
    fn commands_parse_and_reject_bad_arguments() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["guardctl", "volume", "init", "db", "/var/lib/mysql"]).unwrap();
        assert!(matches!(
            cli.command,
            Top::Volume(VolumeCommand::Init { dm_crypt: None, .. })
        ));
        let cli =
            Cli::try_parse_from(["guardctl", "volume", "init", "db", "--dm-crypt", "/dev/vdb"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Top::Volume(VolumeCommand::Init {
                dir: None,
                dm_crypt: Some(_),
                ..
            })
        ));
        // Neither or both targets, unlock without a name or --all: refused.
        assert!(Cli::try_parse_from(["guardctl", "volume", "init", "db"]).is_err());
        assert!(Cli::try_parse_from([
            "guardctl",
            "volume",
            "init",
            "db",
            "/d",
            "--dm-crypt",
            "/dev/vdb"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["guardctl", "volume", "unlock"]).is_err());
        assert!(Cli::try_parse_from(["guardctl", "volume", "unlock", "db", "--all"]).is_err());
        let cli = Cli::try_parse_from([
            "guardctl",
            "verify-encryption",
            "db",
            "--marker",
            "a",
            "--marker",
            "b",
        ])
        .unwrap();
        assert!(matches!(cli.command, Top::VerifyEncryption(ref a) if a.markers.len() == 2));
        assert!(Cli::try_parse_from(["guardctl", "recover", "db", "--image", "/x.img"]).is_err());
        let cli = Cli::try_parse_from([
            "guardctl",
            "--volume-dir",
            "/tmp/v",
            "key",
            "revoke",
            "db",
            "--yes",
        ])
        .unwrap();
        assert_eq!(cli.options.volume_dir, PathBuf::from("/tmp/v"));
    }
}
