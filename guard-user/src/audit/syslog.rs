//! Forwarding to existing syslog infrastructure: RFC 5424 messages over TLS
//! with RFC 5425 octet-counting framing (`<length> <message>`).
//!
//! Each record becomes one message:
//!
//! ```text
//! <PRI>1 2026-11-29T14:39:00.123456Z db1 guardd - denied [guard@32473 seq="7" hash="ab12..."] {"seq":7,...}
//! ```
//!
//! PRI is facility authpriv (10) with severity warning for kernel decisions
//! that denied, error for the trail's own alerts, notice otherwise. The MSG
//! is the record line exactly as stored, so the syslog copy can be checked
//! against the chain. (32473 is the enterprise number RFC 5612 reserves for
//! documentation; a deployment with its own number can change `SD_ID`.)
//!
//! RFC 5425 has no acknowledgements. A record counts as delivered once it has
//! been written to the connection at least `CONFIRM_DELAY` ago and the server
//! has not closed it since; when a connection fails, everything not yet
//! confirmed is sent again on the next one (at least once: a message can
//! arrive twice, none is dropped unless the server itself loses what it had
//! already read).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::chain::ChainReader;
use super::delivery::{Link, Session};
use super::record::{Record, Seq};
use super::tls::{connect, TlsFiles};

/// One syslog server to forward to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogDestination {
    pub name: String,
    /// `host:port` (6514 is the registered syslog-over-TLS port).
    pub address: String,
    /// The name the server's certificate must carry.
    pub server_name: String,
    pub tls: TlsFiles,
    /// APP-NAME of the messages.
    #[serde(default = "default_app_name")]
    pub app_name: String,
}

fn default_app_name() -> String {
    "guardd".into()
}

/// The structured-data ID of guard's parameters.
pub const SD_ID: &str = "guard@32473";
const FACILITY_AUTHPRIV: u8 = 10;
const CONFIRM_DELAY: Duration = Duration::from_secs(1);
const BATCH: usize = 1024;

/// Severity for an event kind (RFC 5424 numbers).
fn severity(kind: &str) -> u8 {
    if kind.starts_with("audit_") {
        3 // error: the audit trail itself is in trouble
    } else if kind == "denied" || kind.ends_with("_refused") || kind == "would_deny" {
        4 // warning
    } else {
        5 // notice
    }
}

/// The RFC 5424 message for a record (without framing).
pub fn format_message(record: &Record, line: &str, app_name: &str) -> String {
    let pri = FACILITY_AUTHPRIV * 8 + severity(record.kind());
    format!(
        "<{pri}>1 {} {} {} - {} [{SD_ID} seq=\"{}\" hash=\"{}\"] {line}",
        timestamp(record.time_ns),
        record.host,
        header_field(app_name, 48),
        header_field(record.kind(), 32),
        record.seq,
        hex::encode(record.hash),
    )
}

/// RFC 5424 TIMESTAMP: UTC with microseconds (at most 6 fraction digits).
pub fn timestamp(time_ns: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(time_ns as i128)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "-".into())
}

/// Header fields are printable US-ASCII without spaces, bounded in length.
fn header_field(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

impl Session for SyslogDestination {
    async fn run(&self, link: &mut Link<'_>) -> anyhow::Result<Infallible> {
        session(self, link).await
    }
}

async fn session(config: &SyslogDestination, link: &mut Link<'_>) -> anyhow::Result<Infallible> {
    let (shared, dest) = (link.shared, link.dest);
    let stream = connect(&config.address, &config.server_name, &config.tls).await?;
    let (mut read_half, mut writer) = tokio::io::split(stream);

    link.connected();

    // The server never writes to us: anything readable means it closed.
    let closed = async move {
        let mut byte = [0u8; 1];
        let _ = read_half.read(&mut byte).await;
    };
    tokio::pin!(closed);

    let start = dest.acked_seq() + 1;
    let mut records = ChainReader::open_at(&shared.dir, start)?;
    let mut next = start;
    let mut unconfirmed: VecDeque<(Seq, u64, Instant)> = VecDeque::new();
    let mut head_rx = shared.head.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut line = Vec::with_capacity(512);
    let mut frames = Vec::with_capacity(BATCH * 512);
    loop {
        let durable = head_rx.borrow_and_update().seq;
        while next <= durable {
            frames.clear();
            let mut count = 0;
            while count < BATCH && next <= durable {
                if !records.next_line(&mut line)? {
                    break;
                }
                let record = Record::parse(&line)
                    .with_context(|| format!("local record {next} is damaged"))?;
                if record.seq != next {
                    bail!("local log: expected record {next}, found {}", record.seq);
                }
                let text = std::str::from_utf8(&line).context("record is not UTF-8")?;
                let message = format_message(&record, text, &config.app_name);
                frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
                frames.extend_from_slice(message.as_bytes());
                next += 1;
                count += 1;
            }
            if count == 0 {
                break;
            }
            writer
                .write_all(&frames)
                .await
                .context("writing to the syslog server")?;
            unconfirmed.push_back((next - 1, records.offset(), Instant::now()));
        }
        writer
            .flush()
            .await
            .context("writing to the syslog server")?;
        tokio::select! {
            _ = &mut closed => bail!("the syslog server closed the connection"),
            changed = head_rx.changed() => changed.context("audit writer stopped")?,
            _ = tick.tick() => {
                let mut confirmed = None;
                while unconfirmed.front().is_some_and(|(_, _, at)| at.elapsed() >= CONFIRM_DELAY) {
                    confirmed = unconfirmed.pop_front();
                }
                if let Some((seq, offset, _)) = confirmed {
                    dest.set_acked(seq, offset, false)?;
                } else {
                    dest.persist_cursor()?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::GENESIS;
    use serde_json::json;

    #[test]
    fn message_follows_rfc5424() {
        let record = Record::new(
            7,
            1_764_427_140_123_456_789,
            "db1",
            json!({"kind":"denied","pid":1}),
            GENESIS,
        );
        let line = record.to_line();
        let message = format_message(&record, &line, "guardd");
        let expected_head = format!(
            "<84>1 2025-11-29T14:39:00.123456Z db1 guardd - denied [guard@32473 seq=\"7\" hash=\"{}\"] ",
            hex::encode(record.hash)
        );
        assert!(message.starts_with(&expected_head), "{message}");
        assert!(message.ends_with(&line));
        let admin = Record::new(8, 0, "db1", json!({"kind":"policy_applied"}), GENESIS);
        assert!(
            format_message(&admin, "x", "guardd").starts_with("<85>1 1970-01-01T00:00:00.000000Z")
        );
    }
}
