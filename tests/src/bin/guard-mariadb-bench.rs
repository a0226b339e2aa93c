//! MariaDB benchmark, run as root inside a guest by `cargo xtask bench mariadb`.
//!
//! In one run, on one guest: sysbench oltp_read_write against Debian's MariaDB
//! (started by /etc/init.d/mariadb) with its data directory (1) in a plain
//! directory, (2) on a guard fscrypt volume, (3) on that volume with guard armed
//! and the scenario's full policy applied; ratios are against (1) and (2) of the
//! same run. Then the decision pipeline: a client hammers a denied path and we
//! count how many denials reach the journal and the audit trail, and how fast.
//! Prints one table.

use anyhow::{bail, ensure, Context, Result};
use guard::journal::message_id;
use guard::loader::{self, Pins};
use guard_tests::guest::Guardd;
use guard_tests::machine;
use guard_tests::mariadb::{self, Keys, LocalKms, MariaDb};
use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sysbench settings: small enough for an emulated guest, long enough to settle.
const TABLES: &str = "2";
const TABLE_SIZE: &str = "10000";
const THREADS: &str = "4";
const SECONDS: u64 = 30;
/// How long the client hammers the denied path.
const HAMMER: Duration = Duration::from_secs(5);
const HAMMER_THREADS: usize = 2;
const AUDIT_RECORDS: &str = "/var/lib/guard/audit/records.jsonl";

fn main() -> Result<()> {
    let pins = Pins::new(loader::DEFAULT_PIN_DIR);
    loader::disarm(&pins)?;
    let kms = LocalKms::start(Path::new("/tmp/bench-kms"), false)?;
    let keys = Keys {
        volume_dir: "/tmp/bench-volumes".into(),
        kms_config: kms.config.clone(),
    };

    let plain = Path::new("/scratch/bench-plain");
    let encrypted = Path::new("/scratch/bench-fscrypt");
    for dir in [plain, encrypted] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
    }
    let init = keys.guardctl(&["volume", "init", "bench", encrypted.to_str().unwrap()]);
    ensure!(
        init.status.success(),
        "volume init: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    eprintln!("bench: plain directory");
    let tps_plain = sysbench_case(plain, true, None)?;
    eprintln!("bench: fscrypt volume");
    let tps_fscrypt = sysbench_case(encrypted, true, None)?;
    eprintln!("bench: fscrypt volume + guard with the full policy");
    let guardd = Guardd::start();
    let tps_guarded = sysbench_case(encrypted, false, Some(&mariadb::policy(encrypted)))?;
    drop(guardd);
    loader::disarm(&pins)?;

    eprintln!("bench: decision events into journal and audit trail");
    let events = decision_pipeline(encrypted)?;
    loader::disarm(&pins)?;

    println!();
    println!(
        "MariaDB benchmark: kernel {}, CPU {}, {} vCPUs",
        machine::kernel_release(),
        machine::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "sysbench oltp_read_write: {TABLES} tables x {TABLE_SIZE} rows, {THREADS} threads, {SECONDS} s per case"
    );
    println!(
        "{:<52} {:>12} {:>12} {:>12}",
        "case", "value", "vs plain", "vs fscrypt"
    );
    println!(
        "{:<52} {:>12.1} {:>12} {:>12}",
        "TPS, plain directory", tps_plain, "baseline", ""
    );
    println!(
        "{:<52} {:>12.1} {:>12} {:>12}",
        "TPS, fscrypt volume",
        tps_fscrypt,
        percent(tps_fscrypt, tps_plain),
        "baseline"
    );
    println!(
        "{:<52} {:>12.1} {:>12} {:>12}",
        "TPS, fscrypt volume + guard (full policy)",
        tps_guarded,
        percent(tps_guarded, tps_plain),
        percent(tps_guarded, tps_fscrypt)
    );
    println!(
        "{:<52} {:>12}",
        "denied opens by the client", events.attempts
    );
    println!(
        "{:<52} {:>12}",
        "  of which in the journal / audit trail",
        format!("{} / {}", events.journal, events.trail)
    );
    println!(
        "{:<52} {:>12}",
        "  suppressed by the kernel (counted, not lost)", events.suppressed
    );
    println!(
        "{:<52} {:>12.0}",
        "decision events/s into journal + trail (end to end)", events.per_second
    );
    println!(
        "{:<52} {:>12}",
        "lost",
        events
            .attempts
            .saturating_sub(events.journal.min(events.trail) + events.suppressed)
    );
    Ok(())
}

/// Starts MariaDB on `datadir` (installing and loading sysbench's tables first
/// when `prepare`), applies `policy` if given, runs sysbench, stops MariaDB.
/// Returns transactions per second.
fn sysbench_case(datadir: &Path, prepare: bool, policy: Option<&serde_json::Value>) -> Result<f64> {
    let db = MariaDb::configure(datadir)?;
    if prepare {
        db.install()?;
    }
    if let Some(policy) = policy {
        mariadb::apply_policy(policy, None)?;
    }
    db.start()?;
    let result = (|| {
        if prepare {
            db.sql("CREATE DATABASE sbtest")?;
            sysbench("prepare")?;
        }
        let tps = parse_tps(&sysbench("run")?)?;
        Ok(tps)
    })();
    db.stop()?;
    result
}

fn sysbench(command: &str) -> Result<String> {
    let time = format!("--time={SECONDS}");
    let out = mariadb::run_ok(Command::new("sysbench").args([
        "oltp_read_write",
        "--db-driver=mysql",
        "--mysql-socket=/run/mysqld/mysqld.sock",
        "--mysql-user=root",
        "--mysql-db=sbtest",
        &format!("--tables={TABLES}"),
        &format!("--table-size={TABLE_SIZE}"),
        &format!("--threads={THREADS}"),
        &time,
        command,
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `transactions:   1234  (41.13 per sec.)` -> 41.13
fn parse_tps(report: &str) -> Result<f64> {
    let line = report
        .lines()
        .find(|line| line.trim_start().starts_with("transactions:"))
        .with_context(|| format!("no transactions line in sysbench's report:\n{report}"))?;
    let rate = line
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("odd transactions line {line:?}"))?;
    rate.parse()
        .with_context(|| format!("odd rate in {line:?}"))
}

fn percent(value: f64, baseline: f64) -> String {
    format!("{:+.1}%", (value / baseline - 1.0) * 100.0)
}

struct Pipeline {
    attempts: u64,
    journal: u64,
    trail: u64,
    suppressed: u64,
    per_second: f64,
}

/// guardd with no kernel rate limit worth the name; HAMMER_THREADS threads open a
/// denied file as fast as they can for HAMMER; then we wait until the journal and
/// the trail hold every denial (or stop growing).
fn decision_pipeline(datadir: &Path) -> Result<Pipeline> {
    let guardd = Guardd::start_with(&["--event-rate", "10000000"]);
    mariadb::apply_policy(&mariadb::policy(datadir), None)?;
    let target = datadir.join("ibdata1");
    let path = target.to_str().context("non-UTF-8 path")?.to_owned();
    let journal_before = journal_count(&path)?;
    let trail_before = trail_count(&path);

    let attempts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..HAMMER_THREADS)
        .map(|_| {
            let (attempts, stop) = (attempts.clone(), stop.clone());
            let c = CString::new(path.clone()).expect("no NUL");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: a valid path; a successful open would be closed at once.
                    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
                    assert!(fd < 0, "a denied open succeeded");
                    attempts.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(HAMMER);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a hammer thread panicked"))?;
    }
    let attempts = attempts.load(Ordering::Relaxed);

    // Drain: until both sinks hold every attempt or nothing moves for 10 s.
    let (mut journal, mut trail) = (0, 0);
    let mut last_change = Instant::now();
    let mut done_at = Instant::now();
    loop {
        let (j, t) = (
            journal_count(&path)? - journal_before,
            trail_count(&path) - trail_before,
        );
        if (j, t) != (journal, trail) {
            last_change = Instant::now();
            done_at = last_change;
        }
        (journal, trail) = (j, t);
        if (journal >= attempts && trail >= attempts)
            || last_change.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let suppressed = suppressed_total()?;
    drop(guardd);
    let per_second = journal.min(trail) as f64 / (done_at - start).as_secs_f64();
    Ok(Pipeline {
        attempts,
        journal,
        trail,
        suppressed,
        per_second,
    })
}

/// Denials of `path` in the journal.
fn journal_count(path: &str) -> Result<u64> {
    let out = mariadb::run_ok(Command::new("journalctl").args([
        "--no-pager",
        "-o",
        "cat",
        &format!("MESSAGE_ID={}", message_id::DENIED),
        &format!("GUARD_PATH={path}"),
    ]))?;
    Ok(out.stdout.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// Denials of `path` in guardd's local audit trail.
fn trail_count(path: &str) -> u64 {
    let needle = format!("\"path\":{}", serde_json::Value::from(path));
    std::fs::read_to_string(AUDIT_RECORDS)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&needle) && line.contains("\"kind\":\"denied\""))
        .count() as u64
}

/// Sum of GUARD_SUPPRESSED over the journal's SUPPRESSED entries.
fn suppressed_total() -> Result<u64> {
    let out = mariadb::run_ok(Command::new("journalctl").args([
        "--no-pager",
        "-o",
        "json",
        &format!("MESSAGE_ID={}", message_id::SUPPRESSED),
    ]))?;
    let mut total = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let entry: serde_json::Value = serde_json::from_str(line)?;
        match guard_tests::field_text(&entry, "GUARD_SUPPRESSED").map(|n| n.parse::<u64>()) {
            Some(Ok(n)) => total += n,
            _ => bail!("a SUPPRESSED entry without a count: {line}"),
        }
    }
    Ok(total)
}
