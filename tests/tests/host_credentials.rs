//! Guest tests: the host's credentials are guardd's alone.
//!
//! The private key that proves this host to the KMS gets the volume keys
//! from it: root holding a copy asks the KMS as the host (`guardctl volume
//! unlock`, `guardctl recover` of a copy of the raw device), so encryption
//! at rest would hide nothing from root. While guardd protects itself,
//! nobody else may open guard's private keys for reading, nor read the
//! block device of the filesystem holding them (the key's bytes are there).

mod keys_support;

use guard::events::KEPT_BLOCK_DEVICE;
use guard::journal::{field, message_id};
use guard::kms::{KmsConfig, TlsFiles};
use guard_tests::guest::*;
use keys_support::KmsServer;
use std::path::Path;
use std::time::Duration;

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn the_kms_client_key_is_read_by_guardd_alone_even_through_its_device() {
    disarm();
    let kms = KmsServer::start();
    // The host's KMS credentials on a filesystem of their own, as a server
    // keeps them in /etc/guard.
    let fs = LoopFs::mount("host-credentials-fs");
    let pki = fs.mountpoint.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let issued = kms.client_tls();
    let tls = TlsFiles {
        ca: pki.join("ca.pem"),
        cert: pki.join("client.pem"),
        key: pki.join("client.key"),
    };
    for (from, to) in [
        (&issued.ca, &tls.ca),
        (&issued.cert, &tls.cert),
        (&issued.key, &tls.key),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    let config = fs.mountpoint.join("kms.json");
    let kms_config = KmsConfig::GuardKms {
        url: kms.url(),
        tls: tls.clone(),
    };
    std::fs::write(&config, serde_json::to_vec_pretty(&kms_config).unwrap()).unwrap();

    // A locked volume guardd unlocks at start through that configuration.
    let root = Path::new("/scratch/host-credentials");
    let _ = std::fs::remove_dir_all(root);
    let (data, records) = (root.join("data"), root.join("records"));
    std::fs::create_dir_all(&data).unwrap();
    let init = ["volume", "init", "credentials", data.to_str().unwrap()];
    assert_ok(&guardctl_keys(&init, &records, &config), "volume init");
    std::fs::write(data.join("row.txt"), "record 4242\n").unwrap();
    let lock = ["volume", "lock", "credentials"];
    assert_ok(&guardctl_keys(&lock, &records, &config), "volume lock");

    // Without guard, root reads the key, and its bytes are on the device.
    let key = std::fs::read(&tls.key).unwrap();
    let body = &key[40..100]; // inside the PEM's base64
    drop_caches();
    assert!(
        find_on_device(&fs.device, body).is_some(),
        "the key's bytes are not on {}",
        fs.device.display()
    );

    let _guardd = ProtectedGuardd::start_with(&[
        "--kms-config",
        config.to_str().unwrap(),
        "--volume-dir",
        records.to_str().unwrap(),
    ]);
    // guardd itself still reads the key: it unlocks the volume.
    journal_entries(
        message_id::VOLUME_UNLOCKED,
        "GUARD_VOLUME",
        "credentials",
        Duration::from_secs(30),
    );
    assert_eq!(
        std::fs::read_to_string(data.join("row.txt")).unwrap(),
        "record 4242\n"
    );

    // Root can neither read the key...
    assert_open_eperm(&tls.key);
    let denials = journal_entries(
        message_id::DENIED,
        field::RULE,
        "guard-secrets",
        Duration::from_secs(15),
    );
    assert!(
        denials.iter().any(|e| e[field::PATH]
            .as_str()
            .is_some_and(|p| p.ends_with("/pki/client.key"))
            && e[field::ACCESS] == "read"),
        "no read denial of the key in {denials:?}"
    );
    // ...nor use it through guard's own tool...
    let unlock = guardctl_keys(&["volume", "unlock", "credentials"], &records, &config);
    assert_eperm(&unlock, "guardctl volume unlock as root");
    assert!(
        stderr(&unlock).contains("client.key"),
        "the error does not name the key: {}",
        stderr(&unlock)
    );
    // ...nor find it on the device. The certificate stays readable.
    assert_open_eperm(&fs.device);
    assert!(!device_denials(KEPT_BLOCK_DEVICE, &fs.device).is_empty());
    std::fs::read(&tls.cert).expect("the client certificate is not secret");
}
