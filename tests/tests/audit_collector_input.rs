//! A collector sent forged, malformed, replayed or out-of-order data rejects
//! it with a clear error code, stores none of it, and keeps serving others.

mod audit_common;

use std::time::Duration;

use audit_common::{event, Logd};
use guard::audit::chain::RECORDS_FILE;
use guard::audit::checkpoint::{generate_signing_key, Checkpoint};
use guard::audit::forward::CollectorDestination;
use guard::audit::record::{Record, GENESIS};
use guard::audit::tls::{client_config, TestPki, TlsFiles};
use guard::audit::{AuditTrail, TrailConfig};
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A hand-driven protocol client.
struct Raw {
    reader: BufReader<ReadHalf<TlsStream<TcpStream>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
}

impl Raw {
    async fn connect(logd: &Logd, files: &TlsFiles) -> Raw {
        let tcp = TcpStream::connect(&logd.address).await.unwrap();
        let name = ServerName::try_from(logd.name.clone()).unwrap();
        let tls = TlsConnector::from(client_config(files).unwrap())
            .connect(name, tcp)
            .await
            .unwrap();
        let (r, w) = tokio::io::split(tls);
        Raw {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
        self.writer.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
            .await
            .expect("no answer from the collector")
            .unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
    }

    async fn hello(&mut self, host: &str, key: &str) -> Value {
        self.send(&json!({"type": "hello", "host": host, "key": key}).to_string())
            .await;
        self.recv().await
    }

    async fn records(&mut self, records: &[Record]) -> Value {
        self.send(&json!({"type": "records", "count": records.len()}).to_string())
            .await;
        for r in records {
            self.send(&r.to_line()).await;
        }
        self.recv().await
    }

    /// Expects an error with `code`, then the connection closed.
    async fn expect_error(&mut self, answer: Value, code: &str) {
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        let mut rest = String::new();
        let n = self.reader.read_line(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "connection not closed after error: {rest}");
    }
}

fn chain(host: &str, n: u64) -> Vec<Record> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|i| {
            let r = Record::new(i, i as i64, host, event(i), prev);
            prev = r.hash;
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_others_are_still_served() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&tmp.path().join("pki")).unwrap();
    let logd = Logd::start(&pki, &tmp.path().join("c1"), "collector1", "127.0.0.1:0");

    // A well-behaved host keeps recording and delivering throughout.
    let mut config = TrailConfig::new(tmp.path().join("db1"), "db1", tmp.path().join("db1.key"));
    config.checkpoint_every_ms = 100;
    config.collectors = vec![CollectorDestination {
        name: "collector1".into(),
        address: logd.address.clone(),
        server_name: "collector1".into(),
        tls: pki.issue("db1").unwrap(),
        collector_key: None,
    }];
    let trail = AuditTrail::open(config).unwrap();
    let background = {
        let trail = trail.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                trail.record(event(i)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let db2 = pki.issue("db2").unwrap();
    let key = generate_signing_key().unwrap();
    let key_hex = hex::encode(key.verifying_key().as_bytes());
    let good = chain("db2", 6);

    // Malformed message.
    let mut c = Raw::connect(&logd, &db2).await;
    c.send("this is not json").await;
    let answer = c.recv().await;
    c.expect_error(answer, "malformed").await;

    // Records before hello.
    let mut c = Raw::connect(&logd, &db2).await;
    c.send(r#"{"type":"records","count":1}"#).await;
    let answer = c.recv().await;
    c.expect_error(answer, "protocol").await;

    // Claiming to be another host than the certificate says.
    let mut c = Raw::connect(&logd, &db2).await;
    let answer = c.hello("db1", &key_hex).await;
    c.expect_error(answer, "host-mismatch").await;

    // A proper start: three records stored and acknowledged.
    let mut c = Raw::connect(&logd, &db2).await;
    let welcome = c.hello("db2", &key_hex).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["next_seq"], 1);
    assert_eq!(
        c.records(&good[..3]).await,
        json!({"type": "ack", "seq": 3})
    );
    // A checkpoint signed by the host key is cosigned.
    let cp = Checkpoint::sign(&key, "db2", 3, &good[2].hash, 1);
    c.send(&json!({"type": "checkpoint", "checkpoint": cp}).to_string())
        .await;
    let receipt = c.recv().await;
    assert_eq!(receipt["type"], "receipt", "{receipt}");
    assert_eq!(receipt["receipt"]["collector_key"], logd.key_hex.as_str());

    // Replayed record.
    let answer = c.records(&good[1..2]).await;
    c.expect_error(answer, "replay").await;

    let session = |_: ()| async {
        let mut c = Raw::connect(&logd, &db2).await;
        let welcome = c.hello("db2", &key_hex).await;
        assert_eq!(welcome["next_seq"], 4, "{welcome}");
        c
    };

    // Out of order: record 5 before 4.
    let mut c = session(()).await;
    let answer = c.records(&good[4..5]).await;
    c.expect_error(answer, "gap").await;

    // Forged: record 4's content changed, hash kept.
    let mut c = session(()).await;
    let mut forged = good[3].clone();
    forged.event["uid"] = json!(1000);
    let answer = c.records(&[forged]).await;
    c.expect_error(answer, "bad-hash").await;

    // A fork: a valid record 4 that does not follow the stored record 3.
    let mut c = session(()).await;
    let fork = Record::new(4, 4, "db2", event(44), [9; 32]);
    let answer = c.records(&[fork]).await;
    c.expect_error(answer, "fork").await;

    // A record of another host inside db2's session.
    let mut c = session(()).await;
    let other = Record::new(4, 4, "db1", event(4), good[2].hash);
    let answer = c.records(&[other]).await;
    c.expect_error(answer, "host-mismatch").await;

    // A batch whose second record is bad stores nothing of it.
    let mut c = session(()).await;
    let answer = c.records(&[good[3].clone(), good[5].clone()]).await;
    c.expect_error(answer, "gap").await;

    // A checkpoint signed by another key.
    let mut c = session(()).await;
    let intruder = generate_signing_key().unwrap();
    let cp = Checkpoint::sign(&intruder, "db2", 3, &good[2].hash, 2);
    c.send(&json!({"type": "checkpoint", "checkpoint": cp}).to_string())
        .await;
    let answer = c.recv().await;
    c.expect_error(answer, "bad-signature").await;

    // A checkpoint for records the collector does not have.
    let mut c = session(()).await;
    let cp = Checkpoint::sign(&key, "db2", 6, &good[5].hash, 2);
    c.send(&json!({"type": "checkpoint", "checkpoint": cp}).to_string())
        .await;
    let answer = c.recv().await;
    c.expect_error(answer, "checkpoint-ahead").await;

    // A key other than the one pinned at first contact.
    let mut c = Raw::connect(&logd, &db2).await;
    let answer = c
        .hello("db2", &hex::encode(intruder.verifying_key().as_bytes()))
        .await;
    c.expect_error(answer, "key-mismatch").await;

    // An over-long line.
    let mut c = session(()).await;
    c.send(&"x".repeat(100_000)).await;
    let answer = c.recv().await;
    c.expect_error(answer, "too-long").await;

    // db2's store holds exactly the three good records.
    let stored = std::fs::read_to_string(logd.host_dir("db2").join(RECORDS_FILE)).unwrap();
    let expected: String = good[..3].iter().map(|r| r.to_line() + "\n").collect();
    assert_eq!(stored, expected);

    // The well-behaved host was served all along.
    background.await.unwrap();
    assert!(
        trail.wait_delivered(Duration::from_secs(30)).await,
        "{:?}",
        trail.status()
    );
    assert_eq!(trail.status().destinations[0].acked_seq, 400);
    trail.close().await;
    let local = std::fs::read(tmp.path().join("db1").join(RECORDS_FILE)).unwrap();
    assert!(std::fs::read(logd.host_dir("db1").join(RECORDS_FILE)).unwrap() == local);
    let log = logd.stderr();
    for code in [
        "malformed",
        "protocol",
        "replay",
        "gap",
        "fork",
        "bad-hash",
        "bad-signature",
        "key-mismatch",
    ] {
        assert!(
            log.contains(&format!(": {code}: ")),
            "collector log lacks {code}:\n{log}"
        );
    }
}
