//! What machine a benchmark ran on, for the header of its report.

/// The running kernel's release (`uname -r`), or "" if unreadable.
pub fn kernel_release() -> String {
    read_trimmed("/proc/sys/kernel/osrelease")
}

/// The clock source the kernel uses (`tsc`, `kvm-clock`, ...), or "" if unreadable.
pub fn clocksource() -> String {
    read_trimmed("/sys/devices/system/clocksource/clocksource0/current_clocksource")
}

/// The CPU's model name from /proc/cpuinfo, or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
