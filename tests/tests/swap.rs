//! Guest test: swap. The kernel swaps out pages of every process, the
//! database's included. guard keeps each swap device (and what it sits on)
//! like a protected filesystem's own device: nobody but guardd reads or
//! writes it, since reading shows the pages and writing changes them before
//! they come back. A swap file is an ordinary file guard cannot keep from
//! root's reads: applying a policy warns about it. Nobody but guardd may
//! turn on a swap area while a policy is active.

use guard::journal::message_id;
use guard_tests::guest::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = "/scratch/swap";

/// Swap areas made for the test, turned off (after disarming) when dropped.
struct SwapAreas {
    device: String,
    file: PathBuf,
}

impl SwapAreas {
    /// Made and turned on.
    fn new(root: &Path) -> SwapAreas {
        let areas = SwapAreas::made(root);
        for area in areas.names() {
            assert_ok(&sh(&format!("swapon {area}")), "swapon");
        }
        areas
    }

    /// Made, not turned on.
    fn made(root: &Path) -> SwapAreas {
        let image = root.join("swap-device.img");
        let file = root.join("swapfile");
        for path in [&image, &file] {
            assert_ok(
                &sh(&format!(
                    "dd if=/dev/zero of={0} bs=1M count=16 status=none && chmod 600 {0}",
                    path.display()
                )),
                "making a swap area",
            );
        }
        let out = sh(&format!("losetup -f --show {}", image.display()));
        assert_ok(&out, "losetup");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let areas = SwapAreas { device, file };
        for area in areas.names() {
            assert_ok(&sh(&format!("mkswap -q {area}")), "mkswap");
        }
        areas
    }

    fn names(&self) -> [String; 2] {
        [self.device.clone(), self.file.display().to_string()]
    }
}

impl Drop for SwapAreas {
    fn drop(&mut self) {
        disarm();
        let _ = sh(&format!("swapoff {}", self.file.display()));
        let _ = sh(&format!("swapoff {} && losetup -d {0}", self.device));
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn a_swap_device_cannot_be_read_or_written_and_a_swap_file_is_warned_about() {
    disarm();
    let root = Path::new(ROOT);
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let swap = SwapAreas::new(root);
    let sb = Sandbox::new("swap-policy");
    let guardd = Guardd::start();
    let out = apply(&sb.policy("enforce"));
    let warning = format!(
        "swap file {}: memory of allowed programs swapped out there can be read",
        swap.file.display()
    );
    assert!(
        stderr(&out).contains(&warning),
        "no warning: {}",
        stderr(&out)
    );

    let device = Path::new(&swap.device);
    assert_open_eperm(device);
    let written = std::fs::OpenOptions::new().write(true).open(device);
    assert_eq!(
        written.err().and_then(|e| e.raw_os_error()),
        Some(EPERM),
        "{} opened for writing",
        swap.device
    );
    let entries = device_denials(guard::events::KEPT_BLOCK_DEVICE, device);
    assert!(!entries.is_empty());
    drop(guardd);
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn no_swap_area_can_be_turned_on_while_a_policy_is_active() {
    disarm();
    let root = Path::new("/scratch/swap-later");
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let swap = SwapAreas::made(root);
    let sb = Sandbox::new("swapon-policy");
    let guardd = Guardd::start();
    apply(&sb.policy("enforce"));

    for area in swap.names() {
        assert_eperm(&sh(&format!("swapon {area}")), &format!("swapon {area}"));
        let entries = journal_entries(
            message_id::DENIED,
            "GUARD_PATH",
            &area,
            Duration::from_secs(15),
        );
        assert!(
            entries.iter().any(|e| e["GUARD_RULE"] == "swap"),
            "no swap alert for {area}: {entries:?}"
        );
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    for area in swap.names() {
        assert!(!swaps.contains(&area), "{area} is on: {swaps}");
    }

    // Without guard the same area turns on (the refusal was guard's).
    drop(guardd);
    disarm();
    let file = swap.file.display().to_string();
    assert_ok(&sh(&format!("swapon {file}")), "swapon without guard");
}
