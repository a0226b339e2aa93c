//! The collector (`guard-logd`): receives hosts' records over mutual TLS,
//! checks them, stores them append-only and cosigns their checkpoints.
//!
//! Store layout: `<store>/collector.pub` (its public key) and one copy
//! directory per host, `<store>/hosts/<host>/` (the same layout as the local
//! log: `records.jsonl`, `checkpoints.jsonl`, `receipts.jsonl`, `host.pub`),
//! so `guardctl log verify` reads it directly.
//!
//! A client is the host named in its certificate (DNS SAN or CN). The first
//! hello from a host pins its signing key unless one was configured. Every
//! record must continue the stored chain exactly; anything else is refused
//! with an `ErrorCode`, the connection is closed, nothing of the refused
//! batch is stored, and other connections carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::chain::{
    append_line_synced, cut_torn_tail, write_file_atomic, ChainFile, ChainReader, Head,
    CHECKPOINTS_FILE, HOST_KEY_FILE, RECEIPTS_FILE,
};
use super::checkpoint::{load_or_create_signing_key, parse_verifying_key, Checkpoint, Receipt};
use super::protocol::{
    read_line_limited, to_line, ClientMessage, ErrorCode, LineRead, ServerMessage, MAX_BATCH,
};
use super::record::{valid_host, Record, RecordError, Seq};
use super::tls::{server_config, TlsFiles};

/// How a collector is set up.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The collector's name, put in its receipts.
    pub name: String,
    pub store: PathBuf,
    /// Its Ed25519 signing key (created if missing).
    pub key_file: PathBuf,
    /// Its server certificate and the CA that signs hosts' client certificates.
    pub tls: TlsFiles,
    /// Host signing keys known in advance (host -> hex public key).
    pub host_keys: HashMap<String, String>,
}

/// A refusal: the code sent to the client and a message naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

fn reject(code: ErrorCode, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
    }
}

/// One host's copy in the collector's store.
struct HostStore {
    host: String,
    dir: PathBuf,
    chain: ChainFile,
    key: Option<VerifyingKey>,
    last_checkpoint: Seq,
}

impl HostStore {
    fn open(dir: PathBuf, host: &str) -> anyhow::Result<HostStore> {
        let chain = ChainFile::open(&dir)?;
        cut_torn_tail(&dir.join(CHECKPOINTS_FILE))?;
        cut_torn_tail(&dir.join(RECEIPTS_FILE))?;
        let key = match std::fs::read_to_string(dir.join(HOST_KEY_FILE)) {
            Ok(text) => Some(
                parse_verifying_key(text.trim())
                    .with_context(|| format!("{}", dir.join(HOST_KEY_FILE).display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let last_checkpoint = std::fs::read_to_string(dir.join(CHECKPOINTS_FILE))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Checkpoint>(l).ok())
            .map(|c| c.seq)
            .max()
            .unwrap_or(0);
        Ok(HostStore {
            host: host.to_owned(),
            dir,
            chain,
            key,
            last_checkpoint,
        })
    }

    /// Pins the host key on first contact; refuses a different one later.
    fn check_key(&mut self, key_hex: &str) -> Result<(), Rejection> {
        let key = parse_verifying_key(key_hex)
            .map_err(|e| reject(ErrorCode::Malformed, format!("hello key: {e:#}")))?;
        match self.key {
            Some(known) if known == key => Ok(()),
            Some(known) => Err(reject(
                ErrorCode::KeyMismatch,
                format!(
                    "host {} signs with {}, but its key on record is {}",
                    self.host,
                    key_hex,
                    hex::encode(known.as_bytes())
                ),
            )),
            None => {
                write_file_atomic(
                    &self.dir.join(HOST_KEY_FILE),
                    format!("{key_hex}\n").as_bytes(),
                )
                .map_err(|e| reject(ErrorCode::Storage, format!("{e:#}")))?;
                self.key = Some(key);
                Ok(())
            }
        }
    }

    /// Checks a batch of record lines against the stored head and appends it
    /// whole, or refuses it whole.
    fn append(&mut self, lines: &[Vec<u8>]) -> Result<Seq, Rejection> {
        let mut head = self.chain.head();
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            let record = Record::parse(line).map_err(|e| match e {
                RecordError::HashMismatch { .. } => reject(
                    ErrorCode::BadHash,
                    format!("record {}: {e}", super::chain::line_seq(line).unwrap_or(0)),
                ),
                RecordError::TooLong(_) => reject(ErrorCode::TooLong, e.to_string()),
                other => reject(ErrorCode::Malformed, format!("record line: {other}")),
            })?;
            check_continues(&self.host, &head, &record)?;
            buf.extend_from_slice(line);
            buf.push(b'\n');
            head = Head {
                seq: record.seq,
                hash: record.hash,
            };
        }
        self.chain
            .append_lines(&buf, head)
            .map_err(|e| reject(ErrorCode::Storage, format!("{e:#}")))?;
        Ok(head.seq)
    }

    /// Checks a host checkpoint against the store and cosigns it.
    fn cosign(
        &mut self,
        checkpoint: &Checkpoint,
        name: &str,
        key: &SigningKey,
    ) -> Result<Receipt, Rejection> {
        if checkpoint.host != self.host {
            return Err(reject(
                ErrorCode::HostMismatch,
                format!(
                    "checkpoint for host {:?} sent by host {:?}",
                    checkpoint.host, self.host
                ),
            ));
        }
        checkpoint.verify(self.key.as_ref()).map_err(|e| {
            reject(
                ErrorCode::BadSignature,
                format!("checkpoint at seq {}: {e}", checkpoint.seq),
            )
        })?;
        if checkpoint.seq <= self.last_checkpoint {
            return Err(reject(
                ErrorCode::Replay,
                format!(
                    "checkpoint at seq {} is not after the last cosigned one (seq {})",
                    checkpoint.seq, self.last_checkpoint
                ),
            ));
        }
        let head = self.chain.head();
        if checkpoint.seq > head.seq {
            return Err(reject(
                ErrorCode::CheckpointAhead,
                format!(
                    "checkpoint at seq {} but only {} records are stored",
                    checkpoint.seq, head.seq
                ),
            ));
        }
        let stored = if checkpoint.seq == head.seq {
            head.hash
        } else {
            stored_hash(&self.dir, checkpoint.seq)
                .map_err(|e| reject(ErrorCode::Storage, format!("{e:#}")))?
        };
        if hex::encode(stored) != checkpoint.head {
            return Err(reject(
                ErrorCode::CheckpointMismatch,
                format!(
                    "checkpoint says record {} hashes to {}, the stored record hashes to {}",
                    checkpoint.seq,
                    checkpoint.head,
                    hex::encode(stored)
                ),
            ));
        }
        let receipt = Receipt::cosign(key, name, checkpoint)
            .map_err(|e| reject(ErrorCode::Malformed, format!("{e:#}")))?;
        let store = |file: &str, line: &str| {
            append_line_synced(&self.dir.join(file), line)
                .map_err(|e| reject(ErrorCode::Storage, format!("{e:#}")))
        };
        store(CHECKPOINTS_FILE, &checkpoint.to_line())?;
        store(RECEIPTS_FILE, &receipt.to_line())?;
        self.last_checkpoint = checkpoint.seq;
        Ok(receipt)
    }
}

fn check_continues(host: &str, head: &Head, record: &Record) -> Result<(), Rejection> {
    if record.host != host {
        return Err(reject(
            ErrorCode::HostMismatch,
            format!(
                "record {} is for host {:?}, sent by host {host:?}",
                record.seq, record.host
            ),
        ));
    }
    let expected = head.seq + 1;
    if record.seq < expected {
        return Err(reject(
            ErrorCode::Replay,
            format!(
                "record {} is already stored (next expected is {expected})",
                record.seq
            ),
        ));
    }
    if record.seq > expected {
        return Err(reject(
            ErrorCode::Gap,
            format!(
                "record {} sent but {expected} expected: records {expected}..{} are missing",
                record.seq, record.seq
            ),
        ));
    }
    if record.prev != head.hash {
        return Err(reject(
            ErrorCode::Fork,
            format!(
                "record {} has prev {} but the stored record {} hashes to {}",
                record.seq,
                hex::encode(record.prev),
                head.seq,
                hex::encode(head.hash)
            ),
        ));
    }
    Ok(())
}

fn stored_hash(dir: &Path, seq: Seq) -> anyhow::Result<[u8; 32]> {
    let mut reader = ChainReader::open_at(dir, seq)?;
    let mut line = Vec::new();
    anyhow::ensure!(
        reader.next_line(&mut line)?,
        "stored record {seq} not found"
    );
    let record = Record::parse(&line).with_context(|| format!("stored record {seq}"))?;
    anyhow::ensure!(record.seq == seq, "stored record {seq} not found");
    Ok(record.hash)
}

/// A running collector.
pub struct Collector {
    name: String,
    store: PathBuf,
    key: SigningKey,
    acceptor: TlsAcceptor,
    host_keys: HashMap<String, String>,
    hosts: Mutex<HashMap<String, Arc<Mutex<HostStore>>>>,
}

impl Collector {
    /// Loads keys and certificates and prepares the store.
    pub fn new(config: CollectorConfig) -> anyhow::Result<Arc<Collector>> {
        if !valid_host(&config.name) {
            anyhow::bail!("collector name {:?} is invalid", config.name);
        }
        std::fs::create_dir_all(config.store.join("hosts"))
            .with_context(|| format!("creating {}", config.store.display()))?;
        let key = load_or_create_signing_key(&config.key_file)?;
        write_file_atomic(
            &config.store.join("collector.pub"),
            format!("{}\n", hex::encode(key.verifying_key().as_bytes())).as_bytes(),
        )?;
        for (host, key) in &config.host_keys {
            parse_verifying_key(key).with_context(|| format!("configured key of host {host}"))?;
        }
        Ok(Arc::new(Collector {
            name: config.name,
            store: config.store,
            key,
            acceptor: TlsAcceptor::from(server_config(&config.tls)?),
            host_keys: config.host_keys,
            hosts: Mutex::new(HashMap::new()),
        }))
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Accepts connections until the listener fails; each is served on its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (tcp, peer) = listener.accept().await.context("accepting a connection")?;
            let collector = self.clone();
            tokio::spawn(async move {
                if let Err(e) = collector.handle(tcp, peer).await {
                    eprintln!(
                        "guard-logd {}: connection from {peer}: {e:#}",
                        collector.name
                    );
                }
            });
        }
    }

    fn host_store(&self, host: &str) -> anyhow::Result<Arc<Mutex<HostStore>>> {
        let mut hosts = self
            .hosts
            .lock()
            .map_err(|_| anyhow::anyhow!("host table lock poisoned"))?;
        if let Some(store) = hosts.get(host) {
            return Ok(store.clone());
        }
        let mut store = HostStore::open(self.store.join("hosts").join(host), host)?;
        if let Some(pinned) = self.host_keys.get(host) {
            let key = parse_verifying_key(pinned)?;
            if store.key.is_some_and(|k| k != key) {
                anyhow::bail!("host {host}'s stored key differs from the configured one");
            }
            store.key = Some(key);
        }
        let store = Arc::new(Mutex::new(store));
        hosts.insert(host.to_owned(), store.clone());
        Ok(store)
    }

    async fn handle(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
        tcp.set_nodelay(true)?;
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.acceptor.accept(tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
        let names = client_names(stream.get_ref().1.peer_certificates());
        let (read_half, mut writer) = tokio::io::split(stream);
        let mut reader = BufReader::with_capacity(256 * 1024, read_half);
        let outcome = self.converse(&mut reader, &mut writer, &names).await;
        if let Err(rejection) = &outcome {
            let message = ServerMessage::Error {
                code: rejection.code,
                message: rejection.message.clone(),
            };
            let _ = writer.write_all(&to_line(&message)).await;
            let _ = writer.shutdown().await;
            eprintln!(
                "guard-logd {}: rejected {peer} ({}): {}: {}",
                self.name,
                names.join(","),
                rejection.code,
                rejection.message
            );
        }
        Ok(())
    }

    /// Serves one connection; returns the rejection that ended it, or Ok at EOF.
    async fn converse<R, W>(
        &self,
        reader: &mut R,
        writer: &mut W,
        names: &[String],
    ) -> Result<(), Rejection>
    where
        R: tokio::io::AsyncBufRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let io = |e: std::io::Error| reject(ErrorCode::Protocol, format!("connection: {e}"));
        let mut line = Vec::with_capacity(1024);
        let mut session: Option<Arc<Mutex<HostStore>>> = None;
        loop {
            let read = match read_line_limited(reader, &mut line).await {
                // A client that goes away between messages (without a TLS
                // close_notify) has simply finished.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                other => other.map_err(io)?,
            };
            match read {
                LineRead::Eof => return Ok(()),
                LineRead::TooLong => {
                    return Err(reject(
                        ErrorCode::TooLong,
                        "message line over the size limit",
                    ))
                }
                LineRead::Line => {}
            }
            let message: ClientMessage = serde_json::from_slice(&line).map_err(|e| {
                reject(ErrorCode::Malformed, format!("not a protocol message: {e}"))
            })?;
            let reply = match (message, &session) {
                (ClientMessage::Hello { host, key }, None) => {
                    let (store, welcome) = self.hello(&host, &key, names)?;
                    session = Some(store);
                    welcome
                }
                (ClientMessage::Hello { .. }, Some(_)) => {
                    return Err(reject(ErrorCode::Protocol, "second hello"))
                }
                (_, None) => return Err(reject(ErrorCode::Protocol, "hello must come first")),
                (ClientMessage::Records { count }, Some(store)) => {
                    if count == 0 || count > MAX_BATCH {
                        return Err(reject(
                            ErrorCode::Malformed,
                            format!("batch of {count} records (1..={MAX_BATCH} allowed)"),
                        ));
                    }
                    let mut lines = Vec::with_capacity(count);
                    for _ in 0..count {
                        match read_line_limited(reader, &mut line).await.map_err(io)? {
                            LineRead::Line => lines.push(std::mem::take(&mut line)),
                            LineRead::Eof => {
                                return Err(reject(
                                    ErrorCode::Malformed,
                                    "connection closed inside a batch",
                                ))
                            }
                            LineRead::TooLong => {
                                return Err(reject(
                                    ErrorCode::TooLong,
                                    "record line over the size limit",
                                ))
                            }
                        }
                    }
                    let store = store.clone();
                    let seq = run_blocking(move || lock(&store)?.append(&lines)).await?;
                    ServerMessage::Ack { seq }
                }
                (ClientMessage::Checkpoint { checkpoint }, Some(store)) => {
                    let store = store.clone();
                    let key = self.key.clone();
                    let name = self.name.clone();
                    let receipt =
                        run_blocking(move || lock(&store)?.cosign(&checkpoint, &name, &key))
                            .await?;
                    ServerMessage::Receipt { receipt }
                }
            };
            writer.write_all(&to_line(&reply)).await.map_err(io)?;
            writer.flush().await.map_err(io)?;
        }
    }

    fn hello(
        &self,
        host: &str,
        key: &str,
        names: &[String],
    ) -> Result<(Arc<Mutex<HostStore>>, ServerMessage), Rejection> {
        if !valid_host(host) {
            return Err(reject(
                ErrorCode::Malformed,
                format!("invalid host name {host:?}"),
            ));
        }
        if !names.iter().any(|n| n == host) {
            return Err(reject(
                ErrorCode::HostMismatch,
                format!("hello as host {host:?} but the client certificate names {names:?}"),
            ));
        }
        let store = self
            .host_store(host)
            .map_err(|e| reject(ErrorCode::Storage, format!("{e:#}")))?;
        let welcome = {
            let mut guard = lock(&store)?;
            guard.check_key(key)?;
            let head = guard.chain.head();
            ServerMessage::Welcome {
                collector: self.name.clone(),
                collector_key: self.public_key_hex(),
                next_seq: head.seq + 1,
                head: hex::encode(head.hash),
                last_checkpoint: guard.last_checkpoint,
            }
        };
        Ok((store, welcome))
    }
}

fn lock(store: &Mutex<HostStore>) -> Result<std::sync::MutexGuard<'_, HostStore>, Rejection> {
    store.lock().map_err(|_| {
        reject(
            ErrorCode::Storage,
            "host store lock poisoned by an earlier failure",
        )
    })
}

/// Runs store work (file writes, fsync) off the async threads.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Rejection> + Send + 'static,
) -> Result<T, Rejection> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| reject(ErrorCode::Storage, format!("store task failed: {e}")))?
}

/// DNS names and common name of the client's certificate.
fn client_names(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Vec<String> {
    let Some(cert) = certs.and_then(|c| c.first()) else {
        return Vec::new();
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    for cn in parsed.subject().iter_common_name() {
        if let Ok(text) = cn.as_str() {
            names.push(text.to_owned());
        }
    }
    names
}
