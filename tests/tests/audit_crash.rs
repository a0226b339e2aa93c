//! `kill -9` of the writer mid-stream while a collector is also down: after
//! restarts, every record reached every destination (three collectors and
//! rsyslog) exactly as written, and none acknowledged to the writer was lost.

mod audit_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use audit_common::{copy_specs, read_records, start_collectors, Rsyslog};
use guard::audit::chain::RECORDS_FILE;
use guard::audit::syslog::SyslogDestination;
use guard::audit::tls::TestPki;
use guard::audit::verify::{verify, Trust};
use guard::audit::TrailConfig;

const WRITER: &str = env!("CARGO_BIN_EXE_audit-writer");

/// Runs the writer; returns the last seq it reported as acknowledged and
/// whether it finished delivering. With `kill_after`, SIGKILLs it once it
/// has acknowledged that many records.
fn run_writer(config: &Path, start: u64, count: u64, kill_after: Option<u64>) -> (u64, bool) {
    let mut child = Command::new(WRITER)
        .arg(config)
        .arg(start.to_string())
        .arg(count.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut last = 0;
    let mut delivered = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            last = n.parse().unwrap();
            if kill_after.is_some_and(|k| last >= k) {
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                break;
            }
        } else if line == "delivered" {
            delivered = true;
        } else {
            panic!("writer: {line}");
        }
    }
    let status = child.wait().unwrap();
    if kill_after.is_some() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
    (last, delivered)
}

#[test]
fn kill_9_mid_stream_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&tmp.path().join("pki")).unwrap();
    let mut logds = start_collectors(tmp.path(), &pki);
    let mut rsyslog = Rsyslog::start(&pki, &tmp.path().join("rsyslog"));
    let host_tls = pki.issue("db1").unwrap();
    let local = tmp.path().join("local");
    let mut config = TrailConfig::new(&local, "db1", tmp.path().join("host.key"));
    config.checkpoint_every_records = 1000;
    config.checkpoint_every_ms = 300;
    config.collectors = logds.iter().map(|l| l.destination(&host_tls)).collect();
    config.syslog = vec![SyslogDestination {
        name: "siem".into(),
        address: rsyslog.address(),
        server_name: "rsyslog".into(),
        tls: host_tls.clone(),
        app_name: "guardd".into(),
    }];
    let config_path = tmp.path().join("trail.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();

    // collector3 is down while the writer is killed.
    logds[2].stop();
    let (acked, _) = run_writer(&config_path, 1, 1_000_000, Some(8_000));
    let after_kill = read_records(&local);
    assert!(
        after_kill.len() as u64 >= acked,
        "acknowledged {acked} records but only {} are in the log",
        after_kill.len()
    );
    let next = after_kill.len() as u64 + 1;
    logds[2].restart();

    // Restart: record a little more, then wait until every destination has it all.
    let (_, delivered) = run_writer(&config_path, next, 2000, None);
    assert!(delivered, "the restarted writer did not deliver everything");
    std::thread::sleep(Duration::from_millis(500));
    rsyslog.stop();

    let records = read_records(&local);
    // Every record written exactly once, in order: event n is record n.
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.seq, i as u64 + 1);
        assert_eq!(
            record.event["n"],
            i as u64 + 1,
            "record {} holds the wrong event",
            record.seq
        );
    }
    let original = std::fs::read(local.join(RECORDS_FILE)).unwrap();
    for l in &logds {
        let copy = std::fs::read(l.host_dir("db1").join(RECORDS_FILE)).unwrap();
        assert!(
            copy == original,
            "{}'s copy differs from the local log",
            l.name
        );
    }
    let received: std::collections::HashSet<String> =
        rsyslog.received().into_iter().map(|m| m.4).collect();
    for record in &records {
        assert!(
            received.contains(&record.to_line()),
            "rsyslog lacks record {}",
            record.seq
        );
    }
    let specs = copy_specs(&local, logds.iter().map(|l| l.copy_of("db1")));
    let report = verify(&specs, &Trust::default());
    assert!(report.ok(), "{}", report.render());
}
