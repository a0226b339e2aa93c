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
//!   client opens a denied file at rising fixed rates, and we find the highest
//!   rate at which every denial reaches the journal and the audit trail
//!   without a growing backlog; then a flood shows what happens beyond it.

use anyhow::{bail, ensure, Context, Result};
use guard::events::Decision;
use guard::journal::{message_id, Journal};
use guard::loader::{self, Pins};
use guard_tests::guest::Guardd;
use guard_tests::machine;
use guard_tests::mariadb::{self, Keys, LocalKms, MariaDb};
use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
/// Offered rates of the paced client (denials per second), in order, each a
/// quarter above the last; the ladder stops at the first step the pipeline
/// does not keep up with.
const LADDER: [u64; 17] = [
    250, 500, 1000, 1250, 1600, 2000, 2500, 3200, 4000, 5000, 6400, 8000, 10000, 12500, 16000,
    20000, 25000,
];
/// How long the paced client runs at each rate.
const STEP: Duration = Duration::from_secs(10);
/// A step is kept up with when both sinks hold every denial this soon after
/// the client's last one (more means the backlog grew during the step).
const KEEP_UP: Duration = Duration::from_secs(1);
/// Entries sent to journald alone to measure its ceiling.
const CEILING_ENTRIES: u64 = 20_000;
/// When the sinks stop growing for this long, the rest is lost.
const STALL: Duration = Duration::from_secs(10);
/// How long, and from how many threads, the flood hammers its denied path.
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
    // Files like the server's, written before the policy makes them
    // untouchable: one per paced step (so each step's denials are counted
    // apart) and one for the flood.
    let target = |name: &str| encrypted.join(name);
    for rate in LADDER {
        write_target(&target(&format!("step-{rate}.ibd")))?;
    }
    write_target(&target("ibdata1"))?;

    eprintln!("bench: decision events into journal and audit trail");
    let guardd = Guardd::start_with(&["--event-rate", "10000000"]);
    mariadb::create_absent_configuration()?;
    mariadb::apply_policy(&mariadb::policy(encrypted), None)?;
    let mut steps = Vec::new();
    for rate in LADDER {
        let step = paced_step(&target(&format!("step-{rate}.ibd")), rate)?;
        eprintln!("bench: {rate}/s offered: {step:?}");
        let kept_up = step.kept_up();
        steps.push((rate, step));
        if !kept_up {
            break; // the pipeline's limit is found
        }
    }
    let flood = flood(&target("ibdata1"))?;
    drop(guardd);
    loader::disarm(&pins)?;
    let ceiling = journald_ceiling("/scratch/journald-ceiling")?;
    print_events_table(&steps, &flood, ceiling)?;
    Ok(())
}

fn write_target(path: &Path) -> Result<()> {
    std::fs::write(path, vec![0u8; 1 << 20]).with_context(|| format!("writing {}", path.display()))
}

fn print_events_table(steps: &[(u64, Delivery)], flood: &Delivery, ceiling: f64) -> Result<()> {
    println!();
    println!(
        "MariaDB benchmark, decision events: kernel {}, CPU {}, {} vCPUs, real time",
        machine::kernel_release(),
        machine::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "A client opens a denied file at a fixed rate for {} s per step; a step is \
         kept up with when every denial is in the journal and the audit trail \
         within {} s of the client's last one and none was dropped.",
        STEP.as_secs(),
        KEEP_UP.as_secs()
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}",
        "client", "denials", "journal", "trail", "dropped", "lag s", "kept up"
    );
    for (rate, step) in steps {
        print_delivery_row(&format!("paced, {rate}/s offered"), step);
    }
    print_delivery_row(
        &format!("flood, {HAMMER_THREADS} threads, {} s", HAMMER.as_secs()),
        flood,
    );
    let sustained = steps
        .iter()
        .filter(|(_, s)| s.kept_up())
        .map(|(_, s)| s.offered_per_second())
        .fold(0.0, f64::max);
    println!("decision events/s sustained into journal + trail without loss: {sustained:.0}");
    println!(
        "journald alone, the same entries from one thread (the ceiling): {ceiling:.0}/s; \
         sustained / ceiling: {:.0}%",
        100.0 * sustained / ceiling
    );
    println!(
        "flood: {:.0} events/s recorded one by one; dropped events are counted (SUPPRESSED \
         entry, guardctl status), not lost",
        flood.recorded_per_second()
    );
    Ok(())
}

fn print_delivery_row(label: &str, d: &Delivery) {
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>8} {:>8.1} {:>9}",
        label,
        d.attempts,
        d.journal,
        d.trail,
        d.dropped,
        d.lag.as_secs_f64(),
        if d.kept_up() { "yes" } else { "no" }
    );
}

/// What became of one client's denials.
#[derive(Debug)]
struct Delivery {
    attempts: u64,
    /// How long the client ran.
    ran: Duration,
    journal: u64,
    trail: u64,
    /// Events the kernel dropped (ring buffer full) during the client's run.
    dropped: u64,
    /// From the client's last attempt until both sinks held every denial (or
    /// stopped growing).
    lag: Duration,
}

impl Delivery {
    fn kept_up(&self) -> bool {
        self.dropped == 0
            && self.journal == self.attempts
            && self.trail == self.attempts
            && self.lag <= KEEP_UP
    }

    fn offered_per_second(&self) -> f64 {
        self.attempts as f64 / self.ran.as_secs_f64()
    }

    fn recorded_per_second(&self) -> f64 {
        self.journal.min(self.trail) as f64 / (self.ran + self.lag).as_secs_f64()
    }
}

/// One client thread opening `target` `rate` times a second for STEP, each
/// open at its due time.
fn paced_step(target: &Path, rate: u64) -> Result<Delivery> {
    measure(target, |c| {
        let start = Instant::now();
        let mut attempts = 0u64;
        while start.elapsed() < STEP {
            let due = start + Duration::from_nanos(attempts * 1_000_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            denied_open(c);
            attempts += 1;
        }
        Ok(attempts)
    })
}

/// HAMMER_THREADS threads opening `target` as fast as they can for HAMMER.
fn flood(target: &Path) -> Result<Delivery> {
    measure(target, |c| {
        let attempts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..HAMMER_THREADS)
            .map(|_| {
                let (attempts, stop, c) = (attempts.clone(), stop.clone(), c.to_owned());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        denied_open(&c);
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
                .map_err(|_| anyhow::anyhow!("a flood thread panicked"))?;
        }
        Ok(attempts.load(Ordering::Relaxed))
    })
}

fn denied_open(path: &std::ffi::CStr) {
    // SAFETY: a valid path; a successful open would be closed at once.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd < 0, "a denied open succeeded");
}

/// Runs `client` against `target` and waits until the trail and then the
/// journal hold each of its denials, or stop growing for STALL.
fn measure(target: &Path, client: impl FnOnce(&std::ffi::CStr) -> Result<u64>) -> Result<Delivery> {
    let path = target.to_str().context("non-UTF-8 path")?;
    let c = CString::new(path)?;
    let dropped_before = events_dropped()?;
    let mut trail = TrailCounter::new(path)?;
    let start = Instant::now();
    let attempts = client(&c)?;
    let ran = start.elapsed();
    let ended = SystemTime::now();
    let dropped = events_dropped()? - dropped_before;

    // The trail: polled (a cheap read of what was appended), so its lag is
    // known to a poll interval.
    let mut recorded = 0;
    let mut grew_at = Instant::now();
    while recorded < attempts && grew_at.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(100));
        let now = trail.count()?;
        if now != recorded {
            (recorded, grew_at) = (now, Instant::now());
        }
    }
    let trail_lag = grew_at.saturating_duration_since(start + ran);
    // The journal: guardd sends an entry before it hands the record to the
    // trail; journald stamps when it stores it, so its lag is exact however
    // long journalctl takes to count.
    let journal = wait_for_journal(path, attempts)?;
    let journal_lag = match journal_last_stored(path)? {
        Some(at) => at.duration_since(ended).unwrap_or_default(),
        None => Duration::ZERO,
    };
    Ok(Delivery {
        attempts,
        ran,
        journal,
        trail: recorded,
        dropped,
        lag: trail_lag.max(journal_lag),
    })
}

/// Waits until the journal holds `expected` denials of `path` or stops
/// growing for STALL; returns how many it holds.
fn wait_for_journal(path: &str, expected: u64) -> Result<u64> {
    let mut count = journal_count(path)?;
    let mut grew_at = Instant::now();
    while count < expected && grew_at.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(200));
        let now = journal_count(path)?;
        if now != count {
            (count, grew_at) = (now, Instant::now());
        }
    }
    Ok(count)
}

/// Denials of `path` in the journal.
fn journal_count(path: &str) -> Result<u64> {
    let out = mariadb::run_ok(journal_query(path).args(["-o", "cat"]))?;
    Ok(out.stdout.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// When journald stored the last denial of `path`.
fn journal_last_stored(path: &str) -> Result<Option<SystemTime>> {
    let out = mariadb::run_ok(journal_query(path).args(["-o", "json", "-n", "1"]))?;
    let Some(line) = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let entry: serde_json::Value = serde_json::from_str(&line)?;
    let micros: u64 = entry["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("a journal entry without __REALTIME_TIMESTAMP: {line}"))?;
    Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_micros(micros)))
}

fn journal_query(path: &str) -> Command {
    let mut command = Command::new("journalctl");
    command.args([
        "--no-pager",
        &format!("MESSAGE_ID={}", message_id::DENIED),
        &format!("GUARD_PATH={path}"),
    ]);
    command
}

/// journald alone: denial entries as guardd writes them, sent from one
/// thread as fast as journald takes them, until it has stored them all.
/// The pipeline cannot record faster than this.
fn journald_ceiling(path: &str) -> Result<f64> {
    let journal = Journal::connect().context("connecting to journald")?;
    let decision = Decision {
        verdict: "denied",
        path: path.to_owned(),
        point: "/scratch/bench-fscrypt".into(),
        inode: 12,
        device: "259:1".into(),
        pid: 4242,
        tid: 4242,
        uid: 0,
        gid: 0,
        comm: "cat".into(),
        exe: "/usr/bin/cat".into(),
        access: "read".into(),
        rule: "default-deny".into(),
        hook: "file_open",
        fail_closed: false,
    };
    let start = SystemTime::now();
    for _ in 0..CEILING_ENTRIES {
        decision.send_to(&journal).context("sending to journald")?;
    }
    let stored = wait_for_journal(path, CEILING_ENTRIES)?;
    ensure!(
        stored == CEILING_ENTRIES,
        "journald stored {stored} of {CEILING_ENTRIES} entries"
    );
    let last = journal_last_stored(path)?.context("no entry stored")?;
    let took = last.duration_since(start).unwrap_or_default();
    Ok(CEILING_ENTRIES as f64 / took.as_secs_f64().max(1e-3))
}

/// Counts denials of one path in guardd's local audit trail, reading only
/// what was appended since the last count.
struct TrailCounter {
    needle: String,
    offset: u64,
    partial: Vec<u8>,
    count: u64,
}

impl TrailCounter {
    fn new(path: &str) -> Result<TrailCounter> {
        let offset = std::fs::metadata(AUDIT_RECORDS)
            .with_context(|| format!("reading {AUDIT_RECORDS}"))?
            .len();
        Ok(TrailCounter {
            needle: format!("\"path\":{}", serde_json::Value::from(path)),
            offset,
            partial: Vec::new(),
            count: 0,
        })
    }

    fn count(&mut self) -> Result<u64> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(AUDIT_RECORDS)
            .with_context(|| format!("opening {AUDIT_RECORDS}"))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut added = Vec::new();
        file.read_to_end(&mut added)?;
        self.offset += added.len() as u64;
        self.partial.extend_from_slice(&added);
        let complete = self
            .partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        for line in self.partial[..complete].split(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(line);
            if line.contains(&self.needle) && line.contains("\"kind\":\"denied\"") {
                self.count += 1;
            }
        }
        self.partial.drain(..complete);
        Ok(self.count)
    }
}

/// Decision events the kernel dropped so far (ring buffer full), from guardd.
fn events_dropped() -> Result<u64> {
    let out = guard_tests::guest::guardctl(&["status", "--json"]);
    ensure!(
        out.status.success(),
        "guardctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    status["counters"]["events_dropped"]
        .as_u64()
        .context("guardctl status --json has no counters.events_dropped")
}
