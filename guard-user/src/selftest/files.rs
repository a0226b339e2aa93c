//! Techniques on paths and inodes: reading by every name that leads to the
//! file, file handles, io_uring, and changing or destroying protected files.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::sys::{self, check, cstring, err_name, open_and_read, refused};
use super::{AlertRule, Attempt, Target, Technique, NOTHING, VICTIM};

pub fn techniques() -> Vec<Technique> {
    let t = |id, name, expected, needs, run| Technique {
        id,
        name,
        expected,
        needs,
        alert: AlertRule::Denial,
        run,
    };
    vec![
        t("read", "open and read the file", "EPERM", NOTHING, read),
        t("cat", "/bin/cat the file", "EPERM, no output", NOTHING, cat),
        t(
            "symlink",
            "read through a symlink made outside",
            "EPERM",
            NOTHING,
            symlink,
        ),
        t(
            "dotdot",
            "read by a path with .. components",
            "EPERM",
            NOTHING,
            dotdot,
        ),
        t(
            "chroot",
            "chroot to the parent folder, then read",
            "EPERM",
            NOTHING,
            chroot,
        ),
        t(
            "o-path-reopen",
            "O_PATH open, then reopen via /proc/self/fd",
            "EPERM",
            NOTHING,
            o_path_reopen,
        ),
        t(
            "file-handle",
            "name_to_handle_at + open_by_handle_at",
            "EPERM",
            NOTHING,
            file_handle,
        ),
        t(
            "file-handle-dropped",
            "open_by_handle_at after drop_caches (disconnected dentry)",
            "EPERM",
            VICTIM,
            file_handle_dropped,
        ),
        t(
            "io-uring-openat",
            "io_uring IORING_OP_OPENAT, then read",
            "EPERM",
            NOTHING,
            io_uring_openat,
        ),
        t(
            "hard-link-out",
            "hard link out of the tree, then read",
            "link refused",
            NOTHING,
            hard_link_out,
        ),
        t(
            "rename-out",
            "rename a protected file out of the tree",
            "rename refused",
            VICTIM,
            rename_out,
        ),
        t(
            "rename-over",
            "rename another file over a protected one",
            "rename refused",
            VICTIM,
            rename_over,
        ),
        t(
            "unlink",
            "unlink a protected file",
            "refused, file kept",
            VICTIM,
            unlink,
        ),
        t(
            "truncate",
            "truncate(2) a protected file to 0",
            "refused, size kept",
            VICTIM,
            truncate,
        ),
        t(
            "o-trunc",
            "open a protected file with O_TRUNC",
            "refused, size kept",
            VICTIM,
            o_trunc,
        ),
        t(
            "append",
            "open a protected file for appending",
            "EPERM",
            VICTIM,
            append,
        ),
        t(
            "chmod",
            "chmod 0666 a protected file",
            "refused, mode kept",
            VICTIM,
            chmod,
        ),
        t(
            "chown",
            "chown nobody a protected file",
            "refused, owner kept",
            VICTIM,
            chown,
        ),
        t(
            "utimes",
            "set a protected file's times",
            "refused, times kept",
            VICTIM,
            utimes,
        ),
        t(
            "setxattr-user",
            "setxattr user.* on a protected file",
            "refused",
            VICTIM,
            setxattr_user,
        ),
        t(
            "setxattr-security",
            "setxattr security.* on a protected file",
            "refused",
            VICTIM,
            setxattr_security,
        ),
        t(
            "removexattr",
            "removexattr user.* of a protected file",
            "refused, xattr kept",
            VICTIM,
            removexattr,
        ),
    ]
}

fn read(t: &Target) -> Result<Attempt> {
    Ok(open_and_read(&t.file, "read"))
}

fn cat(t: &Target) -> Result<Attempt> {
    let (bytes, pid, status) = sys::run_program("/bin/cat", &[t.file.as_os_str()])?;
    Ok(Attempt::from_bytes(bytes, &format!("cat ({status})")).with_pid(pid))
}

fn symlink(t: &Target) -> Result<Attempt> {
    let link = t.scratch.join(format!("symlink-{}", std::process::id()));
    std::os::unix::fs::symlink(&t.file, &link)?;
    let attempt = open_and_read(&link, "read via symlink");
    let _ = std::fs::remove_file(&link);
    Ok(attempt)
}

fn dotdot(t: &Target) -> Result<Attempt> {
    let name = t.dir.file_name().context("DIR has no name")?;
    let path = t
        .dir
        .join("..")
        .join(name)
        .join(".")
        .join(t.relative_file()?);
    Ok(open_and_read(&path, "read via .."))
}

fn chroot(t: &Target) -> Result<Attempt> {
    let parent = t.dir.parent().context("DIR has no parent")?;
    let inside = Path::new("/")
        .join(t.dir.file_name().context("DIR has no name")?)
        .join(t.relative_file()?);
    let c_parent = cstring(parent)?;
    // SAFETY: a valid C string; this worker process is ours to confine.
    check(unsafe { libc::chroot(c_parent.as_ptr()) } as libc::c_long).context("chroot")?;
    std::env::set_current_dir("/")?;
    Ok(open_and_read(&inside, "read inside chroot"))
}

fn o_path_reopen(t: &Target) -> Result<Attempt> {
    let c = cstring(&t.file)?;
    // SAFETY: valid C string.
    let fd = match sys::owned_fd(unsafe { libc::open(c.as_ptr(), libc::O_PATH) } as libc::c_long) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("O_PATH open", &e)),
    };
    let reopen = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(open_and_read(Path::new(&reopen), "reopen of the O_PATH fd"))
}

/// `struct file_handle` with room for any filesystem's handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

fn name_to_handle(path: &Path) -> std::io::Result<FileHandle> {
    let c = cstring(path).map_err(std::io::Error::other)?;
    let mut handle = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0i32;
    // SAFETY: valid C string and a handle buffer of the size it announces.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut handle as *mut FileHandle,
            &mut mount_id as *mut i32,
            0,
        )
    };
    check(rc)?;
    Ok(handle)
}

/// open_by_handle_at on the filesystem of `dir`, then a read.
fn open_handle_and_read(dir: &Path, handle: &mut FileHandle, how: &str) -> Result<Attempt> {
    // Any descriptor on the filesystem will do as the mount fd; the parent
    // of DIR is outside the protected tree.
    let mount_dir = std::fs::File::open(dir.parent().unwrap_or(dir))?;
    // SAFETY: a handle filled by name_to_handle_at.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_dir.as_raw_fd(),
            handle as *mut FileHandle,
            libc::O_RDONLY,
        )
    };
    let fd: OwnedFd = match sys::owned_fd(rc) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused(&format!("{how}: open_by_handle_at"), &e)),
    };
    Ok(match sys::pread_count(&fd, 4096) {
        Ok(n) => Attempt::from_bytes(n, how),
        Err(e) => refused(&format!("{how}: opened, read"), &e),
    })
}

fn file_handle(t: &Target) -> Result<Attempt> {
    let mut handle = match name_to_handle(&t.file) {
        Ok(h) => h,
        Err(e) => return Ok(refused("name_to_handle_at", &e)),
    };
    open_handle_and_read(&t.dir, &mut handle, "file handle")
}

/// The victim is not open anywhere, so after drop_caches its dentry is gone
/// and open_by_handle_at makes a disconnected one: no parent to walk up to
/// the protected directory.
fn file_handle_dropped(t: &Target) -> Result<Attempt> {
    let mut handle = match name_to_handle(t.victim()?) {
        Ok(h) => h,
        Err(e) => return Ok(refused("name_to_handle_at", &e)),
    };
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "2").context("echo 2 > /proc/sys/vm/drop_caches")?;
    open_handle_and_read(&t.dir, &mut handle, "file handle after drop_caches")
}

fn io_uring_openat(t: &Target) -> Result<Attempt> {
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(ring) => ring,
        Err(e) => return Ok(refused("io_uring_setup", &e)),
    };
    let path = cstring(&t.file)?;
    let open = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDONLY)
        .build()
        .user_data(1);
    // SAFETY: `path` outlives the submission, which is waited for below.
    unsafe { ring.submission().push(&open) }.context("io_uring queue full")?;
    ring.submit_and_wait(1)?;
    let result = ring
        .completion()
        .next()
        .context("no io_uring completion")?
        .result();
    if result < 0 {
        return Ok(Attempt::blocked(format!(
            "IORING_OP_OPENAT: {}",
            sys::errno_name(-result)
        )));
    }
    let fd = sys::owned_fd(result as libc::c_long)?;
    Ok(match sys::pread_count(&fd, 4096) {
        Ok(n) => Attempt::from_bytes(n, "io_uring openat"),
        Err(e) => refused("io_uring openat: opened, read", &e),
    })
}

fn hard_link_out(t: &Target) -> Result<Attempt> {
    let link = t.scratch.join(format!("hardlink-{}", std::process::id()));
    if let Err(e) = std::fs::hard_link(&t.file, &link) {
        return Ok(refused("link", &e));
    }
    let read = open_and_read(&link, "read of the link");
    let _ = std::fs::remove_file(&link);
    Ok(Attempt::not_blocked(format!(
        "link made; {}",
        read.observed
    )))
}

fn rename_out(t: &Target) -> Result<Attempt> {
    let out = t.scratch.join(format!("renamed-{}", std::process::id()));
    match std::fs::rename(t.victim()?, &out) {
        Err(e) => Ok(refused("rename", &e)),
        Ok(()) => {
            let read = open_and_read(&out, "read");
            Ok(Attempt::not_blocked(format!(
                "moved out; {}",
                read.observed
            )))
        }
    }
}

fn rename_over(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    let evil = t.scratch.join(format!("evil-{}", std::process::id()));
    std::fs::write(&evil, "replaced by the attacker\n")?;
    let before = std::fs::metadata(victim)?.ino();
    let result = std::fs::rename(&evil, victim);
    let _ = std::fs::remove_file(&evil);
    Ok(match result {
        Err(e) => refused("rename", &e),
        Ok(()) => Attempt::not_blocked(format!(
            "replaced (inode {before} -> {})",
            std::fs::metadata(victim).map(|m| m.ino()).unwrap_or(0)
        )),
    })
}

/// A mutation: blocked if the call failed and `unchanged` still holds.
fn mutation(what: &str, result: std::io::Result<()>, unchanged: impl FnOnce() -> bool) -> Attempt {
    match result {
        Err(e) if unchanged() => refused(what, &e),
        Err(e) => Attempt::not_blocked(format!("{what}: {} but the file changed", err_name(&e))),
        Ok(()) => Attempt::not_blocked(format!("{what}: done")),
    }
}

fn unlink(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    Ok(mutation("unlink", std::fs::remove_file(victim), || {
        victim.exists()
    }))
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn truncate(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    let size = size_of(victim);
    let c = cstring(victim)?;
    // SAFETY: valid C string.
    let result = check(unsafe { libc::truncate(c.as_ptr(), 0) } as libc::c_long).map(drop);
    Ok(mutation("truncate", result, || size_of(victim) == size))
}

fn o_trunc(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    let size = size_of(victim);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(victim)
        .map(drop);
    Ok(mutation("open O_TRUNC", result, || size_of(victim) == size))
}

fn append(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    let size = size_of(victim);
    let result = std::fs::OpenOptions::new()
        .append(true)
        .open(victim)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"planted by the attacker\n"));
    Ok(mutation("open O_APPEND and write", result, || {
        size_of(victim) == size
    }))
}

fn chmod(t: &Target) -> Result<Attempt> {
    use std::os::unix::fs::PermissionsExt;
    let victim = t.victim()?;
    let mode = std::fs::metadata(victim)?.mode();
    let result = std::fs::set_permissions(victim, std::fs::Permissions::from_mode(0o666));
    Ok(mutation("chmod", result, || {
        std::fs::metadata(victim).map(|m| m.mode()).ok() == Some(mode)
    }))
}

fn chown(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    let uid = std::fs::metadata(victim)?.uid();
    let result = std::os::unix::fs::chown(victim, Some(65534), Some(65534));
    Ok(mutation("chown", result, || {
        std::fs::metadata(victim).map(|m| m.uid()).ok() == Some(uid)
    }))
}

fn utimes(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    let mtime = std::fs::metadata(victim)?.mtime();
    let c = cstring(victim)?;
    let times = [libc::timespec {
        tv_sec: 86400,
        tv_nsec: 0,
    }; 2];
    // SAFETY: valid C string and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    let result = check(rc as libc::c_long).map(drop);
    Ok(mutation("utimensat", result, || {
        std::fs::metadata(victim).map(|m| m.mtime()).ok() == Some(mtime)
    }))
}

fn xattr_names(path: &Path) -> Vec<u8> {
    let Ok(c) = cstring(path) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(n.max(0) as usize);
    buf
}

fn setxattr(t: &Target, name: &str) -> Result<Attempt> {
    let victim = t.victim()?;
    let before = xattr_names(victim);
    let c = cstring(victim)?;
    let c_name = std::ffi::CString::new(name)?;
    let value = b"attacker";
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    let result = check(rc as libc::c_long).map(drop);
    Ok(mutation(&format!("setxattr {name}"), result, || {
        xattr_names(victim) == before
    }))
}

fn setxattr_user(t: &Target) -> Result<Attempt> {
    setxattr(t, "user.guard_selftest_attack")
}

fn setxattr_security(t: &Target) -> Result<Attempt> {
    setxattr(t, "security.guard_selftest_attack")
}

fn removexattr(t: &Target) -> Result<Attempt> {
    let victim = t.victim()?;
    let before = xattr_names(victim);
    let c = cstring(victim)?;
    let c_name = std::ffi::CString::new(super::accomplice::VICTIM_XATTR)?;
    // SAFETY: valid C strings.
    let rc = unsafe { libc::removexattr(c.as_ptr(), c_name.as_ptr()) };
    let result = check(rc as libc::c_long).map(drop);
    Ok(mutation("removexattr", result, || {
        xattr_names(victim) == before
    }))
}
