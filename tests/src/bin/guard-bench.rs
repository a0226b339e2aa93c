//! Enforcement benchmark, run as root inside a guest by `cargo xtask bench`.
//!
//! Measures open()+close() latency with the guard not loaded and loaded, in
//! the same run, on a file outside any protected directory and on an allowed
//! file inside one (this binary is the allowed program), with 1 and with 1,000
//! rules; and the time `guardctl policy apply` takes for 1 and 1,000 rules.
//! Prints one table; ratios are against the baseline measured in this run.

use guard::loader::{self, Pins};
use guard_tests::guest::{bin, guardctl, Guardd};
use serde_json::{json, Value};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// open+close pairs per timed batch, and batches per measurement.
const BATCH: usize = 200;
const BATCHES: usize = 400;

fn main() -> anyhow::Result<()> {
    let root = Path::new("/scratch/bench");
    let _ = std::fs::remove_dir_all(root);
    let outside = root.join("outside/file");
    let inside = root.join("data/file");
    for f in [&outside, &inside] {
        std::fs::create_dir_all(f.parent().unwrap())?;
        std::fs::write(f, b"benchmark")?;
    }
    let me = std::env::current_exe()?;
    let pins = Pins::new(loader::DEFAULT_PIN_DIR);
    loader::disarm(&pins)?;

    let mut rows = Vec::new();
    let base_out_1 = median_open_ns(&outside);
    let base_in_1 = median_open_ns(&inside);

    let guardd = Guardd::start();
    let apply_1 = apply_ms(&policy(&root.join("data"), &me, 1))?;
    let guard_out = median_open_ns(&outside);
    let guard_in_1 = median_open_ns(&inside);
    let apply_1000 = apply_ms(&policy(&root.join("data"), &me, 1000))?;
    let guard_in_1000 = median_open_ns(&inside);
    let guard_out_1000 = median_open_ns(&outside);
    drop(guardd);
    loader::disarm(&pins)?;

    // Baseline again after disarming: the mean of both runs absorbs drift.
    let base_out = (base_out_1 + median_open_ns(&outside)) / 2.0;
    let base_in = (base_in_1 + median_open_ns(&inside)) / 2.0;

    rows.push(row("open+close outside, no guard", base_out, None, ""));
    rows.push(row(
        "open+close outside, guard (1 rule)",
        guard_out,
        Some(base_out),
        "<= +3%",
    ));
    rows.push(row(
        "open+close outside, guard (1000 rules)",
        guard_out_1000,
        Some(base_out),
        "<= +3%",
    ));
    rows.push(row(
        "open+close allowed inside, no guard",
        base_in,
        None,
        "",
    ));
    rows.push(row(
        "open+close allowed inside, guard (1 rule)",
        guard_in_1,
        Some(base_in),
        "<= +10%",
    ));
    rows.push(row(
        "open+close allowed inside, guard (1000 rules)",
        guard_in_1000,
        Some(base_in),
        "<= +10%",
    ));
    rows.push(row(
        "allowed inside: 1000 rules vs 1 rule",
        guard_in_1000,
        Some(guard_in_1),
        "no growth",
    ));

    println!("guard enforcement benchmark");
    println!("kernel: {}", read_trim("/proc/sys/kernel/osrelease"));
    println!("cpu: {}", cpu_model());
    println!("method: median of {BATCHES} batches of {BATCH} open(O_RDONLY)+close, ns per pair");
    println!();
    println!(
        "{:<48} {:>12} {:>14} {:>10}",
        "case", "ns/op", "vs baseline", "target"
    );
    for r in &rows {
        println!("{r}");
    }
    println!(
        "{:<48} {:>12.1} {:>14} {:>10}",
        "policy apply, 1 rule (ms)", apply_1, "", ""
    );
    println!(
        "{:<48} {:>12.1} {:>14} {:>10}",
        "policy apply, 1000 rules (ms)", apply_1000, "", "< 100 ms"
    );
    Ok(())
}

fn row(case: &str, ns: f64, baseline: Option<f64>, target: &str) -> String {
    let vs = baseline
        .map(|b| format!("{:+.1}%", (ns / b - 1.0) * 100.0))
        .unwrap_or_else(|| "baseline".into());
    format!("{case:<48} {ns:>12.0} {vs:>14} {target:>10}")
}

/// Median over batches of the per-pair time of open+close.
fn median_open_ns(path: &Path) -> f64 {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut samples: Vec<f64> = (0..BATCHES)
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
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// A policy protecting `data` with `rules` rules, each allowing this binary
/// for a different uid (uid 0 = root, which runs the benchmark, comes first).
fn policy(data: &Path, me: &Path, rules: usize) -> Value {
    let rules: Vec<Value> = (0..rules)
        .map(|i| {
            json!({
                "name": format!("rule {i}"),
                "binaries": [me],
                "uid": i,
                "access": ["read", "write", "create", "delete", "rename", "setattr"],
                "effect": "allow"
            })
        })
        .collect();
    json!({ "mode": "enforce", "protected": [{ "path": data, "rules": rules }] })
}

/// Wall time of `guardctl policy apply`, end to end, in milliseconds.
fn apply_ms(policy: &Value) -> anyhow::Result<f64> {
    let file: PathBuf = std::env::temp_dir().join("guard-bench-policy.json");
    std::fs::write(&file, policy.to_string())?;
    let start = Instant::now();
    let out = guardctl(&["policy", "apply", file.to_str().unwrap()]);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        out.status.success(),
        "{} policy apply failed: {}",
        bin("guardctl").display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(ms)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
