//! Techniques with mounts. Each runs in a mount namespace of its own whose
//! mounts do not propagate back, so one the guard lets through changes
//! nothing outside the technique's process; guard's hooks see the mount
//! calls whatever the namespace.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::sys::{self, check, cstring, errno_name, last_errno, mount, open_and_read, refused};
use super::{AlertRule, Attempt, Target, Technique, NOTHING};

pub fn techniques() -> Vec<Technique> {
    let t = |id, name, expected, run| Technique {
        id,
        name,
        expected,
        needs: NOTHING,
        alert: AlertRule::Denial,
        run,
    };
    vec![
        t(
            "unshare-mount-ns",
            "new mount namespace (unshare -m), then read",
            "EPERM",
            unshare_read,
        ),
        t(
            "bind-mount",
            "bind mount DIR elsewhere, then read",
            "no data",
            bind_read,
        ),
        t(
            "open-tree",
            "open_tree(OPEN_TREE_CLONE) of DIR, openat through it",
            "no data",
            open_tree_read,
        ),
        t(
            "second-mount",
            "mount DIR's device again elsewhere, then read",
            "no data",
            second_mount,
        ),
        t(
            "overlay",
            "overlayfs with DIR as its lower layer, then read",
            "no data",
            overlay_read,
        ),
        t(
            "mount-over",
            "mount tmpfs over DIR",
            "EPERM, DIR unchanged",
            mount_over,
        ),
        t(
            "mount-over-parent",
            "mount tmpfs over DIR's parent, hiding DIR",
            "EPERM, DIR unchanged",
            mount_over_parent,
        ),
        t(
            "fsmount-over",
            "fsopen/fsmount tmpfs, move_mount over DIR",
            "EPERM, DIR unchanged",
            fsmount_over,
        ),
        t(
            "umount",
            "umount -l the filesystem holding DIR",
            "EPERM",
            umount,
        ),
        t(
            "remount",
            "remount the filesystem holding DIR read-only",
            "EPERM",
            remount,
        ),
    ]
}

/// One line of /proc/self/mountinfo, the parts we use.
struct Mount {
    /// Path inside the filesystem that is mounted here.
    root: PathBuf,
    mount_point: PathBuf,
    fs_type: String,
    source: String,
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                root: PathBuf::from(unescape(left.get(3)?)),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                fs_type: right.first()?.to_string(),
                source: unescape(right.get(1)?),
            })
        })
        .collect()
}

/// The mount `path` is on: the deepest mount point above it (the last one
/// listed wins when mounts are stacked).
fn mount_of(path: &Path) -> Result<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<Mount> = None;
    for mount in parse_mountinfo(&text) {
        if !path.starts_with(&mount.mount_point) {
            continue;
        }
        let deeper = best.as_ref().is_none_or(|b| {
            mount.mount_point.components().count() >= b.mount_point.components().count()
        });
        if deeper {
            best = Some(mount);
        }
    }
    best.with_context(|| format!("no mount holds {}", path.display()))
}

fn mkdir(t: &Target, name: &str) -> Result<PathBuf> {
    let path = t.scratch.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

fn unshare_read(t: &Target) -> Result<Attempt> {
    sys::private_mount_namespace()?;
    Ok(open_and_read(&t.file, "read in a new mount namespace"))
}

fn bind_read(t: &Target) -> Result<Attempt> {
    sys::private_mount_namespace()?;
    let at = mkdir(t, "bind")?;
    if let Err(e) = mount(Some(&t.dir), &at, None, libc::MS_BIND, None) {
        return Ok(refused("bind mount", &e));
    }
    Ok(open_and_read(
        &at.join(t.relative_file()?),
        "bind mounted, read",
    ))
}

fn open_tree_read(t: &Target) -> Result<Attempt> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    sys::private_mount_namespace()?;
    let dir = cstring(&t.dir)?;
    // SAFETY: valid C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            dir.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let tree = match sys::owned_fd(rc) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("open_tree", &e)),
    };
    let name = cstring(t.relative_file()?)?;
    // SAFETY: valid descriptor and C string.
    let rc = unsafe { libc::openat(tree.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
    let fd = match sys::owned_fd(rc as libc::c_long) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("openat in the cloned tree", &e)),
    };
    Ok(match sys::pread_count(&fd, 4096) {
        Ok(n) => Attempt::from_bytes(n, "cloned tree"),
        Err(e) => refused("cloned tree: opened, read", &e),
    })
}

/// An overlay shows its lower layer's files under its own mount (before
/// Linux 6.8 the kernel opens them under the overlay's path).
fn overlay_read(t: &Target) -> Result<Attempt> {
    let lower = t.dir.to_str().context("DIR is not UTF-8")?;
    if lower.contains([',', ':']) {
        bail!("DIR contains ',' or ':', which overlayfs options cannot hold unescaped");
    }
    sys::private_mount_namespace()?;
    // The upper layer on a tmpfs of its own: nothing written outside.
    let layers = mkdir(t, "overlay")?;
    mount(Some(Path::new("tmpfs")), &layers, Some("tmpfs"), 0, None)
        .context("mounting a tmpfs for the upper layer")?;
    for dir in ["upper", "work", "merged"] {
        std::fs::create_dir(layers.join(dir))?;
    }
    let l = layers.display();
    let options = format!("lowerdir={lower},upperdir={l}/upper,workdir={l}/work");
    let merged = layers.join("merged");
    if let Err(e) = mount(
        Some(Path::new("overlay")),
        &merged,
        Some("overlay"),
        0,
        Some(&options),
    ) {
        return Ok(refused("mount overlay", &e));
    }
    Ok(open_and_read(
        &merged.join(t.relative_file()?),
        "through the overlay, read",
    ))
}

fn second_mount(t: &Target) -> Result<Attempt> {
    let holder = mount_of(&t.dir)?;
    if !holder.source.starts_with("/dev/") {
        bail!(
            "DIR's filesystem ({}) is not on a block device",
            holder.source
        );
    }
    sys::private_mount_namespace()?;
    let at = mkdir(t, "devmount")?;
    if let Err(e) = mount(
        Some(Path::new(&holder.source)),
        &at,
        Some(&holder.fs_type),
        0,
        None,
    ) {
        return Ok(refused(&format!("mount {}", holder.source), &e));
    }
    // The new mount shows the filesystem's root; DIR's mount may show a subtree.
    let inside = t.file.strip_prefix(&holder.mount_point)?;
    let path = at
        .join(holder.root.strip_prefix("/").unwrap_or(&holder.root))
        .join(inside);
    Ok(open_and_read(&path, "second mount, read"))
}

/// Blocked only if the call failed and DIR still shows the real file.
fn over(t: &Target, what: &str, attempt: impl FnOnce() -> std::io::Result<()>) -> Result<Attempt> {
    let before = std::fs::metadata(&t.file)?.ino();
    let result = attempt();
    let after = std::fs::metadata(&t.file).map(|m| m.ino()).ok();
    Ok(match result {
        Err(e) if after == Some(before) => refused(what, &e),
        Err(e) => Attempt::not_blocked(format!("{what}: {} but DIR changed", sys::err_name(&e))),
        Ok(()) => Attempt::not_blocked(format!(
            "{what}: mounted over DIR (the file {} there)",
            if after == Some(before) {
                "is still"
            } else {
                "is no longer"
            }
        )),
    })
}

fn mount_over(t: &Target) -> Result<Attempt> {
    sys::private_mount_namespace()?;
    over(t, "mount tmpfs", || {
        mount(Some(Path::new("tmpfs")), &t.dir, Some("tmpfs"), 0, None)
    })
}

fn mount_over_parent(t: &Target) -> Result<Attempt> {
    sys::private_mount_namespace()?;
    let parent = t.dir.parent().context("DIR has no parent")?;
    over(t, "mount tmpfs on DIR's parent", || {
        mount(Some(Path::new("tmpfs")), parent, Some("tmpfs"), 0, None)
    })
}

fn fsmount_over(t: &Target) -> Result<Attempt> {
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    sys::private_mount_namespace()?;
    let fs_type = c"tmpfs";
    // SAFETY: valid C string.
    let fs = match sys::owned_fd(unsafe { libc::syscall(libc::SYS_fsopen, fs_type.as_ptr(), 0) }) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("fsopen", &e)),
    };
    // SAFETY: valid descriptor, null key and value for CMD_CREATE.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if let Err(e) = check(rc) {
        return Ok(refused("fsconfig create", &e));
    }
    // SAFETY: valid descriptor.
    let mnt = match sys::owned_fd(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), 0, 0) })
    {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("fsmount", &e)),
    };
    let dir = cstring(&t.dir)?;
    let empty = c"";
    over(t, "move_mount", || {
        // SAFETY: valid descriptors and C strings.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                dir.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        check(rc).map(drop)
    })
}

fn umount(t: &Target) -> Result<Attempt> {
    let holder = mount_of(&t.dir)?;
    sys::private_mount_namespace()?;
    let target = cstring(&holder.mount_point)?;
    // SAFETY: valid C string.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    Ok(if rc == 0 {
        Attempt::not_blocked(format!("unmounted {}", holder.mount_point.display()))
    } else {
        Attempt::blocked(format!(
            "umount {}: {}",
            holder.mount_point.display(),
            errno_name(last_errno())
        ))
    })
}

fn remount(t: &Target) -> Result<Attempt> {
    let holder = mount_of(&t.dir)?;
    sys::private_mount_namespace()?;
    // A bind remount changes this mount only, never the shared superblock.
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
    Ok(match mount(None, &holder.mount_point, None, flags, None) {
        Ok(()) => Attempt::not_blocked(format!(
            "remounted {} read-only",
            holder.mount_point.display()
        )),
        Err(e) => refused(&format!("remount {}", holder.mount_point.display()), &e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mountinfo_lines_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    25 1 254:1 / / rw - ext4 /dev/vda1 rw\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].root, Path::new("/mnt1"));
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/my dir"));
        assert_eq!(mounts[0].fs_type, "ext3");
        assert_eq!(mounts[0].source, "/dev/root");
        assert_eq!(mounts[1].mount_point, Path::new("/"));
    }
}
