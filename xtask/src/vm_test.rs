//! `cargo xtask vm-test`: runs guard-tests' guest tests (`#[ignore = "guest: ..."]`)
//! as root inside a QEMU guest per kernel (the guests run at the same time), and
//! reports each result labelled with the kernel.
//!
//! In the guest every test executable runs with `--ignored --test-threads=1` and
//! libtest's `--logfile`, whose `ok NAME` / `failed NAME` lines are relayed to the host
//! after the executable ends. Results therefore do not depend on parsing test output,
//! which programs started by the tests may interleave with.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cargo::{self, TestBinary};
use crate::ebpf;
use crate::kernels::{Kernel, KernelChoice};
use crate::setup::Installed;
use crate::vm::{self, shell_quote};

/// Long enough for the whole guest suite on one kernel under TCG while the
/// other kernel's guest runs beside it (2,340 s on 6.12 here with 67 tests),
/// with room for a busy machine.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// A hung test shows as silence: the guest is killed after this long without a line,
/// so it need not wait for the whole timeout.
pub const DEFAULT_SILENCE_SECS: u64 = 600;

#[derive(clap::Args)]
pub struct Args {
    /// Which guest kernels to run the tests on.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// Fail a guest that has not finished after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Fail a guest that prints no line for this many seconds (a hung test).
    #[arg(long, default_value_t = DEFAULT_SILENCE_SECS)]
    pub silence_timeout: u64,
    /// Print every line the guest prints, not only test results.
    #[arg(long, short)]
    pub verbose: bool,
    /// Run only tests whose name contains this (libtest's filter).
    pub filter: Option<String>,
}

/// Counts of tests, plus what failed, for the final report.
#[derive(Default)]
pub struct Summary {
    pub passed: usize,
    /// Failed tests, and failures that are not one test's (a guest that did not finish,
    /// a crashed test executable, a kernel on which no test ran).
    pub failures: Vec<String>,
    /// How long each test took, as seen from the host (`[kernel] test`).
    pub timings: Vec<(String, Duration)>,
}

impl Summary {
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    pub fn add(&mut self, other: Summary) {
        self.passed += other.passed;
        self.failures.extend(other.failures);
        self.timings.extend(other.timings);
    }

    pub fn exit_code(&self) -> std::process::ExitCode {
        if self.failures.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn run(setup: &Installed, args: &Args) -> Result<Summary> {
    let started = Instant::now();
    ebpf::build()?;
    cargo::build_guard_binaries()?;
    let binaries = cargo::build_guest_test_binaries()?;
    // The guests run side by side: much of a guest's time is one vCPU in the
    // verifier or a test waiting. Each is slower beside the other (6.12:
    // 1389 s instead of 1056), but the pair is done far sooner (1528 s
    // instead of 2250, measured before programs verified faster).
    let kernels = setup.kernels(args.kernel);
    let results: Vec<Summary> = std::thread::scope(|scope| {
        let runs: Vec<_> = kernels
            .iter()
            .map(|kernel| scope.spawn(|| run_on(kernel, &binaries, args)))
            .collect();
        runs.into_iter()
            .zip(&kernels)
            .map(|(run, kernel)| {
                run.join().unwrap_or_else(|_| Summary {
                    passed: 0,
                    failures: vec![format!("[{}] the guest's runner panicked", kernel.label())],
                    ..Summary::default()
                })
            })
            .collect()
    });
    let mut summary = Summary::default();
    for (kernel, result) in kernels.iter().zip(results) {
        eprintln!(
            "vm-test: [{}] {} passed, {} failed",
            kernel.label(),
            result.passed,
            result.failed()
        );
        summary.add(result);
    }
    print_slowest(&summary.timings);
    for failure in &summary.failures {
        eprintln!("vm-test: FAILED {failure}");
    }
    eprintln!(
        "vm-test: {} passed, {} failed in {:.0} s",
        summary.passed,
        summary.failed(),
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// How many of the slowest tests the report names: where guest time goes.
const SLOWEST_SHOWN: usize = 12;

fn print_slowest(timings: &[(String, Duration)]) {
    let mut slowest: Vec<_> = timings.iter().collect();
    slowest.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
    for (name, took) in slowest.into_iter().take(SLOWEST_SHOWN) {
        eprintln!("vm-test: slow: {:>6.1} s  {name}", took.as_secs_f64());
    }
}

/// Boots one guest, runs every test executable in it, and counts the results.
fn run_on(kernel: &Kernel, binaries: &[TestBinary], args: &Args) -> Summary {
    let nonce = match vm::random_nonce() {
        Ok(nonce) => nonce,
        Err(error) => {
            return Summary {
                passed: 0,
                failures: vec![format!("[{}] {error:#}", kernel.label())],
                ..Summary::default()
            }
        }
    };
    let script = guest_script(binaries, args.filter.as_deref(), &nonce);
    let mut results = Results::new(kernel.label(), nonce, args.verbose);
    let options = vm::Options {
        timeout: Duration::from_secs(args.timeout),
        silence_timeout: Duration::from_secs(args.silence_timeout),
        ..vm::Options::default()
    };
    let outcome = vm::run_with(kernel, &script, &options, &mut |line| results.line(line));
    let mut summary = results.finish();
    match outcome {
        Ok(0) => {}
        Ok(code) if summary.failures.is_empty() => summary.failures.push(format!(
            "[{}] the guest script exited with {code}",
            kernel.label()
        )),
        Ok(_) => {
            // Test failures: the kernel's messages may say why (BPF, LSM, oopses).
            let _ = vm::print_kernel_log_of_script(kernel);
        }
        Err(error) => summary
            .failures
            .push(format!("[{}] guest: {error:#}", kernel.label())),
    }
    if summary.passed == 0 && summary.failures.is_empty() {
        summary.failures.push(format!(
            "[{}] no guest test ran (filter: {:?})",
            kernel.label(),
            args.filter
        ));
    }
    summary
}

/// The sh script the guest runs: each test executable in turn, relaying its results.
fn guest_script(binaries: &[TestBinary], filter: Option<&str>, nonce: &str) -> String {
    let filter = filter.map(shell_quote).unwrap_or_default();
    let mut script = format!(
        r#"export RUST_BACKTRACE=1
status=0
run_tests() {{ # name executable
    results="/tmp/guard-test-results-$1"
    echo "GUARD-TESTS-BINARY {nonce} $1"
    "$2" --ignored --test-threads=1 --color never --logfile "$results" {filter}
    code=$?
    if [ -f "$results" ]; then
        while read -r outcome test; do
            echo "GUARD-TESTS-RESULT {nonce} $1 $outcome $test"
        done <"$results"
    fi
    echo "GUARD-TESTS-BINARY-EXIT {nonce} $1 $code"
    [ "$code" -eq 0 ] || status=1
}}
"#
    );
    for binary in binaries {
        script.push_str(&format!(
            "run_tests {} {}\n",
            shell_quote(&binary.name),
            shell_quote(&binary.path.to_string_lossy())
        ));
    }
    script.push_str("exit $status\n");
    script
}

/// Follows the guest's output: counts results and keeps each executable's output to
/// show it when the executable failed.
struct Results {
    label: &'static str,
    nonce: String,
    verbose: bool,
    summary: Summary,
    /// Output of the executable now running (or of the script before the first one).
    output: Vec<String>,
    failed_in_binary: usize,
    /// When the executable now running started, and when its last test ended.
    binary_started: Instant,
    last_test_ended: Instant,
}

/// A relayed line of the guest script.
#[derive(Debug, PartialEq)]
enum Event<'a> {
    BinaryStarted,
    Result {
        binary: &'a str,
        outcome: &'a str,
        test: &'a str,
    },
    BinaryExited {
        binary: &'a str,
        code: &'a str,
    },
}

fn parse_event<'a>(line: &'a str, nonce: &str) -> Option<Event<'a>> {
    let (word, rest) = line.split_once(' ')?;
    let rest = rest.strip_prefix(nonce)?.strip_prefix(' ')?;
    let fields: Vec<&str> = rest.split(' ').collect();
    match (word, fields.as_slice()) {
        ("GUARD-TESTS-BINARY", [_]) => Some(Event::BinaryStarted),
        ("GUARD-TESTS-RESULT", [binary, outcome, test]) => Some(Event::Result {
            binary,
            outcome,
            test,
        }),
        ("GUARD-TESTS-BINARY-EXIT", [binary, code]) => Some(Event::BinaryExited { binary, code }),
        _ => None,
    }
}

impl Results {
    fn new(label: &'static str, nonce: String, verbose: bool) -> Results {
        Results {
            label,
            nonce,
            verbose,
            summary: Summary::default(),
            output: Vec::new(),
            failed_in_binary: 0,
            binary_started: Instant::now(),
            last_test_ended: Instant::now(),
        }
    }

    fn line(&mut self, line: &str) {
        match parse_event(line, &self.nonce) {
            Some(Event::BinaryStarted) => {
                self.output.clear();
                self.failed_in_binary = 0;
                self.binary_started = Instant::now();
                self.last_test_ended = self.binary_started;
            }
            Some(Event::Result {
                binary,
                outcome,
                test,
            }) => self.result(binary, outcome, test),
            Some(Event::BinaryExited { binary, code }) => self.binary_exited(binary, code),
            None => {
                self.time_test(line);
                if self.verbose {
                    println!("[{}] | {line}", self.label);
                }
                self.output.push(line.to_owned());
            }
        }
    }

    fn result(&mut self, binary: &str, outcome: &str, test: &str) {
        let name = format!("[{}] {binary}::{test}", self.label);
        match outcome {
            "ok" => {
                self.summary.passed += 1;
                println!("{name} ... ok");
            }
            "failed" => {
                self.failed_in_binary += 1;
                println!("{name} ... FAILED");
                self.summary.failures.push(name);
            }
            _ => {}
        }
    }

    /// libtest prints `test NAME ... ok` when a test ends (one thread): the time
    /// since the previous one ended is this test's, give or take a line's transit.
    fn time_test(&mut self, line: &str) {
        let Some(name) = finished_test(line) else {
            return;
        };
        let now = Instant::now();
        self.summary.timings.push((
            format!("[{}] {name}", self.label),
            now - self.last_test_ended,
        ));
        self.last_test_ended = now;
    }

    fn binary_exited(&mut self, binary: &str, code: &str) {
        println!(
            "[{}] {binary} done in {:.0} s",
            self.label,
            self.binary_started.elapsed().as_secs_f64()
        );
        if code == "0" {
            return;
        }
        if !self.verbose {
            println!(
                "[{}] ----- output of {binary} (exit code {code}) -----",
                self.label
            );
            for line in &self.output {
                println!("[{}] | {line}", self.label);
            }
        }
        if self.failed_in_binary == 0 {
            self.summary.failures.push(format!(
                "[{}] {binary} exited with code {code} without a failed test (crashed?)",
                self.label
            ));
        }
    }

    fn finish(self) -> Summary {
        self.summary
    }
}

/// The test named by libtest's `test NAME ... ok` (or `FAILED`) line. A program the
/// test started may have written into the line; then it is not timed.
fn finished_test(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("test ")?;
    let (name, outcome) = rest.split_once(" ... ")?;
    matches!(outcome.trim_end(), "ok" | "FAILED").then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        Results::new("6.12", "n0nce".to_owned(), false)
    }

    #[test]
    fn results_are_counted_per_outcome() {
        let mut results = results();
        for line in [
            "GUARD-TESTS-BINARY n0nce guest_env",
            "test bpf_is_an_active_lsm ... ok",
            "GUARD-TESTS-RESULT n0nce guest_env ok bpf_is_an_active_lsm",
            "GUARD-TESTS-RESULT n0nce guest_env failed journald_reads_back",
            "GUARD-TESTS-RESULT n0nce guest_env ignored other",
            "GUARD-TESTS-BINARY-EXIT n0nce guest_env 101",
        ] {
            results.line(line);
        }
        let summary = results.finish();
        assert_eq!(summary.passed, 1);
        assert_eq!(
            summary.failures,
            vec!["[6.12] guest_env::journald_reads_back"]
        );
    }

    #[test]
    fn finished_tests_are_read_from_libtest_lines() {
        assert_eq!(finished_test("test swap::off ... ok"), Some("swap::off"));
        assert_eq!(finished_test("test off ... FAILED"), Some("off"));
        assert_eq!(finished_test("test off ... ignored, guest"), None);
        assert_eq!(finished_test("test result: ok. 2 passed"), None);
        assert_eq!(finished_test("running 2 tests"), None);
    }

    #[test]
    fn a_crashed_executable_counts_as_a_failure() {
        let mut results = results();
        results.line("GUARD-TESTS-BINARY n0nce guest_env");
        results.line("GUARD-TESTS-RESULT n0nce guest_env ok first");
        results.line("GUARD-TESTS-BINARY-EXIT n0nce guest_env 139");
        let summary = results.finish();
        assert_eq!(summary.passed, 1);
        assert_eq!(summary.failed(), 1);
    }

    #[test]
    fn lines_without_the_nonce_are_output_not_results() {
        let mut results = results();
        results.line("GUARD-TESTS-RESULT forged guest_env ok first");
        assert_eq!(results.finish().passed, 0);
    }

    #[test]
    fn the_script_runs_each_executable_with_the_filter() {
        let binaries = [TestBinary {
            name: "guest_env".to_owned(),
            path: "/t/release/deps/guest_env-1".into(),
        }];
        let script = guest_script(&binaries, Some("journal"), "n0nce");
        assert!(script
            .contains("--ignored --test-threads=1 --color never --logfile \"$results\" 'journal'"));
        assert!(script.contains("run_tests 'guest_env' '/t/release/deps/guest_env-1'\n"));
        assert!(script.ends_with("exit $status\n"));
    }
}
