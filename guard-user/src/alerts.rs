//! `guardctl alerts`: follow guard's decision entries in the journal.
//!
//! Runs `journalctl --follow --output=json` with one `MESSAGE_ID=` match per
//! selected kind (journalctl ORs matches of one field) and `_UID=0`, a field
//! journald sets itself, so an unprivileged process cannot forge alerts.
//! Each entry is printed as a line of text or JSON and optionally handed to a
//! hook command (paging, webhooks).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use crate::journal::{field, message_id, verdict};

/// Which decisions to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// An access was denied.
    Denied,
    /// Audit mode: an access would have been denied.
    WouldDeny,
    /// An `audit` rule allowed an access.
    Audited,
    /// The kernel's rate limit dropped decision events.
    Suppressed,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [
        AlertKind::Denied,
        AlertKind::WouldDeny,
        AlertKind::Audited,
        AlertKind::Suppressed,
    ];

    pub fn message_id(self) -> &'static str {
        match self {
            AlertKind::Denied => message_id::DENIED,
            AlertKind::WouldDeny => message_id::WOULD_DENY,
            AlertKind::Audited => message_id::AUDITED,
            AlertKind::Suppressed => message_id::SUPPRESSED,
        }
    }

    pub fn from_message_id(id: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.message_id() == id)
    }

    /// The verdict name, as in [`field::VERDICT`].
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Denied => verdict::DENIED,
            AlertKind::WouldDeny => verdict::WOULD_DENY,
            AlertKind::Audited => verdict::AUDITED,
            AlertKind::Suppressed => verdict::SUPPRESSED,
        }
    }
}

/// How alerts are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AlertFormat {
    /// One line per alert: time, verdict, exe (pid, uid), access, path, rule.
    #[default]
    Text,
    /// One JSON object per line (the same object a hook reads on stdin).
    Json,
}

/// What [`follow`] does (also the arguments of `guardctl alerts`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AlertOptions {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: AlertFormat,
    /// Start from this time (any `journalctl --since` value, such as
    /// `-1h`, `today` or `@1764400000`); without it, follow from now on.
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Shell command run (`sh -c`) for each alert, with the alert's JSON on
    /// stdin and its main fields in `GUARD_*` environment variables.
    #[arg(long)]
    pub exec: Option<String>,
    /// Exit after this many alerts.
    #[arg(long)]
    pub count: Option<u64>,
    /// Kinds to follow (repeatable); default all.
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<AlertKind>,
    /// More journal matches (`FIELD=value`), all of which must hold.
    #[arg(long = "match")]
    pub matches: Vec<String>,
}

/// One decision entry from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// When journald received it, RFC 3339 in UTC.
    pub time: String,
    pub kind: AlertKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// SUPPRESSED alerts: how many events were not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Follows alerts and prints them on stdout until `count` is reached (or forever).
pub fn follow(options: AlertOptions) -> anyhow::Result<()> {
    follow_to(&options, &mut io::stdout().lock())
}

/// Like [`follow`], printing to `out`.
pub fn follow_to(options: &AlertOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    if options.count == Some(0) {
        return Ok(());
    }
    let mut journalctl = Journalctl::spawn(&journalctl_args(options))?;
    let mut seen = 0u64;
    for line in journalctl.lines() {
        let line = line.context("reading journalctl's output")?;
        let entry: Value = match serde_json::from_str(&line) {
            Ok(entry) => entry,
            Err(e) => {
                eprintln!(
                    "guardctl alerts: skipping a line journalctl printed that is not JSON: {e}"
                );
                continue;
            }
        };
        let Some(alert) = Alert::from_journal_entry(&entry) else {
            continue;
        };
        print_alert(&alert, options.format, out)?;
        if let Some(command) = &options.exec {
            run_hook(command, &alert)?;
        }
        seen += 1;
        if options.count == Some(seen) {
            return Ok(());
        }
    }
    journalctl.finish()
}

/// Arguments of the `journalctl` that feeds [`follow_to`].
pub fn journalctl_args(options: &AlertOptions) -> Vec<String> {
    let mut args: Vec<String> = ["--follow", "--output=json", "--all", "--no-pager"]
        .map(String::from)
        .to_vec();
    match &options.since {
        Some(since) => args.push(format!("--since={since}")),
        None => args.push("--lines=0".to_string()),
    }
    let kinds: &[AlertKind] = if options.kinds.is_empty() {
        &AlertKind::ALL
    } else {
        &options.kinds
    };
    for kind in kinds {
        args.push(format!("{}={}", field::MESSAGE_ID, kind.message_id()));
    }
    // Only root (guardd) can have written a genuine decision entry.
    args.push("_UID=0".to_string());
    args.extend(options.matches.iter().cloned());
    args
}

/// The running `journalctl`; killed when dropped.
struct Journalctl {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Journalctl {
    fn spawn(args: &[String]) -> anyhow::Result<Journalctl> {
        let mut command = Command::new("journalctl");
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; it makes journalctl die with
        // the thread that follows it instead of lingering if we are killed.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting journalctl")?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Journalctl { child, stdout })
    }

    fn lines(&mut self) -> io::Lines<&mut BufReader<ChildStdout>> {
        self.stdout.as_mut().expect("stdout is piped").lines()
    }

    /// journalctl --follow only ends on error.
    fn finish(mut self) -> anyhow::Result<()> {
        let status = self.child.wait().context("waiting for journalctl")?;
        if !status.success() {
            bail!("journalctl failed ({status})");
        }
        Ok(())
    }
}

impl Drop for Journalctl {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Alert {
    /// Reads a `journalctl -o json` entry; `None` if it is not a decision entry.
    pub fn from_journal_entry(entry: &Value) -> Option<Alert> {
        let text = |name: &str| journal_field(entry, name);
        let kind = AlertKind::from_message_id(&text(field::MESSAGE_ID)?)?;
        let time = text("__REALTIME_TIMESTAMP")
            .and_then(|us| us.parse::<u64>().ok())
            .map(|us| {
                let when = UNIX_EPOCH + Duration::from_micros(us);
                humantime::format_rfc3339_micros(when).to_string()
            })
            .unwrap_or_else(|| "unknown-time".to_string());
        Some(Alert {
            time,
            kind,
            verdict: text(field::VERDICT),
            path: text(field::PATH),
            exe: text(field::EXE),
            comm: text(field::COMM),
            pid: text(field::PID),
            uid: text(field::UID),
            gid: text(field::GID),
            access: text(field::ACCESS),
            rule: text(field::RULE),
            hook: text(field::HOOK),
            inode: text(field::INODE),
            device: text(field::DEVICE),
            suppressed: text(field::SUPPRESSED),
            message: text(field::MESSAGE),
            hostname: text("_HOSTNAME"),
        })
    }

    /// One line: time, verdict, exe (pid, uid), access, path, rule.
    /// Control characters are escaped so a file name cannot forge a line.
    pub fn text_line(&self) -> String {
        let show = |value: &Option<String>| escape_controls(value.as_deref().unwrap_or("?"));
        let verdict = self.kind.name().to_uppercase();
        if self.kind == AlertKind::Suppressed {
            return format!(
                "{} {verdict} {} decision events not logged (kernel rate limit)",
                self.time,
                show(&self.suppressed)
            );
        }
        format!(
            "{} {verdict} {} (pid {}, uid {}) {} {} rule={}",
            self.time,
            show(&self.exe),
            show(&self.pid),
            show(&self.uid),
            show(&self.access),
            show(&self.path),
            show(&self.rule),
        )
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("an alert always serializes")
    }

    /// Environment of a hook: the main fields as `GUARD_*` variables.
    fn hook_env(&self) -> Vec<(&'static str, String)> {
        let verdict = self
            .verdict
            .clone()
            .unwrap_or_else(|| self.kind.name().to_string());
        let fields = [
            ("GUARD_KIND", Some(self.kind.name().to_string())),
            ("GUARD_TIME", Some(self.time.clone())),
            ("GUARD_VERDICT", Some(verdict)),
            ("GUARD_PATH", self.path.clone()),
            ("GUARD_EXE", self.exe.clone()),
            ("GUARD_PID", self.pid.clone()),
            ("GUARD_UID", self.uid.clone()),
            ("GUARD_ACCESS", self.access.clone()),
            ("GUARD_RULE", self.rule.clone()),
            ("GUARD_SUPPRESSED", self.suppressed.clone()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect()
    }
}

fn print_alert(alert: &Alert, format: AlertFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    let line = match format {
        AlertFormat::Text => alert.text_line(),
        AlertFormat::Json => alert.json_line(),
    };
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing an alert")
}

/// Runs the hook for one alert and waits for it, so alerts reach it in order.
/// A failing hook is reported and following goes on: one failed page must not
/// stop the next alerts.
fn run_hook(command: &str, alert: &Alert) -> anyhow::Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(alert.hook_env())
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the alert hook `{command}`"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A hook that does not read its input is fine: ignore a broken pipe.
    let _ = writeln!(stdin, "{}", alert.json_line());
    drop(stdin);
    let status = child.wait().context("waiting for the alert hook")?;
    if !status.success() {
        eprintln!("guardctl alerts: the alert hook `{command}` failed ({status})");
    }
    Ok(())
}

/// A field of a `journalctl -o json` entry as text. journalctl prints a
/// value that is not valid UTF-8 as a list of bytes, and a field with
/// several values as a list of values (the first is taken).
pub fn journal_field(entry: &Value, name: &str) -> Option<String> {
    match entry.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Array(items) => items.first().and_then(|first| match first {
            Value::String(text) => Some(text.clone()),
            _ => None,
        }),
        _ => None,
    }
}

fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Seconds since the epoch, for `--since=@SECONDS`.
pub fn since_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("@{now}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn denied_entry() -> Value {
        json!({
            "__REALTIME_TIMESTAMP": "1764410400123456",
            "MESSAGE_ID": message_id::DENIED,
            "MESSAGE": "denied read of /var/lib/mysql/ibdata1 by /usr/bin/cat",
            "GUARD_VERDICT": "denied",
            "GUARD_PATH": "/var/lib/mysql/ibdata1",
            "GUARD_EXE": "/usr/bin/cat",
            "GUARD_COMM": "cat",
            "GUARD_PID": "4242",
            "GUARD_UID": "0",
            "GUARD_GID": "0",
            "GUARD_ACCESS": "read",
            "GUARD_RULE": "default-deny",
            "GUARD_HOOK": "file_open",
            "GUARD_INODE": "131",
            "GUARD_DEVICE": "8:1",
            "_HOSTNAME": "db1",
        })
    }

    #[test]
    fn reads_a_decision_entry() {
        let alert = Alert::from_journal_entry(&denied_entry()).unwrap();
        assert_eq!(alert.time, "2025-11-29T10:00:00.123456Z");
        assert_eq!(alert.kind, AlertKind::Denied);
        assert_eq!(alert.path.as_deref(), Some("/var/lib/mysql/ibdata1"));
        assert_eq!(alert.device.as_deref(), Some("8:1"));
        assert_eq!(alert.hostname.as_deref(), Some("db1"));
        assert_eq!(
            alert.text_line(),
            "2025-11-29T10:00:00.123456Z DENIED /usr/bin/cat (pid 4242, uid 0) read \
             /var/lib/mysql/ibdata1 rule=default-deny"
        );
        let json: Value = serde_json::from_str(&alert.json_line()).unwrap();
        assert_eq!(json["kind"], "denied");
        assert_eq!(json["pid"], "4242");
        assert_eq!(json["rule"], "default-deny");
        assert!(json.get("suppressed").is_none());
    }

    #[test]
    fn ignores_entries_that_are_not_decisions() {
        let mut entry = denied_entry();
        entry["MESSAGE_ID"] = json!(message_id::POLICY_APPLIED);
        assert!(Alert::from_journal_entry(&entry).is_none());
        entry.as_object_mut().unwrap().remove("MESSAGE_ID");
        assert!(Alert::from_journal_entry(&entry).is_none());
    }

    #[test]
    fn suppressed_alerts_say_how_many() {
        let entry = json!({
            "__REALTIME_TIMESTAMP": "0",
            "MESSAGE_ID": message_id::SUPPRESSED,
            "GUARD_SUPPRESSED": "1234",
        });
        let alert = Alert::from_journal_entry(&entry).unwrap();
        assert_eq!(
            alert.text_line(),
            "1970-01-01T00:00:00.000000Z SUPPRESSED 1234 decision events not logged (kernel rate limit)"
        );
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        let mut entry = denied_entry();
        // A file name with a newline, printed by journalctl as bytes.
        entry["GUARD_PATH"] = json!(b"/d/x\n2025 DENIED fake".to_vec());
        let alert = Alert::from_journal_entry(&entry).unwrap();
        assert_eq!(alert.path.as_deref(), Some("/d/x\n2025 DENIED fake"));
        let line = alert.text_line();
        assert!(!line.contains('\n'));
        assert!(line.contains("/d/x\\n2025 DENIED fake"), "{line}");
    }

    #[test]
    fn missing_fields_show_as_question_marks() {
        let entry = json!({"MESSAGE_ID": message_id::WOULD_DENY});
        let alert = Alert::from_journal_entry(&entry).unwrap();
        assert_eq!(
            alert.text_line(),
            "unknown-time WOULD-DENY ? (pid ?, uid ?) ? ? rule=?"
        );
        let env = alert.hook_env();
        assert!(env.contains(&("GUARD_VERDICT", "would-deny".to_string())));
        assert!(!env.iter().any(|(name, _)| *name == "GUARD_PATH"));
    }

    #[test]
    fn journalctl_selects_kinds_from_root_only() {
        let args = journalctl_args(&AlertOptions {
            kinds: vec![AlertKind::Denied, AlertKind::Suppressed],
            matches: vec!["GUARD_PATH=/x".into()],
            ..AlertOptions::default()
        });
        assert_eq!(
            args,
            [
                "--follow",
                "--output=json",
                "--all",
                "--no-pager",
                "--lines=0",
                &format!("MESSAGE_ID={}", message_id::DENIED),
                &format!("MESSAGE_ID={}", message_id::SUPPRESSED),
                "_UID=0",
                "GUARD_PATH=/x",
            ]
        );
        let all = journalctl_args(&AlertOptions {
            since: Some("-1h".into()),
            ..AlertOptions::default()
        });
        assert!(all.contains(&"--since=-1h".to_string()));
        assert!(!all.contains(&"--lines=0".to_string()));
        assert_eq!(
            all.iter().filter(|a| a.starts_with("MESSAGE_ID=")).count(),
            4
        );
    }

    #[test]
    fn kinds_map_to_their_message_ids_and_back() {
        for kind in AlertKind::ALL {
            assert_eq!(AlertKind::from_message_id(kind.message_id()), Some(kind));
        }
        assert_eq!(
            serde_json::to_string(&AlertKind::WouldDeny).unwrap(),
            "\"would-deny\""
        );
    }
}
