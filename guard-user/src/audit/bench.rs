//! `guardctl log bench`: sustained throughput of the audit pipeline, stage by
//! stage, with three `guard-logd` collectors on loopback, zero-loss check and
//! peak memory.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::chain::RECORDS_FILE;
use super::forward::CollectorDestination;
use super::record::{Record, GENESIS};
use super::tls::TestPki;
use super::trail::{AuditTrail, RecordSink, TrailConfig};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Records per stage.
    #[arg(long, default_value_t = 300_000)]
    pub records: u64,
    /// Concurrent producers (like guardd's event readers), each submitting batches.
    #[arg(long, default_value_t = 4)]
    pub producers: u64,
    /// Events per `record_batch` call.
    #[arg(long, default_value_t = 256)]
    pub batch: u64,
    /// Working directory (default: a new directory under the system temp dir, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The guard-logd binary (default: next to this program).
    #[arg(long)]
    pub logd: Option<PathBuf>,
}

/// A factory for the journal sink, so the bench can run the journal stage
/// where a journal writer exists.
pub type SinkFactory = Box<dyn Fn() -> anyhow::Result<Box<dyn RecordSink>>>;

/// Runs the benchmark with the journal stage writing to journald
/// (`JournalSink`); journald must be running.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::journal_sink::JournalSink::connect().context(
        "the benchmark's journal stage needs journald listening on /run/systemd/journal/socket",
    )?;
    let factory: SinkFactory = Box::new(|| {
        Ok(Box::new(super::journal_sink::JournalSink::connect()?) as Box<dyn RecordSink>)
    });
    run_with_journal(args, Some(factory))
}

struct Row {
    stage: String,
    records: u64,
    elapsed: Duration,
}

impl Row {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs every stage and prints the table. `journal` makes the journal stage real.
pub fn run_with_journal(args: BenchArgs, journal: Option<SinkFactory>) -> anyhow::Result<()> {
    if args.records == 0 || args.producers == 0 || args.batch == 0 {
        bail!("--records, --producers and --batch must be above 0");
    }
    let (dir, remove) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("guard-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&args, &dir, journal);
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(args: &BenchArgs, dir: &Path, journal: Option<SinkFactory>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = vec![stage_hash(args.records)];
    rows.push(runtime.block_on(stage_trail(
        args,
        &dir.join("local-only"),
        "bench-local",
        Vec::new(),
        None,
        "local chain: hash + write + fsync",
    ))?);
    if let Some(factory) = &journal {
        rows.push(stage_journald_ceiling(args.records)?);
        rows.push(stage_sink(args.records, factory()?)?);
    }

    let pki = TestPki::create(&dir.join("pki"))?;
    let logd = match &args.logd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|p| p.join("guard-logd"))
            .context("locating guard-logd")?,
    };
    let mut collectors = Vec::new();
    for i in 1..=3 {
        let name = format!("collector{i}");
        collectors.push(Logd::start(&logd, &pki, &dir.join(&name), &name)?);
    }
    let destinations = |host: &str| -> anyhow::Result<Vec<CollectorDestination>> {
        let host_files = pki.issue(host)?;
        Ok(collectors
            .iter()
            .map(|c| CollectorDestination {
                name: c.name.clone(),
                address: c.address.clone(),
                server_name: c.name.clone(),
                tls: host_files.clone(),
                collector_key: None,
            })
            .collect())
    };

    // Each stage is a host of its own to the collectors (each has its own key).
    let mut checked = vec![(dir.join("collectors"), "bench-collectors")];
    rows.push(runtime.block_on(stage_trail(
        args,
        &checked[0].0,
        checked[0].1,
        destinations(checked[0].1)?,
        None,
        "chain + 3 collectors",
    ))?);
    if let Some(factory) = &journal {
        checked.push((dir.join("full"), "bench-full"));
        rows.push(runtime.block_on(stage_trail(
            args,
            &checked[1].0,
            checked[1].1,
            destinations(checked[1].1)?,
            Some(factory()?),
            "full: chain + journal + 3 collectors",
        ))?);
    }
    let peak_rss = peak_rss_kib("self")?;

    println!();
    println!(
        "{:<44} {:>10} {:>9} {:>12} {:>10}",
        "stage", "records", "seconds", "records/s", "µs/record"
    );
    for row in &rows {
        println!(
            "{:<44} {:>10} {:>9.2} {:>12.0} {:>10.2}",
            row.stage,
            row.records,
            row.elapsed.as_secs_f64(),
            row.rate(),
            1e6 / row.rate()
        );
    }
    let find = |prefix: &str| rows.iter().find(|r| r.stage.starts_with(prefix));
    if let (Some(local), Some(with)) = (find("local chain"), find("chain + 3 collectors")) {
        println!(
            "{:<44} {:>10} {:>9} {:>12} {:>10.2}",
            "  added by delivery to 3 collectors",
            "",
            "",
            "",
            1e6 / with.rate() - 1e6 / local.rate()
        );
    }
    if let (Some(ceiling), Some(full)) = (find("journald alone"), find("full:")) {
        println!(
            "{:<44} {:>10} {:>9} {:>12}",
            "  full pipeline / journald's ceiling",
            "",
            "",
            format!("{:.0}%", 100.0 * full.rate() / ceiling.rate())
        );
    }
    if journal.is_none() {
        println!("{:<44} {:>10}", "journal", "not measured (no journal sink)");
    }
    println!();
    let mut lossless = true;
    for (local_dir, host) in &checked {
        let local = file_digest(&local_dir.join(RECORDS_FILE))?;
        for c in &collectors {
            let copy = file_digest(&c.store.join("hosts").join(host).join(RECORDS_FILE))?;
            let same = copy == local;
            lossless &= same;
            println!(
                "{host} at {}: {} bytes, {}",
                c.name,
                copy.0,
                if same {
                    "identical to the local log (zero loss)"
                } else {
                    "DIFFERS from the local log"
                },
            );
        }
    }
    for c in &collectors {
        println!(
            "{} peak RSS {} MiB",
            c.name,
            peak_rss_kib(&c.child.id().to_string()).unwrap_or(0) / 1024
        );
    }
    println!(
        "guardd side (this process) peak RSS: {} MiB",
        peak_rss / 1024
    );
    let full = rows.last().map(Row::rate).unwrap_or(0.0);
    println!(
        "result: {full:.0} records/s through \"{}\" (target 50000), {}, RSS {} MiB (target < 100)",
        rows.last().map(|r| r.stage.as_str()).unwrap_or(""),
        if lossless { "zero loss" } else { "LOSS" },
        peak_rss / 1024
    );
    if !lossless {
        bail!("a collector's copy differs from the local log");
    }
    Ok(())
}

fn sample_event(i: u64) -> Value {
    json!({
        "kind": "denied",
        "path": format!("/var/lib/mysql/shop/orders_{}.ibd", i % 97),
        "dev": 2049,
        "inode": 1_000_000 + i % 5000,
        "pid": 4000 + i % 300,
        "uid": 0,
        "exe": "/usr/bin/cat",
        "access": "read",
        "rule": "default-deny",
    })
}

fn stage_hash(records: u64) -> Row {
    let start = Instant::now();
    let mut prev = GENESIS;
    let mut bytes = 0usize;
    for i in 1..=records {
        let record = Record::new(i, i as i64, "bench-host", sample_event(i), prev);
        bytes += record.to_line().len();
        prev = record.hash;
    }
    std::hint::black_box(bytes);
    Row {
        stage: "encode + SHA-256 chain (CPU only)".into(),
        records,
        elapsed: start.elapsed(),
    }
}

fn stage_sink(records: u64, mut sink: Box<dyn RecordSink>) -> anyhow::Result<Row> {
    let mut prev = GENESIS;
    let mut batch = Vec::with_capacity(256);
    let mut spent = Duration::ZERO;
    for i in 1..=records {
        let record = Record::new(i, i as i64, "bench-host", sample_event(i), prev);
        prev = record.hash;
        batch.push(record);
        if batch.len() == 256 || i == records {
            let start = Instant::now();
            sink.deliver(&batch)?;
            spent += start.elapsed();
            batch.clear();
        }
    }
    Ok(Row {
        stage: "journal (sink alone)".into(),
        records,
        elapsed: spent,
    })
}

/// journald's own ceiling on this machine: entries with nothing but a
/// MESSAGE, sent as fast as it takes them. Every journal stage is bounded by
/// it (journald is one process on one core).
fn stage_journald_ceiling(records: u64) -> anyhow::Result<Row> {
    let journal = crate::journal::Journal::connect().context("connecting to journald")?;
    let start = Instant::now();
    for i in 1..=records {
        let message = format!("guard bench ceiling seq={i}");
        journal
            .send(&[("MESSAGE", &message)])
            .context("writing to journald")?;
    }
    Ok(Row {
        stage: "journald alone, bare MESSAGE (ceiling)".into(),
        records,
        elapsed: start.elapsed(),
    })
}

async fn stage_trail(
    args: &BenchArgs,
    dir: &Path,
    host: &str,
    collectors: Vec<CollectorDestination>,
    sink: Option<Box<dyn RecordSink>>,
    stage: &str,
) -> anyhow::Result<Row> {
    let mut config = TrailConfig::new(dir, host, dir.join("host.key"));
    config.collectors = collectors;
    let trail = AuditTrail::open_with_sink(config, sink)?;
    let start = Instant::now();
    let per_producer = args.records / args.producers;
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let trail = trail.clone();
        let count = if p == args.producers - 1 {
            args.records - per_producer * (args.producers - 1)
        } else {
            per_producer
        };
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < count {
                let n = batch.min(count - done);
                let events = (0..n)
                    .map(|k| sample_event(p * 1_000_000_000 + done + k))
                    .collect();
                trail.record_batch(events).await?;
                done += n;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    if !trail.wait_delivered(Duration::from_secs(600)).await {
        bail!(
            "{stage}: destinations did not catch up: {:?}",
            trail.status()
        );
    }
    // Closing waits for the journal sink to finish its queue.
    trail.close().await;
    let elapsed = start.elapsed();
    Ok(Row {
        stage: stage.into(),
        records: args.records,
        elapsed,
    })
}

/// Peak resident set size (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM not found")
}

fn file_digest(path: &Path) -> anyhow::Result<(u64, [u8; 32])> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((len, hasher.finalize().into()))
}

/// A `guard-logd` child process.
struct Logd {
    name: String,
    address: String,
    store: PathBuf,
    child: Child,
}

impl Logd {
    fn start(binary: &Path, pki: &TestPki, store: &Path, name: &str) -> anyhow::Result<Logd> {
        let files = pki.issue(name)?;
        let mut child = Command::new(binary)
            .args(["--name", name, "--listen", "127.0.0.1:0"])
            .arg("--store")
            .arg(store)
            .arg("--ca")
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("guard-logd stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .with_context(|| format!("guard-logd did not say where it listens: {line:?}"))?
            .to_owned();
        Ok(Logd {
            name: name.to_owned(),
            address,
            store: store.to_path_buf(),
            child,
        })
    }
}

impl Drop for Logd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
