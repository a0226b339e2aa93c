//! Techniques through the allowed process: its /proc entries, its memory,
//! its descriptors taken by pidfd.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::sys::{self, check, errno_name, last_errno, open_and_read, refused};
use super::{AlertRule, Attempt, Target, Technique, ACCOMPLICE};

pub fn techniques() -> Vec<Technique> {
    let t = |id, name, expected, run| Technique {
        id,
        name,
        expected,
        needs: ACCOMPLICE,
        alert: AlertRule::Denial,
        run,
    };
    vec![
        t(
            "proc-fd-cp",
            "cp /proc/PID/fd/N of the allowed process",
            "EACCES/EPERM, no copy",
            proc_fd_cp,
        ),
        t(
            "proc-task-fd",
            "read /proc/PID/task/TID/fd/N",
            "EACCES/EPERM",
            proc_task_fd,
        ),
        t(
            "proc-root",
            "read /proc/PID/root/<path>",
            "EACCES/EPERM",
            proc_root,
        ),
        t(
            "proc-cwd",
            "read /proc/PID/cwd/<name> (cwd in DIR)",
            "EACCES/EPERM",
            proc_cwd,
        ),
        t(
            "proc-map-files",
            "read /proc/PID/map_files/<range> of its mmap",
            "EACCES/EPERM",
            proc_map_files,
        ),
        t(
            "ptrace-attach",
            "PTRACE_ATTACH the allowed process",
            "EPERM",
            ptrace_attach,
        ),
        t(
            "proc-mem",
            "read its mapping through /proc/PID/mem",
            "EACCES/EPERM",
            proc_mem,
        ),
        t(
            "process-vm-readv",
            "process_vm_readv of its mapping",
            "EPERM",
            process_vm_readv,
        ),
        t(
            "pidfd-getfd",
            "pidfd_getfd of its descriptor, then read",
            "EPERM",
            pidfd_getfd,
        ),
        t(
            "core-dump-signal",
            "SIGSEGV to the allowed process (its core would hold what it read)",
            "EPERM",
            core_dump_signal,
        ),
    ]
}

fn core_dump_signal(t: &Target) -> Result<Attempt> {
    let pid = t.accomplice()?.pid as libc::pid_t;
    // SAFETY: kill(2) on a pid; if it works the accomplice dumps core, which
    // is the failure this row reports.
    if unsafe { libc::kill(pid, libc::SIGSEGV) } != 0 {
        return Ok(Attempt::blocked(format!(
            "kill SIGSEGV: {}",
            errno_name(last_errno())
        )));
    }
    Ok(Attempt::not_blocked("SIGSEGV delivered".to_string()))
}

fn proc_fd_cp(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let source = PathBuf::from(format!("/proc/{}/fd/{}", a.pid, a.fd));
    let copy = t.scratch.join(format!("cp-{}", std::process::id()));
    let (_, pid, status) = sys::run_program("/bin/cp", &[source.as_os_str(), copy.as_os_str()])?;
    let copied = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&copy);
    Ok(Attempt::from_bytes(copied as usize, &format!("cp ({status})")).with_pid(pid))
}

fn proc_task_fd(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let path = format!("/proc/{}/task/{}/fd/{}", a.pid, a.pid, a.fd);
    Ok(open_and_read(Path::new(&path), "task fd"))
}

fn proc_root(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let path = format!("/proc/{}/root{}", a.pid, t.file.display());
    Ok(open_and_read(Path::new(&path), "/proc/PID/root"))
}

fn proc_cwd(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let path = Path::new(&format!("/proc/{}/cwd", a.pid)).join(t.relative_file()?);
    Ok(open_and_read(&path, "/proc/PID/cwd"))
}

fn proc_map_files(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let folder = format!("/proc/{}/map_files", a.pid);
    let prefix = format!("{:x}-", a.map_addr);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) => return Ok(refused("listing map_files", &e)),
    };
    let name = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&prefix));
    let Some(name) = name else {
        return Ok(Attempt::blocked(format!(
            "no map_files entry for {prefix}… listed"
        )));
    };
    Ok(open_and_read(
        &Path::new(&folder).join(name),
        "map_files entry",
    ))
}

fn ptrace_attach(t: &Target) -> Result<Attempt> {
    let pid = t.accomplice()?.pid as libc::pid_t;
    // SAFETY: ptrace on a pid; detached again below if it worked.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
    if rc != 0 {
        return Ok(Attempt::blocked(format!(
            "PTRACE_ATTACH: {}",
            errno_name(last_errno())
        )));
    }
    let mut status = 0;
    // SAFETY: we are its tracer now; wait for the attach stop.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    let addr = t.accomplice()?.map_addr as usize;
    // PEEKDATA returns the word read: only errno tells a failure apart.
    // SAFETY: writing this thread's errno; PEEKDATA of a mapped address of the stopped tracee.
    unsafe { *libc::__errno_location() = 0 };
    let word = unsafe { libc::ptrace(libc::PTRACE_PEEKDATA, pid, addr, 0usize) };
    let peeked = if word == -1 && last_errno() != 0 {
        "PEEKDATA failed".to_string()
    } else {
        "PEEKDATA read 8 bytes of the mapped file".to_string()
    };
    // SAFETY: detach the tracee we attached.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    Ok(Attempt::not_blocked(format!("attached; {peeked}")))
}

fn proc_mem(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let mem = match std::fs::File::open(format!("/proc/{}/mem", a.pid)) {
        Ok(f) => f,
        Err(e) => return Ok(refused("open /proc/PID/mem", &e)),
    };
    let mut buf = vec![0u8; 4096.min(a.map_len as usize)];
    // SAFETY: buf is valid for its length.
    let n = unsafe {
        libc::pread(
            mem.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            a.map_addr as libc::off_t,
        )
    };
    Ok(match check(n as libc::c_long) {
        Ok(n) => Attempt::from_bytes(n as usize, "/proc/PID/mem"),
        Err(e) => refused("/proc/PID/mem: opened, read", &e),
    })
}

fn process_vm_readv(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let mut buf = vec![0u8; 4096.min(a.map_len as usize)];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: a.map_addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local iovec points into buf; the remote one is only read by the kernel.
    let n = unsafe { libc::process_vm_readv(a.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    Ok(match check(n as libc::c_long) {
        Ok(n) => Attempt::from_bytes(n as usize, "process_vm_readv"),
        Err(e) => refused("process_vm_readv", &e),
    })
}

fn pidfd_getfd(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    // SAFETY: plain system calls with integer arguments.
    let pidfd = match sys::owned_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, a.pid, 0) }) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("pidfd_open", &e)),
    };
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), a.fd, 0) };
    let fd = match sys::owned_fd(rc) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("pidfd_getfd", &e)),
    };
    Ok(match sys::pread_count(&fd, 4096) {
        Ok(n) => Attempt::from_bytes(n, "pidfd_getfd"),
        Err(e) => refused("pidfd_getfd: got the fd, read", &e),
    })
}
