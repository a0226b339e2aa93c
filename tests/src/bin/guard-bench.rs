//! Enforcement benchmark, run as root inside a guest by `cargo xtask bench`.
//!
//! Measures open()+close() latency with the guard not loaded and loaded, in
//! the same run, on a file outside any protected directory and on an allowed
//! file inside one (this binary is the allowed program), with 1 and with 1,000
//! rules; and the time a policy apply of 1 and 1,000 rules takes. The
//! protected directory is encrypted with fscrypt, as guard deploys one on a
//! filesystem it shares with other files; one more case protects a directory
//! fscrypt does not encrypt on that filesystem. The cases
//! are measured in interleaved rounds (guard off, on, off, ...) so that drift
//! in the emulator or on the host hits every case alike. Prints one table;
//! ratios are against the baseline measured in this run.

use guard::control::{self, Request};
use guard::fscrypt;
use guard::loader::{self, Pins};
use guard_tests::encrypted_dirs::encrypt_empty_dir;
use guard_tests::guest::{bin, disarm_fully, guardctl, Guardd, SOCKET};
use guard_tests::machine;
use serde_json::{json, Value};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// open+close pairs per timed batch, batches per case and round, rounds.
const BATCH: usize = 500;
const BATCHES: usize = 40;
const ROUNDS: usize = 5;

/// Per-pair times of every batch of one case, over all rounds.
#[derive(Default)]
struct Case(Vec<f64>);

impl Case {
    fn measure(&mut self, path: &Path) {
        self.0.extend(batches_ns(path, BATCHES));
    }

    /// Mean without the highest and lowest tenth of the batches: robust to
    /// interrupts, and unlike a median not stuck on the clock's granularity.
    fn typical(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let cut = sorted.len() / 10;
        let kept = &sorted[cut..sorted.len() - cut];
        kept.iter().sum::<f64>() / kept.len() as f64
    }
}

#[derive(Default)]
struct Results {
    base_out: Case,
    base_else: Case,
    else_1000: Case,
    base_in: Case,
    floor_out: Case,
    out_1: Case,
    in_1: Case,
    out_1000: Case,
    in_1000: Case,
    plain_out_1000: Case,
    apply_1: Vec<Apply>,
    apply_1000: Vec<Apply>,
}

/// One policy apply: until in force inside guardd, and guardctl end to end.
struct Apply {
    in_force_ms: f64,
    /// Of which: parsing and resolving (binaries hashed), writing the maps.
    resolve_ms: f64,
    maps_ms: f64,
    guardctl_ms: f64,
}

fn main() -> anyhow::Result<()> {
    pin_to_cpu(0)?;
    let root = Path::new("/scratch/bench");
    let _ = std::fs::remove_dir_all(root);
    // Outside, on the protected directory's filesystem (decided by the
    // file's encryption flag, or by a walk up to the filesystem's root when
    // a protected directory there is not encrypted) and on another
    // filesystem (one lookup decides).
    let outside = root.join("outside/file");
    let elsewhere = Path::new("/tmp/guard-bench/file").to_path_buf();
    let data = root.join("data");
    let inside = data.join("file");
    let plain = root.join("plain");
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&plain)?;
    let key = encrypt_empty_dir(&data, "guard-bench")?;
    for f in [&outside, &elsewhere, &inside] {
        std::fs::create_dir_all(f.parent().unwrap())?;
        std::fs::write(f, b"benchmark")?;
    }
    let me = std::env::current_exe()?;
    let policy_1 = policy(&data, &me, 1)?;
    let policy_1000 = policy(&data, &me, 1000)?;
    let plain_1000 = policy(&plain, &me, 1000)?;
    let pins = Pins::new(loader::DEFAULT_PIN_DIR);
    let mut r = Results::default();
    for round in 1..=ROUNDS {
        eprintln!("guard-bench: round {round} of {ROUNDS}");
        disarm_fully(&pins)?;
        settle();
        r.base_out.measure(&outside);
        r.base_else.measure(&elsewhere);
        r.base_in.measure(&inside);
        let guardd = Guardd::start();
        settle();
        r.floor_out.measure(&outside);
        r.apply_1.push(apply(&policy_1)?);
        settle();
        r.out_1.measure(&outside);
        r.in_1.measure(&inside);
        r.apply_1000.push(apply(&policy_1000)?);
        settle();
        r.out_1000.measure(&outside);
        r.else_1000.measure(&elsewhere);
        r.in_1000.measure(&inside);
        apply(&plain_1000)?;
        settle();
        r.plain_out_1000.measure(&outside);
        drop(guardd);
    }
    disarm_fully(&pins)?;
    let _ = fscrypt::remove_key(root, &key);
    print_table(&r);
    Ok(())
}

fn print_table(r: &Results) {
    let (base_out, base_in) = (r.base_out.typical(), r.base_in.typical());
    let rows = [
        row(
            "open+close outside, same filesystem, no guard",
            base_out,
            None,
            "",
        ),
        row(
            "open+close outside, guard, no policy (floor)",
            r.floor_out.typical(),
            Some(base_out),
            "",
        ),
        row(
            "open+close outside, same fs, guard (1 rule)",
            r.out_1.typical(),
            Some(base_out),
            "<= +3%",
        ),
        row(
            "open+close outside, same fs, guard (1000 rules)",
            r.out_1000.typical(),
            Some(base_out),
            "<= +3%",
        ),
        row(
            "outside, same fs, unencrypted protected dir (1000)",
            r.plain_out_1000.typical(),
            Some(base_out),
            "",
        ),
        row(
            "open+close on another filesystem, no guard",
            r.base_else.typical(),
            None,
            "",
        ),
        row(
            "open+close on another filesystem, guard (1000 rules)",
            r.else_1000.typical(),
            Some(r.base_else.typical()),
            "<= +3%",
        ),
        row("open+close allowed inside, no guard", base_in, None, ""),
        row(
            "open+close allowed inside, guard (1 rule)",
            r.in_1.typical(),
            Some(base_in),
            "<= +10%",
        ),
        row(
            "open+close allowed inside, guard (1000 rules)",
            r.in_1000.typical(),
            Some(base_in),
            "<= +10%",
        ),
        row(
            "allowed inside: 1000 rules vs 1 rule",
            r.in_1000.typical(),
            Some(r.in_1.typical()),
            "no growth",
        ),
    ];
    println!("guard enforcement benchmark");
    println!("kernel: {}", machine::kernel_release());
    println!("cpu: {}", machine::cpu_model());
    println!("clock: {} ({})", machine::clocksource(), clock_note());
    println!(
        "method: {ROUNDS} interleaved rounds x {BATCHES} batches of {BATCH} \
         open(O_RDONLY)+close per case; ns per pair, mean of the middle 80% of batches"
    );
    println!();
    println!(
        "{:<52} {:>10} {:>12} {:>10}",
        "case", "ns/op", "vs baseline", "target"
    );
    for line in rows {
        println!("{line}");
    }
    let ms = |applies: &[Apply], f: fn(&Apply) -> f64| {
        median(&applies.iter().map(f).collect::<Vec<_>>())
    };
    for (case, applies, target) in [
        ("policy apply, 1 rule", &r.apply_1, ""),
        ("policy apply, 1000 rules", &r.apply_1000, "< 100 ms"),
    ] {
        println!(
            "{:<52} {:>10.1} {:>12} {:>10}",
            format!("{case}: in force (ms)"),
            ms(applies, |a| a.in_force_ms),
            "",
            target
        );
        for (phase, value) in [
            ("resolve", ms(applies, |a| a.resolve_ms)),
            ("write maps", ms(applies, |a| a.maps_ms)),
        ] {
            println!(
                "{:<52} {:>10.1}",
                format!("{case}: of which {phase} (ms)"),
                value
            );
        }
        println!(
            "{:<52} {:>10.1} {:>12} {:>10}",
            format!("{case}: guardctl end to end (ms)"),
            ms(applies, |a| a.guardctl_ms),
            "",
            ""
        );
    }
}

fn row(case: &str, ns: f64, baseline: Option<f64>, target: &str) -> String {
    let vs = baseline
        .map(|b| format!("{:+.1}%", (ns / b - 1.0) * 100.0))
        .unwrap_or_else(|| "baseline".into());
    format!("{case:<52} {ns:>10.0} {vs:>12} {target:>10}")
}

/// Lets the kernel and guardd finish what arming, disarming or an apply left
/// to do in the background (freeing programs, retiring a generation), so it
/// is not charged to the next measurement.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(500));
}

/// Per-pair time of open+close in each of `n` batches.
fn batches_ns(path: &Path, n: usize) -> Vec<f64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    (0..n)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                // SAFETY: valid path; the fd is closed at once.
                unsafe {
                    let fd = libc::open(c.as_ptr(), libc::O_RDONLY);
                    assert!(
                        fd >= 0,
                        "open {} failed: {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    );
                    libc::close(fd);
                }
            }
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect()
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted[sorted.len() / 2]
}

/// Keeps the measuring thread on one CPU, so migrations add no noise.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A policy protecting `data` with `rules` rules: the first allows this
/// binary, each other one a different small program (so the kernel holds one
/// rule entry per rule, as with many allowed programs).
fn policy(data: &Path, me: &Path, rules: usize) -> anyhow::Result<Value> {
    let others = data.parent().unwrap().join("programs");
    std::fs::create_dir_all(&others)?;
    let mut binaries = vec![me.to_path_buf()];
    for i in 1..rules {
        let program = others.join(format!("program-{i}"));
        std::fs::write(&program, format!("#!/bin/sh\n# allowed program {i}\n"))?;
        binaries.push(program);
    }
    let rules: Vec<Value> = binaries
        .iter()
        .enumerate()
        .map(|(i, binary)| {
            json!({
                "name": format!("rule {i}"),
                "binaries": [binary],
                "access": ["read", "write", "create", "delete", "rename", "setattr"],
                "effect": "allow"
            })
        })
        .collect();
    Ok(json!({ "mode": "enforce", "protected": [{ "path": data, "rules": rules }] }))
}

/// Applies `policy` twice: through guardd's socket (its own in-force time)
/// and with `guardctl policy apply` (end to end, process start included).
fn apply(policy: &Value) -> anyhow::Result<Apply> {
    let reply = control::call(
        Path::new(SOCKET),
        &Request::Apply {
            policy: policy.to_string(),
        },
    )?;
    let in_force_ms = reply["in_force_ms"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("guardd's apply reply has no in_force_ms: {reply}"))?;
    let phase = |name: &str| reply["phases_ms"][name].as_f64().unwrap_or(f64::NAN);
    let (resolve_ms, maps_ms) = (phase("resolve"), phase("maps"));
    let file: PathBuf = std::env::temp_dir().join("guard-bench-policy.json");
    std::fs::write(&file, policy.to_string())?;
    let start = Instant::now();
    let out = guardctl(&["policy", "apply", file.to_str().unwrap()]);
    let guardctl_ms = start.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        out.status.success(),
        "{} policy apply failed: {}",
        bin("guardctl").display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Apply {
        in_force_ms,
        resolve_ms,
        maps_ms,
        guardctl_ms,
    })
}

/// Whether guest time is real time or counts instructions (`cargo xtask
/// bench` sets GUARD_BENCH_CLOCK=instructions when it boots with -icount).
fn clock_note() -> &'static str {
    match std::env::var("GUARD_BENCH_CLOCK").as_deref() {
        Ok("instructions") => "QEMU -icount: 1 ns = 1 guest instruction, independent of host load",
        _ => "real time",
    }
}
