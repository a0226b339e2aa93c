//! The block devices below a protected filesystem's own: the devices a
//! device-mapper target (dm-crypt, LVM) sits on, and the whole disk holding
//! a partition. Writing any of them changes the protected files beneath the
//! guard; reading one shows them in the clear unless a dm-crypt layer lies
//! between it and the filesystem.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How deep device stacks are followed (dm on dm on ...): far beyond real ones.
const MAX_LAYERS: usize = 16;

/// A block device holding (part of) a protected filesystem's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceBelow {
    /// Kernel `dev_t` (`major << 20 | minor`).
    pub dev: u32,
    /// A dm-crypt device lies above it: it holds only ciphertext.
    pub ciphertext: bool,
}

/// The devices below block device `major:minor`, read from `sysfs`
/// (normally `/sys`). Empty for a filesystem without a block device (major
/// 0: tmpfs, NFS, btrfs's anonymous devices). An error names the sysfs file
/// that could not be read, a missing one included: a device guard cannot
/// see below must not be left open.
pub fn devices_below(sysfs: &Path, major: u32, minor: u32) -> Result<Vec<DeviceBelow>, String> {
    if major == 0 {
        return Ok(Vec::new());
    }
    let top = sysfs.join(format!("dev/block/{major}:{minor}"));
    let top = canonical(&top)?;
    let mut found = Vec::new();
    walk(&top, false, 0, &mut found)?;
    found.sort();
    found.dedup();
    Ok(found)
}

/// The block device of the filesystem on kernel `dev_t` `dev` and those
/// below it (empty without one).
pub fn filesystem_devices(sysfs: &Path, dev: u32) -> Result<Vec<DeviceBelow>, String> {
    let (major, minor) = super::resolve::kernel_dev_parts(dev);
    if major == 0 {
        return Ok(Vec::new());
    }
    let mut found = devices_below(sysfs, major, minor)
        .map_err(|e| format!("finding the block devices below {major}:{minor}: {e}"))?;
    found.push(DeviceBelow {
        dev,
        ciphertext: false,
    });
    Ok(found)
}

/// Adds what lies below the device at sysfs folder `device` (which holds
/// ciphertext only if `ciphertext`) to `found`.
fn walk(
    device: &Path,
    ciphertext: bool,
    depth: usize,
    found: &mut Vec<DeviceBelow>,
) -> Result<(), String> {
    if depth > MAX_LAYERS {
        return Err(format!(
            "{}: more than {MAX_LAYERS} layers of block devices",
            device.display()
        ));
    }
    // The whole disk holds the partition's bytes, as they are.
    if device.join("partition").exists() {
        let disk = device
            .parent()
            .ok_or_else(|| format!("{}: a partition without a disk", device.display()))?;
        found.push(DeviceBelow {
            dev: dev_of(disk)?,
            ciphertext,
        });
    }
    let below_is_ciphertext = ciphertext || is_dm_crypt(device);
    let slaves = device.join("slaves");
    let entries = match fs::read_dir(&slaves) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()), // a partition
        Err(e) => return Err(format!("{}: {e}", slaves.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", slaves.display()))?;
        let slave = canonical(&entry.path())?;
        found.push(DeviceBelow {
            dev: dev_of(&slave)?,
            ciphertext: below_is_ciphertext,
        });
        walk(&slave, below_is_ciphertext, depth + 1, found)?;
    }
    Ok(())
}

/// The character devices that pass commands straight to the disk holding
/// block device `dev` (a kernel `dev_t`; a disk or a partition): NVMe's
/// controller and generic namespace nodes (/dev/nvme0, /dev/ng0n1), SCSI
/// generic and bsg nodes (/dev/sg0, /dev/bsg/0:0:0:0). A read command sent
/// through one returns the disk's blocks as the block device would. Found
/// beside the disk's parent device in `sysfs`: an NVMe controller or
/// subsystem (which links its controllers), a SCSI device (whose class
/// folders hold them). Virtual disks (dm, loop, md) have none.
pub fn passthrough_devices(sysfs: &Path, dev: u32) -> Result<Vec<u32>, String> {
    let (major, minor) = super::resolve::kernel_dev_parts(dev);
    if major == 0 {
        return Ok(Vec::new());
    }
    let mut disk = canonical(&sysfs.join(format!("dev/block/{major}:{minor}")))?;
    if disk.join("partition").exists() {
        disk = disk
            .parent()
            .ok_or_else(|| format!("{}: a partition without a disk", disk.display()))?
            .to_path_buf();
    }
    let parent = match fs::canonicalize(disk.join("device")) {
        Ok(parent) => parent,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}/device: {e}", disk.display())),
    };
    let mut found = Vec::new();
    for folder in beside(&parent)? {
        if let Some(char_dev) = char_device(sysfs, &folder)? {
            found.push(char_dev);
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// `parent`, its device links (an NVMe subsystem's controllers), its
/// folders and theirs (SCSI's `scsi_generic/sg0`, `bsg/0:0:0:0`). Other
/// links (`subsystem`, `driver`) lead elsewhere and are not followed.
fn beside(parent: &Path) -> Result<Vec<PathBuf>, String> {
    let list = |dir: &Path| -> Result<Vec<(PathBuf, fs::FileType)>, String> {
        fs::read_dir(dir)
            .and_then(|entries| {
                entries
                    .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?))))
                    .collect()
            })
            .map_err(|e| format!("{}: {e}", dir.display()))
    };
    let mut folders = vec![parent.to_path_buf()];
    for (path, kind) in list(parent)? {
        if kind.is_symlink() {
            if path.join("dev").is_file() {
                folders.push(canonical(&path)?);
            }
        } else if kind.is_dir() {
            for (inner, inner_kind) in list(&path)? {
                if inner_kind.is_dir() {
                    folders.push(inner);
                }
            }
            folders.push(path);
        }
    }
    Ok(folders)
}

/// The kernel `dev_t` of the character device at sysfs folder `folder`:
/// one with a `dev` file that `dev/char/MAJ:MIN` leads back to.
fn char_device(sysfs: &Path, folder: &Path) -> Result<Option<u32>, String> {
    if !folder.join("dev").is_file() {
        return Ok(None);
    }
    let dev = dev_of(folder)?;
    let (major, minor) = super::resolve::kernel_dev_parts(dev);
    let listed = fs::canonicalize(sysfs.join(format!("dev/char/{major}:{minor}")));
    Ok(match listed {
        Ok(listed) if listed == canonical(folder)? => Some(dev),
        _ => None,
    })
}

/// Where the kernel lists its swap areas.
pub const PROC_SWAPS: &str = "/proc/swaps";

/// The block devices the kernel swaps to, and those below them, from
/// `/proc/swaps` (`swaps`, its text) and `sysfs`. A swap device holds pages
/// of every process, the database's included: reading it shows them,
/// writing it changes them before they come back. Swap files are not
/// block devices: they are left to `swap_files`.
pub fn swap_devices(swaps: &str, sysfs: &Path) -> Result<Vec<DeviceBelow>, String> {
    let mut found = Vec::new();
    for (path, kind) in swap_areas(swaps) {
        if kind != "partition" {
            continue;
        }
        let meta = fs::metadata(&path).map_err(|e| format!("swap device {path}: {e}"))?;
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        // Its own bytes are the pages in the clear, dm-crypt or not.
        found.push(DeviceBelow {
            dev: super::resolve::kernel_dev(rdev),
            ciphertext: false,
        });
        found.extend(
            devices_below(sysfs, major, minor)
                .map_err(|e| format!("the block devices below swap device {path}: {e}"))?,
        );
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// A loop device and the file it reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoopDevice {
    /// Its kernel `dev_t`.
    pub dev: u32,
    /// Its backing file as the kernel names it (`sysfs`'s `backing_file`;
    /// ` (deleted)` at the end once unlinked).
    pub backing: PathBuf,
}

/// The loop devices bound to a file, from `sysfs`. A bound device reads
/// and writes its file from the kernel, past every hook of guard's on the
/// file: one set up before the policy shows a protected file in the clear.
pub fn loop_devices(sysfs: &Path) -> Result<Vec<LoopDevice>, String> {
    let block = sysfs.join("block");
    let entries = fs::read_dir(&block).map_err(|e| format!("{}: {e}", block.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", block.display()))?;
        if !entry.file_name().to_string_lossy().starts_with("loop") {
            continue;
        }
        let file = entry.path().join("loop/backing_file");
        let backing = match fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // unbound
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        found.push(LoopDevice {
            dev: dev_of(&entry.path())?,
            backing: PathBuf::from(std::ffi::OsStr::from_bytes(backing)),
        });
    }
    found.sort();
    Ok(found)
}

/// The swap files in `/proc/swaps` (`swaps`, its text).
pub fn swap_files(swaps: &str) -> Vec<String> {
    swap_areas(swaps)
        .filter(|(_, kind)| *kind == "file")
        .map(|(path, _)| path)
        .collect()
}

/// (path, type) of each line of `/proc/swaps` after its header. The kernel
/// escapes blanks in paths as `\040` and so on, as in mountinfo.
fn swap_areas(swaps: &str) -> impl Iterator<Item = (String, &str)> {
    swaps.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let path = fields.next()?;
        let kind = fields.next()?;
        Some((super::resolve::unescape_octal(path), kind))
    })
}

/// cryptsetup names every dm-crypt mapping's uuid `CRYPT-...`.
fn is_dm_crypt(device: &Path) -> bool {
    fs::read_to_string(device.join("dm/uuid")).is_ok_and(|uuid| uuid.starts_with("CRYPT-"))
}

/// The kernel `dev_t` of the device at sysfs folder `device`.
fn dev_of(device: &Path) -> Result<u32, String> {
    let file = device.join("dev");
    let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let parsed = text
        .trim()
        .split_once(':')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)));
    let (major, minor) =
        parsed.ok_or_else(|| format!("{}: not MAJOR:MINOR: {text:?}", file.display()))?;
    Ok(super::resolve::kernel_dev(libc::makedev(major, minor)))
}

fn canonical(path: &Path) -> Result<PathBuf, String> {
    fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: `devices/NAME` folders with a `dev` file, linked from
    /// `dev/block/MAJ:MIN`.
    struct FakeSysfs(tempfile::TempDir);

    impl FakeSysfs {
        fn new() -> FakeSysfs {
            let fake = FakeSysfs(tempfile::tempdir().unwrap());
            fs::create_dir_all(fake.root().join("dev/block")).unwrap();
            fake
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        /// Adds device `path` (relative to `devices/`) as `major:minor`.
        fn device(&self, path: &str, major: u32, minor: u32) -> PathBuf {
            let dir = self.root().join("devices").join(path);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("dev"), format!("{major}:{minor}\n")).unwrap();
            symlink(&dir, self.root().join(format!("dev/block/{major}:{minor}"))).unwrap();
            dir
        }

        fn partition(&self, path: &str, major: u32, minor: u32) -> PathBuf {
            let dir = self.device(path, major, minor);
            fs::write(dir.join("partition"), "1\n").unwrap();
            dir
        }

        fn dm(&self, name: &str, minor: u32, uuid: &str, slaves: &[&Path]) -> PathBuf {
            let dir = self.device(name, 253, minor);
            fs::create_dir_all(dir.join("dm")).unwrap();
            fs::write(dir.join("dm/uuid"), format!("{uuid}\n")).unwrap();
            fs::create_dir_all(dir.join("slaves")).unwrap();
            for slave in slaves {
                symlink(slave, dir.join("slaves").join(slave.file_name().unwrap())).unwrap();
            }
            dir
        }
    }

    fn dev(major: u32, minor: u32) -> u32 {
        (major << 20) | minor
    }

    #[test]
    fn bound_loop_devices_are_found_with_their_files() {
        let sys = FakeSysfs::new();
        fs::create_dir_all(sys.root().join("block")).unwrap();
        for (name, minor, backing) in [
            ("loop0", 0, Some("/data/db/image.bin\n")),
            ("loop1", 1, None), // unbound
            ("loop2", 2, Some("/old/file (deleted)\n")),
            ("vda", 0, None),
        ] {
            let major = if name == "vda" { 254 } else { 7 };
            let dir = sys.device(&format!("virtual/block/{name}"), major, minor);
            symlink(&dir, sys.root().join("block").join(name)).unwrap();
            if let Some(backing) = backing {
                fs::create_dir_all(dir.join("loop")).unwrap();
                fs::write(dir.join("loop/backing_file"), backing).unwrap();
            }
        }
        assert_eq!(
            loop_devices(sys.root()).unwrap(),
            vec![
                LoopDevice {
                    dev: dev(7, 0),
                    backing: PathBuf::from("/data/db/image.bin"),
                },
                LoopDevice {
                    dev: dev(7, 2),
                    backing: PathBuf::from("/old/file (deleted)"),
                },
            ]
        );
    }

    impl FakeSysfs {
        /// Adds character device `path` as `major:minor`.
        fn char_device(&self, path: &str, major: u32, minor: u32) -> PathBuf {
            let dir = self.root().join("devices").join(path);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("dev"), format!("{major}:{minor}\n")).unwrap();
            let links = self.root().join("dev/char");
            fs::create_dir_all(&links).unwrap();
            symlink(&dir, links.join(format!("{major}:{minor}"))).unwrap();
            dir
        }

        /// Links `disk`'s `device` to `parent` (relative to `devices/`).
        fn parent(&self, disk: &Path, parent: &str) -> PathBuf {
            let dir = self.root().join("devices").join(parent);
            fs::create_dir_all(&dir).unwrap();
            symlink(&dir, disk.join("device")).unwrap();
            dir
        }
    }

    #[test]
    fn an_nvme_namespace_with_multipath_exposes_its_generic_node_and_controller() {
        let sys = FakeSysfs::new();
        let disk = sys.device("nvme-subsys0/nvme0n1", 259, 1);
        let subsys = sys.parent(&disk, "nvme-subsys0");
        sys.char_device("nvme-subsys0/ng0n1", 245, 0);
        let controller = sys.char_device("pci0000:00/0000:00:03.0/nvme/nvme0", 246, 0);
        symlink(&controller, subsys.join("nvme0")).unwrap();
        symlink(sys.root().join("devices"), subsys.join("subsystem")).unwrap();
        // A hidden per-path disk is a block device: not listed here.
        sys.device("pci0000:00/0000:00:03.0/nvme/nvme0/nvme0c0n1", 259, 0);
        sys.partition("nvme-subsys0/nvme0n1/nvme0n1p1", 259, 2);
        let expected = vec![dev(245, 0), dev(246, 0)];
        assert_eq!(
            passthrough_devices(sys.root(), dev(259, 1)).unwrap(),
            expected
        );
        assert_eq!(
            passthrough_devices(sys.root(), dev(259, 2)).unwrap(),
            expected
        );
    }

    #[test]
    fn a_scsi_disk_exposes_its_sg_and_bsg_nodes() {
        let sys = FakeSysfs::new();
        let disk = sys.device("host0/target0:0:0/0:0:0:0/block/sda", 8, 0);
        let scsi = sys.parent(&disk, "host0/target0:0:0/0:0:0:0");
        let sg = sys.char_device("host0/target0:0:0/0:0:0:0/scsi_generic/sg0", 21, 0);
        sys.char_device("host0/target0:0:0/0:0:0:0/bsg/0:0:0:0", 247, 0);
        symlink(&sg, scsi.join("generic")).unwrap();
        fs::create_dir_all(scsi.join("scsi_disk/0:0:0:0")).unwrap();
        assert_eq!(
            passthrough_devices(sys.root(), dev(8, 0)).unwrap(),
            vec![dev(21, 0), dev(247, 0)]
        );
    }

    #[test]
    fn virtual_disks_and_filesystems_without_a_device_have_no_passthrough() {
        let sys = FakeSysfs::new();
        sys.device("loop0", 7, 0);
        sys.dm("dm-0", 0, "CRYPT-LUKS2-abc-luks", &[]);
        for device in [dev(7, 0), dev(253, 0), dev(0, 42)] {
            assert!(passthrough_devices(sys.root(), device).unwrap().is_empty());
        }
        let e = passthrough_devices(sys.root(), dev(8, 16)).unwrap_err();
        assert!(e.contains("8:16"), "{e}");
    }

    #[test]
    fn swap_partitions_and_what_they_sit_on_but_not_swap_files() {
        let sys = FakeSysfs::new();
        sys.device("vda", 254, 0);
        // /dev/null stands in for the swap partition's node: its rdev is 1:3.
        sys.partition("vda/vda3", 1, 3);
        let swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                     /dev/null                               partition\t1048572\t\t0\t\t-2\n\
                     /var/swap\\040file                       file\t\t1048572\t\t0\t\t-3\n";
        assert_eq!(
            swap_devices(swaps, sys.root()).unwrap(),
            vec![
                DeviceBelow {
                    dev: dev(1, 3),
                    ciphertext: false
                },
                DeviceBelow {
                    dev: dev(254, 0),
                    ciphertext: false
                },
            ]
        );
        assert_eq!(swap_files(swaps), vec!["/var/swap file".to_string()]);
        assert_eq!(
            swap_devices("Filename Type Size Used Priority\n", sys.root()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn a_swap_device_that_cannot_be_found_is_an_error() {
        let sys = FakeSysfs::new();
        let swaps = "Filename Type Size Used Priority\n/dev/guard-no-such-swap partition 1 0 -2\n";
        let e = swap_devices(swaps, sys.root()).unwrap_err();
        assert!(e.contains("/dev/guard-no-such-swap"), "{e}");
    }

    #[test]
    fn lvm_on_luks_on_a_partition() {
        let sys = FakeSysfs::new();
        sys.device("sda", 8, 0);
        let part = sys.partition("sda/sda2", 8, 2);
        let luks = sys.dm("dm-0", 0, "CRYPT-LUKS2-abc-luks", &[&part]);
        sys.dm("dm-1", 1, "LVM-xyz", &[&luks]);
        let below = devices_below(sys.root(), 253, 1).unwrap();
        assert_eq!(
            below,
            vec![
                // dm-0 is dm-crypt's plaintext side; below it only ciphertext.
                DeviceBelow {
                    dev: dev(8, 0),
                    ciphertext: true
                },
                DeviceBelow {
                    dev: dev(8, 2),
                    ciphertext: true
                },
                DeviceBelow {
                    dev: dev(253, 0),
                    ciphertext: false
                },
            ]
        );
    }

    #[test]
    fn a_plain_partition_exposes_its_disk() {
        let sys = FakeSysfs::new();
        sys.device("vdb", 254, 16);
        sys.partition("vdb/vdb1", 254, 17);
        let below = devices_below(sys.root(), 254, 17).unwrap();
        assert_eq!(
            below,
            vec![DeviceBelow {
                dev: dev(254, 16),
                ciphertext: false
            }]
        );
    }

    #[test]
    fn a_filesystems_devices_are_its_own_and_those_below() {
        let sys = FakeSysfs::new();
        sys.device("vdb", 254, 16);
        sys.partition("vdb/vdb1", 254, 17);
        let plain = |dev| DeviceBelow {
            dev,
            ciphertext: false,
        };
        let mut found = filesystem_devices(sys.root(), dev(254, 17)).unwrap();
        found.sort();
        assert_eq!(found, vec![plain(dev(254, 16)), plain(dev(254, 17))]);
        // tmpfs, NFS, overlayfs: no block device.
        assert_eq!(filesystem_devices(sys.root(), dev(0, 42)).unwrap(), vec![]);
        let err = filesystem_devices(sys.root(), dev(8, 0)).unwrap_err();
        assert!(err.contains("8:0"), "{err}");
    }

    #[test]
    fn a_whole_disk_or_a_filesystem_without_a_device_has_nothing_below() {
        let sys = FakeSysfs::new();
        sys.device("vda", 254, 0);
        assert_eq!(devices_below(sys.root(), 254, 0).unwrap(), vec![]);
        assert_eq!(devices_below(sys.root(), 0, 42).unwrap(), vec![]);
    }

    #[test]
    fn a_block_device_missing_from_sysfs_is_an_error_naming_it() {
        let sys = FakeSysfs::new();
        let err = devices_below(sys.root(), 8, 0).unwrap_err();
        assert!(err.contains("dev/block/8:0"), "{err}");
    }

    #[test]
    fn an_unreadable_device_number_is_an_error_naming_the_file() {
        let sys = FakeSysfs::new();
        let slave = sys.device("loop0", 7, 0);
        fs::write(slave.join("dev"), "garbage").unwrap();
        sys.dm("dm-2", 2, "CRYPT-PLAIN-x", &[&slave]);
        let err = devices_below(sys.root(), 253, 2).unwrap_err();
        assert!(
            err.contains("loop0/dev") && err.contains("MAJOR:MINOR"),
            "{err}"
        );
    }
}
