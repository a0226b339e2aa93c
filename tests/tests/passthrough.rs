//! Guest test: a disk's command passthrough nodes. Besides its block device
//! (/dev/nvme0n1), an NVMe disk has a generic node per namespace
//! (/dev/ng0n1) and a controller node (/dev/nvme0): root sends read commands
//! through them and gets the disk's blocks, the protected files' included.
//! guard keeps them like the block device of a protected filesystem, and
//! checks a kept device's descriptors on every use: one opened before the
//! policy, and one opened for reading where only writing is kept (the kernel
//! takes root's write commands through it).

use guard::fscrypt;
use guard::keyring::{self, SecretKey};
use guard_tests::guest::*;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DISK: &str = "/dev/nvme0n1";
const GENERIC: &str = "/dev/ng0n1";
const CONTROLLER: &str = "/dev/nvme0";
const MOUNT: &str = "/scratch/nvme";
const MARKER: &str = "GUARD-NVME-MARKER patient 4711 diagnosis";
use guard::events::{KEPT_BLOCK_DEVICE as KEPT_BLOCK, KEPT_PASSTHROUGH_DEVICE as KEPT_PASSTHROUGH};

/// The guest's NVMe disk (xtask's `nvme.img`), formatted for fscrypt and
/// mounted; unmounted (after disarming) when dropped.
struct NvmeVolume {
    mnt: PathBuf,
}

impl NvmeVolume {
    fn new() -> NvmeVolume {
        let mnt = PathBuf::from(MOUNT);
        let _ = sh(&format!("umount -l {MOUNT}"));
        std::fs::create_dir_all(&mnt).unwrap();
        assert_ok(
            &sh(&format!("mkfs.ext4 -q -F -b 4096 -O encrypt {DISK}")),
            "mkfs.ext4",
        );
        assert_ok(&sh(&format!("mount {DISK} {MOUNT}")), "mount");
        NvmeVolume { mnt }
    }

    /// A new directory encrypted with fscrypt under a fresh key, unlocked.
    fn encrypted_dir(&self, name: &str) -> PathBuf {
        let dir = self.mnt.join(name);
        std::fs::create_dir(&dir).unwrap();
        let key = SecretKey::random(64).unwrap();
        let provisioning =
            keyring::add_fscrypt_provisioning_key("guard-test:passthrough", &key).unwrap();
        let id = fscrypt::add_key_by_serial(&self.mnt, provisioning.serial).unwrap();
        provisioning.invalidate().unwrap();
        fscrypt::set_policy(&dir, &id).unwrap();
        dir
    }
}

impl Drop for NvmeVolume {
    fn drop(&mut self) {
        disarm();
        let _ = sh(&format!("umount -l {}", self.mnt.display()));
    }
}

/// `struct nvme_passthru_cmd` (include/uapi/linux/nvme_ioctl.h).
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

/// `NVME_IOCTL_IO_CMD`: `_IOWR('N', 0x43, struct nvme_passthru_cmd)`.
const NVME_IOCTL_IO_CMD: libc::c_ulong = 0xc048_4e43;
/// `NVME_URING_CMD_IO`: `_IOWR('N', 0x80, struct nvme_uring_cmd)`, whose
/// layout is `struct nvme_passthru_cmd`'s (72 bytes).
const NVME_URING_CMD_IO: u32 = 0xc048_4e80;
const NVME_CMD_WRITE: u8 = 0x01;
const NVME_CMD_READ: u8 = 0x02;
/// QEMU's NVMe disks have 512-byte blocks.
const BLOCK: u64 = 512;
const BLOCKS_PER_READ: u32 = 128;
/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// An NVMe read or write of `buffer.len() / BLOCK` blocks at `lba` of
/// namespace 1.
fn io_command(opcode: u8, lba: u64, buffer: &mut [u8]) -> PassthruCmd {
    PassthruCmd {
        opcode,
        nsid: 1,
        addr: buffer.as_mut_ptr() as u64,
        data_len: buffer.len() as u32,
        cdw10: lba as u32,
        cdw11: (lba >> 32) as u32,
        cdw12: (buffer.len() as u64 / BLOCK) as u32 - 1,
        ..Default::default()
    }
}

/// Sends an NVMe I/O command through `file` with an ioctl.
fn nvme_ioctl(file: &File, opcode: u8, lba: u64, buffer: &mut [u8]) -> std::io::Result<()> {
    let mut cmd = io_command(opcode, lba, buffer);
    // SAFETY: cmd points at a buffer of data_len bytes that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_IO_CMD, &mut cmd) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends an NVMe I/O command through `file` (a generic node) with io_uring.
fn nvme_uring(file: &File, opcode: u8, lba: u64, buffer: &mut [u8]) -> std::io::Result<()> {
    let cmd = io_command(opcode, lba, buffer);
    let mut bytes = [0u8; 80];
    // SAFETY: PassthruCmd is 72 plain bytes, the layout of struct nvme_uring_cmd.
    let raw: [u8; 72] = unsafe { std::mem::transmute(cmd) };
    bytes[..72].copy_from_slice(&raw);
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry32> = IoUring::builder().build(4)?;
    let entry = opcode::UringCmd80::new(types::Fd(file.as_raw_fd()), NVME_URING_CMD_IO)
        .cmd(bytes)
        .build();
    // SAFETY: the command's buffer outlives the submission, waited for below.
    unsafe { ring.submission().push(&entry) }.expect("a free submission slot");
    ring.submit_and_wait(1)?;
    let result = ring.completion().next().expect("a completion").result();
    if result < 0 {
        return Err(std::io::Error::from_raw_os_error(-result));
    }
    Ok(())
}

/// Reads the whole of namespace 1 with NVMe read commands sent through
/// `node`; whether `marker` is in its blocks.
fn passthrough_read_finds(node: &Path, marker: &str) -> bool {
    let file = OpenOptions::new().read(true).open(node).unwrap();
    let mut buffer = vec![0u8; (BLOCK * BLOCKS_PER_READ as u64) as usize];
    let mut lba = 0u64;
    while lba * BLOCK < disk_bytes() {
        nvme_ioctl(&file, NVME_CMD_READ, lba, &mut buffer)
            .unwrap_or_else(|e| panic!("NVMe read at block {lba} through {}: {e}", node.display()));
        if buffer.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            return true;
        }
        lba += BLOCKS_PER_READ as u64;
    }
    false
}

fn disk_bytes() -> u64 {
    // sysfs counts 512-byte sectors whatever the block size.
    let sectors = std::fs::read_to_string("/sys/block/nvme0n1/size").unwrap();
    sectors.trim().parse::<u64>().unwrap() * 512
}

/// The disk's last block (unused by a small filesystem), read through the
/// block device and written back unchanged with an NVMe write command
/// through `generic`, opened read-only.
fn rewrite_last_block(generic: &File, send: SendCommand) -> std::io::Result<()> {
    let lba = disk_bytes() / BLOCK - 1;
    let mut block = vec![0u8; BLOCK as usize];
    let mut disk = File::open(DISK).unwrap();
    std::io::Seek::seek(&mut disk, std::io::SeekFrom::Start(lba * BLOCK)).unwrap();
    disk.read_exact(&mut block).unwrap();
    send(generic, NVME_CMD_WRITE, lba, &mut block)
}

type SendCommand = fn(&File, u8, u64, &mut [u8]) -> std::io::Result<()>;

fn open_errno(node: &str, write: bool) -> Option<i32> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(node)
        .err()
        .and_then(|e| e.raw_os_error())
}

fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

/// guard's DENIED journal entries about `node` that came through `hook`.
/// Waits for a denial of `node` through `hook` in the journal.
fn assert_denied_through(what: &str, node: &str, hook: &str) {
    let matches = [
        format!("MESSAGE_ID={}", guard::journal::message_id::DENIED),
        format!("GUARD_PATH={}", device_alert_path(what, Path::new(node))),
        format!("GUARD_HOOK={hook}"),
    ];
    let matches: Vec<&str> = matches.iter().map(String::as_str).collect();
    if let Err(e) = guard_tests::wait_for_journal_entries(&matches, 1, Duration::from_secs(15)) {
        panic!("no journal alert for {node} through {hook}: {e:#}");
    }
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn the_nvme_passthrough_nodes_of_a_protected_disk_are_kept_like_its_block_device() {
    disarm();
    let volume = NvmeVolume::new();
    let sb = Sandbox::new("passthrough");
    let data = volume.mnt.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let secret = data.join("record.txt");
    std::fs::write(&secret, format!("{MARKER}\n").repeat(64)).unwrap();
    let encrypted = volume.encrypted_dir("encrypted");
    std::fs::write(encrypted.join("record.txt"), "encrypted record\n").unwrap();
    assert_ok(&sh("sync"), "sync");
    // Without guard the techniques work: the plaintext comes back, and a
    // descriptor opened only for reading takes a write command.
    assert!(
        passthrough_read_finds(Path::new(GENERIC), MARKER),
        "no marker through {GENERIC} without guard: the test proves nothing"
    );
    let early_generic = File::open(GENERIC).unwrap();
    let early_disk = File::open(DISK).unwrap();
    rewrite_last_block(&early_generic, nvme_ioctl)
        .expect("an NVMe write through a read-only descriptor");
    rewrite_last_block(&early_generic, nvme_uring)
        .expect("an io_uring NVMe write through a read-only descriptor");

    let _guardd = Guardd::start();
    let mut policy = sb.policy("enforce");
    policy["protected"][0]["path"] = serde_json::json!(data);
    apply(&policy);

    for node in [DISK, GENERIC, CONTROLLER] {
        for write in [false, true] {
            assert_eq!(
                open_errno(node, write),
                Some(EPERM),
                "{node} opened (write: {write}) by root with guard armed"
            );
        }
    }
    let entries = device_denials(KEPT_PASSTHROUGH, Path::new(GENERIC));
    assert!(!entries.is_empty());

    // Descriptors opened before the policy: every use is refused.
    let mut buffer = vec![0u8; BLOCK as usize];
    assert_eq!(
        errno((&early_disk).read(&mut buffer)),
        Some(EPERM),
        "read(2) of {DISK}"
    );
    // SAFETY: a shared read-only map of one page, unmapped if it succeeds.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            early_disk.as_raw_fd(),
            0,
        )
    };
    assert_eq!(map, libc::MAP_FAILED, "{DISK} mapped");
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(EPERM));
    assert_eq!(
        errno(nvme_ioctl(&early_generic, NVME_CMD_READ, 0, &mut buffer)),
        Some(EPERM),
        "NVMe read ioctl through {GENERIC}"
    );
    assert_eq!(
        errno(nvme_uring(&early_generic, NVME_CMD_READ, 0, &mut buffer)),
        Some(EPERM),
        "io_uring NVMe read through {GENERIC}"
    );
    assert_denied_through(KEPT_BLOCK, DISK, "file_permission");
    assert_denied_through(KEPT_BLOCK, DISK, "mmap_file");
    assert_denied_through(KEPT_PASSTHROUGH, GENERIC, "file_ioctl");
    assert_denied_through(KEPT_PASSTHROUGH, GENERIC, "uring_cmd");
    // The database's own reads go on.
    let out = sb.allowed_run("cat", &[secret.to_str().unwrap()]);
    assert_ok(&out, "the allowed program reading its file");

    // Only an encrypted directory protected: the disk holds ciphertext, so
    // root may open it for reading, but not write through that descriptor.
    policy["protected"][0]["path"] = serde_json::json!(encrypted);
    apply(&policy);
    let generic = File::open(GENERIC).expect("reading the disk of an encrypted directory");
    let mut disk = File::open(DISK).expect("reading the disk of an encrypted directory");
    disk.read_exact(&mut buffer).expect("read(2) of ciphertext");
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKGETSIZE64, &mut size) };
    assert_eq!((rc, size), (0, disk_bytes()), "udev's size probe");
    for (send, hook) in [
        (nvme_ioctl as SendCommand, "file_ioctl"),
        (nvme_uring, "uring_cmd"),
    ] {
        assert_eq!(
            errno(rewrite_last_block(&generic, send)),
            Some(EPERM),
            "an NVMe write through a read-only descriptor ({hook})"
        );
    }
    assert_eq!(
        open_errno(DISK, true),
        Some(EPERM),
        "{DISK} opened for writing"
    );
    let out = sb.allowed_run("cat", &[encrypted.join("record.txt").to_str().unwrap()]);
    assert_ok(&out, "the allowed program reading its encrypted file");
}
