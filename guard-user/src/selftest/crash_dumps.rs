//! Techniques on crash dumps. An allowed program's core
//! file holds its memory, the data it read included: root may change where
//! cores go (`kernel.core_pattern`, a pipe to a program of its own
//! included) and wait for, or provoke, a genuine crash.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::sys::refused;
use super::{AlertRule, Attempt, Target, Technique, ACCOMPLICE, NOTHING};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

pub fn techniques() -> Vec<Technique> {
    vec![
        Technique {
            id: "core-pattern",
            name:
                "change kernel.core_pattern (where crash dumps go; its own value is written back)",
            expected: "EPERM",
            needs: NOTHING,
            alert: AlertRule::Denial,
            run: core_pattern,
        },
        Technique {
            id: "core-dump-outside",
            name: "crash the allowed program where its core lands outside the protected directory",
            expected: "no core written",
            needs: ACCOMPLICE,
            alert: AlertRule::Denial,
            run: core_dump_outside,
        },
    ]
}

/// Writes the value that is already there: if guard lets it through,
/// nothing changed.
fn core_pattern(_: &Target) -> Result<Attempt> {
    let current = std::fs::read(CORE_PATTERN).with_context(|| format!("reading {CORE_PATTERN}"))?;
    let mut file = match std::fs::OpenOptions::new().write(true).open(CORE_PATTERN) {
        Ok(file) => file,
        Err(e) => return Ok(refused(&format!("open {CORE_PATTERN} for writing"), &e)),
    };
    match file.write_all(&current) {
        Ok(()) => Ok(Attempt::not_blocked(format!(
            "{CORE_PATTERN} opened and written (its own value)"
        ))),
        Err(e) => Ok(refused(&format!("write {CORE_PATTERN}"), &e)),
    }
}

/// The allowed program crashes (it aborts itself, raising its own core
/// limit first) in a folder outside the protected directory; blocked when no
/// core file with contents appears where `kernel.core_pattern` puts it.
fn core_dump_outside(t: &Target) -> Result<Attempt> {
    let exe = t
        .accomplice_exe
        .as_ref()
        .context("this technique needs --accomplice")?;
    let pattern =
        std::fs::read_to_string(CORE_PATTERN).with_context(|| format!("reading {CORE_PATTERN}"))?;
    let pattern = pattern.trim_end_matches('\n');
    if let Some(program) = pattern.strip_prefix('|') {
        return Ok(Attempt::not_blocked(format!(
            "kernel.core_pattern pipes crash dumps to `{program}`: a crash of the allowed \
             program hands its memory to that program, which guard cannot check (not tried)"
        )));
    }
    let cwd = t.scratch.join(format!("core-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).with_context(|| format!("creating {}", cwd.display()))?;
    let lands_in = core_folder(pattern, &cwd)?;
    let before = non_empty_files(&lands_in)?;
    let child = Command::new(exe)
        .args(["selftest", "crash", "--in"])
        .arg(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let status = out.status;
    if status.signal() != Some(libc::SIGABRT) {
        bail!(
            "the allowed program did not abort ({status}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let written: Vec<String> = non_empty_files(&lands_in)?
        .into_iter()
        .filter(|(name, size)| before.get(name) != Some(size))
        .map(|(name, size)| format!("{} ({size} bytes)", lands_in.join(name).display()))
        .collect();
    let _ = std::fs::remove_dir_all(&cwd);
    let attempt = if written.is_empty() && !status.core_dumped() {
        Attempt::blocked(format!(
            "aborted (SIGABRT), no core written in {}",
            lands_in.display()
        ))
    } else {
        Attempt::not_blocked(format!(
            "aborted, core dumped: {}",
            if written.is_empty() {
                "the kernel says so".to_string()
            } else {
                written.join(", ")
            }
        ))
    };
    Ok(attempt.with_pid(pid))
}

/// Where `pattern` puts a core of a process crashing in `cwd`.
fn core_folder(pattern: &str, cwd: &Path) -> Result<PathBuf> {
    if !pattern.starts_with('/') {
        return Ok(cwd.to_path_buf());
    }
    let folder = Path::new(pattern)
        .parent()
        .with_context(|| format!("kernel.core_pattern {pattern:?} names no folder"))?;
    if folder.to_string_lossy().contains('%') {
        bail!("kernel.core_pattern {pattern:?}: cannot tell which folder cores land in");
    }
    Ok(folder.to_path_buf())
}

/// Regular files in `dir` with contents, by name.
fn non_empty_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && meta.size() > 0 {
            files.insert(
                entry.file_name().to_string_lossy().into_owned(),
                meta.size(),
            );
        }
    }
    Ok(files)
}

/// `guardctl selftest crash --in DIR`, run as the allowed program: abort in
/// DIR with the core limit raised as far as it goes.
pub fn crash_in(dir: &Path) -> Result<std::convert::Infallible> {
    std::env::set_current_dir(dir).with_context(|| format!("entering {}", dir.display()))?;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_max == 0 {
        bail!("the hard core size limit is 0: no core could be written, nothing to show");
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    std::process::abort()
}
