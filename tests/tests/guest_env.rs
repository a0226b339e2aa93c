//! Smoke tests of the guest environment `cargo xtask vm-test` boots: what every other
//! guest test relies on. They run only in the guest (as root, on a Debian kernel).

use std::ffi::CStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

fn required_env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run this test with `cargo xtask vm-test`"))
}

/// Runs a program and returns its stdout; fails with its stderr if it exits non-zero.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn bpf_is_an_active_lsm() {
    let lsms = fs::read_to_string("/sys/kernel/security/lsm")
        .expect("securityfs is mounted at /sys/kernel/security");
    let active: Vec<&str> = lsms.trim().split(',').collect();
    assert!(
        active.contains(&"bpf"),
        "bpf is not among the active LSMs: {active:?}"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn the_kernel_is_the_one_the_runner_booted() {
    let expected_release = required_env("GUARD_VM_KERNEL_RELEASE");
    let label = required_env("GUARD_VM_KERNEL");
    let release = kernel_release();
    assert_eq!(release, expected_release, "uname -r");
    assert!(
        release.starts_with(&format!("{label}.")),
        "the runner asked for kernel {label}, the guest runs {release}"
    );
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it in and cannot fail with a valid pointer.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::uname(&mut name) }, 0, "uname failed");
    // SAFETY: the kernel NUL-terminates release.
    unsafe { CStr::from_ptr(name.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn tests_run_as_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "guest tests must run as root"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn the_guard_binaries_are_visible_in_the_guest() {
    let dir = PathBuf::from(required_env("GUARD_BIN_DIR"));
    for name in ["guardd", "guardctl"] {
        let binary = dir.join(name);
        let metadata =
            fs::metadata(&binary).unwrap_or_else(|error| panic!("{}: {error}", binary.display()));
        assert!(metadata.is_file(), "{} is not a file", binary.display());
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn journald_accepts_an_entry_and_gives_it_back() {
    let marker = unique_marker();
    let identifier = "guard-guest-env-test";
    let status = Command::new("systemd-cat")
        .args(["-t", identifier, "echo", &marker])
        .status()
        .expect("systemd-cat runs");
    assert!(status.success(), "systemd-cat failed: {status}");
    let entry = wait_for_journal_entry(identifier, &marker).unwrap();
    assert_eq!(entry["SYSLOG_IDENTIFIER"], identifier);
    assert_eq!(entry["_TRANSPORT"], "stdout");
}

/// A string no earlier boot or test can have logged.
fn unique_marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    format!("guard-guest-env {nanos} {}", uuid.trim())
}

/// The journal entry of `identifier` whose MESSAGE is `message` (journald writes
/// asynchronously, so wait for it a little).
fn wait_for_journal_entry(identifier: &str, message: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = output(
            "journalctl",
            &["--no-pager", "-o", "json", "-t", identifier],
        )?;
        for line in entries.lines() {
            let entry: Value = serde_json::from_str(line)
                .with_context(|| format!("journalctl printed {line:?}"))?;
            if entry["MESSAGE"] == message {
                return Ok(entry);
            }
        }
        if Instant::now() > deadline {
            bail!("no journal entry with MESSAGE={message:?} after 10 s; journalctl printed:\n{entries}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn scratch_is_a_writable_ext4_with_the_encrypt_feature() {
    let (device, fstype) = mount_of(Path::new("/scratch")).expect("/scratch is a mount point");
    assert_eq!(fstype, "ext4", "/scratch is mounted from {device}");
    // Asked of the filesystem, not read from the raw device: a policy left
    // by an earlier test may protect plaintext directories there, and then
    // nobody reads the device.
    let dir = tempfile::tempdir_in("/scratch").expect("/scratch is writable");
    let policy = guard::fscrypt::get_policy(dir.path());
    assert!(
        matches!(policy, Ok(guard::fscrypt::DirPolicy::Unencrypted)),
        "{device} cannot encrypt (no encrypt feature?): {policy:?}"
    );
    let probe = tempfile::NamedTempFile::new_in("/scratch").expect("/scratch is writable");
    fs::write(probe.path(), b"guard").unwrap();
    assert_eq!(fs::read(probe.path()).unwrap(), b"guard");
}

/// The source and filesystem type of the mount at `mount_point`, from /proc/self/mounts.
fn mount_of(mount_point: &Path) -> Option<(String, String)> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [source, target, fstype, ..] if Path::new(target) == mount_point => {
                Some((source.to_string(), fstype.to_string()))
            }
            _ => None,
        }
    })
}
