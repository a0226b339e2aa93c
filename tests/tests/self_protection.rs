//! Self-protection, end to end on a real kernel: root cannot trace or inspect
//! the processes the policy allows, cannot start them under a tracer, and
//! cannot kill, stop or trace a guardd that protects itself. The allowed
//! program keeps working and every refusal reaches the journal, naming what
//! was tried.
//!
//! Run inside the QEMU guests by `cargo xtask vm-test` (both kernels).

use guard::journal::{field, message_id};
use guard_tests::guest::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const EACCES: i32 = libc::EACCES;

/// A process of the allowed binary holding the protected file open on fd 3,
/// waiting for a line on stdin before it reads from the fd.
struct Holder {
    child: Option<Child>,
}

impl Holder {
    fn start(binary: &Path, file: &Path) -> Holder {
        let script = format!("exec 3< {}; echo ready; read x; cat <&3", file.display());
        let mut child = Command::new(binary)
            .args(["sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the holder did not open its file");
        Holder { child: Some(child) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Lets the process read its fd 3; returns what it printed.
    fn finish(mut self) -> String {
        let mut child = self.child.take().unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_ok(&out, "the allowed process reading its own fd");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// ptrace(request, pid): the errno, or 0 if it succeeded (then detaches).
fn ptrace(request: libc::c_uint, pid: u32) -> i32 {
    let rc = unsafe { libc::ptrace(request, pid as libc::pid_t, 0usize, 0usize) };
    if rc == 0 {
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid as libc::pid_t, 0usize, 0usize) };
        return 0;
    }
    errno()
}

/// process_vm_readv of a few bytes: the errno, or 0.
fn process_vm_read(pid: u32) -> i32 {
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: 0x10000 as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let rc = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if rc >= 0 {
        0
    } else {
        errno()
    }
}

fn os_error<T>(result: std::io::Result<T>, what: &str) -> i32 {
    match result {
        Ok(_) => panic!("{what}: root got through"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

/// Journal denials for `path` (a process, as guardd names it), with `hook`.
fn denials(path: &str, hook: &str) -> Vec<Value> {
    let entries = journal_entries(
        message_id::DENIED,
        field::PATH,
        path,
        Duration::from_secs(15),
    );
    entries
        .into_iter()
        .filter(|e| e[field::HOOK] == hook)
        .collect()
}

fn accesses(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e[field::ACCESS].as_str().map(str::to_string))
        .collect()
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn root_cannot_trace_or_inspect_an_allowed_process() {
    let sb = Sandbox::new("ptrace");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    let holder = Holder::start(&sb.allowed, &secret);
    let pid = holder.pid();
    let proc = format!("/proc/{pid}");

    assert_eq!(ptrace(libc::PTRACE_ATTACH, pid), EPERM, "PTRACE_ATTACH");
    assert_eq!(ptrace(libc::PTRACE_SEIZE, pid), EPERM, "PTRACE_SEIZE");
    assert_eq!(process_vm_read(pid), EPERM, "process_vm_readv");
    // mm_access() turns the refusal into EACCES for /proc/PID/mem.
    let mem = os_error(std::fs::File::open(format!("{proc}/mem")), "/proc/PID/mem");
    assert!(mem == EACCES || mem == EPERM, "/proc/PID/mem: errno {mem}");
    for link in ["fd/3", "exe", "cwd", "root"] {
        let errno = os_error(std::fs::read_link(format!("{proc}/{link}")), link);
        assert!(errno == EACCES || errno == EPERM, "{link}: errno {errno}");
    }
    let fd3 = os_error(std::fs::read(format!("{proc}/fd/3")), "open /proc/PID/fd/3");
    assert!(fd3 == EACCES || fd3 == EPERM, "/proc/PID/fd/3: errno {fd3}");
    let root = os_error(std::fs::read_dir(format!("{proc}/root/")), "/proc/PID/root");
    assert!(
        root == EACCES || root == EPERM,
        "/proc/PID/root: errno {root}"
    );
    let strace = sh(&format!("timeout 10 strace -o /dev/null -p {pid}"));
    assert!(
        stderr(&strace).contains("Operation not permitted"),
        "strace -p: {}",
        stderr(&strace)
    );

    // The same probes of a process of another binary work: the refusal is guard's.
    let other = Holder::start(&sb.other, &sb.root.join("other/busybox"));
    assert!(std::fs::read_link(format!("/proc/{}/fd/3", other.pid())).is_ok());
    assert_eq!(
        ptrace(libc::PTRACE_SEIZE, other.pid()),
        0,
        "seize of another binary"
    );
    drop(other);

    // The allowed process itself is not disturbed.
    assert_eq!(holder.finish(), "patient record 4711\n");

    let path = format!("process {pid} ({})", sb.allowed.display());
    let entries = denials(&path, "ptrace_access_check");
    let tried = accesses(&entries);
    for access in ["ptrace-attach", "ptrace-read"] {
        assert!(
            tried.iter().any(|a| a == access),
            "no {access} alert: {tried:?}"
        );
    }
    let e = &entries[0];
    assert_eq!(e[field::UID], "0");
    assert_eq!(e[field::RULE], "self-protection");
    assert_eq!(e[field::VERDICT], "denied");
}

/// Signals that dump core would hand the allowed process's memory (the data
/// it read) to whatever kernel.core_pattern names: root may stop the
/// allowed process, not make it dump core.
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn root_cannot_make_an_allowed_process_dump_core() {
    let sb = Sandbox::new("coredump");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    let holder = Holder::start(&sb.allowed, &secret);
    let pid = holder.pid();
    for sig in [libc::SIGSEGV, libc::SIGABRT, libc::SIGQUIT, libc::SIGBUS] {
        assert_eq!(signal(pid, sig), EPERM, "signal {sig}");
    }
    let path = format!("process {pid} ({})", sb.allowed.display());
    let entries = denials(&path, "task_kill");
    assert!(
        accesses(&entries).iter().any(|a| a == "signal:SIGSEGV"),
        "no alert for SIGSEGV: {entries:?}"
    );
    assert!(
        holder.finish().contains("patient record"),
        "the allowed process"
    );

    let holder = Holder::start(&sb.allowed, &secret);
    assert_eq!(signal(holder.pid(), libc::SIGTERM), 0, "SIGTERM");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_allowed_binary_cannot_be_started_under_a_tracer() {
    let sb = Sandbox::new("traced");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    let secret_s = secret.to_str().unwrap();
    let allowed = sb.allowed.to_str().unwrap();

    let out = sh(&format!(
        "strace -f -e trace=read -o /dev/null {allowed} cat {secret_s}"
    ));
    assert_eperm(&out, "strace of the allowed binary");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("patient"));

    // PTRACE_TRACEME then exec, as gdb does.
    let traced = unsafe {
        Command::new(&sb.allowed)
            .args(["cat", secret_s])
            .pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .output()
    };
    let errno = os_error(traced, "PTRACE_TRACEME + exec of the allowed binary");
    assert_eq!(errno, EPERM);

    // Tracing another binary works, and the allowed one runs untraced.
    assert_ok(
        &sh(&format!("strace -o /dev/null {} true", sb.other.display())),
        "strace of another binary",
    );
    let read = sb.allowed_run("cat", &[secret_s]);
    assert_ok(&read, "allowed cat");

    let entries = journal_entries(
        message_id::DENIED,
        field::HOOK,
        "bprm_check_security",
        Duration::from_secs(15),
    );
    let suffix = format!("({allowed})");
    let e = entries
        .iter()
        .find(|e| e[field::PATH].as_str().unwrap_or("").ends_with(&suffix))
        .unwrap_or_else(|| panic!("no exec-traced alert for {allowed}: {entries:?}"));
    assert_eq!(e[field::ACCESS], "exec-traced");
    assert_eq!(e[field::UID], "0");
}

fn signal(pid: u32, sig: i32) -> i32 {
    if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
        0
    } else {
        errno()
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_self_protecting_guardd_cannot_be_killed_stopped_or_traced() {
    let sb = Sandbox::new("selfkill");
    let guardd = ProtectedGuardd::start_with(&[]);
    let pid = guardd.guardd.pid();
    apply(&sb.policy("enforce"));
    assert_eq!(status()["self_protection"], true);

    for (name, sig) in [
        ("SIGTERM", libc::SIGTERM),
        ("SIGKILL", libc::SIGKILL),
        ("SIGSTOP", libc::SIGSTOP),
        ("SIGINT", libc::SIGINT),
        ("SIGHUP", libc::SIGHUP),
    ] {
        assert_eq!(signal(pid, sig), EPERM, "{name} to guardd");
    }
    assert_eq!(signal(pid, 0), 0, "signal 0 (does it exist?) is harmless");
    assert_eperm(&sh(&format!("kill -9 {pid}")), "kill -9 from a shell");
    assert_eq!(
        ptrace(libc::PTRACE_ATTACH, pid),
        EPERM,
        "PTRACE_ATTACH guardd"
    );
    assert_eq!(process_vm_read(pid), EPERM, "process_vm_readv of guardd");
    let mem = os_error(
        std::fs::File::open(format!("/proc/{pid}/mem")),
        "/proc/guardd/mem",
    );
    assert!(
        mem == EACCES || mem == EPERM,
        "/proc/guardd/mem: errno {mem}"
    );

    // Still alive and serving, and still enforcing.
    let st = status();
    assert_eq!(st["guardd_pid"], pid);
    assert_eq!(st["state"], "enforcing");
    assert_open_eperm(&sb.file("secret.txt"));

    // A second guardd cannot take its place.
    let second = Command::new(bin("guardd"))
        .args(["--socket", "/run/guard/second.sock"])
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second guardd started");
    assert!(
        stderr(&second).contains("self-protecting guardd"),
        "{}",
        stderr(&second)
    );

    let guardd_exe = std::fs::canonicalize(bin("guardd")).unwrap();
    let path = format!("process {pid} ({})", guardd_exe.display());
    let tried = accesses(&denials(&path, "task_kill"));
    for access in ["signal:SIGTERM", "signal:SIGKILL", "signal:SIGSTOP"] {
        assert!(
            tried.iter().any(|a| a == access),
            "no {access} alert: {tried:?}"
        );
    }
    let traced = accesses(&denials(&path, "ptrace_access_check"));
    assert!(traced.iter().any(|a| a == "ptrace-attach"), "{traced:?}");

    // A clean stop is journaled with who asked, and lifts the protection.
    assert_ok(&guardctl(&["stop"]), "guardctl stop");
    let stops = journal_entries(
        message_id::GUARDD_STOP_REQUESTED,
        field::UID,
        "0",
        Duration::from_secs(15),
    );
    assert!(!stops.is_empty());
    drop(guardd);
    let mut plain = Guardd::start();
    assert_eq!(status()["self_protection"], false);
    plain.kill9();
}

/// bpf(BPF_PROG_LOAD) of `mov r0, 0; exit` as `prog_type`: the errno, or 0.
fn load_trivial_program(prog_type: u32) -> i32 {
    // struct bpf_insn: code u8, regs u8, off i16, imm i32.
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    // union bpf_attr, BPF_PROG_LOAD part: prog_type, insn_cnt, insns, license.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
        0
    } else {
        errno()
    }
}

fn hook_denials(hook: &str) -> Vec<Value> {
    journal_entries(
        message_id::DENIED,
        field::HOOK,
        hook,
        Duration::from_secs(15),
    )
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_self_protecting_guard_keeps_root_away_from_its_bpf_state() {
    let sb = Sandbox::new("selfbpf");
    let _guardd = ProtectedGuardd::start_with(&[]);
    apply(&sb.policy("enforce"));
    let pins = "/sys/fs/bpf/guard";

    // The pins: unlinking or renaming them would detach the programs.
    assert_eperm(
        &sh(&format!("rm -f {pins}/links/file_open")),
        "rm a link pin",
    );
    assert_eperm(&sh(&format!("rm -rf {pins}")), "rm -rf the pin folder");
    assert_eperm(
        &sh(&format!("mv {pins}/maps/GUARD_EXES {pins}/maps/moved")),
        "rename a map pin",
    );
    let bpffs = std::ffi::CString::new("/sys/fs/bpf").unwrap();
    for (flags, what) in [(0, "umount"), (libc::MNT_DETACH, "umount -l")] {
        let rc = unsafe { libc::umount2(bpffs.as_ptr(), flags) };
        assert_eq!((rc, errno()), (-1, EPERM), "{what} of the bpffs");
    }
    // The maps, programs and links themselves.
    for (what, cmd) in [
        (
            "map dump",
            format!("bpftool map dump pinned {pins}/maps/GUARD_EXES"),
        ),
        (
            "map update",
            format!("bpftool map update pinned {pins}/maps/GUARD_ACTIVE key 0 0 0 0 value 0 0 0 0"),
        ),
        (
            "prog show",
            format!("bpftool prog show pinned {pins}/programs/file_open"),
        ),
        (
            "link detach",
            format!("bpftool link detach pinned {pins}/links/file_open"),
        ),
    ] {
        let out = sh(&cmd);
        assert!(!out.status.success(), "bpftool {what} succeeded");
        assert!(
            stderr(&out).contains("Operation not permitted"),
            "bpftool {what}: {}",
            stderr(&out)
        );
    }
    // Programs that read kernel memory or override LSM decisions cannot be
    // loaded; harmless ones can.
    assert_eq!(load_trivial_program(2), EPERM, "kprobe program");
    assert_eq!(load_trivial_program(1), 0, "socket filter program");

    // Nothing was lost: still enforcing, the allowed binary works, guardctl works.
    let st = status();
    assert_eq!(st["state"], "enforcing", "{st}");
    assert_eq!(st["armed"], true, "{st}");
    assert_open_eperm(&sb.file("secret.txt"));
    assert_ok(
        &sb.allowed_run("cat", &[sb.file("secret.txt").to_str().unwrap()]),
        "allowed cat",
    );

    let unlinks = hook_denials("inode_unlink");
    assert!(
        unlinks
            .iter()
            .any(|e| e[field::PATH] == "<guard pins>/links/file_open"),
        "{unlinks:?}"
    );
    assert!(!hook_denials("sb_umount").is_empty());
    let maps = hook_denials("bpf_map");
    assert!(
        maps.iter().any(|e| e[field::PATH]
            .as_str()
            .unwrap_or("")
            .starts_with("guard's bpf map")),
        "{maps:?}"
    );
    let loads = hook_denials("bpf");
    let paths: Vec<&str> = loads
        .iter()
        .filter_map(|e| e[field::PATH].as_str())
        .collect();
    assert!(
        paths.contains(&"BPF_PROG_LOAD of a kprobe program"),
        "{paths:?}"
    );
    assert!(paths.contains(&"BPF_LINK_DETACH"), "{paths:?}");
}
