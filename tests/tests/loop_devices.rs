//! Guest tests: loop devices bound to protected files.
//!
//! The loop driver reads and writes its backing file from the kernel, past
//! every hook of guard's on the file. A loop device bound to a protected
//! file before the policy was applied showed the file in the clear to root
//! afterwards (buffered and direct I/O alike, checked on 6.12). Binding one
//! afterwards needs the file opened, which guard refuses. So the apply keeps
//! such devices like a protected filesystem's own and says so.

use guard::events::KEPT_BLOCK_DEVICE;
use guard_tests::guest::*;
use std::io::Read;
use std::path::{Path, PathBuf};

const RECORD: &str = "patient record 4711 on a loop device\n";

/// Loop devices, detached (and guard disarmed) when dropped.
struct Loops(Vec<PathBuf>);

impl Loops {
    fn bind(&mut self, file: &Path, direct_io: bool) -> PathBuf {
        let direct = if direct_io { "--direct-io=on" } else { "" };
        let out = sh(&format!(
            "losetup --find --show {direct} {}",
            file.display()
        ));
        assert_ok(&out, "losetup");
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        self.0.push(device.clone());
        device
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        disarm();
        for device in &self.0 {
            let _ = sh(&format!("losetup -d {}", device.display()));
        }
    }
}

/// The first bytes of `device`, read by this (not allowed) process.
fn head(device: &Path) -> std::io::Result<String> {
    let mut bytes = vec![0u8; RECORD.len()];
    std::fs::File::open(device)?.read_exact(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn image(path: &Path) {
    std::fs::write(path, RECORD).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_loop_device_bound_to_a_protected_file_before_the_policy_is_kept() {
    disarm();
    assert_ok(&sh("modprobe loop"), "modprobe loop");
    let sb = Sandbox::new("loop-bound");
    let protected = sb.file("image.bin");
    image(&protected);
    let elsewhere = sb.root.join("other.bin");
    image(&elsewhere);
    let mut loops = Loops(Vec::new());
    let buffered = loops.bind(&protected, false);
    let direct = loops.bind(&protected, true);
    let unrelated = loops.bind(&elsewhere, false);
    // Without guard, the devices show the file.
    for device in [&buffered, &direct] {
        assert_eq!(head(device).unwrap(), RECORD);
    }

    let _guardd = Guardd::start();
    let out = apply(&sb.policy("enforce"));
    assert_open_eperm(&protected);
    for device in [&buffered, &direct] {
        let error = head(device).expect_err("a loop device showed the protected file");
        assert_eq!(
            error.raw_os_error(),
            Some(EPERM),
            "{}: {error}",
            device.display()
        );
        assert!(!device_denials(KEPT_BLOCK_DEVICE, device).is_empty());
        let bound = format!(
            "loop device {} is bound to {}",
            device_numbers(device),
            protected.display()
        );
        assert!(
            stderr(&out).contains(&bound) && applied_policy_warnings().contains(&bound),
            "no warning {bound:?}: {}",
            stderr(&out)
        );
    }
    // A loop device of a file outside the protected directory stays usable,
    // and the allowed program still reads its file.
    assert_eq!(head(&unrelated).unwrap(), RECORD);
    let out = sb.allowed_run("head", &["-c", "20", protected.to_str().unwrap()]);
    assert_ok(&out, "the allowed binary reading the protected file");
    assert_eq!(String::from_utf8_lossy(&out.stdout), &RECORD[..20]);
}

/// "major:minor" of a device node.
fn device_numbers(node: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(node).unwrap().rdev();
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}
