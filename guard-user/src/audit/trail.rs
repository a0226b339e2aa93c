//! `AuditTrail`: what guardd uses to record events.
//!
//! `record()` hands events to a writer thread that chains them, appends them
//! to `records.jsonl` and fsyncs; it returns once the record is durable.
//! Concurrent callers share one fsync (group commit). Every N records or T
//! seconds the writer signs a checkpoint. One task per destination (collector
//! or syslog) reads the chain file behind the durable head and delivers it.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};

use super::chain::{
    append_line_synced, cut_torn_tail, ChainFile, Head, CHECKPOINTS_FILE, HOST_KEY_FILE,
    RECEIPTS_FILE, RECORDS_FILE,
};
use super::checkpoint::{load_or_create_signing_key, Checkpoint};
use super::forward::CollectorDestination;
use super::record::{event_kind, valid_host, Record, Seq};
use super::spool::{Destination, DestinationKind, DestinationStatus};
use super::syslog::SyslogDestination;

/// Where and how guardd keeps and ships its audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrailConfig {
    /// Directory of the local copy (records, checkpoints, receipts, cursors).
    pub dir: PathBuf,
    /// This host's name, as in its client certificate.
    pub host: String,
    /// The host's Ed25519 signing key (created if missing).
    pub key_file: PathBuf,
    /// Sign a checkpoint after this many records...
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// ...or after this many milliseconds with new records, whichever comes first.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_every_ms: u64,
    #[serde(default)]
    pub collectors: Vec<CollectorDestination>,
    #[serde(default)]
    pub syslog: Vec<SyslogDestination>,
    /// Most bytes of records a destination may fall behind; past it `record()` fails.
    #[serde(default = "default_spool_limit")]
    pub spool_limit_bytes: u64,
    /// Percentage of the bound at which `SpoolNearFull` is raised.
    #[serde(default = "default_alert_percent")]
    pub spool_alert_percent: u8,
}

fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_ms() -> u64 {
    5000
}
fn default_spool_limit() -> u64 {
    1 << 30
}
fn default_alert_percent() -> u8 {
    80
}

impl TrailConfig {
    /// A configuration with default checkpoint and spool settings and no destinations.
    pub fn new(dir: impl Into<PathBuf>, host: &str, key_file: impl Into<PathBuf>) -> TrailConfig {
        TrailConfig {
            dir: dir.into(),
            host: host.to_owned(),
            key_file: key_file.into(),
            checkpoint_every_records: default_checkpoint_records(),
            checkpoint_every_ms: default_checkpoint_ms(),
            collectors: Vec::new(),
            syslog: Vec::new(),
            spool_limit_bytes: default_spool_limit(),
            spool_alert_percent: default_alert_percent(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !valid_host(&self.host) {
            bail!(
                "audit host name {:?} is invalid: use letters, digits, '.', '_' or '-'",
                self.host
            );
        }
        if self.checkpoint_every_records == 0 || self.checkpoint_every_ms == 0 {
            bail!("checkpoint_every_records and checkpoint_every_ms must be above 0");
        }
        if self.spool_alert_percent == 0 || self.spool_alert_percent > 100 {
            bail!("spool_alert_percent must be within 1..=100");
        }
        let mut names: Vec<&str> = self
            .collectors
            .iter()
            .map(|c| c.name.as_str())
            .chain(self.syslog.iter().map(|s| s.name.as_str()))
            .collect();
        for name in &names {
            if !valid_host(name) {
                bail!("destination name {name:?} is invalid: use letters, digits, '.', '_' or '-'");
            }
        }
        names.sort_unstable();
        if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("destination name {:?} is used twice", dup[0]);
        }
        Ok(())
    }
}

/// Why recording an event failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("invalid audit event: {0}")]
    InvalidEvent(String),
    #[error(
        "audit spool full: destination {destination} is {lag_bytes} bytes behind (limit {limit_bytes})"
    )]
    SpoolFull {
        destination: String,
        lag_bytes: u64,
        limit_bytes: u64,
    },
    #[error("audit log write failed: {0}")]
    Storage(String),
    #[error("the audit trail is closed")]
    Closed,
}

/// Something the operator must hear about. guardd records these as admin events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrailAlert {
    /// A destination cannot be reached or refused what was sent.
    DestinationDown { destination: String, error: String },
    /// A destination is reachable again and catching up.
    DestinationBack { destination: String },
    /// A destination's spool passed the alert threshold.
    SpoolNearFull {
        destination: String,
        lag_bytes: u64,
        limit_bytes: u64,
    },
    /// A destination holds a chain that differs from the local one.
    DestinationDiverged { destination: String, detail: String },
    /// The record sink (journal) failed.
    SinkFailed { error: String },
    /// Writing a checkpoint to the local log failed.
    CheckpointFailed { seq: Seq, error: String },
}

impl TrailAlert {
    /// The alert as an audit event (`kind` is `audit_` + the alert's name).
    pub fn to_event(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = value.as_object_mut() {
            let kind = obj
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("alert")
                .to_owned();
            obj.insert("kind".into(), Value::String(format!("audit_{kind}")));
        }
        value
    }
}

/// Receives each batch of records once it is durable (e.g. the journal writer).
/// Runs on a thread of its own, fed through a bounded queue, so a slow sink
/// slows the writer down (back-pressure) without adding its latency to every
/// group commit.
pub trait RecordSink: Send + 'static {
    fn deliver(&mut self, records: &[Record]) -> anyhow::Result<()>;
}

/// What `status()` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrailStatus {
    pub host: String,
    pub head_seq: Seq,
    pub head_hash: String,
    pub last_checkpoint_seq: Seq,
    pub log_bytes: u64,
    pub spool_limit_bytes: u64,
    pub destinations: Vec<DestinationStatus>,
}

type Reply = oneshot::Sender<Result<RangeInclusive<Seq>, AuditError>>;

enum Request {
    Events {
        events: Vec<(i64, Value)>,
        reply: Reply,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// State shared by the writer, the delivery tasks and `status()`.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub host: String,
    pub host_key_hex: String,
    pub head: watch::Sender<Head>,
    pub checkpoint: watch::Sender<Seq>,
    pub file_len: AtomicU64,
    pub destinations: Vec<Arc<Destination>>,
    pub alerts: broadcast::Sender<TrailAlert>,
    pub spool_limit_bytes: u64,
    pub spool_alert_bytes: u64,
    /// Serializes appends to the local `receipts.jsonl`.
    pub receipts_lock: std::sync::Mutex<()>,
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn alert(&self, alert: TrailAlert) {
        // No subscriber is not an error: status() still shows the state.
        let _ = self.alerts.send(alert);
    }
}

/// The audit trail handle. Cheap to clone; the writer stops when the last
/// handle is dropped or `close()` is called.
#[derive(Clone)]
pub struct AuditTrail {
    requests: mpsc::SyncSender<Request>,
    shared: Arc<Shared>,
}

impl AuditTrail {
    /// Opens the local log (recovering from a crash) and starts delivery to
    /// every configured destination. Must be called inside a tokio runtime.
    pub fn open(config: TrailConfig) -> anyhow::Result<AuditTrail> {
        AuditTrail::open_with_sink(config, None)
    }

    /// Like `open`, with a sink that receives every durable batch (the journal).
    pub fn open_with_sink(
        config: TrailConfig,
        sink: Option<Box<dyn RecordSink>>,
    ) -> anyhow::Result<AuditTrail> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .context("AuditTrail::open must run inside a tokio runtime")?;
        let key = load_or_create_signing_key(&config.key_file)?;
        let host_key_hex = hex::encode(key.verifying_key().as_bytes());
        let chain = ChainFile::open(&config.dir)?;
        // A crash can tear the last line of the side files too.
        cut_torn_tail(&config.dir.join(CHECKPOINTS_FILE))?;
        cut_torn_tail(&config.dir.join(RECEIPTS_FILE))?;
        check_host_key(&config.dir, &host_key_hex)?;
        check_host_name(&config.dir, &config.host, chain.head().seq)?;
        let last_checkpoint = last_checkpoint_seq(&config.dir)?;

        let mut destinations = Vec::new();
        for c in &config.collectors {
            destinations.push(Arc::new(Destination::load(
                &config.dir,
                &c.name,
                DestinationKind::Collector,
            )?));
        }
        for s in &config.syslog {
            destinations.push(Arc::new(Destination::load(
                &config.dir,
                &s.name,
                DestinationKind::Syslog,
            )?));
        }
        let (alerts, _) = broadcast::channel(256);
        let limit = config.spool_limit_bytes;
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            host: config.host.clone(),
            host_key_hex,
            head: watch::Sender::new(chain.head()),
            checkpoint: watch::Sender::new(last_checkpoint),
            file_len: AtomicU64::new(chain.len()),
            destinations,
            alerts,
            spool_limit_bytes: limit,
            spool_alert_bytes: (limit as u128 * config.spool_alert_percent as u128 / 100) as u64,
            receipts_lock: std::sync::Mutex::new(()),
            shutdown: watch::Sender::new(false),
        });

        let (requests, receiver) = mpsc::sync_channel(65536);
        let writer = Writer {
            chain,
            key,
            sink: sink
                .map(|sink| SinkThread::start(sink, shared.clone()))
                .transpose()?,
            shared: shared.clone(),
            every_records: config.checkpoint_every_records,
            every: Duration::from_millis(config.checkpoint_every_ms),
            last_checkpoint,
            last_checkpoint_at: Instant::now(),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))
            .context("starting the audit writer thread")?;

        let mut index = 0;
        for c in config.collectors {
            let dest = shared.destinations[index].clone();
            runtime.spawn(super::delivery::deliver(shared.clone(), dest, c));
            index += 1;
        }
        for s in config.syslog {
            let dest = shared.destinations[index].clone();
            runtime.spawn(super::delivery::deliver(shared.clone(), dest, s));
            index += 1;
        }
        Ok(AuditTrail { requests, shared })
    }

    /// Appends one event durably; returns its seq.
    pub async fn record(&self, event: Value) -> Result<Seq, AuditError> {
        Ok(*self.record_batch(vec![event]).await?.end())
    }

    /// Appends events durably, in order, as consecutive records.
    pub async fn record_batch(
        &self,
        events: Vec<Value>,
    ) -> Result<RangeInclusive<Seq>, AuditError> {
        self.record_batch_pending(events)?.await
    }

    /// Hands events to the writer and returns at once, so the caller can go
    /// on while they are written; the future resolves when they are durable.
    /// Batches keep the order in which they were handed over.
    pub fn record_batch_pending(
        &self,
        events: Vec<Value>,
    ) -> Result<
        impl std::future::Future<Output = Result<RangeInclusive<Seq>, AuditError>>,
        AuditError,
    > {
        let receiver = self.submit(events)?;
        Ok(async move { receiver.await.map_err(|_| AuditError::Closed)? })
    }

    /// `record` for threads outside the async runtime.
    pub fn record_blocking(&self, event: Value) -> Result<Seq, AuditError> {
        let receiver = self.submit(vec![event])?;
        Ok(*receiver
            .blocking_recv()
            .map_err(|_| AuditError::Closed)??
            .end())
    }

    fn submit(
        &self,
        events: Vec<Value>,
    ) -> Result<oneshot::Receiver<Result<RangeInclusive<Seq>, AuditError>>, AuditError> {
        if events.is_empty() {
            return Err(AuditError::InvalidEvent("no events given".into()));
        }
        let now = now_ns();
        let mut stamped = Vec::with_capacity(events.len());
        for event in events {
            if event_kind(&event).is_none() {
                return Err(AuditError::InvalidEvent(format!(
                    "an event must be a JSON object with a non-empty string `kind`, got {}",
                    truncate(&event.to_string(), 200)
                )));
            }
            stamped.push((now, event));
        }
        let (reply, receiver) = oneshot::channel();
        self.requests
            .send(Request::Events {
                events: stamped,
                reply,
            })
            .map_err(|_| AuditError::Closed)?;
        Ok(receiver)
    }

    /// Alerts (destination down/back, spool nearly full, ...), as they happen.
    pub fn alerts(&self) -> broadcast::Receiver<TrailAlert> {
        self.shared.alerts.subscribe()
    }

    pub fn status(&self) -> TrailStatus {
        let head = *self.shared.head.borrow();
        let file_len = self.shared.file_len.load(Ordering::Acquire);
        TrailStatus {
            host: self.shared.host.clone(),
            head_seq: head.seq,
            head_hash: hex::encode(head.hash),
            last_checkpoint_seq: *self.shared.checkpoint.borrow(),
            log_bytes: file_len,
            spool_limit_bytes: self.shared.spool_limit_bytes,
            destinations: self
                .shared
                .destinations
                .iter()
                .map(|d| d.status(head.seq, file_len))
                .collect(),
        }
    }

    /// The local copy's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Waits until every destination has acknowledged everything recorded so
    /// far, or `timeout` passes. Returns whether all caught up.
    pub async fn wait_delivered(&self, timeout: Duration) -> bool {
        let target = self.shared.head.borrow().seq;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .shared
                .destinations
                .iter()
                .all(|d| d.acked_seq() >= target)
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes a final checkpoint, stops the writer and the delivery tasks.
    /// Records not yet delivered stay in the spool for the next start.
    pub async fn close(&self) {
        let (reply, receiver) = oneshot::channel();
        if self.requests.send(Request::Close { reply }).is_ok() {
            let _ = receiver.await;
        }
        let _ = self.shared.shutdown.send(true);
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The local log must only ever be signed by one key: a different key means
/// the key file was replaced, and continuing would mix two identities.
fn check_host_key(dir: &Path, key_hex: &str) -> anyhow::Result<()> {
    let path = dir.join(HOST_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == key_hex => Ok(()),
        Ok(text) => bail!(
            "the signing key ({key_hex}) is not the key this log was written with ({}, in {}); \
             refusing to continue the log with another key",
            text.trim(),
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            super::chain::write_file_atomic(&path, format!("{key_hex}\n").as_bytes())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn check_host_name(dir: &Path, host: &str, head: Seq) -> anyhow::Result<()> {
    if head == 0 {
        return Ok(());
    }
    let mut reader = super::chain::ChainReader::open_at(dir, head)?;
    let mut line = Vec::new();
    if reader.next_line(&mut line)? {
        let record = Record::parse(&line)?;
        if record.host != host {
            bail!(
                "the log in {} belongs to host {:?}, not {host:?}",
                dir.join(RECORDS_FILE).display(),
                record.host
            );
        }
    }
    Ok(())
}

/// Seq of the last checkpoint in `dir/checkpoints.jsonl` (0 if none).
fn last_checkpoint_seq(dir: &Path) -> anyhow::Result<Seq> {
    let path = dir.join(CHECKPOINTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // A torn last line (crash mid-write) is ignored: it was never acknowledged.
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Checkpoint>(line).ok())
        .map(|cp| cp.seq)
        .max()
        .unwrap_or(0))
}

struct Writer {
    chain: ChainFile,
    key: SigningKey,
    sink: Option<SinkThread>,
    shared: Arc<Shared>,
    every_records: u64,
    every: Duration,
    last_checkpoint: Seq,
    last_checkpoint_at: Instant,
}

/// Most events written (and fsynced) together.
const MAX_GROUP: usize = 8192;

/// Batches (each at most `MAX_GROUP` records) queued for the sink before the
/// writer waits for it; bounds the memory a slow sink can hold.
const SINK_QUEUE: usize = 4;

/// The sink's thread and the queue feeding it.
struct SinkThread {
    queue: mpsc::SyncSender<Vec<Record>>,
    thread: std::thread::JoinHandle<()>,
}

impl SinkThread {
    fn start(mut sink: Box<dyn RecordSink>, shared: Arc<Shared>) -> anyhow::Result<SinkThread> {
        let (queue, batches) = mpsc::sync_channel::<Vec<Record>>(SINK_QUEUE);
        let thread = std::thread::Builder::new()
            .name("audit-sink".into())
            .spawn(move || {
                // Alert when the sink starts failing, not for every batch.
                let mut failing = false;
                for batch in batches {
                    match sink.deliver(&batch) {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            shared.alert(TrailAlert::SinkFailed {
                                error: format!("{e:#}"),
                            });
                        }
                        Err(_) => {}
                    }
                }
            })
            .context("starting the audit sink thread")?;
        Ok(SinkThread { queue, thread })
    }

    fn send(&self, records: Vec<Record>) {
        // The thread only stops when the queue closes, so this cannot fail
        // unless the sink panicked; then there is nothing left to feed.
        let _ = self.queue.send(records);
    }

    /// Waits until everything queued has been handed to the sink.
    fn finish(self) {
        drop(self.queue);
        let _ = self.thread.join();
    }
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Request>) {
        loop {
            let wait = self.every.saturating_sub(self.last_checkpoint_at.elapsed());
            let first = match receiver.recv_timeout(wait) {
                Ok(request) => request,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due(true);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.checkpoint_if_due(true);
                    return;
                }
            };
            let mut group = Vec::new();
            let mut count = 0;
            let mut close = None;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Events { events, reply } => {
                        count += events.len();
                        group.push((events, reply));
                    }
                    Request::Close { reply } => {
                        close = Some(reply);
                        break;
                    }
                }
                if count < MAX_GROUP {
                    next = receiver.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.write_group(group);
            }
            if let Some(reply) = close {
                self.checkpoint_if_due(true);
                if let Some(sink) = self.sink.take() {
                    sink.finish();
                }
                let _ = reply.send(());
                return;
            }
            self.checkpoint_if_due(false);
        }
    }

    fn write_group(&mut self, group: Vec<(Vec<(i64, Value)>, Reply)>) {
        let mut records = Vec::new();
        let mut lines = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        let mut head = self.chain.head();
        let file_len = self.shared.file_len.load(Ordering::Acquire);
        let mut pending_bytes = 0u64;
        for (events, reply) in group {
            if let Err(full) = self.spool_room(file_len + pending_bytes) {
                let _ = reply.send(Err(full));
                continue;
            }
            let first = head.seq + 1;
            for (time_ns, event) in events {
                let (record, line) =
                    Record::build(head.seq + 1, time_ns, &self.shared.host, event, head.hash);
                head = Head {
                    seq: record.seq,
                    hash: record.hash,
                };
                pending_bytes += line.len() as u64 + 1;
                records.push(record);
                lines.push(line);
            }
            replies.push((first..=head.seq, reply));
        }
        if records.is_empty() {
            return;
        }
        match self.chain.append_rendered(&records, &lines) {
            Ok(()) => {
                self.shared
                    .file_len
                    .store(self.chain.len(), Ordering::Release);
                self.shared.head.send_replace(self.chain.head());
                for (range, reply) in replies {
                    let _ = reply.send(Ok(range));
                }
                self.check_spool_alerts();
                if let Some(sink) = &self.sink {
                    sink.send(records);
                }
            }
            Err(e) => {
                // The chain file's state is unknown after a failed write:
                // reopen it so a torn tail is cut and the head re-read.
                let error = AuditError::Storage(format!("{e:#}"));
                for (_, reply) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                if let Ok(chain) = ChainFile::open(&self.shared.dir) {
                    self.chain = chain;
                    self.shared
                        .file_len
                        .store(self.chain.len(), Ordering::Release);
                }
            }
        }
    }

    /// Refuses new records when a destination is at its spool bound.
    fn spool_room(&self, file_len: u64) -> Result<(), AuditError> {
        for dest in &self.shared.destinations {
            let lag = dest.lag_bytes(file_len);
            if lag >= self.shared.spool_limit_bytes {
                return Err(AuditError::SpoolFull {
                    destination: dest.name.clone(),
                    lag_bytes: lag,
                    limit_bytes: self.shared.spool_limit_bytes,
                });
            }
        }
        Ok(())
    }

    fn check_spool_alerts(&self) {
        let file_len = self.chain.len();
        for dest in &self.shared.destinations {
            let lag = dest.lag_bytes(file_len);
            let near = lag >= self.shared.spool_alert_bytes;
            let was = dest.near_full_alerted.swap(near, Ordering::AcqRel);
            if near && !was {
                self.shared.alert(TrailAlert::SpoolNearFull {
                    destination: dest.name.clone(),
                    lag_bytes: lag,
                    limit_bytes: self.shared.spool_limit_bytes,
                });
            }
        }
    }

    fn checkpoint_if_due(&mut self, timer: bool) {
        let head = self.chain.head();
        let new_records = head.seq - self.last_checkpoint;
        let due = new_records >= self.every_records
            || (new_records > 0 && (timer || self.last_checkpoint_at.elapsed() >= self.every));
        if !due {
            if timer {
                self.last_checkpoint_at = Instant::now();
            }
            return;
        }
        let checkpoint =
            Checkpoint::sign(&self.key, &self.shared.host, head.seq, &head.hash, now_ns());
        let path = self.shared.dir.join(CHECKPOINTS_FILE);
        match append_line_synced(&path, &checkpoint.to_line()) {
            Ok(()) => {
                self.last_checkpoint = head.seq;
                self.last_checkpoint_at = Instant::now();
                self.shared.checkpoint.send_replace(head.seq);
            }
            Err(e) => self.shared.alert(TrailAlert::CheckpointFailed {
                seq: head.seq,
                error: format!("{e:#}"),
            }),
        }
    }
}
