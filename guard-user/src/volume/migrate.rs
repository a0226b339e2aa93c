//! `volume migrate SRC DEST`: move an existing data directory into a new
//! encrypted volume without risking it.
//!
//! 1. A journal, `NAME.migrate` next to the volume records, notes SRC, DEST
//!    and the phase `copying` before anything else is created.
//! 2. DEST (new, empty, same filesystem) becomes an fscrypt volume.
//! 3. SRC is copied into it: contents, modes, owners, times, symlinks. The
//!    filesystem is synced (syncfs: every file and directory of the copy).
//! 4. Every file is read back and compared byte for byte with SRC.
//! 5. The record is pointed at SRC (remembering DEST), then the journal
//!    moves to the phase `swapping`.
//! 6. SRC and DEST are exchanged atomically (renameat2 RENAME_EXCHANGE): the
//!    encrypted copy takes SRC's path, the old data is left at DEST for the
//!    admin to shred. Both parent directories are synced, the record loses
//!    DEST, and the journal is removed.
//!
//! SRC is never written to, and the exchange is the commit point: a migrate
//! killed before it leaves SRC as it was, one killed after it leaves the
//! verified encrypted copy at SRC and the old data at DEST. Nothing is lost
//! either way. Running the same `migrate SRC DEST --name NAME` again finds
//! the journal and finishes the job: in the phase `copying` it removes the
//! partial copy, its key and record, and migrates afresh; in the phase
//! `swapping` it re-verifies the copy if the exchange has not happened yet,
//! exchanges, and completes the record. The partial copy is encrypted from
//! its first byte, so no plaintext is ever left at DEST before the exchange.
//!
//! Rotating a data key is a migrate from one volume into a new one.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    check_name, fetch_volume_key, fscrypt_dir, init_fscrypt, install_fscrypt_key, is_encrypted_dir,
    outside, VolumeKind, VolumeRecord, VolumeStore,
};
use crate::fscrypt::{self, KeyStatus};
use crate::kms::Kms;

/// Outcome of a migrate.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    pub record: VolumeRecord,
    pub files: u64,
    pub bytes: u64,
    /// Where the old, unencrypted data now is.
    pub old_data: PathBuf,
    /// The run found an interrupted migrate of this volume and finished it
    /// (`Resumed`) or removed its partial copy before starting over.
    pub recovered: Option<Recovered>,
}

/// What a run did about an interrupted migrate it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// The partial copy was removed and the migrate started afresh.
    RolledBack,
    /// The verified copy was swapped in (or had been) and the records completed.
    Resumed,
}

/// Version of the journal format.
const JOURNAL_FORMAT: u32 = 1;

/// The migrate journal, `NAME.migrate` in the volume store. It exists from
/// before DEST is touched until the migrate is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    format: u32,
    name: String,
    src: PathBuf,
    dest: PathBuf,
    phase: Phase,
    /// Set with the phase `swapping`: what was copied and verified.
    #[serde(default)]
    files: u64,
    #[serde(default)]
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    /// DEST is being made into a volume and filled; SRC is untouched.
    Copying,
    /// The copy is complete, synced and verified, and the record names SRC
    /// (with DEST as `previous_path`); the exchange may or may not have
    /// happened.
    Swapping,
}

fn journal_path(store: &VolumeStore, name: &str) -> PathBuf {
    store.dir().join(format!("{name}.migrate"))
}

impl Journal {
    fn load(store: &VolumeStore, name: &str) -> Result<Option<Journal>> {
        let path = journal_path(store, name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let journal: Journal = serde_json::from_str(&text)
            .with_context(|| format!("parsing migrate journal {}", path.display()))?;
        if journal.format != JOURNAL_FORMAT || journal.name != name {
            bail!(
                "{}: not a format-{JOURNAL_FORMAT} migrate journal of volume {name}",
                path.display()
            );
        }
        Ok(Some(journal))
    }

    /// Every journal in the store.
    fn all(store: &VolumeStore) -> Result<Vec<Journal>> {
        let entries = match fs::read_dir(store.dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", store.dir().display())),
        };
        let mut journals = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("migrate") {
                continue;
            }
            if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                journals.extend(Journal::load(store, name)?);
            }
        }
        Ok(journals)
    }

    /// Written atomically and synced: the phase on disk is never ahead of,
    /// nor behind, what the next step relies on.
    fn save(&self, store: &VolumeStore) -> Result<()> {
        fs::create_dir_all(store.dir())
            .with_context(|| format!("creating {}", store.dir().display()))?;
        let json = serde_json::to_vec_pretty(self).expect("serializable");
        crate::kms::server::write_atomically(&journal_path(store, &self.name), &json)
    }

    fn remove(&self, store: &VolumeStore) -> Result<()> {
        let path = journal_path(store, &self.name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        remove_stale_temporaries(store, &self.name);
        sync_dir(store.dir())
    }

    /// The record this migrate leaves while its copy is swapped in.
    fn swapping_kind(&self) -> VolumeKind {
        VolumeKind::Fscrypt {
            path: self.src.clone(),
            previous_path: Some(self.dest.clone()),
        }
    }
}

/// A process killed inside `write_atomically` leaves `NAME.tmp.PID` behind.
fn remove_stale_temporaries(store: &VolumeStore, name: &str) {
    let prefix = format!("{name}.tmp.");
    let Ok(entries) = fs::read_dir(store.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

pub fn migrate(
    store: &VolumeStore,
    kms: &dyn Kms,
    name: &str,
    src: &Path,
    dest: &Path,
) -> Result<MigrateReport> {
    check_name(name)?;
    let src = src
        .canonicalize()
        .with_context(|| format!("source {}", src.display()))?;
    if !fs::symlink_metadata(&src)?.is_dir() {
        bail!("source {} is not a directory", src.display());
    }
    let mut recovered = None;
    if let Some(journal) = Journal::load(store, name)? {
        check_same_migrate(store, &journal, &src, dest)?;
        match journal.phase {
            Phase::Swapping => match finish_swap(store, kms, &journal)? {
                Some(report) => return Ok(report),
                None => recovered = Some(Recovered::RolledBack),
            },
            Phase::Copying => {
                roll_back(store, kms, &journal)?;
                recovered = Some(Recovered::RolledBack);
            }
        }
    }
    for other in Journal::all(store)? {
        if other.src == src {
            bail!(
                "{} is already being migrated into volume {} (journal {}); run `guardctl volume migrate {} {} --name {}` to finish that first",
                src.display(),
                other.name,
                journal_path(store, &other.name).display(),
                other.src.display(),
                other.dest.display(),
                other.name
            );
        }
    }
    let mut report = migrate_afresh(store, kms, name, &src, dest)?;
    report.recovered = recovered;
    Ok(report)
}

/// A rerun must name the same directories as the interrupted migrate.
fn check_same_migrate(
    store: &VolumeStore,
    journal: &Journal,
    src: &Path,
    dest: &Path,
) -> Result<()> {
    if journal.src != src || journal.dest != absolute(dest)? {
        bail!(
            "an interrupted migrate of {} into {} as volume {} is recorded in {}; run the same command again to finish it before anything else",
            journal.src.display(),
            journal.dest.display(),
            journal.name,
            journal_path(store, &journal.name).display()
        );
    }
    Ok(())
}

/// `path` made absolute without requiring it to exist (an interrupted
/// migrate may have removed DEST).
fn absolute(path: &Path) -> Result<PathBuf> {
    if let Ok(path) = path.canonicalize() {
        return Ok(path);
    }
    let (Some(parent), Some(file)) = (path.parent(), path.file_name()) else {
        bail!("{} is not a directory path", path.display());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    Ok(parent
        .canonicalize()
        .with_context(|| format!("destination {}", path.display()))?
        .join(file))
}

fn migrate_afresh(
    store: &VolumeStore,
    kms: &dyn Kms,
    name: &str,
    src: &Path,
    dest: &Path,
) -> Result<MigrateReport> {
    let dest = prepare_dest(src, dest)?;
    let mut journal = Journal {
        format: JOURNAL_FORMAT,
        name: name.to_string(),
        src: src.to_path_buf(),
        dest: dest.clone(),
        phase: Phase::Copying,
        files: 0,
        bytes: 0,
    };
    if let Err(e) = journal.save(store) {
        let _ = fs::remove_dir(&dest);
        return Err(e);
    }
    let mut record = match init_fscrypt(store, kms, name, &dest) {
        Ok(record) => record,
        Err(e) => {
            // init_fscrypt undid its own work; DEST is still empty.
            let _ = fs::remove_dir(&dest);
            let _ = journal.remove(store);
            return Err(e);
        }
    };
    let (files, bytes) = match copy_and_verify(src, &dest) {
        Ok(counts) => counts,
        Err(e) => {
            abandon(store, kms, &record, &dest);
            let _ = journal.remove(store);
            return Err(e.context(format!(
                "migrate of {} stopped; the source is untouched",
                src.display()
            )));
        }
    };
    // Record first where the volume will be, remembering where it is now: a
    // crash on either side of the exchange leaves a record that finds it.
    record.kind = journal.swapping_kind();
    store.save(&record)?;
    journal.phase = Phase::Swapping;
    journal.files = files;
    journal.bytes = bytes;
    journal.save(store)?;
    if let Err(e) = exchange(src, &dest) {
        // Nothing was swapped: let a rerun start over rather than retry.
        journal.phase = Phase::Copying;
        let _ = journal.save(store);
        return Err(e.context(format!(
            "swapping {} and {}; the source is untouched, the encrypted copy is at {}; run the migrate again to start over",
            src.display(),
            dest.display(),
            dest.display()
        )));
    }
    complete(store, record, &journal, None)
}

/// After the exchange: make it durable, drop DEST from the record, hand an
/// old volume's record over to DEST (data-key rotation), remove the journal.
fn complete(
    store: &VolumeStore,
    mut record: VolumeRecord,
    journal: &Journal,
    recovered: Option<Recovered>,
) -> Result<MigrateReport> {
    sync_dir(outside(&journal.src))?;
    sync_dir(outside(&journal.dest))?;
    record.kind = VolumeKind::Fscrypt {
        path: journal.src.clone(),
        previous_path: None,
    };
    store.save(&record)?;
    repoint_old_volume(store, &journal.name, &journal.src, &journal.dest)?;
    journal.remove(store)?;
    Ok(MigrateReport {
        record,
        files: journal.files,
        bytes: journal.bytes,
        old_data: journal.dest.clone(),
        recovered,
    })
}

/// Finishes a migrate interrupted in the phase `swapping`. Returns `None` if
/// SRC changed since it was copied: the stale copy was rolled back and the
/// caller migrates afresh.
fn finish_swap(
    store: &VolumeStore,
    kms: &dyn Kms,
    journal: &Journal,
) -> Result<Option<MigrateReport>> {
    let mut record = store.load(&journal.name).with_context(|| {
        format!(
            "finishing the interrupted migrate in {}",
            journal_path(store, &journal.name).display()
        )
    })?;
    // Wherever the exchange left it, the encrypted copy is at SRC or DEST.
    record.kind = journal.swapping_kind();
    let volume_dir = fscrypt_dir(&record).with_context(|| {
        format!(
            "finishing the interrupted migrate in {}",
            journal_path(store, &journal.name).display()
        )
    })?;
    ensure_unlocked(kms, &record, &volume_dir)?;
    if volume_dir == journal.dest {
        // Killed before the exchange: the copy was verified then, but SRC
        // may have been written since. Verify again before it replaces SRC.
        if let Err(e) = verify_tree(&journal.src, &journal.dest) {
            eprintln!(
                "guard: volume {}: the source changed since it was copied ({e:#}); copying again",
                journal.name
            );
            roll_back(store, kms, journal)?;
            return Ok(None);
        }
        exchange(&journal.src, &journal.dest).with_context(|| {
            format!(
                "swapping {} and {}; the source is untouched",
                journal.src.display(),
                journal.dest.display()
            )
        })?;
    }
    complete(store, record, journal, Some(Recovered::Resumed)).map(Some)
}

/// A volume found locked after a crash (or a reboot) is unlocked again: the
/// copy must be readable to be verified, and migrate leaves volumes unlocked.
fn ensure_unlocked(kms: &dyn Kms, record: &VolumeRecord, dir: &Path) -> Result<()> {
    let id = record.key_identifier()?;
    if fscrypt::key_status(outside(dir), &id)? != KeyStatus::Present {
        let key = fetch_volume_key(kms, record)?;
        install_fscrypt_key(dir, &record.name, &key, &id)?;
    }
    Ok(())
}

/// Undoes a migrate interrupted before its exchange: SRC still holds the
/// data, DEST an encrypted partial copy. Removes DEST, the volume's key from
/// the kernel, its record and (best effort) its KEK, then the journal. Each
/// step tolerates having been done already, so a crash here is also undone.
fn roll_back(store: &VolumeStore, kms: &dyn Kms, journal: &Journal) -> Result<()> {
    let record = if store.exists(&journal.name) {
        let record = store.load(&journal.name)?;
        let ours = [
            VolumeKind::Fscrypt {
                path: journal.dest.clone(),
                previous_path: None,
            },
            journal.swapping_kind(),
        ];
        if !ours.contains(&record.kind) {
            bail!(
                "volume {} is recorded at {:?}, not where the migrate in {} put it; refusing to remove anything",
                journal.name,
                record.kind,
                journal_path(store, &journal.name).display()
            );
        }
        Some(record)
    } else {
        None
    };
    if let Some(record) = &record {
        // The copy must not be SRC's only data: the exchange must not have happened.
        let swapped = matches!(
            fscrypt::get_policy(&journal.src),
            Ok(fscrypt::DirPolicy::V2 { key_identifier, .. }) if key_identifier == record.key_identifier()?
        );
        if swapped {
            bail!(
                "{} is already the encrypted volume {}; refusing to roll back the migrate in {}",
                journal.src.display(),
                journal.name,
                journal_path(store, &journal.name).display()
            );
        }
    }
    remove_partial_copy(&journal.dest)?;
    if let Some(record) = record {
        let _ = fscrypt::remove_key(outside(&journal.dest), &record.key_identifier()?);
        store.remove(&record.name)?;
        if let Err(e) = kms.destroy(&record.kek_id) {
            eprintln!(
                "guard: volume {}: could not destroy the unused KEK {} of the abandoned copy: {e}",
                record.name, record.kek_id
            );
        }
    }
    journal.remove(store)
}

/// Removes DEST if it is what a migrate leaves before its exchange: nothing,
/// an empty directory, or an encrypted one. Never a plaintext tree.
fn remove_partial_copy(dest: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(dest) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("{}", dest.display())),
    };
    let empty = meta.is_dir() && fs::read_dir(dest)?.next().is_none();
    if !empty && !is_encrypted_dir(dest) {
        bail!(
            "{} holds unencrypted data, which an interrupted migrate never leaves there; refusing to remove it",
            dest.display()
        );
    }
    fs::remove_dir_all(dest)
        .with_context(|| format!("removing the partial copy {}", dest.display()))
}

/// DEST must be new (or an empty directory) on SRC's filesystem, so that the
/// final exchange is one atomic rename.
fn prepare_dest(src: &Path, dest: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            if fs::read_dir(dest)?.next().is_some() {
                bail!("destination {} is not empty", dest.display());
            }
        }
        Ok(_) => bail!(
            "destination {} exists and is not a directory",
            dest.display()
        ),
        Err(_) => fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?,
    }
    let dest = dest.canonicalize()?;
    if dest.starts_with(src) {
        bail!(
            "destination {} is inside the source {}",
            dest.display(),
            src.display()
        );
    }
    if fs::metadata(src)?.dev() != fs::metadata(&dest)?.dev() {
        bail!(
            "destination {} is on another filesystem than {}; both must be on the same encrypting filesystem",
            dest.display(),
            src.display()
        );
    }
    Ok(dest)
}

fn copy_and_verify(src: &Path, dest: &Path) -> Result<(u64, u64)> {
    let mut counts = (0u64, 0u64);
    copy_tree(src, dest, &mut counts)?;
    sync_filesystem(dest)?;
    verify_tree(src, dest)?;
    Ok(counts)
}

fn copy_tree(src: &Path, dest: &Path, counts: &mut (u64, u64)) -> Result<()> {
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
            copy_tree(&from, &to, counts)?;
        } else if kind.is_file() {
            counts.1 +=
                fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
            counts.0 += 1;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)
                .with_context(|| format!("copying symlink {}", from.display()))?;
        } else {
            bail!("{} is a special file (device, fifo or socket); migrate copies only files, directories and symlinks", from.display());
        }
        copy_attributes(&meta, &to)?;
    }
    copy_attributes(&fs::symlink_metadata(src)?, dest)
}

/// Owner, mode and times, so the database finds its files as it left them.
fn copy_attributes(meta: &fs::Metadata, to: &Path) -> Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("chown {}", to.display()))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    let path = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: valid C string and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting times of {}", to.display()));
    }
    Ok(())
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs");
    }
    Ok(())
}

/// Compares the two trees entry by entry and every file byte by byte.
pub fn verify_tree(src: &Path, dest: &Path) -> Result<()> {
    let mut src_names: Vec<_> = fs::read_dir(src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    let mut dest_names: Vec<_> = fs::read_dir(dest)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    src_names.sort();
    dest_names.sort();
    if src_names != dest_names {
        bail!(
            "verify: {} and {} list different entries",
            src.display(),
            dest.display()
        );
    }
    for name in src_names {
        let (a, b) = (src.join(&name), dest.join(&name));
        let (ma, mb) = (fs::symlink_metadata(&a)?, fs::symlink_metadata(&b)?);
        if ma.file_type() != mb.file_type()
            || ma.mode() != mb.mode()
            || ma.uid() != mb.uid()
            || ma.gid() != mb.gid()
        {
            bail!(
                "verify: {} and {} differ in type, mode or owner",
                a.display(),
                b.display()
            );
        }
        if ma.is_dir() {
            verify_tree(&a, &b)?;
        } else if ma.file_type().is_symlink() {
            if fs::read_link(&a)? != fs::read_link(&b)? {
                bail!(
                    "verify: symlink {} points elsewhere in the copy",
                    a.display()
                );
            }
        } else if !same_contents(&a, &b)? {
            bail!(
                "verify: {} differs from its copy {}",
                a.display(),
                b.display()
            );
        }
    }
    Ok(())
}

fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn exchange(a: &Path, b: &Path) -> Result<()> {
    let (ca, cb) = (
        CString::new(a.as_os_str().as_bytes())?,
        CString::new(b.as_os_str().as_bytes())?,
    );
    // SAFETY: valid C strings; RENAME_EXCHANGE swaps the two names atomically.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// A failed migrate removes its half-made volume; SRC was never touched.
fn abandon(store: &VolumeStore, kms: &dyn Kms, record: &VolumeRecord, dest: &Path) {
    let _ = fs::remove_dir_all(dest);
    // By identifier: the directory lock_record would look for is gone.
    if let Ok(id) = record.key_identifier() {
        let _ = fscrypt::remove_key(outside(dest), &id);
    }
    let _ = store.remove(&record.name);
    let _ = kms.destroy(&record.kek_id);
}

/// If SRC was itself a guard volume (a data-key rotation), its record now
/// follows its directory to DEST.
fn repoint_old_volume(store: &VolumeStore, new_name: &str, src: &Path, dest: &Path) -> Result<()> {
    for mut record in store.list()? {
        if record.name == new_name {
            continue;
        }
        if let VolumeKind::Fscrypt { path, .. } = &record.kind {
            if path == src {
                record.kind = VolumeKind::Fscrypt {
                    path: dest.to_path_buf(),
                    previous_path: None,
                };
                store.save(&record)?;
            }
        }
    }
    Ok(())
}
