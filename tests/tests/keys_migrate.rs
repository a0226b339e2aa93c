//! `volume migrate`: an existing data directory is copied into a new
//! encrypted volume, verified byte for byte, and only then swapped in; a
//! failed migrate leaves the source untouched. Host tests, run as root.

mod keys_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use guard::fscrypt::{self, DirPolicy};
use guard::volume::{self, VolumeKind};
use keys_support::*;

fn make_data_dir(dir: &Path) {
    fs::create_dir_all(dir.join("db1")).unwrap();
    fs::write(dir.join("ibdata1"), vec![7u8; 300_000]).unwrap();
    fs::write(dir.join("db1/t.ibd"), b"table rows").unwrap();
    fs::set_permissions(dir.join("db1/t.ibd"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(dir.join("db1/t.ibd"), Some(999), Some(999)).unwrap();
    std::os::unix::fs::symlink("db1/t.ibd", dir.join("link")).unwrap();
}

#[test]
fn migrate_copies_verifies_and_swaps() {
    let image = Ext4Image::new(64, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let src = image.path("mysql");
    make_data_dir(&src);
    let before = snapshot(&src);

    let report = volume::migrate::migrate(
        &store.store,
        kms.client().as_ref(),
        "mysql",
        &src,
        &image.path("mysql.new"),
    )
    .unwrap();
    assert_eq!(report.files, 2);
    // The encrypted copy now has the source's path, with identical contents.
    assert_eq!(
        report.record.kind,
        VolumeKind::Fscrypt {
            path: src.clone(),
            previous_path: None
        }
    );
    match fscrypt::get_policy(&src).unwrap() {
        DirPolicy::V2 { key_identifier, .. } => {
            assert_eq!(key_identifier.to_hex(), report.record.key_identifier)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&src), before);
    // The old plaintext sits at the destination path, untouched.
    assert_eq!(report.old_data, image.path("mysql.new"));
    assert_eq!(
        fscrypt::get_policy(&report.old_data).unwrap(),
        DirPolicy::Unencrypted
    );
    assert_eq!(snapshot(&report.old_data), before);

    // It is a normal volume: lock makes the data unreadable, unlock restores it.
    volume::lock(&store.store, "mysql").unwrap();
    assert!(read(&src.join("ibdata1")).is_err());
    volume::unlock(&store.store, kms.client().as_ref(), "mysql").unwrap();
    assert_eq!(snapshot(&src), before);
    volume::lock(&store.store, "mysql").unwrap();
}

#[test]
fn a_failed_migrate_leaves_the_source_untouched() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let src = image.path("pg");
    make_data_dir(&src);
    // A FIFO cannot be migrated: the copy stops part way.
    let fifo = std::ffi::CString::new(src.join("db1/socket").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let before = snapshot(&src);

    let dest = image.path("pg.new");
    let err = volume::migrate::migrate(&store.store, kms.client().as_ref(), "pg", &src, &dest)
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("special file") && text.contains("source is untouched"),
        "{text}"
    );
    assert_eq!(snapshot(&src), before);
    assert_eq!(fscrypt::get_policy(&src).unwrap(), DirPolicy::Unencrypted);
    assert!(!dest.exists(), "the half-made volume is removed");
    assert!(store.files().is_empty(), "no volume record is left behind");
    // Its KEK was destroyed in the KMS.
    let keks = kms.client().locate(&volume::kek_name("pg")).unwrap();
    assert!(
        keks.iter()
            .all(|k| k.state == guard::kms::KekState::Destroyed),
        "{keks:?}"
    );
}

#[test]
fn migrate_refuses_a_destination_on_another_filesystem_or_not_empty() {
    let image = Ext4Image::new(32, true);
    let other = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let src = image.path("d");
    make_data_dir(&src);
    let err = volume::migrate::migrate(
        &store.store,
        kms.client().as_ref(),
        "d",
        &src,
        &other.path("d"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("another filesystem"), "{err:#}");
    let busy = image.path("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("x"), b"x").unwrap();
    let err = volume::migrate::migrate(&store.store, kms.client().as_ref(), "d", &src, &busy)
        .unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    assert!(store.files().is_empty());
    assert!(kms
        .client()
        .locate(&volume::kek_name("d"))
        .unwrap()
        .is_empty());
}
