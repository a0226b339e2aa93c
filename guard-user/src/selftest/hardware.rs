//! Techniques through hardware that reaches all of memory: a PCI device
//! root reprograms (its DMA reads and writes any page, the keys and the
//! database's buffers included), or I/O ports driven directly. The kernel
//! asks its lockdown question first; guard answers it.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::sys::{errno_name, last_errno, refused, refused_by_policy};
use super::{AlertRule, Attempt, Target, Technique, NOTHING};

/// The POST diagnostic port: writes to it do nothing.
const HARMLESS_PORT: libc::c_ulong = 0x80;

pub fn techniques() -> Vec<Technique> {
    vec![
        Technique {
            id: "pci-config-write",
            name: "write a PCI device's configuration space (its read-only vendor ID, unchanged)",
            expected: "EPERM",
            needs: NOTHING,
            alert: AlertRule::Denial,
            run: pci_config_write,
        },
        Technique {
            id: "ioperm",
            name: "ioperm: drive I/O ports directly (port 0x80)",
            expected: "EPERM",
            needs: NOTHING,
            alert: AlertRule::Denial,
            run: ioperm,
        },
    ]
}

/// Writes back the vendor ID (read-only in every device): if guard lets
/// the write through, nothing changed.
fn pci_config_write(_: &Target) -> Result<Attempt> {
    let config = first_pci_config()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&config)
        .with_context(|| format!("opening {}", config.display()))?;
    let mut vendor = [0u8; 2];
    file.read_exact_at(&mut vendor, 0)
        .with_context(|| format!("reading {}", config.display()))?;
    let what = format!("write {}", config.display());
    Ok(match file.write_all_at(&vendor, 0) {
        Ok(()) => Attempt::not_blocked(format!("{what}: written (the vendor ID, unchanged)")),
        Err(e) if refused_by_policy(e.raw_os_error().unwrap_or(0)) => refused(&what, &e),
        Err(e) => return Err(anyhow::Error::new(e).context(what)),
    })
}

fn first_pci_config() -> Result<PathBuf> {
    let devices = "/sys/bus/pci/devices";
    let mut names: Vec<_> = std::fs::read_dir(devices)
        .with_context(|| format!("listing {devices}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("config")))
        .filter(|config| config.exists())
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .with_context(|| format!("no PCI device in {devices} to try"))
}

/// If the kernel grants the port, gives it back at once.
fn ioperm(_: &Target) -> Result<Attempt> {
    // SAFETY: ioperm takes plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_ioperm, HARMLESS_PORT, 1, 1) };
    if rc == 0 {
        // SAFETY: as above; drops the access just granted.
        unsafe { libc::syscall(libc::SYS_ioperm, HARMLESS_PORT, 1, 0) };
        return Ok(Attempt::not_blocked("ioperm(0x80) granted (given back)"));
    }
    let errno = last_errno();
    let what = format!("ioperm(0x80): {}", errno_name(errno));
    Ok(if refused_by_policy(errno) {
        Attempt::blocked(what)
    } else {
        Attempt::not_blocked(format!("{what} (not guard's refusal)"))
    })
}
