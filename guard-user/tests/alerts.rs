//! `guardctl alerts` against a real journald: synthetic decision entries
//! written with `Journal::send`, followed with journalctl.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use guard::alerts::{follow_to, since_now, AlertFormat, AlertKind, AlertOptions};
use guard::journal::{field, message_id, verdict, Journal};
use guard_tests::{ensure_journald, wait_for_journal_entries};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn unique_marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn send_decision(journal: &Journal, marker: &str, id: &str, verdict: &str, path: &str, pid: &str) {
    journal
        .send(&[
            (field::MESSAGE, &format!("{verdict} read of {path}")),
            (field::MESSAGE_ID, id),
            (field::VERDICT, verdict),
            (field::PATH, path),
            (field::EXE, "/usr/bin/cat"),
            (field::COMM, "cat"),
            (field::PID, pid),
            (field::UID, "1000"),
            (field::GID, "1000"),
            (field::ACCESS, "read"),
            (field::RULE, "default-deny"),
            (field::HOOK, "file_open"),
            (field::INODE, "131"),
            (field::DEVICE, "8:1"),
            ("GUARD_TEST_MARKER", marker),
        ])
        .unwrap();
}

/// Runs `follow_to` on a thread; panics if it does not finish within TIMEOUT.
fn follow_in_background(options: AlertOptions) -> mpsc::Receiver<anyhow::Result<String>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut out = Vec::new();
        let result = follow_to(&options, &mut out).map(|()| String::from_utf8(out).unwrap());
        let _ = sender.send(result);
    });
    receiver
}

#[test]
fn follows_selected_kinds_and_runs_the_hook() {
    let _journald = ensure_journald().unwrap();
    let journal = Journal::connect().unwrap();
    let marker = unique_marker("alerts");
    let since = since_now();
    let hook_dir = tempfile::tempdir().unwrap();
    let hook_log = hook_dir.path().join("hook.log");

    // Not selected: must not be printed, nor counted.
    send_decision(
        &journal,
        &marker,
        message_id::AUDITED,
        verdict::AUDITED,
        "/srv/db/audited",
        "1",
    );
    send_decision(
        &journal,
        &marker,
        message_id::DENIED,
        verdict::DENIED,
        "/srv/db/secret file",
        "4242",
    );
    journal
        .send(&[
            (field::MESSAGE, "1234 decision events suppressed"),
            (field::MESSAGE_ID, message_id::SUPPRESSED),
            (field::SUPPRESSED, "1234"),
            ("GUARD_TEST_MARKER", &marker),
        ])
        .unwrap();
    let matching = format!("GUARD_TEST_MARKER={marker}");
    wait_for_journal_entries(&[&matching], 3, Duration::from_secs(10)).unwrap();

    let options = AlertOptions {
        format: AlertFormat::Text,
        since: Some(since),
        exec: Some(format!(
            "{{ cat; env | grep '^GUARD_' | sort; echo ---; }} >> '{}'",
            hook_log.display()
        )),
        count: Some(2),
        kinds: vec![AlertKind::Denied, AlertKind::Suppressed],
        matches: vec![matching],
    };
    let output = follow_in_background(options)
        .recv_timeout(TIMEOUT)
        .expect("follow did not stop after 2 alerts")
        .unwrap();

    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 2, "{output}");
    assert!(
        lines[0].ends_with(
            " DENIED /usr/bin/cat (pid 4242, uid 1000) read /srv/db/secret file rule=default-deny"
        ),
        "{output}"
    );
    assert!(
        lines[1].ends_with(" SUPPRESSED 1234 decision events not logged (kernel rate limit)"),
        "{output}"
    );
    assert!(!output.contains("audited"), "{output}");

    let hook = std::fs::read_to_string(&hook_log).unwrap();
    let runs: Vec<&str> = hook.split("---\n").filter(|r| !r.is_empty()).collect();
    assert_eq!(runs.len(), 2, "{hook}");
    let mut first = runs[0].lines();
    let input: Value = serde_json::from_str(first.next().unwrap()).unwrap();
    assert_eq!(input["kind"], "denied");
    assert_eq!(input["path"], "/srv/db/secret file");
    assert_eq!(input["exe"], "/usr/bin/cat");
    assert_eq!(input["comm"], "cat");
    assert_eq!(input["pid"], "4242");
    assert_eq!(input["uid"], "1000");
    assert_eq!(input["gid"], "1000");
    assert_eq!(input["access"], "read");
    assert_eq!(input["rule"], "default-deny");
    assert_eq!(input["hook"], "file_open");
    assert_eq!(input["inode"], "131");
    assert_eq!(input["device"], "8:1");
    let env: Vec<&str> = first.collect();
    for expected in [
        "GUARD_ACCESS=read",
        "GUARD_EXE=/usr/bin/cat",
        "GUARD_KIND=denied",
        "GUARD_PATH=/srv/db/secret file",
        "GUARD_PID=4242",
        "GUARD_RULE=default-deny",
        "GUARD_UID=1000",
        "GUARD_VERDICT=denied",
    ] {
        assert!(env.contains(&expected), "{expected} missing from {env:?}");
    }
    let mut second = runs[1].lines();
    let input: Value = serde_json::from_str(second.next().unwrap()).unwrap();
    assert_eq!(input["kind"], "suppressed");
    assert_eq!(input["suppressed"], "1234");
    assert!(second.any(|l| l == "GUARD_SUPPRESSED=1234"), "{hook}");
}

#[test]
fn follows_from_now_in_json() {
    let _journald = ensure_journald().unwrap();
    let journal = Journal::connect().unwrap();
    let marker = unique_marker("from-now");
    let matching = format!("GUARD_TEST_MARKER={marker}");
    send_decision(
        &journal,
        &marker,
        message_id::WOULD_DENY,
        verdict::WOULD_DENY,
        "/srv/db/old",
        "1",
    );
    wait_for_journal_entries(&[&matching], 1, Duration::from_secs(10)).unwrap();

    let done = follow_in_background(AlertOptions {
        format: AlertFormat::Json,
        count: Some(1),
        matches: vec![matching],
        ..AlertOptions::default()
    });
    // journalctl may not be watching yet: keep sending until it reports one.
    let deadline = Instant::now() + TIMEOUT;
    let output = loop {
        send_decision(
            &journal,
            &marker,
            message_id::WOULD_DENY,
            verdict::WOULD_DENY,
            "/srv/db/new",
            "2",
        );
        match done.recv_timeout(Duration::from_millis(500)) {
            Ok(result) => break result.unwrap(),
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => panic!("no alert within {TIMEOUT:?}"),
        }
    };
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "{output}");
    let alert: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(alert["kind"], "would-deny");
    assert_eq!(alert["verdict"], "would-deny");
    assert_eq!(
        alert["path"], "/srv/db/new",
        "an entry from before the start was shown"
    );
}
