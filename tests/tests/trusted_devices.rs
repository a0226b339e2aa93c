//! Guest tests: the block devices beneath the files guard trusts by identity.
//!
//! guard knows an allowed binary (and its supervisor, relays, approved
//! libraries and immutable files) by device and inode. Root writing the
//! file's blocks through its filesystem's block device changes the file
//! beneath every hook: once the page cache lets go of it, the next start of
//! the allowed binary runs root's code under the allowed identity. So while
//! a policy is active nobody but guardd may write those devices; they may
//! still be read (the files are not secret).

use guard::events::KEPT_BLOCK_DEVICE;
use guard_tests::guest::*;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// Appended to the allowed binary's copy, to find its blocks on the device.
const MARKER: &[u8] = b"GUARD-TRUSTED-BINARY-MARKER-7f3a9c";
/// What root writes over the marker through the device.
const FORGED: &[u8] = b"ROOT-WROTE-THIS-THROUGH-THE-DEVICE";

/// Writes `bytes` at `offset` of `device` and makes the filesystem's next
/// read of the file come from the disk.
fn write_through_device(device: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(device)?;
    file.write_all_at(bytes, offset)?;
    file.sync_all()?;
    drop_caches();
    Ok(())
}

fn contains(path: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn the_device_beneath_an_allowed_binary_can_be_read_but_not_written() {
    disarm();
    let fs = LoopFs::mount("trusted-binary-fs");
    let binary = fs.mountpoint.join("busybox");
    std::fs::copy("/bin/busybox", &binary).unwrap();
    let mut copy = OpenOptions::new().append(true).open(&binary).unwrap();
    std::io::Write::write_all(&mut copy, MARKER).unwrap();
    drop(copy);
    drop_caches();
    let offset = find_on_device(&fs.device, MARKER).expect("the binary's bytes on the device");

    // Without guard, root changes the binary through the device: the file
    // shows root's bytes once the page cache is dropped.
    write_through_device(&fs.device, offset, FORGED).unwrap();
    assert!(
        contains(&binary, FORGED),
        "the write through the device did not reach the file"
    );
    write_through_device(&fs.device, offset, MARKER).unwrap();
    assert!(contains(&binary, MARKER));

    let sb = Sandbox::new("trusted-binary");
    let _guardd = Guardd::start();
    let mut policy = sb.policy("enforce");
    policy["protected"][0]["rules"][0]["binaries"] = json!([binary]);
    apply(&policy);

    let written = write_through_device(&fs.device, offset, FORGED);
    assert_eq!(
        written.err().and_then(|e| e.raw_os_error()),
        Some(EPERM),
        "{} opened for writing by root with a policy active",
        fs.device.display()
    );
    let entries = device_denials(KEPT_BLOCK_DEVICE, &fs.device);
    assert!(
        entries.iter().any(|e| e["GUARD_ACCESS"]
            .as_str()
            .is_some_and(|a| a.contains("write"))),
        "no write denial of {} in {entries:?}",
        fs.device.display()
    );
    assert!(contains(&binary, MARKER) && !contains(&binary, FORGED));

    // Reading the device stays possible (the binary is not secret), and the
    // allowed binary still reads its data.
    File::open(&fs.device).expect("the device opened for reading");
    assert_eq!(find_on_device(&fs.device, MARKER), Some(offset));
    let out = Command::new(&binary)
        .args(["cat", sb.file("secret.txt").to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out, "the allowed binary reading its data");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "patient record 4711\n"
    );
}
