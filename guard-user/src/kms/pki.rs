//! A small certificate authority for KMS mutual TLS: `guard-kms gen-pki` for
//! the demo and for users without a PKI, and the tests' certificates.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A CA able to issue leaf certificates.
pub struct CertificateAuthority {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertificateAuthority {
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(Self { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate valid from `not_before` to `not_after` (pass a
    /// past window to make an expired certificate).
    pub fn issue_with_validity(
        &self,
        common_name: &str,
        names: &[&str],
        role: Role,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("issuing {common_name}"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate valid for `days` days from now.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        role: Role,
        days: i64,
    ) -> Result<Issued> {
        let now = OffsetDateTime::now_utc();
        self.issue_with_validity(
            common_name,
            names,
            role,
            now - Duration::hours(1),
            now + Duration::days(days),
        )
    }
}

/// The files `gen-pki` writes.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Writes a CA, a server certificate for `server_names` and a client
/// certificate into `dir` (keys mode 0600).
pub fn write_pki(
    dir: &Path,
    server_names: &[&str],
    client_name: &str,
    days: i64,
) -> Result<PkiFiles> {
    write_pki_with(
        &CertificateAuthority::new("guard KMS CA")?,
        dir,
        server_names,
        client_name,
        days,
    )
}

/// [`write_pki`] with an existing CA (which can then issue more certificates).
pub fn write_pki_with(
    ca: &CertificateAuthority,
    dir: &Path,
    server_names: &[&str],
    client_name: &str,
    days: i64,
) -> Result<PkiFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let server = ca.issue(
        server_names.first().copied().unwrap_or("localhost"),
        server_names,
        Role::Server,
        days,
    )?;
    let client = ca.issue(client_name, &[], Role::Client, days)?;
    let files = PkiFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    write_file(&files.ca_cert, &ca.cert_pem(), 0o644)?;
    write_file(&files.ca_key, &ca.key_pem(), 0o600)?;
    write_file(&files.server_cert, &server.cert_pem, 0o644)?;
    write_file(&files.server_key, &server.key_pem, 0o600)?;
    write_file(&files.client_cert, &client.cert_pem, 0o644)?;
    write_file(&files.client_key, &client.key_pem, 0o600)?;
    Ok(files)
}

/// Writes `text` to `path` with `mode`, refusing to overwrite.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
