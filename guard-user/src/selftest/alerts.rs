//! Finding each row's alert: guard's DENIED entries in the journal written
//! since the selftest started, from one of the row's processes.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::report::{AlertSeen, Row};
use super::{micros, AlertRule, Outcome};
use crate::alerts::{Alert, AlertKind};
use crate::journal::{field, message_id};

/// Fills in each row's alert, waiting up to `wait` for guardd to journal
/// the last ones.
pub fn attach(rows: &mut [Row], since: SystemTime, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let denials = denials_since(since)?;
        let mut missing = 0;
        for row in rows.iter_mut() {
            row.alert = seen(row, &denials);
            if matches!(row.alert, AlertSeen::No) && row.is_blocked() {
                missing += 1;
            }
        }
        if missing == 0 || Instant::now() > deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn seen(row: &Row, denials: &[Alert]) -> AlertSeen {
    let pids = match &row.outcome {
        Outcome::Tried { pids, .. } => pids,
        Outcome::Skipped(_) | Outcome::Error(_) => return AlertSeen::NotTried,
    };
    if let AlertRule::NotApplicable(why) = row.alert_rule {
        return AlertSeen::NotApplicable(why.to_string());
    }
    let mut hooks: Vec<String> = denials
        .iter()
        .filter(|a| {
            a.pid
                .as_deref()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| pids.contains(&p))
        })
        .map(|a| a.hook.clone().unwrap_or_else(|| "?".to_string()))
        .collect();
    hooks.sort();
    hooks.dedup();
    if hooks.is_empty() {
        AlertSeen::No
    } else {
        AlertSeen::Yes(hooks)
    }
}

/// guard's denials journaled since `since` (by root: genuine ones only).
fn denials_since(since: SystemTime) -> Result<Vec<Alert>> {
    let since_us = micros(since);
    let output = Command::new("journalctl")
        .args(["--output=json", "--all", "--no-pager"])
        .arg(format!("--since=@{}", since_us / 1_000_000))
        .arg(format!("{}={}", field::MESSAGE_ID, message_id::DENIED))
        .arg("_UID=0")
        .output()
        .context("running journalctl")?;
    if !output.status.success() {
        bail!(
            "journalctl failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut alerts = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(alert) = Alert::from_journal_entry(&entry) {
            if alert.kind == AlertKind::Denied {
                alerts.push(alert);
            }
        }
    }
    Ok(alerts)
}
