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

/// On a kernel whose active LSM list lacks `bpf` the programs would attach and
/// never run: guardd must refuse. The list is what securityfs reports; a
/// private mount namespace shows guardd one without `bpf`.
#[test]
fn guardd_refuses_to_start_when_bpf_is_not_an_active_lsm() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("lsm");
    std::fs::write(&fake, "lockdown,capability,landlock,yama,apparmor").unwrap();
    let pins = format!("/sys/fs/bpf/guard-test-lsm-{}", std::process::id());
    let script = format!(
        "set -e; mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security; \
         mount --bind {fake} /sys/kernel/security/lsm; exec {guardd} --pin-dir {pins} --socket {sock} --state-dir {state}",
        fake = fake.display(),
        guardd = env!("CARGO_BIN_EXE_guardd"),
        sock = dir.path().join("s").display(),
        state = dir.path().display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "guardd started: {stderr}");
    assert!(stderr.contains("BPF LSM is not active"), "{stderr}");
    assert!(
        stderr.contains("lsm="),
        "the error says how to fix it: {stderr}"
    );
}
