//! `guardctl log verify`: checks copies of a host's audit log and compares them.
//!
//! Each copy (the local log or a collector's store for the host) is checked
//! on its own: every record line parses and its hash matches its content,
//! seqs run 1, 2, 3, ... and each `prev` is the hash of the record before,
//! every checkpoint is signed by the host key and matches the record it names,
//! every receipt is signed by its collector and matches too. Then every pair of
//! copies is compared record by record, and differences are classified:
//! changed, deleted, inserted, reordered, tail truncated, behind (not yet
//! delivered, not an error), or unrelated (rewritten from scratch).
//!
//! Records are aligned by a content digest (time, host, event; not seq or
//! hashes), so a record deleted and the chain re-hashed after it still shows
//! as one deletion, not as every later record changed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use similar::{capture_diff_deadline, Algorithm, DiffOp};

use super::chain::{CHECKPOINTS_FILE, HOST_KEY_FILE, RECEIPTS_FILE, RECORDS_FILE};
use super::checkpoint::{parse_verifying_key, Checkpoint, Receipt};
use super::record::{Hash, Record, RecordError, Seq, GENESIS, MAX_LINE_BYTES};

/// Whether a copy is the host's own or held elsewhere; decides whether a
/// missing tail means "truncated" (local) or "not delivered yet" (remote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Local,
    Remote,
}

/// One copy to verify.
#[derive(Debug, Clone)]
pub struct CopySpec {
    pub label: String,
    /// A copy directory, or its `records.jsonl`.
    pub path: PathBuf,
    pub role: Role,
}

/// Keys the verifier trusts, when known out of band.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub host_key: Option<VerifyingKey>,
    /// If non-empty, receipts must be signed by one of these.
    pub collector_keys: Vec<VerifyingKey>,
}

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    Unreadable,
    Malformed,
    TruncatedLine,
    NotCanonical,
    HashMismatch,
    SeqOutOfOrder,
    BrokenLink,
    HostMismatch,
    KeyMismatch,
    BadSignature,
    CheckpointMismatch,
    TailTruncated,
    ReceiptMismatch,
    UntrustedCollector,
    Changed,
    Deleted,
    Inserted,
    Reordered,
    Unrelated,
}

/// One problem, where it is, and what it means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub problem: Problem,
    /// The copy (or "A vs B" comparison) it was found in.
    pub copy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub detail: String,
}

/// Summary of one copy.
#[derive(Debug, Clone, Serialize)]
pub struct CopySummary {
    pub label: String,
    pub path: PathBuf,
    pub role: Role,
    pub records: u64,
    pub head_seq: Seq,
    pub head_hash: String,
    pub checkpoints: u64,
    pub receipts: u64,
    pub problems: usize,
}

/// Information that is not a problem (e.g. a collector not yet caught up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub copy: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub copies: Vec<CopySummary>,
    pub findings: Vec<Finding>,
    pub notes: Vec<Note>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for copy in &self.copies {
            out.push_str(&format!(
                "{} ({}, {}): {} records, head seq {} {}, {} checkpoints, {} receipts: {}\n",
                copy.label,
                match copy.role {
                    Role::Local => "local",
                    Role::Remote => "remote",
                },
                copy.path.display(),
                copy.records,
                copy.head_seq,
                short(&copy.head_hash),
                copy.checkpoints,
                copy.receipts,
                if copy.problems == 0 {
                    "ok".to_owned()
                } else {
                    format!("{} problem(s)", copy.problems)
                }
            ));
        }
        for finding in &self.findings {
            out.push_str(&format!(
                "PROBLEM [{}] {}",
                problem_name(finding.problem),
                finding.copy
            ));
            if let Some(seq) = finding.seq {
                out.push_str(&format!(" seq {seq}"));
            }
            if let Some(line) = finding.line {
                out.push_str(&format!(" line {line}"));
            }
            out.push_str(&format!(": {}\n", finding.detail));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {}: {}\n", note.copy, note.detail));
        }
        if self.ok() {
            out.push_str("result: OK, every copy is intact and they agree\n");
        } else {
            out.push_str(&format!(
                "result: TAMPERING OR DAMAGE DETECTED ({} problem(s))\n",
                self.findings.len()
            ));
        }
        out
    }
}

fn problem_name(problem: Problem) -> String {
    serde_json::to_value(problem)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// At most this many findings of one problem kind per copy are listed.
const MAX_FINDINGS_PER_KIND: usize = 20;

/// A record of a copy, as the comparison needs it.
#[derive(Debug, Clone)]
struct Entry {
    seq: Seq,
    hash: Hash,
    content: Hash,
    /// Where the line is in `records.jsonl`, to show it when it differs
    /// (events are not kept in memory: logs can hold millions of records).
    offset: u64,
}

struct Copy {
    spec: CopySpec,
    dir: PathBuf,
    records_path: PathBuf,
    entries: Vec<Entry>,
    by_seq: HashMap<Seq, usize>,
    findings: Vec<Finding>,
    suppressed: HashMap<Problem, usize>,
    checkpoints: u64,
    receipts: u64,
    host: Option<String>,
}

impl Copy {
    fn find(&mut self, problem: Problem, seq: Option<Seq>, line: Option<u64>, detail: String) {
        let same = self
            .findings
            .iter()
            .filter(|f| f.problem == problem)
            .count();
        if same >= MAX_FINDINGS_PER_KIND {
            *self.suppressed.entry(problem).or_default() += 1;
            return;
        }
        self.findings.push(Finding {
            problem,
            copy: self.spec.label.clone(),
            seq,
            line,
            detail,
        });
    }

    fn record_at(&self, seq: Seq) -> Option<&Entry> {
        self.by_seq.get(&seq).map(|&i| &self.entries[i])
    }

    fn last_seq(&self) -> Seq {
        self.entries.last().map(|e| e.seq).unwrap_or(0)
    }
}

/// Verifies every copy and compares every pair.
pub fn verify(specs: &[CopySpec], trust: &Trust) -> Report {
    let mut copies: Vec<Copy> = specs.iter().map(|s| load_copy(s.clone(), trust)).collect();
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let mut summaries = Vec::new();
    for copy in &mut copies {
        for (problem, count) in std::mem::take(&mut copy.suppressed) {
            copy.findings.push(Finding {
                problem,
                copy: copy.spec.label.clone(),
                seq: None,
                line: None,
                detail: format!("... and {count} more of this kind"),
            });
        }
        let head = copy.entries.last();
        summaries.push(CopySummary {
            label: copy.spec.label.clone(),
            path: copy.spec.path.clone(),
            role: copy.spec.role,
            records: copy.entries.len() as u64,
            head_seq: copy.last_seq(),
            head_hash: hex::encode(head.map(|e| e.hash).unwrap_or(GENESIS)),
            checkpoints: copy.checkpoints,
            receipts: copy.receipts,
            problems: copy.findings.len(),
        });
        findings.append(&mut copy.findings);
    }
    for i in 0..copies.len() {
        for j in i + 1..copies.len() {
            // The local copy is the one under suspicion: compare it against the remote.
            let (reference, subject) = if copies[i].spec.role == Role::Local {
                (&copies[j], &copies[i])
            } else {
                (&copies[i], &copies[j])
            };
            let first_new = findings.len();
            compare(reference, subject, &mut findings, &mut notes);
            findings[first_new..].sort_by_key(|f| f.seq);
        }
    }
    if let Some(summary) = rewritten_summary(&copies, &findings) {
        notes.push(summary);
    }
    Report {
        copies: summaries,
        findings,
        notes,
    }
}

/// Says plainly when the local log agrees with no remote copy while the
/// remote copies agree with each other.
fn rewritten_summary(copies: &[Copy], findings: &[Finding]) -> Option<Note> {
    let local = copies.iter().find(|c| c.spec.role == Role::Local)?;
    let remotes: Vec<&Copy> = copies
        .iter()
        .filter(|c| c.spec.role == Role::Remote)
        .collect();
    if remotes.is_empty() {
        return None;
    }
    let unrelated = remotes.iter().all(|r| {
        findings.iter().any(|f| {
            f.problem == Problem::Unrelated
                && (f.copy == pair_label(&local.spec.label, &r.spec.label)
                    || f.copy == pair_label(&r.spec.label, &local.spec.label))
        })
    });
    unrelated.then(|| Note {
        copy: local.spec.label.clone(),
        detail: format!(
            "the local log matches none of the {} remote copies: it was rewritten from scratch",
            remotes.len()
        ),
    })
}

fn resolve_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

fn load_copy(spec: CopySpec, trust: &Trust) -> Copy {
    let dir = resolve_dir(&spec.path);
    let records_path = if spec.path.is_dir() {
        spec.path.join(RECORDS_FILE)
    } else {
        spec.path.clone()
    };
    let mut copy = Copy {
        spec,
        dir,
        records_path: records_path.clone(),
        entries: Vec::new(),
        by_seq: HashMap::new(),
        findings: Vec::new(),
        suppressed: HashMap::new(),
        checkpoints: 0,
        receipts: 0,
        host: None,
    };
    match File::open(&records_path) {
        Ok(file) => read_records(&mut copy, file),
        Err(e) => {
            let detail = format!("cannot read {}: {e}", records_path.display());
            copy.find(Problem::Unreadable, None, None, detail);
            return copy;
        }
    }
    let host_key = host_key_for(&mut copy, trust);
    check_checkpoints(&mut copy, host_key.as_ref());
    check_receipts(&mut copy, host_key.as_ref(), trust);
    copy
}

/// Reads lines of at most `MAX_LINE_BYTES` (longer ones are reported and skipped).
enum Line {
    Complete(Vec<u8>),
    Unterminated(Vec<u8>),
    TooLong(usize),
}

fn next_line(reader: &mut impl BufRead) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 2)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(Line::Complete(buf)));
    }
    if buf.len() > MAX_LINE_BYTES {
        // Skip the rest of the over-long line.
        let mut skipped = buf.len();
        loop {
            let available = reader.fill_buf()?;
            if available.is_empty() {
                break;
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    skipped += pos;
                    reader.consume(pos + 1);
                    break;
                }
                None => {
                    let len = available.len();
                    skipped += len;
                    reader.consume(len);
                }
            }
        }
        return Ok(Some(Line::TooLong(skipped)));
    }
    Ok(Some(Line::Unterminated(buf)))
}

fn read_records(copy: &mut Copy, file: File) {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line_no = 0u64;
    let mut offset = 0u64;
    let mut prev: Option<(Seq, Hash)> = None;
    loop {
        let line = match next_line(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                copy.find(
                    Problem::Unreadable,
                    None,
                    Some(line_no + 1),
                    format!("read error: {e}"),
                );
                break;
            }
        };
        line_no += 1;
        let line_offset = offset;
        let bytes = match line {
            Line::Complete(bytes) => {
                offset += bytes.len() as u64 + 1;
                bytes
            }
            Line::Unterminated(bytes) => {
                let detail = format!(
                    "the file ends in the middle of a line ({} bytes without a newline): \
                     the file was truncated or its last write was cut short",
                    bytes.len()
                );
                copy.find(Problem::TruncatedLine, None, Some(line_no), detail);
                break;
            }
            Line::TooLong(len) => {
                offset += len as u64 + 1;
                let detail = format!("a {len}-byte line: not a record (limit {MAX_LINE_BYTES})");
                copy.find(Problem::Malformed, None, Some(line_no), detail);
                continue;
            }
        };
        let record = match Record::parse_unchecked(&bytes) {
            Ok(record) => record,
            Err(e) => {
                copy.find(
                    Problem::Malformed,
                    None,
                    Some(line_no),
                    format!("not a record: {e}"),
                );
                continue;
            }
        };
        check_record(copy, &record, &bytes, line_no, prev);
        prev = Some((record.seq, record.hash));
        if copy.by_seq.contains_key(&record.seq) {
            // Already reported as out of order; keep the first for comparison.
            continue;
        }
        copy.by_seq.insert(record.seq, copy.entries.len());
        copy.entries.push(Entry {
            seq: record.seq,
            hash: record.hash,
            content: record.content_digest(),
            offset: line_offset,
        });
    }
}

fn check_record(
    copy: &mut Copy,
    record: &Record,
    bytes: &[u8],
    line: u64,
    prev: Option<(Seq, Hash)>,
) {
    let seq = Some(record.seq);
    match &copy.host {
        None => copy.host = Some(record.host.clone()),
        Some(host) if host != &record.host => {
            let detail = format!("host is {:?}, earlier records say {host:?}", record.host);
            copy.find(Problem::HostMismatch, seq, Some(line), detail);
        }
        Some(_) => {}
    }
    if let Err(RecordError::HashMismatch { stored, computed }) = record.check_hash() {
        let detail = format!(
            "record altered: its content hashes to {} but its stored hash is {}",
            short(&computed),
            short(&stored)
        );
        copy.find(Problem::HashMismatch, seq, Some(line), detail);
    } else if record.to_line().as_bytes() != bytes {
        let detail = "record re-encoded: same content, but not the bytes that were written".into();
        copy.find(Problem::NotCanonical, seq, Some(line), detail);
    }
    let (prev_seq, prev_hash) = prev.unwrap_or((0, GENESIS));
    if record.seq != prev_seq + 1 {
        let detail = if record.seq > prev_seq + 1 {
            format!(
                "seq {} follows seq {prev_seq}: records {}..={} are missing (deleted) or moved",
                record.seq,
                prev_seq + 1,
                record.seq - 1
            )
        } else {
            format!(
                "seq {} follows seq {prev_seq}: records are out of order (reordered or inserted)",
                record.seq
            )
        };
        copy.find(Problem::SeqOutOfOrder, seq, Some(line), detail);
    } else if record.prev != prev_hash {
        let detail = format!(
            "prev is {} but record {prev_seq} hashes to {}: a record before it was changed, \
             removed or inserted",
            short(&hex::encode(record.prev)),
            short(&hex::encode(prev_hash))
        );
        copy.find(Problem::BrokenLink, seq, Some(line), detail);
    }
}

/// The host key to check signatures with: the trusted one if given, else the
/// copy's `host.pub`, else the key of its first checkpoint.
fn host_key_for(copy: &mut Copy, trust: &Trust) -> Option<VerifyingKey> {
    let path = copy.dir.join(HOST_KEY_FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => match parse_verifying_key(text.trim()) {
            Ok(key) => Some(key),
            Err(e) => {
                copy.find(
                    Problem::Malformed,
                    None,
                    None,
                    format!("{}: {e:#}", path.display()),
                );
                None
            }
        },
        Err(_) => None,
    };
    match (trust.host_key, stored) {
        (Some(trusted), Some(stored)) if trusted != stored => {
            let detail = format!(
                "{} holds key {}, not the trusted host key {}",
                path.display(),
                hex::encode(stored.as_bytes()),
                hex::encode(trusted.as_bytes())
            );
            copy.find(Problem::KeyMismatch, None, None, detail);
            Some(trusted)
        }
        (Some(trusted), _) => Some(trusted),
        (None, stored) => stored,
    }
}

fn read_side_file(copy: &mut Copy, name: &str) -> Vec<(u64, Vec<u8>)> {
    let path = copy.dir.join(name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            copy.find(
                Problem::Unreadable,
                None,
                None,
                format!("cannot read {}: {e}", path.display()),
            );
            return Vec::new();
        }
    };
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut line_no = 0;
    loop {
        match next_line(&mut reader) {
            Ok(Some(Line::Complete(bytes))) => {
                line_no += 1;
                lines.push((line_no, bytes));
            }
            Ok(Some(Line::Unterminated(bytes))) => {
                let detail = format!(
                    "{name} ends in the middle of a line ({} bytes)",
                    bytes.len()
                );
                copy.find(Problem::TruncatedLine, None, Some(line_no + 1), detail);
                break;
            }
            Ok(Some(Line::TooLong(len))) => {
                line_no += 1;
                copy.find(
                    Problem::Malformed,
                    None,
                    Some(line_no),
                    format!("{name}: a {len}-byte line"),
                );
            }
            Ok(None) => break,
            Err(e) => {
                copy.find(Problem::Unreadable, None, None, format!("{name}: {e}"));
                break;
            }
        }
    }
    lines
}

/// Checks that a signed statement about (seq, head) matches this copy's chain.
fn check_statement(copy: &mut Copy, what: &str, cp: &Checkpoint, line: u64, mismatch: Problem) {
    let last = copy.last_seq();
    if copy.host.as_deref().is_some_and(|h| h != cp.host) {
        let detail = format!(
            "{what} is for host {:?}, the records for {:?}",
            cp.host, copy.host
        );
        copy.find(Problem::HostMismatch, Some(cp.seq), Some(line), detail);
        return;
    }
    if cp.seq > last {
        let detail = format!(
            "{what} was signed for seq {} but the log ends at seq {last}: \
             the tail was truncated ({} record(s) removed)",
            cp.seq,
            cp.seq - last
        );
        copy.find(Problem::TailTruncated, Some(cp.seq), Some(line), detail);
        return;
    }
    let Some(record_hash) = copy.record_at(cp.seq).map(|e| e.hash) else {
        return; // the missing record is already reported
    };
    if hex::encode(record_hash) != cp.head {
        let detail = format!(
            "{what} says record {} hashes to {}, this copy's record {} hashes to {}: \
             the log up to seq {} was changed after it was signed",
            cp.seq,
            short(&cp.head),
            cp.seq,
            short(&hex::encode(record_hash)),
            cp.seq
        );
        copy.find(mismatch, Some(cp.seq), Some(line), detail);
    }
}

fn check_checkpoints(copy: &mut Copy, host_key: Option<&VerifyingKey>) {
    let mut key = host_key.copied();
    for (line, bytes) in read_side_file(copy, CHECKPOINTS_FILE) {
        let cp: Checkpoint = match serde_json::from_slice(&bytes) {
            Ok(cp) => cp,
            Err(e) => {
                copy.find(
                    Problem::Malformed,
                    None,
                    Some(line),
                    format!("{CHECKPOINTS_FILE}: not a checkpoint: {e}"),
                );
                continue;
            }
        };
        copy.checkpoints += 1;
        if key.is_none() {
            key = parse_verifying_key(&cp.key).ok();
        }
        if let Err(e) = cp.verify(key.as_ref()) {
            let detail = format!("checkpoint signature invalid: {e}");
            copy.find(Problem::BadSignature, Some(cp.seq), Some(line), detail);
            continue;
        }
        check_statement(
            copy,
            "the host's checkpoint",
            &cp,
            line,
            Problem::CheckpointMismatch,
        );
    }
}

fn check_receipts(copy: &mut Copy, host_key: Option<&VerifyingKey>, trust: &Trust) {
    for (line, bytes) in read_side_file(copy, RECEIPTS_FILE) {
        let receipt: Receipt = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                copy.find(
                    Problem::Malformed,
                    None,
                    Some(line),
                    format!("{RECEIPTS_FILE}: not a receipt: {e}"),
                );
                continue;
            }
        };
        copy.receipts += 1;
        let seq = Some(receipt.checkpoint.seq);
        if let Err(e) = receipt.verify(None, host_key) {
            let detail = format!(
                "receipt from collector {:?} invalid: {e}",
                receipt.collector
            );
            copy.find(Problem::BadSignature, seq, Some(line), detail);
            continue;
        }
        if !trust.collector_keys.is_empty()
            && !trust
                .collector_keys
                .iter()
                .any(|k| hex::encode(k.as_bytes()) == receipt.collector_key)
        {
            let detail = format!(
                "receipt signed by {} (claims to be collector {:?}), which is not a trusted collector key",
                receipt.collector_key, receipt.collector
            );
            copy.find(Problem::UntrustedCollector, seq, Some(line), detail);
            continue;
        }
        let what = format!("collector {:?}'s receipt", receipt.collector);
        check_statement(
            copy,
            &what,
            &receipt.checkpoint,
            line,
            Problem::ReceiptMismatch,
        );
    }
}

fn pair_label(a: &str, b: &str) -> String {
    format!("{a} vs {b}")
}

/// The record as the report shows it, read back from its copy.
fn describe(copy: &Copy, entry: &Entry) -> String {
    let read = || -> Option<Record> {
        let mut file = File::open(&copy.records_path).ok()?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(entry.offset)).ok()?;
        let mut line = Vec::new();
        BufReader::new(file)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .ok()?;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Record::parse_unchecked(&line).ok()
    };
    let Some(record) = read() else {
        return format!("seq {} (no longer readable)", entry.seq);
    };
    let mut event = record.event.to_string();
    if event.len() > 160 {
        let cut = (0..=160)
            .rev()
            .find(|&i| event.is_char_boundary(i))
            .unwrap_or(0);
        event.truncate(cut);
        event.push_str("...");
    }
    format!(
        "seq {} {} at {} {}",
        record.seq,
        record.kind(),
        super::syslog::timestamp(record.time_ns),
        event
    )
}

/// Compares `subject` against `reference` (a remote copy is the reference
/// for the local one). `a` is the reference and `b` the subject below.
fn compare(a: &Copy, b: &Copy, findings: &mut Vec<Finding>, notes: &mut Vec<Note>) {
    let label = pair_label(&b.spec.label, &a.spec.label);
    let mut push = |problem: Problem, seq: Option<Seq>, detail: String| {
        let same = findings
            .iter()
            .filter(|f| f.copy == label && f.problem == problem)
            .count();
        if same < MAX_FINDINGS_PER_KIND {
            findings.push(Finding {
                problem,
                copy: label.clone(),
                seq,
                line: None,
                detail,
            });
        }
    };
    let (ea, eb) = (&a.entries, &b.entries);
    // Identical prefix: same position, same stored hash, same content.
    let prefix = ea
        .iter()
        .zip(eb.iter())
        .take_while(|(x, y)| x.hash == y.hash && x.seq == y.seq && x.content == y.content)
        .count();
    if prefix == ea.len() && prefix == eb.len() {
        return;
    }
    if prefix == ea.len() || prefix == eb.len() {
        tail_difference(a, b, prefix, &mut push, notes, &label);
        return;
    }
    let ca: Vec<Hash> = ea[prefix..].iter().map(|e| e.content).collect();
    let cb: Vec<Hash> = eb[prefix..].iter().map(|e| e.content).collect();
    let in_a: HashMap<Hash, usize> = ca
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, prefix + i))
        .collect();
    let in_b: HashMap<Hash, usize> = cb
        .iter()
        .enumerate()
        .map(|(j, c)| (*c, prefix + j))
        .collect();
    let common = cb.iter().filter(|c| in_a.contains_key(*c)).count();
    if prefix == 0 && common == 0 {
        let detail = format!(
            "no record of {} ({} records) appears in {} ({} records): one of them was rewritten from scratch",
            b.spec.label,
            eb.len(),
            a.spec.label,
            ea.len()
        );
        push(Problem::Unrelated, None, detail);
        return;
    }
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let ops = capture_diff_deadline(
        Algorithm::Myers,
        &ca,
        0..ca.len(),
        &cb,
        0..cb.len(),
        deadline,
    );
    let mut deleted: Vec<usize> = Vec::new();
    let mut inserted: Vec<usize> = Vec::new();
    let mut changed: Vec<(usize, usize)> = Vec::new();
    let mut rehashed = 0usize;
    for op in ops {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                rehashed += (0..len)
                    .filter(|k| {
                        let (x, y) = (&ea[prefix + old_index + k], &eb[prefix + new_index + k]);
                        x.seq != y.seq || x.hash != y.hash
                    })
                    .count();
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => deleted.extend((old_index..old_index + old_len).map(|i| prefix + i)),
            DiffOp::Insert {
                new_index, new_len, ..
            } => inserted.extend((new_index..new_index + new_len).map(|j| prefix + j)),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let paired = old_len.min(new_len);
                for k in 0..paired {
                    changed.push((prefix + old_index + k, prefix + new_index + k));
                }
                deleted.extend((old_index + paired..old_index + old_len).map(|i| prefix + i));
                inserted.extend((new_index + paired..new_index + new_len).map(|j| prefix + j));
            }
        }
    }
    // A record that is missing here but present elsewhere in the other copy
    // was moved: report it once, as reordered.
    let mut moved_a: HashSet<usize> = HashSet::new();
    let mut moved_b: HashSet<usize> = HashSet::new();
    let candidates = changed
        .iter()
        .map(|&(i, _)| i)
        .chain(deleted.iter().copied())
        .collect::<Vec<_>>();
    for i in candidates {
        if let Some(&j) = in_b.get(&ea[i].content) {
            if moved_a.insert(i) {
                moved_b.insert(j);
                let detail = format!(
                    "reordered: {}'s record seq {} is at seq {} in {}",
                    a.spec.label, ea[i].seq, eb[j].seq, b.spec.label
                );
                push(Problem::Reordered, Some(eb[j].seq), detail);
            }
        }
    }
    for &(_, j) in &changed {
        if let Some(&i) = in_a.get(&eb[j].content) {
            moved_b.insert(j);
            moved_a.insert(i);
        }
    }
    changed.retain(|(i, j)| !moved_a.contains(i) && !moved_b.contains(j));
    deleted.retain(|i| !moved_a.contains(i));
    inserted.retain(|j| !moved_b.contains(j) && !in_a.contains_key(&eb[*j].content));
    for (i, j) in changed {
        let detail = format!(
            "record changed: {} has [{}], {} has [{}]",
            b.spec.label,
            describe(b, &eb[j]),
            a.spec.label,
            describe(a, &ea[i])
        );
        push(Problem::Changed, Some(eb[j].seq), detail);
    }
    // Records past the other copy's last common record are a tail, not a deletion.
    let last_common_a = eb.iter().rev().find_map(|e| in_a.get(&e.content).copied());
    let last_common_b = ea.iter().rev().find_map(|e| in_b.get(&e.content).copied());
    let (tail_a, deleted): (Vec<usize>, Vec<usize>) = deleted
        .into_iter()
        .partition(|&i| last_common_a.is_some_and(|m| i > m));
    let (tail_b, inserted): (Vec<usize>, Vec<usize>) = inserted
        .into_iter()
        .partition(|&j| last_common_b.is_some_and(|m| j > m));
    for i in deleted {
        let detail = format!(
            "record deleted: {} has [{}], {} does not",
            a.spec.label,
            describe(a, &ea[i]),
            b.spec.label
        );
        push(Problem::Deleted, Some(ea[i].seq), detail);
    }
    for j in inserted {
        let detail = format!(
            "record inserted: {} has [{}], {} does not",
            b.spec.label,
            describe(b, &eb[j]),
            a.spec.label
        );
        push(Problem::Inserted, Some(eb[j].seq), detail);
    }
    if let Some(&first) = tail_a.first() {
        report_missing_tail(a, b, ea[first].seq, tail_a.len(), &mut push, notes, &label);
    }
    if let Some(&first) = tail_b.first() {
        report_missing_tail(b, a, eb[first].seq, tail_b.len(), &mut push, notes, &label);
    }
    if rehashed > 0 {
        notes.push(Note {
            copy: label.clone(),
            detail: format!(
                "{rehashed} later record(s) have the same content in both but a different seq or hash \
                 (the chain was re-hashed after the change)"
            ),
        });
    }
}

/// One copy is a strict prefix of the other.
fn tail_difference(
    a: &Copy,
    b: &Copy,
    prefix: usize,
    push: &mut impl FnMut(Problem, Option<Seq>, String),
    notes: &mut Vec<Note>,
    label: &str,
) {
    let (longer, shorter) = if a.entries.len() > prefix {
        (a, b)
    } else {
        (b, a)
    };
    let missing = longer.entries.len() - prefix;
    let first = longer.entries[prefix].seq;
    if a.entries.len() > prefix {
        report_missing_tail(a, b, first, missing, push, notes, label);
    } else {
        report_missing_tail(b, a, first, missing, push, notes, label);
    }
    let _ = shorter;
}

/// `short` lacks the last `count` records of `long`, from seq `first`.
fn report_missing_tail(
    long: &Copy,
    short: &Copy,
    first: Seq,
    count: usize,
    push: &mut impl FnMut(Problem, Option<Seq>, String),
    notes: &mut Vec<Note>,
    label: &str,
) {
    let range = format!("seq {first}..={}", first + count as u64 - 1);
    if short.spec.role == Role::Local {
        let detail = format!(
            "tail truncated: {} holds {count} record(s) ({range}) that the local log {} no longer has",
            long.spec.label, short.spec.label
        );
        push(Problem::TailTruncated, Some(first), detail);
    } else {
        notes.push(Note {
            copy: label.to_owned(),
            detail: format!(
                "{} is behind {} by {count} record(s) ({range}): not yet delivered",
                short.spec.label, long.spec.label
            ),
        });
    }
}
