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
//!
//! Use from guardd (inside its tokio runtime):
//!
//! ```ignore
//! let trail = AuditTrail::open_with_sink(config, Some(Box::new(JournalSink::connect()?)))?;
//! let seq = trail.record(json!({"kind": "denied", "path": ..., "pid": ...})).await?; // durable
//! let mut alerts = trail.alerts(); // DestinationDown/Back, SpoolNearFull, ...
//! // record each alert as an admin event: trail.record(alert.to_event()).await
//! trail.status(); // head, last checkpoint, per destination: connected, acked, lag, receipts
//! trail.close().await; // final checkpoint; undelivered records stay spooled
//! ```
//!
//! Every event is a JSON object with a non-empty string `kind`
//! (`denied`, `would-deny`, `policy_applied`, `volume_unlocked`, ...).
//! `record` fails closed with `AuditError::SpoolFull` when a destination is
//! `spool_limit_bytes` behind.

pub mod bench;
pub mod chain;
pub mod checkpoint;
pub mod cli;
pub mod collector;
mod delivery;
pub mod forward;
pub mod journal_sink;
pub mod protocol;
pub mod record;
pub mod spool;
pub mod syslog;
pub mod tls;
pub mod trail;
pub mod verify;

pub use checkpoint::{Checkpoint, Receipt};
pub use cli::LogCommand;
pub use journal_sink::{journal_fields, JournalSink};
pub use record::{Record, Seq};
pub use trail::{AuditError, AuditTrail, RecordSink, TrailAlert, TrailConfig, TrailStatus};
