//! The allowed program's configuration, which the policy lists as
//! `immutable`: root would edit it (`skip-grant-tables`) or drop a file next
//! to it, then have the supervisor restart the database with options of
//! root's choosing.

use std::io::Write;

use anyhow::{Context, Result};

use super::sys::refused_by_policy;
use super::{AlertRule, Attempt, Needs, Target, Technique, NOTHING};

const CONFIG: Needs = Needs {
    config: true,
    ..NOTHING
};

pub fn techniques() -> Vec<Technique> {
    let t = |id, name, run| Technique {
        id,
        name,
        expected: "EPERM",
        needs: CONFIG,
        alert: AlertRule::Denial,
        run,
    };
    vec![
        t(
            "config-edit",
            "append an option to the program's configuration file",
            config_edit,
        ),
        t(
            "config-drop-in",
            "create a configuration file next to it",
            config_drop_in,
        ),
    ]
}

/// The option a database would take from it.
const OPTION: &[u8] = b"\n[mysqld]\nskip-grant-tables\n";

fn config_edit(t: &Target) -> Result<Attempt> {
    let config = t.config.as_ref().context("needs --config")?;
    let before = std::fs::metadata(config)
        .with_context(|| format!("reading {}", config.display()))?
        .len();
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(config)
        .and_then(|mut file| file.write_all(OPTION));
    match appended {
        Err(e) => Ok(refusal(
            &format!("open {} for appending", config.display()),
            &e,
        )),
        Ok(()) => {
            // Put the file back as it was: the selftest must change nothing.
            let restored = std::fs::OpenOptions::new()
                .write(true)
                .open(config)
                .and_then(|file| file.set_len(before));
            Ok(Attempt::not_blocked(format!(
                "appended to {} (restored: {})",
                config.display(),
                restored.is_ok()
            )))
        }
    }
}

fn config_drop_in(t: &Target) -> Result<Attempt> {
    let config = t.config.as_ref().context("needs --config")?;
    let folder = config
        .parent()
        .with_context(|| format!("{} has no folder", config.display()))?;
    let drop_in = folder.join(format!("zz-selftest-{}.cnf", std::process::id()));
    match std::fs::write(&drop_in, OPTION) {
        Err(e) => Ok(refusal(&format!("create {}", drop_in.display()), &e)),
        Ok(()) => {
            let _ = std::fs::remove_file(&drop_in);
            Ok(Attempt::not_blocked(format!(
                "created {}",
                drop_in.display()
            )))
        }
    }
}

/// Blocked only by guard's kind of refusal; another error is not a defence.
fn refusal(what: &str, e: &std::io::Error) -> Attempt {
    match e.raw_os_error() {
        Some(errno) if refused_by_policy(errno) => Attempt::blocked(format!("{what}: {e}")),
        _ => Attempt::not_blocked(format!("{what} failed for another reason: {e}")),
    }
}
