//! Techniques on a descriptor the allowed process opened: passed over a
//! UNIX socket and then read, mapped, spliced or copied; inherited by a
//! program that is not allowed; handed out by fanotify.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{Context, Result};
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::accomplice::{self, Request};
use super::sys::{self, check, cstring, errno_name, last_errno, refused};
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
            "scm-rights-read",
            "fd passed over a UNIX socket (SCM_RIGHTS), read",
            "no data",
            scm_read,
        ),
        t(
            "scm-rights-mmap",
            "fd passed over a UNIX socket, mmap",
            "no data",
            scm_mmap,
        ),
        t(
            "scm-rights-sendfile",
            "fd passed over a UNIX socket, sendfile",
            "no data",
            scm_sendfile,
        ),
        t(
            "scm-rights-splice",
            "fd passed over a UNIX socket, splice to a pipe",
            "no data",
            scm_splice,
        ),
        t(
            "scm-rights-copy-range",
            "fd passed over a UNIX socket, copy_file_range",
            "no data",
            scm_copy_range,
        ),
        t(
            "scm-rights-ficlone",
            "fd passed over a UNIX socket, FICLONE",
            "no data",
            scm_ficlone,
        ),
        t(
            "inherited-fd",
            "fd inherited by /bin/cat the allowed process starts",
            "no data",
            inherited,
        ),
        t(
            "fanotify",
            "fanotify FAN_OPEN event fd for the allowed process's open",
            "no data",
            fanotify,
        ),
    ]
}

/// Asks the accomplice for its descriptor. `Err(observed)` if none arrived.
fn receive_fd(t: &Target) -> Result<std::result::Result<OwnedFd, Attempt>> {
    let a = t.accomplice()?;
    let mut stream = UnixStream::connect(&a.socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    std::io::Write::write_all(
        &mut stream,
        format!("{}\n", serde_json::to_string(&Request::SendFd)?).as_bytes(),
    )?;
    let mut line = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut line)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    );
    let received = match received {
        Ok(r) => r,
        Err(e) => return Ok(Err(refused("recvmsg", &e.into()))),
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    match fds.pop() {
        Some(fd) => Ok(Ok(fd)),
        None => Ok(Err(Attempt::blocked(format!(
            "recvmsg delivered no descriptor (flags {:?})",
            received.flags
        )))),
    }
}

/// Runs `use_fd` on the passed descriptor, or reports why there was none.
fn with_passed_fd(t: &Target, use_fd: impl FnOnce(&OwnedFd) -> Result<Attempt>) -> Result<Attempt> {
    match receive_fd(t)? {
        Ok(fd) => use_fd(&fd),
        Err(attempt) => Ok(attempt),
    }
}

fn scm_read(t: &Target) -> Result<Attempt> {
    with_passed_fd(t, |fd| {
        Ok(match sys::pread_count(fd, 4096) {
            Ok(n) => Attempt::from_bytes(n, "read of the passed fd"),
            Err(e) => refused("received the fd, read", &e),
        })
    })
}

fn scm_mmap(t: &Target) -> Result<Attempt> {
    with_passed_fd(t, |fd| {
        let len = 4096;
        // SAFETY: a fresh private read-only mapping, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Ok(Attempt::blocked(format!(
                "received the fd, mmap: {}",
                errno_name(last_errno())
            )));
        }
        // Touch the mapped bytes: this is where the contents would arrive.
        // SAFETY: the mapping is len bytes long.
        let first = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        std::hint::black_box(first.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
        let size = std::fs::File::from(fd.try_clone()?).metadata()?.len() as usize;
        let bytes = size.min(len);
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(addr, len) };
        Ok(Attempt::from_bytes(bytes, "mmap of the passed fd"))
    })
}

/// A file in the scratch folder for copies to land in.
fn sink(t: &Target, name: &str) -> Result<(std::fs::File, std::path::PathBuf)> {
    let path = t.scratch.join(format!("{name}-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    Ok((file, path))
}

fn scm_sendfile(t: &Target) -> Result<Attempt> {
    with_passed_fd(t, |fd| {
        let (out, path) = sink(t, "sendfile")?;
        let mut offset: libc::off_t = 0;
        // SAFETY: two valid descriptors and an offset.
        let n = unsafe { libc::sendfile(out.as_raw_fd(), fd.as_raw_fd(), &mut offset, 4096) };
        let _ = std::fs::remove_file(&path);
        Ok(match check(n as libc::c_long) {
            Ok(n) => Attempt::from_bytes(n as usize, "sendfile"),
            Err(e) => refused("received the fd, sendfile", &e),
        })
    })
}

fn scm_splice(t: &Target) -> Result<Attempt> {
    with_passed_fd(t, |fd| {
        let mut pipe = [0i32; 2];
        // SAFETY: pipe fills two ints.
        check(unsafe { libc::pipe(pipe.as_mut_ptr()) } as libc::c_long)?;
        let mut offset: libc::loff_t = 0;
        // SAFETY: valid descriptors; closed below.
        let n = unsafe {
            libc::splice(
                fd.as_raw_fd(),
                &mut offset,
                pipe[1],
                std::ptr::null_mut(),
                4096,
                0,
            )
        };
        let result = check(n as libc::c_long);
        // SAFETY: closing the pipe we made.
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        Ok(match result {
            Ok(n) => Attempt::from_bytes(n as usize, "splice"),
            Err(e) => refused("received the fd, splice", &e),
        })
    })
}

fn scm_copy_range(t: &Target) -> Result<Attempt> {
    with_passed_fd(t, |fd| {
        let (out, path) = sink(t, "copy-range")?;
        let mut offset: libc::loff_t = 0;
        // SAFETY: valid descriptors and offset.
        let n = unsafe {
            libc::copy_file_range(
                fd.as_raw_fd(),
                &mut offset,
                out.as_raw_fd(),
                std::ptr::null_mut(),
                4096,
                0,
            )
        };
        let _ = std::fs::remove_file(&path);
        Ok(match check(n as libc::c_long) {
            Ok(n) => Attempt::from_bytes(n as usize, "copy_file_range"),
            Err(e) => refused("received the fd, copy_file_range", &e),
        })
    })
}

fn scm_ficlone(t: &Target) -> Result<Attempt> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    with_passed_fd(t, |fd| {
        let (out, path) = sink(t, "ficlone")?;
        // SAFETY: FICLONE takes the source descriptor as its argument.
        let rc = unsafe { libc::ioctl(out.as_raw_fd(), FICLONE, fd.as_raw_fd()) };
        let result = check(rc as libc::c_long);
        let cloned = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&path);
        Ok(match result {
            Ok(_) => Attempt::from_bytes(cloned as usize, "FICLONE"),
            Err(e) => refused("received the fd, FICLONE", &e),
        })
    })
}

fn inherited(t: &Target) -> Result<Attempt> {
    let a = t.accomplice()?;
    let response = accomplice::checked(accomplice::call(
        &a.socket,
        &Request::Inherit {
            program: "/bin/cat".into(),
        },
    )?)?;
    let bytes = response.bytes.unwrap_or(0) as usize;
    let status = response.status.unwrap_or_default();
    let mut attempt = Attempt::from_bytes(bytes, &format!("cat <&fd ({})", status.trim()));
    if let Some(pid) = response.pid {
        attempt = attempt.with_pid(pid);
    }
    Ok(attempt)
}

/// fanotify_event_metadata
#[repr(C)]
#[derive(Clone, Copy)]
struct EventMetadata {
    event_len: u32,
    vers: u8,
    reserved: u8,
    metadata_len: u16,
    mask: u64,
    fd: i32,
    pid: i32,
}

fn fanotify(t: &Target) -> Result<Attempt> {
    const FAN_CLASS_NOTIF: u32 = 0;
    const FAN_NONBLOCK: u32 = 0x2;
    const FAN_MARK_ADD: u32 = 0x1;
    const FAN_OPEN: u64 = 0x20;
    const FAN_EVENT_ON_CHILD: u64 = 0x0800_0000;
    let a = t.accomplice()?;
    // SAFETY: plain system call.
    let fan = unsafe {
        libc::fanotify_init(
            FAN_CLASS_NOTIF | FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
        )
    };
    let fan = match sys::owned_fd(fan as libc::c_long) {
        Ok(fd) => fd,
        Err(e) => return Ok(refused("fanotify_init", &e)),
    };
    let dir = cstring(&t.dir)?;
    // SAFETY: valid descriptor and C string.
    let rc = unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            FAN_MARK_ADD,
            FAN_OPEN | FAN_EVENT_ON_CHILD,
            libc::AT_FDCWD,
            dir.as_ptr(),
        )
    };
    if let Err(e) = check(rc as libc::c_long) {
        return Ok(refused("fanotify_mark", &e));
    }
    accomplice::checked(accomplice::call(&a.socket, &Request::Reopen)?)
        .context("the accomplice reopening its file")?;
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let n = loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 || last_errno() != libc::EAGAIN || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let n = match check(n as libc::c_long) {
        Ok(n) => n as usize,
        Err(e) => return Ok(refused("reading fanotify events", &e)),
    };
    let mut offset = 0;
    let mut best = Attempt::blocked("no event with a descriptor");
    while offset + std::mem::size_of::<EventMetadata>() <= n {
        // SAFETY: the kernel wrote whole records; read unaligned.
        let event: EventMetadata =
            unsafe { std::ptr::read_unaligned(buf.as_ptr().add(offset).cast()) };
        if event.event_len == 0 {
            break;
        }
        offset += event.event_len as usize;
        if event.fd < 0 {
            best = Attempt::blocked(format!("event without a descriptor (fd {})", event.fd));
            continue;
        }
        // SAFETY: the kernel opened this descriptor for us.
        let fd = sys::owned_fd(event.fd as libc::c_long)?;
        best = match sys::pread_count(&fd, 4096) {
            Ok(n) => Attempt::from_bytes(n, "fanotify event fd"),
            Err(e) => refused("fanotify event fd, read", &e),
        };
        if !best.blocked {
            break;
        }
    }
    Ok(best)
}
