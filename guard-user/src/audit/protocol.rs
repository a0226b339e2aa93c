//! The host-to-collector protocol, spoken over mutual TLS.
//!
//! Every message is one JSON line. A `records` message is followed by exactly
//! `count` raw record lines (the bytes stored in `records.jsonl`), so the
//! collector stores exactly what the host wrote.
//!
//! ```text
//! host -> collector                        collector -> host
//! {"type":"hello","host":..,"key":..}      {"type":"welcome","next_seq":..,...}
//! {"type":"records","count":N} + N lines   {"type":"ack","seq":..}        (after fsync)
//! {"type":"checkpoint","checkpoint":{..}}  {"type":"receipt","receipt":{..}}
//!                                          {"type":"error","code":..,"message":..} then close
//! ```

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::checkpoint::{Checkpoint, Receipt};
use super::record::{Seq, MAX_LINE_BYTES};

/// Most records in one `records` message.
pub const MAX_BATCH: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Hello { host: String, key: String },
    Records { count: usize },
    Checkpoint { checkpoint: Checkpoint },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    Welcome {
        collector: String,
        collector_key: String,
        /// The next record the collector expects (its head + 1).
        next_seq: Seq,
        /// Hex hash of the collector's head record (the genesis hash when empty).
        head: String,
        /// Seq of the last checkpoint it cosigned (0 if none).
        last_checkpoint: Seq,
    },
    Ack {
        seq: Seq,
    },
    Receipt {
        receipt: Receipt,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why a collector rejected what a host sent. Stable names for scripts and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Not a valid message or record line.
    Malformed,
    /// A line over the size limit.
    TooLong,
    /// A message that is valid but not expected now (e.g. records before hello).
    Protocol,
    /// The record's stored hash does not match its content.
    BadHash,
    /// A record, hello or checkpoint for a host other than the client certificate's.
    HostMismatch,
    /// The host presented a signing key other than the one on record.
    KeyMismatch,
    /// A record the collector already has (seq at or below its head).
    Replay,
    /// A record past the next expected seq (records missing in between).
    Gap,
    /// A record at the right seq whose `prev` is not the collector's head hash.
    Fork,
    /// A checkpoint whose signature does not verify.
    BadSignature,
    /// A checkpoint whose head hash is not the stored record's hash.
    CheckpointMismatch,
    /// A checkpoint for records the collector does not have yet.
    CheckpointAhead,
    /// The collector could not store (disk error); try again later.
    Storage,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// A protocol message as one line with its `\n`.
pub fn to_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads one `\n`-terminated line into `buf` (without the `\n`), refusing to
/// buffer more than `MAX_LINE_BYTES` so a peer cannot exhaust memory.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > MAX_LINE_BYTES + 1 {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            buf.pop();
            return Ok(LineRead::Line);
        }
    }
}
