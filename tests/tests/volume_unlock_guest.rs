//! guardd unlocks the configured volumes from the KMS at start, and leaves
//! them locked, saying why, when the KMS does not answer. Guest tests: guardd
//! needs the BPF LSM; the volume lives on the guest's ext4 /scratch.

mod keys_support;

use guard::journal::message_id;
use guard_tests::guest::*;
use keys_support::KmsServer;
use std::path::Path;
use std::time::Duration;

/// A locked volume holding a file, its records folder and KMS config file.
fn locked_volume(
    name: &str,
    kms: &KmsServer,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let root = Path::new("/scratch").join(name);
    let _ = std::fs::remove_dir_all(&root);
    let (data, records, config) = (
        root.join("data"),
        root.join("records"),
        root.join("kms.json"),
    );
    std::fs::create_dir_all(&data).unwrap();
    kms.write_config(&config);
    assert_ok(
        &guardctl_keys(
            &["volume", "init", name, data.to_str().unwrap()],
            &records,
            &config,
        ),
        "volume init",
    );
    std::fs::write(data.join("row.txt"), "record 99\n").unwrap();
    assert_ok(
        &guardctl_keys(&["volume", "lock", name], &records, &config),
        "volume lock",
    );
    assert!(
        std::fs::read(data.join("row.txt")).is_err(),
        "the file is readable while locked"
    );
    (data, records, config)
}

fn start_guardd(records: &Path, config: &Path) -> Guardd {
    Guardd::start_with(&[
        "--volume-dir",
        records.to_str().unwrap(),
        "--kms-config",
        config.to_str().unwrap(),
    ])
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn guardd_unlocks_configured_volumes_from_the_kms_at_start() {
    let kms = KmsServer::start();
    let (data, records, config) = locked_volume("unlockatstart", &kms);
    let _guardd = start_guardd(&records, &config);
    let entries = journal_entries(
        message_id::VOLUME_UNLOCKED,
        "GUARD_VOLUME",
        "unlockatstart",
        Duration::from_secs(30),
    );
    assert!(!entries.is_empty());
    assert_eq!(
        std::fs::read_to_string(data.join("row.txt")).unwrap(),
        "record 99\n"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn with_the_kms_down_the_volume_stays_locked_and_the_reason_is_logged() {
    let mut kms = KmsServer::start();
    let (data, records, config) = locked_volume("kmsdown", &kms);
    kms.stop();
    let _guardd = start_guardd(&records, &config);
    let entries = journal_entries(
        message_id::VOLUME_UNLOCK_FAILED,
        "GUARD_VOLUME",
        "kmsdown",
        Duration::from_secs(30),
    );
    assert!(!entries[0]["GUARD_REASON"].as_str().unwrap_or("").is_empty());
    assert!(
        std::fs::read(data.join("row.txt")).is_err(),
        "unlocked without the KMS"
    );
}
