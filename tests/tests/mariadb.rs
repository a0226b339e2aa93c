//! The MariaDB use case end to end, on a real kernel (issue 6): Debian's MariaDB
//! keeps patient rows on a guard volume whose key comes from a guard-kms on
//! loopback; only mariadbd may touch the data, mariabackup may read it; root's
//! tools are refused and every refusal is in the journal and the audit trail;
//! the policy is signed off-host and guardd refuses an unsigned one; the
//! volume locks, unlocks again when guardd restarts, and a revoked key shreds
//! the data. `cargo xtask demo` shows the same scenario as a transcript.
//!
//! Run inside the QEMU guests by `cargo xtask vm-test --kernel all mariadb`.

use guard::journal::{field, message_id};
use guard_tests::field_text;
use guard_tests::guest::{
    self, assert_eperm, assert_ok, journal_entries, key_pinned, stderr, Guardd, SignedGuardd,
    SigningKeys,
};
use guard_tests::mariadb::{self, Keys, LocalKms, MariaDb, PolicySigning, BACKUP, SERVER};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const DATADIR: &str = "/scratch/mysql";
const VOLUME: &str = "mysql";
/// The scratch disk beneath /scratch.
const DEVICE: &str = "/dev/vda";
/// A patient name that must never reach the disk in the clear.
const MARKER: &str = "Zebulon Quagmire-4711";
const AUDIT_RECORDS: &str = "/var/lib/guard/audit/records.jsonl";
const WAIT: Duration = Duration::from_secs(30);

const ROWS: &str =
    "1\tZebulon Quagmire-4711\thypertension\n2\tAlice Example\tasthma\n3\tBob Example\tdiabetes\n";

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn mariadb_on_a_guard_volume_end_to_end() {
    // 1. The KMS holds the key-encryption key, as a separate process; the
    //    administrator's policy-signing key is made (off-host in production).
    let kms = LocalKms::start(Path::new("/tmp/mariadb-kms"), true).unwrap();
    let keys = Keys {
        volume_dir: PathBuf::from("/tmp/mariadb-volumes"),
        kms_config: kms.config.clone(),
    };
    let admin = SigningKeys::new("mariadb-admin");
    let guardd_args = keys.guardd_args();
    let guardd_args: Vec<&str> = guardd_args.iter().map(String::as_str).collect();
    // The volume records are guard's own files, immutable while guardd
    // protects itself (as it does once it trusts a key): the volume is made
    // under a plain guardd.
    let plain_guardd = Guardd::start_with(&guardd_args);

    // 2. The data directory is a guard volume; MariaDB is initialised in it.
    let datadir = Path::new(DATADIR);
    let _ = std::fs::remove_dir_all(datadir);
    std::fs::create_dir_all(datadir).unwrap();
    assert_ok(
        &keys.guardctl(&["volume", "init", VOLUME, DATADIR]),
        "volume init",
    );
    let db = MariaDb::configure(datadir).unwrap();
    db.install().unwrap();
    // Before any policy: how the launcher starts the server, to pin.
    let pins = pin_start(&db);

    // 3. guardd now trusts only the administrator's key; the policy (mariadbd
    //    started by mysqld_safe only) is signed and applied, an unsigned one is
    //    refused; then MariaDB is started by its launcher under it.
    drop(plain_guardd);
    let mut guardd = SignedGuardd::start(&admin, &guardd_args);
    let signing = PolicySigning {
        keys: &admin,
        serial: 1,
    };
    mariadb::apply_policy(&mariadb::policy(datadir), Some(&signing)).unwrap();
    applied_policy_is_signed_by(&admin, 1);
    unsigned_policy_is_refused(&admin, datadir);
    db.start().unwrap();
    assert_supervised_by_mysqld_safe();

    // 4. SQL works, and so do MariaDB's own clients.
    db.sql(&format!(
        "CREATE DATABASE clinic;
         CREATE TABLE clinic.patients (id INT PRIMARY KEY, name VARCHAR(64), diagnosis VARCHAR(64)) ENGINE=InnoDB;
         INSERT INTO clinic.patients VALUES (1, '{MARKER}', 'hypertension'), (2, 'Alice Example', 'asthma'), (3, 'Bob Example', 'diabetes');"
    ))
    .unwrap();
    assert_eq!(rows(&db), ROWS);
    mariadb_clients_pass();
    assert_no_denials_in_datadir(0, "MariaDB's normal work");

    // 5. Root's tools are refused, the raw device shows only ciphertext, and
    //    every refusal is in the journal and the audit trail.
    root_is_refused();
    root_cannot_start_a_second_server();
    root_cannot_reconfigure_the_server();
    root_cannot_start_the_server_with_its_own_options_or_environment(&db, &pins, &admin);
    assert_eq!(
        mariadb::raw_occurrences(Path::new(DEVICE), MARKER.as_bytes()).unwrap(),
        0,
        "the marker is in the clear on {DEVICE}"
    );
    control_marker_is_found_in_plaintext();

    // 6. mariabackup backs up the running server; its reads are logged.
    backup_while_running();

    // 7. Locked, the files are unreadable even to mariadbd; guardd, stopped
    //    with a signed order and started again, unlocks them from the KMS and
    //    every row is back, under the same signed policy.
    db.stop().unwrap();
    assert_ok(&keys.guardctl(&["volume", "lock", VOLUME]), "volume lock");
    server_cannot_read_its_files();
    let unlocks_before = volume_unlocks().len();
    guardd.stop();
    // Shadows the stopped one, which is dropped after it (and finds nothing to do).
    let mut guardd = SignedGuardd::start(&admin, &guardd_args);
    let matches = [
        format!("MESSAGE_ID={}", message_id::VOLUME_UNLOCKED),
        format!("GUARD_VOLUME={VOLUME}"),
    ];
    let matches: Vec<&str> = matches.iter().map(String::as_str).collect();
    guard_tests::wait_for_journal_entries(&matches, unlocks_before + 1, WAIT)
        .unwrap_or_else(|e| panic!("the restarted guardd did not unlock {VOLUME}: {e:#}"));
    applied_policy_is_signed_by(&admin, 3);
    let before = denials_in_datadir().len();
    db.start().unwrap();
    assert_eq!(rows(&db), ROWS, "rows after lock, guardd restart, unlock");
    assert_no_denials_in_datadir(before, "MariaDB's restart on the unlocked volume");

    // 8. Revocation: the KMS refuses the key for good; the log says who and
    //    when. Revoking rewrites the volume's record, one of guard's own files:
    //    guardd is stopped with a signed order first (the kernel keeps enforcing).
    db.stop().unwrap();
    guardd.stop();
    assert_ok(
        &keys.guardctl(&["key", "revoke", VOLUME, "--yes"]),
        "key revoke",
    );
    let unlock = keys.guardctl(&["volume", "unlock", VOLUME]);
    assert!(
        !unlock.status.success() && stderr(&unlock).contains("revoked"),
        "a revoked key unlocked the volume: {}",
        stderr(&unlock)
    );
    server_cannot_read_its_files();
    revocation_is_logged(&kms);

    // The guest tests after this one apply unsigned policies: a guardd that
    // adopts the pinned key takes a signed disarm, which removes the key.
    let mut guardd = SignedGuardd::start_with(&admin, &[]);
    guardd.disarm();
    assert!(!key_pinned(), "the administrator's key is still pinned");
}

/// `guardctl policy show --json`: the applied policy came signed by `admin`'s
/// key with `serial`.
#[track_caller]
fn applied_policy_is_signed_by(admin: &SigningKeys, serial: u64) {
    let shown = guest::show();
    let signed = &shown["signed"];
    assert_eq!(signed["signer"], admin.fingerprint.as_str(), "{shown}");
    assert_eq!(signed["serial"], serial, "{shown}");
    assert_eq!(shown["mode"], "enforce", "{shown}");
}

/// Root, without the administrator's key, tries the same policy in audit mode
/// (which would let every program read the data): guardd refuses it, names why,
/// journals the refusal, and the signed policy stays in force.
fn unsigned_policy_is_refused(admin: &SigningKeys, datadir: &Path) {
    let hash = guest::show()["hash"].clone();
    let mut weakened = mariadb::policy(datadir);
    weakened["mode"] = "audit".into();
    let error = mariadb::apply_policy(&weakened, None)
        .expect_err("guardd applied an unsigned policy")
        .to_string();
    assert!(
        error.contains("unsigned policy refused") && error.contains("nothing changed"),
        "{error}"
    );
    let matches = [
        format!("MESSAGE_ID={}", message_id::SIGNING_REFUSED),
        format!("{}=unsigned", field::REFUSAL),
        format!("{}=policy", field::DOCUMENT),
        format!("{}={}", field::TRUST_KEY, admin.fingerprint),
    ];
    let matches: Vec<&str> = matches.iter().map(String::as_str).collect();
    let refusals = guard_tests::wait_for_journal_entries(&matches, 1, WAIT)
        .unwrap_or_else(|e| panic!("the refusal of an unsigned policy is not journaled: {e:#}"));
    assert_eq!(field_text(&refusals[0], field::UID).as_deref(), Some("0"));
    let shown = guest::show();
    assert_eq!(shown["hash"], hash, "the policy changed: {shown}");
    applied_policy_is_signed_by(admin, 1);
}

/// guardd's journal entries saying it unlocked the scenario's volume.
fn volume_unlocks() -> Vec<Value> {
    guard_tests::journal_entries(&[
        &format!("MESSAGE_ID={}", message_id::VOLUME_UNLOCKED),
        &format!("GUARD_VOLUME={VOLUME}"),
    ])
    .unwrap()
}

fn rows(db: &MariaDb) -> String {
    db.sql("SELECT id, name, diagnosis FROM clinic.patients ORDER BY id")
        .unwrap()
}

/// "Started by its normal launcher": mariadbd's parent is mysqld_safe.
fn assert_supervised_by_mysqld_safe() {
    let pids = MariaDb::server_pids();
    assert_eq!(pids.len(), 1, "expected one mariadbd, found {pids:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    let ppid = status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .unwrap()
        .trim();
    let parent = std::fs::read_to_string(format!("/proc/{ppid}/cmdline")).unwrap();
    assert!(
        parent.contains("mysqld_safe"),
        "mariadbd's parent is {parent:?}, not mysqld_safe"
    );
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

/// MariaDB's own client programs find nothing wrong.
fn mariadb_clients_pass() {
    let ping = run("mariadb-admin", &["ping"]);
    assert_ok(&ping, "mariadb-admin ping");
    assert!(String::from_utf8_lossy(&ping.stdout).contains("mysqld is alive"));
    let check = run("mariadb-check", &["--all-databases"]);
    assert_ok(&check, "mariadb-check --all-databases");
    let report = String::from_utf8_lossy(&check.stdout);
    let bad: Vec<&str> = report
        .lines()
        .filter(|line| !line.trim_end().ends_with("OK") && line.contains('.'))
        .collect();
    assert!(bad.is_empty(), "mariadb-check reported: {bad:?}\n{report}");
    assert!(report.contains("clinic.patients"), "{report}");
    let slap = run(
        "mariadb-slap",
        &[
            "--concurrency=4",
            "--iterations=2",
            "--number-of-queries=200",
            "--auto-generate-sql",
        ],
    );
    assert_ok(&slap, "mariadb-slap");
}

/// Denials of anything inside the data directory since the journal began.
fn denials_in_datadir() -> Vec<Value> {
    guard_tests::journal_entries(&[&format!("MESSAGE_ID={}", message_id::DENIED)])
        .unwrap()
        .into_iter()
        .filter(|entry| {
            field_text(entry, "GUARD_PATH").is_some_and(|path| path.starts_with(DATADIR))
        })
        .collect()
}

/// The refusals MariaDB's normal work under Debian's launcher causes, both
/// logged, neither changing what MariaDB does (README, "The MariaDB scenario"):
/// - the launcher checks free space with `df $datadir/.`; df opens its argument
///   (to trigger an automount) and falls back to statfs when that fails;
/// - /etc/mysql/debian-start runs `mariadb-upgrade --version-check`, which reads
///   and writes its stamp file in the data directory itself, not through the
///   server; refused, the check redoes its work at each start.
///
/// The policy keeps to what the issue asks (only mariadbd, and mariabackup to
/// read); every other program is refused, these two included.
fn expected_denial(entry: &Value) -> bool {
    let exe = field_text(entry, "GUARD_EXE");
    let path = field_text(entry, "GUARD_PATH");
    match (exe.as_deref(), path.as_deref()) {
        (Some("/usr/bin/df"), Some(path)) => path == DATADIR,
        (Some("/usr/bin/mariadb-upgrade"), Some(path)) => {
            path == format!("{DATADIR}/mysql_upgrade_info")
        }
        _ => false,
    }
}

/// Asserts that, of the denials in the data directory, those after the first
/// `before` (taken before the step began) are all expected ones.
#[track_caller]
fn assert_no_denials_in_datadir(before: usize, during: &str) {
    let denials: Vec<String> = denials_in_datadir()
        .iter()
        .skip(before)
        .filter(|entry| !expected_denial(entry))
        .filter_map(|entry| field_text(entry, "MESSAGE"))
        .collect();
    assert!(
        denials.is_empty(),
        "guard denied something during {during}: {denials:#?}"
    );
}

/// cat, cp, strings, tar and dd on the data files: EPERM, journaled, in the trail.
fn root_is_refused() {
    let ibd = format!("{DATADIR}/clinic/patients.ibd");
    let redo = format!("{DATADIR}/ib_logfile0");
    let attempts: [(&str, Vec<String>); 5] = [
        ("cat", vec![ibd.clone()]),
        ("cp", vec![ibd.clone(), "/tmp/stolen.ibd".into()]),
        ("strings", vec![format!("{DATADIR}/ibdata1")]),
        (
            "tar",
            vec!["cf".into(), "/tmp/stolen.tar".into(), DATADIR.into()],
        ),
        (
            "dd",
            vec![format!("if={redo}"), "of=/tmp/stolen.redo".into()],
        ),
    ];
    for (tool, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(tool, &args);
        assert_eperm(&out, &format!("root's {tool}"));
        // By executable: strings is x86_64-linux-gnu-strings, its comm cut short.
        let exe = executable(tool);
        let entries = journal_entries(message_id::DENIED, "GUARD_EXE", &exe, WAIT);
        assert!(
            entries.iter().any(|entry| {
                field_text(entry, "GUARD_PATH").is_some_and(|path| path.starts_with(DATADIR))
                    && field_text(entry, "GUARD_UID").as_deref() == Some("0")
            }),
            "no journal denial of {exe} in {DATADIR}: {entries:#?}"
        );
        wait_for_trail_denial(&exe);
    }
    assert!(
        !Path::new("/tmp/stolen.ibd").exists()
            || std::fs::metadata("/tmp/stolen.ibd").unwrap().len() == 0,
        "cp copied data"
    );
    let verify = guest::guardctl(&["log", "verify", "--local", "/var/lib/guard/audit"]);
    assert_ok(&verify, "guardctl log verify of the local trail");
}

/// The program a command name runs, symlinks resolved (as the kernel reports it).
fn executable(tool: &str) -> String {
    let out = run("sh", &["-c", &format!("command -v {tool}")]);
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::canonicalize(&path)
        .unwrap_or_else(|e| panic!("{tool} ({path}): {e}"))
        .display()
        .to_string()
}

/// The audit trail holds a denied record by `exe` of a path in the data
/// directory (guardd appends shortly after the journal entry).
fn wait_for_trail_denial(exe: &str) {
    let found = || {
        std::fs::read_to_string(AUDIT_RECORDS)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|record| {
                let event = &record["event"];
                event["kind"] == "denied"
                    && event["exe"] == exe
                    && event["path"]
                        .as_str()
                        .is_some_and(|path| path.starts_with(DATADIR))
            })
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !found() {
        assert!(
            std::time::Instant::now() < deadline,
            "no denied record by {exe} in {AUDIT_RECORDS}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The raw-device search can fail: a plaintext copy of the marker on the same
/// disk is found.
fn control_marker_is_found_in_plaintext() {
    std::fs::create_dir_all("/scratch/plain").unwrap();
    std::fs::write("/scratch/plain/control.txt", format!("control {MARKER}\n")).unwrap();
    assert!(
        mariadb::raw_occurrences(Path::new(DEVICE), MARKER.as_bytes()).unwrap() >= 1,
        "the raw search does not find a plaintext marker"
    );
}

fn backup_while_running() {
    let before = denials_in_datadir().len();
    let target = "/tmp/mariadb-backup";
    let _ = std::fs::remove_dir_all(target);
    let backup = run(
        "mariabackup",
        &["--backup", &format!("--target-dir={target}")],
    );
    assert_ok(&backup, "mariabackup --backup");
    let prepare = run(
        "mariabackup",
        &["--prepare", &format!("--target-dir={target}")],
    );
    assert_ok(&prepare, "mariabackup --prepare");
    let table = std::fs::read(format!("{target}/clinic/patients.ibd")).unwrap();
    assert!(
        memchr::memmem::find(&table, MARKER.as_bytes()).is_some(),
        "the backup lacks the rows"
    );
    let audited = journal_entries(message_id::AUDITED, "GUARD_EXE", BACKUP, WAIT);
    assert!(audited
        .iter()
        .all(|entry| field_text(entry, "GUARD_RULE").as_deref() == Some("backups")));
    assert_no_denials_in_datadir(before, "mariabackup");
}

/// mariadbd, the one allowed program, started by its supervisor on the locked
/// (or shredded) volume: it cannot open its own files and exits with an error.
fn server_cannot_read_its_files() {
    let error_log = "/tmp/locked.err";
    let _ = std::fs::remove_file(error_log);
    // timeout: should the server start after all, the test fails instead of hanging.
    let out = run(
        "timeout",
        &[
            "120",
            mariadb::SUPERVISOR,
            "--user=mysql",
            "--skip-networking",
            "--socket=/tmp/locked.sock",
            "--pid-file=/tmp/locked.pid",
            &format!("--log-error={error_log}"),
        ],
    );
    assert_ne!(
        out.status.code(),
        Some(124),
        "mariadbd ran on a locked volume"
    );
    assert!(
        MariaDb::server_pids().is_empty(),
        "mariadbd is running on a locked volume"
    );
    let errors = std::fs::read_to_string(error_log).unwrap_or_default();
    assert!(
        errors.contains("[ERROR]"),
        "mariadbd reported no error on a locked volume: {errors}"
    );
    let names: Vec<String> = std::fs::read_dir(DATADIR)
        .map(|dir| {
            dir.filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !names.iter().any(|name| name == "ibdata1"),
        "plaintext names while locked: {names:?}"
    );
}

/// Root starting a second mariadbd with its own options (which could make it
/// dump the tables anywhere) is refused at exec and alerted.
fn root_cannot_start_a_second_server() {
    let out = Command::new(SERVER)
        .args([
            "--user=mysql",
            "--skip-networking",
            "--socket=/tmp/second.sock",
        ])
        .output();
    let error = out.expect_err("root started a second mariadbd");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
    let alerts = journal_entries(
        message_id::DENIED,
        "GUARD_ACCESS",
        "unsupervised-start",
        WAIT,
    );
    assert!(
        alerts.iter().any(|entry| {
            field_text(entry, "GUARD_PATH")
                .is_some_and(|path| path.ends_with(&format!("({SERVER})")))
                && field_text(entry, "GUARD_UID").as_deref() == Some("0")
        }),
        "no unsupervised-start alert for {SERVER}: {alerts:#?}"
    );
}

/// Root's other way to a server with options of its own: edit what the
/// launcher reads and restart it. Each attempt is refused and journaled.
fn root_cannot_reconfigure_the_server() {
    let attempts = [
        format!("echo skip-grant-tables >> {}", mariadb::DROP_IN),
        "printf '[mysqld]\\nskip-grant-tables\\n' > /etc/mysql/conf.d/zz-root.cnf".to_string(),
        "echo skip-grant-tables >> /etc/my.cnf".to_string(),
        "echo 'MYSQL_HOME=/tmp' >> /etc/default/mariadb".to_string(),
    ];
    for script in &attempts {
        let out = Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(
            !out.status.success() && stderr(&out).contains("Operation not permitted"),
            "{script}: expected EPERM, got {} {}",
            out.status,
            stderr(&out)
        );
    }
    let drop_in = std::fs::read_to_string(mariadb::DROP_IN).unwrap();
    assert!(!drop_in.contains("skip-grant-tables"), "{drop_in}");
    let alerts = journal_entries(message_id::DENIED, "GUARD_RULE", "immutable", WAIT);
    assert!(
        alerts.iter().any(|entry| {
            field_text(entry, "GUARD_PATH").as_deref() == Some(mariadb::DROP_IN)
                && field_text(entry, "GUARD_UID").as_deref() == Some("0")
        }),
        "no alert for the edit of {}: {alerts:#?}",
        mariadb::DROP_IN
    );
}

/// The arguments and environment the launcher starts the server with
/// (`guardctl policy pin-start`, as an administrator runs it before arming:
/// guard lets nobody read an allowed process's environment).
fn pin_start(db: &MariaDb) -> Value {
    db.start().unwrap();
    let pids = MariaDb::server_pids();
    let out = guest::guardctl(&["policy", "pin-start", &pids[0].to_string()]);
    assert_ok(&out, "guardctl policy pin-start");
    db.stop().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The scenario's policy with the server's start pinned to `pins`.
fn pinned_policy(datadir: &Path, pins: &Value) -> Value {
    let mut policy = mariadb::policy(datadir);
    let started_by = &mut policy["protected"][0]["rules"][0]["started_by"];
    started_by["arguments"] = pins["arguments"].clone();
    started_by["environment"] = pins["environment"].clone();
    policy
}

/// Root's way past `immutable` and `started_by`: start the server through
/// its own launcher with a variable it reads. Under the policy with its
/// arguments and environment pinned (signed as serial 2), a start with
/// MYSQL_HOME at root's my.cnf (mysqld_safe turns its options into
/// arguments) or with root's LD_LIBRARY_PATH dies before it runs; the normal
/// start still works. The unpinned policy comes back as serial 3: the
/// scenario's later checks start the server with options of their own.
fn root_cannot_start_the_server_with_its_own_options_or_environment(
    db: &MariaDb,
    pins: &Value,
    admin: &SigningKeys,
) {
    let signing = |serial| PolicySigning {
        keys: admin,
        serial,
    };
    mariadb::apply_policy(&pinned_policy(&db.datadir, pins), Some(&signing(2))).unwrap();
    db.stop().unwrap();
    db.start().unwrap();
    assert_eq!(rows(db), ROWS, "the pinned start");
    db.stop().unwrap();
    let root_cnf = Path::new("/tmp/root-mysql-home");
    std::fs::create_dir_all(root_cnf).unwrap();
    std::fs::write(root_cnf.join("my.cnf"), "[mysqld]\nskip-grant-tables\n").unwrap();
    let attempts = [
        (
            "MYSQL_HOME",
            root_cnf.to_str().unwrap(),
            "unexpected-arguments",
        ),
        (
            "LD_LIBRARY_PATH",
            "/tmp/root-libs",
            "unexpected-environment",
        ),
    ];
    for (variable, value, access) in attempts {
        let out = Command::new(mariadb::LAUNCHER)
            .arg("start")
            .env(variable, value)
            .output()
            .unwrap();
        assert!(
            MariaDb::server_pids().is_empty(),
            "a server runs, started with {variable}={value}: {out:?}"
        );
        let alerts = journal_entries(message_id::DENIED, "GUARD_ACCESS", access, WAIT);
        assert!(
            alerts.iter().any(|entry| field_text(entry, "GUARD_PATH")
                .is_some_and(|path| path.ends_with(&format!("({SERVER})")))),
            "no {access} alert for {SERVER} started with {variable}={value}: {alerts:#?}"
        );
    }
    db.start().unwrap();
    assert_eq!(rows(db), ROWS, "the pinned start after the attempts");
    mariadb::apply_policy(&mariadb::policy(&db.datadir), Some(&signing(3))).unwrap();
}

fn revocation_is_logged(kms: &LocalKms) {
    let entries = journal_entries(message_id::KEY_REVOKED, "GUARD_VOLUME", VOLUME, WAIT);
    let entry = &entries[0];
    assert_eq!(field_text(entry, "_UID").as_deref(), Some("0"), "who");
    assert!(field_text(entry, "__REALTIME_TIMESTAMP").is_some(), "when");
    assert!(field_text(entry, "MESSAGE")
        .unwrap()
        .contains("revoked by uid 0"));
    let kms_audit = std::fs::read_to_string(&kms.audit_log).unwrap();
    let revoke = kms_audit
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["operation"] == "revoke")
        .unwrap_or_else(|| panic!("no revoke in the KMS audit log:\n{kms_audit}"));
    assert_eq!(revoke["outcome"], "ok");
    assert!(revoke["client"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(revoke["time"].as_u64().is_some_and(|t| t > 0), "when");
}
