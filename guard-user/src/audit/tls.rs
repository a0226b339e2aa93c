//! TLS configuration for the audit transports (collector protocol, syslog):
//! mutual TLS with certificates in PEM files, rustls with the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::kms::{load_certs, load_private_key};
use anyhow::Context;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

/// Where a TLS endpoint finds its certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the CA certificates that sign the peer's certificate.
    pub ca: PathBuf,
    /// PEM file of this endpoint's certificate chain.
    pub cert: PathBuf,
    /// PEM file of this endpoint's private key.
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("adding a CA certificate from {}", path.display()))?;
    }
    Ok(roots)
}

/// A client configuration that checks the server against `files.ca` and
/// presents `files.cert` as the client certificate.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_private_key(&files.key)?)
        .with_context(|| format!("client certificate {}", files.cert.display()))?;
    Ok(Arc::new(config))
}

/// A server configuration that requires a client certificate signed by `files.ca`.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&files.ca)?), provider())
            .build()
            .context("building the client certificate verifier")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_private_key(&files.key)?)
        .with_context(|| format!("server certificate {}", files.cert.display()))?;
    Ok(Arc::new(config))
}

/// A small PKI for tests and benchmarks: one CA and leaf certificates it signs.
pub struct TestPki {
    ca_key: rcgen::KeyPair,
    ca_cert: rcgen::Certificate,
    dir: PathBuf,
}

impl TestPki {
    /// Creates a CA and writes `ca.pem` into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<TestPki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "guard test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        Ok(TestPki {
            ca_key,
            ca_cert,
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `name` (DNS SAN and CN) valid for both server
    /// and client use, writes `<name>.pem` and `<name>.key`, and returns the
    /// file set for an endpoint that trusts this CA.
    pub fn issue(&self, name: &str) -> anyhow::Result<TlsFiles> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(TlsFiles {
            ca: self.ca_path(),
            cert: cert_path,
            key: key_path,
        })
    }
}

/// How long a TCP connect or TLS handshake to a destination may take.
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a mutual-TLS connection to a log destination (collector or syslog).
pub(crate) async fn connect(
    address: &str,
    server_name: &str,
    files: &TlsFiles,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use anyhow::Context;
    let tls = client_config(files)?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .with_context(|| format!("connecting to {address}: timed out"))?
        .with_context(|| format!("connecting to {address}"))?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .with_context(|| format!("invalid server name {server_name:?}"))?;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .context("TLS handshake")
}
