//! The KMIP client against a real PyKMIP server started on loopback with the
//! test's own certificates: every operation guard uses, and a volume whose
//! key-encryption key lives in the KMIP server. Host tests, run as root.

mod keys_support;

use std::fs;

use guard::keyring::SecretKey;
use guard::kms::{KekState, KmsConfig, KmsError, TlsFiles};
use guard::volume;
use keys_support::*;

#[test]
fn kmip_create_locate_wrap_unwrap_revoke_destroy() {
    let server = KmipServer::start();
    let kms = server.client();

    let id = kms
        .create_kek("guard-volume-kmip-a")
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let info = kms.get(&id).unwrap();
    assert_eq!(info.state, KekState::Active);
    assert_eq!(info.name, "guard-volume-kmip-a");
    let found = kms.locate("guard-volume-kmip-a").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, id);
    assert!(kms.locate("no-such-name").unwrap().is_empty());

    let key = SecretKey::random(64).unwrap();
    let wrapped = kms.wrap(&id, &key, b"volume a").unwrap();
    assert!(
        !wrapped
            .windows(16)
            .any(|w| key.as_ref().windows(16).any(|k| k == w)),
        "no plaintext in the wrapping"
    );
    assert_eq!(
        kms.unwrap(&id, &wrapped, b"volume a").unwrap().as_ref(),
        key.as_ref()
    );

    // Associated data and integrity are enforced by the KMIP server's GCM.
    let err = kms.unwrap(&id, &wrapped, b"volume b").unwrap_err();
    assert!(matches!(err, KmsError::UnwrapFailed { .. }), "{err}");
    let mut tampered = wrapped.clone();
    *tampered.last_mut().unwrap() ^= 0x80;
    let err = kms.unwrap(&id, &tampered, b"volume a").unwrap_err();
    assert!(matches!(err, KmsError::UnwrapFailed { .. }), "{err}");

    kms.revoke(&id).unwrap();
    assert_eq!(kms.get(&id).unwrap().state, KekState::Revoked);
    let err = kms.unwrap(&id, &wrapped, b"volume a").unwrap_err();
    assert!(matches!(err, KmsError::Refused { .. }), "{err}");

    kms.destroy(&id).unwrap();
    assert!(matches!(
        kms.get(&id).map(|i| i.state),
        Ok(KekState::Destroyed) | Err(KmsError::Refused { .. })
    ));

    // An unknown id is a refusal that names the key.
    let err = kms.unwrap("does-not-exist", &wrapped, b"").unwrap_err();
    assert!(
        matches!(err, KmsError::Refused { .. }) && err.to_string().contains("does-not-exist"),
        "{err}"
    );
}

#[test]
fn kmip_refuses_a_client_certificate_from_another_ca() {
    let server = KmipServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let rogue = guard::kms::pki::write_pki(&tmp.path().join("rogue"), &["localhost"], "guardd", 30)
        .unwrap();
    let config = KmsConfig::Kmip {
        address: format!("127.0.0.1:{}", server.port),
        server_name: "localhost".into(),
        tls: TlsFiles {
            ca: server.pki.ca_cert.clone(),
            cert: rogue.client_cert,
            key: rogue.client_key,
        },
    };
    let err = config.connect().unwrap().create_kek("x").unwrap_err();
    assert!(
        matches!(err, KmsError::Tls { .. } | KmsError::Unreachable { .. }),
        "{err}"
    );
    // The server is fine for the right client, and created nothing.
    assert!(server.client().locate("x").unwrap().is_empty());
}

#[test]
fn a_volume_keyed_by_kmip_unlocks_and_is_shredded_by_revocation() {
    let image = Ext4Image::new(32, true);
    let server = KmipServer::start();
    let kms = server.client();
    let store = Store::new();
    let dir = image.path("pg");
    fs::create_dir(&dir).unwrap();
    let record = volume::init_fscrypt(&store.store, kms.as_ref(), "pg", &dir).unwrap();
    fs::write(dir.join("base"), b"rows").unwrap();
    volume::lock(&store.store, "pg").unwrap();
    assert!(read(&dir.join("base")).is_err());
    let report = volume::unlock(&store.store, kms.as_ref(), "pg").unwrap();
    assert_eq!(report.key_identifier, record.key_identifier);
    assert_eq!(read(&dir.join("base")).unwrap(), b"rows");

    let rotated = volume::rotate(&store.store, kms.as_ref(), "pg").unwrap();
    assert_ne!(rotated.kek_id, record.kek_id);
    // PyKMIP forgets destroyed objects entirely.
    assert!(matches!(
        kms.get(&record.kek_id).map(|i| i.state),
        Ok(KekState::Destroyed) | Err(KmsError::Refused { .. })
    ));

    volume::revoke(&store.store, kms.as_ref(), "pg").unwrap();
    assert!(read(&dir.join("base")).is_err());
    assert_eq!(kms.get(&rotated.kek_id).unwrap().state, KekState::Revoked);
}
