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

/// A database configuration as Debian lays it out, under the sandbox:
/// `etc/mysql` with a `conf.d`, `my.cnf` reached through an alternatives
/// symlink, and `etc/my.cnf`, a file the server would read if it existed,
/// created empty so the policy can list it.
struct Config {
    etc: std::path::PathBuf,
    server_cnf: std::path::PathBuf,
}

impl Config {
    fn new(sb: &Sandbox) -> Config {
        let etc = sb.root.join("etc");
        let mysql = etc.join("mysql");
        std::fs::create_dir_all(mysql.join("conf.d")).unwrap();
        std::fs::create_dir_all(etc.join("alternatives")).unwrap();
        std::fs::write(mysql.join("mariadb.cnf"), "!includedir conf.d/\n").unwrap();
        let server_cnf = mysql.join("conf.d/50-server.cnf");
        std::fs::write(&server_cnf, "[mysqld]\nbind-address = 127.0.0.1\n").unwrap();
        std::os::unix::fs::symlink(mysql.join("mariadb.cnf"), etc.join("alternatives/my.cnf"))
            .unwrap();
        std::os::unix::fs::symlink("../alternatives/my.cnf", mysql.join("my.cnf")).unwrap();
        std::fs::write(etc.join("my.cnf"), "").unwrap();
        Config { etc, server_cnf }
    }

    fn policy(&self, sb: &Sandbox, mode: &str) -> serde_json::Value {
        let mut policy = sb.policy(mode);
        policy["immutable"] = serde_json::json!([self.etc.join("mysql"), self.etc.join("my.cnf")]);
        policy
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn root_cannot_change_the_configuration_a_policy_lists_as_immutable() {
    let sb = Sandbox::new("immutable-config");
    let config = Config::new(&sb);
    let _guardd = Guardd::start();
    apply(&config.policy(&sb, "enforce"));
    let etc = config.etc.display().to_string();
    let server_cnf = config.server_cnf.display().to_string();
    let before = std::fs::read(&config.server_cnf).unwrap();
    // What root would do to restart the database with options of its own.
    let attempts = [
        (
            format!("echo skip-grant-tables >> {server_cnf}"),
            "append to a listed folder's file",
        ),
        (format!("truncate -s 0 {server_cnf}"), "truncate"),
        (format!("rm -f {server_cnf}"), "unlink"),
        (
            format!("echo x > /tmp/evil.cnf && mv -f /tmp/evil.cnf {server_cnf}"),
            "rename over",
        ),
        (
            format!("touch {etc}/mysql/conf.d/99-evil.cnf"),
            "create in a subfolder",
        ),
        (format!("mkdir {etc}/mysql/evil.d"), "mkdir in the folder"),
        (
            format!("mv {etc}/mysql {etc}/mysql.old"),
            "rename the folder",
        ),
        (format!("chmod 777 {etc}/mysql/conf.d"), "chmod a subfolder"),
        (
            format!("ln -sfn /tmp/evil.cnf {etc}/alternatives/my.cnf"),
            "retarget the symlink chain",
        ),
        (
            format!("echo skip-grant-tables >> {etc}/my.cnf"),
            "write the listed empty file",
        ),
    ];
    for (script, what) in &attempts {
        assert_refused(&sh(script), what);
    }
    // Mounting other files in their place.
    for target in [format!("{etc}/mysql"), etc.clone(), server_cnf.clone()] {
        let out = sh(&format!(
            "mount --bind /tmp/evil.cnf {target} || mount --bind /tmp {target}"
        ));
        assert!(!out.status.success(), "mount over {target} succeeded");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(&format!(" {target} ")),
            "{target} is a mount point"
        );
    }
    assert_eq!(
        std::fs::read(&config.server_cnf).unwrap(),
        before,
        "unchanged"
    );
    // Reading stays possible: the database (and root) read the configuration.
    let read = sh(&format!("cat {etc}/mysql/my.cnf {server_cnf}"));
    assert!(read.status.success(), "reading the configuration");
    assert!(String::from_utf8_lossy(&read.stdout).contains("bind-address"));
    let shown = show();
    assert!(
        shown["immutable_files"].as_u64().unwrap_or(0) >= 7,
        "policy show counts the immutable entries: {shown}"
    );

    // Each refusal is journaled, with the file's path where there is one.
    let entries = journal_entries(
        message_id::DENIED,
        "GUARD_RULE",
        "immutable",
        Duration::from_secs(15),
    );
    assert!(
        entries.iter().any(
            |e| e["GUARD_PATH"].as_str().is_some_and(|p| p == server_cnf)
                && e["GUARD_HOOK"] == "file_open"
        ),
        "no file_open denial of 50-server.cnf in {entries:?}"
    );
    for hook in [
        "inode_create",
        "inode_mkdir",
        "inode_rename",
        "inode_unlink",
        "inode_setattr",
    ] {
        assert!(
            entries.iter().any(|e| e["GUARD_HOOK"] == hook),
            "no {hook} denial in {entries:?}"
        );
    }
    let mounts = journal_entries(
        message_id::DENIED,
        "GUARD_HOOK",
        "sb_mount/move_mount",
        Duration::from_secs(10),
    );
    assert!(mounts.len() >= 3, "each mount is journaled: {mounts:?}");

    // Audit mode logs and allows; a policy without the list frees the files.
    apply(&config.policy(&sb, "audit"));
    assert!(sh(&format!("echo audited >> {server_cnf}"))
        .status
        .success());
    journal_entries(
        message_id::WOULD_DENY,
        "GUARD_RULE",
        "immutable",
        Duration::from_secs(15),
    );
    apply(&sb.policy("enforce"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sh(&format!("echo freed >> {server_cnf}")).status.success() {
        assert!(
            Instant::now() < deadline,
            "the configuration stayed immutable without the list"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
