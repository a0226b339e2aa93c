//! guardd refuses to load, naming the field, when the kernel's layout cannot
//! be fully resolved. Runs on the host: resolution happens before any load.

use std::process::Command;

/// A copy of the running kernel's BTF in which `mm_struct.exe_file` is renamed,
/// as on a kernel that lacks the field.
fn btf_without_exe_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let needle = b"\0exe_file\0";
    let at = btf
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("exe_file in the BTF strings");
    btf[at + 1..at + 9].copy_from_slice(b"exe_fXle");
    let path = dir.join("vmlinux");
    std::fs::write(&path, btf).unwrap();
    path
}

#[test]
fn guardd_refuses_to_start_and_names_a_field_missing_from_btf() {
    let dir = tempfile::tempdir().unwrap();
    let btf = btf_without_exe_file(dir.path());
    let pin_dir = format!("/sys/fs/bpf/guard-test-{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_guardd"))
        .args(["--btf", btf.to_str().unwrap(), "--pin-dir", &pin_dir])
        .args(["--socket", dir.path().join("s").to_str().unwrap()])
        .args(["--state-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&pin_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "guardd started: {stderr}");
    assert!(stderr.contains("mm_struct.exe_file"), "{stderr}");
    assert!(stderr.contains("refusing to load"), "{stderr}");
}
