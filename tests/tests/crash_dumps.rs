//! Guest test: crash dumps. An allowed program's core file holds its memory,
//! the protected data it read included, so while a policy is active the
//! kernel may write it only inside a protected directory, and nobody but
//! guardd may change where cores go (`kernel.core_pattern`). A pattern that
//! pipes cores to a program cannot be checked: applying a policy warns.

use guard::journal::message_id;
use guard_tests::guest::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// Disarms the guard and puts the old core pattern back when dropped.
struct Restore {
    pattern: String,
}

impl Drop for Restore {
    fn drop(&mut self) {
        disarm();
        if let Err(e) = set_core_pattern(&self.pattern) {
            eprintln!("restoring {CORE_PATTERN}: {e}");
        }
    }
}

/// Sets the pattern once the guard is off: the kernel detaches guard's
/// programs a moment after their pins are removed, so EPERM is retried.
fn set_core_pattern(pattern: &str) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::write(CORE_PATTERN, pattern) {
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

fn disarm() {
    let pins = guard::loader::Pins::new(guard::loader::DEFAULT_PIN_DIR);
    if let Err(e) = guard::loader::disarm(&pins) {
        eprintln!("disarming: {e:#}");
    }
}

/// `busybox` aborts itself in `dir` with its core limit raised; returns
/// whether the kernel says a core was dumped.
fn crash(busybox: &Path, dir: &Path) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let status = Command::new(busybox)
        .args(["sh", "-c", "ulimit -c unlimited && kill -ABRT $$"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{busybox:?} in {dir:?}: {status}"
    );
    status.core_dumped()
}

/// The size of `dir/core` (stat is not guarded), 0 when absent.
fn core_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("core"))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn fresh_folder(path: PathBuf) -> PathBuf {
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_allowed_programs_core_is_written_only_in_its_protected_directory() {
    disarm();
    let _restore = Restore {
        pattern: std::fs::read_to_string(CORE_PATTERN).unwrap(),
    };
    set_core_pattern("core").unwrap();
    let sb = Sandbox::new("crash-dumps");
    let outside = fresh_folder(sb.root.join("outside"));
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));

    // Outside its protected directory: the core is refused (the kernel then
    // writes nothing), and the journal says so.
    let dumped = crash(&sb.allowed, &outside);
    assert!(!dumped, "the kernel dumped the allowed program's core");
    assert_eq!(
        core_size(&outside),
        0,
        "a core with contents outside {:?}",
        sb.data
    );
    let entries = journal_entries(
        message_id::DENIED,
        "GUARD_RULE",
        "crash-dumps",
        Duration::from_secs(15),
    );
    let core_path = outside.join("core").display().to_string();
    assert!(
        entries
            .iter()
            .any(|e| e["GUARD_PATH"] == core_path.as_str()),
        "no crash-dumps alert for {core_path}: {entries:?}"
    );

    // Inside it the policy decides as for any file: the core is written.
    assert!(
        crash(&sb.allowed, &sb.data),
        "no core in the protected directory"
    );
    assert!(
        core_size(&sb.data) > 0,
        "the core in {:?} is empty",
        sb.data
    );

    // A program the policy does not allow holds no protected data: untouched.
    assert!(
        crash(&sb.other, &outside),
        "no core of a program not allowed"
    );
    assert!(core_size(&outside) > 0);

    // Nobody but guardd may change where cores go.
    let out = sh(&format!("echo '|/bin/cat' > {CORE_PATTERN}"));
    assert!(!out.status.success(), "root changed {CORE_PATTERN}");
    assert_eq!(
        std::fs::read_to_string(CORE_PATTERN).unwrap().trim(),
        "core"
    );
    let entries = journal_entries(
        message_id::DENIED,
        "GUARD_PATH",
        CORE_PATTERN,
        Duration::from_secs(15),
    );
    assert!(
        entries.iter().any(|e| e["GUARD_RULE"] == "crash-dumps"),
        "no crash-dumps alert for {CORE_PATTERN}: {entries:?}"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn applying_a_policy_warns_when_cores_are_piped_to_a_program() {
    disarm();
    let _restore = Restore {
        pattern: std::fs::read_to_string(CORE_PATTERN).unwrap(),
    };
    set_core_pattern("|/bin/false %p").unwrap();
    let sb = Sandbox::new("crash-dumps-piped");
    let _guardd = Guardd::start();
    let out = apply(&sb.policy("enforce"));
    let warning = "kernel.core_pattern pipes crash dumps to `/bin/false %p`";
    assert!(
        stderr(&out).contains(warning),
        "no warning: {}",
        stderr(&out)
    );
    let entries = journal_entries(
        message_id::POLICY_APPLIED,
        "GUARD_WARNINGS",
        &format!(
            "{warning}: a crash of an allowed program hands its memory to that program; \
             set a file pattern or disable core dumps"
        ),
        Duration::from_secs(15),
    );
    assert!(!entries.is_empty());
}
