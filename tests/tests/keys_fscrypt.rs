//! fscrypt volumes on a loop-mounted ext4 (`-O encrypt`) with keys from a real
//! guard-kms: init, unlock, lock, status, bad input. Host tests, run as root.

mod keys_support;

use std::fs;
use std::io::Write;

use guard::fscrypt::{self, DirPolicy, KeyStatus};
use guard::keyring::{self, SecretKey};
use guard::volume::{self, VolumeKind};
use keys_support::*;

const MARKER: &[u8] = b"GUARD-PLAINTEXT-MARKER-7f3a9c";

#[test]
fn kernel_and_userspace_key_identifiers_match() {
    let image = Ext4Image::new(32, true);
    for _ in 0..4 {
        let key = SecretKey::random(64).unwrap();
        let ours = fscrypt::key_identifier(&key).unwrap();
        let provisioning =
            keyring::add_fscrypt_provisioning_key("guard-test:identifier", &key).unwrap();
        let kernels = fscrypt::add_key_by_serial(&image.mnt, provisioning.serial).unwrap();
        provisioning.invalidate().unwrap();
        assert_eq!(
            ours, kernels,
            "HKDF-SHA512 identifier must equal FS_IOC_ADD_ENCRYPTION_KEY's"
        );
        assert_eq!(
            fscrypt::key_status(&image.mnt, &ours).unwrap(),
            KeyStatus::Present
        );
        fscrypt::remove_key(&image.mnt, &ours).unwrap();
        assert_eq!(
            fscrypt::key_status(&image.mnt, &ours).unwrap(),
            KeyStatus::Absent
        );
    }
}

#[test]
fn init_unlock_lock_status_round_trip() {
    let image = Ext4Image::new(64, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("db");
    fs::create_dir(&dir).unwrap();

    let record = volume::init_fscrypt(&store.store, kms.client().as_ref(), "db", &dir).unwrap();
    assert_eq!(
        record.kind,
        VolumeKind::Fscrypt {
            path: dir.clone(),
            previous_path: None
        }
    );
    match fscrypt::get_policy(&dir).unwrap() {
        DirPolicy::V2 {
            key_identifier,
            contents_mode,
            filenames_mode,
            ..
        } => {
            assert_eq!(key_identifier.to_hex(), record.key_identifier);
            assert_eq!(
                (contents_mode, filenames_mode),
                (fscrypt::MODE_AES_256_XTS, fscrypt::MODE_AES_256_CTS)
            );
        }
        other => panic!("expected a v2 policy, got {other:?}"),
    }
    // The record holds the wrapped key, never the plaintext.
    let record_text = fs::read_to_string(store.dir.path().join("db.json")).unwrap();
    assert!(record_text.contains(&record.wrapped_key) && record_text.contains(&record.kek_id));

    let file = dir.join("patients.ibd");
    fs::write(&file, MARKER).unwrap();
    assert_eq!(status_of(&store, "db"), "unlocked");

    let report = volume::lock(&store.store, "db").unwrap();
    assert!(!report.files_busy);
    assert_eq!(status_of(&store, "db"), "locked");
    // Locked: the name is encrypted and the contents cannot be opened.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
    assert_ne!(names[0], "patients.ibd");
    assert_eq!(read(&dir.join(&names[0])), Err(libc::ENOKEY));

    let unlocked = volume::unlock(&store.store, kms.client().as_ref(), "db").unwrap();
    assert_eq!(unlocked.key_identifier, record.key_identifier);
    assert_eq!(read(&file).unwrap(), MARKER);
    assert_eq!(status_of(&store, "db"), "unlocked");

    // The KMS audited what happened, with the client's certificate.
    let audit = fs::read_to_string(&kms.audit_log).unwrap();
    for op in ["\"create\"", "\"wrap\"", "\"unwrap\""] {
        assert!(audit.contains(op), "audit log lacks {op}: {audit}");
    }
    assert!(audit.contains("cert-sha256:"));
    volume::lock(&store.store, "db").unwrap();
}

fn status_of(store: &Store, name: &str) -> String {
    volume::status(&store.store)
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
        .state
}

#[test]
fn lock_reports_files_still_in_use() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("busy");
    fs::create_dir(&dir).unwrap();
    volume::init_fscrypt(&store.store, kms.client().as_ref(), "busy", &dir).unwrap();
    let path = dir.join("open.dat");
    let mut open = fs::File::create(&path).unwrap();
    open.write_all(b"in use").unwrap();

    let report = volume::lock(&store.store, "busy").unwrap();
    assert!(report.files_busy);
    assert!(report.busy_files.contains(&path), "{:?}", report.busy_files);
    assert_eq!(status_of(&store, "busy"), "locking (files still in use)");

    drop(open);
    let report = volume::lock(&store.store, "busy").unwrap();
    assert!(!report.files_busy);
    assert_eq!(status_of(&store, "busy"), "locked");
}

#[test]
fn init_refuses_a_non_empty_directory_and_changes_nothing() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("full");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("existing"), b"data").unwrap();

    let err = volume::init_fscrypt(&store.store, kms.client().as_ref(), "full", &dir).unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    assert!(store.files().is_empty(), "no record may be written");
    assert_eq!(fscrypt::get_policy(&dir).unwrap(), DirPolicy::Unencrypted);
    assert_eq!(fs::read(dir.join("existing")).unwrap(), b"data");
    // And no key was created in the KMS.
    assert!(kms
        .client()
        .locate(&volume::kek_name("full"))
        .unwrap()
        .is_empty());
}

#[test]
fn init_refuses_a_filesystem_without_the_encrypt_feature() {
    let image = Ext4Image::new(32, false);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("plain");
    fs::create_dir(&dir).unwrap();

    let err = volume::init_fscrypt(&store.store, kms.client().as_ref(), "plain", &dir).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("does not support encryption"), "{text}");
    assert!(store.files().is_empty());
    assert!(kms
        .client()
        .locate(&volume::kek_name("plain"))
        .unwrap()
        .is_empty());
}

#[test]
fn init_refuses_bad_names_and_duplicates() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("a");
    fs::create_dir(&dir).unwrap();
    for bad in ["", "../etc", "a b", "-x", &"n".repeat(65)] {
        let err = volume::init_fscrypt(&store.store, kms.client().as_ref(), bad, &dir).unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid volume name"),
            "{bad:?}: {err:#}"
        );
    }
    volume::init_fscrypt(&store.store, kms.client().as_ref(), "a", &dir).unwrap();
    let other = image.path("b");
    fs::create_dir(&other).unwrap();
    let err = volume::init_fscrypt(&store.store, kms.client().as_ref(), "a", &other).unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    assert_eq!(fscrypt::get_policy(&other).unwrap(), DirPolicy::Unencrypted);
    volume::lock(&store.store, "a").unwrap();
}

#[test]
fn tampered_wrapped_key_is_refused_and_nothing_changes() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let dir = image.path("t");
    fs::create_dir(&dir).unwrap();
    let record = volume::init_fscrypt(&store.store, kms.client().as_ref(), "t", &dir).unwrap();
    fs::write(dir.join("f"), MARKER).unwrap();
    volume::lock(&store.store, "t").unwrap();

    // Flip one bit of the wrapped key.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut wrapped = b64.decode(&record.wrapped_key).unwrap();
    wrapped[20] ^= 0x01;
    let mut tampered = record.clone();
    tampered.wrapped_key = b64.encode(&wrapped);
    store.store.save(&tampered).unwrap();
    let before = fs::read(store.dir.path().join("t.json")).unwrap();

    let err = volume::unlock(&store.store, kms.client().as_ref(), "t").unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("could not unwrap") && text.contains("tampered"),
        "{text}"
    );
    assert_eq!(status_of(&store, "t"), "locked");
    assert_eq!(fs::read(store.dir.path().join("t.json")).unwrap(), before);

    // Editing the identifier instead breaks the wrapping's associated data.
    let mut relabelled = record.clone();
    relabelled.key_identifier = "00".repeat(16);
    store.store.save(&relabelled).unwrap();
    let err = volume::unlock(&store.store, kms.client().as_ref(), "t").unwrap_err();
    assert!(
        format!("{err:#}").contains("not encrypted with key"),
        "{err:#}"
    );

    // The untouched record still works.
    store.store.save(&record).unwrap();
    volume::unlock(&store.store, kms.client().as_ref(), "t").unwrap();
    assert_eq!(read(&dir.join("f")).unwrap(), MARKER);
    volume::lock(&store.store, "t").unwrap();
}

#[test]
fn unlock_refuses_a_directory_with_another_key() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let (d1, d2) = (image.path("one"), image.path("two"));
    fs::create_dir(&d1).unwrap();
    fs::create_dir(&d2).unwrap();
    volume::init_fscrypt(&store.store, kms.client().as_ref(), "one", &d1).unwrap();
    let mut two = volume::init_fscrypt(&store.store, kms.client().as_ref(), "two", &d2).unwrap();
    volume::lock(&store.store, "one").unwrap();
    volume::lock(&store.store, "two").unwrap();
    // Point volume two's record at volume one's directory.
    two.kind = VolumeKind::Fscrypt {
        path: d1.clone(),
        previous_path: None,
    };
    store.store.save(&two).unwrap();
    let err = volume::unlock(&store.store, kms.client().as_ref(), "two").unwrap_err();
    assert!(
        format!("{err:#}").contains("is not encrypted with key"),
        "{err:#}"
    );
}

#[test]
fn cli_commands_drive_the_volume_lifecycle() {
    use guard::volume::cli::{run_key, run_volume};
    use guard::volume::{KeyCommand, KeysOptions, VolumeCommand};
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let config = store.dir.path().join("kms.json");
    kms.write_config(&config);
    let options = KeysOptions {
        volume_dir: store.dir.path().join("volumes"),
        kms_config: config,
    };
    let dir = image.path("cli");
    fs::create_dir(&dir).unwrap();

    let init = VolumeCommand::Init {
        name: "cli".into(),
        dir: Some(dir.clone()),
        dm_crypt: None,
    };
    run_volume(init, &options).unwrap();
    fs::write(dir.join("f"), MARKER).unwrap();
    run_volume(VolumeCommand::Status { json: true }, &options).unwrap();
    run_volume(VolumeCommand::Lock { name: "cli".into() }, &options).unwrap();
    assert!(read(&dir.join("f")).is_err());
    run_volume(
        VolumeCommand::Unlock {
            name: None,
            all: true,
        },
        &options,
    )
    .unwrap();
    assert_eq!(read(&dir.join("f")).unwrap(), MARKER);
    run_key(KeyCommand::Rotate { volume: None }, &options).unwrap();
    assert_eq!(read(&dir.join("f")).unwrap(), MARKER);

    // Revocation needs an explicit --yes, and changes nothing without it.
    let err = run_key(
        KeyCommand::Revoke {
            volume: "cli".into(),
            yes: false,
        },
        &options,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--yes"), "{err:#}");
    assert_eq!(read(&dir.join("f")).unwrap(), MARKER);
    run_key(
        KeyCommand::Revoke {
            volume: "cli".into(),
            yes: true,
        },
        &options,
    )
    .unwrap();
    assert!(read(&dir.join("f")).is_err());
    let err = run_volume(
        VolumeCommand::Unlock {
            name: Some("cli".into()),
            all: false,
        },
        &options,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("stay locked"), "{err:#}");

    // A missing KMS configuration is named in the error.
    let bad = KeysOptions {
        kms_config: store.dir.path().join("nope.json"),
        ..options
    };
    let err = run_volume(
        VolumeCommand::Unlock {
            name: Some("cli".into()),
            all: false,
        },
        &bad,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("nope.json"), "{err:#}");
}
