//! `volume migrate SRC DEST`: move an existing data directory into a new
//! encrypted volume without risking it.
//!
//! 1. DEST (new, empty, same filesystem) becomes an fscrypt volume.
//! 2. SRC is copied into it: contents, modes, owners, times, symlinks.
//! 3. Every file is read back and compared byte for byte with SRC.
//! 4. Only then SRC and DEST are exchanged atomically (renameat2
//!    RENAME_EXCHANGE): the encrypted copy takes SRC's path, the old data is
//!    left at DEST for the admin to shred.
//!
//! Until step 4, SRC is never written to, so an interrupted migrate loses
//! nothing; step 4 is a single atomic rename.
//!
//! Rotating a data key is a migrate from one volume into a new one.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{init_fscrypt, lock_record, VolumeKind, VolumeRecord, VolumeStore};
use crate::kms::Kms;

/// Outcome of a migrate.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    pub record: VolumeRecord,
    pub files: u64,
    pub bytes: u64,
    /// Where the old, unencrypted data now is.
    pub old_data: PathBuf,
}

pub fn migrate(
    store: &VolumeStore,
    kms: &dyn Kms,
    name: &str,
    src: &Path,
    dest: &Path,
) -> Result<MigrateReport> {
    let src = src
        .canonicalize()
        .with_context(|| format!("source {}", src.display()))?;
    if !fs::symlink_metadata(&src)?.is_dir() {
        bail!("source {} is not a directory", src.display());
    }
    let dest = prepare_dest(&src, dest)?;
    let mut record = init_fscrypt(store, kms, name, &dest)?;
    let copied = copy_and_verify(&src, &dest);
    let (files, bytes) = match copied {
        Ok(counts) => counts,
        Err(e) => {
            abandon(store, kms, &record, &dest);
            return Err(e.context(format!(
                "migrate of {} stopped; the source is untouched",
                src.display()
            )));
        }
    };
    // Record first where the volume will be, remembering where it is now: a
    // crash on either side of the exchange leaves a record that finds it.
    record.kind = VolumeKind::Fscrypt {
        path: src.clone(),
        previous_path: Some(dest.clone()),
    };
    store.save(&record)?;
    exchange(&src, &dest).with_context(|| {
        format!(
            "swapping {} and {}; the source is untouched, the copy is at {}",
            src.display(),
            dest.display(),
            dest.display()
        )
    })?;
    record.kind = VolumeKind::Fscrypt {
        path: src.clone(),
        previous_path: None,
    };
    store.save(&record)?;
    repoint_old_volume(store, name, &src, &dest)?;
    Ok(MigrateReport {
        record,
        files,
        bytes,
        old_data: dest,
    })
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
    let _ = lock_record(record);
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
