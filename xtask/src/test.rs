//! `cargo xtask test`: what CI runs. Host tests (`cargo test --workspace`, as root; the
//! guest tests stay ignored there), then the guest tests on every kernel. The last line
//! printed is always `N passed, N failed` over host and guest tests; CI reads it.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

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
    }
}

/// `cargo test --workspace`, echoing its output and adding up libtest's summary lines.
fn host_tests() -> Result<Summary> {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(repo_root())
        .args(["test", "--workspace"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let shown = command::describe(&cargo);
    eprintln!("xtask: running {shown}");
    let mut child = cargo
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut counts = Counts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("cannot read the output of `{shown}`"))?;
        println!("{line}");
        counts.add_line(&line);
    }
    let status = child.wait()?;
    let mut summary = Summary {
        passed: counts.passed,
        failures: (0..counts.failed)
            .map(|n| format!("host test #{} (see the output above)", n + 1))
            .collect(),
    };
    if !status.success() && counts.failed == 0 {
        summary.failures.push(format!(
            "`{shown}` failed ({status}) without a failed test (build error?)"
        ));
    }
    Ok(summary)
}

/// Totals of libtest's `test result: ok. 3 passed; 1 failed; ...` lines.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    passed: usize,
    failed: usize,
}

impl Counts {
    fn add_line(&mut self, line: &str) {
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
        counts.add_line("running 3 tests");
        assert_eq!(
            counts,
            Counts {
                passed: 4,
                failed: 2
            }
        );
    }
}
