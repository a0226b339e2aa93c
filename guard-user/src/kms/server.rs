//! `guard-kms`: a small KMS for users without one, and the demo's default.
//!
//! HTTPS (rustls) that admits only clients with a certificate from the
//! configured CA. Key-encryption keys are generated here and never leave: the
//! store on disk holds each one sealed (AES-256-GCM) under a master key kept in
//! a separate file. Every operation, allowed or refused, writes an audit entry
//! (one JSON line, hash-chained to the previous one) to the audit log and stderr.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::guard_kms::{
    CreateRequest, ErrorReply, LocateReply, UnwrapReply, UnwrapRequest, WrapReply, WrapRequest,
};
use super::pki::write_pki;
use super::{
    crypto_provider, load_certs, load_private_key, KekInfo, KekState, KmsConfig, TlsFiles,
};
use crate::keyring::SecretKey;

const MASTER_KEY_LEN: usize = 32;
const KEK_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const MAX_REQUEST: usize = 64 * 1024;
/// Format byte in front of every wrapped key.
const WRAP_FORMAT_V1: u8 = 1;

/// Everything `guard-kms serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Directory holding `keys.json` (the sealed key store).
    pub state_dir: PathBuf,
    /// File with the 32-byte master key (see [`init_master_key`]).
    pub master_key: PathBuf,
    /// CA whose certificates clients must present.
    pub client_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Append-only audit log (JSON lines).
    pub audit_log: Option<PathBuf>,
    /// Also print each audit entry on stderr (the service's log).
    pub audit_to_stderr: bool,
    /// Also write each audit entry to the systemd journal (start fails if
    /// journald is not listening: an audited service must not run unaudited).
    pub audit_to_journal: bool,
}

/// `MESSAGE_ID` of guard-kms audit entries in the journal (fixed, random).
pub const AUDIT_MESSAGE_ID: &str = "71c2cf62fd728246c9f75a6342c5b8c6";
/// `SYSLOG_IDENTIFIER` of guard-kms journal entries.
pub const JOURNAL_IDENTIFIER: &str = "guard-kms";

/// Writes a new random master key to `path` (mode 0400). Refuses to overwrite.
pub fn init_master_key(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::random(MASTER_KEY_LEN)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .with_context(|| {
            format!(
                "creating master key file {} (it must not exist yet)",
                path.display()
            )
        })?;
    file.write_all(key.as_ref())?;
    file.sync_all()?;
    Ok(())
}

fn load_master_key(path: &Path) -> Result<SecretKey> {
    let bytes = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading master key {}", path.display()))?,
    );
    if bytes.len() != MASTER_KEY_LEN {
        bail!(
            "master key {} has {} bytes, expected {MASTER_KEY_LEN}",
            path.display(),
            bytes.len()
        );
    }
    SecretKey::from_slice(&bytes)
}

/// Starts a guard-kms with a fresh PKI and master key under `dir`, on a
/// loopback port, in a background thread of this process: the demo's
/// embedded KMS, the benchmark's and the guest tests'. Returns the client
/// configuration; the server runs until the process exits.
pub fn start_embedded(dir: &Path) -> Result<KmsConfig> {
    let pki = write_pki(&dir.join("pki"), &["localhost", "127.0.0.1"], "guardd", 1)?;
    let master = dir.join("master.key");
    init_master_key(&master)?;
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        state_dir: dir.join("kms-state"),
        master_key: master,
        client_ca: pki.ca_cert.clone(),
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        audit_log: Some(dir.join("kms-audit.log")),
        audit_to_stderr: false,
        audit_to_journal: false,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(anyhow::Error::from(e)));
                return;
            }
        };
        runtime.block_on(async move {
            match Server::bind(&config).await {
                Ok(server) => {
                    let _ = tx.send(server.local_addr());
                    let _ = server.run().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    });
    let addr = rx.recv().context("embedded guard-kms thread died")??;
    let tls = TlsFiles {
        ca: pki.ca_cert,
        cert: pki.client_cert,
        key: pki.client_key,
    };
    Ok(KmsConfig::GuardKms {
        url: format!("https://{addr}"),
        tls,
    })
}

// ---------------------------------------------------------------------------
// The sealed key store
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    id: String,
    name: String,
    state: KekState,
    created: u64,
    /// Base64 of nonce || AES-256-GCM(master, KEK); None once destroyed.
    sealed: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    keys: Vec<StoredKey>,
}

/// Why an operation on the store failed; maps to an HTTP status.
#[derive(Debug)]
enum StoreError {
    NotFound(String),
    NotActive(String, KekState),
    BadRequest(String),
    Unwrap(String),
    Internal(anyhow::Error),
}

impl StoreError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::NotActive(..) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unwrap(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::NotFound(id) => format!("no key with id {id}"),
            Self::NotActive(id, state) => format!("key {id} is {state:?}, not active"),
            Self::BadRequest(why) => why.clone(),
            Self::Unwrap(why) => why.clone(),
            Self::Internal(e) => format!("internal error: {e:#}"),
        }
    }
}

struct KeyStore {
    path: PathBuf,
    master: SecretKey,
    keys: Vec<StoredKey>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("the kernel CSPRNG is available");
    out
}

fn gcm(key: &[u8]) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(key).expect("32-byte key")
}

impl KeyStore {
    fn open(state_dir: &Path, master: SecretKey) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join("keys.json");
        let keys = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<StoreFile>(&bytes)
                    .with_context(|| format!("parsing key store {}", path.display()))?
                    .keys
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading key store {}", path.display()))
            }
        };
        let store = Self { path, master, keys };
        // Fail at start, not at first use, if the master key is the wrong one.
        for key in store.keys.iter().filter(|k| k.sealed.is_some()) {
            store
                .unseal(key)
                .with_context(|| format!("key store {}", store.path.display()))?;
        }
        Ok(store)
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&StoreFile {
            keys: self.keys.clone(),
        })?;
        write_atomically(&self.path, &bytes)
    }

    fn seal(&self, id: &str, kek: &SecretKey) -> Result<String> {
        let nonce = random_bytes::<NONCE_LEN>();
        let aad = format!("guard-kms-kek-v1:{id}");
        let sealed = gcm(self.master.as_ref())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: kek.as_ref(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("sealing key {id}"))?;
        Ok(B64.encode([&nonce[..], &sealed].concat()))
    }

    fn unseal(&self, key: &StoredKey) -> Result<SecretKey> {
        let sealed = key
            .sealed
            .as_ref()
            .ok_or_else(|| anyhow!("key {} has no material", key.id))?;
        let raw = B64
            .decode(sealed)
            .with_context(|| format!("sealed key {} is not base64", key.id))?;
        if raw.len() < NONCE_LEN {
            bail!("sealed key {} is truncated", key.id);
        }
        let aad = format!("guard-kms-kek-v1:{}", key.id);
        let plain = Zeroizing::new(
            gcm(self.master.as_ref())
                .decrypt(
                    Nonce::from_slice(&raw[..NONCE_LEN]),
                    Payload {
                        msg: &raw[NONCE_LEN..],
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| {
                    anyhow!(
                        "sealed key {} does not authenticate under the master key",
                        key.id
                    )
                })?,
        );
        SecretKey::from_slice(&plain)
    }

    fn find(&self, id: &str) -> Result<&StoredKey, StoreError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    fn active(&self, id: &str) -> Result<&StoredKey, StoreError> {
        let key = self.find(id)?;
        if key.state != KekState::Active {
            return Err(StoreError::NotActive(id.to_string(), key.state));
        }
        Ok(key)
    }

    fn create(&mut self, name: &str) -> Result<KekInfo, StoreError> {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(StoreError::BadRequest(format!("invalid key name {name:?}")));
        }
        let id = hex::encode(random_bytes::<16>());
        let kek = SecretKey::random(KEK_LEN).map_err(StoreError::Internal)?;
        let sealed = self.seal(&id, &kek).map_err(StoreError::Internal)?;
        let key = StoredKey {
            id,
            name: name.to_string(),
            state: KekState::Active,
            created: now(),
            sealed: Some(sealed),
        };
        self.keys.push(key.clone());
        if let Err(e) = self.save() {
            self.keys.pop();
            return Err(StoreError::Internal(e));
        }
        Ok(info(&key))
    }

    fn wrap(&self, id: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = self.active(id)?;
        let kek = self.unseal(key).map_err(StoreError::Internal)?;
        let nonce = random_bytes::<NONCE_LEN>();
        let full_aad = wrap_aad(id, aad);
        let ct = gcm(kek.as_ref())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .map_err(|_| StoreError::Internal(anyhow!("encrypting under key {id}")))?;
        Ok([&[WRAP_FORMAT_V1][..], &nonce, &ct].concat())
    }

    fn unwrap(
        &self,
        id: &str,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let key = self.active(id)?;
        if wrapped.len() < 1 + NONCE_LEN + 16 || wrapped[0] != WRAP_FORMAT_V1 {
            return Err(StoreError::Unwrap(format!(
                "wrapped key of {} bytes is not in guard-kms format 1",
                wrapped.len()
            )));
        }
        let kek = self.unseal(key).map_err(StoreError::Internal)?;
        let full_aad = wrap_aad(id, aad);
        gcm(kek.as_ref())
            .decrypt(
                Nonce::from_slice(&wrapped[1..1 + NONCE_LEN]),
                Payload {
                    msg: &wrapped[1 + NONCE_LEN..],
                    aad: &full_aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                StoreError::Unwrap("wrapped key does not authenticate under this key".into())
            })
    }

    fn set_state(&mut self, id: &str, state: KekState) -> Result<KekInfo, StoreError> {
        let index = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let before = self.keys[index].clone();
        if before.state == KekState::Destroyed {
            return Err(StoreError::NotActive(id.to_string(), before.state));
        }
        self.keys[index].state = state;
        if state == KekState::Destroyed {
            self.keys[index].sealed = None;
        }
        if let Err(e) = self.save() {
            self.keys[index] = before;
            return Err(StoreError::Internal(e));
        }
        Ok(info(&self.keys[index]))
    }
}

fn wrap_aad(id: &str, aad: &[u8]) -> Vec<u8> {
    [format!("guard-kms-wrap-v1:{id}:").as_bytes(), aad].concat()
}

fn info(key: &StoredKey) -> KekInfo {
    KekInfo {
        id: key.id.clone(),
        name: key.name.clone(),
        state: key.state,
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// file: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct AuditEntry<'a> {
    time: u64,
    client: &'a str,
    operation: &'a str,
    key: &'a str,
    outcome: &'a str,
    detail: &'a str,
    /// SHA-256 of the previous entry's line: deleting or editing an entry breaks the chain.
    prev: String,
}

struct Audit {
    file: Option<File>,
    to_stderr: bool,
    journal: Option<crate::journal::Journal>,
    last_hash: [u8; 32],
}

impl Audit {
    fn open(path: Option<&Path>, to_stderr: bool, to_journal: bool) -> Result<Self> {
        let journal = match to_journal {
            true => Some(
                crate::journal::Journal::connect()
                    .context("connecting to the systemd journal for audit entries")?
                    .with_identifier(JOURNAL_IDENTIFIER),
            ),
            false => None,
        };
        let mut last_hash = [0u8; 32];
        let file = match path {
            None => None,
            Some(path) => {
                if let Ok(text) = std::fs::read_to_string(path) {
                    if let Some(line) = text.lines().last() {
                        last_hash = Sha256::digest(line.as_bytes()).into();
                    }
                }
                Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("opening audit log {}", path.display()))?,
                )
            }
        };
        Ok(Self {
            file,
            to_stderr,
            journal,
            last_hash,
        })
    }

    fn record(&mut self, client: &str, operation: &str, key: &str, outcome: &str, detail: &str) {
        let entry = AuditEntry {
            time: now(),
            client,
            operation,
            key,
            outcome,
            detail,
            prev: hex::encode(self.last_hash),
        };
        let line = serde_json::to_string(&entry).expect("serializable");
        self.last_hash = Sha256::digest(line.as_bytes()).into();
        if self.to_stderr {
            eprintln!("guard-kms audit: {line}");
        }
        if let Some(file) = self.file.as_mut() {
            // An audit write failure must be visible; it does not stop the service.
            if let Err(e) = writeln!(file, "{line}").and_then(|_| file.sync_data()) {
                eprintln!("guard-kms: writing the audit log failed: {e}");
            }
        }
        if let Some(journal) = &self.journal {
            let message = format!(
                "guard-kms {operation} {key}: {outcome} ({client}){}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            );
            let priority = if outcome == "ok" { "6" } else { "4" };
            let fields = [
                ("MESSAGE", message.as_str()),
                ("MESSAGE_ID", AUDIT_MESSAGE_ID),
                ("PRIORITY", priority),
                ("GUARD_KMS_CLIENT", client),
                ("GUARD_KMS_OPERATION", operation),
                ("GUARD_KMS_KEY", key),
                ("GUARD_KMS_OUTCOME", outcome),
                ("GUARD_KMS_DETAIL", detail),
                ("GUARD_KMS_ENTRY", line.as_str()),
            ];
            if let Err(e) = journal.send(&fields) {
                eprintln!("guard-kms: writing the audit entry to the journal failed: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// HTTPS
// ---------------------------------------------------------------------------

struct State {
    store: Mutex<KeyStore>,
    audit: Mutex<Audit>,
}

impl State {
    fn store(&self) -> MutexGuard<'_, KeyStore> {
        self.store.lock().expect("store lock")
    }
}

fn tls_server_config(config: &ServerConfig) -> Result<rustls::ServerConfig> {
    let provider = crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(&config.client_ca)? {
        roots.add(cert).context("adding the client CA")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("building the client certificate verifier")?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&config.cert)?, load_private_key(&config.key)?)
        .context("server certificate and key")
}

/// A bound server, ready to run. Binding separately lets callers learn the
/// port when listening on port 0.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
}

impl Server {
    pub async fn bind(config: &ServerConfig) -> Result<Self> {
        let tls = tls_server_config(config)?;
        let master = load_master_key(&config.master_key)?;
        let store = KeyStore::open(&config.state_dir, master)?;
        let audit = Audit::open(
            config.audit_log.as_deref(),
            config.audit_to_stderr,
            config.audit_to_journal,
        )?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            state: Arc::new(State {
                store: Mutex::new(store),
                audit: Mutex::new(audit),
            }),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until the task is dropped.
    pub async fn run(self) -> Result<()> {
        loop {
            let (tcp, peer) = self
                .listener
                .accept()
                .await
                .context("accepting a connection")?;
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            tokio::spawn(async move { serve_connection(acceptor, state, tcp, peer).await });
        }
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    state: Arc<State>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    // Replies are small: without this, Nagle and delayed ACKs can add ~40 ms.
    let _ = tcp.set_nodelay(true);
    let refuse_handshake = |reason: &str| {
        audit(
            &state,
            &peer.to_string(),
            "tls-handshake",
            "",
            "refused",
            reason,
        )
    };
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refuse_handshake(&e.to_string()),
        Err(_) => return refuse_handshake("handshake timed out"),
    };
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| {
            format!(
                "{peer} cert-sha256:{}",
                hex::encode(&Sha256::digest(cert.as_ref())[..16])
            )
        })
        .unwrap_or_else(|| peer.to_string());
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(handle(&state, &client, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

fn audit(state: &State, client: &str, operation: &str, key: &str, outcome: &str, detail: &str) {
    state
        .audit
        .lock()
        .expect("audit lock")
        .record(client, operation, key, outcome, detail);
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("serializable");
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

fn error_response(error: &StoreError) -> Response<Full<Bytes>> {
    json_response(
        error.status(),
        &ErrorReply {
            error: error.message(),
        },
    )
}

/// Reads the whole body (every route does, so the connection can be reused).
async fn read_body(body: Incoming) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let bytes = Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| StoreError::BadRequest(format!("reading the request body: {e}")))?
        .to_bytes();
    Ok(Zeroizing::new(bytes.to_vec()))
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body)
        .map_err(|e| StoreError::BadRequest(format!("invalid JSON request: {e}")))
}

fn decode_b64(field: &str, text: &str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    B64.decode(text)
        .map(Zeroizing::new)
        .map_err(|e| StoreError::BadRequest(format!("field {field} is not base64: {e}")))
}

/// Moves key `id` to `new_state`; the reply is the key's new description.
fn set_key_state(
    state: &State,
    id: &str,
    new_state: KekState,
) -> Result<Response<Full<Bytes>>, StoreError> {
    state
        .store()
        .set_state(id, new_state)
        .map(|info| json_response(StatusCode::OK, &info))
}

async fn handle(state: &State, client: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(error) => {
            audit(
                state,
                client,
                "read-request",
                "",
                "refused",
                &error.message(),
            );
            return error_response(&error);
        }
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (operation, key, result) = match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "keys"]) => {
            let result = async {
                let req: CreateRequest = parse_json(&body)?;
                let info = state.store().create(&req.name)?;
                Ok(json_response(StatusCode::CREATED, &info))
            }
            .await;
            ("create", String::new(), result)
        }
        (&Method::GET, ["v1", "keys"]) => {
            let params: HashMap<String, String> = url_query(&query);
            let result = match params.get("name") {
                None => Err(StoreError::BadRequest("locate needs ?name=".into())),
                Some(name) => {
                    let store = state.store();
                    let keys = store
                        .keys
                        .iter()
                        .filter(|k| &k.name == name)
                        .map(info)
                        .collect();
                    Ok(json_response(StatusCode::OK, &LocateReply { keys }))
                }
            };
            (
                "locate",
                params.get("name").cloned().unwrap_or_default(),
                result,
            )
        }
        (&Method::GET, ["v1", "keys", id]) => {
            let result = state
                .store()
                .find(id)
                .map(|k| json_response(StatusCode::OK, &info(k)));
            ("get", id.to_string(), result)
        }
        (&Method::POST, ["v1", "keys", id, "wrap"]) => {
            let id = id.to_string();
            let result = async {
                let req: WrapRequest = parse_json(&body)?;
                let _wipe = Zeroizing::new(req.plaintext.clone());
                let plaintext = decode_b64("plaintext", &req.plaintext)?;
                let aad = decode_b64("aad", &req.aad)?;
                let wrapped = state.store().wrap(&id, &plaintext, &aad)?;
                Ok(json_response(
                    StatusCode::OK,
                    &WrapReply {
                        wrapped: B64.encode(wrapped),
                    },
                ))
            }
            .await;
            ("wrap", id, result)
        }
        (&Method::POST, ["v1", "keys", id, "unwrap"]) => {
            let id = id.to_string();
            let result = async {
                let req: UnwrapRequest = parse_json(&body)?;
                let wrapped = decode_b64("wrapped", &req.wrapped)?;
                let aad = decode_b64("aad", &req.aad)?;
                let plaintext = state.store().unwrap(&id, &wrapped, &aad)?;
                let encoded = Zeroizing::new(B64.encode(&plaintext[..]));
                Ok(json_response(
                    StatusCode::OK,
                    &UnwrapReply {
                        plaintext: encoded.to_string(),
                    },
                ))
            }
            .await;
            ("unwrap", id, result)
        }
        (&Method::POST, ["v1", "keys", id, "revoke"]) => (
            "revoke",
            id.to_string(),
            set_key_state(state, id, KekState::Revoked),
        ),
        (&Method::POST, ["v1", "keys", id, "destroy"]) => (
            "destroy",
            id.to_string(),
            set_key_state(state, id, KekState::Destroyed),
        ),
        _ => (
            "unknown",
            String::new(),
            Err(StoreError::BadRequest(format!("no route {method} {path}"))),
        ),
    };
    match result {
        Ok(response) => {
            audit(state, client, operation, &key, "ok", "");
            response
        }
        Err(error) => {
            audit(state, client, operation, &key, "refused", &error.message());
            error_response(&error)
        }
    }
}

/// Parses `a=b&c=d` with percent-decoding of `%XX` and `+`.
fn url_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), SecretKey::random(32).unwrap()).unwrap();
        (dir, store)
    }

    #[test]
    fn wrap_unwrap_round_trip_and_aad_binding() {
        let (_dir, mut store) = store();
        let id = store.create("vol-a").unwrap().id;
        let wrapped = store.wrap(&id, b"data key bytes", b"aad-1").unwrap();
        assert_eq!(
            &store.unwrap(&id, &wrapped, b"aad-1").unwrap()[..],
            b"data key bytes"
        );
        assert!(matches!(
            store.unwrap(&id, &wrapped, b"aad-2"),
            Err(StoreError::Unwrap(_))
        ));
        let mut tampered = wrapped.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            store.unwrap(&id, &tampered, b"aad-1"),
            Err(StoreError::Unwrap(_))
        ));
    }

    #[test]
    fn revoked_and_destroyed_keys_are_refused() {
        let (_dir, mut store) = store();
        let id = store.create("vol-b").unwrap().id;
        let wrapped = store.wrap(&id, b"k", b"").unwrap();
        store.set_state(&id, KekState::Revoked).unwrap();
        assert!(matches!(
            store.unwrap(&id, &wrapped, b""),
            Err(StoreError::NotActive(_, KekState::Revoked))
        ));
        store.set_state(&id, KekState::Destroyed).unwrap();
        assert!(store.find(&id).unwrap().sealed.is_none());
    }

    #[test]
    fn store_reopens_only_with_the_same_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let master = SecretKey::random(32).unwrap();
        let id = {
            let mut store =
                KeyStore::open(dir.path(), SecretKey::from_slice(master.as_ref()).unwrap())
                    .unwrap();
            store.create("vol-c").unwrap().id
        };
        let store =
            KeyStore::open(dir.path(), SecretKey::from_slice(master.as_ref()).unwrap()).unwrap();
        assert_eq!(store.find(&id).unwrap().name, "vol-c");
        let text = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(text.contains(&id));
        let err = KeyStore::open(dir.path(), SecretKey::random(32).unwrap())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("does not authenticate"),
            "{err:#}"
        );
    }

    #[test]
    fn query_decoding() {
        let q = url_query("name=guard-volume%3Adb+1&x");
        assert_eq!(q["name"], "guard-volume:db 1");
    }
}
