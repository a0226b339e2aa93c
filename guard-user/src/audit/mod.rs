//! The tamper-evident audit log (issue 4).
//!
//! guardd appends every kernel decision and admin action to a local
//! hash-chained log (`record`), signs a checkpoint of it every N records or
//! T seconds (`checkpoint`), and ships it to collectors (`forward`, served by
//! the `guard-logd` binary through `collector`) that check and cosign it, and
//! to syslog servers (`syslog`). The local log is the spool (`spool`):
//! nothing is lost while a destination is down. `verify` checks any set of
//! copies and says exactly where and how they differ.
//!
//! The record and signature encodings are documented in `record` and
//! `checkpoint`; the wire protocol in `protocol`.

pub mod bench;
pub mod chain;
pub mod checkpoint;
pub mod cli;
pub mod collector;
pub mod forward;
pub mod protocol;
pub mod record;
pub mod spool;
pub mod syslog;
pub mod tls;
pub mod trail;
pub mod verify;

pub use checkpoint::{Checkpoint, Receipt};
pub use cli::LogCommand;
pub use record::{Record, Seq};
pub use trail::{AuditError, AuditTrail, RecordSink, TrailAlert, TrailConfig, TrailStatus};

/// The journal fields of a record: a stable rendering for journald.
/// `MESSAGE_ID` is fixed per event kind, so `journalctl MESSAGE_ID=...`
/// finds every record of a kind.
pub fn journal_fields(record: &Record) -> Vec<(&'static str, String)> {
    let kind = record.kind();
    let priority = match kind {
        k if k.starts_with("audit_") => "3",
        "denied" | "would_deny" => "4",
        k if k.ends_with("_refused") => "4",
        _ => "5",
    };
    vec![
        ("MESSAGE", journal_message(record)),
        ("MESSAGE_ID", message_id(kind)),
        ("PRIORITY", priority.to_owned()),
        ("SYSLOG_IDENTIFIER", "guardd".to_owned()),
        ("GUARD_KIND", kind.to_owned()),
        ("GUARD_SEQ", record.seq.to_string()),
        ("GUARD_HASH", hex::encode(record.hash)),
        ("GUARD_RECORD", record.to_line()),
    ]
}

/// A one-line summary: `guard <kind> seq=N key=value ...` (keys sorted).
pub fn journal_message(record: &Record) -> String {
    let mut text = format!("guard {} seq={}", record.kind(), record.seq);
    if let Some(fields) = record.event.as_object() {
        let mut keys: Vec<&String> = fields.keys().filter(|k| *k != "kind").collect();
        keys.sort();
        for key in keys {
            let value = &fields[key];
            match value.as_str() {
                Some(s) => text.push_str(&format!(" {key}={s:?}")),
                None => text.push_str(&format!(" {key}={value}")),
            }
        }
    }
    text
}

/// A stable 128-bit id (32 hex digits) per event kind, derived from its name.
pub fn message_id(kind: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("guard-audit-kind:{kind}").as_bytes());
    hex::encode(&digest[..16])
}
