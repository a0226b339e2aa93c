//! Supervised start, end to end on a real kernel: a binary whose rule says
//! `started_by` runs only when its supervisor (here a shell script, as
//! Debian's mysqld_safe is) starts it, directly or through a listed relay
//! (as mysqld_safe goes through `nohup`). Root starting it any other way (from a shell, through the relay
//! itself, as a script's interpreter) gets EPERM from execve and a journal
//! alert; the dynamic loader cannot run it either.
//!
//! Run inside the QEMU guests by `cargo xtask vm-test` (both kernels).

use guard::journal::{field, message_id};
use guard_tests::guest::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The sandbox plus a supervisor script and a relay (a third busybox copy,
/// run as `env`, which executes its arguments as nohup does).
struct Supervised {
    sb: Sandbox,
    supervisor: PathBuf,
    relay: PathBuf,
}

impl Supervised {
    fn new(name: &str) -> Supervised {
        let sb = Sandbox::new(name);
        let supervisor = sb.root.join("supervisor.sh");
        // Runs its arguments as a child (a forked shell execs them), as
        // mysqld_safe runs `nohup mariadbd`.
        write_executable(&supervisor, "#!/bin/sh\n\"$@\"\n");
        let relay = sb.root.join("relay/busybox");
        std::fs::create_dir_all(relay.parent().unwrap()).unwrap();
        std::fs::copy("/bin/busybox", &relay).unwrap();
        Supervised {
            sb,
            supervisor,
            relay,
        }
    }

    fn policy(&self, mode: &str) -> Value {
        let mut policy = self.sb.policy(mode);
        policy["protected"][0]["rules"][0]["started_by"] = serde_json::json!({
            "supervisor": self.supervisor,
            "through": [self.relay],
        });
        policy
    }

    /// `policy` that also pins the allowed binary's arguments to `cat`'s.
    fn pinned_policy(&self, mode: &str) -> Value {
        let mut policy = self.policy(mode);
        policy["protected"][0]["rules"][0]["started_by"]["arguments"] =
            serde_json::json!(self.cat());
        policy
    }

    /// `policy` that also pins the allowed binary's environment.
    fn environment_policy(&self, mode: &str) -> Value {
        let mut policy = self.policy(mode);
        policy["protected"][0]["rules"][0]["started_by"]["environment"] = serde_json::json!([
            "PATH",
            "PWD",
            "A_LONG_ONE",
            "LANG=C.UTF-8",
            "GUARD_TEST_MODE=production",
            "GUARD_TEST_MODE=staging",
        ]);
        policy
    }

    /// `argv` started by the supervisor.
    fn supervised(&self, argv: &[String]) -> Output {
        let mut supervised = vec![path(&self.supervisor)];
        supervised.extend_from_slice(argv);
        run(&supervised).unwrap()
    }

    /// `cat` started by the supervisor with exactly `environment`.
    fn supervised_with(&self, environment: &[(&str, &str)]) -> Output {
        Command::new(&self.supervisor)
            .args(self.cat())
            .env_clear()
            .envs(environment.iter().copied())
            .output()
            .unwrap()
    }

    /// The allowed busybox's `cat` of the secret, as argv.
    fn cat(&self) -> Vec<String> {
        vec![
            path(&self.sb.allowed),
            "cat".into(),
            path(&self.sb.file("secret.txt")),
        ]
    }

    fn via_relay(&self) -> Vec<String> {
        let mut argv = vec![path(&self.relay), "env".into()];
        argv.extend(self.cat());
        argv
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn write_executable(file: &Path, text: &str) {
    std::fs::write(file, text).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run(argv: &[String]) -> std::io::Result<Output> {
    Command::new(&argv[0]).args(&argv[1..]).output()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts `argv` could not even be executed: execve said EPERM.
#[track_caller]
fn assert_exec_eperm(argv: &[String], what: &str) {
    match run(argv) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(EPERM), "{what}: {e}"),
        Ok(out) => panic!(
            "{what}: started ({}), stdout={:?} stderr={:?}",
            out.status,
            stdout(&out),
            stderr(&out)
        ),
    }
}

/// Asserts the started program was killed by SIGKILL: the supervisor's
/// shell reports 128 + 9, or is itself the killed process if it exec'ed.
#[track_caller]
fn assert_killed(out: &Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    let killed = out.status.code() == Some(128 + libc::SIGKILL)
        || out.status.signal() == Some(libc::SIGKILL);
    assert!(killed, "{what}: not killed by SIGKILL: {out:?}");
}

/// Journal entries about starting `allowed` with `verdict`'s message id.
fn start_alerts(id: &str, allowed: &Path) -> Vec<Value> {
    alerts_of(id, "unsupervised-start", allowed)
}

/// Journal entries with message id `id` and access `access` about `allowed`.
fn alerts_of(id: &str, access: &str, allowed: &Path) -> Vec<Value> {
    let suffix = format!("({})", allowed.display());
    journal_entries(id, field::ACCESS, access, Duration::from_secs(15))
        .into_iter()
        .filter(|e| e[field::PATH].as_str().unwrap_or("").ends_with(&suffix))
        .collect()
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn only_the_supervisor_may_start_a_supervised_binary() {
    let s = Supervised::new("supervised");
    let _guardd = Guardd::start();
    apply(&s.policy("enforce"));
    let cat = s.cat();

    // The supervisor starts it, directly or through the relay: it reads.
    let mut supervised = vec![path(&s.supervisor)];
    supervised.extend(cat.clone());
    let out = run(&supervised).unwrap();
    assert_ok(&out, "the supervisor starting the allowed binary");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");
    let mut through_relay = vec![path(&s.supervisor)];
    through_relay.extend(s.via_relay());
    let out = run(&through_relay).unwrap();
    assert_ok(&out, "the supervisor starting it through the relay");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");

    // Root starting it itself: execve fails with EPERM.
    assert_exec_eperm(&cat, "root executing the allowed binary");
    let out = sh(&cat.join(" "));
    assert!(!out.status.success(), "a root shell started it: {out:?}");
    assert!(!stdout(&out).contains("patient"), "{out:?}");
    // Through the relay, which only passes on its own launcher (root's).
    let out = run(&s.via_relay()).unwrap();
    assert!(
        !out.status.success(),
        "the relay started it for root: {out:?}"
    );
    assert!(!stdout(&out).contains("patient"), "{out:?}");
    // As the interpreter of root's script.
    let script = s.sb.root.join("trick.sh");
    write_executable(
        &script,
        &format!("#!{} sh\ncat {}\n", s.sb.allowed.display(), cat[2]),
    );
    assert_exec_eperm(
        &[path(&script)],
        "the allowed binary as a script interpreter",
    );

    // Through the dynamic loader: the loader may not map the allowed binary
    // (and would run as ld.so, which no rule allows).
    let loader = "/lib64/ld-linux-x86-64.so.2";
    let out = Command::new(loader).args(&cat).output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(!stdout(&out).contains("patient"), "{out:?}");
    let refused = stderr(&out);
    assert!(
        refused.contains("EPERM") || refused.contains("Operation not permitted"),
        "{out:?}"
    );

    // Each refused start is in the journal, naming the binary and who tried.
    let alerts = start_alerts(message_id::DENIED, &s.sb.allowed);
    assert!(alerts.len() >= 3, "expected 3 alerts: {alerts:?}");
    assert!(alerts.iter().all(|e| e[field::UID] == "0"), "{alerts:?}");

    // The supervisor still works after all that.
    let out = run(&supervised).unwrap();
    assert_ok(&out, "the supervisor again");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn audit_mode_reports_an_unsupervised_start_and_allows_it() {
    let s = Supervised::new("supervised-audit");
    let _guardd = Guardd::start();
    apply(&s.policy("audit"));
    let out = run(&s.cat()).unwrap();
    assert_ok(&out, "audit mode: root starting the allowed binary");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");
    let alerts = start_alerts(message_id::WOULD_DENY, &s.sb.allowed);
    assert!(!alerts.is_empty(), "no would-deny alert");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_policy_without_supervisors_lets_anyone_start_allowed_binaries() {
    // The supervision maps hold nothing once a policy without `started_by`
    // replaces one with it.
    let s = Supervised::new("supervised-replaced");
    let _guardd = Guardd::start();
    apply(&s.policy("enforce"));
    assert_exec_eperm(&s.cat(), "supervised policy");
    apply(&s.sb.policy("enforce"));
    let out = run(&s.cat()).unwrap();
    assert_ok(&out, "plain policy: root starting the allowed binary");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_supervised_binary_runs_only_with_its_pinned_arguments() {
    // Root asking the supervisor (as `systemd-run` asks PID 1) to start the
    // database with options of its own: the process dies before it runs.
    let s = Supervised::new("supervised-arguments");
    let _guardd = Guardd::start();
    apply(&s.pinned_policy("enforce"));
    let out = s.supervised(&s.cat());
    assert_ok(&out, "the supervisor starting it with the pinned arguments");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");

    let mut other = s.cat();
    other.push(other[2].clone());
    let out = s.supervised(&other);
    assert_killed(&out, "other arguments");
    assert!(!stdout(&out).contains("patient"), "{out:?}");
    let mut shorter = s.cat();
    shorter.pop();
    assert_killed(&s.supervised(&shorter), "fewer arguments");

    let alerts = alerts_of(message_id::DENIED, "unexpected-arguments", &s.sb.allowed);
    assert!(alerts.len() >= 2, "expected 2 alerts: {alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|e| e[field::HOOK] == "bprm_committed_creds"),
        "{alerts:?}"
    );

    // The pinned start still works, and audit mode only reports.
    let out = s.supervised(&s.cat());
    assert_ok(&out, "the pinned start again");
    apply(&s.pinned_policy("audit"));
    let out = s.supervised(&other);
    assert_ok(&out, "audit mode: other arguments");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");
    let alerts = alerts_of(
        message_id::WOULD_DENY,
        "unexpected-arguments",
        &s.sb.allowed,
    );
    assert!(!alerts.is_empty(), "no would-deny alert");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_supervised_binary_runs_only_with_its_pinned_environment() {
    // Root setting a variable for the supervisor's next start (as
    // `systemctl set-environment MYSQL_HOME=...` does for PID 1), so that the
    // database reads a configuration of root's: the process dies before it
    // runs. Variables listed by name take any value; pinned values only theirs.
    let s = Supervised::new("supervised-environment");
    let _guardd = Guardd::start();
    apply(&s.environment_policy("enforce"));
    // A value longer than the kernel reads to compare is still allowed by
    // its name (and a misread of where the next entry starts would kill
    // the allowed start).
    let long = "x".repeat(3_000);
    let pinned = [
        ("A_LONG_ONE", long.as_str()),
        ("GUARD_TEST_MODE", "production"),
        ("LANG", "C.UTF-8"),
        ("PATH", "/usr/bin:/bin"),
    ];
    let out = s.supervised_with(&pinned);
    assert_ok(
        &out,
        "the supervisor starting it with the pinned environment",
    );
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");
    let out = s.supervised_with(&[("GUARD_TEST_MODE", "staging"), ("PATH", "/sbin")]);
    assert_ok(&out, "another pinned value and fewer variables");

    let mut extra = pinned.to_vec();
    extra.push(("MYSQL_HOME", "/root/evil"));
    let out = s.supervised_with(&extra);
    assert_killed(&out, "an extra variable");
    assert!(!stdout(&out).contains("patient"), "{out:?}");
    let mut other_value = pinned.to_vec();
    other_value[1] = ("GUARD_TEST_MODE", "debug");
    assert_killed(
        &s.supervised_with(&other_value),
        "another value of a pinned one",
    );
    let mut prefix = pinned.to_vec();
    prefix.push(("PATHX", "/usr/bin"));
    assert_killed(
        &s.supervised_with(&prefix),
        "a name that extends a listed one",
    );

    let mut too_long = pinned.to_vec();
    let longer = "x".repeat(5_000);
    too_long[0] = ("A_LONG_ONE", longer.as_str());
    assert_killed(
        &s.supervised_with(&too_long),
        "a variable of more than 4 KiB",
    );

    let alerts = alerts_of(message_id::DENIED, "unexpected-environment", &s.sb.allowed);
    assert!(alerts.len() >= 4, "expected 4 alerts: {alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|e| e[field::HOOK] == "bprm_committed_creds"),
        "{alerts:?}"
    );

    // Audit mode only reports.
    apply(&s.environment_policy("audit"));
    let out = s.supervised_with(&extra);
    assert_ok(&out, "audit mode: an extra variable");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");
    let alerts = alerts_of(
        message_id::WOULD_DENY,
        "unexpected-environment",
        &s.sb.allowed,
    );
    assert!(!alerts.is_empty(), "no would-deny alert");
}
