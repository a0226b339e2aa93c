//! Guest tests: what root could change in the kernel to get around guard
//! while a policy is active.
//! - Crash dumps: an allowed program's core file holds its memory, the
//!   protected data it read included, so the kernel may write it only
//!   inside a protected directory. A pattern that pipes cores to a program
//!   cannot be checked: applying a policy warns.
//!   Nobody but guardd may change where cores go (`kernel.core_pattern`).
//! - Modules: none loads while guard is armed, not even one the kernel asks
//!   for (its modprobe is whatever root put at that path).
//! - kexec: a kernel loaded before the policy (kdump's crash kernel boots
//!   with this kernel's memory, keys and data included) is unloaded when
//!   the policy is applied, and none can be loaded while it is active.

use guard::journal::{field, message_id};
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

/// Sets the pattern (the guard is off: `disarm` waited for the kernel to
/// let go of its programs).
fn set_core_pattern(pattern: &str) -> std::io::Result<()> {
    std::fs::write(CORE_PATTERN, pattern)
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
    assert_setting_locked(CORE_PATTERN);
}

/// Root's attempt to write `path` (its own value) is refused, changes
/// nothing, and is journaled as a kernel setting guard keeps.
fn assert_setting_locked(path: &str) {
    let before = std::fs::read_to_string(path).unwrap();
    let out = sh(&format!(
        "cat {path} > /tmp/guard-setting && cat /tmp/guard-setting > {path}"
    ));
    assert!(!out.status.success(), "root wrote {path}");
    assert!(
        stderr(&out).contains("not permitted"),
        "{path}: expected EPERM, got {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(path).unwrap(), before);
    let entries = journal_entries(
        message_id::DENIED,
        "GUARD_PATH",
        path,
        Duration::from_secs(15),
    );
    assert!(
        entries.iter().any(|e| e["GUARD_RULE"] == "kernel-settings"),
        "no kernel-settings alert for {path}: {entries:?}"
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
    // Beside the others (the sandbox's protected directory is not encrypted).
    let journaled = applied_policy_warnings();
    assert!(
        journaled.contains(&format!(
            "{warning}: a crash of an allowed program hands its memory to that program; \
             set a file pattern or disable core dumps"
        )),
        "the journal's warnings: {journaled:?}"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn no_module_loads_while_guard_is_armed_not_even_one_the_kernel_asks_for() {
    disarm();
    assert!(
        !Path::new("/sys/module/dummy").exists(),
        "module dummy is loaded already: nothing to show"
    );
    let sb = Sandbox::new("module-loads");
    let guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    // A dummy link needs module dummy: the kernel runs modprobe for it.
    let out = sh("ip link add guard-dummy0 type dummy");
    assert!(!out.status.success(), "a dummy link was added while armed");
    assert!(
        !Path::new("/sys/module/dummy").exists(),
        "module dummy loaded"
    );
    let entries = journal_entries(
        message_id::DENIED,
        field::ACCESS,
        "module-load",
        Duration::from_secs(15),
    );
    assert!(
        entries.iter().any(|e| e[field::COMM] == "modprobe"),
        "no module-load alert from the kernel's modprobe: {entries:?}"
    );
    drop(guardd);
    disarm();
    // Disarmed, the same request loads the module: guard refused it.
    assert_ok(
        &sh("ip link add guard-dummy0 type dummy"),
        "a dummy link once disarmed",
    );
    assert_ok(&sh("ip link del guard-dummy0"), "removing the dummy link");
}

/// Loads the guest's own kernel into a kexec slot, as kdump (`crash`) or
/// `kexec -l` would.
fn load_kexec_kernel(slot: guard::kexec::Slot) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const KEXEC_FILE_ON_CRASH: libc::c_ulong = 0x2;
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 0x4;
    let image = std::env::var("GUARD_VM_KERNEL_IMAGE").expect("run by cargo xtask vm-test");
    let kernel = std::fs::File::open(&image).unwrap();
    let mut flags = KEXEC_FILE_NO_INITRAMFS;
    if slot == guard::kexec::Slot::Crash {
        flags |= KEXEC_FILE_ON_CRASH;
    }
    let cmdline = c"console=ttyS0";
    // SAFETY: a valid descriptor and a NUL-terminated command line of the given length.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            -1 as libc::c_int,
            cmdline.to_bytes_with_nul().len() as libc::c_ulong,
            cmdline.as_ptr(),
            flags,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Disarms the guard and empties both kexec slots when dropped: a crash
/// kernel left loaded would boot on a later test's panic.
struct UnloadKexec;

impl Drop for UnloadKexec {
    fn drop(&mut self) {
        disarm();
        let _ = guard::kexec::unload_loaded_kernels();
    }
}

fn loaded(slot: guard::kexec::Slot) -> bool {
    slot.is_loaded().unwrap()
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn kernels_loaded_for_kexec_before_a_policy_are_unloaded_when_it_is_applied() {
    use guard::kexec::Slot;
    disarm();
    let _unload = UnloadKexec;
    for slot in Slot::ALL {
        load_kexec_kernel(slot).unwrap_or_else(|e| panic!("loading {slot:?} before guard: {e}"));
        assert!(loaded(slot), "{slot:?}: the kernel does not list the image");
    }
    let sb = Sandbox::new("kexec");
    let _guardd = Guardd::start();
    let out = apply(&sb.policy("enforce"));
    for slot in Slot::ALL {
        assert!(!loaded(slot), "{slot:?}: still loaded after the apply");
    }
    let warning = "unloaded the crash kernel (kdump: on a panic it boots with this kernel's \
                   memory, the keys and the database's pages included, readable as /proc/vmcore)";
    assert!(
        stderr(&out).contains(warning),
        "no warning: {}",
        stderr(&out)
    );
    let warnings = applied_policy_warnings();
    assert!(
        warnings.contains(warning) && warnings.contains("unloaded a kernel loaded for kexec"),
        "the journal's warnings: {warnings:?}"
    );

    // While the policy is active, root cannot load one again.
    for slot in Slot::ALL {
        let error = load_kexec_kernel(slot).expect_err("root loaded a kernel for kexec");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{slot:?}: {error}");
        assert!(!loaded(slot), "{slot:?}: loaded while armed");
    }
    let entries = journal_entries(
        message_id::DENIED,
        field::ACCESS,
        "kexec",
        Duration::from_secs(15),
    );
    let pid = std::process::id().to_string();
    assert!(
        entries.iter().any(|e| e[field::PID] == pid.as_str()),
        "no kexec alert for this process: {entries:?}"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_guardd_that_protects_itself_unloads_kernels_loaded_for_kexec_when_it_starts() {
    use guard::kexec::Slot;
    disarm();
    let _unload = UnloadKexec;
    for slot in Slot::ALL {
        load_kexec_kernel(slot).unwrap_or_else(|e| panic!("loading {slot:?} before guard: {e}"));
        assert!(loaded(slot), "{slot:?}: the kernel does not list the image");
    }
    // No policy: the volumes guardd unlocks at start already put keys in
    // memory, and from now on no kernel can be loaded again.
    let guardd = ProtectedGuardd::start_with(&[]);
    for slot in Slot::ALL {
        assert!(!loaded(slot), "{slot:?}: still loaded after guardd started");
    }
    let pid = format!("_PID={}", guardd.guardd.pid());
    let started = format!("MESSAGE_ID={}", message_id::GUARDD_STARTED);
    let entries =
        guard_tests::wait_for_journal_entries(&[&started, &pid], 1, Duration::from_secs(15))
            .unwrap();
    let warnings = entries[0][field::WARNINGS].as_str().unwrap_or_default();
    assert!(
        warnings.contains("unloaded the crash kernel")
            && warnings.contains("unloaded a kernel loaded for kexec"),
        "the start entry's warnings: {:?}",
        entries[0]
    );
    for slot in Slot::ALL {
        let error = load_kexec_kernel(slot).expect_err("root loaded a kernel for kexec");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{slot:?}: {error}");
    }
}
