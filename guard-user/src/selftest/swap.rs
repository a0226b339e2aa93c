//! Techniques on swap: the kernel writes out pages of every process, the
//! database's included, to whatever swap area root turns on, and root
//! reads a swap file like any file.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::sys::{self, errno_name, last_errno};
use super::{AlertRule, Attempt, Target, Technique, NOTHING};

/// Pages in the swap file the row makes (4 KiB each: 1 MiB).
const SWAP_PAGES: u32 = 256;
const PAGE: u64 = 4096;

pub fn techniques() -> Vec<Technique> {
    vec![Technique {
        id: "swapon-later",
        name: "turn on a swap file of root's after the policy was applied (swapon)",
        expected: "EPERM",
        needs: NOTHING,
        alert: AlertRule::Denial,
        run: swapon_later,
    }]
}

/// Turns on a fresh swap file; if the kernel takes it, turns it off again.
fn swapon_later(t: &Target) -> Result<Attempt> {
    let file = t.scratch.join("guard-selftest-swapfile");
    let _ = std::fs::remove_file(&file);
    make_swap_file(&file)?;
    let path = sys::cstring(&file)?;
    // SAFETY: valid C string; no flags.
    let rc = unsafe { libc::swapon(path.as_ptr(), 0) };
    let attempt = if rc == 0 {
        // SAFETY: as above.
        unsafe { libc::swapoff(path.as_ptr()) };
        Attempt::not_blocked(format!(
            "swapon {} succeeded (turned off again)",
            file.display()
        ))
    } else {
        let errno = last_errno();
        let what = format!("swapon {}: {}", file.display(), errno_name(errno));
        if sys::refused_by_policy(errno) {
            Attempt::blocked(what)
        } else {
            Attempt::not_blocked(format!("{what} (not guard's refusal)"))
        }
    };
    let _ = std::fs::remove_file(&file);
    Ok(attempt)
}

/// A swap area as mkswap(8) makes it: zeros, with the version-1 header in
/// the first page (`union swap_header`, include/linux/swap.h).
fn make_swap_file(file: &Path) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    // Written, not sparse: the kernel refuses swap files with holes.
    f.write_all(&vec![0u8; (SWAP_PAGES as u64 * PAGE) as usize])?;
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&(SWAP_PAGES - 1).to_le_bytes()); // last_page
    info.extend_from_slice(&0u32.to_le_bytes()); // nr_badpages
    f.seek(SeekFrom::Start(1024))?;
    f.write_all(&info)?;
    f.seek(SeekFrom::Start(PAGE - 10))?;
    f.write_all(b"SWAPSPACE2")?;
    f.sync_all()
        .with_context(|| format!("writing {}", file.display()))
}
