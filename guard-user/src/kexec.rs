//! Kernels loaded for kexec before a policy was applied.
//!
//! A crash kernel (kdump) boots when this kernel panics, with this kernel's
//! memory left in place and readable as `/proc/vmcore` by whatever its
//! initramfs runs: the volume keys and the database's pages with it. A
//! kernel loaded for `kexec -e` starts over memory that still holds them.
//! While a policy is active guard refuses new loads (`kernel_load_data`,
//! `kernel_read_file`); those loaded earlier guardd unloads when it applies
//! a policy.

use std::io;

/// A kernel image slot of kexec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The kernel `kexec -e` (or `systemctl kexec`) jumps into.
    Reboot,
    /// kdump's crash kernel, booted on a panic.
    Crash,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::Reboot, Slot::Crash];

    fn sysfs(self) -> &'static str {
        match self {
            Slot::Reboot => "/sys/kernel/kexec_loaded",
            Slot::Crash => "/sys/kernel/kexec_crash_loaded",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Slot::Reboot => {
                "a kernel loaded for kexec (it would start over memory that still holds the keys \
                 and the database's pages)"
            }
            Slot::Crash => {
                "the crash kernel (kdump: on a panic it boots with this kernel's memory, the keys \
                 and the database's pages included, readable as /proc/vmcore)"
            }
        }
    }

    /// Whether the kernel holds an image in this slot; a kernel without
    /// kexec has none.
    pub fn is_loaded(self) -> io::Result<bool> {
        match std::fs::read_to_string(self.sysfs()) {
            Ok(text) => Ok(text.trim() != "0"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unloads the slot's image. `kexec_file_load`'s unload empties the slot
    /// whichever call loaded it and, unlike `kexec_load`'s, is not refused
    /// by the kernel's lockdown.
    fn unload(self) -> io::Result<()> {
        const KEXEC_FILE_UNLOAD: libc::c_ulong = 0x1;
        const KEXEC_FILE_ON_CRASH: libc::c_ulong = 0x2;
        let flags = match self {
            Slot::Reboot => KEXEC_FILE_UNLOAD,
            Slot::Crash => KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH,
        };
        let no_fd: libc::c_int = -1;
        let no_cmdline: *const libc::c_char = std::ptr::null();
        // SAFETY: an unload reads no file descriptor and no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_kexec_file_load,
                no_fd,
                no_fd,
                0 as libc::c_ulong,
                no_cmdline,
                flags,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Unloads every kexec image the kernel holds. One line per image found,
/// for the apply's warnings: what was unloaded, or why it could not be.
pub fn unload_loaded_kernels() -> Vec<String> {
    Slot::ALL
        .into_iter()
        .filter_map(|slot| match unload_if_loaded(slot) {
            Ok(false) => None,
            Ok(true) => Some(format!(
                "unloaded {}; no kernel can be loaded for kexec while a policy is active",
                slot.describe()
            )),
            Err(e) => Some(format!(
                "could not unload {}: {e}; it stays loaded",
                slot.describe()
            )),
        })
        .collect()
}

fn unload_if_loaded(slot: Slot) -> io::Result<bool> {
    if !slot.is_loaded()? {
        return Ok(false);
    }
    slot.unload()?;
    if slot.is_loaded()? {
        return Err(io::Error::other(
            "the kernel still lists it after the unload",
        ));
    }
    Ok(true)
}
