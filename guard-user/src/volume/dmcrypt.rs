//! dm-crypt volumes: a block device mapped as `/dev/mapper/guard-NAME` with
//! AES-256-XTS (plain64 IVs), the volume key given to dm-crypt as a `logon`
//! key referenced from the table as `:64:logon:guard:NAME`. The table never
//! holds the key itself, so `dmsetup table` shows no secret.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::device_mapper;
use super::{check_name, new_volume_key, VolumeKind, VolumeRecord, VolumeStore};
use crate::keyring::{self, SecretKey};
use crate::kms::Kms;

pub fn mapper_name(volume: &str) -> String {
    format!("guard-{volume}")
}

pub fn mapper_path(volume: &str) -> PathBuf {
    Path::new("/dev/mapper").join(mapper_name(volume))
}

pub fn is_open(volume: &str) -> bool {
    mapper_path(volume).exists()
}

/// Description of the logon key; dm-crypt finds it by this name.
pub fn key_description(volume: &str) -> String {
    format!("guard:{volume}")
}

/// The dm-crypt parameters mapping `device` with the logon key `description`.
pub fn crypt_params(device: &Path, key_len: usize, description: &str) -> String {
    format!(
        "aes-xts-plain64 :{key_len}:logon:{description} 0 {} 0",
        device.display()
    )
}

fn run(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Size of a block device in 512-byte sectors.
fn sectors(device: &Path) -> Result<u64> {
    let text = run(Command::new("blockdev").arg("--getsz").arg(device))?;
    text.trim()
        .parse()
        .with_context(|| format!("blockdev --getsz {} printed {text:?}", device.display()))
}

/// Refuses what must not be turned into a dm-crypt volume.
fn check_device(device: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(device).with_context(|| format!("{}", device.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", device.display());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let canonical = device.canonicalize()?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().next().map(Path::new) == Some(canonical.as_path()))
    {
        bail!(
            "{} is mounted; refusing to put dm-crypt on it",
            device.display()
        );
    }
    Ok(())
}

/// `volume init NAME --dm-crypt DEVICE`: a new data key for the device; the
/// mapping is opened so the caller can create a filesystem on it.
pub fn init(store: &VolumeStore, kms: &dyn Kms, name: &str, device: &Path) -> Result<VolumeRecord> {
    check_name(name)?;
    if store.exists(name) {
        bail!("volume {name:?} already exists");
    }
    let device = device
        .canonicalize()
        .with_context(|| format!("{}", device.display()))?;
    check_device(&device)?;
    let (key, record) = new_volume_key(
        kms,
        name,
        VolumeKind::DmCrypt {
            device: device.clone(),
        },
    )?;
    if let Err(e) = store.save(&record) {
        let _ = kms.destroy(&record.kek_id);
        return Err(e);
    }
    if let Err(e) = open(name, &device, &key) {
        let _ = store.remove(name);
        let _ = kms.destroy(&record.kek_id);
        return Err(e);
    }
    debug_assert!(B64.decode(&record.wrapped_key).is_ok());
    Ok(record)
}

/// Maps `device` with `key`: logon key in, mapping made, logon key out.
pub fn open(volume: &str, device: &Path, key: &SecretKey) -> Result<()> {
    if is_open(volume) {
        return Ok(());
    }
    let sectors = sectors(device)?;
    let description = key_description(volume);
    let installed = keyring::add_logon_key(&description, key)?;
    let params = crypt_params(device, key.len(), &description);
    // A `CRYPT-` uuid, as cryptsetup gives its mappings, tells guard's
    // policy (and other tools) that the device below holds ciphertext.
    let uuid = format!("CRYPT-GUARD-{}", mapper_name(volume));
    let target = device_mapper::Target {
        sectors,
        target: "crypt",
        params: &params,
    };
    let created = device_mapper::create(&mapper_name(volume), &uuid, &target);
    // dm-crypt copied the key at table load; the keyring copy goes now.
    let invalidated = installed.invalidate();
    created.with_context(|| format!("mapping {} for volume {volume}", device.display()))?;
    invalidated?;
    Ok(())
}

/// Removes the mapping (and with it dm-crypt's copy of the key).
pub fn close(volume: &str) -> Result<()> {
    if !is_open(volume) {
        return Ok(());
    }
    device_mapper::remove(&mapper_name(volume))
        .with_context(|| format!("locking volume {volume} (is its filesystem still mounted?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_references_the_logon_key_not_the_key() {
        let params = crypt_params(Path::new("/dev/vdb"), 64, "guard:db");
        assert_eq!(params, "aes-xts-plain64 :64:logon:guard:db 0 /dev/vdb 0");
    }
}
