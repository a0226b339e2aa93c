//! The key and volume flows of issue 3 end to end through the `guardctl`
//! binary, as an administrator runs them: exit status, what it prints, the
//! error naming what is wrong, and, for bad input, that nothing on disk
//! changed. Host tests, run as root, against a real guard-kms on loopback.

mod keys_support;

use std::fs;
use std::path::Path;

use guard::kms::pki::{CertificateAuthority, Role};
use guard::kms::KekState;
use guard::volume::{self, VolumeStore};
use keys_support::*;

const MARKER: &str = "GUARD-PLAINTEXT-MARKER-cli-9d41";
/// Plaintext written outside the volume, which verify-encryption must find.
const LEAKED: &str = "GUARD-PLAINTEXT-LEAKED-cli-3e07";

fn state_of(guardctl: &Guardctl, name: &str) -> serde_json::Value {
    let run = guardctl.run(&["volume", "status", "--json"]);
    let lines: serde_json::Value = serde_json::from_str(run.ok()).unwrap();
    lines
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name} in {lines}"))["state"]
        .clone()
}

/// What a refused command must leave as it was: the volume store and a
/// directory tree.
fn on_disk(store: &Store, dir: &Path) -> (Vec<Entry>, Vec<Entry>) {
    (snapshot(store.dir.path()), snapshot(dir))
}

#[test]
fn guardctl_drives_init_status_lock_unlock_rotate_and_revoke() {
    let image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let guardctl = Guardctl::new(&store, &kms);
    let dir = image.path("mysql");
    fs::create_dir(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap();

    let out = guardctl.run(&["volume", "init", "mysql", dir_arg]);
    let record = VolumeStore::new(store.dir.path()).load("mysql").unwrap();
    assert!(
        out.ok().contains(&record.key_identifier) && out.ok().contains("unlocked"),
        "{}",
        out.stdout
    );
    let file = dir.join("patients.ibd");
    fs::write(&file, MARKER).unwrap();
    assert_eq!(state_of(&guardctl, "mysql"), "unlocked");
    let table = guardctl.run(&["volume", "status"]);
    assert!(
        table.ok().contains("mysql") && table.ok().contains(dir_arg),
        "{}",
        table.stdout
    );

    // Lock with a file open: the key goes, the open file is named.
    let open = fs::File::open(&file).unwrap();
    let out = guardctl.run(&["volume", "lock", "mysql"]);
    assert!(
        out.ok().contains("still open") && out.ok().contains("patients.ibd"),
        "{}",
        out.stdout
    );
    assert_eq!(state_of(&guardctl, "mysql"), "locking (files still in use)");
    drop(open);
    let out = guardctl.run(&["volume", "lock", "mysql"]);
    assert!(out.ok().contains("volume mysql locked"), "{}", out.stdout);
    assert_eq!(state_of(&guardctl, "mysql"), "locked");
    assert!(read(&file).is_err());

    guardctl.run(&["volume", "unlock", "mysql"]).ok();
    assert_eq!(read(&file).unwrap(), MARKER.as_bytes());
    guardctl.run(&["volume", "lock", "mysql"]).ok();
    let out = guardctl.run(&["volume", "unlock", "--all"]);
    assert!(out.ok().contains("volume mysql unlocked"), "{}", out.stdout);
    assert_eq!(read(&file).unwrap(), MARKER.as_bytes());

    // Rotation: a new KEK, the old one destroyed, the data untouched.
    let out = guardctl.run(&["key", "rotate", "mysql"]);
    let rotated = VolumeStore::new(store.dir.path()).load("mysql").unwrap();
    assert_ne!(rotated.kek_id, record.kek_id);
    assert_eq!(rotated.key_identifier, record.key_identifier);
    assert!(out.ok().contains(&rotated.kek_id), "{}", out.stdout);
    let client = kms.client();
    assert_eq!(
        client.get(&record.kek_id).unwrap().state,
        KekState::Destroyed
    );
    assert_eq!(read(&file).unwrap(), MARKER.as_bytes());
    guardctl.run(&["volume", "lock", "mysql"]).ok();
    guardctl.run(&["volume", "unlock", "mysql"]).ok();
    assert_eq!(read(&file).unwrap(), MARKER.as_bytes());

    // Revocation needs --yes, and without it changes nothing.
    let before = on_disk(&store, &dir);
    guardctl
        .run(&["key", "revoke", "mysql"])
        .fails_with(&["--yes"]);
    assert_eq!(on_disk(&store, &dir), before);
    assert_eq!(client.get(&rotated.kek_id).unwrap().state, KekState::Active);

    let unrevoked = fs::read(store.dir.path().join("mysql.json")).unwrap();
    let out = guardctl.run(&["key", "revoke", "mysql", "--yes"]);
    assert!(out.ok().contains("revoked"), "{}", out.stdout);
    // Crypto-shredded at once: the name is gone, the contents unreadable.
    assert!(read(&file).is_err());
    assert_eq!(
        client.get(&rotated.kek_id).unwrap().state,
        KekState::Revoked
    );
    assert_eq!(state_of(&guardctl, "mysql"), "revoked");
    let before = on_disk(&store, &dir);
    guardctl
        .run(&["volume", "unlock", "mysql"])
        .fails_with(&["mysql", "revoked", "stay locked"]);
    guardctl
        .run(&["key", "rotate", "mysql"])
        .fails_with(&["mysql", "revoked"]);
    assert_eq!(on_disk(&store, &dir), before);

    // A record restored from before the revocation does not bring the key
    // back: the KMS refuses it.
    fs::write(store.dir.path().join("mysql.json"), &unrevoked).unwrap();
    let before = on_disk(&store, &dir);
    guardctl
        .run(&["volume", "unlock", "mysql"])
        .fails_with(&["refused", "Revoked", "stay locked"]);
    assert_eq!(on_disk(&store, &dir), before);
    assert!(read(&file).is_err());
}

#[test]
fn guardctl_verify_encryption_and_recover() {
    let mut image = Ext4Image::new(32, true);
    let kms = KmsServer::start();
    let store = Store::new();
    let guardctl = Guardctl::new(&store, &kms);
    let dir = image.path("pg");
    fs::create_dir(&dir).unwrap();
    guardctl
        .run(&["volume", "init", "pg", dir.to_str().unwrap()])
        .ok();
    fs::create_dir(dir.join("base")).unwrap();
    fs::write(dir.join("base/16384"), MARKER.repeat(3000)).unwrap();
    fs::write(dir.join("PG_VERSION"), b"15\n").unwrap();
    std::os::unix::fs::symlink("base/16384", dir.join("link")).unwrap();
    let files = snapshot(&dir);
    // Plaintext outside the volume, on the same filesystem.
    fs::write(image.path("leak.txt"), LEAKED).unwrap();
    let sync = fs::File::open(&dir).unwrap();
    // SAFETY: syncfs on an open descriptor: the raw image must hold the data.
    assert_eq!(
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&sync)) },
        0
    );
    drop(sync);

    // The raw blocks decrypt to what the kernel shows; the marker is nowhere.
    let out = guardctl.run(&["verify-encryption", "pg", "--marker", MARKER]);
    assert!(out.ok().contains("OK:"), "{}", out.stdout);

    // Plaintext in the raw bytes is found, and fails the check.
    let run = guardctl.run(&[
        "verify-encryption",
        "pg",
        "--marker",
        MARKER,
        "--marker",
        LEAKED,
    ]);
    run.fails_with(&["verify-encryption FAILED", "pg"]);
    assert!(
        run.stdout.contains(&format!("PLAINTEXT marker {LEAKED:?}"))
            && !run.stdout.contains(&format!("PLAINTEXT marker {MARKER:?}")),
        "{}",
        run.stdout
    );

    // Disaster recovery from the unmounted image, without the kernel.
    guardctl.run(&["volume", "lock", "pg"]).ok();
    image.unmount();
    let out_dir = image.dir.path().join("restore");
    let recover = [
        "recover",
        "pg",
        "--image",
        image.image.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    let run = guardctl.run(&recover);
    assert!(run.ok().contains("recovered 2 files"), "{}", run.stdout);
    assert_eq!(snapshot(&out_dir), files);

    // Not into a directory that already holds something.
    let before = snapshot(&out_dir);
    guardctl.run(&recover).fails_with(&["not empty"]);
    assert_eq!(snapshot(&out_dir), before);

    // Not from an image without the encrypt feature.
    let mut plain = Ext4Image::new(16, false);
    plain.unmount();
    let elsewhere = image.dir.path().join("elsewhere");
    guardctl
        .run(&[
            "recover",
            "pg",
            "--image",
            plain.image.to_str().unwrap(),
            "--out",
            elsewhere.to_str().unwrap(),
        ])
        .fails_with(&["no encrypt feature"]);
    assert!(!elsewhere.exists());
}

#[test]
fn guardctl_refuses_bad_input_and_changes_nothing() {
    let image = Ext4Image::new(32, true);
    let plain = Ext4Image::new(16, false);
    let ca = CertificateAuthority::new("kms ca").unwrap();
    let kms = KmsServer::start_with(&ca, 0);
    let store = Store::new();
    let guardctl = Guardctl::new(&store, &kms);
    let empty = image.path("empty");
    fs::create_dir(&empty).unwrap();

    // A non-empty directory for init.
    let full = image.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("ibdata1"), b"rows").unwrap();
    let before = on_disk(&store, &full);
    guardctl
        .run(&["volume", "init", "full", full.to_str().unwrap()])
        .fails_with(&["not empty", full.to_str().unwrap()]);
    assert_eq!(on_disk(&store, &full), before);

    // A filesystem without the encrypt feature.
    let dir = plain.path("db");
    fs::create_dir(&dir).unwrap();
    let before = on_disk(&store, &dir);
    guardctl
        .run(&["volume", "init", "plain", dir.to_str().unwrap()])
        .fails_with(&["does not support encryption"]);
    assert_eq!(on_disk(&store, &dir), before);

    // Neither created a key in the KMS.
    let client = kms.client();
    for name in ["full", "plain"] {
        assert!(client.locate(&volume::kek_name(name)).unwrap().is_empty());
    }

    // A missing KMS configuration is named.
    let nowhere = Guardctl {
        volume_dir: guardctl.volume_dir.clone(),
        kms_config: store.dir.path().join("absent-kms.json"),
    };
    let before = on_disk(&store, &empty);
    nowhere
        .run(&["volume", "init", "e", empty.to_str().unwrap()])
        .fails_with(&["absent-kms.json"]);
    assert_eq!(on_disk(&store, &empty), before);

    // A KMS that answers garbage, over TLS and in plain TCP.
    let tmp = tempfile::tempdir().unwrap();
    let garbage = guardctl.with_kms(
        tmp.path().join("garbage.json"),
        garbage_kms(
            &kms,
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"id\": 42!!}",
        ),
        kms.client_tls(),
    );
    garbage
        .run(&["volume", "init", "e", empty.to_str().unwrap()])
        .fails_with(&["answered garbage"]);
    assert_eq!(on_disk(&store, &empty), before);

    // A volume to unlock with bad credentials or a bad record.
    guardctl
        .run(&["volume", "init", "t", empty.to_str().unwrap()])
        .ok();
    fs::write(empty.join("f"), MARKER).unwrap();
    guardctl.run(&["volume", "lock", "t"]).ok();
    let locked = on_disk(&store, &empty);

    // Client certificates from another CA, or expired.
    let server_ca = fs::read_to_string(&kms.pki.ca_cert).unwrap();
    let rogue = CertificateAuthority::new("rogue ca").unwrap();
    let issued = rogue.issue("guardd", &[], Role::Client, 30).unwrap();
    let expired = expired_certificate(&ca, "guardd", &[], Role::Client);
    for (label, cert) in [("rogue", &issued), ("expired", &expired)] {
        let certs = tmp.path().join(label);
        let tls = client_files(&certs, &server_ca, &cert.cert_pem, &cert.key_pem);
        let bad = guardctl.with_kms(certs.join("kms.json"), kms.url(), tls);
        bad.run(&["volume", "unlock", "t"])
            .fails_with(&["TLS with KMS", "stay locked"]);
        assert_eq!(on_disk(&store, &empty), locked, "{label} certificate");
    }
    // The same over garbage: the volume stays locked, the reason named.
    garbage
        .run(&["volume", "unlock", "t"])
        .fails_with(&["answered garbage", "stay locked"]);
    assert_eq!(on_disk(&store, &empty), locked);

    // A tampered wrapped-key file.
    let record_file = store.dir.path().join("t.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&fs::read(&record_file).unwrap()).unwrap();
    let wrapped = record["wrapped_key"].as_str().unwrap().to_string();
    let flipped = if wrapped.starts_with('A') { "B" } else { "A" };
    record["wrapped_key"] = format!("{flipped}{}", &wrapped[1..]).into();
    fs::write(&record_file, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let tampered = on_disk(&store, &empty);
    guardctl.run(&["volume", "unlock", "t"]).fails_with(&[
        "could not unwrap",
        "tampered",
        "stay locked",
    ]);
    assert_eq!(on_disk(&store, &empty), tampered);
    // A record that is not even valid JSON is named as such.
    fs::write(&record_file, b"{\"format\": 1, \"name\": ").unwrap();
    guardctl
        .run(&["volume", "unlock", "t"])
        .fails_with(&["t.json"]);

    // migrate into a non-empty destination: refused, the source untouched.
    let src = image.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("ibdata1"), MARKER).unwrap();
    let before = on_disk(&store, &src);
    let full_before = snapshot(&full);
    guardctl
        .run(&[
            "volume",
            "migrate",
            src.to_str().unwrap(),
            full.to_str().unwrap(),
            "--name",
            "m",
        ])
        .fails_with(&["not empty", full.to_str().unwrap()]);
    assert_eq!(on_disk(&store, &src), before);
    assert_eq!(snapshot(&full), full_before);
}
