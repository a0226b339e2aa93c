//! Signed policies and orders.
//!
//! Root on the guarded host must not be able to change the policy or switch
//! the guard off on its own. So, once guardd is started with `--trust-key`,
//! it accepts a policy, a disarm order or a stop order only when it is signed
//! off-host with the Ed25519 key whose public half was pinned when the guard
//! was armed ([`trust`]).
//!
//! A signed document is JSON:
//!
//! ```json
//! { "format": "guard-signed-v1",
//!   "signer": "SHA256:<base64 of sha256(public key)>",
//!   "payload": "<base64 of the signed bytes>",
//!   "signature": "<base64 of the Ed25519 signature>" }
//! ```
//!
//! The signature covers `"guard-signed-document-v1\0"` followed by the payload
//! bytes, which are the JSON of a [`Payload`]: a policy (its text, as written,
//! and a serial that must grow from one applied policy to the next, so an
//! older policy cannot be applied again), or an order (`disarm` or `stop`)
//! bound to one guardd instance by the nonce that guardd handed out.
//!
//! Key files are those of the audit trail's checkpoints
//! ([`crate::audit::checkpoint`]): the private key is the 32-byte seed as 64
//! hex digits (mode 0600), the public key 64 hex digits.

pub mod trust;

use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::SystemTime;

pub use trust::{Refusal, Trust};

/// The `format` of a signed document.
pub const FORMAT: &str = "guard-signed-v1";
/// Prefixed to the payload before signing, so a signature made for guard
/// cannot be passed off as one over anything else (and the reverse).
const DOMAIN: &[u8] = b"guard-signed-document-v1\0";

/// The fingerprint of a public key: `SHA256:` and the unpadded base64 of the
/// SHA-256 of its 32 bytes (as `ssh-keygen -l` shows keys).
pub fn fingerprint(key: &VerifyingKey) -> String {
    format!(
        "SHA256:{}",
        B64_NO_PAD.encode(Sha256::digest(key.as_bytes()))
    )
}

/// A fresh nonce for orders: 16 random bytes as hex.
pub fn new_nonce() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("reading the OS random generator: {e}"))?;
    Ok(hex::encode(bytes))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What a signed order tells guardd to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OrderAction {
    /// Detach the programs, remove the pins and exit: enforcement ends.
    Disarm,
    /// Exit, lifting guardd's self-protection; enforcement stays armed.
    Stop,
}

impl fmt::Display for OrderAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderAction::Disarm => "disarm",
            OrderAction::Stop => "stop",
        })
    }
}

/// The signed bytes, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Payload {
    Policy {
        /// Must be greater than the serial of the last applied signed policy.
        serial: u64,
        signed_at: String,
        /// The policy's JSON text, exactly as it was signed.
        policy: String,
    },
    Order {
        action: OrderAction,
        /// The nonce of the guardd instance the order is for.
        nonce: String,
        signed_at: String,
    },
}

impl Payload {
    pub fn policy(text: &str, serial: u64) -> Payload {
        Payload::Policy {
            serial,
            signed_at: now_rfc3339(),
            policy: text.to_owned(),
        }
    }

    pub fn order(action: OrderAction, nonce: &str) -> Payload {
        Payload::Order {
            action,
            nonce: nonce.to_owned(),
            signed_at: now_rfc3339(),
        }
    }

    /// What the payload is, for messages: `policy`, `disarm order`, `stop order`.
    pub fn describe(&self) -> String {
        match self {
            Payload::Policy { .. } => "policy".into(),
            Payload::Order { action, .. } => format!("{action} order"),
        }
    }
}

/// Why a signed document is not acceptable. Each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("not a signed guard document: {0}")]
    Malformed(String),
    #[error("unknown signed document format {found:?} (this guard reads {FORMAT:?})")]
    UnknownFormat { found: String },
    #[error("field `{field}` is not valid base64 ({reason}); was the document truncated?")]
    BadBase64 { field: &'static str, reason: String },
    #[error("field `signature` holds {0} bytes, an Ed25519 signature has 64")]
    SignatureLength(usize),
    #[error("signed by key {found}, but guard trusts only key {trusted}")]
    WrongKey { trusted: String, found: String },
    #[error(
        "the signature does not verify under the trusted key {0}: the document \
         was changed after it was signed, or another key signed it"
    )]
    BadSignature(String),
    #[error("the signed payload is not a guard policy or order: {0}")]
    BadPayload(String),
}

impl DocumentError {
    /// A short stable name, for the journal's `GUARD_REFUSAL` field.
    pub fn code(&self) -> &'static str {
        match self {
            DocumentError::Malformed(_) => "malformed",
            DocumentError::UnknownFormat { .. } => "unknown-format",
            DocumentError::BadBase64 { .. } => "bad-base64",
            DocumentError::SignatureLength(_) => "bad-signature",
            DocumentError::WrongKey { .. } => "wrong-key",
            DocumentError::BadSignature(_) => "bad-signature",
            DocumentError::BadPayload(_) => "bad-payload",
        }
    }
}

/// A signed policy or order, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDocument {
    pub format: String,
    /// Fingerprint of the signing key.
    pub signer: String,
    /// base64 of the signed bytes.
    pub payload: String,
    /// base64 of the Ed25519 signature over the domain and the signed bytes.
    pub signature: String,
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(payload);
    message
}

impl SignedDocument {
    /// Signs `payload` with `key`.
    pub fn sign(key: &SigningKey, payload: &Payload) -> SignedDocument {
        let bytes = serde_json::to_vec(payload).expect("a payload always serializes");
        let signature = key.sign(&signed_message(&bytes));
        SignedDocument {
            format: FORMAT.to_owned(),
            signer: fingerprint(&key.verifying_key()),
            payload: B64.encode(&bytes),
            signature: B64.encode(signature.to_bytes()),
        }
    }

    /// Whether `text` looks like a signed document rather than a bare policy
    /// (a policy has no `signature` field: its format forbids unknown fields).
    pub fn looks_signed(text: &str) -> bool {
        // Only the top-level keys are kept: a large policy is skipped over,
        // not built into a tree, on every apply.
        serde_json::from_str::<std::collections::HashMap<String, serde::de::IgnoredAny>>(text)
            .map(|top| top.contains_key("signature") || top.contains_key("format"))
            .unwrap_or(false)
    }

    pub fn from_json(text: &str) -> Result<SignedDocument, DocumentError> {
        let document: SignedDocument =
            serde_json::from_str(text).map_err(|e| DocumentError::Malformed(e.to_string()))?;
        if document.format != FORMAT {
            return Err(DocumentError::UnknownFormat {
                found: document.format,
            });
        }
        Ok(document)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a document always serializes") + "\n"
    }

    /// Checks that `trusted` signed exactly these bytes and returns what they say.
    pub fn verify(&self, trusted: &VerifyingKey) -> Result<Payload, DocumentError> {
        let trusted_print = fingerprint(trusted);
        if self.signer != trusted_print {
            return Err(DocumentError::WrongKey {
                trusted: trusted_print,
                found: self.signer.clone(),
            });
        }
        let signature = decode("signature", &self.signature)?;
        let signature: [u8; 64] = signature
            .as_slice()
            .try_into()
            .map_err(|_| DocumentError::SignatureLength(signature.len()))?;
        let bytes = decode("payload", &self.payload)?;
        trusted
            .verify(&signed_message(&bytes), &Signature::from_bytes(&signature))
            .map_err(|_| DocumentError::BadSignature(trusted_print))?;
        serde_json::from_slice(&bytes).map_err(|e| DocumentError::BadPayload(e.to_string()))
    }
}

fn decode(field: &'static str, text: &str) -> Result<Vec<u8>, DocumentError> {
    B64.decode(text.trim())
        .map_err(|e| DocumentError::BadBase64 {
            field,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::generate_signing_key;

    const POLICY: &str = r#"{"mode":"enforce","protected":[]}"#;

    fn signed_policy(key: &SigningKey) -> SignedDocument {
        SignedDocument::sign(key, &Payload::policy(POLICY, 7))
    }

    #[test]
    fn only_top_level_signature_keys_make_a_document_look_signed() {
        assert!(SignedDocument::looks_signed(r#"{"format": 1}"#));
        assert!(SignedDocument::looks_signed(
            r#"{"a": [1, {"b": 2}], "signature": null}"#
        ));
        assert!(!SignedDocument::looks_signed(
            r#"{"mode": "enforce", "protected": [{"format": 1, "signature": 2}]}"#
        ));
        assert!(!SignedDocument::looks_signed(r#"["format", "signature"]"#));
        assert!(!SignedDocument::looks_signed("not json"));
        assert!(!SignedDocument::looks_signed(r#"{"format": 1"#));
    }

    /// guardd asks whether a document looks signed only when it does not
    /// parse as a policy: no document may do both.
    #[test]
    fn a_document_that_looks_signed_never_parses_as_a_policy() {
        let key = generate_signing_key().unwrap();
        let valid = r#"{"$schema":"s","mode":"audit","protected":[{"path":"/d","rules":[]}]"#;
        let looks_signed = [
            signed_policy(&key).to_json(),
            format!(r#"{valid},"format":1}}"#),
            format!(r#"{valid},"signature":"x"}}"#),
            format!(r#"{{"signature":null,{}"#, &valid[1..]) + "}",
        ];
        for text in looks_signed {
            assert!(SignedDocument::looks_signed(&text), "{text}");
            assert!(crate::policy::parse(&text).is_err(), "{text}");
        }
        assert!(crate::policy::parse(&format!("{valid}}}")).is_ok());
    }

    #[test]
    fn a_signed_policy_verifies_and_keeps_its_exact_text() {
        let key = generate_signing_key().unwrap();
        let text = signed_policy(&key).to_json();
        assert!(SignedDocument::looks_signed(&text));
        assert!(!SignedDocument::looks_signed(POLICY));
        let document = SignedDocument::from_json(&text).unwrap();
        match document.verify(&key.verifying_key()).unwrap() {
            Payload::Policy { serial, policy, .. } => {
                assert_eq!(serial, 7);
                assert_eq!(policy, POLICY);
            }
            other => panic!("expected a policy, got {other:?}"),
        }
    }

    #[test]
    fn an_order_verifies_with_its_nonce() {
        let key = generate_signing_key().unwrap();
        let nonce = new_nonce().unwrap();
        let document = SignedDocument::sign(&key, &Payload::order(OrderAction::Disarm, &nonce));
        let payload = document.verify(&key.verifying_key()).unwrap();
        assert_eq!(payload.describe(), "disarm order");
        assert!(matches!(payload, Payload::Order { nonce: n, .. } if n == nonce));
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let key = generate_signing_key().unwrap();
        let mut document = signed_policy(&key);
        let other = serde_json::to_vec(&Payload::policy(POLICY, 8)).unwrap();
        document.payload = B64.encode(other);
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(matches!(err, DocumentError::BadSignature(_)), "{err}");
        assert!(
            err.to_string().contains("changed after it was signed"),
            "{err}"
        );
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let key = generate_signing_key().unwrap();
        let mut document = signed_policy(&key);
        let mut sig = B64.decode(&document.signature).unwrap();
        sig[10] ^= 1;
        document.signature = B64.encode(sig);
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(matches!(err, DocumentError::BadSignature(_)), "{err}");
    }

    #[test]
    fn another_key_is_refused_by_name() {
        let key = generate_signing_key().unwrap();
        let other = generate_signing_key().unwrap();
        let document = signed_policy(&other);
        let err = document.verify(&key.verifying_key()).unwrap_err();
        let (trusted, found) = (
            fingerprint(&key.verifying_key()),
            fingerprint(&other.verifying_key()),
        );
        assert_eq!(
            err,
            DocumentError::WrongKey {
                trusted: trusted.clone(),
                found: found.clone()
            }
        );
        assert!(err.to_string().contains(&trusted) && err.to_string().contains(&found));
    }

    #[test]
    fn another_key_claiming_the_trusted_fingerprint_is_refused() {
        let key = generate_signing_key().unwrap();
        let other = generate_signing_key().unwrap();
        let mut document = signed_policy(&other);
        document.signer = fingerprint(&key.verifying_key());
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(matches!(err, DocumentError::BadSignature(_)), "{err}");
    }

    #[test]
    fn garbage_is_refused_clearly() {
        for text in ["", "not json", "[]", r#"{"format":"guard-signed-v1"}"#] {
            let err = SignedDocument::from_json(text).unwrap_err();
            assert!(matches!(err, DocumentError::Malformed(_)), "{text}: {err}");
            assert!(err.to_string().starts_with("not a signed guard document"));
        }
        let key = generate_signing_key().unwrap();
        let mut value = serde_json::to_value(signed_policy(&key)).unwrap();
        value["format"] = "guard-signed-v9".into();
        let err = SignedDocument::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("guard-signed-v9"), "{err}");
        value["format"] = FORMAT.into();
        value["extra"] = 1.into();
        let err = SignedDocument::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn truncated_base64_is_refused_naming_the_field() {
        let key = generate_signing_key().unwrap();
        let good = signed_policy(&key);
        let mut document = good.clone();
        document.payload.truncate(document.payload.len() - 3);
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(
            matches!(
                err,
                DocumentError::BadBase64 {
                    field: "payload",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`payload`"), "{err}");
        // Cut on a 4-character boundary it decodes, to fewer bytes than were signed.
        let mut document = good.clone();
        let cut = (document.payload.len() / 4 - 1) * 4;
        document.payload.truncate(cut);
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(matches!(err, DocumentError::BadSignature(_)), "{err}");
        let mut document = good;
        document.signature.truncate(40);
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(matches!(err, DocumentError::SignatureLength(30)), "{err}");
    }

    #[test]
    fn a_signed_payload_of_another_shape_is_refused() {
        let key = generate_signing_key().unwrap();
        let bytes = br#"{"kind":"policy","serial":1}"#;
        let document = SignedDocument {
            format: FORMAT.into(),
            signer: fingerprint(&key.verifying_key()),
            payload: B64.encode(bytes),
            signature: B64.encode(key.sign(&signed_message(bytes)).to_bytes()),
        };
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(matches!(err, DocumentError::BadPayload(_)), "{err}");
    }

    #[test]
    fn a_signature_without_the_domain_is_refused() {
        let key = generate_signing_key().unwrap();
        let bytes = serde_json::to_vec(&Payload::policy(POLICY, 1)).unwrap();
        let document = SignedDocument {
            format: FORMAT.into(),
            signer: fingerprint(&key.verifying_key()),
            payload: B64.encode(&bytes),
            signature: B64.encode(key.sign(&bytes).to_bytes()),
        };
        let err = document.verify(&key.verifying_key()).unwrap_err();
        assert!(matches!(err, DocumentError::BadSignature(_)), "{err}");
    }

    #[test]
    fn fingerprints_are_stable() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let print = fingerprint(&key.verifying_key());
        assert!(
            print.starts_with("SHA256:") && print.len() == 7 + 43,
            "{print}"
        );
        assert_eq!(print, fingerprint(&key.verifying_key()));
    }
}
