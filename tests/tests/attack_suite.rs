//! The attack suite on a real kernel: `guardctl selftest --attack` against a
//! guardd armed with a signed policy (so self-protection is on), a
//! protected directory on an fscrypt volume of its own (a small ext4
//! `-O encrypt` on a loop device, so the raw-device technique reads the
//! whole device), and a copy of guardctl as the allowed program.
//!
//! The suite runs once per test binary (a `OnceLock`); two tests read its
//! result:
//! - `attacks_closed_today_stay_closed`: every technique not in
//!   [`STILL_OPEN`] is blocked and alerted, nothing is skipped or broken,
//!   and the allowed program kept working. A regression guard that passes now.
//! - `every_attack_is_blocked_and_alerted`: every row, as the issue asks.
//!   It fails until the kernel side closes the rows in [`STILL_OPEN`]; then
//!   empty that list.
//!
//! Run inside the QEMU guests by `cargo xtask vm-test attack_suite` (both kernels).

use guard::fscrypt;
use guard::keyring::{self, SecretKey};
use guard_tests::guest::*;
use guard_tests::machine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Techniques the kernel side does not close yet (observed on 6.1 and 6.12
/// after main's "Close more ways to the data"). Remove ids as they are closed.
const STILL_OPEN: &[&str] = &[];

const MARKER: &str = "ATTACK-SUITE-PLAINTEXT-MARKER-5c1e";
const ROOT: &str = "/scratch/attack";

/// What one run of the suite left to check.
struct SuiteRun {
    /// `guardctl selftest --attack --json` output.
    report: Value,
    /// The exit status of the selftest.
    exit_code: Option<i32>,
    /// What the allowed binary read from the file after the attacks.
    read_after: String,
    expected_content: String,
}

static SUITE: OnceLock<SuiteRun> = OnceLock::new();

fn suite() -> &'static SuiteRun {
    SUITE.get_or_init(run_suite)
}

/// A loop-mounted ext4 (`-O encrypt`) with an fscrypt v2 directory; torn down on drop.
struct Volume {
    device: String,
    mnt: PathBuf,
    data: PathBuf,
    key: fscrypt::KeyIdentifier,
}

impl Volume {
    fn new(root: &Path) -> Volume {
        let image = root.join("volume.img");
        let mnt = root.join("vol");
        std::fs::create_dir_all(&mnt).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(32 << 20).unwrap();
        drop(file);
        assert_ok(
            &sh(&format!("mkfs.ext4 -q -O encrypt {}", image.display())),
            "mkfs.ext4",
        );
        let out = sh(&format!("losetup -f --show {}", image.display()));
        assert_ok(&out, "losetup");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_ok(
            &sh(&format!("mount {device} {}", mnt.display())),
            "mount the volume",
        );
        let data = mnt.join("data");
        std::fs::create_dir(&data).unwrap();
        let master = SecretKey::random(64).unwrap();
        let provisioning =
            keyring::add_fscrypt_provisioning_key("guard-test:attack", &master).unwrap();
        let key = fscrypt::add_key_by_serial(&mnt, provisioning.serial).unwrap();
        provisioning.invalidate().unwrap();
        fscrypt::set_policy(&data, &key).unwrap();
        Volume {
            device,
            mnt,
            data,
            key,
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = fscrypt::remove_key(&self.mnt, &self.key);
        let _ = sh(&format!("umount -l {}", self.mnt.display()));
        let _ = sh(&format!("losetup -d {}", self.device));
    }
}

fn run_suite() -> SuiteRun {
    // A fresh guardd preloads the modules rows `md-remap` and `scsi-target-*`
    // need; one adopting a previous test's armed guard could not.
    disarm();
    let root = Path::new(ROOT);
    let _ = sh(&format!("umount -l {ROOT}/vol"));
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("allowed")).unwrap();
    let volume = Volume::new(root);
    let record = volume.data.join("record.txt");
    let expected_content = format!("{MARKER} patient 4711 diagnosis\n").repeat(200);
    std::fs::write(&record, &expected_content).unwrap();
    // The allowed program: a copy of guardctl at a path only the policy names.
    let accomplice = root.join("allowed/guardctl");
    std::fs::copy(bin("guardctl"), &accomplice).unwrap();
    // The accomplice's configuration, which the policy lists as immutable
    // (rows `config-*`).
    let config_dir = root.join("etc/accomplice");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("server.cnf");
    std::fs::write(&config, "[mysqld]\nbind-address = 127.0.0.1\n").unwrap();

    // guardd's KMS, whose client key row `kms-client-key` goes after.
    let kms_dir = Path::new("/tmp/attack-suite-kms");
    let _ = std::fs::remove_dir_all(kms_dir);
    let kms = guard_tests::mariadb::LocalKms::start(kms_dir, false).unwrap();
    let kms_config = kms.config.to_str().unwrap();

    let keys = SigningKeys::new("attack");
    // md for row `md-remap`, the SCSI target for rows `scsi-target-*`, the
    // NVMe target for `nvme-target`: nothing loads modules once guard is armed.
    let guardd = SignedGuardd::start(
        &keys,
        &[
            "--preload-module",
            "md_mod",
            "--preload-module",
            "target_core_file",
            "--preload-module",
            "target_core_iblock",
            "--preload-module",
            "nvmet",
            "--kms-config",
            kms_config,
        ],
    );
    let policy = json!({
        "mode": "enforce",
        "protected": [{
            "path": volume.data,
            "rules": [{
                "name": "attack suite accomplice",
                "binaries": [accomplice],
                "access": ["read", "write", "create", "delete", "rename", "link", "setattr"],
                "effect": "allow"
            }]
        }],
        // The accomplice loads code only from the system's libraries (row
        // `foreign-library`).
        "libraries": ["/usr/lib/x86_64-linux-gnu"],
        "immutable": [config_dir]
    });
    let serial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = keys.sign_policy(&policy, serial);
    assert_ok(&apply_file(&signed), "applying the signed policy");

    let out = Command::new(bin("guardctl"))
        .args(["selftest", "--attack", "--json", "--dir"])
        .arg(&volume.data)
        .arg("--file")
        .arg(&record)
        .arg("--accomplice")
        .arg(&accomplice)
        .args(["--device", &volume.device, "--marker", MARKER])
        .arg("--config")
        .arg(&config)
        .args(["--kms-config", kms_config])
        .output()
        .expect("running guardctl selftest");
    eprintln!("{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "selftest printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    print_table(&report);

    let read = Command::new(&accomplice)
        .args(["selftest", "dump"])
        .arg(&record)
        .output()
        .unwrap();
    let read_after = String::from_utf8_lossy(&read.stdout).into_owned();
    drop(guardd);
    drop(volume);
    SuiteRun {
        report,
        exit_code: out.status.code(),
        read_after,
        expected_content,
    }
}

/// The table, for the test log (the JSON is what is asserted).
fn print_table(report: &Value) {
    println!("attack suite on {}", machine::kernel_release());
    for row in rows(report) {
        println!(
            "{:<24} | {:<90} | {}",
            row["id"].as_str().unwrap_or("?"),
            row["observed"].as_str().unwrap_or("?"),
            row["alert"].as_str().unwrap_or("?")
        );
    }
}

fn rows(report: &Value) -> &Vec<Value> {
    report["rows"].as_array().expect("rows in the report")
}

fn describe(row: &Value) -> String {
    format!(
        "{}: {} / alert {}",
        row["id"].as_str().unwrap_or("?"),
        row["observed"].as_str().unwrap_or("?"),
        row["alert"].as_str().unwrap_or("?")
    )
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn attacks_closed_today_stay_closed() {
    let run = suite();
    let report = &run.report;
    assert_eq!(
        report["allowed_program"]["works"], true,
        "the allowed program stopped working during the attacks: {}",
        report["allowed_program"]
    );
    assert_eq!(
        run.read_after, run.expected_content,
        "the allowed binary no longer reads the record after the attacks"
    );
    let all = rows(report);
    assert!(all.len() >= 50, "only {} techniques ran", all.len());
    let not_run: Vec<String> = all
        .iter()
        .filter(|r| r["state"] != "tried")
        .map(describe)
        .collect();
    assert!(not_run.is_empty(), "techniques not tried: {not_run:#?}");
    for id in STILL_OPEN {
        assert!(
            all.iter().any(|r| r["id"] == *id),
            "STILL_OPEN names {id}, which the suite does not have"
        );
    }
    let regressions: Vec<String> = all
        .iter()
        .filter(|r| !STILL_OPEN.contains(&r["id"].as_str().unwrap_or("")))
        .filter(|r| r["passed"] != true)
        .map(describe)
        .collect();
    assert!(
        regressions.is_empty(),
        "attacks that must be blocked and alerted were not: {regressions:#?}"
    );
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn every_attack_is_blocked_and_alerted() {
    let run = suite();
    // Shown in the log when this fails: the whole table, not only the open rows.
    print_table(&run.report);
    let open: Vec<String> = rows(&run.report)
        .iter()
        .filter(|r| r["passed"] != true)
        .map(describe)
        .collect();
    assert!(
        open.is_empty(),
        "{} techniques are not blocked and alerted: {open:#?}",
        open.len()
    );
    assert_eq!(run.exit_code, Some(0), "selftest exit status");
    assert_eq!(run.report["summary"]["all_passed"], true);
}
