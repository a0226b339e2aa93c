//! Delivery to three real `guard-logd` collectors over mutual TLS: every
//! record arrives exactly as written, receipts come back, a collector that is
//! down for a while catches up, the spool is bounded and alerts before full.

mod audit_common;

use std::path::Path;
use std::time::Duration;

use audit_common::{copy_specs, event, start_collectors, Logd};
use guard::audit::chain::RECORDS_FILE;
use guard::audit::tls::TestPki;
use guard::audit::verify::{verify, Trust};
use guard::audit::{AuditError, AuditTrail, TrailAlert, TrailConfig};

const HOST: &str = "db1";

fn trail_config(tmp: &Path, pki: &TestPki, logds: &[Logd]) -> TrailConfig {
    let host_tls = pki.issue(HOST).unwrap();
    let mut config = TrailConfig::new(tmp.join("local"), HOST, tmp.join("host.key"));
    config.checkpoint_every_records = 500;
    config.checkpoint_every_ms = 200;
    config.collectors = logds.iter().map(|l| l.destination(&host_tls)).collect();
    config
}

fn verify_all(local: &Path, logds: &[Logd]) -> guard::audit::verify::Report {
    let specs = copy_specs(local, logds.iter().map(|l| l.copy_of(HOST)));
    let trust = Trust {
        host_key: None,
        collector_keys: logds
            .iter()
            .map(|l| guard::audit::checkpoint::parse_verifying_key(&l.key_hex).unwrap())
            .collect(),
    };
    verify(&specs, &trust)
}

async fn record_range(trail: &AuditTrail, range: std::ops::Range<u64>) {
    let all: Vec<u64> = range.collect();
    for chunk in all.chunks(100) {
        trail
            .record_batch(chunk.iter().map(|&i| event(i)).collect())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_three_collectors_with_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&tmp.path().join("pki")).unwrap();
    let logds = start_collectors(tmp.path(), &pki);
    let config = trail_config(tmp.path(), &pki, &logds);
    let local = config.dir.clone();
    let trail = AuditTrail::open(config).unwrap();
    record_range(&trail, 1..5001).await;
    assert!(
        trail.wait_delivered(Duration::from_secs(60)).await,
        "{:?}",
        trail.status()
    );
    // Let the last checkpoint be signed and cosigned.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = trail.status();
    assert_eq!(status.head_seq, 5000);
    for dest in &status.destinations {
        assert!(dest.connected, "{dest:?}");
        assert_eq!(dest.acked_seq, 5000);
        assert!(dest.receipts >= 10, "{dest:?}");
    }
    trail.close().await;

    let original = std::fs::read(local.join(RECORDS_FILE)).unwrap();
    for l in &logds {
        let copy = std::fs::read(l.host_dir(HOST).join(RECORDS_FILE)).unwrap();
        assert!(
            copy == original,
            "{}'s copy differs from the local log",
            l.name
        );
    }
    let report = verify_all(&local, &logds);
    assert!(report.ok(), "{}", report.render());
    let local_summary = &report.copies[0];
    assert!(local_summary.receipts >= 30, "{}", report.render());
    for copy in &report.copies[1..] {
        assert_eq!(copy.records, 5000);
        assert!(copy.receipts >= 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_collector_catches_up_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&tmp.path().join("pki")).unwrap();
    let mut logds = start_collectors(tmp.path(), &pki);
    let config = trail_config(tmp.path(), &pki, &logds);
    let local = config.dir.clone();
    let trail = AuditTrail::open(config).unwrap();
    let mut alerts = trail.alerts();
    record_range(&trail, 1..1001).await;
    assert!(trail.wait_delivered(Duration::from_secs(30)).await);

    logds[1].stop();
    record_range(&trail, 1001..4001).await;
    let down = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(TrailAlert::DestinationDown { destination, .. }) = alerts.recv().await {
                return destination;
            }
        }
    })
    .await
    .expect("no DestinationDown alert");
    assert_eq!(down, "collector2");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = trail.status();
    let c2 = status
        .destinations
        .iter()
        .find(|d| d.name == "collector2")
        .unwrap();
    assert!(!c2.connected);
    assert_eq!(c2.acked_seq, 1000);
    assert_eq!(c2.lag_records, 3000);
    assert!(c2.last_error.is_some());
    // The others kept going meanwhile: they get everything while collector2
    // is still down (on a loaded machine that may take more than a second).
    let others_done = |status: &guard::audit::TrailStatus| {
        status
            .destinations
            .iter()
            .filter(|d| d.name != "collector2")
            .all(|d| d.acked_seq == 4000)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut status = trail.status();
    while !others_done(&status) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = trail.status();
    }
    assert!(others_done(&status), "{status:?}");
    let c2 = status
        .destinations
        .iter()
        .find(|d| d.name == "collector2")
        .unwrap();
    assert!(!c2.connected && c2.acked_seq == 1000, "{c2:?}");

    logds[1].restart();
    assert!(
        trail.wait_delivered(Duration::from_secs(30)).await,
        "{:?}",
        trail.status()
    );
    let back = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(TrailAlert::DestinationBack { destination }) = alerts.recv().await {
                return destination;
            }
        }
    })
    .await
    .expect("no DestinationBack alert");
    assert_eq!(back, "collector2");
    trail.close().await;

    let original = std::fs::read(local.join(RECORDS_FILE)).unwrap();
    for l in &logds {
        assert!(std::fs::read(l.host_dir(HOST).join(RECORDS_FILE)).unwrap() == original);
    }
    let report = verify_all(&local, &logds);
    assert!(report.ok(), "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_is_bounded_and_alerts_before_it_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&tmp.path().join("pki")).unwrap();
    let mut logds = start_collectors(tmp.path(), &pki);
    let mut config = trail_config(tmp.path(), &pki, &logds[..1]);
    config.spool_limit_bytes = 300_000;
    config.spool_alert_percent = 80;
    let trail = AuditTrail::open(config).unwrap();
    let mut alerts = trail.alerts();
    logds[0].stop();

    let mut refused = None;
    for i in 1..=5000u64 {
        match trail.record(event(i)).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, error) = refused.expect("the spool never filled");
    assert!(
        matches!(&error, AuditError::SpoolFull { destination, limit_bytes: 300_000, .. } if destination == "collector1"),
        "{error}"
    );
    assert!(error.to_string().contains("audit spool full"), "{error}");
    let mut near_full = false;
    while let Ok(alert) = alerts.try_recv() {
        if let TrailAlert::SpoolNearFull {
            destination,
            lag_bytes,
            ..
        } = alert
        {
            assert_eq!(destination, "collector1");
            assert!((240_000..300_000).contains(&lag_bytes), "{lag_bytes}");
            near_full = true;
        }
    }
    assert!(
        near_full,
        "no SpoolNearFull alert before refusing record {at}"
    );
    let log_bytes = trail.status().log_bytes;
    assert!(log_bytes < 300_000 + 10_000, "{log_bytes}");

    // Once the collector is back, the spool drains and recording works again.
    logds[0].restart();
    assert!(trail.wait_delivered(Duration::from_secs(30)).await);
    trail.record(event(9999)).await.unwrap();
    assert!(trail.wait_delivered(Duration::from_secs(30)).await);
    trail.close().await;
    logds.truncate(1);
    let report = verify_all(&tmp.path().join("local"), &logds);
    assert!(report.ok(), "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_also_goes_to_the_journal() {
    let _journald = guard_tests::ensure_journald().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = TrailConfig::new(tmp.path().join("local"), HOST, tmp.path().join("host.key"));
    let sink = guard::audit::JournalSink::connect().unwrap();
    let trail = AuditTrail::open_with_sink(config, Some(Box::new(sink))).unwrap();
    // A marker unique to this run, so earlier runs' entries do not count.
    let marker = format!("/var/lib/mysql/journal-test-{}", std::process::id());
    for i in 0..5u64 {
        let event =
            serde_json::json!({"kind": "denied", "path": format!("{marker}/{i}"), "uid": 0});
        trail.record(event).await.unwrap();
    }
    trail.close().await;
    let records = audit_common::read_records(&tmp.path().join("local"));
    let hash_match = format!("GUARD_AUDIT_HASH={}", hex::encode(records[4].hash));
    let entries =
        guard_tests::wait_for_journal_entries(&[hash_match.as_str()], 1, Duration::from_secs(10))
            .unwrap();
    let entry = &entries[0];
    let text = |name: &str| guard_tests::field_text(entry, name).unwrap_or_default();
    assert_eq!(text("MESSAGE_ID"), guard::journal::message_id::DENIED);
    assert_eq!(text("GUARD_PATH"), format!("{marker}/4"));
    assert_eq!(text("GUARD_AUDIT_SEQ"), "5");
    assert_eq!(text("GUARD_UID"), "0");
    assert_eq!(text("PRIORITY"), "4");
    for record in &records {
        let m = format!("GUARD_AUDIT_HASH={}", hex::encode(record.hash));
        assert_eq!(
            guard_tests::journal_entries(&[m.as_str()]).unwrap().len(),
            1,
            "record {} is not in the journal exactly once",
            record.seq
        );
    }
}
