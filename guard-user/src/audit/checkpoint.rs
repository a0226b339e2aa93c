//! Signed checkpoints and the collectors' receipts (cosignatures).
//!
//! A checkpoint is the host's Ed25519 signature over this byte encoding:
//!
//! ```text
//! "guard-audit-checkpoint-v1\0" | u32 len(host) | host | u64 seq | head hash (32) | i64 time_ns
//! ```
//!
//! where `head` is the hash of record `seq`. A receipt is a collector's
//! Ed25519 signature over `"guard-audit-cosign-v1\0"` followed by the same
//! checkpoint encoding: the collector states that it stores the host's chain
//! up to `seq` with that head hash.
//!
//! Key files hold the 32-byte Ed25519 seed as 64 hex digits (mode 0600); public
//! key files hold the 32-byte public key as 64 hex digits.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::record::{parse_hash, valid_host, Hash, Seq};

const CHECKPOINT_DOMAIN: &[u8] = b"guard-audit-checkpoint-v1\0";
const COSIGN_DOMAIN: &[u8] = b"guard-audit-cosign-v1\0";

/// Why a checkpoint or receipt is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("field `{0}` is not valid hex of the right length")]
    BadHex(&'static str),
    #[error("`{0}` is not a valid Ed25519 public key")]
    BadKey(&'static str),
    #[error("the signature does not verify under key {0}")]
    BadSignature(String),
    #[error("signed by key {found}, but the expected key is {expected}")]
    WrongKey { expected: String, found: String },
    #[error("invalid host name")]
    BadHost,
}

/// A host's signed statement: "my chain has `seq` records and record `seq` hashes to `head`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub host: String,
    pub seq: Seq,
    /// Hex hash of record `seq`.
    pub head: String,
    pub time_ns: i64,
    /// Hex Ed25519 public key of the host.
    pub key: String,
    /// Hex Ed25519 signature.
    pub sig: String,
}

/// A collector's cosignature of a host checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The collector's name (as configured on the collector).
    pub collector: String,
    /// Hex Ed25519 public key of the collector.
    pub collector_key: String,
    /// The checkpoint the collector cosigned.
    pub checkpoint: Checkpoint,
    /// Hex Ed25519 signature of the collector over the cosign encoding.
    pub sig: String,
}

fn checkpoint_message(host: &str, seq: Seq, head: &Hash, time_ns: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + host.len() + 60);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&(host.len() as u32).to_be_bytes());
    m.extend_from_slice(host.as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&time_ns.to_be_bytes());
    m
}

fn parse_key(text: &str, field: &'static str) -> Result<VerifyingKey, SignatureError> {
    let bytes = parse_hash(text).ok_or(SignatureError::BadHex(field))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::BadKey(field))
}

fn parse_sig(text: &str) -> Result<Signature, SignatureError> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| SignatureError::BadHex("sig"))?;
    Ok(Signature::from_bytes(&bytes))
}

impl Checkpoint {
    /// Signs a checkpoint of `host`'s chain at `seq` whose head is `head`.
    pub fn sign(key: &SigningKey, host: &str, seq: Seq, head: &Hash, time_ns: i64) -> Checkpoint {
        let sig = key.sign(&checkpoint_message(host, seq, head, time_ns));
        Checkpoint {
            host: host.to_owned(),
            seq,
            head: hex::encode(head),
            time_ns,
            key: hex::encode(key.verifying_key().as_bytes()),
            sig: hex::encode(sig.to_bytes()),
        }
    }

    /// The head hash, parsed.
    pub fn head_hash(&self) -> Result<Hash, SignatureError> {
        parse_hash(&self.head).ok_or(SignatureError::BadHex("head"))
    }

    fn message(&self) -> Result<Vec<u8>, SignatureError> {
        if !valid_host(&self.host) {
            return Err(SignatureError::BadHost);
        }
        Ok(checkpoint_message(
            &self.host,
            self.seq,
            &self.head_hash()?,
            self.time_ns,
        ))
    }

    /// Checks the signature under the embedded key, and that the embedded key is
    /// `expected` when a key is pinned.
    pub fn verify(&self, expected: Option<&VerifyingKey>) -> Result<(), SignatureError> {
        let key = parse_key(&self.key, "key")?;
        if let Some(expected) = expected {
            if expected != &key {
                return Err(SignatureError::WrongKey {
                    expected: hex::encode(expected.as_bytes()),
                    found: self.key.clone(),
                });
            }
        }
        let sig = parse_sig(&self.sig)?;
        key.verify(&self.message()?, &sig)
            .map_err(|_| SignatureError::BadSignature(self.key.clone()))
    }

    /// One JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Receipt {
    /// The collector cosigns a checkpoint it has checked against its store.
    pub fn cosign(
        key: &SigningKey,
        collector: &str,
        checkpoint: &Checkpoint,
    ) -> anyhow::Result<Receipt> {
        let mut message = COSIGN_DOMAIN.to_vec();
        message.extend_from_slice(&checkpoint.message()?);
        Ok(Receipt {
            collector: collector.to_owned(),
            collector_key: hex::encode(key.verifying_key().as_bytes()),
            checkpoint: checkpoint.clone(),
            sig: hex::encode(key.sign(&message).to_bytes()),
        })
    }

    /// Checks the collector's signature (under `expected` when pinned) and the
    /// host's signature on the checkpoint inside.
    pub fn verify(
        &self,
        expected_collector: Option<&VerifyingKey>,
        expected_host: Option<&VerifyingKey>,
    ) -> Result<(), SignatureError> {
        self.checkpoint.verify(expected_host)?;
        let key = parse_key(&self.collector_key, "collector_key")?;
        if let Some(expected) = expected_collector {
            if expected != &key {
                return Err(SignatureError::WrongKey {
                    expected: hex::encode(expected.as_bytes()),
                    found: self.collector_key.clone(),
                });
            }
        }
        let mut message = COSIGN_DOMAIN.to_vec();
        message.extend_from_slice(&self.checkpoint.message()?);
        key.verify(&message, &parse_sig(&self.sig)?)
            .map_err(|_| SignatureError::BadSignature(self.collector_key.clone()))
    }

    /// One JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads an Ed25519 signing key (64 hex digits), or creates one (mode 0600)
/// from the OS random generator if the file does not exist.
pub fn load_or_create_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    match fs::read_to_string(path) {
        Ok(text) => {
            parse_signing_key(&text).with_context(|| format!("signing key file {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_signing_key(path),
        Err(e) => Err(e).with_context(|| format!("reading signing key file {}", path.display())),
    }
}

/// Creates a signing key file (mode 0600) holding a fresh key; refuses to
/// overwrite an existing file.
pub fn create_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let key = generate_signing_key()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating signing key file {}", path.display()))?;
    file.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())?;
    file.sync_all()?;
    Ok(key)
}

/// Reads an existing Ed25519 signing key file (64 hex digits).
pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading signing key file {}", path.display()))?;
    parse_signing_key(&text).with_context(|| format!("signing key file {}", path.display()))
}

/// Writes a public key file (64 hex digits); refuses to overwrite an existing file.
pub fn create_verifying_key_file(path: &Path, key: &VerifyingKey) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("creating public key file {}", path.display()))?;
    file.write_all(format!("{}\n", hex::encode(key.as_bytes())).as_bytes())?;
    file.sync_all()
        .with_context(|| format!("writing public key file {}", path.display()))
}

/// A fresh signing key from the OS random generator.
pub fn generate_signing_key() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("reading the OS random generator: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn parse_signing_key(text: &str) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .context("expected 64 hex digits (an Ed25519 seed)")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a public key file (64 hex digits).
pub fn load_verifying_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading public key file {}", path.display()))?;
    parse_verifying_key(text.trim()).with_context(|| format!("public key file {}", path.display()))
}

/// Parses a public key from 64 hex digits.
pub fn parse_verifying_key(text: &str) -> anyhow::Result<VerifyingKey> {
    let Some(bytes) = parse_hash(text) else {
        bail!("expected 64 hex digits (an Ed25519 public key), found {text:?}");
    };
    VerifyingKey::from_bytes(&bytes).context("not a valid Ed25519 public key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_signs_and_verifies() {
        let key = generate_signing_key().unwrap();
        let cp = Checkpoint::sign(&key, "db1", 10, &[7; 32], 99);
        cp.verify(None).unwrap();
        cp.verify(Some(&key.verifying_key())).unwrap();
        let other = generate_signing_key().unwrap();
        assert!(matches!(
            cp.verify(Some(&other.verifying_key())),
            Err(SignatureError::WrongKey { .. })
        ));
        let mut moved = cp.clone();
        moved.seq = 11;
        assert!(matches!(
            moved.verify(None),
            Err(SignatureError::BadSignature(_))
        ));
    }

    #[test]
    fn receipt_covers_the_checkpoint() {
        let host = generate_signing_key().unwrap();
        let collector = generate_signing_key().unwrap();
        let cp = Checkpoint::sign(&host, "db1", 10, &[7; 32], 99);
        let receipt = Receipt::cosign(&collector, "c1", &cp).unwrap();
        receipt
            .verify(
                Some(&collector.verifying_key()),
                Some(&host.verifying_key()),
            )
            .unwrap();
        let mut forged = receipt.clone();
        forged.checkpoint = Checkpoint::sign(&host, "db1", 10, &[8; 32], 99);
        assert!(matches!(
            forged.verify(None, None),
            Err(SignatureError::BadSignature(_))
        ));
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/host.key");
        let a = load_or_create_signing_key(&path).unwrap();
        let b = load_or_create_signing_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        fs::write(&path, "garbage").unwrap();
        let err = load_or_create_signing_key(&path).unwrap_err();
        assert!(format!("{err:#}").contains("64 hex digits"));
    }
}
