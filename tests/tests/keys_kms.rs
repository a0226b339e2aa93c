//! Key management against a real guard-kms on loopback: certificates,
//! revocation (crypto-shredding), rotation, unreachable and garbage-speaking
//! KMSs, and guardd's start-up unlock with backoff. Host tests, run as root.

mod keys_support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use guard::fscrypt::{self, DirPolicy};
use guard::kms::pki::{CertificateAuthority, Role};
use guard::kms::{KekState, KmsConfig, KmsError, TlsFiles};
use guard::volume::{self, Backoff, UnlockEvent};
use keys_support::*;

const MARKER: &[u8] = b"GUARD-PLAINTEXT-MARKER-kms-51c2";

fn kms_error(result: Result<String, KmsError>) -> KmsError {
    result.expect_err("the KMS call should fail")
}

/// `create_kek` through a client presenting `tls` to `url`: it must fail in
/// the TLS handshake. The error, for more checks.
fn tls_refusal(url: String, tls: TlsFiles) -> KmsError {
    let err = kms_error(guard_kms_client(url, tls).create_kek("x"));
    assert!(matches!(err, KmsError::Tls { .. }), "{err}");
    err
}

#[test]
fn client_certificates_from_another_ca_or_expired_are_refused() {
    let ca = CertificateAuthority::new("kms ca").unwrap();
    let kms = KmsServer::start_with(&ca, 0);
    let tmp = tempfile::tempdir().unwrap();
    let server_ca = fs::read_to_string(&kms.pki.ca_cert).unwrap();

    // A certificate from a CA the server does not trust.
    let rogue = CertificateAuthority::new("rogue ca").unwrap();
    let issued = rogue.issue("guardd", &[], Role::Client, 30).unwrap();
    let rogue_dir = tmp.path().join("rogue");
    let tls = client_files(&rogue_dir, &server_ca, &issued.cert_pem, &issued.key_pem);
    tls_refusal(kms.url(), tls);

    // An expired certificate from the right CA.
    let expired = expired_certificate(&ca, "guardd", &[], Role::Client);
    let expired_dir = tmp.path().join("expired");
    let tls = client_files(
        &expired_dir,
        &server_ca,
        &expired.cert_pem,
        &expired.key_pem,
    );
    tls_refusal(kms.url(), tls);

    // A server certificate from a CA the client does not trust.
    let other_ca_dir = tmp.path().join("other");
    let mine = fs::read_to_string(&kms.pki.client_cert).unwrap();
    let mine_key = fs::read_to_string(&kms.pki.client_key).unwrap();
    let tls = client_files(&other_ca_dir, &rogue.cert_pem(), &mine, &mine_key);
    let err = tls_refusal(kms.url(), tls);
    assert!(err.to_string().contains("TLS with KMS"), "{err}");

    // None of these created anything, and the refusals were audited.
    assert!(kms.client().locate("x").unwrap().is_empty());
    let audit = fs::read_to_string(&kms.audit_log).unwrap();
    assert!(audit.matches("\"tls-handshake\"").count() >= 2, "{audit}");
}

#[test]
fn expired_server_certificate_is_refused() {
    let ca = CertificateAuthority::new("kms ca").unwrap();
    let kms = KmsServer::start_with(&ca, 0);
    let expired = expired_certificate(&ca, "localhost", &["localhost", "127.0.0.1"], Role::Server);
    // A second guard-kms process serving the expired certificate.
    let mut stale = KmsServer::start_with(&ca, 0);
    stale.stop();
    fs::remove_file(&stale.pki.server_cert).unwrap();
    fs::remove_file(&stale.pki.server_key).unwrap();
    fs::write(&stale.pki.server_cert, &expired.cert_pem).unwrap();
    fs::write(&stale.pki.server_key, &expired.key_pem).unwrap();
    stale.restart();
    let err = kms_error(stale.config().connect().unwrap().create_kek("x"));
    assert!(matches!(err, KmsError::Tls { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
    drop(kms);
}

#[test]
fn revoke_makes_the_data_unreadable_at_once() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("shred");
    fs::create_dir(&dir).unwrap();
    let record = volume::init_fscrypt(&store.store, kms.client().as_ref(), "shred", &dir).unwrap();
    let file = dir.join("records.ibd");
    fs::write(&file, MARKER).unwrap();
    assert_eq!(read(&file).unwrap(), MARKER);

    volume::revoke(&store.store, kms.client().as_ref(), "shred").unwrap();

    // Immediately: the name is gone and the contents cannot be opened.
    assert!(read(&file).is_err());
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
    assert_eq!(read(&dir.join(&names[0])), Err(libc::ENOKEY));
    // The KMS refuses the key, and says so.
    let client = kms.client();
    assert_eq!(client.get(&record.kek_id).unwrap().state, KekState::Revoked);
    let wrapped = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&record.wrapped_key)
            .unwrap()
    };
    let err = client.unwrap(&record.kek_id, &wrapped, b"").unwrap_err();
    assert!(matches!(err, KmsError::Refused { .. }), "{err}");
    // Unlock fails (even bypassing the record's revoked flag).
    let mut unflagged = store.store.load("shred").unwrap();
    assert!(unflagged.revoked);
    unflagged.revoked = false;
    store.store.save(&unflagged).unwrap();
    let err = volume::unlock(&store.store, client.as_ref(), "shred").unwrap_err();
    assert!(format!("{err:#}").contains("Revoked"), "{err:#}");
    assert_eq!(read(&dir.join(&names[0])), Err(libc::ENOKEY));
}

#[test]
fn rotation_rewraps_without_touching_the_kernel_key() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("rot");
    fs::create_dir(&dir).unwrap();
    let old = volume::init_fscrypt(&store.store, kms.client().as_ref(), "rot", &dir).unwrap();
    let file = dir.join("f");
    fs::write(&file, MARKER).unwrap();
    let mut open = fs::File::open(&file).unwrap();

    let new = volume::rotate(&store.store, kms.client().as_ref(), "rot").unwrap();
    assert_ne!(new.kek_id, old.kek_id);
    assert_ne!(new.wrapped_key, old.wrapped_key);
    assert_eq!(
        new.key_identifier, old.key_identifier,
        "the data key is unchanged"
    );
    // No downtime: the open file and new opens keep working.
    let mut buf = Vec::new();
    open.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, MARKER);
    assert_eq!(read(&file).unwrap(), MARKER);
    // The old KEK is gone from the KMS.
    assert_eq!(
        kms.client().get(&old.kek_id).unwrap().state,
        KekState::Destroyed
    );
    drop(open);
    // The new wrapping unlocks.
    volume::lock(&store.store, "rot").unwrap();
    assert!(read(&file).is_err());
    volume::unlock(&store.store, kms.client().as_ref(), "rot").unwrap();
    assert_eq!(read(&file).unwrap(), MARKER);
    volume::lock(&store.store, "rot").unwrap();
}

#[test]
fn a_kms_answering_garbage_gets_a_clear_error_and_nothing_changes() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("g");
    fs::create_dir(&dir).unwrap();

    let url = garbage_kms(
        &kms,
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"id\": 42!!}",
    );
    let client = guard_kms_client(url, kms.client_tls());
    let err = volume::init_fscrypt(&store.store, client.as_ref(), "g", &dir).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("answered garbage"), "{text}");
    assert!(store.files().is_empty());
    assert_eq!(fscrypt::get_policy(&dir).unwrap(), DirPolicy::Unencrypted);

    let url = garbage_kms(&kms, b"\x00\x01\x02 this is not HTTP at all\r\n\r\n");
    let client = guard_kms_client(url, kms.client_tls());
    let err = volume::init_fscrypt(&store.store, client.as_ref(), "g", &dir).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("garbage"), "{text}");
    assert!(store.files().is_empty());

    // A plain-TCP peer that writes junk instead of a TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut tcp, _)) = listener.accept() {
            let _ = tcp.write_all(b"garbage garbage garbage garbage\n");
        }
    });
    let client = guard_kms_client(format!("https://127.0.0.1:{port}"), kms.client_tls());
    let err = volume::init_fscrypt(&store.store, client.as_ref(), "g", &dir).unwrap_err();
    assert!(format!("{err:#}").contains("TLS with KMS"), "{err:#}");
    assert!(store.files().is_empty());
    assert_eq!(fscrypt::get_policy(&dir).unwrap(), DirPolicy::Unencrypted);
}

#[test]
fn unreachable_kms_is_reported_as_such() {
    let kms = KmsServer::start();
    let port = free_port();
    let client = guard_kms_client(format!("https://127.0.0.1:{port}"), kms.client_tls());
    let err = kms_error(client.create_kek("x"));
    assert!(
        matches!(err, KmsError::Unreachable { .. }) && err.is_transient(),
        "{err}"
    );
}

#[test]
fn startup_unlock_retries_with_backoff_until_the_kms_answers() {
    let image = Ext4Image::new(32, true);
    let mut kms = KmsServer::start();
    let store = Store::new();
    let (d1, d2) = (image.path("v1"), image.path("v2"));
    fs::create_dir(&d1).unwrap();
    fs::create_dir(&d2).unwrap();
    volume::init_fscrypt(&store.store, kms.client().as_ref(), "v1", &d1).unwrap();
    volume::init_fscrypt(&store.store, kms.client().as_ref(), "v2", &d2).unwrap();
    fs::write(d1.join("a"), MARKER).unwrap();
    fs::write(d2.join("b"), MARKER).unwrap();
    volume::lock(&store.store, "v1").unwrap();
    volume::lock(&store.store, "v2").unwrap();
    let client = kms.client();
    kms.stop();

    let (events_tx, events_rx) = mpsc::channel();
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let task = runtime.spawn(volume::unlock_configured(
        store.store.clone(),
        client,
        None,
        backoff,
        move |event| {
            let _ = events_tx.send(event);
        },
    ));

    // While the KMS is down: failures, backoff growing, volumes locked.
    let mut failures = Vec::new();
    while failures.len() < 6 {
        match events_rx.recv_timeout(Duration::from_secs(20)).unwrap() {
            UnlockEvent::Failed {
                volume,
                attempt,
                reason,
                retry_in,
            } => {
                assert!(reason.contains("unreachable"), "{reason}");
                failures.push((volume, attempt, retry_in));
            }
            other => panic!("unexpected {other:?} while the KMS is down"),
        }
    }
    let v1: Vec<_> = failures
        .iter()
        .filter(|f| f.0 == "v1")
        .map(|f| (f.1, f.2))
        .collect();
    assert_eq!(v1[0], (1, Duration::from_millis(100)));
    assert_eq!(v1[1], (2, Duration::from_millis(200)));
    assert_eq!(v1[2], (3, Duration::from_millis(400)));
    assert!(
        read(&d1.join("a")).is_err(),
        "no fallback: stays locked while the KMS is down"
    );

    kms.restart();
    let mut unlocked = Vec::new();
    while unlocked.len() < 2 {
        match events_rx.recv_timeout(Duration::from_secs(20)).unwrap() {
            UnlockEvent::Unlocked { volume, .. } => unlocked.push(volume),
            UnlockEvent::Failed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    runtime.block_on(task).unwrap().unwrap();
    unlocked.sort();
    assert_eq!(unlocked, ["v1", "v2"]);
    assert_eq!(read(&d1.join("a")).unwrap(), MARKER);
    assert_eq!(read(&d2.join("b")).unwrap(), MARKER);
    volume::lock(&store.store, "v1").unwrap();
    volume::lock(&store.store, "v2").unwrap();
}

#[test]
fn kms_store_keeps_keys_sealed_and_survives_restart() {
    let mut kms = KmsServer::start();
    let client = kms.client();
    let id = client.create_kek("sealed-test").unwrap();
    let key = guard::keyring::SecretKey::random(64).unwrap();
    let wrapped = client.wrap(&id, &key, b"aad").unwrap();
    kms.restart();
    let client = kms.client();
    assert_eq!(
        client.unwrap(&id, &wrapped, b"aad").unwrap().as_ref(),
        key.as_ref()
    );
    assert_eq!(client.locate("sealed-test").unwrap().len(), 1);
    // The store on disk holds no KEK in the clear: only sealed blobs.
    let store = fs::read_to_string(kms.dir.path().join("state/keys.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&store).unwrap();
    let sealed = parsed["keys"][0]["sealed"].as_str().unwrap();
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .unwrap()
            .len(),
        12 + 32 + 16
    );
    client.destroy(&id).unwrap();
    let err = client.unwrap(&id, &wrapped, b"aad").unwrap_err();
    assert!(matches!(err, KmsError::Refused { .. }), "{err}");
}

#[test]
fn kms_audit_entries_reach_the_journal() {
    let _journald = guard_tests::ensure_journald().unwrap();
    let kms = KmsServer::start_journaled();
    let client = kms.client();
    let id = client.create_kek("journal-test").unwrap();
    client.revoke(&id).unwrap();
    let key = guard::keyring::SecretKey::random(64).unwrap();
    let err = client.wrap(&id, &key, b"").unwrap_err();
    assert!(matches!(err, KmsError::Refused { .. }), "{err}");

    let id_match = format!("GUARD_KMS_KEY={id}");
    let message_id = format!("MESSAGE_ID={}", guard::kms::server::AUDIT_MESSAGE_ID);
    let entries = guard_tests::wait_for_journal_entries(
        &[&message_id, &id_match],
        2,
        Duration::from_secs(10),
    )
    .unwrap();
    let outcomes: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                guard_tests::field_text(e, "GUARD_KMS_OPERATION").unwrap(),
                guard_tests::field_text(e, "GUARD_KMS_OUTCOME").unwrap(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("revoke".into(), "ok".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("wrap".into(), "refused".into())),
        "{outcomes:?}"
    );
    let refused = entries
        .iter()
        .find(|e| guard_tests::field_text(e, "GUARD_KMS_OUTCOME").as_deref() == Some("refused"))
        .unwrap();
    assert_eq!(
        guard_tests::field_text(refused, "SYSLOG_IDENTIFIER").as_deref(),
        Some("guard-kms")
    );
    assert_eq!(
        guard_tests::field_text(refused, "PRIORITY").as_deref(),
        Some("4")
    );
}

#[test]
fn a_kmip_server_answering_garbage_gets_a_clear_error() {
    let kms = KmsServer::start();
    let kmip_config = |url: String| KmsConfig::Kmip {
        address: url.trim_start_matches("https://").to_string(),
        server_name: "localhost".into(),
        tls: kms.client_tls(),
    };
    // Not TTLV at all.
    let client = kmip_config(garbage_kms(&kms, b"HTTP/1.1 200 OK\r\n\r\n"))
        .connect()
        .unwrap();
    let err = kms_error(client.create_kek("x"));
    assert!(
        matches!(err, KmsError::BadAnswer { .. })
            && err.to_string().contains("KMIP message header"),
        "{err}"
    );
    // Well-formed TTLV that is not a Response Message.
    let text = guard::kms::ttlv::Item::text(0x420094, "not a response").encode();
    let client = kmip_config(garbage_kms(&kms, Box::leak(text.into_boxed_slice())))
        .connect()
        .unwrap();
    let err = kms_error(client.create_kek("x"));
    assert!(
        matches!(err, KmsError::BadAnswer { .. })
            && err.to_string().contains("not a Response Message"),
        "{err}"
    );
}
