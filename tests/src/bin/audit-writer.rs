//! A guardd-like harness for the audit trail crash tests: opens an
//! `AuditTrail` from a JSON `TrailConfig`, records events numbered
//! START..START+COUNT in batches, prints `acked N` after each durable batch,
//! then waits until every destination has everything and prints `delivered`.
//!
//! usage: audit-writer CONFIG.json START COUNT

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use guard::audit::{AuditTrail, TrailConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: audit-writer CONFIG.json START COUNT"
    );
    let config: TrailConfig = serde_json::from_slice(
        &std::fs::read(&args[1]).with_context(|| format!("reading {}", args[1]))?,
    )
    .context("parsing the trail configuration")?;
    let start: u64 = args[2].parse().context("START")?;
    let count: u64 = args[3].parse().context("COUNT")?;
    let trail = AuditTrail::open(config)?;
    let mut stdout = std::io::stdout();
    let mut n = start;
    while n < start + count {
        let end = (n + 20).min(start + count);
        let events = (n..end)
            .map(|i| json!({"kind": "denied", "n": i, "path": format!("/var/lib/mysql/t{i}"), "pid": 7}))
            .collect();
        trail.record_batch(events).await?;
        writeln!(stdout, "acked {}", end - 1)?;
        stdout.flush()?;
        n = end;
    }
    if trail.wait_delivered(Duration::from_secs(120)).await {
        writeln!(stdout, "delivered")?;
    } else {
        writeln!(stdout, "not delivered: {:?}", trail.status())?;
    }
    trail.close().await;
    Ok(())
}
