//! The attack suite's results: rows, the table, JSON, the exit code.

use std::fmt::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::{AlertRule, Attempt, Technique};

/// What happened when a technique was tried.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It ran; `pids` are every process that acted for the attacker.
    Tried { attempt: Attempt, pids: Vec<u32> },
    /// Not tried (what it needed was not given).
    Skipped(String),
    /// It could not be carried out (setup failed, timed out): not a pass.
    Error(String),
}

/// Whether guard's alert for the row reached the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertSeen {
    /// Denials from the row's processes, by hook.
    Yes(Vec<String>),
    No,
    NotApplicable(String),
    NotTried,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub id: &'static str,
    pub name: &'static str,
    pub expected: &'static str,
    pub alert_rule: AlertRule,
    pub outcome: Outcome,
    pub alert: AlertSeen,
    pub started: SystemTime,
}

impl Row {
    pub fn new(technique: &Technique, outcome: Outcome, started: SystemTime) -> Row {
        Row {
            id: technique.id,
            name: technique.name,
            expected: technique.expected,
            alert_rule: technique.alert,
            outcome,
            alert: AlertSeen::NotTried,
            started,
        }
    }

    pub fn is_blocked(&self) -> bool {
        matches!(&self.outcome, Outcome::Tried { attempt, .. } if attempt.blocked)
    }

    fn alerted(&self) -> bool {
        matches!(self.alert, AlertSeen::Yes(_) | AlertSeen::NotApplicable(_))
    }

    /// Blocked and alerted (or no alert applies).
    pub fn passed(&self) -> bool {
        self.is_blocked() && self.alerted()
    }

    pub fn observed(&self) -> String {
        match &self.outcome {
            Outcome::Tried { attempt, .. } if attempt.blocked => {
                format!("blocked: {}", attempt.observed)
            }
            Outcome::Tried { attempt, .. } => format!("NOT BLOCKED: {}", attempt.observed),
            Outcome::Skipped(why) => format!("skipped ({why})"),
            Outcome::Error(why) => format!("ERROR: {why}"),
        }
    }

    pub fn alert_text(&self) -> String {
        match &self.alert {
            AlertSeen::Yes(hooks) => format!("yes ({})", hooks.join(", ")),
            AlertSeen::No => "NO".to_string(),
            AlertSeen::NotApplicable(why) => format!("n/a ({why})"),
            AlertSeen::NotTried => "-".to_string(),
        }
    }

    fn to_json(&self) -> Value {
        let (blocked, pids) = match &self.outcome {
            Outcome::Tried { attempt, pids } => (Some(attempt.blocked), pids.clone()),
            _ => (None, Vec::new()),
        };
        let state = match &self.outcome {
            Outcome::Tried { .. } => "tried",
            Outcome::Skipped(_) => "skipped",
            Outcome::Error(_) => "error",
        };
        let hooks = match &self.alert {
            AlertSeen::Yes(hooks) => hooks.clone(),
            _ => Vec::new(),
        };
        json!({
            "id": self.id,
            "technique": self.name,
            "expected": self.expected,
            "state": state,
            "blocked": blocked,
            "observed": self.observed(),
            "alert_seen": match &self.alert {
                AlertSeen::Yes(_) => json!(true),
                AlertSeen::No => json!(false),
                _ => Value::Null,
            },
            "alert": self.alert_text(),
            "alert_hooks": hooks,
            "pids": pids,
            "passed": self.passed(),
        })
    }
}

/// Whether the allowed program could read the file before and after.
#[derive(Debug, Clone)]
pub struct AllowedProgram {
    pub before: Result<u64, String>,
    pub after: Result<u64, String>,
}

impl AllowedProgram {
    pub fn from_reads(
        before: Option<Result<u64, String>>,
        after: Option<Result<u64, String>>,
    ) -> Option<AllowedProgram> {
        Some(AllowedProgram {
            before: before?,
            after: after?,
        })
    }

    pub fn works(&self) -> bool {
        matches!((&self.before, &self.after), (Ok(a), Ok(b)) if *a > 0 && a == b)
    }

    fn text(&self) -> String {
        let show = |r: &Result<u64, String>| match r {
            Ok(n) => format!("read {n} bytes"),
            Err(e) => format!("FAILED: {e}"),
        };
        format!(
            "allowed program (accomplice): before the attacks {}, after {}: {}",
            show(&self.before),
            show(&self.after),
            if self.works() { "ok" } else { "BROKEN" }
        )
    }
}

pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub not_blocked: usize,
    pub not_alerted: usize,
    pub skipped: usize,
    pub errors: usize,
    pub allowed_works: Option<bool>,
}

impl Summary {
    pub fn of(rows: &[Row], allowed: Option<&AllowedProgram>) -> Summary {
        let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
        Summary {
            total: rows.len(),
            passed: count(&|r| r.passed()),
            not_blocked: count(
                &|r| matches!(&r.outcome, Outcome::Tried { attempt, .. } if !attempt.blocked),
            ),
            not_alerted: count(&|r| r.is_blocked() && !r.alerted()),
            skipped: count(&|r| matches!(r.outcome, Outcome::Skipped(_))),
            errors: count(&|r| matches!(r.outcome, Outcome::Error(_))),
            allowed_works: allowed.map(AllowedProgram::works),
        }
    }

    fn failed(&self) -> bool {
        self.not_blocked + self.not_alerted + self.errors > 0 || self.allowed_works == Some(false)
    }

    /// 0: every row blocked and alerted; 1: something got through, was not
    /// alerted, failed to run, or the allowed program broke; 2: nothing
    /// failed but some rows were skipped.
    pub fn exit_code(&self) -> ExitCode {
        if self.failed() {
            ExitCode::from(1)
        } else if self.skipped > 0 {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    }

    fn text(&self) -> String {
        format!(
            "{} techniques: {} blocked and alerted, {} NOT BLOCKED, {} blocked without alert, {} skipped, {} errors",
            self.total, self.passed, self.not_blocked, self.not_alerted, self.skipped, self.errors
        )
    }
}

pub fn table(rows: &[Row], allowed: Option<&AllowedProgram>, summary: &Summary) -> String {
    let header = ["technique", "expected", "observed", "alert seen"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.name.to_string(),
                r.expected.to_string(),
                r.observed(),
                r.alert_text(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // The observed column can be long; let it be the last but one and not padded past 70.
    widths[2] = widths[2].min(70);
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:<w0$} | {:<w1$} | {:<w2$} | {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    };
    line(&mut out, header);
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
            + "-+-----------"
    );
    for row in &cells {
        line(&mut out, [&row[0], &row[1], &row[2], &row[3]]);
    }
    out.push('\n');
    if let Some(allowed) = allowed {
        let _ = writeln!(out, "{}", allowed.text());
    }
    let _ = writeln!(out, "{}", summary.text());
    out
}

pub fn json(rows: &[Row], allowed: Option<&AllowedProgram>, summary: &Summary) -> String {
    let value = json!({
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "allowed_program": allowed.map(|a| json!({
            "before": a.before.clone().map_err(|e| e.to_string()).ok(),
            "after": a.after.clone().ok(),
            "works": a.works(),
        })),
        "summary": {
            "total": summary.total,
            "passed": summary.passed,
            "not_blocked": summary.not_blocked,
            "not_alerted": summary.not_alerted,
            "skipped": summary.skipped,
            "errors": summary.errors,
            "all_passed": !summary.failed() && summary.skipped == 0,
        },
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selftest::{Needs, Target};

    fn technique(alert: AlertRule) -> Technique {
        fn run(_: &Target) -> anyhow::Result<Attempt> {
            unreachable!()
        }
        Technique {
            id: "t",
            name: "a technique",
            expected: "EPERM",
            needs: Needs::default(),
            alert,
            run,
        }
    }

    fn tried(blocked: bool, alert: AlertSeen) -> Row {
        let attempt = Attempt {
            blocked,
            observed: "x".into(),
            pids: vec![],
        };
        let mut row = Row::new(
            &technique(AlertRule::Denial),
            Outcome::Tried {
                attempt,
                pids: vec![7],
            },
            SystemTime::now(),
        );
        row.alert = alert;
        row
    }

    #[test]
    fn a_row_passes_only_when_blocked_and_alerted() {
        assert!(tried(true, AlertSeen::Yes(vec!["file_open".into()])).passed());
        assert!(!tried(true, AlertSeen::No).passed());
        assert!(!tried(false, AlertSeen::Yes(vec!["file_open".into()])).passed());
        assert!(tried(true, AlertSeen::NotApplicable("why".into())).passed());
        let skipped = Row::new(
            &technique(AlertRule::Denial),
            Outcome::Skipped("no accomplice".into()),
            SystemTime::now(),
        );
        assert!(!skipped.passed());
        assert_eq!(skipped.observed(), "skipped (no accomplice)");
    }

    #[test]
    fn exit_code_says_failed_skipped_or_all_good() {
        let good = vec![tried(true, AlertSeen::Yes(vec!["file_open".into()]))];
        assert_eq!(Summary::of(&good, None).exit_code(), ExitCode::SUCCESS);
        let leak = vec![tried(false, AlertSeen::No)];
        assert_eq!(Summary::of(&leak, None).exit_code(), ExitCode::from(1));
        let silent = vec![tried(true, AlertSeen::No)];
        assert_eq!(Summary::of(&silent, None).not_alerted, 1);
        let skipped = vec![Row::new(
            &technique(AlertRule::Denial),
            Outcome::Skipped("no accomplice".into()),
            SystemTime::now(),
        )];
        assert_eq!(Summary::of(&skipped, None).exit_code(), ExitCode::from(2));
        let broken = AllowedProgram {
            before: Ok(10),
            after: Err("EPERM".into()),
        };
        assert_eq!(
            Summary::of(&good, Some(&broken)).exit_code(),
            ExitCode::from(1)
        );
    }

    #[test]
    fn the_table_shows_every_column() {
        let rows = vec![
            tried(true, AlertSeen::Yes(vec!["file_open".into()])),
            tried(false, AlertSeen::No),
        ];
        let summary = Summary::of(&rows, None);
        let text = table(&rows, None, &summary);
        assert!(text.starts_with("technique"), "{text}");
        assert!(text.contains("blocked: x"), "{text}");
        assert!(text.contains("NOT BLOCKED: x"), "{text}");
        assert!(text.contains("yes (file_open)"), "{text}");
        assert!(
            text.contains("1 blocked and alerted, 1 NOT BLOCKED"),
            "{text}"
        );
        let parsed: Value = serde_json::from_str(&json(&rows, None, &summary)).unwrap();
        assert_eq!(parsed["rows"][1]["blocked"], false);
        assert_eq!(parsed["summary"]["all_passed"], false);
    }
}
