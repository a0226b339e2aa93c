//! Enforcement core, end to end on a real kernel: guardd arms the LSM
//! programs, guardctl applies policies, root is refused, the allowed binary
//! works, and every denial reaches the journal.
//!
//! Run inside the QEMU guests by `cargo xtask vm-test` (both kernels).

use guard::fscrypt;
use guard::journal::{field, message_id};
use guard_tests::encrypted_dirs::{encrypt_empty_dir, is_encrypted};
use guard_tests::guest::*;
use serde_json::json;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn root_is_refused_and_the_allowed_binary_reads_and_writes() {
    let sb = Sandbox::new("basic");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    let secret_s = secret.to_str().unwrap();

    assert_eperm(&sh(&format!("cat {secret_s}")), "root cat");
    assert_open_eperm(&secret);
    assert_eperm(&sh(&format!("echo x >> {secret_s}")), "root append");
    assert_eperm(&sh(&format!("ls {}", sb.data.display())), "root ls");

    let read = sb.allowed_run("cat", &[secret_s]);
    assert_ok(&read, "allowed cat");
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "patient record 4711\n"
    );
    let new = sb.file("new.txt");
    assert_ok(
        &sb.allowed_run("sh", &["-c", &format!("echo fresh > {}", new.display())]),
        "allowed create+write",
    );
    let moved = sb.file("moved.txt");
    assert_ok(
        &sb.allowed_run("mv", &[new.to_str().unwrap(), moved.to_str().unwrap()]),
        "allowed rename",
    );
    assert_ok(
        &sb.allowed_run("rm", &[moved.to_str().unwrap()]),
        "allowed delete",
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn directory_operations_by_root_are_refused() {
    let sb = Sandbox::new("dirops");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let d = sb.data.display();
    let cases = [
        ("create", format!("touch {d}/created")),
        ("mkdir", format!("mkdir {d}/newdir")),
        ("symlink", format!("ln -s /etc/passwd {d}/link")),
        ("delete", format!("rm -f {d}/secret.txt")),
        ("rmdir", format!("rm -rf {d}/sub")),
        (
            "rename inside",
            format!("mv {d}/secret.txt {d}/renamed.txt"),
        ),
        (
            "rename out",
            format!("mv {d}/secret.txt /scratch/stolen.txt"),
        ),
        (
            "rename in",
            format!("touch /scratch/planted && mv /scratch/planted {d}/planted"),
        ),
        (
            "hard link out",
            format!("ln {d}/secret.txt /scratch/dirops/hardlink"),
        ),
        ("chmod", format!("chmod 666 {d}/secret.txt")),
        ("chown", format!("chown nobody {d}/secret.txt")),
        ("truncate", format!("truncate -s 0 {d}/secret.txt")),
        ("mknod", format!("mknod {d}/fifo p")),
    ];
    for (what, cmd) in cases {
        assert_eperm(&sh(&cmd), what);
    }
    assert!(sb.file("secret.txt").exists() && sb.file("sub/nested.txt").exists());
    assert!(!Path::new("/scratch/dirops/hardlink").exists());
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn every_alias_of_a_protected_file_is_still_denied() {
    let sb = Sandbox::new("aliases");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let root = sb.root.display().to_string();

    // bind mount of the protected directory elsewhere
    std::fs::create_dir_all(sb.root.join("bound")).unwrap();
    assert_ok(
        &sh(&format!("mount --bind {root}/data {root}/bound")),
        "bind mount",
    );
    assert_eperm(
        &sh(&format!("cat {root}/bound/secret.txt")),
        "via bind mount",
    );
    assert_ok(&sh(&format!("umount {root}/bound")), "umount");

    // symlink from outside
    symlink(sb.file("secret.txt"), sb.root.join("link")).unwrap();
    assert_eperm(&sh(&format!("cat {root}/link")), "via symlink");
    // .. and relative paths
    assert_eperm(
        &sh(&format!("cat {root}/other/../data/sub/../secret.txt")),
        "via ..",
    );
    assert_eperm(
        &sh(&format!("cd {root}/data/sub && cat ../secret.txt")),
        "relative",
    );
    // /proc/self/cwd
    assert_eperm(
        &sh(&format!("cd {root}/data && cat /proc/self/cwd/secret.txt")),
        "cwd",
    );
    // openat on a directory fd (O_PATH does not open the directory's contents)
    let dir = std::ffi::CString::new(sb.data.to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("secret.txt").unwrap();
    unsafe {
        let dfd = libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
        assert!(dfd >= 0, "O_PATH open of the directory");
        let fd = libc::openat(dfd, name.as_ptr(), libc::O_RDONLY);
        let errno = std::io::Error::last_os_error().raw_os_error();
        libc::close(dfd);
        assert!(
            fd < 0 && errno == Some(EPERM),
            "openat on dir fd: fd={fd} errno={errno:?}"
        );
    }
    // chroot: the same directory seen from a new root
    let chroot = Command::new("chroot")
        .args([&root, "/other/busybox", "cat", "/data/secret.txt"])
        .output()
        .unwrap();
    assert_eperm(&chroot, "via chroot");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn binary_identity_not_path_decides() {
    let sb = Sandbox::new("identity");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    let secret_s = secret.to_str().unwrap();

    // A copy of the allowed binary at another path is not allowed.
    assert_eperm(
        &sb.other_run("cat", &[secret_s]),
        "copy of the allowed binary",
    );
    assert_ok(
        &sb.allowed_run("cat", &[secret_s]),
        "the allowed binary itself",
    );

    // While enforcing, nobody may move the allowed binary away.
    let saved = sb.root.join("allowed/saved");
    let refused = std::fs::rename(&sb.allowed, &saved).expect_err("moving the allowed binary");
    assert_eq!(refused.raw_os_error(), Some(EPERM), "{refused}");

    // In audit mode the swap goes through: another binary at the allowed
    // path is not the allowed one (its reads would be denied).
    apply(&sb.policy("audit"));
    std::fs::rename(&sb.allowed, &saved).unwrap();
    std::fs::copy("/bin/busybox", &sb.allowed).unwrap();
    let would_deny = || status()["counters"]["would_deny"].as_u64().unwrap();
    let before = would_deny();
    assert_ok(&sb.allowed_run("cat", &[secret_s]), "audit mode allows");
    assert!(
        would_deny() > before,
        "another binary at the allowed path would be denied"
    );
    let shown = show();
    let state = shown["binaries"][0]["state"].as_str().unwrap().to_string();
    assert!(
        state.contains("NOT ALLOWED") && state.contains("replaced"),
        "{state}"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_allowed_binary_changed_on_disk_loses_its_rights() {
    let sb = Sandbox::new("tamper");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    assert_ok(
        &sb.allowed_run("cat", &[secret.to_str().unwrap()]),
        "before",
    );
    assert_eq!(show()["binaries"][0]["state"], "ok");

    // While the policy enforces, nobody may change an allowed binary.
    let append = |path: &Path| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"\0"))
    };
    let refused = append(&sb.allowed).expect_err("appending to the allowed binary");
    assert_eq!(refused.raw_os_error(), Some(EPERM), "{refused}");
    assert_ok(
        &sb.allowed_run("cat", &[secret.to_str().unwrap()]),
        "after the refused write",
    );
    assert_eq!(show()["binaries"][0]["state"], "ok");

    // In audit mode the write goes through: the binary still runs, but it is
    // no longer what was approved, and loses its rights.
    apply(&sb.policy("audit"));
    append(&sb.allowed).expect("appending in audit mode");
    let state = show()["binaries"][0]["state"].as_str().unwrap().to_string();
    assert!(state.starts_with("NOT ALLOWED"), "{state}");
    let would_deny = || status()["counters"]["would_deny"].as_u64().unwrap();
    let before = would_deny();
    assert_ok(
        &sb.allowed_run("cat", &[secret.to_str().unwrap()]),
        "audit mode allows",
    );
    assert!(
        would_deny() > before,
        "the changed binary's read counts as would-deny"
    );

    // Re-applying approves the new content (and records its new hash).
    apply(&sb.policy("enforce"));
    assert_ok(
        &sb.allowed_run("cat", &[secret.to_str().unwrap()]),
        "after re-apply",
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_denial_reaches_the_journal_with_its_fields() {
    let sb = Sandbox::new("journal");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    let ino = inode(&secret).to_string();
    let out = Command::new("/usr/bin/cat").arg(&secret).output().unwrap();
    assert_eperm(&out, "root cat");

    let entries = journal_entries(
        message_id::DENIED,
        field::PATH,
        secret.to_str().unwrap(),
        Duration::from_secs(15),
    );
    let e = entries
        .last()
        .unwrap_or_else(|| panic!("no denial for {} in the journal", secret.display()));
    assert_eq!(e[field::VERDICT], "denied");
    assert_eq!(e[field::ACCESS], "read");
    assert_eq!(e[field::INODE], ino.as_str());
    assert_eq!(e[field::UID], "0");
    assert_eq!(e[field::COMM], "cat");
    assert_eq!(e[field::EXE], "/usr/bin/cat");
    assert_eq!(e[field::RULE], "default-deny");
    assert_eq!(e[field::HOOK], "file_open");
    assert!(e[field::PID].as_str().unwrap().parse::<u32>().is_ok());
    assert_eq!(e["PRIORITY"], "4");
    assert!(e["MESSAGE"].as_str().unwrap().contains("denied read of"));
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn audit_effect_and_audit_mode_allow_and_log() {
    let sb = Sandbox::new("audit");
    let _guardd = Guardd::start();
    // Policy mode audit: nothing is denied, what would be is logged.
    apply(&sb.policy("audit"));
    let secret = sb.file("secret.txt");
    let out = Command::new("/usr/bin/cat").arg(&secret).output().unwrap();
    assert_ok(&out, "root cat in audit mode");
    let would = journal_entries(
        message_id::WOULD_DENY,
        field::PATH,
        secret.to_str().unwrap(),
        Duration::from_secs(15),
    );
    assert!(!would.is_empty(), "no would-deny entry in the journal");
    assert_eq!(would[0][field::VERDICT], "would-deny");
    assert_eq!(status()["state"], "audit only (nothing is denied)");

    // Effect audit: allowed, and each use logged with the rule's name.
    let mut policy = sb.policy("enforce");
    policy["protected"][0]["rules"][0]["effect"] = json!("audit");
    policy["protected"][0]["rules"][0]["name"] = json!("backup reads");
    apply(&policy);
    let nested = sb.file("sub/nested.txt");
    assert_ok(
        &sb.allowed_run("cat", &[nested.to_str().unwrap()]),
        "audited read",
    );
    let audited = journal_entries(
        message_id::AUDITED,
        field::PATH,
        nested.to_str().unwrap(),
        Duration::from_secs(15),
    );
    assert!(!audited.is_empty(), "no audited entry in the journal");
    assert_eq!(audited[0][field::RULE], "backup reads");
    assert_eq!(audited[0][field::EXE], sb.allowed.to_str().unwrap());
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn kill_9_of_guardd_keeps_enforcing_and_a_restart_adopts() {
    let sb = Sandbox::new("kill9");
    let mut guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    let hash = status()["policy_hash"].clone();
    guardd.kill9();

    assert_eperm(
        &sh(&format!("cat {}", secret.display())),
        "while guardd is dead",
    );
    assert_ok(
        &sb.allowed_run("cat", &[secret.to_str().unwrap()]),
        "allowed while dead",
    );

    let _again = Guardd::start();
    let st = status();
    assert_eq!(st["programs"], "adopted", "{st}");
    assert_eq!(st["state"], "enforcing");
    assert_eq!(st["policy_hash"], hash);
    // One copy of each program, not two.
    let progs = sh("bpftool prog show | grep -c 'name file_open'");
    assert_eq!(String::from_utf8_lossy(&progs.stdout).trim(), "1");
    assert_eperm(&sh(&format!("cat {}", secret.display())), "after restart");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_invalid_policy_is_refused_and_the_old_one_keeps_working() {
    let sb = Sandbox::new("invalid");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let before = status()["policy_hash"].clone();

    let bad = json!({
        "mode": "enforce",
        "protected": [{
            "path": sb.data,
            "colour": "blue",
            "rules": [{ "binaries": ["/no/such/binary"], "access": ["read", "fly"], "effect": "allow" }]
        }]
    });
    let out = apply_raw(&bad.to_string());
    assert!(!out.status.success(), "invalid policy was accepted");
    let err = stderr(&out);
    for expected in [
        "/protected/0/colour",
        "/protected/0/rules/0/access/1",
        "fly",
    ] {
        assert!(
            err.contains(expected),
            "error does not name {expected}: {err}"
        );
    }
    let out = apply_raw("{ not json");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));

    assert_eq!(status()["policy_hash"], before);
    assert_eperm(
        &sh(&format!("cat {}", sb.file("secret.txt").display())),
        "old policy",
    );
    assert_ok(
        &sb.allowed_run("cat", &[sb.file("secret.txt").to_str().unwrap()]),
        "old rule",
    );
}

/// The block device under a protected directory that fscrypt does not
/// encrypt: root can neither read it (the files are there in the clear) nor
/// open it for writing (which would change them beneath the guard).
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn the_raw_device_under_a_plaintext_protected_directory_is_refused() {
    let sb = Sandbox::new("rawdevice");
    let out = sh("findmnt -no SOURCE /scratch");
    let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        device.starts_with("/dev/"),
        "no device for /scratch: {out:?}"
    );
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));

    let read = std::fs::File::open(&device).map(drop);
    assert_eq!(
        read.unwrap_err().raw_os_error(),
        Some(EPERM),
        "root read {device}"
    );
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(&device)
        .map(drop);
    assert_eq!(
        write.unwrap_err().raw_os_error(),
        Some(EPERM),
        "root opened {device} for writing"
    );
    let entries = journal_entries(
        message_id::DENIED,
        field::HOOK,
        "file_open",
        Duration::from_secs(15),
    );
    assert!(
        entries.iter().any(|e| e[field::PATH]
            .as_str()
            .is_some_and(|p| p.starts_with("a block device"))
            && e[field::ACCESS] == "write"),
        "no alert for writing {device}: {entries:?}"
    );
    assert_ok(
        &sb.allowed_run("cat", &[sb.file("secret.txt").to_str().unwrap()]),
        "the allowed binary",
    );
}

/// A hard link made before the policy, outside the protected directory,
/// would reach the file unguarded: the policy is refused until it is gone.
/// Once protected, no new link can be made, and a re-apply does not need to
/// read the directory again.
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_hard_link_from_outside_made_before_the_policy_is_refused() {
    let sb = Sandbox::new("hardlink");
    let secret = sb.file("secret.txt");
    let outside = sb.root.join("stolen.txt");
    std::fs::hard_link(&secret, &outside).unwrap();
    let _guardd = Guardd::start();
    let before = status()["policy_hash"].clone();

    let out = apply_raw(&sb.policy("enforce").to_string());
    assert!(
        !out.status.success(),
        "a policy with a link outside applied"
    );
    let err = stderr(&out);
    assert!(
        err.contains("/protected/0/path") && err.contains("hard links"),
        "the refusal does not say where and why: {err}"
    );
    assert!(err.contains("secret.txt"), "{err}");
    assert_eq!(
        status()["policy_hash"],
        before,
        "the refusal changed the policy"
    );

    std::fs::remove_file(&outside).unwrap();
    apply(&sb.policy("enforce"));
    assert_open_eperm(&secret);
    assert_eperm(
        &sh(&format!("ln {} {}", secret.display(), outside.display())),
        "a new hard link from outside",
    );
    // The directory is protected now: not even guardd lists it, and it
    // need not.
    apply(&sb.policy("enforce"));
    assert_ok(
        &sb.allowed_run("cat", &[secret.to_str().unwrap()]),
        "the allowed binary after the re-apply",
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn reapplying_under_concurrent_opens_never_lets_a_denied_open_through() {
    let sb = Sandbox::new("atomic");
    // Every refused open is an event; keep their number small so the guest's
    // journald does not starve the processes under test.
    let _guardd = Guardd::start_with(&["--event-rate", "20"]);
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");

    let stop = Arc::new(AtomicBool::new(false));
    let leaked = Arc::new(AtomicU64::new(0));
    let tries = Arc::new(AtomicU64::new(0));
    let opener = {
        let (stop, leaked, tries, secret) =
            (stop.clone(), leaked.clone(), tries.clone(), secret.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                if std::fs::File::open(&secret).is_ok() {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // The allowed binary reads in a loop at the same time and must never be refused.
    let reader = Command::new(&sb.allowed)
        .args([
            "sh",
            "-c",
            &format!(
            "i=0; while [ $i -lt 100 ]; do {} cat {} > /dev/null || echo REFUSED; i=$((i+1)); done",
            sb.allowed.display(), secret.display()),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let usual = sb.policy("enforce");
    let mut alternate = usual.clone();
    alternate["protected"][0]["rules"][0]["name"] = json!("alternate");
    for i in 0..20 {
        apply(if i % 2 == 0 { &alternate } else { &usual });
    }
    let reader = reader.wait_with_output().unwrap();
    stop.store(true, Ordering::Relaxed);
    opener.join().unwrap();
    assert!(tries.load(Ordering::Relaxed) > 100, "the opener barely ran");
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "a denied open got through during re-apply"
    );
    assert!(
        !String::from_utf8_lossy(&reader.stdout).contains("REFUSED"),
        "the allowed binary was refused during re-apply"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn status_reports_enforcement_counters_and_kernel() {
    let sb = Sandbox::new("status");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let before = status();
    let _ = sh(&format!("cat {}", sb.file("secret.txt").display()));
    let after = status();
    assert_eq!(after["state"], "enforcing");
    assert_eq!(after["enforcing"], true);
    assert_eq!(after["mode"], "enforce");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(after["kernel"], release.trim());
    let denied = |s: &serde_json::Value| s["counters"]["denied"].as_u64().unwrap();
    assert!(denied(&after) > denied(&before), "{before} -> {after}");
    let shown = show();
    assert_eq!(shown["hash"], after["policy_hash"]);
    let applied_at = humantime::parse_rfc3339(shown["applied_at"].as_str().unwrap());
    assert!(applied_at.is_ok(), "applied_at is not RFC 3339: {shown}");
    assert_eq!(shown["protected"][0], sb.data.to_str().unwrap());
    let text = guardctl(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("state: enforcing"));
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_flood_is_rate_limited_and_the_suppressed_are_counted() {
    let sb = Sandbox::new("flood");
    let _guardd = Guardd::start_with(&["--event-rate", "20"]);
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    for _ in 0..400 {
        assert_open_eperm(&secret);
    }
    // A later event carries the count of those suppressed before it.
    std::thread::sleep(Duration::from_millis(1100));
    assert_open_eperm(&secret);
    let suppressed = journal_entries(
        message_id::SUPPRESSED,
        "SYSLOG_IDENTIFIER",
        "guardd",
        Duration::from_secs(15),
    );
    let total: u64 = suppressed
        .iter()
        .filter_map(|e| e[field::SUPPRESSED].as_str()?.parse::<u64>().ok())
        .sum();
    assert!(total >= 300, "suppressed count in the journal: {total}");
    assert!(status()["counters"]["events_suppressed"].as_u64().unwrap() >= 300);
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn denials_and_admin_actions_reach_the_audit_chain_and_it_verifies() {
    let sb = Sandbox::new("auditchain");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let secret = sb.file("secret.txt");
    assert_open_eperm(&secret);

    let records = Path::new("/var/lib/guard/audit/records.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (mut denied, mut applied) = (false, false);
    while !(denied && applied) && std::time::Instant::now() < deadline {
        let text = std::fs::read_to_string(records).unwrap_or_default();
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let event = &record["event"];
            denied |= event["kind"] == "denied" && event["path"] == secret.to_str().unwrap();
            applied |= event["kind"] == "policy_applied";
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        denied,
        "the denial of {} is not in {}",
        secret.display(),
        records.display()
    );
    assert!(applied, "the policy apply is not in {}", records.display());

    let verify = guardctl(&["log", "verify", "--local", "/var/lib/guard/audit"]);
    assert_ok(&verify, "guardctl log verify");
}

/// A database in a container runs from overlayfs, where `stat` reports a
/// regular file's device as that of the layer holding it while the kernel
/// sees the overlay: the policy must name the binary as the kernel sees it.
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_allowed_binary_on_overlayfs_is_recognised() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new("overlay-binary");
    let (lower, merged) = (sb.root.join("lower"), sb.root.join("merged"));
    // The upper layer on another filesystem (tmpfs), as in a container.
    let upper = Path::new("/tmp/guard-overlay-binary");
    let _ = std::fs::remove_dir_all(upper);
    for dir in [&lower, &merged, &upper.join("upper"), &upper.join("work")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::copy("/bin/busybox", lower.join("busybox")).unwrap();
    assert_ok(
        &sh(&format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={}/upper,workdir={}/work {}",
            lower.display(),
            upper.display(),
            upper.display(),
            merged.display()
        )),
        "mount the overlay",
    );
    let binary = merged.join("busybox");
    let (file_dev, dir_dev) = (
        std::fs::metadata(&binary).unwrap().dev(),
        std::fs::metadata(&merged).unwrap().dev(),
    );
    let _guardd = Guardd::start();
    let mut policy = sb.policy("enforce");
    policy["protected"][0]["rules"][0]["binaries"] = json!([binary]);
    apply(&policy);
    let secret = sb.file("secret.txt");
    let out = Command::new(&binary)
        .args(["cat", secret.to_str().unwrap()])
        .output()
        .unwrap();
    let state = show()["binaries"][0]["state"].clone();
    let _ = sh(&format!("umount {}", merged.display()));
    // What makes this case: stat names the layer's device for the file.
    assert_ne!(
        file_dev, dir_dev,
        "stat shows the overlay's device for the file"
    );
    assert_ok(&out, "the allowed binary on overlayfs reads");
    assert_eq!(state, "ok", "policy show: the binary is the one applied");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "patient record 4711\n"
    );
    assert_eperm(
        &sb.other_run("cat", &[secret.to_str().unwrap()]),
        "another copy",
    );
}

/// An overlay whose lower layer is a protected directory (or one above
/// it) shows the protected files under the overlay's mount: read through
/// it they are still the protected files, refused and alerted, also
/// through a descriptor opened before the policy was applied. (Before
/// Linux 6.8 overlayfs opens the file beneath under the overlay's path.)
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_overlay_over_a_protected_directory_does_not_show_its_files() {
    use std::io::Read;
    let sb = Sandbox::new("overlay-lower");
    let _guardd = Guardd::start();
    let secret_ino = inode(&sb.file("secret.txt")).to_string();
    let layers = Path::new("/tmp/guard-overlay-lower");
    let merged = layers.join("merged");
    let mount_overlay = |lower: &Path| {
        let _ = sh(&format!("umount {}", merged.display()));
        let _ = std::fs::remove_dir_all(layers);
        for dir in ["upper", "work", "merged"] {
            std::fs::create_dir_all(layers.join(dir)).unwrap();
        }
        let l = layers.display();
        assert_ok(
            &sh(&format!(
                "mount -t overlay overlay -o lowerdir={},upperdir={l}/upper,workdir={l}/work {}",
                lower.display(),
                merged.display()
            )),
            "mount the overlay",
        );
    };

    mount_overlay(&sb.data);
    let mut early = std::fs::File::open(merged.join("secret.txt")).unwrap();
    apply(&sb.policy("enforce"));
    let read = early.read(&mut [0u8; 64]);
    drop(early);
    assert_eq!(
        read.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EPERM)),
        "a read through the overlay with a descriptor opened before the policy"
    );

    for (lower, file) in [(&sb.data, "secret.txt"), (&sb.root, "data/secret.txt")] {
        mount_overlay(lower);
        let cat = Command::new("/usr/bin/cat")
            .arg(merged.join(file))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = cat.id().to_string();
        let read = cat.wait_with_output().unwrap();
        let _ = sh(&format!("umount {}", merged.display()));
        let what = format!("root cat through an overlay of {}", lower.display());
        assert_eperm(&read, &what);
        let alerts = journal_entries(
            message_id::DENIED,
            field::PID,
            &pid,
            Duration::from_secs(15),
        );
        let alert = alerts
            .last()
            .unwrap_or_else(|| panic!("{what}: no denial in the journal"));
        assert_eq!(alert[field::HOOK], "file_open", "{what}");
        assert_eq!(
            alert[field::INODE],
            secret_ino.as_str(),
            "{what}: the protected file"
        );
        assert_eq!(alert[field::ACCESS], "read", "{what}");
        // Before 6.8 the kernel hands the hook the overlay's path: the alert
        // names what root opened; from 6.8 on, the file beneath.
        let expected = if kernel_before(6, 8) {
            merged.join(file)
        } else {
            sb.file("secret.txt")
        };
        assert_eq!(alert[field::PATH], expected.to_str().unwrap(), "{what}");
    }
}

/// Whether the running kernel is older than `major.minor`.
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = guard_tests::machine::kernel_release();
    let mut numbers = release.split(['.', '-']).map(|n| n.parse::<u32>().unwrap());
    let running = (numbers.next().unwrap(), numbers.next().unwrap());
    running < (major, minor)
}

/// A mapping needs no system call to be read, so guard cannot take back one
/// made before the policy: a shared one keeps showing what the database
/// writes. Applying the policy names the process that holds it.
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn applying_a_policy_names_a_process_that_mapped_a_protected_file_before() {
    let sb = Sandbox::new("early-mapping");
    let secret = sb.file("secret.txt");
    let len = std::fs::metadata(&secret).unwrap().len() as usize;
    let mapping = SharedMapping::of(&secret, len);
    let _guardd = Guardd::start();
    let out = apply(&sb.policy("enforce"));

    let expected = format!(
        "has mapped {} (in {}) since before this policy",
        secret.display(),
        sb.data.display()
    );
    let process = format!("process {} (", std::process::id());
    let warned = stderr(&out);
    assert!(
        warned.contains(&process) && warned.contains(&expected),
        "no warning naming this process: {warned}"
    );
    let journaled = applied_policy_warnings();
    assert!(journaled.contains(&expected), "journal: {journaled:?}");

    // What the warning is about: the database's next write shows through.
    assert_open_eperm(&secret);
    assert_ok(
        &sb.allowed_run(
            "sh",
            &[
                "-c",
                &format!("echo 'patient record 4712' > {}", secret.display()),
            ],
        ),
        "the allowed program rewrites the record",
    );
    assert_eq!(mapping.bytes(), b"patient record 4712\n");
}

/// A read-only shared mapping of a whole file, unmapped when dropped.
struct SharedMapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl SharedMapping {
    fn of(path: &Path, len: usize) -> SharedMapping {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: a fresh mapping of an open file; checked for MAP_FAILED.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
        SharedMapping { addr, len }
    }

    fn bytes(&self) -> Vec<u8> {
        // SAFETY: `len` readable bytes mapped at `addr` until drop.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }.to_vec()
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `of` mapped.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Renaming a directory above a protected one (or exchanging another with
/// it) would leave the data guarded but away from the database's path,
/// which would then lead to a directory of root's: like mounting over it.
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_directory_above_a_protected_one_cannot_be_renamed_or_exchanged() {
    let sb = Sandbox::new("rename-above");
    let moved = Path::new("/scratch/rename-above-moved");
    let fake = Path::new("/scratch/rename-above-fake");
    let _ = std::fs::remove_dir_all(moved);
    let _ = std::fs::remove_dir_all(fake);
    std::fs::create_dir_all(fake.join("data")).unwrap();
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));

    let error = std::fs::rename(&sb.root, moved).expect_err("root renamed the parent");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "rename: {error}");
    let error = exchange(fake, &sb.root).expect_err("root exchanged the parent");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "exchange: {error}");
    // The protected directory itself: the policy decides, and root has no rule.
    let error = std::fs::rename(&sb.data, sb.root.join("data-moved"))
        .expect_err("root renamed the protected directory");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "rename: {error}");
    let error = exchange(&fake.join("data"), &sb.data).expect_err("root exchanged it");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "exchange: {error}");
    assert!(!moved.exists(), "{moved:?} exists");
    let read = sb.allowed_run("cat", &[sb.file("secret.txt").to_str().unwrap()]);
    assert_ok(&read, "the allowed program reads at the usual path");

    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&sb.root).unwrap().ino().to_string();
    let entries = journal_entries(
        message_id::DENIED,
        field::INODE,
        &ino,
        Duration::from_secs(15),
    );
    let pid = std::process::id().to_string();
    let renames: Vec<_> = entries
        .iter()
        .filter(|e| e[field::HOOK] == "inode_rename" && e[field::PID] == pid.as_str())
        .collect();
    assert!(
        renames.len() >= 2,
        "expected the rename and the exchange journaled: {entries:?}"
    );
    // Renaming elsewhere in the same folder still works.
    let sibling = Path::new("/scratch/rename-above-fake-2");
    let _ = std::fs::remove_dir_all(sibling);
    std::fs::rename(fake, sibling).unwrap();
}

/// renameat2(RENAME_EXCHANGE): swaps two directories.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// On a filesystem whose protected directories fscrypt all encrypts,
/// `file_open` decides a regular file or directory fscrypt does not encrypt
/// without walking its ancestors (it cannot be inside one). What that rests
/// on is checked here on the running kernel: an unencrypted file cannot be
/// renamed or linked into an encrypted directory (EXDEV), so the allowed
/// program's `mv` copies it and the copy is encrypted. Files inside, a copy
/// moved in, and a fifo inside (never encrypted, so walked) stay refused to
/// root; files beside the directory stay readable.
#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_protected_directory_fscrypt_encrypts_keeps_unencrypted_files_out() {
    let sb = Sandbox::new("fscrypt");
    let vault = sb.root.join("vault");
    std::fs::create_dir(&vault).unwrap();
    let key = encrypt_empty_dir(&vault, "guard-test:enforcement").unwrap();
    let secret = vault.join("secret.txt");
    std::fs::write(&secret, "patient record 4711\n").unwrap();
    std::fs::create_dir(vault.join("sub")).unwrap();
    std::fs::write(vault.join("sub/nested.txt"), "nested record\n").unwrap();
    let beside = sb.root.join("beside.txt");
    std::fs::write(&beside, "public\n").unwrap();
    let plain = sb.root.join("plain.txt");
    std::fs::write(&plain, "planted\n").unwrap();
    assert!(is_encrypted(&secret) && !is_encrypted(&plain));

    // The kernel's side, before any policy: no unencrypted name inside.
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(std::fs::rename(&plain, vault.join("renamed"))),
        Some(libc::EXDEV)
    );
    assert_eq!(
        errno(std::fs::hard_link(&plain, vault.join("linked"))),
        Some(libc::EXDEV)
    );

    // Opened before the policy: its reads are decided by `file_permission`.
    let mut early = std::fs::File::open(&secret).unwrap();
    let _guardd = Guardd::start();
    let mut policy = sb.policy("enforce");
    policy["protected"][0]["path"] = json!(vault);
    apply(&policy);
    let mut buf = [0u8; 16];
    let err = std::io::Read::read(&mut early, &mut buf)
        .expect_err("read through an fd opened before apply");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    drop(early);
    // The open itself is refused (a read would also be, by `file_permission`).
    assert_open_refused(&secret);
    assert_open_refused(&vault.join("sub/nested.txt"));
    assert_open_refused(&vault);
    assert_open_eperm(&secret);
    assert_eperm(&sh(&format!("ls {}", vault.display())), "root ls");
    assert_ok(&sh(&format!("cat {}", beside.display())), "root cat beside");
    assert_ok(&sh(&format!("ls {}", sb.root.display())), "root ls above");

    let moved = vault.join("moved.txt");
    assert_ok(
        &sb.allowed_run("mv", &[plain.to_str().unwrap(), moved.to_str().unwrap()]),
        "allowed mv in",
    );
    assert!(!plain.exists(), "mv left the original");
    assert!(is_encrypted(&moved), "the moved-in copy is not encrypted");
    assert_open_refused(&moved);

    let fifo = vault.join("fifo");
    assert_ok(
        &sb.allowed_run("mkfifo", &[fifo.to_str().unwrap()]),
        "allowed mkfifo",
    );
    assert!(!is_encrypted(&fifo), "fscrypt encrypted a fifo");
    assert_open_refused(&fifo);
    let read = sb.allowed_run("cat", &[secret.to_str().unwrap()]);
    assert_ok(&read, "allowed cat");

    apply(&Sandbox::new("fscrypt-after").policy("enforce"));
    let _ = fscrypt::remove_key(Path::new("/scratch"), &key);
}

/// Asserts that opening `path` for reading is refused (EPERM), without
/// reading (and without waiting for a writer, should it be a fifo).
#[track_caller]
fn assert_open_refused(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let fd = unsafe { libc::open(name.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if fd >= 0 {
        unsafe { libc::close(fd) };
    }
    assert!(
        fd < 0 && errno == Some(libc::EPERM),
        "{} opened: {errno:?}",
        path.display()
    );
}
