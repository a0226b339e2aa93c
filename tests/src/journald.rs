//! A real systemd-journald for tests, and reading entries back.
//!
//! The host's PID 1 is not systemd, so journald is not running by default.
//! [`ensure_journald`] starts it when nothing listens on the native socket
//! and stops it when the last [`Journald`] handle of this process is dropped;
//! a journald that was already running is left alone.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

const SOCKET: &str = "/run/systemd/journal/socket";
const JOURNALD: &str = "/lib/systemd/systemd-journald";
const START_TIMEOUT: Duration = Duration::from_secs(20);

struct State {
    /// Live [`Journald`] handles in this process.
    users: usize,
    /// The journald this process started, if it started one.
    started: Option<Child>,
}

static STATE: Mutex<State> = Mutex::new(State {
    users: 0,
    started: None,
});

/// Keeps journald running while alive (see [`ensure_journald`]).
#[must_use = "journald may be stopped when this handle is dropped"]
pub struct Journald {
    _private: (),
}

/// Makes sure systemd-journald listens on its native socket, starting it if
/// needed. Hold the returned handle for as long as the test uses journald.
pub fn ensure_journald() -> anyhow::Result<Journald> {
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    if state.started.is_none() && !listening() {
        state.started = Some(start()?);
    }
    state.users += 1;
    Ok(Journald { _private: () })
}

impl Drop for Journald {
    fn drop(&mut self) {
        let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
        state.users -= 1;
        if state.users == 0 {
            if let Some(child) = state.started.take() {
                stop(child);
            }
        }
    }
}

fn listening() -> bool {
    UnixDatagram::unbound()
        .and_then(|socket| socket.connect(SOCKET))
        .is_ok()
}

fn start() -> anyhow::Result<Child> {
    std::fs::create_dir_all("/run/systemd/journal").context("creating /run/systemd/journal")?;
    let mut child = Command::new(JOURNALD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {JOURNALD}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    while !listening() {
        if let Some(status) = child.try_wait()? {
            bail!("{JOURNALD} exited with {status} before listening on {SOCKET}");
        }
        if Instant::now() > deadline {
            stop(child);
            bail!("{JOURNALD} did not listen on {SOCKET} within {START_TIMEOUT:?}");
        }
        sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// SIGTERM lets journald flush its files; SIGKILL if it does not exit soon.
fn stop(mut child: Child) {
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Entries matching all of `matches` (`FIELD=value`), as `journalctl -o json`
/// prints them, with values of any size (`--all`).
pub fn journal_entries(matches: &[&str]) -> anyhow::Result<Vec<Value>> {
    let output = Command::new("journalctl")
        .args(["--no-pager", "--all", "-o", "json"])
        .args(matches)
        .output()
        .context("running journalctl")?;
    if !output.status.success() {
        bail!(
            "journalctl {matches:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)
        .context("journalctl printed non-UTF-8")?
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("bad JSON line {line}")))
        .collect()
}

/// Polls until at least `count` entries match (journald writes asynchronously).
pub fn wait_for_journal_entries(
    matches: &[&str],
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = journal_entries(matches)?;
        if entries.len() >= count {
            return Ok(entries);
        }
        if Instant::now() > deadline {
            bail!(
                "found {} of {count} journal entries matching {matches:?} within {timeout:?}",
                entries.len()
            );
        }
        sleep(Duration::from_millis(50));
    }
}

/// A field's value in a `journalctl -o json` entry: a string, or a list of
/// byte values for data journalctl does not print as text.
pub fn field_text(entry: &Value, name: &str) -> Option<String> {
    match entry.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Array(bytes) if bytes.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => None,
    }
}
