//! Client of `guard-kms`, guard's own KMS: JSON over HTTPS with a client
//! certificate. The wire format is defined here and in [`super::server`].

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{client_tls_config, KekInfo, Kms, KmsError, TlsFiles};
use crate::keyring::SecretKey;

/// Largest reply the client reads: the KMS never sends more than a few KiB.
const MAX_REPLY: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
pub struct CreateRequest {
    pub name: String,
}

#[derive(Serialize, Deserialize)]
pub struct LocateReply {
    pub keys: Vec<KekInfo>,
}

#[derive(Serialize, Deserialize)]
pub struct WrapRequest {
    /// Base64 of the data key.
    pub plaintext: String,
    /// Base64 of the associated data.
    pub aad: String,
}

#[derive(Serialize, Deserialize)]
pub struct WrapReply {
    pub wrapped: String,
}

#[derive(Serialize, Deserialize)]
pub struct UnwrapRequest {
    pub wrapped: String,
    pub aad: String,
}

#[derive(Serialize, Deserialize)]
pub struct UnwrapReply {
    pub plaintext: String,
}

#[derive(Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// A `guard-kms` client.
pub struct GuardKmsClient {
    base: String,
    agent: ureq::Agent,
    tls: Arc<rustls::ClientConfig>,
    /// `host:port` and host, for [`super::tls_verdict`].
    address: String,
    host: String,
}

impl GuardKmsClient {
    /// `url` like `https://127.0.0.1:8443`.
    pub fn new(url: &str, tls: &TlsFiles) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            anyhow::bail!("guard-kms URL {url:?} must start with https://");
        }
        let authority = base["https://".len()..]
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => {
                host.trim_matches(['[', ']']).to_string()
            }
            _ => authority.clone(),
        };
        let address = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:443")
        };
        let config = Arc::new(client_tls_config(tls)?);
        let agent = ureq::AgentBuilder::new()
            .tls_config(config.clone())
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build();
        Ok(Self {
            base,
            agent,
            tls: config,
            address,
            host,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and returns the reply body, mapping every failure to a
    /// [`KmsError`] that says what went wrong.
    fn call(
        &self,
        operation: &'static str,
        key: &str,
        request: ureq::Request,
        body: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let request = request.set("Content-Type", "application/json");
        let result = match body {
            Some(bytes) => request.send_bytes(bytes),
            None => request.call(),
        };
        match result {
            Ok(response) => {
                read_body(response).map_err(|reason| self.bad_answer(operation, reason))
            }
            Err(ureq::Error::Status(code, response)) => {
                let body = read_body(response).unwrap_or_default();
                let reason = serde_json::from_slice::<ErrorReply>(&body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| format!("HTTP {code} with an unreadable body"));
                Err(match code {
                    422 => KmsError::UnwrapFailed {
                        kms: self.describe(),
                        key: key.to_string(),
                        reason,
                    },
                    400..=499 => KmsError::Refused {
                        kms: self.describe(),
                        operation,
                        key: key.to_string(),
                        reason: format!("HTTP {code}: {reason}"),
                    },
                    _ => self.bad_answer(operation, format!("HTTP {code}: {reason}")),
                })
            }
            Err(ureq::Error::Transport(transport)) => Err(self.transport_error(&transport)),
        }
    }

    fn bad_answer(&self, operation: &'static str, reason: String) -> KmsError {
        KmsError::BadAnswer {
            kms: self.describe(),
            operation,
            reason,
        }
    }

    fn transport_error(&self, transport: &ureq::Transport) -> KmsError {
        let reason = transport.to_string();
        if is_tls_failure(transport) {
            KmsError::Tls {
                kms: self.describe(),
                reason,
            }
        } else if transport.kind() == ureq::ErrorKind::BadStatus
            || transport.kind() == ureq::ErrorKind::BadHeader
        {
            KmsError::BadAnswer {
                kms: self.describe(),
                operation: "HTTP",
                reason,
            }
        } else if let Some(tls_reason) = self.connection_was_refused_by_tls(transport) {
            KmsError::Tls {
                kms: self.describe(),
                reason: format!("{tls_reason} (the request failed with: {reason})"),
            }
        } else {
            KmsError::Unreachable {
                kms: self.describe(),
                reason,
            }
        }
    }

    /// A reset or broken pipe may hide a TLS refusal: ask the server again.
    fn connection_was_refused_by_tls(&self, transport: &ureq::Transport) -> Option<String> {
        if transport.kind() != ureq::ErrorKind::Io
            && transport.kind() != ureq::ErrorKind::ConnectionFailed
        {
            return None;
        }
        super::tls_verdict(self.tls.clone(), &self.address, &self.host)
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        body: &[u8],
    ) -> Result<T, KmsError> {
        serde_json::from_slice(body)
            .map_err(|e| self.bad_answer(operation, format!("invalid JSON reply: {e}")))
    }
}

/// Walks the error's sources looking for a rustls error: a handshake or
/// certificate failure rather than a network one.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        current = err.source();
    }
    false
}

fn read_body(response: ureq::Response) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut body = Zeroizing::new(Vec::new());
    response
        .into_reader()
        .take(MAX_REPLY)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the reply: {e}"))?;
    Ok(body)
}

fn check_id(id: &str) -> Result<(), KmsError> {
    // Ids are path segments: refuse anything that could change the URL.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(KmsError::Setup {
            kms: "guard-kms".into(),
            reason: format!("invalid key id {id:?}"),
        });
    }
    Ok(())
}

impl Kms for GuardKmsClient {
    fn describe(&self) -> String {
        format!("guard-kms {}", self.base)
    }

    fn create_kek(&self, name: &str) -> Result<String, KmsError> {
        let body = serde_json::to_vec(&CreateRequest {
            name: name.to_string(),
        })
        .expect("serializable");
        let reply = self.call(
            "create",
            name,
            self.agent.post(&self.url("/v1/keys")),
            Some(&body),
        )?;
        let info: KekInfo = self.parse("create", &reply)?;
        check_id(&info.id)
            .map_err(|_| self.bad_answer("create", format!("invalid key id {:?}", info.id)))?;
        Ok(info.id)
    }

    fn locate(&self, name: &str) -> Result<Vec<KekInfo>, KmsError> {
        let request = self.agent.get(&self.url("/v1/keys")).query("name", name);
        let reply = self.call("locate", name, request, None)?;
        Ok(self.parse::<LocateReply>("locate", &reply)?.keys)
    }

    fn get(&self, kek_id: &str) -> Result<KekInfo, KmsError> {
        check_id(kek_id)?;
        let reply = self.call(
            "get",
            kek_id,
            self.agent.get(&self.url(&format!("/v1/keys/{kek_id}"))),
            None,
        )?;
        self.parse("get", &reply)
    }

    fn wrap(&self, kek_id: &str, data_key: &SecretKey, aad: &[u8]) -> Result<Vec<u8>, KmsError> {
        check_id(kek_id)?;
        let request = WrapRequest {
            plaintext: B64.encode(data_key.as_ref()),
            aad: B64.encode(aad),
        };
        let body = Zeroizing::new(serde_json::to_vec(&request).expect("serializable"));
        let _wipe = Zeroizing::new(request.plaintext);
        let url = self.url(&format!("/v1/keys/{kek_id}/wrap"));
        let reply = self.call("wrap", kek_id, self.agent.post(&url), Some(&body))?;
        let reply: WrapReply = self.parse("wrap", &reply)?;
        B64.decode(reply.wrapped)
            .map_err(|e| self.bad_answer("wrap", format!("wrapped key is not base64: {e}")))
    }

    fn unwrap(&self, kek_id: &str, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, KmsError> {
        check_id(kek_id)?;
        let body = serde_json::to_vec(&UnwrapRequest {
            wrapped: B64.encode(wrapped),
            aad: B64.encode(aad),
        })
        .expect("serializable");
        let url = self.url(&format!("/v1/keys/{kek_id}/unwrap"));
        let reply = self.call("unwrap", kek_id, self.agent.post(&url), Some(&body))?;
        let reply: UnwrapReply = self.parse("unwrap", &reply)?;
        let encoded = Zeroizing::new(reply.plaintext);
        let decoded = Zeroizing::new(
            B64.decode(encoded.as_bytes())
                .map_err(|e| self.bad_answer("unwrap", format!("data key is not base64: {e}")))?,
        );
        SecretKey::from_slice(&decoded).map_err(|e| KmsError::Setup {
            kms: self.describe(),
            reason: format!("{e:#}"),
        })
    }

    fn revoke(&self, kek_id: &str) -> Result<(), KmsError> {
        check_id(kek_id)?;
        let url = self.url(&format!("/v1/keys/{kek_id}/revoke"));
        self.call("revoke", kek_id, self.agent.post(&url), Some(b"{}"))?;
        Ok(())
    }

    fn destroy(&self, kek_id: &str) -> Result<(), KmsError> {
        check_id(kek_id)?;
        let url = self.url(&format!("/v1/keys/{kek_id}/destroy"));
        self.call("destroy", kek_id, self.agent.post(&url), Some(b"{}"))?;
        Ok(())
    }
}
