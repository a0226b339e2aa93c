//! Delivery of the local chain to one collector (`guard-logd`) over mutual TLS.
//!
//! A session: hello -> the collector says which seq it expects next and its
//! head hash; the client checks that head against its own chain (a collector
//! ahead of or different from the local log means the local log was truncated
//! or replaced: alert, do not send), then streams durable records from that
//! seq, pipelined (up to `WINDOW` unacknowledged batches), and each
//! checkpoint once its records are sent. Acks move the destination's cursor;
//! receipts are checked and kept in the local `receipts.jsonl`. Any error ends
//! the session; the next one resumes from what the collector has stored, so
//! delivery is at least once and in order, and the collector never stores a
//! record twice.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::sync::mpsc;

use super::chain::{append_line_synced, line_seq, ChainReader, CHECKPOINTS_FILE, RECEIPTS_FILE};
use super::checkpoint::{Checkpoint, Receipt};
use super::delivery::{Link, Session};
use super::protocol::{
    read_line_limited, to_line, ClientMessage, LineRead, ServerMessage, MAX_BATCH,
};
use super::record::{Record, Seq};
use super::spool::Destination;
use super::tls::{connect, TlsFiles, CONNECT_TIMEOUT};
use super::trail::{Shared, TrailAlert};

/// One collector to deliver to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorDestination {
    /// Name for status, alerts and the cursor file.
    pub name: String,
    /// `host:port` of the collector.
    pub address: String,
    /// The name the collector's certificate must carry.
    pub server_name: String,
    /// CA for the collector's certificate; this host's client certificate and key.
    pub tls: TlsFiles,
    /// The collector's Ed25519 public key (hex), if known: receipts must be signed by it.
    #[serde(default)]
    pub collector_key: Option<String>,
}

/// Unacknowledged batches in flight.
const WINDOW: usize = 16;
/// Records per batch.
const BATCH: usize = 1024;

impl Session for CollectorDestination {
    async fn run(&self, link: &mut Link<'_>) -> anyhow::Result<Infallible> {
        session(self, link).await
    }
}

async fn session(config: &CollectorDestination, link: &mut Link<'_>) -> anyhow::Result<Infallible> {
    let (shared, dest) = (link.shared, link.dest);
    let stream = connect(&config.address, &config.server_name, &config.tls).await?;
    let (read_half, mut writer) = tokio::io::split(stream);

    let hello = ClientMessage::Hello {
        host: shared.host.clone(),
        key: shared.host_key_hex.clone(),
    };
    writer.write_all(&to_line(&hello)).await?;
    writer.flush().await?;
    let (messages_tx, mut messages) = mpsc::unbounded_channel();
    let reader_task = tokio::spawn(read_messages(AsyncBufReader::new(read_half), messages_tx));
    let _abort_reader = AbortOnDrop(reader_task);

    let welcome = tokio::time::timeout(CONNECT_TIMEOUT, messages.recv())
        .await
        .context("no answer to hello")?
        .context("the collector closed the connection after hello")??;
    let ServerMessage::Welcome {
        collector,
        collector_key,
        next_seq,
        head,
        last_checkpoint,
    } = welcome
    else {
        bail!("collector answered hello with {welcome:?}");
    };
    if let Some(expected) = &config.collector_key {
        if expected != &collector_key {
            bail!("collector key is {collector_key}, configured key is {expected}");
        }
    }
    let stored = next_seq.saturating_sub(1);
    check_collector_head(shared, dest, stored, &head)?;

    link.connected();

    let mut records = ChainReader::open_at(&shared.dir, stored + 1)?;
    dest.set_acked(stored, records.offset(), true)?;
    let mut checkpoints = CheckpointFeed::new(&shared.dir, last_checkpoint);
    let mut head_rx = shared.head.subscribe();
    let mut checkpoint_rx = shared.checkpoint.subscribe();
    let mut next = stored + 1;
    let mut in_flight: VecDeque<(Seq, u64)> = VecDeque::new();
    let mut sent_checkpoints: VecDeque<Checkpoint> = VecDeque::new();
    let mut line = Vec::with_capacity(512);
    let mut batch = Vec::with_capacity(BATCH * 320);
    let mut persist = tokio::time::interval(Duration::from_secs(1));
    loop {
        let durable = head_rx.borrow_and_update().seq;
        checkpoint_rx.borrow_and_update();
        while next <= durable && in_flight.len() < WINDOW {
            batch.clear();
            let mut count = 0;
            while count < BATCH.min(MAX_BATCH) && next <= durable {
                if !records.next_line(&mut line)? {
                    break;
                }
                if line_seq(&line) != Some(next) {
                    bail!(
                        "local log: expected record {next} at byte {}",
                        records.offset()
                    );
                }
                batch.extend_from_slice(&line);
                batch.push(b'\n');
                next += 1;
                count += 1;
            }
            if count == 0 {
                break;
            }
            writer
                .write_all(&to_line(&ClientMessage::Records { count }))
                .await?;
            writer.write_all(&batch).await?;
            in_flight.push_back((next - 1, records.offset()));
        }
        for checkpoint in checkpoints.ready(next - 1)? {
            send(
                &mut writer,
                &ClientMessage::Checkpoint {
                    checkpoint: checkpoint.clone(),
                },
            )
            .await?;
            sent_checkpoints.push_back(checkpoint);
        }
        writer.flush().await?;
        tokio::select! {
            message = messages.recv() => {
                let message = message.context("connection to the collector lost")??;
                handle_reply(shared, dest, &collector, &collector_key, message, &mut in_flight, &mut sent_checkpoints)?;
                // Drain whatever else has arrived before writing again.
                while let Ok(message) = messages.try_recv() {
                    handle_reply(shared, dest, &collector, &collector_key, message?, &mut in_flight, &mut sent_checkpoints)?;
                }
            }
            changed = head_rx.changed() => changed.context("audit writer stopped")?,
            changed = checkpoint_rx.changed() => changed.context("audit writer stopped")?,
            _ = persist.tick() => dest.persist_cursor()?,
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &ClientMessage,
) -> anyhow::Result<()> {
    writer.write_all(&to_line(message)).await?;
    Ok(())
}

/// A collector must hold a prefix of the local chain. Anything else means one
/// side was truncated or rewritten: stop and alert instead of sending.
fn check_collector_head(
    shared: &Shared,
    dest: &Destination,
    stored: Seq,
    head_hex: &str,
) -> anyhow::Result<()> {
    let local = *shared.head.borrow();
    let diverged = |detail: String| {
        shared.alert(TrailAlert::DestinationDiverged {
            destination: dest.name.clone(),
            detail: detail.clone(),
        });
        anyhow::anyhow!(detail)
    };
    if stored > local.seq {
        return Err(diverged(format!(
            "the collector holds {stored} records but the local log only {}: \
             the local log was truncated or replaced",
            local.seq
        )));
    }
    if stored == 0 {
        return Ok(());
    }
    let local_hash = record_hash_at(&shared.dir, stored)?;
    if hex::encode(local_hash) != head_hex {
        return Err(diverged(format!(
            "the collector's record {stored} hashes to {head_hex}, the local one to {}: \
             the chains differ",
            hex::encode(local_hash)
        )));
    }
    Ok(())
}

fn record_hash_at(dir: &Path, seq: Seq) -> anyhow::Result<[u8; 32]> {
    let mut reader = ChainReader::open_at(dir, seq)?;
    let mut line = Vec::new();
    if !reader.next_line(&mut line)? {
        bail!("local record {seq} not found");
    }
    let record = Record::parse(&line).with_context(|| format!("local record {seq}"))?;
    if record.seq != seq {
        bail!("local record {seq} not found");
    }
    Ok(record.hash)
}

fn handle_reply(
    shared: &Shared,
    dest: &Destination,
    collector: &str,
    collector_key: &str,
    message: ServerMessage,
    in_flight: &mut VecDeque<(Seq, u64)>,
    sent_checkpoints: &mut VecDeque<Checkpoint>,
) -> anyhow::Result<()> {
    match message {
        ServerMessage::Ack { seq } => {
            let mut acked = None;
            while in_flight.front().is_some_and(|(last, _)| *last <= seq) {
                acked = in_flight.pop_front();
            }
            let Some((last, offset)) = acked.filter(|(last, _)| *last == seq) else {
                bail!("collector acknowledged seq {seq}, which is not the end of a batch sent");
            };
            dest.set_acked(last, offset, false)
        }
        ServerMessage::Receipt { receipt } => {
            let Some(sent) = sent_checkpoints.pop_front() else {
                bail!("collector sent a receipt for no checkpoint");
            };
            if receipt.checkpoint != sent
                || receipt.collector_key != collector_key
                || receipt.collector != collector
            {
                bail!("collector {collector} sent a receipt that does not match the checkpoint at seq {}", sent.seq);
            }
            let host_key = super::checkpoint::parse_verifying_key(&shared.host_key_hex)?;
            receipt
                .verify(None, Some(&host_key))
                .with_context(|| format!("receipt from collector {collector}"))?;
            store_receipt(shared, &receipt)?;
            dest.add_receipt();
            Ok(())
        }
        ServerMessage::Error { code, message } => {
            bail!("collector rejected the data: {code}: {message}")
        }
        ServerMessage::Welcome { .. } => bail!("collector sent a second welcome"),
    }
}

fn store_receipt(shared: &Shared, receipt: &Receipt) -> anyhow::Result<()> {
    let _guard = shared
        .receipts_lock
        .lock()
        .map_err(|_| anyhow::anyhow!("receipts lock poisoned"))?;
    append_line_synced(&shared.dir.join(RECEIPTS_FILE), &receipt.to_line())
}

async fn read_messages<R: tokio::io::AsyncRead + Unpin>(
    mut reader: AsyncBufReader<R>,
    out: mpsc::UnboundedSender<anyhow::Result<ServerMessage>>,
) {
    let mut line = Vec::new();
    loop {
        let result = match read_line_limited(&mut reader, &mut line).await {
            Ok(LineRead::Line) => {
                serde_json::from_slice::<ServerMessage>(&line).with_context(|| {
                    format!(
                        "bad message from collector: {}",
                        String::from_utf8_lossy(&line)
                    )
                })
            }
            Ok(LineRead::Eof) => return,
            Ok(LineRead::TooLong) => Err(anyhow::anyhow!("collector sent an over-long line")),
            Err(e) => Err(anyhow::Error::new(e).context("reading from the collector")),
        };
        let stop = result.is_err();
        if out.send(result).is_err() || stop {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads new lines of the local `checkpoints.jsonl` as the writer appends them.
struct CheckpointFeed {
    path: std::path::PathBuf,
    offset: u64,
    after: Seq,
    pending: VecDeque<Checkpoint>,
}

impl CheckpointFeed {
    fn new(dir: &Path, after: Seq) -> CheckpointFeed {
        CheckpointFeed {
            path: dir.join(CHECKPOINTS_FILE),
            offset: 0,
            after,
            pending: VecDeque::new(),
        }
    }

    /// Checkpoints not yet sent whose records (up to `sent`) have been sent.
    fn ready(&mut self, sent: Seq) -> anyhow::Result<Vec<Checkpoint>> {
        self.read_new()?;
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|cp| cp.seq <= sent) {
            if let Some(cp) = self.pending.pop_front() {
                self.after = cp.seq;
                out.push(cp);
            }
        }
        Ok(out)
    }

    fn read_new(&mut self) -> anyhow::Result<()> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        if file.metadata()?.len() <= self.offset {
            return Ok(());
        }
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(self.offset))?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(());
            }
            self.offset += n as u64;
            let cp: Checkpoint = serde_json::from_slice(&line[..n - 1])
                .with_context(|| format!("{} at byte {}", self.path.display(), self.offset))?;
            let last = self.pending.back().map(|c| c.seq).unwrap_or(self.after);
            if cp.seq > last {
                self.pending.push_back(cp);
            }
        }
    }
}
