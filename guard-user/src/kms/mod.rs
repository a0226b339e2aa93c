//! Key management services: the interface guard needs from a KMS, and clients
//! for the two it speaks (our own `guard-kms` over HTTPS, and KMIP).
//!
//! Envelope encryption: every volume has its own data key, generated on the
//! host in locked memory and stored on the host only wrapped by a
//! key-encryption key (KEK) that never leaves the KMS. guard gives each volume
//! its own KEK, so revoking one volume's KEK crypto-shreds that volume alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::keyring::SecretKey;

pub mod guard_kms;
pub mod kmip;
pub mod pki;
pub mod server;
pub mod ttlv;

/// What a KMS said, or failed to say, in a form callers can act on: guardd
/// logs the reason and retries; the CLI prints it.
#[derive(Debug, Error)]
pub enum KmsError {
    /// No answer: connection refused, timeout, DNS, reset.
    #[error("KMS {kms} is unreachable: {reason}")]
    Unreachable { kms: String, reason: String },
    /// The TLS handshake failed: wrong CA, expired or unknown certificate.
    #[error("TLS with KMS {kms} failed: {reason}")]
    Tls { kms: String, reason: String },
    /// The KMS answered and said no: revoked, destroyed, unknown key, forbidden.
    #[error("KMS {kms} refused {operation} for key {key}: {reason}")]
    Refused {
        kms: String,
        operation: &'static str,
        key: String,
        reason: String,
    },
    /// The wrapped key did not authenticate under the KEK: the wrapped-key
    /// file was tampered with, or belongs to another key.
    #[error("KMS {kms} could not unwrap the data key of key {key}: {reason} (tampered or foreign wrapped key?)")]
    UnwrapFailed {
        kms: String,
        key: String,
        reason: String,
    },
    /// The KMS answered something that is not a valid reply.
    #[error("KMS {kms} answered garbage to {operation}: {reason}")]
    BadAnswer {
        kms: String,
        operation: &'static str,
        reason: String,
    },
    /// A local problem (reading certificates, building requests).
    #[error("KMS client setup for {kms}: {reason}")]
    Setup { kms: String, reason: String },
}

impl KmsError {
    /// True when retrying later may succeed (guardd's backoff loop keeps trying
    /// on every error, but logs permanent ones as such).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// The state of a key-encryption key in the KMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KekState {
    PreActive,
    Active,
    Revoked,
    Destroyed,
}

/// A key-encryption key as listed by `locate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekInfo {
    pub id: String,
    pub name: String,
    pub state: KekState,
}

/// The operations guard needs from a KMS. Implementations are blocking; async
/// callers run them on `spawn_blocking`.
pub trait Kms: Send + Sync {
    /// A short human description, e.g. `guard-kms https://127.0.0.1:8443`.
    fn describe(&self) -> String;
    /// Creates and activates a new AES-256 KEK named `name`; returns its id.
    fn create_kek(&self, name: &str) -> Result<String, KmsError>;
    /// Finds the KEKs named `name`.
    fn locate(&self, name: &str) -> Result<Vec<KekInfo>, KmsError>;
    /// The state of one KEK.
    fn get(&self, kek_id: &str) -> Result<KekInfo, KmsError>;
    /// Encrypts `data_key` under the KEK, authenticated with `aad`.
    fn wrap(&self, kek_id: &str, data_key: &SecretKey, aad: &[u8]) -> Result<Vec<u8>, KmsError>;
    /// Decrypts a wrapped data key; fails if it does not authenticate.
    fn unwrap(&self, kek_id: &str, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, KmsError>;
    /// Revokes the KEK: the KMS refuses every later unwrap with it.
    fn revoke(&self, kek_id: &str) -> Result<(), KmsError>;
    /// Destroys the KEK's material for good.
    fn destroy(&self, kek_id: &str) -> Result<(), KmsError>;
}

/// Mutual-TLS material of a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file with the CA certificate(s) that sign the server's certificate.
    pub ca: PathBuf,
    /// PEM file with the client certificate (chain).
    pub cert: PathBuf,
    /// PEM file with the client private key.
    pub key: PathBuf,
}

/// How to reach the KMS (the file `/etc/guard/kms.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum KmsConfig {
    /// guard's own KMS: `url` like `https://127.0.0.1:8443`.
    GuardKms { url: String, tls: TlsFiles },
    /// A KMIP server: `address` like `127.0.0.1:5696`; `server_name` is the
    /// name in its certificate.
    Kmip {
        address: String,
        server_name: String,
        tls: TlsFiles,
    },
}

impl KmsConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading KMS configuration {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing KMS configuration {}", path.display()))
    }

    /// The files this host proves itself to the KMS with.
    pub fn tls(&self) -> &TlsFiles {
        match self {
            Self::GuardKms { tls, .. } | Self::Kmip { tls, .. } => tls,
        }
    }

    /// Opens a client for this KMS (no network traffic yet).
    pub fn connect(&self) -> Result<Arc<dyn Kms>> {
        Ok(match self {
            Self::GuardKms { url, tls } => Arc::new(guard_kms::GuardKmsClient::new(url, tls)?),
            Self::Kmip {
                address,
                server_name,
                tls,
            } => Arc::new(kmip::KmipClient::new(address, server_name, tls)?),
        })
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::EPERM) {
            " (while guardd protects itself, it alone reads this host's private keys)"
        } else {
            ""
        };
        anyhow::anyhow!("reading a private key from {}: {e}{why}", path.display())
    })?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("parsing the private key in {}", path.display()))
}

/// The rustls crypto provider used everywhere in guard's KMS code.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client configuration that trusts only `tls.ca` and presents
/// `tls.cert`/`tls.key`.
pub fn client_tls_config(tls: &TlsFiles) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(&tls.ca)? {
        roots
            .add(cert)
            .with_context(|| format!("adding a CA certificate from {}", tls.ca.display()))?;
    }
    let chain = load_certs(&tls.cert)?;
    let key = load_private_key(&tls.key)?;
    rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .with_context(|| {
            format!(
                "client certificate {} / key {}",
                tls.cert.display(),
                tls.key.display()
            )
        })
}

/// After a connection failed in a way that does not say why (a reset or a
/// broken pipe), asks the server again with a bare TLS handshake and waits
/// briefly for its verdict. With TLS 1.3 a server refuses a client
/// certificate only after the client thinks the handshake is done, so its
/// alert can be lost behind the failed request. Returns the TLS error, if any.
pub fn tls_verdict(
    config: Arc<rustls::ClientConfig>,
    address: &str,
    server_name: &str,
) -> Option<String> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let addr = address.to_socket_addrs().ok()?.next()?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).ok()?;
    let mut connection = rustls::ClientConnection::new(config, name).ok()?;
    let mut stream = rustls::Stream::new(&mut connection, &mut tcp);
    let mut byte = [0u8; 1];
    let error = stream.read_exact(&mut byte).err()?;
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(tls.to_string())
}
