//! The device-mapper control calls guard needs: create a mapping with a
//! one-target table, and remove it. They are made from guardd's own process:
//! while guard is armed the kernel lets nobody else load a table (a mapping
//! over a protected filesystem's device would read it past the raw-device
//! check), so this cannot be handed to `dmsetup`.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const MAPPER_DIR: &str = "/dev/mapper";
const CONTROL: &str = "/dev/mapper/control";
/// misc major 10, minor 236: where the kernel serves `CONTROL`.
const CONTROL_MAJOR: u32 = 10;
const CONTROL_MINOR: u32 = 236;

/// The interface version guard speaks (include/uapi/linux/dm-ioctl.h).
const VERSION: [u32; 3] = [4, 0, 0];
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;
const TYPE_NAME_LEN: usize = 16;

/// Command numbers of `_IOWR(0xfd, nr, struct dm_ioctl)`. `DEV_SUSPEND`
/// without the suspend flag resumes: it makes a loaded table live.
const DEV_CREATE: u8 = 3;
const DEV_REMOVE: u8 = 4;
const DEV_SUSPEND: u8 = 6;
const TABLE_LOAD: u8 = 9;

/// `struct dm_ioctl`: the header of every call.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; NAME_LEN],
    uuid: [u8; UUID_LEN],
    data: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<Header>() == 312);

/// `struct dm_target_spec`, followed by its NUL-terminated parameters.
#[repr(C)]
#[derive(Clone, Copy)]
struct TargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; TYPE_NAME_LEN],
}
const _: () = assert!(std::mem::size_of::<TargetSpec>() == 40);

/// One line of a table: `sectors` long from sector 0, of `target` with `params`.
pub struct Target<'a> {
    pub sectors: u64,
    pub target: &'a str,
    pub params: &'a str,
}

/// Creates mapping `name` (`uuid`) with `target` as its whole table, active
/// and with its node in /dev/mapper. On failure nothing is left behind.
pub fn create(name: &str, uuid: &str, target: &Target) -> Result<PathBuf> {
    let control = open_control()?;
    call(&control, DEV_CREATE, &Call::new(name, uuid)?)
        .with_context(|| format!("creating device-mapper device {name}"))?;
    let dev = load_and_resume(&control, name, target).and_then(|dev| make_node(name, dev));
    match dev {
        Ok(node) => Ok(node),
        Err(e) => {
            let _ = call(&control, DEV_REMOVE, &Call::new(name, "")?);
            Err(e)
        }
    }
}

/// Removes mapping `name` and its node. The kernel refuses while it is in
/// use (a mounted filesystem).
pub fn remove(name: &str) -> Result<()> {
    let control = open_control()?;
    call(&control, DEV_REMOVE, &Call::new(name, "")?)
        .with_context(|| format!("removing device-mapper device {name}"))?;
    match std::fs::remove_file(node_path(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", node_path(name).display()))
        }
        _ => Ok(()),
    }
}

pub fn node_path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

/// Loads the table and makes it live; returns the device number.
fn load_and_resume(control: &File, name: &str, target: &Target) -> Result<u64> {
    let load = Call::new(name, "")?.with_target(target)?;
    call(control, TABLE_LOAD, &load)
        .with_context(|| format!("loading the table of device-mapper device {name}"))?;
    let reply = call(control, DEV_SUSPEND, &Call::new(name, "")?)
        .with_context(|| format!("activating device-mapper device {name}"))?;
    Ok(reply.dev)
}

/// The block node, as udev would make it (there may be no udev).
fn make_node(name: &str, dev: u64) -> Result<PathBuf> {
    let node = node_path(name);
    match mknod(&node, libc::S_IFBLK | 0o600, dev) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(node),
        Err(e) => Err(e).with_context(|| format!("creating {}", node.display())),
        Ok(()) => Ok(node),
    }
}

/// /dev/mapper/control, made first if devtmpfs did not (as dmsetup does).
fn open_control() -> Result<File> {
    let control = Path::new(CONTROL);
    let is_control = std::fs::metadata(control).is_ok_and(|m| m.file_type().is_char_device());
    if !is_control {
        std::fs::create_dir_all(MAPPER_DIR).with_context(|| format!("creating {MAPPER_DIR}"))?;
        let dev = libc::makedev(CONTROL_MAJOR, CONTROL_MINOR);
        mknod(control, libc::S_IFCHR | 0o600, dev)
            .with_context(|| format!("creating {CONTROL} (is dm_mod loaded?)"))?;
        std::fs::set_permissions(control, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {CONTROL}"))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control)
        .with_context(|| format!("opening {CONTROL}"))
}

fn mknod(path: &Path, mode: libc::mode_t, dev: u64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path and plain integers.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev as libc::dev_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The memory of one call: the header, then its data (a target), in words
/// so that the kernel's 8-byte structures are aligned.
struct Call {
    words: Vec<u64>,
}

impl Call {
    fn new(name: &str, uuid: &str) -> Result<Call> {
        let mut header = Header {
            version: VERSION,
            data_size: std::mem::size_of::<Header>() as u32,
            data_start: std::mem::size_of::<Header>() as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; NAME_LEN],
            uuid: [0; UUID_LEN],
            data: [0; 7],
        };
        copy_str(&mut header.name, name, "device-mapper name")?;
        copy_str(&mut header.uuid, uuid, "device-mapper uuid")?;
        let mut call = Call {
            words: vec![0; std::mem::size_of::<Header>() / 8],
        };
        call.put(0, &header);
        Ok(call)
    }

    /// Appends `target` as the call's one target.
    fn with_target(mut self, target: &Target) -> Result<Call> {
        let spec_at = std::mem::size_of::<Header>();
        let params_at = spec_at + std::mem::size_of::<TargetSpec>();
        let end = (params_at + target.params.len() + 1).next_multiple_of(8);
        let mut spec = TargetSpec {
            sector_start: 0,
            length: target.sectors,
            status: 0,
            next: (end - spec_at) as u32,
            target_type: [0; TYPE_NAME_LEN],
        };
        copy_str(
            &mut spec.target_type,
            target.target,
            "device-mapper target type",
        )?;
        if target.params.contains('\0') {
            bail!("device-mapper parameters contain a NUL");
        }
        self.words.resize(end / 8, 0);
        self.put(spec_at, &spec);
        self.bytes_mut()[params_at..params_at + target.params.len()]
            .copy_from_slice(target.params.as_bytes());
        let mut header = self.header();
        header.data_size = end as u32;
        header.target_count = 1;
        self.put(0, &header);
        Ok(self)
    }

    fn header(&self) -> Header {
        // SAFETY: the words start with a Header (written by `new`), and
        // every bit pattern is a valid Header.
        unsafe { std::ptr::read(self.words.as_ptr() as *const Header) }
    }

    fn put<T: Copy>(&mut self, at: usize, value: &T) {
        assert!(at + std::mem::size_of::<T>() <= self.words.len() * 8);
        // SAFETY: in bounds (checked); T is a plain repr(C) struct.
        unsafe {
            std::ptr::write_unaligned(
                (self.words.as_mut_ptr() as *mut u8).add(at) as *mut T,
                *value,
            )
        };
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.words.len() * 8;
        // SAFETY: the words' own memory, as bytes.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, len) }
    }
}

/// Makes call `nr` with `call`'s memory; returns the header the kernel
/// wrote back.
fn call(control: &File, nr: u8, call: &Call) -> Result<Header> {
    let mut words = call.words.clone();
    let size = std::mem::size_of::<Header>() as libc::c_ulong;
    let request = (3 << 30) | (size << 16) | (0xfd << 8) | nr as libc::c_ulong;
    // SAFETY: `words` holds a header whose data_size is at most its length.
    let ret = unsafe { libc::ioctl(control.as_raw_fd(), request as _, words.as_mut_ptr()) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(Call { words }.header())
}

fn copy_str(into: &mut [u8], text: &str, what: &str) -> Result<()> {
    if text.len() >= into.len() || text.contains('\0') {
        bail!("{what} {text:?} is too long or contains a NUL");
    }
    into[..text.len()].copy_from_slice(text.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_load_lays_out_header_spec_and_parameters_as_the_kernel_reads_them() {
        let target = Target {
            sectors: 2048,
            target: "crypt",
            params: "aes-xts-plain64 :64:logon:guard:db 0 /dev/vdb 0",
        };
        let call = Call::new("guard-db", "")
            .unwrap()
            .with_target(&target)
            .unwrap();
        let header = call.header();
        let bytes: Vec<u8> = call.words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(header.version, VERSION);
        assert_eq!(header.target_count, 1);
        assert_eq!(header.data_start, 312);
        assert_eq!(header.data_size as usize, bytes.len());
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(&header.name[..9], b"guard-db\0");
        let spec = &bytes[312..352];
        assert_eq!(u64::from_ne_bytes(spec[8..16].try_into().unwrap()), 2048);
        assert_eq!(&spec[24..30], b"crypt\0");
        let params = &bytes[352..352 + target.params.len() + 1];
        assert_eq!(&params[..target.params.len()], target.params.as_bytes());
        assert_eq!(params[target.params.len()], 0, "NUL-terminated");
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        assert!(Call::new(&"n".repeat(NAME_LEN), "").is_err());
        assert!(Call::new("a\0b", "").is_err());
        assert!(Call::new("ok", &"u".repeat(UUID_LEN)).is_err());
    }
}
