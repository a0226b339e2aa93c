//! What guard trusts without looking inside: the allowed binary, known by
//! device and inode, and the host's KMS client key, which the KMS takes as
//! this host. Root would change the first beneath the filesystem (writing
//! its blocks through the device) and copy the second to ask the KMS for
//! the volume keys itself.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::sys::{self, open_and_read};
use super::{AlertRule, Attempt, Needs, Target, Technique, ACCOMPLICE, NOTHING};

pub fn techniques() -> Vec<Technique> {
    vec![
        Technique {
            id: "binary-device-write",
            name:
                "open the block device beneath the allowed binary for writing (a node root makes)",
            expected: "EPERM",
            needs: ACCOMPLICE,
            alert: AlertRule::Denial,
            run: binary_device_write,
        },
        Technique {
            id: "kms-client-key",
            name: "read the host's KMS client key (--kms-config)",
            expected: "EPERM",
            needs: Needs {
                kms_key: true,
                ..NOTHING
            },
            alert: AlertRule::Denial,
            run: kms_client_key,
        },
    ]
}

/// Opens (and closes, writing nothing) a block node of the allowed binary's
/// filesystem made in the scratch folder: where it is opened for writing,
/// root could rewrite the binary's blocks.
fn binary_device_write(t: &Target) -> Result<Attempt> {
    let exe = t
        .accomplice_exe
        .as_ref()
        .context("this technique needs --accomplice")?;
    let dev = std::fs::metadata(exe)
        .with_context(|| format!("stat {}", exe.display()))?
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major == 0 {
        bail!(
            "{} is on a filesystem without a block device ({major}:{minor}): nothing beneath it to write",
            exe.display()
        );
    }
    let node = t.scratch.join("guard-selftest-binary-device");
    make_block_node(&node, dev)?;
    let opened = std::fs::OpenOptions::new().write(true).open(&node);
    let _ = std::fs::remove_file(&node);
    Ok(match opened {
        Err(e) => sys::refused(&format!("open {major}:{minor} for writing"), &e),
        Ok(_) => Attempt::not_blocked(format!(
            "opened {major}:{minor}, which holds {}, for writing",
            exe.display()
        )),
    })
}

fn make_block_node(node: &Path, dev: u64) -> Result<()> {
    let _ = std::fs::remove_file(node);
    let path = sys::cstring(node)?;
    // SAFETY: valid C string.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFBLK | 0o600, dev) };
    sys::check(rc as libc::c_long).with_context(|| format!("mknod {}", node.display()))?;
    Ok(())
}

fn kms_client_key(t: &Target) -> Result<Attempt> {
    let key = t.kms_key.as_ref().context("needs --kms-config")?;
    Ok(open_and_read(key, &format!("read {}", key.display())))
}
