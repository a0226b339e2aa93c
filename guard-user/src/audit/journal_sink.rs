//! Each audit record as a journal entry: a stable rendering, and a
//! `RecordSink` that writes it with `crate::journal::Journal`.
//!
//! An entry carries the journal's usual fields (`MESSAGE`, `MESSAGE_ID` from
//! `journal::message_id` for the kinds guard knows, `PRIORITY`,
//! `SYSLOG_IDENTIFIER=guardd`), one `GUARD_<KEY>` field per top-level event
//! key (so a decision event with `path`, `inode`, `exe`, ... gives
//! `GUARD_PATH`, `GUARD_INODE`, `GUARD_EXE`, the names `journal::field`
//! uses), and the link to the chain: `GUARD_AUDIT_SEQ` and `GUARD_AUDIT_HASH`
//! (the chained record itself is not repeated: journald indexes every
//! distinct field value, and a second copy of each record halves its rate).

use anyhow::Context;
use serde_json::Value;

use super::record::Record;
use super::trail::RecordSink;
use crate::journal::{message_id, Journal};

/// The `MESSAGE_ID` of a record's kind: the journal module's fixed id for the
/// kinds it defines, otherwise one derived from the kind's name (stable too).
pub fn journal_message_id(kind: &str) -> String {
    let known = match kind.replace('-', "_").as_str() {
        "denied" => Some(message_id::DENIED),
        "audited" => Some(message_id::AUDITED),
        "would_deny" => Some(message_id::WOULD_DENY),
        "suppressed" => Some(message_id::SUPPRESSED),
        "policy_applied" => Some(message_id::POLICY_APPLIED),
        "policy_refused" => Some(message_id::POLICY_REFUSED),
        "guardd_started" => Some(message_id::GUARDD_STARTED),
        "guardd_stopped" => Some(message_id::GUARDD_STOPPED),
        "volume_unlocked" => Some(message_id::VOLUME_UNLOCKED),
        "volume_locked" => Some(message_id::VOLUME_LOCKED),
        "volume_unlock_failed" => Some(message_id::VOLUME_UNLOCK_FAILED),
        "key_rotated" => Some(message_id::KEY_ROTATED),
        "key_revoked" => Some(message_id::KEY_REVOKED),
        "collector_down" | "audit_destination_down" => Some(message_id::COLLECTOR_DOWN),
        "collector_up" | "audit_destination_back" => Some(message_id::COLLECTOR_UP),
        "audit_spool_near_full" => Some(message_id::SPOOL_NEAR_FULL),
        "signing_refused" => Some(message_id::SIGNING_REFUSED),
        "guard_disarmed" => Some(message_id::GUARD_DISARMED),
        "trust_key_refused" => Some(message_id::TRUST_KEY_REFUSED),
        _ => None,
    };
    match known {
        Some(id) => id.to_owned(),
        None => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(format!("guard-audit-kind:{kind}").as_bytes());
            hex::encode(&digest[..16])
        }
    }
}

/// syslog severity of a record's kind, as the journal's `PRIORITY`.
pub fn journal_priority(kind: &str) -> &'static str {
    let kind = kind.replace('-', "_");
    if kind.starts_with("audit_") || kind.ends_with("_failed") {
        "3"
    } else if kind == "denied" || kind == "would_deny" || kind.ends_with("_refused") {
        "4"
    } else {
        "5"
    }
}

/// A one-line summary: `guard <kind> seq=N key=value ...` (keys sorted).
pub fn journal_message(record: &Record) -> String {
    let mut text = format!("guard {} seq={}", record.kind(), record.seq);
    if let Some(fields) = record.event.as_object() {
        let mut keys: Vec<&String> = fields.keys().filter(|k| *k != "kind").collect();
        keys.sort();
        for key in keys {
            match &fields[key] {
                Value::String(s) => text.push_str(&format!(" {key}={s:?}")),
                other => text.push_str(&format!(" {key}={other}")),
            }
        }
    }
    text
}

/// `GUARD_` + the key in upper case, other characters as `_`; None if the
/// result is not a valid journal field name.
fn field_name(key: &str) -> Option<String> {
    let name: String = std::iter::once("GUARD_".to_owned())
        .chain(key.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase().to_string()
            } else {
                "_".to_owned()
            }
        }))
        .collect();
    (name.len() <= 64 && !key.is_empty()).then_some(name)
}

/// The journal entry of a record: (field, value) pairs.
pub fn journal_fields(record: &Record) -> Vec<(String, String)> {
    let kind = record.kind();
    let mut fields = vec![
        ("MESSAGE".to_owned(), journal_message(record)),
        ("MESSAGE_ID".to_owned(), journal_message_id(kind)),
        ("PRIORITY".to_owned(), journal_priority(kind).to_owned()),
        ("SYSLOG_IDENTIFIER".to_owned(), "guardd".to_owned()),
        ("GUARD_KIND".to_owned(), kind.to_owned()),
    ];
    if let Some(event) = record.event.as_object() {
        let mut keys: Vec<&String> = event.keys().filter(|k| *k != "kind").collect();
        keys.sort();
        for key in keys {
            let Some(name) = field_name(key) else {
                continue;
            };
            if name.starts_with("GUARD_AUDIT_") || name == "GUARD_KIND" {
                continue; // reserved for the chain link below
            }
            let value = match &event[key] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            fields.push((name, value));
        }
    }
    fields.push(("GUARD_AUDIT_SEQ".to_owned(), record.seq.to_string()));
    fields.push(("GUARD_AUDIT_HASH".to_owned(), hex::encode(record.hash)));
    fields
}

/// Writes every durable record to the journal.
pub struct JournalSink {
    journal: Journal,
}

impl JournalSink {
    /// Connects to journald's native socket.
    pub fn connect() -> anyhow::Result<JournalSink> {
        Ok(JournalSink {
            journal: Journal::connect().context("connecting to journald")?,
        })
    }

    pub fn new(journal: Journal) -> JournalSink {
        JournalSink { journal }
    }
}

impl RecordSink for JournalSink {
    fn deliver(&mut self, records: &[Record]) -> anyhow::Result<()> {
        for record in records {
            let fields = journal_fields(record);
            let refs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.journal
                .send(&refs)
                .with_context(|| format!("writing audit record {} to the journal", record.seq))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::GENESIS;
    use serde_json::json;

    #[test]
    fn a_decision_renders_with_the_journal_module_names() {
        let record = Record::new(
            9,
            1,
            "db1",
            json!({"kind":"denied","path":"/var/lib/mysql/x","inode":12,"exe":"/usr/bin/cat","rule":"default-deny"}),
            GENESIS,
        );
        let fields = journal_fields(&record);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("MESSAGE_ID"), Some(message_id::DENIED));
        assert_eq!(get("PRIORITY"), Some("4"));
        assert_eq!(get(crate::journal::field::PATH), Some("/var/lib/mysql/x"));
        assert_eq!(get(crate::journal::field::INODE), Some("12"));
        assert_eq!(get(crate::journal::field::EXE), Some("/usr/bin/cat"));
        assert_eq!(get("GUARD_AUDIT_SEQ"), Some("9"));
        assert_eq!(
            get("GUARD_AUDIT_HASH"),
            Some(hex::encode(record.hash).as_str())
        );
        assert_eq!(
            get("MESSAGE"),
            Some(
                r#"guard denied seq=9 exe="/usr/bin/cat" inode=12 path="/var/lib/mysql/x" rule="default-deny""#
            )
        );
        for (name, _) in &fields {
            crate::journal::check_field_name(name).unwrap();
        }
        assert_eq!(
            journal_message_id("my_new_kind"),
            journal_message_id("my_new_kind")
        );
        assert_eq!(journal_message_id("my_new_kind").len(), 32);
    }
}
