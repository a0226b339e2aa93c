//! `cargo xtask test`: what CI runs. Host tests (`cargo test --workspace
//! --no-fail-fast`, as root; the guest tests stay ignored there), then the guest tests
//! on every kernel. The last line printed is always `N passed, N failed` over host and
//! guest tests; CI reads it.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::thread;

use anyhow::{Context, Result};

use crate::command::{self, repo_root};
use crate::kernels::KernelChoice;
use crate::vm_test::{self, Summary};
use crate::{ebpf, setup};

pub fn run() -> ExitCode {
    let mut total = Summary::default();
    match setup::run() {
        Ok(installed) => {
            total.add(step("build-ebpf", || {
                ebpf::build().map(|()| Summary::default())
            }));
            total.add(step("host tests", host_tests));
            let args = vm_test::Args {
                kernel: KernelChoice::All,
                timeout: vm_test::DEFAULT_TIMEOUT_SECS,
                silence_timeout: vm_test::DEFAULT_SILENCE_SECS,
                verbose: false,
                filter: None,
            };
            total.add(step("vm-test", || vm_test::run(&installed, &args)));
        }
        Err(error) => total.add(step_failure("setup", &error)),
    }
    for failure in &total.failures {
        eprintln!("test: FAILED {failure}");
    }
    println!("{} passed, {} failed", total.passed, total.failed());
    total.exit_code()
}

/// Runs a step; an error that stops it counts as one failure.
fn step(name: &str, body: impl FnOnce() -> Result<Summary>) -> Summary {
    body().unwrap_or_else(|error| step_failure(name, &error))
}

fn step_failure(name: &str, error: &anyhow::Error) -> Summary {
    eprintln!("test: {name} failed: {error:#}");
    Summary {
        passed: 0,
        failures: vec![format!("{name}: {error:#}")],
        ..Summary::default()
    }
}

/// `cargo test --workspace --no-fail-fast`, echoing its output and adding up libtest's
/// summary lines. A test executable that dies without a summary (killed, crashed) counts
/// as one failure, named by the target cargo reports.
fn host_tests() -> Result<Summary> {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(repo_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = command::describe(&cargo);
    eprintln!("xtask: running {shown}");
    let mut child = cargo
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let failed_targets = thread::spawn(move || {
        let mut targets = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            targets.extend(failed_target(&line));
        }
        targets
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut counts = Counts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("cannot read the output of `{shown}`"))?;
        println!("{line}");
        counts.add_line(&line);
    }
    let status = child.wait()?;
    let failed_targets = failed_targets.join().unwrap_or_default();
    Ok(host_summary(
        &counts,
        &failed_targets,
        status.success(),
        &shown,
    ))
}

/// `-p guard-tests --test audit_crash` from cargo's `error: test failed, to rerun pass
/// `…`` line or from the list after `error: N targets failed:`.
fn failed_target(line: &str) -> Option<String> {
    let quoted = match line.split_once("to rerun pass `") {
        Some((_, rest)) => rest,
        None => line.trim().strip_prefix('`')?,
    };
    let target = quoted.strip_suffix('`')?;
    target.starts_with("-p ").then(|| target.to_owned())
}

fn host_summary(counts: &Counts, failed_targets: &[String], success: bool, shown: &str) -> Summary {
    let mut failures: Vec<String> = counts
        .failed_names
        .iter()
        .map(|name| format!("host: {name}"))
        .collect();
    while failures.len() < counts.failed {
        failures.push("host: a test whose name was not printed (see the output above)".to_owned());
    }
    if !success && failures.is_empty() {
        let mut targets: Vec<&String> = failed_targets.iter().collect();
        targets.dedup();
        failures.extend(targets.iter().map(|target| {
            format!("host: `{target}` ended without a failed test (killed or crashed?)")
        }));
        if failures.is_empty() {
            failures.push(format!(
                "`{shown}` failed without a failed test (build error?)"
            ));
        }
    }
    Summary {
        passed: counts.passed,
        failures,
        ..Summary::default()
    }
}

/// Totals of libtest's `test result: ok. 3 passed; 1 failed; ...` lines, and the names
/// from its `test NAME ... FAILED` lines.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    passed: usize,
    failed: usize,
    failed_names: Vec<String>,
}

impl Counts {
    fn add_line(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            self.failed_names.push(name.to_owned());
            return;
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<usize>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summary_lines_are_added_up() {
        let mut counts = Counts::default();
        counts.add_line("test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        counts.add_line("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.20s");
        counts.add_line("test something ... ok");
        counts.add_line("test policy::rejects_bad_input ... FAILED");
        counts.add_line("running 3 tests");
        assert_eq!(counts.passed, 4);
        assert_eq!(counts.failed, 2);
        assert_eq!(counts.failed_names, vec!["policy::rejects_bad_input"]);
    }

    #[test]
    fn failed_targets_come_from_both_of_cargos_forms() {
        assert_eq!(
            failed_target("error: test failed, to rerun pass `-p guard-tests --test audit_crash`")
                .as_deref(),
            Some("-p guard-tests --test audit_crash")
        );
        assert_eq!(
            failed_target("    `-p guard-user --lib`").as_deref(),
            Some("-p guard-user --lib")
        );
        assert_eq!(failed_target("   Compiling guard-user v0.1.0"), None);
    }

    #[test]
    fn a_killed_test_executable_counts_as_a_failure() {
        let counts = Counts {
            passed: 5,
            ..Counts::default()
        };
        let targets = ["-p guard-tests --test audit_crash".to_owned()];
        let summary = host_summary(&counts, &targets, false, "cargo test");
        assert_eq!(summary.passed, 5);
        assert_eq!(summary.failed(), 1);
        assert!(summary.failures[0].contains("audit_crash"));
    }

    #[test]
    fn a_failure_without_tests_or_targets_is_still_a_failure() {
        let summary = host_summary(&Counts::default(), &[], false, "cargo test");
        assert_eq!(summary.failed(), 1);
        assert_eq!(
            host_summary(&Counts::default(), &[], true, "cargo test").failed(),
            0
        );
    }
}
