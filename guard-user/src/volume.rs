//! Encrypted volumes: fscrypt v2 directories and dm-crypt devices whose keys
//! come from a KMS and go straight into the kernel.
//!
//! The host keeps, per volume, one JSON record in the volume directory
//! (default `/var/lib/guard/volumes/NAME.json`): the data key wrapped by the
//! volume's KEK, the KEK's id in the KMS, and the key identifier. Never the
//! plaintext key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::fscrypt::{self, DirPolicy, KeyIdentifier, KeyStatus};
use crate::keyring::{self, SecretKey, VOLUME_KEY_LEN};
use crate::kms::Kms;

pub mod bench;
pub mod cli;
pub(crate) mod device_mapper;
pub mod dmcrypt;
pub mod migrate;
pub mod startup;

pub use cli::{KeyCommand, KeysOptions, VolumeCommand};
pub use startup::{unlock_configured, Backoff, UnlockEvent};

/// Version of the record format.
const RECORD_FORMAT: u32 = 1;

/// What a volume encrypts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VolumeKind {
    /// An fscrypt v2 directory on ext4.
    Fscrypt {
        path: PathBuf,
        /// Set while a migrate is between its swap and its last record update:
        /// the encrypted directory is at `path` or, if the swap did not happen, here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_path: Option<PathBuf>,
    },
    /// A block device mapped through dm-crypt as `/dev/mapper/guard-NAME`.
    DmCrypt { device: PathBuf },
}

/// The host's record of one volume. Holds no secret in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    pub format: u32,
    pub name: String,
    pub kind: VolumeKind,
    /// fscrypt v2 identifier (HKDF-SHA512) of the data key, hex.
    pub key_identifier: String,
    /// Id of the volume's key-encryption key in the KMS.
    pub kek_id: String,
    /// The data key wrapped by the KEK, base64.
    pub wrapped_key: String,
    /// Unix seconds.
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

impl VolumeRecord {
    pub fn key_identifier(&self) -> Result<KeyIdentifier> {
        KeyIdentifier::from_hex(&self.key_identifier)
            .with_context(|| format!("volume {}", self.name))
    }

    fn wrapped(&self) -> Result<Vec<u8>> {
        B64.decode(&self.wrapped_key).with_context(|| {
            format!(
                "volume {}: wrapped key is not base64 (tampered record?)",
                self.name
            )
        })
    }

    /// Associated data bound into the wrapping: a wrapped key moved to another
    /// volume's record, or a record whose identifier was edited, fails to unwrap.
    fn aad(&self) -> Vec<u8> {
        wrap_aad(&self.name, &self.key_identifier)
    }

    fn check(&self, file: &Path) -> Result<()> {
        if self.format != RECORD_FORMAT {
            bail!(
                "{}: record format {} is not supported (expected {RECORD_FORMAT})",
                file.display(),
                self.format
            );
        }
        check_name(&self.name).with_context(|| format!("{}", file.display()))?;
        self.key_identifier()
            .with_context(|| format!("{}", file.display()))?;
        Ok(())
    }
}

fn wrap_aad(name: &str, key_identifier: &str) -> Vec<u8> {
    format!("guard-volume-v1\0{name}\0{key_identifier}").into_bytes()
}

/// Name of a volume's KEK in the KMS.
pub fn kek_name(volume: &str) -> String {
    format!("guard-volume-{volume}")
}

/// Volume names become file names, key descriptions and device-mapper names.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if !ok {
        bail!("invalid volume name {name:?}: use 1-64 of A-Z a-z 0-9 - _, not starting with -");
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The directory of volume records.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    dir: PathBuf,
}

impl VolumeStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path_of(name).exists()
    }

    pub fn load(&self, name: &str) -> Result<VolumeRecord> {
        check_name(name)?;
        let path = self.path_of(name);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "volume {name:?} is not configured (no record at {})",
                path.display()
            )
        })?;
        let record: VolumeRecord = serde_json::from_str(&text)
            .with_context(|| format!("parsing volume record {}", path.display()))?;
        record.check(&path)?;
        if record.name != name {
            bail!(
                "{}: record is for volume {:?}, not {name:?}",
                path.display(),
                record.name
            );
        }
        Ok(record)
    }

    /// Every record, sorted by name.
    pub fn list(&self) -> Result<Vec<VolumeRecord>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            records.push(self.load(&name)?);
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// Writes the record atomically (a crash leaves the old or the new one).
    pub fn save(&self, record: &VolumeRecord) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let json = serde_json::to_vec_pretty(record).expect("serializable");
        crate::kms::server::write_atomically(&self.path_of(&record.name), &json)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.path_of(name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}

/// Generates a data key, a KEK for it in the KMS, and the record that ties
/// them together (not yet saved).
fn new_volume_key(
    kms: &dyn Kms,
    name: &str,
    kind: VolumeKind,
) -> Result<(SecretKey, VolumeRecord)> {
    let key = SecretKey::random(VOLUME_KEY_LEN)?;
    let identifier = fscrypt::key_identifier(&key)?.to_hex();
    let kek_id = kms.create_kek(&kek_name(name))?;
    let wrapped = match kms.wrap(&kek_id, &key, &wrap_aad(name, &identifier)) {
        Ok(wrapped) => wrapped,
        Err(e) => {
            let _ = kms.destroy(&kek_id);
            return Err(e.into());
        }
    };
    let record = VolumeRecord {
        format: RECORD_FORMAT,
        name: name.to_string(),
        kind,
        key_identifier: identifier,
        kek_id,
        wrapped_key: B64.encode(wrapped),
        created: now(),
        rotated: None,
        revoked: false,
    };
    Ok((key, record))
}

/// Fetches a volume's data key: KMS unwrap, then a check that it is the key
/// the record names. The key exists only in locked memory and only until the
/// caller hands it to the kernel.
pub fn fetch_volume_key(kms: &dyn Kms, record: &VolumeRecord) -> Result<SecretKey> {
    let wrapped = record.wrapped()?;
    let key = kms
        .unwrap(&record.kek_id, &wrapped, &record.aad())
        .with_context(|| format!("fetching the key of volume {}", record.name))?;
    if key.len() != VOLUME_KEY_LEN {
        bail!(
            "volume {}: KMS returned a {}-byte key, expected {VOLUME_KEY_LEN}",
            record.name,
            key.len()
        );
    }
    let identifier = fscrypt::key_identifier(&key)?;
    if identifier != record.key_identifier()? {
        bail!(
            "volume {}: the unwrapped key has identifier {identifier}, the record says {}; refusing it",
            record.name,
            record.key_identifier
        );
    }
    Ok(key)
}

// ---------------------------------------------------------------------------
// fscrypt volumes
// ---------------------------------------------------------------------------

/// Refuses a directory that cannot take a new policy, before anything changes.
fn check_fscrypt_target(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(fscrypt::FscryptError::NotEmpty {
            path: dir.display().to_string(),
        }
        .into());
    }
    match fscrypt::get_policy(dir)? {
        DirPolicy::Unencrypted => Ok(()),
        _ => Err(fscrypt::FscryptError::AlreadyEncrypted {
            path: dir.display().to_string(),
        }
        .into()),
    }
}

/// `volume init NAME DIR`: encrypts the empty directory `dir` with a new data
/// key wrapped by a new KEK. The volume is left unlocked.
pub fn init_fscrypt(
    store: &VolumeStore,
    kms: &dyn Kms,
    name: &str,
    dir: &Path,
) -> Result<VolumeRecord> {
    check_name(name)?;
    if store.exists(name) {
        bail!(
            "volume {name:?} already exists ({})",
            store.path_of(name).display()
        );
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}", dir.display()))?;
    check_fscrypt_target(&dir)?;
    let kind = VolumeKind::Fscrypt {
        path: dir.clone(),
        previous_path: None,
    };
    let (key, record) = new_volume_key(kms, name, kind)?;
    let rollback = |record: &VolumeRecord| {
        let _ = kms.destroy(&record.kek_id);
    };
    if let Err(e) = install_fscrypt_key(&dir, name, &key, &record.key_identifier()?) {
        rollback(&record);
        return Err(e);
    }
    // The record goes to disk before the policy: a directory must never be
    // encrypted with a key we have no record of.
    if let Err(e) = store.save(&record) {
        let _ = fscrypt::remove_key(outside(&dir), &record.key_identifier()?);
        rollback(&record);
        return Err(e);
    }
    if let Err(e) = fscrypt::set_policy(&dir, &record.key_identifier()?) {
        let _ = fscrypt::remove_key(outside(&dir), &record.key_identifier()?);
        let _ = store.remove(name);
        rollback(&record);
        return Err(e);
    }
    Ok(record)
}

/// Hands `key` to the filesystem of `dir` through an `fscrypt-provisioning`
/// key, and checks the identifier the kernel computed against ours.
fn install_fscrypt_key(
    dir: &Path,
    name: &str,
    key: &SecretKey,
    expected: &KeyIdentifier,
) -> Result<()> {
    let provisioning = keyring::add_fscrypt_provisioning_key(&format!("guard:{name}"), key)?;
    let added = fscrypt::add_key_by_serial(outside(dir), provisioning.serial);
    // The filesystem now holds its own copy; the keyring one is not needed.
    let invalidated = provisioning.invalidate();
    let kernel_identifier = added?;
    invalidated?;
    if &kernel_identifier != expected {
        let _ = fscrypt::remove_key(dir, &kernel_identifier);
        bail!("kernel computed key identifier {kernel_identifier}, guard computed {expected}: refusing the key");
    }
    Ok(())
}

/// A path on the same filesystem as the encrypted directory `dir` but not
/// inside it, for the key ioctls: an open descriptor on `dir` itself would pin
/// its inode, and the kernel would then report the volume busy on lock.
fn outside(dir: &Path) -> &Path {
    dir.parent().unwrap_or(dir)
}

/// Where the encrypted directory of an fscrypt volume is now. During an
/// interrupted migrate it may still be at `previous_path`.
pub fn fscrypt_dir(record: &VolumeRecord) -> Result<PathBuf> {
    let VolumeKind::Fscrypt {
        path,
        previous_path,
    } = &record.kind
    else {
        bail!("volume {} is not an fscrypt volume", record.name);
    };
    let wanted = record.key_identifier()?;
    for candidate in std::iter::once(path).chain(previous_path.iter()) {
        match fscrypt::get_policy(candidate) {
            Ok(DirPolicy::V2 { key_identifier, .. }) if key_identifier == wanted => {
                return Ok(candidate.clone());
            }
            // guard's own policy protects the volume's directory from every
            // program but the database, guardd and guardctl included: its
            // encryption policy cannot be read. Adding or removing the key does
            // not need it (both go through the filesystem, and the kernel checks
            // the key's identifier), so an encrypted directory at the recorded
            // place is taken as the volume.
            Err(e) if is_permission_denied(&e) && is_encrypted_dir(candidate) => {
                return Ok(candidate.clone());
            }
            _ => {}
        }
    }
    bail!(
        "volume {}: {} is not encrypted with key {} (moved, replaced, or not on an encrypting filesystem)",
        record.name,
        path.display(),
        record.key_identifier
    )
}

fn is_permission_denied(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(libc::EPERM))
}

/// Whether `path` is a directory the kernel reports as encrypted (statx, which
/// needs no access to the directory itself).
pub(crate) fn is_encrypted_dir(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    statx(CWD, path, AtFlags::empty(), StatxFlags::TYPE)
        .map(|st| {
            u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR
                && st.stx_attributes.contains(StatxAttributes::ENCRYPTED)
        })
        .unwrap_or(false)
}

/// Outcome of an unlock.
#[derive(Debug, Clone)]
pub struct UnlockReport {
    pub name: String,
    pub key_identifier: String,
    /// KMS round trip and kernel installation, end to end.
    pub elapsed: Duration,
    /// Of which: the KMS unwrap (TLS, request, answer).
    pub kms: Duration,
}

/// `volume unlock NAME`.
pub fn unlock(store: &VolumeStore, kms: &dyn Kms, name: &str) -> Result<UnlockReport> {
    let started = Instant::now();
    let record = store.load(name)?;
    if record.revoked {
        bail!("volume {name}: its key was revoked; the data is crypto-shredded");
    }
    let kms_time;
    match &record.kind {
        VolumeKind::Fscrypt { .. } => {
            // Resolve the directory first so that a misplaced volume fails
            // before any key is fetched.
            let dir = fscrypt_dir(&record)?;
            let fetching = Instant::now();
            let key = fetch_volume_key(kms, &record)?;
            kms_time = fetching.elapsed();
            install_fscrypt_key(&dir, name, &key, &record.key_identifier()?)?;
        }
        VolumeKind::DmCrypt { device } => {
            let fetching = Instant::now();
            let key = fetch_volume_key(kms, &record)?;
            kms_time = fetching.elapsed();
            dmcrypt::open(name, device, &key)?;
        }
    }
    Ok(UnlockReport {
        name: name.to_string(),
        key_identifier: record.key_identifier,
        elapsed: started.elapsed(),
        kms: kms_time,
    })
}

/// Outcome of a lock.
#[derive(Debug, Clone, Default)]
pub struct LockReport {
    /// Files still open: their contents stay readable until closed.
    pub busy_files: Vec<PathBuf>,
    /// The kernel reported busy files (we may not see them all in /proc).
    pub files_busy: bool,
}

/// `volume lock NAME`: removes the key from the kernel.
pub fn lock(store: &VolumeStore, name: &str) -> Result<LockReport> {
    let record = store.load(name)?;
    lock_record(&record)
}

fn lock_record(record: &VolumeRecord) -> Result<LockReport> {
    match &record.kind {
        VolumeKind::Fscrypt { .. } => {
            let dir = fscrypt_dir(record)?;
            let removal = fscrypt::remove_key(outside(&dir), &record.key_identifier()?)?;
            let busy_files = if removal.files_busy {
                open_files_under(&dir)
            } else {
                Vec::new()
            };
            Ok(LockReport {
                busy_files,
                files_busy: removal.files_busy,
            })
        }
        VolumeKind::DmCrypt { .. } => {
            dmcrypt::close(&record.name)?;
            Ok(LockReport::default())
        }
    }
}

/// Files under `dir` that some process holds open (from /proc/*/fd).
pub fn open_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for proc_entry in procs.flatten() {
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if target.starts_with(dir) && !found.contains(&target) {
                    found.push(target);
                }
            }
        }
    }
    found.sort();
    found
}

/// One line of `volume status`.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeStatus {
    pub name: String,
    pub kind: &'static str,
    pub location: PathBuf,
    pub key_identifier: String,
    pub kek_id: String,
    pub state: String,
}

/// `volume status`.
pub fn status(store: &VolumeStore) -> Result<Vec<VolumeStatus>> {
    store.list()?.iter().map(volume_status).collect()
}

fn volume_status(record: &VolumeRecord) -> Result<VolumeStatus> {
    let (kind, location, state) = match &record.kind {
        VolumeKind::Fscrypt { path, .. } => {
            let state = if record.revoked {
                "revoked".to_string()
            } else {
                match fscrypt_dir(record) {
                    Ok(dir) => {
                        match fscrypt::key_status(outside(&dir), &record.key_identifier()?) {
                            Ok(status) => status.to_string(),
                            Err(e) => format!("unknown: {e:#}"),
                        }
                    }
                    Err(e) => format!("missing: {e:#}"),
                }
            };
            ("fscrypt", path.clone(), state)
        }
        VolumeKind::DmCrypt { device } => {
            let state = if record.revoked {
                "revoked".to_string()
            } else if dmcrypt::is_open(&record.name) {
                format!(
                    "unlocked ({})",
                    dmcrypt::mapper_path(&record.name).display()
                )
            } else {
                "locked".to_string()
            };
            ("dm-crypt", device.clone(), state)
        }
    };
    Ok(VolumeStatus {
        name: record.name.clone(),
        kind,
        location,
        key_identifier: record.key_identifier.clone(),
        kek_id: record.kek_id.clone(),
        state,
    })
}

/// The kernel state of an fscrypt volume, for callers that need the enum.
pub fn fscrypt_key_status(record: &VolumeRecord) -> Result<KeyStatus> {
    fscrypt::key_status(outside(&fscrypt_dir(record)?), &record.key_identifier()?)
}

// ---------------------------------------------------------------------------
// Key lifecycle
// ---------------------------------------------------------------------------

/// Outcome of `key revoke`.
#[derive(Debug, Clone)]
pub struct RevokeReport {
    pub lock: LockReport,
}

/// `key revoke VOLUME`: the KMS refuses the KEK from now on, and the key
/// leaves the kernel. The data is unreadable for good (crypto-shredding).
pub fn revoke(store: &VolumeStore, kms: &dyn Kms, name: &str) -> Result<RevokeReport> {
    let mut record = store.load(name)?;
    let revoked_in_kms = kms.revoke(&record.kek_id);
    // Remove the kernel's copy even if the KMS could not be told: a key that
    // should be gone must not stay usable on this host.
    let lock = lock_record(&record);
    if let Err(e) = revoked_in_kms {
        let lock_note = match &lock {
            Ok(_) => "the key was removed from the kernel",
            Err(_) => "removing the key from the kernel failed too",
        };
        return Err(anyhow::Error::from(e).context(format!(
            "volume {name}: KMS did not revoke the KEK; {lock_note}"
        )));
    }
    record.revoked = true;
    store.save(&record)?;
    Ok(RevokeReport { lock: lock? })
}

/// `key rotate [VOLUME]`: a new KEK per volume, the data key rewrapped, the
/// old KEK revoked and destroyed. The kernel's key and the data are untouched.
pub fn rotate(store: &VolumeStore, kms: &dyn Kms, name: &str) -> Result<VolumeRecord> {
    let old = store.load(name)?;
    if old.revoked {
        bail!("volume {name}: its key was revoked; nothing to rotate");
    }
    let key = fetch_volume_key(kms, &old)?;
    let new_kek = kms.create_kek(&kek_name(name))?;
    let wrapped = match kms.wrap(&new_kek, &key, &old.aad()) {
        Ok(wrapped) => wrapped,
        Err(e) => {
            let _ = kms.destroy(&new_kek);
            return Err(e.into());
        }
    };
    drop(key);
    let mut record = old.clone();
    record.kek_id = new_kek.clone();
    record.wrapped_key = B64.encode(wrapped);
    record.rotated = Some(now());
    // Prove the new wrapping before it replaces the old one.
    fetch_volume_key(kms, &record).context("checking the rewrapped key")?;
    if let Err(e) = store.save(&record) {
        let _ = kms.destroy(&new_kek);
        return Err(e);
    }
    // From here the new KEK is in use; failing to retire the old one leaves
    // an unused key in the KMS, which is reported but not fatal.
    if let Err(e) = kms
        .revoke(&old.kek_id)
        .and_then(|_| kms.destroy(&old.kek_id))
    {
        eprintln!(
            "guard: volume {name}: rotated, but retiring old KEK {} failed: {e}",
            old.kek_id
        );
    }
    Ok(record)
}
