//! Techniques through the kernel's SCSI target (LIO): a backstore exports
//! a block device or a file to initiators, the kernel reading and writing
//! it on their behalf. Configured through configfs by root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::sys::{self, refused, refused_by_policy};
use super::{AlertRule, Attempt, Needs, Target, Technique, NOTHING};

const CONFIGFS: &str = "/sys/kernel/config";

pub fn techniques() -> Vec<Technique> {
    let device = Needs {
        device: true,
        ..NOTHING
    };
    vec![
        Technique {
            id: "scsi-target-fileio",
            name: "export the raw block device through a SCSI target fileio backstore",
            expected: "EPERM",
            needs: device,
            alert: AlertRule::Denial,
            run: fileio_backstore,
        },
        Technique {
            id: "scsi-target-block",
            name: "export the raw block device through a SCSI target block backstore",
            expected: "EBUSY (the kernel: the device is in use)",
            needs: device,
            alert: AlertRule::NotApplicable(
                "the kernel refuses: a mounted device is claimed by its filesystem",
            ),
            run: block_backstore,
        },
    ]
}

/// The fileio backstore opens its device or file from the process that
/// enables it: guard checks that open like root's own.
fn fileio_backstore(t: &Target) -> Result<Attempt> {
    backstore(t, "fileio", "fd_dev_name")
}

/// The block backstore claims its device exclusively, as md does.
fn block_backstore(t: &Target) -> Result<Attempt> {
    backstore(t, "iblock", "udev_path")
}

fn backstore(t: &Target, kind: &str, path_param: &str) -> Result<Attempt> {
    let device = t.device.as_ref().context("needs --device")?;
    let Some(core) = target_core()? else {
        return load_target(kind);
    };
    let store = Backstore::create(&core, kind)?;
    store.set(&format!("{path_param}={}", device.display()))?;
    let what = format!(
        "enable {kind} backstore guard-selftest on {}",
        device.display()
    );
    let attempt = match std::fs::write(store.device.join("enable"), "1") {
        Ok(()) => Attempt::not_blocked(format!("{what}: enabled, the kernel opened the device")),
        Err(e)
            if e.raw_os_error() == Some(libc::EBUSY)
                || refused_by_policy(e.raw_os_error().unwrap_or(0)) =>
        {
            refused(&what, &e)
        }
        Err(e) => return Err(anyhow::Error::new(e).context(what)),
    };
    Ok(attempt)
}

/// The SCSI target is not loaded: loading it is the attempt (guard
/// refuses every module load while armed).
fn load_target(kind: &str) -> Result<Attempt> {
    let module = format!(
        "target_core_{}",
        if kind == "fileio" { "file" } else { kind }
    );
    let child = Command::new("modprobe")
        .arg(&module)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting modprobe")?;
    let pid = child.id();
    let out = child.wait_with_output().context("waiting for modprobe")?;
    let what = format!("modprobe {module} (the SCSI target is not loaded)");
    let attempt = if out.status.success() {
        Attempt::not_blocked(format!("{what}: loaded while guard is armed"))
    } else {
        Attempt::blocked(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    };
    Ok(attempt.with_pid(pid))
}

/// configfs's `target/core`, mounting configfs in this row's own mount
/// namespace when the system has not; `None` when the target is not loaded.
fn target_core() -> Result<Option<PathBuf>> {
    let core = Path::new(CONFIGFS).join("target/core");
    if core.exists() {
        return Ok(Some(core));
    }
    if !Path::new("/sys/module/target_core_mod").exists() {
        return Ok(None);
    }
    sys::private_mount_namespace()?;
    sys::mount(
        Some(Path::new("configfs")),
        Path::new(CONFIGFS),
        Some("configfs"),
        0,
    )
    .with_context(|| format!("mounting configfs on {CONFIGFS}"))?;
    Ok(Some(core))
}

/// A backstore of the row's own (an HBA folder and its one device),
/// removed when dropped.
struct Backstore {
    hba: PathBuf,
    device: PathBuf,
}

impl Backstore {
    fn create(core: &Path, kind: &str) -> Result<Backstore> {
        let hba = (4711..4811)
            .map(|n| core.join(format!("{kind}_{n}")))
            .find(|hba| !hba.exists())
            .with_context(|| format!("no free {kind} HBA number in {}", core.display()))?;
        std::fs::create_dir(&hba).with_context(|| format!("creating {}", hba.display()))?;
        let store = Backstore {
            device: hba.join("guard-selftest"),
            hba,
        };
        std::fs::create_dir(&store.device)
            .with_context(|| format!("creating {}", store.device.display()))?;
        Ok(store)
    }

    fn set(&self, param: &str) -> Result<()> {
        let control = self.device.join("control");
        std::fs::write(&control, param)
            .with_context(|| format!("writing {param} to {}", control.display()))
    }
}

impl Drop for Backstore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.device);
        let _ = std::fs::remove_dir(&self.hba);
    }
}
