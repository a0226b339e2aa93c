//! MariaDB benchmark, run as root inside a guest by `cargo xtask bench mariadb`,
//! in two parts, each in its own guest boot:
//!
//! - `guard-mariadb-bench sysbench`: sysbench oltp_read_write against Debian's
//!   MariaDB (started by /etc/init.d/mariadb) with its data directory (1) in a
//!   plain directory, (2) on a guard fscrypt volume, (3) on that volume with
//!   guard armed and the scenario's full policy applied. The cases are
//!   interleaved over several rounds (1, 2, 3, 1, 2, 3, ...) so that slow drifts
//!   touch them alike, and the table gives each case's median with its range.
//!   Meant for a guest whose clock counts instructions (QEMU -icount, one vCPU),
//!   where sysbench's --time and its TPS are in guest time and do not depend on
//!   the load on the host.
//! - `guard-mariadb-bench events`: the decision pipeline, on the real clock: a
//!   client hammers a denied path and we count how many denials reach the
//!   journal and the audit trail, and how fast.

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
/// Two threads on the one vCPU: while one waits for I/O the other computes,
/// so less of a run is idle time (which the instruction clock takes from the host).
const THREADS: &str = "2";
/// Guest seconds per sysbench run, and rounds of (plain, fscrypt, guarded);
/// GUARD_MARIADB_SECONDS and GUARD_MARIADB_ROUNDS override them.
const SECONDS: u64 = 10;
const ROUNDS: usize = 3;
/// A fixed seed: every run issues the same sequence of queries.
const SEED: &str = "1";
/// Server settings for the benchmark on top of the scenario's drop-in. The
/// benchmark measures CPU cost: a commit writes the redo log to the page cache
/// and the log is flushed once a second, instead of waiting for an fsync per
/// commit, whose duration under the instruction clock is host time.
const BENCH_DROP_IN: &str = "/etc/mysql/mariadb.conf.d/91-guard-bench.cnf";
const BENCH_SETTINGS: &str = "innodb_flush_log_at_trx_commit = 2";
/// How long the client hammers the denied path.
const HAMMER: Duration = Duration::from_secs(5);
const HAMMER_THREADS: usize = 2;
const AUDIT_RECORDS: &str = "/var/lib/guard/audit/records.jsonl";

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("sysbench") => sysbench_part(),
        Some("events") => events_part(),
        other => bail!("usage: guard-mariadb-bench sysbench|events (got {other:?})"),
    }
}

/// The three data directories' cases, in the order each round runs them.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    Plain,
    Fscrypt,
    Guarded,
}

const CASES: [Case; 3] = [Case::Plain, Case::Fscrypt, Case::Guarded];

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Plain => "TPS, plain directory",
            Case::Fscrypt => "TPS, fscrypt volume",
            Case::Guarded => "TPS, fscrypt volume + guard (full policy)",
        }
    }
}

/// One sysbench run: transactions per (guest) second, and the share of the
/// run the CPU was idle.
#[derive(Clone, Copy)]
struct Run {
    tps: f64,
    idle: f64,
}

/// No guard armed, a KMS on loopback, and where volume records go.
fn disarmed_with_kms() -> Result<(Pins, LocalKms, Keys)> {
    let pins = Pins::new(loader::DEFAULT_PIN_DIR);
    loader::disarm(&pins)?;
    let kms = LocalKms::start(Path::new("/tmp/bench-kms"), false)?;
    let keys = Keys {
        volume_dir: "/tmp/bench-volumes".into(),
        kms_config: kms.config.clone(),
    };
    Ok((pins, kms, keys))
}

fn sysbench_part() -> Result<()> {
    let seconds: u64 = env_number("GUARD_MARIADB_SECONDS", SECONDS)?;
    let rounds: usize = env_number("GUARD_MARIADB_ROUNDS", ROUNDS)?;
    // The KMS serves until the end of the part.
    let (pins, _kms, keys) = disarmed_with_kms()?;
    let plain = Path::new("/scratch/bench-plain");
    let encrypted = Path::new("/scratch/bench-fscrypt");
    for dir in [plain, encrypted] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
    }
    init_volume(&keys, encrypted)?;
    std::fs::write(BENCH_DROP_IN, format!("[mysqld]\n{BENCH_SETTINGS}\n"))
        .with_context(|| format!("writing {BENCH_DROP_IN}"))?;

    for dir in [plain, encrypted] {
        eprintln!("bench: loading sysbench's tables into {}", dir.display());
        prepare(dir)?;
    }
    let policy = mariadb::policy(encrypted);
    let mut runs: Vec<(Case, Run)> = Vec::new();
    for round in 1..=rounds {
        for case in CASES {
            eprintln!("bench: round {round}/{rounds}: {}", case.label());
            let run = match case {
                Case::Plain => sysbench_case(plain, seconds, None)?,
                Case::Fscrypt => sysbench_case(encrypted, seconds, None)?,
                Case::Guarded => {
                    let guardd = Guardd::start();
                    let run = sysbench_case(encrypted, seconds, Some(&policy));
                    drop(guardd);
                    loader::disarm(&pins)?;
                    run?
                }
            };
            eprintln!("bench:   {:.1} TPS, {:.1}% idle", run.tps, run.idle * 100.0);
            runs.push((case, run));
        }
    }
    print_sysbench_table(&runs, rounds, seconds);
    Ok(())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .ok()
            .with_context(|| format!("{name}={text:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn init_volume(keys: &Keys, dir: &Path) -> Result<()> {
    let init = keys.guardctl(&["volume", "init", "bench", dir.to_str().unwrap()]);
    ensure!(
        init.status.success(),
        "volume init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    Ok(())
}

/// Installs MariaDB's system tables in `datadir` and loads sysbench's tables.
fn prepare(datadir: &Path) -> Result<()> {
    let db = MariaDb::configure(datadir)?;
    db.install()?;
    db.start()?;
    let result = db
        .sql("CREATE DATABASE sbtest")
        .and_then(|_| sysbench("prepare", 0));
    db.stop()?;
    result.map(drop)
}

/// Starts MariaDB on `datadir` (with `policy` applied first if given), runs
/// sysbench for `seconds`, stops MariaDB.
fn sysbench_case(datadir: &Path, seconds: u64, policy: Option<&serde_json::Value>) -> Result<Run> {
    let db = MariaDb::configure(datadir)?;
    if let Some(policy) = policy {
        mariadb::apply_policy(policy, None)?;
    }
    db.start()?;
    let result = (|| {
        let before = CpuTimes::now()?;
        let report = sysbench("run", seconds)?;
        let idle = CpuTimes::now()?.idle_share_since(&before);
        Ok(Run {
            tps: parse_tps(&report)?,
            idle,
        })
    })();
    db.stop()?;
    result
}

fn sysbench(command: &str, seconds: u64) -> Result<String> {
    let out = mariadb::run_ok(Command::new("sysbench").args([
        "oltp_read_write",
        "--db-driver=mysql",
        "--mysql-socket=/run/mysqld/mysqld.sock",
        "--mysql-user=root",
        "--mysql-db=sbtest",
        &format!("--tables={TABLES}"),
        &format!("--table-size={TABLE_SIZE}"),
        &format!("--threads={THREADS}"),
        &format!("--time={seconds}"),
        &format!("--rand-seed={SEED}"),
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

/// The `cpu` line of /proc/stat: total and idle (idle + iowait) ticks.
struct CpuTimes {
    total: u64,
    idle: u64,
}

impl CpuTimes {
    fn now() -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|line| line.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|n| {
                n.parse()
                    .with_context(|| format!("odd /proc/stat line {line:?}"))
            })
            .collect::<Result<_>>()?;
        ensure!(ticks.len() >= 5, "odd /proc/stat line {line:?}");
        Ok(CpuTimes {
            // guest and guest_nice (fields 9, 10) are already counted in user.
            total: ticks.iter().take(8).sum(),
            idle: ticks[3] + ticks[4],
        })
    }

    fn idle_share_since(&self, before: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        self.idle.saturating_sub(before.idle) as f64 / total as f64
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// `min..max` of `values`, each shown with `show`.
fn range(values: &[f64], show: impl Fn(f64) -> String) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}..{}", show(min), show(max))
}

fn percent(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

fn print_sysbench_table(runs: &[(Case, Run)], rounds: usize, seconds: u64) {
    let of = |case: Case| -> Vec<Run> {
        runs.iter()
            .filter(|(c, _)| *c == case)
            .map(|(_, run)| *run)
            .collect()
    };
    let tps = |case: Case| -> Vec<f64> { of(case).iter().map(|run| run.tps).collect() };
    let (plain, fscrypt, guarded) = (tps(Case::Plain), tps(Case::Fscrypt), tps(Case::Guarded));
    // Ratios within a round: its cases ran next to each other.
    let per_round =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
    let guarded_vs_fscrypt = per_round(&guarded, &fscrypt);
    let fscrypt_vs_plain = per_round(&fscrypt, &plain);

    println!();
    println!(
        "MariaDB benchmark, sysbench part: kernel {}, CPU {}, {} vCPU",
        machine::kernel_release(),
        machine::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("clock: {}", clock_note());
    println!(
        "sysbench oltp_read_write: {TABLES} tables x {TABLE_SIZE} rows, {THREADS} threads, \
         --rand-seed={SEED}, {seconds} s per run; {rounds} rounds of (plain, fscrypt, guarded), \
         MariaDB restarted for each run"
    );
    println!(
        "MariaDB: {BENCH_SETTINGS} (no fsync per commit; log flushed once a second); \
         scratch disk: QEMU cache=unsafe (guest flushes do not reach the host disk)"
    );
    println!(
        "{:<44} {:>9} {:>17} {:>9} {:>10} {:>8}",
        "case", "median", "min..max", "vs plain", "vs fscrypt", "idle"
    );
    for case in CASES {
        let values = tps(case);
        let value = median(&values);
        let idle: Vec<f64> = of(case).iter().map(|run| run.idle).collect();
        let (vs_plain, vs_fscrypt) = match case {
            Case::Plain => ("baseline".to_owned(), String::new()),
            Case::Fscrypt => (percent(value / median(&plain)), "baseline".to_owned()),
            Case::Guarded => (
                percent(value / median(&plain)),
                percent(value / median(&fscrypt)),
            ),
        };
        println!(
            "{:<44} {:>9.1} {:>17} {:>9} {:>10} {:>7.1}%",
            case.label(),
            value,
            range(&values, |v| format!("{v:.1}")),
            vs_plain,
            vs_fscrypt,
            median(&idle) * 100.0
        );
    }
    for (label, ratios) in [
        ("guarded / fscrypt, same round", &guarded_vs_fscrypt),
        ("fscrypt / plain, same round", &fscrypt_vs_plain),
    ] {
        println!(
            "{:<44} {:>9} {:>17}",
            label,
            percent(median(ratios)),
            range(ratios, percent)
        );
    }
    println!(
        "per run, TPS plain / fscrypt / guarded: {}",
        (0..plain.len())
            .map(|i| format!("{:.1}/{:.1}/{:.1}", plain[i], fscrypt[i], guarded[i]))
            .collect::<Vec<_>>()
            .join("  ")
    );
}

/// Whether guest time is real time or counts instructions (`cargo xtask
/// bench` sets GUARD_BENCH_CLOCK=instructions when it boots with -icount).
fn clock_note() -> &'static str {
    match std::env::var("GUARD_BENCH_CLOCK").as_deref() {
        Ok("instructions") => {
            "QEMU -icount shift=0,sleep=on: 1 ns = 1 guest instruction; idle time passes as host time"
        }
        _ => "real time (TPS depends on the load on the host)",
    }
}

/// guardd armed with the scenario's policy on a fresh fscrypt volume; a client
/// hammers a file in it; the denials counted in the journal and the trail.
fn events_part() -> Result<()> {
    // The KMS serves until the end of the part.
    let (pins, _kms, keys) = disarmed_with_kms()?;
    let encrypted = Path::new("/scratch/bench-fscrypt");
    let _ = std::fs::remove_dir_all(encrypted);
    std::fs::create_dir_all(encrypted)?;
    init_volume(&keys, encrypted)?;
    // A file like the server's, written before the policy makes it untouchable.
    let target = encrypted.join("ibdata1");
    std::fs::write(&target, vec![0u8; 1 << 20])
        .with_context(|| format!("writing {}", target.display()))?;

    eprintln!("bench: decision events into journal and audit trail");
    let events = decision_pipeline(encrypted, &target)?;
    loader::disarm(&pins)?;

    println!();
    println!(
        "MariaDB benchmark, decision events: kernel {}, CPU {}, {} vCPUs, real time",
        machine::kernel_release(),
        machine::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<52} {:>12}",
        format!(
            "denied opens by the client ({HAMMER_THREADS} threads, {} s)",
            HAMMER.as_secs()
        ),
        events.attempts
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
fn decision_pipeline(datadir: &Path, target: &Path) -> Result<Pipeline> {
    let guardd = Guardd::start_with(&["--event-rate", "10000000"]);
    mariadb::apply_policy(&mariadb::policy(datadir), None)?;
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
