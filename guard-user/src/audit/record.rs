//! One record of the hash-chained audit log, its canonical encoding and hash.
//!
//! A record is stored as one JSON line whose fields always come in this order:
//!
//! ```text
//! {"seq":7,"time_ns":1764427140123456789,"host":"db1","event":{...},"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! The event is written in canonical JSON (object keys sorted by their UTF-8
//! bytes, no whitespace, serde_json's number and string encoding), so every
//! copy of a record is byte-identical and re-parsing never changes its hash.
//!
//! `hash` = SHA-256 over this fixed byte encoding (integers big-endian):
//!
//! ```text
//! "guard-audit-record-v1\0"
//! u64 seq | i64 time_ns | u32 len(host) | host | prev (32 bytes) | u64 len(event) | canonical event
//! ```
//!
//! The first record has `seq` 1 and `prev` = 32 zero bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Position of a record in a host's chain; the first record is 1.
pub type Seq = u64;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `prev` of the first record.
pub const GENESIS: Hash = [0; 32];

const RECORD_DOMAIN: &[u8] = b"guard-audit-record-v1\0";
const CONTENT_DOMAIN: &[u8] = b"guard-audit-content-v1\0";

/// The longest record line accepted anywhere (reader, collector, verifier).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why a record line is not a valid record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("line is {0} bytes, longer than the {MAX_LINE_BYTES}-byte limit")]
    TooLong(usize),
    #[error("field `{0}` is not 64 hex digits")]
    BadHex(&'static str),
    #[error("the event is not a JSON object with a string `kind`")]
    BadEvent,
    #[error("the host name is empty or has characters other than [A-Za-z0-9._-]")]
    BadHost,
    #[error("seq is 0; the first record is 1")]
    ZeroSeq,
    #[error("stored hash {stored} does not match the record's content (computed {computed})")]
    HashMismatch { stored: String, computed: String },
    #[error("the line is not in canonical form (fields reordered or re-encoded)")]
    NotCanonical,
}

/// One audit record, as stored and as sent to every destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: Seq,
    pub time_ns: i64,
    pub host: String,
    pub event: Value,
    pub prev: Hash,
    pub hash: Hash,
}

/// The JSON shape of a record line (field order fixed by declaration order).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine<'a> {
    seq: Seq,
    time_ns: i64,
    #[serde(borrow)]
    host: std::borrow::Cow<'a, str>,
    event: Value,
    prev: std::borrow::Cow<'a, str>,
    hash: std::borrow::Cow<'a, str>,
}

impl Record {
    /// Builds the record that follows `prev` and computes its hash.
    pub fn new(seq: Seq, time_ns: i64, host: &str, event: Value, prev: Hash) -> Record {
        Record::build(seq, time_ns, host, event, prev).0
    }

    /// Like `new`, also returning the record's line; the event is
    /// canonicalized once for both (the writer's hot path).
    pub fn build(seq: Seq, time_ns: i64, host: &str, event: Value, prev: Hash) -> (Record, String) {
        let canonical = canonical_json(&event);
        let hash = record_hash(seq, time_ns, host, &prev, &canonical);
        let record = Record {
            seq,
            time_ns,
            host: host.to_owned(),
            event,
            prev,
            hash,
        };
        let line = record.line_with(&canonical);
        (record, line)
    }

    /// The record's line, without the trailing newline.
    pub fn to_line(&self) -> String {
        self.line_with(&canonical_json(&self.event))
    }

    fn line_with(&self, canonical_event: &[u8]) -> String {
        let mut out = String::with_capacity(canonical_event.len() + 220);
        out.push_str("{\"seq\":");
        out.push_str(&self.seq.to_string());
        out.push_str(",\"time_ns\":");
        out.push_str(&self.time_ns.to_string());
        out.push_str(",\"host\":");
        out.push_str(&Value::String(self.host.clone()).to_string());
        out.push_str(",\"event\":");
        // Canonical JSON is valid UTF-8: it is built from serde_json output.
        out.push_str(std::str::from_utf8(canonical_event).unwrap_or_default());
        out.push_str(",\"prev\":\"");
        push_hex(&mut out, &self.prev);
        out.push_str("\",\"hash\":\"");
        push_hex(&mut out, &self.hash);
        out.push_str("\"}");
        out
    }

    /// Parses a record line and checks its shape, but not its hash.
    pub fn parse_unchecked(line: &[u8]) -> Result<Record, RecordError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(RecordError::TooLong(line.len()));
        }
        let raw: RecordLine =
            serde_json::from_slice(line).map_err(|e| RecordError::Json(e.to_string()))?;
        if raw.seq == 0 {
            return Err(RecordError::ZeroSeq);
        }
        if !valid_host(&raw.host) {
            return Err(RecordError::BadHost);
        }
        if event_kind(&raw.event).is_none() {
            return Err(RecordError::BadEvent);
        }
        Ok(Record {
            seq: raw.seq,
            time_ns: raw.time_ns,
            host: raw.host.into_owned(),
            event: raw.event,
            prev: parse_hash(&raw.prev).ok_or(RecordError::BadHex("prev"))?,
            hash: parse_hash(&raw.hash).ok_or(RecordError::BadHex("hash"))?,
        })
    }

    /// Parses a record line and checks that its stored hash matches its content
    /// and that the line is in canonical form.
    pub fn parse(line: &[u8]) -> Result<Record, RecordError> {
        let record = Record::parse_unchecked(line)?;
        let canonical = canonical_json(&record.event);
        let computed = record_hash(
            record.seq,
            record.time_ns,
            &record.host,
            &record.prev,
            &canonical,
        );
        if computed != record.hash {
            return Err(RecordError::HashMismatch {
                stored: hex::encode(record.hash),
                computed: hex::encode(computed),
            });
        }
        if record.line_with(&canonical).as_bytes() != line {
            return Err(RecordError::NotCanonical);
        }
        Ok(record)
    }

    /// Recomputes the hash and compares it with the stored one.
    pub fn check_hash(&self) -> Result<(), RecordError> {
        let computed = self.computed_hash();
        if computed != self.hash {
            return Err(RecordError::HashMismatch {
                stored: hex::encode(self.hash),
                computed: hex::encode(computed),
            });
        }
        Ok(())
    }

    /// The hash this record's content gives (whatever its stored hash says).
    pub fn computed_hash(&self) -> Hash {
        record_hash(
            self.seq,
            self.time_ns,
            &self.host,
            &self.prev,
            &canonical_json(&self.event),
        )
    }

    /// A digest of what the record says (time, host, event) without its
    /// position in the chain: two copies that hold the same entry at different
    /// positions have the same content digest. The verifier aligns copies by it.
    pub fn content_digest(&self) -> Hash {
        let event = canonical_json(&self.event);
        let mut h = Sha256::new();
        h.update(CONTENT_DOMAIN);
        h.update(self.time_ns.to_be_bytes());
        h.update((self.host.len() as u32).to_be_bytes());
        h.update(self.host.as_bytes());
        h.update((event.len() as u64).to_be_bytes());
        h.update(&event);
        h.finalize().into()
    }

    /// The event's `kind` (every stored event has one).
    pub fn kind(&self) -> &str {
        event_kind(&self.event).unwrap_or("unknown")
    }
}

/// The record hash over the fixed byte encoding documented at the top of this module.
pub fn record_hash(seq: Seq, time_ns: i64, host: &str, prev: &Hash, event: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(time_ns.to_be_bytes());
    h.update((host.len() as u32).to_be_bytes());
    h.update(host.as_bytes());
    h.update(prev);
    h.update((event.len() as u64).to_be_bytes());
    h.update(event);
    h.finalize().into()
}

/// The event's `kind` field, if the event is an object with a non-empty string `kind`.
pub fn event_kind(event: &Value) -> Option<&str> {
    event
        .as_object()?
        .get("kind")?
        .as_str()
        .filter(|k| !k.is_empty())
}

/// Host names are restricted so they are safe as file names and syslog HOSTNAMEs.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host != "."
        && host != ".."
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses 64 lowercase or uppercase hex digits into a hash.
pub fn parse_hash(text: &str) -> Option<Hash> {
    // Hand-rolled: on the collector's hot path the `hex` crate's decoder
    // cost more than the SHA-256 of the record.
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Appends lowercase hex of `bytes` (as `hex::encode`, without its per-char iterator).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace.
/// Written by hand (not `serde_json::to_vec`) so the order does not depend on
/// whether some crate in the build enables serde_json's `preserve_order`.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Serializing a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                write_canonical(val, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Record {
        Record::new(
            1,
            1_764_427_140_123_456_789,
            "db1",
            json!({"kind":"denied","path":"/var/lib/mysql/x","pid":42,"b":[1,{"z":1,"a":2}]}),
            GENESIS,
        )
    }

    #[test]
    fn hex_helpers_match_the_hex_crate() {
        let bytes: Hash = std::array::from_fn(|i| (i * 37 + 5) as u8);
        let mut text = String::new();
        push_hex(&mut text, &bytes);
        assert_eq!(text, hex::encode(bytes));
        assert_eq!(parse_hash(&text), Some(bytes));
        assert_eq!(parse_hash(&text.to_uppercase()), Some(bytes));
        assert_eq!(parse_hash(&text[1..]), None);
        assert_eq!(parse_hash(&text.replace('a', "g")), None);
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v = json!({"b":1,"a":{"d":[{"y":1,"x":2}],"c":"é\n"}});
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":"é\n","d":[{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn line_round_trips_and_keeps_its_hash() {
        let r = sample();
        let line = r.to_line();
        assert!(line.starts_with(r#"{"seq":1,"time_ns":1764427140123456789,"host":"db1","event":{"b":[1,{"a":2,"z":1}],"kind":"denied""#));
        let back = Record::parse(line.as_bytes()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_changed_event_no_longer_matches_its_hash() {
        let line = sample().to_line().replace("\"pid\":42", "\"pid\":43");
        assert!(matches!(
            Record::parse(line.as_bytes()),
            Err(RecordError::HashMismatch { .. })
        ));
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let r = sample();
        let base = r.hash;
        let mut t = r.clone();
        t.seq = 2;
        assert_ne!(t.computed_hash(), base);
        let mut t = r.clone();
        t.time_ns += 1;
        assert_ne!(t.computed_hash(), base);
        let mut t = r.clone();
        t.host = "db2".into();
        assert_ne!(t.computed_hash(), base);
        let mut t = r.clone();
        t.prev = [1; 32];
        assert_ne!(t.computed_hash(), base);
    }

    #[test]
    fn bad_lines_get_named_errors() {
        assert!(matches!(
            Record::parse(b"not json"),
            Err(RecordError::Json(_))
        ));
        let no_kind = sample()
            .to_line()
            .replace("\"kind\":\"denied\"", "\"kinx\":\"denied\"");
        assert_eq!(
            Record::parse(no_kind.as_bytes()),
            Err(RecordError::BadEvent)
        );
        let bad_hex = sample().to_line().replace("\"prev\":\"00", "\"prev\":\"zz");
        assert_eq!(
            Record::parse(bad_hex.as_bytes()),
            Err(RecordError::BadHex("prev"))
        );
        let spaced = sample().to_line().replace("\"seq\":1", "\"seq\": 1");
        assert_eq!(
            Record::parse(spaced.as_bytes()),
            Err(RecordError::NotCanonical)
        );
        let extra = sample()
            .to_line()
            .replace("{\"seq\":1", "{\"x\":1,\"seq\":1");
        assert!(matches!(
            Record::parse(extra.as_bytes()),
            Err(RecordError::Json(_))
        ));
        assert!(!valid_host("../etc"));
        assert!(valid_host("db-1.example.org"));
    }
}
