//! The spool: the local chain file itself, plus one durable cursor per destination.
//!
//! Nothing is copied for a destination that is down: `records.jsonl` already
//! holds every record, fsynced, in order. Each destination keeps the seq it
//! has acknowledged in `cursors/<name>.seq` (replaced atomically), and delivery
//! resumes after it. The spool's size for a destination is the bytes of
//! `records.jsonl` past its cursor; it is bounded by `spool_limit_bytes`
//! (new records are refused beyond it, fail closed) and an alert is raised
//! when it passes `spool_alert_percent` of the bound.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::chain::{find_offset, write_file_atomic, RECORDS_FILE};
use super::record::Seq;

/// Live state of one destination, shared by its delivery task, the writer
/// (which enforces the spool bound) and `status()`.
#[derive(Debug)]
pub struct Destination {
    pub name: String,
    pub kind: DestinationKind,
    cursor_path: PathBuf,
    acked_seq: AtomicU64,
    /// Byte offset in `records.jsonl` just past the last acknowledged record.
    acked_offset: AtomicU64,
    connected: AtomicBool,
    receipts: AtomicU64,
    pub(crate) near_full_alerted: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The seq last written to the cursor file, and when.
    persisted: Mutex<(Seq, Instant)>,
}

/// How often a moving cursor is written to disk.
const CURSOR_PERSIST_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    Collector,
    Syslog,
}

/// A destination's state as `status()` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationStatus {
    pub name: String,
    pub kind: DestinationKind,
    pub connected: bool,
    pub acked_seq: Seq,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub receipts: u64,
    pub last_error: Option<String>,
}

impl Destination {
    /// Loads the destination's cursor from `dir/cursors/<name>.seq` (0 if none).
    pub fn load(dir: &Path, name: &str, kind: DestinationKind) -> anyhow::Result<Destination> {
        let cursors = dir.join("cursors");
        std::fs::create_dir_all(&cursors)
            .with_context(|| format!("creating {}", cursors.display()))?;
        let cursor_path = cursors.join(format!("{name}.seq"));
        let acked_seq = match std::fs::read_to_string(&cursor_path) {
            Ok(text) => text.trim().parse::<Seq>().with_context(|| {
                format!("cursor file {} is not a number", cursor_path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", cursor_path.display())),
        };
        let records = std::fs::File::open(dir.join(RECORDS_FILE))
            .with_context(|| format!("opening {}", dir.join(RECORDS_FILE).display()))?;
        let acked_offset = find_offset(&records, acked_seq + 1)?;
        Ok(Destination {
            name: name.to_owned(),
            kind,
            cursor_path,
            acked_seq: AtomicU64::new(acked_seq),
            acked_offset: AtomicU64::new(acked_offset),
            connected: AtomicBool::new(false),
            receipts: AtomicU64::new(0),
            near_full_alerted: AtomicBool::new(false),
            last_error: Mutex::new(None),
            persisted: Mutex::new((acked_seq, Instant::now())),
        })
    }

    pub fn acked_seq(&self) -> Seq {
        self.acked_seq.load(Ordering::Acquire)
    }

    pub fn acked_offset(&self) -> u64 {
        self.acked_offset.load(Ordering::Acquire)
    }

    /// Records that everything up to `seq` (ending at byte `offset`) is
    /// delivered. The cursor file is rewritten at most every
    /// `CURSOR_PERSIST_INTERVAL` unless `force`: a stale cursor only means some
    /// records are sent again after a restart (at least once).
    pub fn set_acked(&self, seq: Seq, offset: u64, force: bool) -> anyhow::Result<()> {
        self.acked_seq.store(seq, Ordering::Release);
        self.acked_offset.store(offset, Ordering::Release);
        let mut persisted = self
            .persisted
            .lock()
            .map_err(|_| anyhow::anyhow!("cursor lock poisoned"))?;
        if persisted.0 == seq || (!force && persisted.1.elapsed() < CURSOR_PERSIST_INTERVAL) {
            return Ok(());
        }
        write_file_atomic(&self.cursor_path, format!("{seq}\n").as_bytes())?;
        *persisted = (seq, Instant::now());
        Ok(())
    }

    /// Makes the in-memory cursor durable now.
    pub fn persist_cursor(&self) -> anyhow::Result<()> {
        self.set_acked(self.acked_seq(), self.acked_offset(), true)
    }

    pub fn set_connected(&self, connected: bool) -> bool {
        self.connected.swap(connected, Ordering::AcqRel)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn add_receipt(&self) {
        self.receipts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }

    /// Bytes of the chain file not yet delivered, given its durable length.
    pub fn lag_bytes(&self, file_len: u64) -> u64 {
        file_len.saturating_sub(self.acked_offset())
    }

    pub fn status(&self, head: Seq, file_len: u64) -> DestinationStatus {
        DestinationStatus {
            name: self.name.clone(),
            kind: self.kind,
            connected: self.is_connected(),
            acked_seq: self.acked_seq(),
            lag_records: head.saturating_sub(self.acked_seq()),
            lag_bytes: self.lag_bytes(file_len),
            receipts: self.receipts.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}
