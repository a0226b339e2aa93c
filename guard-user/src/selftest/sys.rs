//! Small system call helpers shared by the techniques.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::Attempt;

/// The symbolic name of an errno (EPERM), or its number.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::ENOEXEC => "ENOEXEC",
        libc::ENOSYS => "ENOSYS",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::ESRCH => "ESRCH",
        libc::EAGAIN => "EAGAIN",
        libc::ENOTTY => "ENOTTY",
        libc::ENOMEM => "ENOMEM",
        libc::E2BIG => "E2BIG",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// The errno of an io::Error as a name.
pub fn err_name(e: &io::Error) -> String {
    e.raw_os_error()
        .map(errno_name)
        .unwrap_or_else(|| e.to_string())
}

pub fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A refusal of `what`: blocked, naming the errno.
pub fn refused(what: &str, e: &io::Error) -> Attempt {
    Attempt::blocked(format!("{what}: {}", err_name(e)))
}

/// A refusal counts only as guard's kind of refusal (EPERM/EACCES): other
/// errors mean the kernel went ahead and failed for another reason.
pub fn refused_by_policy(errno: i32) -> bool {
    errno == libc::EPERM || errno == libc::EACCES
}

pub fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

/// The return value of a system call returning an fd, owned.
pub fn owned_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// `cvt` for system calls returning 0 or -1.
pub fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Reads up to `max` bytes from `fd` at offset 0: how many came back.
pub fn pread_count(fd: &impl AsRawFd, max: usize) -> io::Result<usize> {
    let mut buf = vec![0u8; max];
    // SAFETY: buf is valid for max bytes.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), max, 0) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// Opens `path` read-only and reads from it: the attempt of a plain read.
pub fn open_and_read(path: &Path, how: &str) -> Attempt {
    match std::fs::File::open(path) {
        Err(e) => refused(&format!("{how}: open"), &e),
        Ok(file) => match pread_count(&file, 4096) {
            Err(e) => refused(&format!("{how}: opened, read"), &e),
            Ok(n) => Attempt::from_bytes(n, how),
        },
    }
}

/// Runs a program as this (not allowed) process would, returning how many
/// bytes it printed and its pid.
/// The system's dynamic loader (to run a program through it).
pub fn dynamic_loader() -> Result<&'static str> {
    ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no dynamic loader found")
}

pub fn run_program(program: &str, args: &[&std::ffi::OsStr]) -> Result<(usize, u32, String)> {
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or("").trim().to_string();
    Ok((out.stdout.len(), pid, format!("{} {first}", out.status)))
}

/// Enters a mount namespace of our own whose mounts do not propagate back,
/// so a mount attack that is not blocked changes nothing outside this process.
pub fn private_mount_namespace() -> Result<()> {
    // SAFETY: plain system calls on constant arguments.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long).context("unshare(CLONE_NEWNS)")?;
        let root = c"/";
        check(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) as libc::c_long)
        .context("making / private in the new mount namespace")?;
    }
    Ok(())
}

/// mount(2): `source`, `fs_type` and the options `data` may be absent.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fs_type: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let source = source
        .map(cstring)
        .transpose()
        .map_err(std::io::Error::other)?;
    let target = cstring(target).map_err(std::io::Error::other)?;
    let fs_type = fs_type.map(std::ffi::CString::new).transpose()?;
    let data = data.map(std::ffi::CString::new).transpose()?;
    // SAFETY: valid C strings or null.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fs_type.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    check(rc as libc::c_long).map(drop)
}
