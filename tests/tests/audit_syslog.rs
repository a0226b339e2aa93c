//! Forwarding as RFC 5424 syslog over TLS (RFC 5425 framing) to a real
//! rsyslog, including while it is stopped for a while.

mod audit_common;

use std::collections::HashMap;
use std::time::Duration;

use audit_common::{event, read_records, Rsyslog};
use guard::audit::syslog::SyslogDestination;
use guard::audit::tls::TestPki;
use guard::audit::{AuditTrail, TrailConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_every_record_exactly_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&tmp.path().join("pki")).unwrap();
    let mut rsyslog = Rsyslog::start(&pki, &tmp.path().join("rsyslog"));
    let mut config = TrailConfig::new(tmp.path().join("local"), "db1", tmp.path().join("host.key"));
    config.syslog = vec![SyslogDestination {
        name: "siem".into(),
        address: rsyslog.address(),
        server_name: "rsyslog".into(),
        tls: pki.issue("db1").unwrap(),
        app_name: "guardd".into(),
    }];
    let trail = AuditTrail::open(config).unwrap();
    let record = |from: u64, to: u64| {
        let trail = trail.clone();
        async move {
            for i in from..to {
                trail.record(event(i)).await.unwrap();
            }
        }
    };
    record(1, 1001).await;
    trail
        .record(serde_json::json!({"kind": "policy_applied", "policy": "mysql", "by": "root"}))
        .await
        .unwrap();
    assert!(
        trail.wait_delivered(Duration::from_secs(30)).await,
        "{:?}",
        trail.status()
    );

    rsyslog.stop();
    record(1001, 2001).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = trail.status();
    assert!(!status.destinations[0].connected, "{status:?}");
    assert_eq!(status.destinations[0].lag_records, 1000);
    rsyslog.restart();
    assert!(
        trail.wait_delivered(Duration::from_secs(30)).await,
        "{:?}",
        trail.status()
    );
    trail.close().await;
    // rsyslog writes its file asynchronously: give it a moment, then stop it to flush.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rsyslog.stop();

    let records = read_records(&tmp.path().join("local"));
    assert_eq!(records.len(), 2001);
    let received = rsyslog.received();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (host, app, msgid, sd, msg) in &received {
        assert_eq!(host, "db1");
        assert_eq!(app, "guardd");
        let record = guard::audit::Record::parse(msg.as_bytes())
            .unwrap_or_else(|e| panic!("rsyslog got a message that is not a record ({e}): {msg}"));
        assert_eq!(msgid, record.kind());
        assert_eq!(
            sd,
            &format!(
                "[guard@32473 seq=\"{}\" hash=\"{}\"]",
                record.seq,
                hex::encode(record.hash)
            )
        );
        *seen.entry(msg.clone()).or_default() += 1;
    }
    for record in &records {
        assert!(
            seen.contains_key(&record.to_line()),
            "record {} never reached rsyslog",
            record.seq
        );
    }
    // At least once: duplicates only from the last unconfirmed second before the stop.
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    assert!(duplicates < 1000, "{duplicates} duplicates");
    assert_eq!(seen.len(), records.len());
}
