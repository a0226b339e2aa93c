//! Guest tests: guard's own state and the binaries a policy allows cannot
//! be changed by root while guard is armed.

use guard::journal::message_id;
use guard_tests::guest::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
}

/// errno of setxattr(path, "user.guard-test", "1").
fn set_xattr(path: &Path) -> Option<i32> {
    let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let name = c"user.guard-test";
    // SAFETY: valid C strings and a 1-byte value.
    let ret = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    (ret != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn assert_refused(out: &std::process::Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what}: expected a refusal, got success"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not permitted"),
        "{what}: expected EPERM, got {stderr}"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn root_cannot_change_an_allowed_binary() {
    let sb = Sandbox::new("immutable-binary");
    let _guardd = Guardd::start();
    apply(&sb.policy("enforce"));
    let allowed = sb.allowed.display().to_string();
    let other = sb.other.display().to_string();
    assert_refused(&sh(&format!("echo x >> {allowed}")), "append");
    assert_refused(&sh(&format!("truncate -s 0 {allowed}")), "truncate");
    assert_refused(&sh(&format!("rm -f {allowed}")), "unlink");
    assert_refused(&sh(&format!("mv -f {other} {allowed}")), "rename over");
    assert_refused(&sh(&format!("chmod 777 {allowed}")), "chmod");
    assert_eq!(set_xattr(&sb.allowed), Some(libc::EPERM), "setxattr");
    // The binary is intact and keeps its rights.
    assert_eq!(show()["binaries"][0]["state"], "ok");
    let secret = sb.file("secret.txt");
    let out = sb.allowed_run("cat", &[secret.to_str().unwrap()]);
    assert!(out.status.success(), "the allowed binary still reads");
    // Each refusal is in the journal as a change to an immutable file.
    let expected = [
        "file_open",
        "inode_setattr",
        "inode_unlink",
        "inode_rename",
        "inode_setxattr",
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = journal_entries(
            message_id::DENIED,
            "GUARD_RULE",
            "immutable",
            Duration::from_secs(10),
        );
        let hooks: Vec<&str> = entries
            .iter()
            .filter_map(|e| e["GUARD_HOOK"].as_str())
            .collect();
        let missing: Vec<&&str> = expected.iter().filter(|h| !hooks.contains(h)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no journal entry from {missing:?}; found {hooks:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn root_cannot_change_guards_own_state_while_it_protects_itself() {
    let sb = Sandbox::new("immutable-state");
    let mut guardd = Guardd::start_with(&["--protect-self"]);
    apply(&sb.policy("enforce"));
    let state = Path::new("/var/lib/guard");
    let applied = state.join("applied-policy.json");
    assert!(
        applied.exists(),
        "guardd keeps the applied policy in its state"
    );
    let before = std::fs::read(&applied).unwrap();
    let path = applied.display().to_string();
    assert_refused(&sh(&format!("echo x >> {path}")), "append to guard state");
    assert_refused(&sh(&format!("rm -f {path}")), "remove guard state");
    assert_refused(
        &sh("touch /var/lib/guard/planted"),
        "create in the state folder",
    );
    assert_refused(
        &sh(&format!(
            "echo '{{}}' > /tmp/fake.json && mv -f /tmp/fake.json {path}"
        )),
        "replace guard state",
    );
    assert_eq!(std::fs::read(&applied).unwrap(), before, "state unchanged");
    // guardd itself still writes there: a new apply is recorded.
    apply(&sb.policy("audit"));
    assert_ne!(
        std::fs::read(&applied).unwrap(),
        before,
        "guardd rewrote its state"
    );
    assert!(guardctl(&["stop"]).status.success(), "guardctl stop");
    assert!(
        guardd.wait_exit(Duration::from_secs(20)).is_some(),
        "guardd stopped"
    );
    // Once guardd stopped cleanly, root may manage the files again.
    assert!(
        sh("touch /var/lib/guard/planted && rm /var/lib/guard/planted")
            .status
            .success()
    );
}
