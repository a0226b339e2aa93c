//! Techniques through the kernel's storage targets, configured by root in
//! configfs: the SCSI target (LIO), whose backstores export a block device
//! or a file to initiators, and the NVMe target, whose namespaces export a
//! block device to NVMe-over-fabrics hosts (the local loop one included).
//! The kernel then reads and writes the device on their behalf.

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
        Technique {
            id: "nvme-target",
            name: "export the raw block device as an NVMe target namespace (device_path)",
            expected: "EPERM",
            needs: device,
            alert: AlertRule::Denial,
            run: nvme_target,
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
    let module = if kind == "fileio" {
        "target_core_file"
    } else {
        "target_core_iblock"
    };
    let Some(core) = configfs_folder("target/core", "target_core_mod")? else {
        return load_module(module, "the SCSI target");
    };
    let hba = free_folder(&core, &format!("{kind}_"))?;
    let store = Folders::create(&[hba, PathBuf::from("guard-selftest")])?;
    let control = store.innermost().join("control");
    let param = format!("{path_param}={}", device.display());
    std::fs::write(&control, &param)
        .with_context(|| format!("writing {param} to {}", control.display()))?;
    let what = format!(
        "enable {kind} backstore guard-selftest on {}",
        device.display()
    );
    let attempt = match std::fs::write(store.innermost().join("enable"), "1") {
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

/// An NVMe target namespace opens its device when enabled, not exclusively:
/// a mounted device is no obstacle, so guard refuses naming it at all.
fn nvme_target(t: &Target) -> Result<Attempt> {
    let device = t.device.as_ref().context("needs --device")?;
    let Some(subsystems) = configfs_folder("nvmet/subsystems", "nvmet")? else {
        return load_module("nvmet", "the NVMe target");
    };
    let subsystem = free_folder(&subsystems, "guard-selftest-")?;
    let namespace = Folders::create(&[subsystem, PathBuf::from("namespaces/1")])?;
    let device_path = namespace.innermost().join("device_path");
    let what = format!("write {} to {}", device.display(), device_path.display());
    let attempt = match std::fs::write(&device_path, device.as_os_str().as_encoded_bytes()) {
        Ok(()) => Attempt::not_blocked(format!("{what}: accepted")),
        Err(e) if refused_by_policy(e.raw_os_error().unwrap_or(0)) => refused(&what, &e),
        Err(e) => return Err(anyhow::Error::new(e).context(what)),
    };
    Ok(attempt)
}

/// A target that is not loaded: loading it is the attempt (guard refuses
/// every module load while armed).
fn load_module(module: &str, target: &str) -> Result<Attempt> {
    let child = Command::new("modprobe")
        .arg(module)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting modprobe")?;
    let pid = child.id();
    let out = child.wait_with_output().context("waiting for modprobe")?;
    let what = format!("modprobe {module} ({target} is not loaded)");
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

/// `sub` in configfs, mounting configfs in this row's own mount namespace
/// when the system has not; `None` when `module` is not loaded.
fn configfs_folder(sub: &str, module: &str) -> Result<Option<PathBuf>> {
    let folder = Path::new(CONFIGFS).join(sub);
    if folder.exists() {
        return Ok(Some(folder));
    }
    if !Path::new("/sys/module").join(module).exists() {
        return Ok(None);
    }
    sys::private_mount_namespace()?;
    sys::mount(
        Some(Path::new("configfs")),
        Path::new(CONFIGFS),
        Some("configfs"),
        0,
        None,
    )
    .with_context(|| format!("mounting configfs on {CONFIGFS}"))?;
    Ok(Some(folder))
}

/// A folder `PREFIX<n>` in `parent` that does not exist yet.
fn free_folder(parent: &Path, prefix: &str) -> Result<PathBuf> {
    (4711..4811)
        .map(|n| parent.join(format!("{prefix}{n}")))
        .find(|folder| !folder.exists())
        .with_context(|| format!("no free {prefix}N folder in {}", parent.display()))
}

/// configfs folders the row made (each inside the one before), removed
/// innermost first when dropped: configfs tears down what they configure.
struct Folders(Vec<PathBuf>);

impl Folders {
    fn create(parts: &[PathBuf]) -> Result<Folders> {
        let mut made = Folders(Vec::new());
        let mut path = PathBuf::new();
        for part in parts {
            for component in part.components() {
                path.push(component);
                if !path.exists() {
                    std::fs::create_dir(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    made.0.push(path.clone());
                }
            }
        }
        Ok(made)
    }

    fn innermost(&self) -> &Path {
        self.0.last().expect("at least one folder made")
    }
}

impl Drop for Folders {
    fn drop(&mut self) {
        for folder in self.0.iter().rev() {
            let _ = std::fs::remove_dir(folder);
        }
    }
}
