//! KMIP client (OASIS KMIP 1.4, TTLV over mutual TLS, port 5696) for the
//! operations guard needs: Create, Activate, Locate, Get Attributes,
//! Encrypt/Decrypt (AES-256-GCM with associated data: wrap/unwrap), Revoke,
//! Destroy. The KEK is created in the KMIP server and never leaves it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use zeroize::Zeroizing;

use super::ttlv::{message_len, Item, Value};
use super::{client_tls_config, KekInfo, KekState, Kms, KmsError, TlsFiles};
use crate::keyring::SecretKey;

/// Tags (KMIP 1.4 section 9.1.3.1).
mod tag {
    pub const ATTRIBUTE: u32 = 0x420008;
    pub const ATTRIBUTE_NAME: u32 = 0x42000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const IV_COUNTER_NONCE: u32 = 0x42003D;
    pub const NAME_TYPE: u32 = 0x420054;
    pub const NAME_VALUE: u32 = 0x420055;
    pub const OBJECT_TYPE: u32 = 0x420057;
    pub const OPERATION: u32 = 0x42005C;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_MESSAGE: u32 = 0x42007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const RESULT_REASON: u32 = 0x42007E;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const REVOCATION_REASON: u32 = 0x420081;
    pub const REVOCATION_REASON_CODE: u32 = 0x420082;
    pub const TAG_LENGTH: u32 = 0x4200CE;
    pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
    pub const DATA: u32 = 0x4200C2;
    pub const AE_ADDITIONAL_DATA: u32 = 0x4200FE;
    pub const AE_TAG: u32 = 0x4200FF;
}

/// Operations (KMIP 1.4 section 9.1.3.2.27).
#[derive(Debug, Clone, Copy)]
enum Operation {
    Create = 0x01,
    Locate = 0x08,
    GetAttributes = 0x0B,
    Activate = 0x12,
    Revoke = 0x13,
    Destroy = 0x14,
    Encrypt = 0x1F,
    Decrypt = 0x20,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Locate => "locate",
            Self::GetAttributes => "get attributes",
            Self::Activate => "activate",
            Self::Revoke => "revoke",
            Self::Destroy => "destroy",
            Self::Encrypt => "wrap (encrypt)",
            Self::Decrypt => "unwrap (decrypt)",
        }
    }
}

const OBJECT_TYPE_SYMMETRIC_KEY: u32 = 0x02;
const ALGORITHM_AES: u32 = 0x03;
const MODE_GCM: u32 = 0x09;
const USAGE_ENCRYPT_DECRYPT: i32 = 0x04 | 0x08;
const NAME_TYPE_TEXT: u32 = 0x01;
const REVOCATION_CESSATION_OF_OPERATION: u32 = 0x06;
const RESULT_SUCCESS: u32 = 0x00;
/// Result reasons worth telling apart.
const REASON_ITEM_NOT_FOUND: u32 = 0x01;
const REASON_CRYPTOGRAPHIC_FAILURE: u32 = 0x0A;
const REASON_GENERAL_FAILURE: u32 = 0x100;
/// Format byte of a KMIP-wrapped key: 2 || IV (12) || GCM tag (16) || ciphertext.
const WRAP_FORMAT_KMIP_GCM: u8 = 2;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const MAX_RESPONSE: usize = 1 << 20;

/// A KMIP client. One TLS connection per operation keeps failure handling simple.
pub struct KmipClient {
    address: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
}

impl KmipClient {
    /// `address` like `127.0.0.1:5696`; `server_name` must be in the server's certificate.
    pub fn new(address: &str, server_name: &str, tls: &TlsFiles) -> anyhow::Result<Self> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| anyhow::anyhow!("KMIP server name {server_name:?}: {e}"))?;
        Ok(Self {
            address: address.to_string(),
            server_name,
            tls: Arc::new(client_tls_config(tls)?),
        })
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> KmsError {
        KmsError::Unreachable {
            kms: self.describe(),
            reason: reason.to_string(),
        }
    }

    fn garbage(&self, operation: Operation, reason: impl std::fmt::Display) -> KmsError {
        KmsError::BadAnswer {
            kms: self.describe(),
            operation: operation.name(),
            reason: reason.to_string(),
        }
    }

    /// An I/O error from the TLS stream: a TLS failure if rustls raised it.
    fn io_error(&self, error: std::io::Error) -> KmsError {
        let is_tls = error
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if is_tls {
            KmsError::Tls {
                kms: self.describe(),
                reason: error.to_string(),
            }
        } else {
            self.unreachable(error)
        }
    }

    /// A reset or broken pipe may hide a TLS refusal of our certificate: ask
    /// the server again before calling it a network failure.
    fn failed_exchange(&self, error: std::io::Error) -> KmsError {
        let classified = self.io_error(error);
        if let KmsError::Unreachable { reason, .. } = &classified {
            let host = self.server_name.to_str().to_string();
            if let Some(tls) = super::tls_verdict(self.tls.clone(), &self.address, &host) {
                return KmsError::Tls {
                    kms: self.describe(),
                    reason: format!("{tls} (the request failed with: {reason})"),
                };
            }
        }
        classified
    }

    /// Sends one request and returns the response payload, or the server's
    /// refusal as [`KmsError::Refused`].
    fn call(&self, operation: Operation, key: &str, payload: Vec<Item>) -> Result<Item, KmsError> {
        let request = Item::structure(
            tag::REQUEST_MESSAGE,
            vec![
                Item::structure(
                    tag::REQUEST_HEADER,
                    vec![
                        Item::structure(
                            tag::PROTOCOL_VERSION,
                            vec![
                                Item::integer(tag::PROTOCOL_VERSION_MAJOR, 1),
                                Item::integer(tag::PROTOCOL_VERSION_MINOR, 4),
                            ],
                        ),
                        Item::integer(tag::BATCH_COUNT, 1),
                    ],
                ),
                Item::structure(
                    tag::BATCH_ITEM,
                    vec![
                        Item::enumeration(tag::OPERATION, operation as u32),
                        Item::structure(tag::REQUEST_PAYLOAD, payload),
                    ],
                ),
            ],
        );
        let request_bytes = Zeroizing::new(request.encode());
        let response_bytes = self.exchange(&request_bytes)?;
        let response =
            Item::decode(&response_bytes).map_err(|e| self.garbage(operation, format!("{e:#}")))?;
        self.parse_response(operation, key, &response)
    }

    fn exchange(&self, request: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(|e| self.unreachable(format!("resolving {}: {e}", self.address)))?
            .next()
            .ok_or_else(|| self.unreachable(format!("{} resolves to no address", self.address)))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| self.unreachable(e))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| self.unreachable(e))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| self.unreachable(e))?;
        let connection = rustls::ClientConnection::new(self.tls.clone(), self.server_name.clone())
            .map_err(|e| KmsError::Tls {
                kms: self.describe(),
                reason: e.to_string(),
            })?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let mut header = [0u8; 8];
        let sent = stream.write_all(request).and_then(|_| stream.flush());
        if let Err(e) = sent.and_then(|_| stream.read_exact(&mut header)) {
            return Err(self.failed_exchange(e));
        }
        let len = message_len(&header);
        if header[0] != 0x42 || len > MAX_RESPONSE {
            return Err(KmsError::BadAnswer {
                kms: self.describe(),
                operation: "KMIP",
                reason: format!(
                    "reply does not start with a KMIP message header ({})",
                    hex::encode(header)
                ),
            });
        }
        let mut response = Zeroizing::new(vec![0u8; len]);
        response[..8].copy_from_slice(&header);
        stream
            .read_exact(&mut response[8..])
            .map_err(|e| self.io_error(e))?;
        stream.conn.send_close_notify();
        let _ = stream.flush();
        Ok(response)
    }

    fn parse_response(
        &self,
        operation: Operation,
        key: &str,
        response: &Item,
    ) -> Result<Item, KmsError> {
        let garbage = |e: anyhow::Error| self.garbage(operation, format!("{e:#}"));
        if response.tag != tag::RESPONSE_MESSAGE {
            return Err(self.garbage(
                operation,
                format!(
                    "top-level tag {:#08x} is not a Response Message",
                    response.tag
                ),
            ));
        }
        let item = response.require(tag::BATCH_ITEM).map_err(garbage)?;
        let status = item
            .require(tag::RESULT_STATUS)
            .and_then(Item::as_enum)
            .map_err(garbage)?;
        if status != RESULT_SUCCESS {
            let reason_code = item
                .child(tag::RESULT_REASON)
                .and_then(|r| r.as_enum().ok());
            let message = item
                .child(tag::RESULT_MESSAGE)
                .and_then(|m| m.as_text().ok())
                .unwrap_or("no message")
                .to_string();
            return Err(match (operation, reason_code) {
                // With an active key that exists, a failed Decrypt is the GCM
                // tag not verifying; PyKMIP reports it as a general failure.
                (
                    Operation::Decrypt,
                    Some(REASON_CRYPTOGRAPHIC_FAILURE | REASON_GENERAL_FAILURE),
                ) => KmsError::UnwrapFailed {
                    kms: self.describe(),
                    key: key.to_string(),
                    reason: format!("the KMIP server could not decrypt it ({message})"),
                },
                _ => KmsError::Refused {
                    kms: self.describe(),
                    operation: operation.name(),
                    key: key.to_string(),
                    reason: match reason_code {
                        Some(REASON_ITEM_NOT_FOUND) => format!("no such object ({message})"),
                        Some(code) => format!("result reason {code:#x}: {message}"),
                        None => message,
                    },
                },
            });
        }
        Ok(item
            .child(tag::RESPONSE_PAYLOAD)
            .cloned()
            .unwrap_or(Item::structure(tag::RESPONSE_PAYLOAD, vec![])))
    }

    fn unique_id(&self, operation: Operation, payload: &Item) -> Result<String, KmsError> {
        payload
            .require(tag::UNIQUE_IDENTIFIER)
            .and_then(|i| i.as_text().map(str::to_string))
            .map_err(|e| self.garbage(operation, format!("{e:#}")))
    }

    fn gcm_parameters() -> Item {
        Item::structure(
            tag::CRYPTOGRAPHIC_PARAMETERS,
            vec![
                Item::enumeration(tag::BLOCK_CIPHER_MODE, MODE_GCM),
                Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, ALGORITHM_AES),
                Item::integer(tag::TAG_LENGTH, GCM_TAG_LEN as i32),
            ],
        )
    }

    fn state(&self, kek_id: &str) -> Result<(KekState, String), KmsError> {
        let payload = self.call(
            Operation::GetAttributes,
            kek_id,
            vec![
                Item::text(tag::UNIQUE_IDENTIFIER, kek_id),
                Item::text(tag::ATTRIBUTE_NAME, "State"),
                Item::text(tag::ATTRIBUTE_NAME, "Name"),
            ],
        )?;
        let mut state = None;
        let mut name = String::new();
        for attribute in payload.all(tag::ATTRIBUTE) {
            let attr_name = attribute
                .child(tag::ATTRIBUTE_NAME)
                .and_then(|n| n.as_text().ok());
            let value = attribute.child(tag::ATTRIBUTE_VALUE);
            match (attr_name, value) {
                (Some("State"), Some(v)) => state = v.as_enum().ok(),
                (Some("Name"), Some(v)) => {
                    name = v
                        .child(tag::NAME_VALUE)
                        .and_then(|n| n.as_text().ok())
                        .unwrap_or_default()
                        .to_string()
                }
                _ => {}
            }
        }
        let state = match state {
            Some(1) => KekState::PreActive,
            Some(2) => KekState::Active,
            Some(3) | Some(4) => KekState::Revoked,
            Some(5) | Some(6) => KekState::Destroyed,
            other => {
                return Err(self.garbage(
                    Operation::GetAttributes,
                    format!("unknown or missing State {other:?}"),
                ))
            }
        };
        Ok((state, name))
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("the kernel CSPRNG is available");
    out
}

impl Kms for KmipClient {
    fn describe(&self) -> String {
        format!("KMIP {}", self.address)
    }

    fn create_kek(&self, name: &str) -> Result<String, KmsError> {
        let attribute = |attr_name: &str, value: Item| {
            Item::structure(
                tag::ATTRIBUTE,
                vec![Item::text(tag::ATTRIBUTE_NAME, attr_name), value],
            )
        };
        let payload = self.call(
            Operation::Create,
            name,
            vec![
                Item::enumeration(tag::OBJECT_TYPE, OBJECT_TYPE_SYMMETRIC_KEY),
                Item::structure(
                    tag::TEMPLATE_ATTRIBUTE,
                    vec![
                        attribute(
                            "Cryptographic Algorithm",
                            Item::enumeration(tag::ATTRIBUTE_VALUE, ALGORITHM_AES),
                        ),
                        attribute(
                            "Cryptographic Length",
                            Item::integer(tag::ATTRIBUTE_VALUE, 256),
                        ),
                        attribute(
                            "Cryptographic Usage Mask",
                            Item::integer(tag::ATTRIBUTE_VALUE, USAGE_ENCRYPT_DECRYPT),
                        ),
                        attribute(
                            "Name",
                            Item::structure(
                                tag::ATTRIBUTE_VALUE,
                                vec![
                                    Item::text(tag::NAME_VALUE, name),
                                    Item::enumeration(tag::NAME_TYPE, NAME_TYPE_TEXT),
                                ],
                            ),
                        ),
                    ],
                ),
            ],
        )?;
        let id = self.unique_id(Operation::Create, &payload)?;
        if let Err(e) = self.call(
            Operation::Activate,
            &id,
            vec![Item::text(tag::UNIQUE_IDENTIFIER, &id)],
        ) {
            let _ = self.call(
                Operation::Destroy,
                &id,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, &id)],
            );
            return Err(e);
        }
        Ok(id)
    }

    fn locate(&self, name: &str) -> Result<Vec<KekInfo>, KmsError> {
        let payload = self.call(
            Operation::Locate,
            name,
            vec![Item::structure(
                tag::ATTRIBUTE,
                vec![
                    Item::text(tag::ATTRIBUTE_NAME, "Name"),
                    Item::structure(
                        tag::ATTRIBUTE_VALUE,
                        vec![
                            Item::text(tag::NAME_VALUE, name),
                            Item::enumeration(tag::NAME_TYPE, NAME_TYPE_TEXT),
                        ],
                    ),
                ],
            )],
        )?;
        let ids: Vec<String> = payload
            .all(tag::UNIQUE_IDENTIFIER)
            .map(|i| i.as_text().map(str::to_string))
            .collect::<Result<_, _>>()
            .map_err(|e| self.garbage(Operation::Locate, format!("{e:#}")))?;
        ids.into_iter().map(|id| self.get(&id)).collect()
    }

    fn get(&self, kek_id: &str) -> Result<KekInfo, KmsError> {
        let (state, name) = self.state(kek_id)?;
        Ok(KekInfo {
            id: kek_id.to_string(),
            name,
            state,
        })
    }

    fn wrap(&self, kek_id: &str, data_key: &SecretKey, aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        let iv = random::<GCM_IV_LEN>();
        let payload = self.call(
            Operation::Encrypt,
            kek_id,
            vec![
                Item::text(tag::UNIQUE_IDENTIFIER, kek_id),
                Self::gcm_parameters(),
                Item::bytes(tag::DATA, data_key.as_ref()),
                Item::bytes(tag::IV_COUNTER_NONCE, &iv),
                Item::bytes(tag::AE_ADDITIONAL_DATA, aad),
            ],
        )?;
        let field = |t: u32| {
            payload
                .require(t)
                .and_then(|i| i.as_bytes().map(<[u8]>::to_vec))
                .map_err(|e| self.garbage(Operation::Encrypt, format!("{e:#}")))
        };
        let ciphertext = field(tag::DATA)?;
        let gcm_tag = field(tag::AE_TAG)?;
        if gcm_tag.len() != GCM_TAG_LEN || ciphertext.len() != data_key.len() {
            return Err(self.garbage(Operation::Encrypt, "ciphertext or tag has the wrong length"));
        }
        Ok([&[WRAP_FORMAT_KMIP_GCM][..], &iv, &gcm_tag, &ciphertext].concat())
    }

    fn unwrap(&self, kek_id: &str, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, KmsError> {
        let header = 1 + GCM_IV_LEN + GCM_TAG_LEN;
        if wrapped.len() <= header || wrapped[0] != WRAP_FORMAT_KMIP_GCM {
            return Err(KmsError::UnwrapFailed {
                kms: self.describe(),
                key: kek_id.to_string(),
                reason: format!(
                    "wrapped key of {} bytes is not in KMIP-GCM format",
                    wrapped.len()
                ),
            });
        }
        let payload = self.call(
            Operation::Decrypt,
            kek_id,
            vec![
                Item::text(tag::UNIQUE_IDENTIFIER, kek_id),
                Self::gcm_parameters(),
                Item::bytes(tag::DATA, &wrapped[header..]),
                Item::bytes(tag::IV_COUNTER_NONCE, &wrapped[1..1 + GCM_IV_LEN]),
                Item::bytes(tag::AE_ADDITIONAL_DATA, aad),
                Item::bytes(tag::AE_TAG, &wrapped[1 + GCM_IV_LEN..header]),
            ],
        )?;
        let data = payload
            .require(tag::DATA)
            .map_err(|e| self.garbage(Operation::Decrypt, format!("{e:#}")))?;
        match &data.value {
            Value::ByteString(bytes) => {
                let bytes = Zeroizing::new(bytes.clone());
                SecretKey::from_slice(&bytes).map_err(|e| KmsError::Setup {
                    kms: self.describe(),
                    reason: format!("{e:#}"),
                })
            }
            _ => Err(self.garbage(Operation::Decrypt, "Data is not a byte string")),
        }
    }

    fn revoke(&self, kek_id: &str) -> Result<(), KmsError> {
        self.call(
            Operation::Revoke,
            kek_id,
            vec![
                Item::text(tag::UNIQUE_IDENTIFIER, kek_id),
                Item::structure(
                    tag::REVOCATION_REASON,
                    vec![Item::enumeration(
                        tag::REVOCATION_REASON_CODE,
                        REVOCATION_CESSATION_OF_OPERATION,
                    )],
                ),
            ],
        )?;
        Ok(())
    }

    fn destroy(&self, kek_id: &str) -> Result<(), KmsError> {
        // KMIP refuses to destroy an active object: revoke it first.
        if self.get(kek_id)?.state == KekState::Active {
            self.revoke(kek_id)?;
        }
        self.call(
            Operation::Destroy,
            kek_id,
            vec![Item::text(tag::UNIQUE_IDENTIFIER, kek_id)],
        )?;
        Ok(())
    }
}
