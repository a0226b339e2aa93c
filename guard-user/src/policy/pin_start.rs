//! `guardctl policy pin-start PID`: the `arguments` and `environment` of a
//! running server, as a `started_by` fragment to pin, so that nobody has to
//! copy them out of /proc by hand.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use guard_common::{MAX_ENV_ENTRY_BYTES, MAX_ENV_NAME_BYTES};

/// Variables whose value changes from one start to the next (systemd's,
/// socket activation's): pinned by name only.
const CHANGING: [&str; 7] = [
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "SYSTEMD_EXEC_PID",
    "MAINPID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "_",
];

/// `{"arguments": [...], "environment": [...]}` of process `pid`, read
/// from `proc` (normally `/proc`). Each variable is pinned with its value,
/// except those that change at each start and those too long to pin whole
/// (listed by name). A name too long even for that is an error naming it.
pub fn pin_start(proc: &Path, pid: u32) -> Result<Value> {
    let dir = proc.join(pid.to_string());
    let arguments = strings(&dir.join("cmdline"))?;
    let environment = strings(&dir.join("environ"))?
        .iter()
        .map(|entry| pin_entry(entry))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("process {pid}"))?;
    Ok(json!({ "arguments": arguments, "environment": environment }))
}

fn pin_entry(entry: &str) -> Result<String> {
    let name = entry.split_once('=').map_or(entry, |(name, _)| name);
    if name.len() + 2 > MAX_ENV_NAME_BYTES {
        anyhow::bail!(
            "its variable {name:?} is longer than the {} bytes a pinned name may have",
            MAX_ENV_NAME_BYTES - 2
        );
    }
    let too_long = entry.len() + 1 > MAX_ENV_ENTRY_BYTES - 1;
    if too_long || CHANGING.contains(&name) || !entry.contains('=') {
        return Ok(name.to_string());
    }
    Ok(entry.to_string())
}

/// The NUL-separated strings of a /proc file (`cmdline`, `environ`).
fn strings(file: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            String::from_utf8(s.to_vec())
                .with_context(|| format!("{} holds a string that is not UTF-8", file.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_running_process_is_pinned_by_its_arguments_and_variables() {
        let long = "x".repeat(300);
        let mut child = Command::new("/bin/sleep")
            .arg("30")
            .env_clear()
            .env("LANG", "C.UTF-8")
            .env("INVOCATION_ID", "0123abcd")
            .env("LONG", &long)
            .env("MYSQLD_OPTS", "")
            .spawn()
            .unwrap();
        // /proc shows the new program's arguments once exec is done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let pinned = loop {
            let pinned = pin_start(Path::new("/proc"), child.id()).unwrap();
            if pinned["arguments"][0] == "/bin/sleep" || std::time::Instant::now() > deadline {
                break pinned;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(pinned["arguments"], json!(["/bin/sleep", "30"]));
        let mut environment: Vec<&str> = pinned["environment"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        environment.sort();
        assert_eq!(
            environment,
            ["INVOCATION_ID", "LANG=C.UTF-8", "LONG", "MYSQLD_OPTS="]
        );
    }

    #[test]
    fn a_name_too_long_to_pin_is_an_error_naming_it() {
        let name = "N".repeat(MAX_ENV_NAME_BYTES);
        let err = pin_entry(&format!("{name}=1")).unwrap_err();
        assert!(err.to_string().contains(&name), "{err}");
    }

    #[test]
    fn a_missing_process_is_an_error_naming_the_file() {
        let err = pin_start(Path::new("/proc"), u32::MAX).unwrap_err();
        assert!(format!("{err:#}").contains("cmdline"), "{err:#}");
    }
}
