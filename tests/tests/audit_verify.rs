//! `guardctl log verify` catches every kind of tampering with the local log,
//! says where and how, and never panics on garbage.

mod audit_common;

use std::path::PathBuf;

use audit_common::{copy_dir, copy_specs, event, read_records, rewrite_chain};
use guard::audit::chain::{CHECKPOINTS_FILE, RECORDS_FILE};
use guard::audit::cli::{run, LogCommand, VerifyArgs};
use guard::audit::verify::{verify, Problem, Report, Trust};
use guard::audit::{AuditTrail, TrailConfig};
use serde_json::Value;

const HOST: &str = "db1";
const RECORDS: u64 = 1000;

struct Fixture {
    _tmp: tempfile::TempDir,
    local: PathBuf,
    remotes: Vec<PathBuf>,
    key_file: PathBuf,
}

/// A local log of 1000 records with a checkpoint every 100, and three
/// identical remote copies.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let key_file = tmp.path().join("host.key");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = TrailConfig::new(&local, HOST, &key_file);
        config.checkpoint_every_records = 100;
        let trail = AuditTrail::open(config).unwrap();
        for chunk in (1..=RECORDS).collect::<Vec<_>>().chunks(50) {
            trail
                .record_batch(chunk.iter().map(|&i| event(i)).collect())
                .await
                .unwrap();
        }
        trail.close().await;
    });
    let remotes: Vec<PathBuf> = (1..=3)
        .map(|i| {
            let dir = tmp.path().join(format!("collector{i}"));
            copy_dir(&local, &dir);
            dir
        })
        .collect();
    Fixture {
        _tmp: tmp,
        local,
        remotes,
        key_file,
    }
}

impl Fixture {
    fn verify(&self) -> Report {
        let remotes = self.remotes.iter().enumerate();
        let specs = copy_specs(
            &self.local,
            remotes.map(|(i, remote)| (format!("collector{}", i + 1), remote.clone())),
        );
        verify(&specs, &Trust::default())
    }

    fn entries(&self) -> Vec<(i64, Value)> {
        read_records(&self.local)
            .into_iter()
            .map(|r| (r.time_ns, r.event))
            .collect()
    }

    /// Rewrites the local chain (re-hashed, checkpoints re-signed).
    fn rewrite_local(&self, entries: &[(i64, Value)]) {
        rewrite_chain(&self.local, HOST, entries, &self.key_file);
    }

    /// Rewrites the local chain with its entries changed by `edit`, as a
    /// forger holding the host key would.
    fn rewrite_local_entries(&self, edit: impl FnOnce(&mut Vec<(i64, Value)>)) {
        let mut entries = self.entries();
        edit(&mut entries);
        self.rewrite_local(&entries);
    }

    /// Changes the lines of one file of the local copy in place, without
    /// re-hashing anything.
    fn edit_local_lines(&self, file: &str, edit: impl FnOnce(&mut Vec<String>)) {
        let path = self.local.join(file);
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        edit(&mut lines);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
}

/// The local copy has no findings of its own: its chain is self-consistent.
fn assert_local_consistent(report: &Report) {
    assert!(
        report.findings.iter().all(|x| x.copy != "local"),
        "{}",
        report.render()
    );
}

/// Findings of one kind, as (copy, seq).
fn found(report: &Report, problem: Problem) -> Vec<(String, Option<u64>)> {
    report
        .findings
        .iter()
        .filter(|f| f.problem == problem)
        .map(|f| (f.copy.clone(), f.seq))
        .collect()
}

fn local_vs_all(seq: u64) -> Vec<(String, Option<u64>)> {
    (1..=3)
        .map(|i| (format!("local vs collector{i}"), Some(seq)))
        .collect()
}

#[test]
fn intact_copies_verify() {
    let f = fixture();
    let report = f.verify();
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.copies.len(), 4);
    for copy in &report.copies {
        assert_eq!(copy.records, RECORDS);
        assert_eq!(copy.checkpoints, 10);
    }
    assert!(report.render().contains("result: OK"));
}

#[test]
fn edited_record_is_caught_in_place() {
    let f = fixture();
    f.edit_local_lines(RECORDS_FILE, |all| {
        all[499] = all[499].replace("/usr/bin/cat", "/usr/bin/cut");
    });
    let report = f.verify();
    assert_eq!(
        found(&report, Problem::HashMismatch),
        vec![("local".into(), Some(500))]
    );
    assert_eq!(found(&report, Problem::Changed), local_vs_all(500));
    let text = report.render();
    assert!(
        text.contains("/usr/bin/cut") && text.contains("TAMPERING"),
        "{text}"
    );
}

#[test]
fn record_changed_and_chain_rehashed_is_caught() {
    let f = fixture();
    f.rewrite_local_entries(|entries| entries[299].1["uid"] = Value::from(1000));
    let report = f.verify();
    // The rewritten local chain is self-consistent...
    assert_local_consistent(&report);
    // ...but every remote copy shows exactly that one record changed.
    assert_eq!(found(&report, Problem::Changed), local_vs_all(300));
    assert_eq!(report.findings.len(), 3, "{}", report.render());
}

#[test]
fn deleted_record_is_caught() {
    let f = fixture();
    f.edit_local_lines(RECORDS_FILE, |all| {
        all.remove(641);
    });
    let report = f.verify();
    assert_eq!(
        found(&report, Problem::SeqOutOfOrder),
        vec![("local".into(), Some(643))]
    );
    assert_eq!(found(&report, Problem::Deleted), local_vs_all(642));
}

#[test]
fn deleted_record_with_renumbered_chain_is_caught() {
    let f = fixture();
    f.rewrite_local_entries(|entries| {
        entries.remove(641);
    });
    let report = f.verify();
    assert_local_consistent(&report);
    assert_eq!(found(&report, Problem::Deleted), local_vs_all(642));
    // Nothing else: the later records are recognised, not reported as changed.
    assert_eq!(report.findings.len(), 3, "{}", report.render());
}

#[test]
fn inserted_record_is_caught() {
    let f = fixture();
    f.rewrite_local_entries(|entries| {
        let forged = (entries[9].0, event(9999));
        entries.insert(10, forged);
    });
    let report = f.verify();
    assert_eq!(found(&report, Problem::Inserted), local_vs_all(11));
    assert!(report.render().contains("t9999.ibd"));
}

#[test]
fn reordered_records_are_caught() {
    let f = fixture();
    f.rewrite_local_entries(|entries| entries.swap(200, 700));
    let report = f.verify();
    let reordered = found(&report, Problem::Reordered);
    assert!(!reordered.is_empty(), "{}", report.render());
    assert!(
        found(&report, Problem::Deleted).is_empty(),
        "{}",
        report.render()
    );
    assert!(
        found(&report, Problem::Inserted).is_empty(),
        "{}",
        report.render()
    );
    for i in 1..=3 {
        assert!(reordered
            .iter()
            .any(|(c, _)| c == &format!("local vs collector{i}")));
    }
}

#[test]
fn truncated_tail_is_caught() {
    let f = fixture();
    f.edit_local_lines(RECORDS_FILE, |all| all.truncate(950));
    let report = f.verify();
    // The local checkpoint at 1000 outlives the records it signed...
    assert_eq!(
        found(&report, Problem::TailTruncated)[0],
        ("local".into(), Some(1000))
    );
    // ...and the remote copies hold the 50 records the local log lost.
    let text = report.render();
    assert!(
        text.contains("tail truncated: collector1 holds 50 record(s) (seq 951..=1000)"),
        "{text}"
    );
}

#[test]
fn truncated_tail_with_checkpoints_removed_is_still_caught() {
    let f = fixture();
    f.rewrite_local_entries(|entries| entries.truncate(950));
    let report = f.verify();
    let truncated = found(&report, Problem::TailTruncated);
    assert_eq!(truncated.len(), 3, "{}", report.render());
    assert!(truncated.iter().all(|(_, seq)| *seq == Some(951)));
}

#[test]
fn local_log_rewritten_from_scratch_matches_no_remote() {
    let f = fixture();
    std::fs::remove_file(&f.key_file).unwrap();
    std::fs::remove_file(f.local.join("host.pub")).unwrap();
    let forged: Vec<(i64, Value)> = (1..=800).map(|i| (i as i64, event(i))).collect();
    f.rewrite_local(&forged);
    let report = f.verify();
    assert_eq!(
        found(&report, Problem::Unrelated).len(),
        3,
        "{}",
        report.render()
    );
    assert_local_consistent(&report);
    let text = report.render();
    assert!(
        text.contains(
            "the local log matches none of the 3 remote copies: it was rewritten from scratch"
        ),
        "{text}"
    );
}

#[test]
fn forged_checkpoint_signature_is_caught() {
    let f = fixture();
    f.edit_local_lines(CHECKPOINTS_FILE, |all| {
        let mut cp: Value = serde_json::from_str(&all[3]).unwrap();
        cp["seq"] = Value::from(401);
        all[3] = cp.to_string();
    });
    let report = f.verify();
    assert_eq!(
        found(&report, Problem::BadSignature),
        vec![("local".into(), Some(401))]
    );
}

#[test]
fn garbage_and_truncated_files_are_reported_not_panicked_on() {
    let f = fixture();
    let path = f.local.join(RECORDS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    // Cut in the middle of record 501.
    let cut = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(499)
        .unwrap()
        .0
        + 40;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let report = f.verify();
    assert_eq!(
        found(&report, Problem::TruncatedLine),
        vec![("local".into(), None)]
    );
    assert!(report.render().contains("ends in the middle of a line"));

    let mut garbage = vec![0xffu8, 0x00, b'{', b'\n'];
    garbage.extend((0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::write(&path, &garbage).unwrap();
    std::fs::write(
        f.local.join(CHECKPOINTS_FILE),
        b"{\"seq\": \"x\"}\nnot json\n",
    )
    .unwrap();
    let report = f.verify();
    assert!(!found(&report, Problem::Malformed).is_empty());
    assert!(!report.ok());
    assert!(report.render().contains("not a record"));

    // Through the command: a clear error, no panic, for garbage and for a missing copy.
    let err = run(LogCommand::Verify(VerifyArgs {
        local: Some(f.local.clone()),
        remotes: vec![],
        host_key: None,
        collector_keys: vec![],
        json: false,
    }))
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("verification failed"),
        "{err:#}"
    );
    let err = run(LogCommand::Verify(VerifyArgs {
        local: None,
        remotes: vec!["c1=/nonexistent/copy".into()],
        host_key: None,
        collector_keys: vec![],
        json: false,
    }))
    .unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
}
