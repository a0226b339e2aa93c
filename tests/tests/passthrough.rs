//! Guest test: a disk's command passthrough nodes. Besides its block device
//! (/dev/nvme0n1), an NVMe disk has a generic node per namespace
//! (/dev/ng0n1) and a controller node (/dev/nvme0): root sends read commands
//! through them and gets the disk's blocks, the protected files' included.
//! guard keeps them like the block device of a protected filesystem.

use guard_tests::guest::*;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const DISK: &str = "/dev/nvme0n1";
const GENERIC: &str = "/dev/ng0n1";
const CONTROLLER: &str = "/dev/nvme0";
const MOUNT: &str = "/scratch/nvme";
const MARKER: &str = "GUARD-NVME-MARKER patient 4711 diagnosis";

/// The guest's NVMe disk (xtask's `nvme.img`), formatted and mounted;
/// unmounted (after disarming) when dropped.
struct NvmeVolume {
    mnt: PathBuf,
}

impl NvmeVolume {
    fn new() -> NvmeVolume {
        let mnt = PathBuf::from(MOUNT);
        let _ = sh(&format!("umount -l {MOUNT}"));
        std::fs::create_dir_all(&mnt).unwrap();
        assert_ok(&sh(&format!("mkfs.ext4 -q -F {DISK}")), "mkfs.ext4");
        assert_ok(&sh(&format!("mount {DISK} {MOUNT}")), "mount");
        NvmeVolume { mnt }
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
const NVME_CMD_READ: u8 = 0x02;
/// QEMU's NVMe disks have 512-byte blocks.
const BLOCK: u64 = 512;
const BLOCKS_PER_READ: u32 = 128;

/// Reads the whole of namespace 1 with NVMe read commands sent through
/// `node`; whether `marker` is in its blocks.
fn passthrough_read_finds(node: &Path, marker: &str) -> bool {
    let file = OpenOptions::new().read(true).open(node).unwrap();
    // sysfs counts 512-byte sectors whatever the block size.
    let sectors = std::fs::read_to_string("/sys/block/nvme0n1/size").unwrap();
    let disk_bytes = sectors.trim().parse::<u64>().unwrap() * 512;
    let mut buffer = vec![0u8; (BLOCK * BLOCKS_PER_READ as u64) as usize];
    let mut lba = 0u64;
    while lba * BLOCK < disk_bytes {
        let mut cmd = PassthruCmd {
            opcode: NVME_CMD_READ,
            nsid: 1,
            addr: buffer.as_mut_ptr() as u64,
            data_len: buffer.len() as u32,
            cdw10: lba as u32,
            cdw11: (lba >> 32) as u32,
            cdw12: BLOCKS_PER_READ - 1,
            ..Default::default()
        };
        // SAFETY: cmd points at a buffer of data_len bytes that outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_IO_CMD, &mut cmd) };
        assert_eq!(
            rc,
            0,
            "NVMe read at block {lba} through {}: {}",
            node.display(),
            std::io::Error::last_os_error()
        );
        if buffer.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            return true;
        }
        lba += BLOCKS_PER_READ as u64;
    }
    false
}

fn open_errno(node: &str, write: bool) -> Option<i32> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(node)
        .err()
        .and_then(|e| e.raw_os_error())
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
    assert_ok(&sh("sync"), "sync");
    // Without guard the technique works: the plaintext comes back.
    assert!(
        passthrough_read_finds(Path::new(GENERIC), MARKER),
        "no marker through {GENERIC} without guard: the test proves nothing"
    );

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
    let entries = device_denials(
        "a device passing commands to a disk guard keeps",
        Path::new(GENERIC),
    );
    assert!(!entries.is_empty());
    // The database's own reads go on.
    let out = sb.allowed_run("cat", &[secret.to_str().unwrap()]);
    assert_ok(&out, "the allowed program reading its file");
}
