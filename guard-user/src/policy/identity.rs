//! The (device, inode) guard's hooks see for a file.
//!
//! `stat` usually agrees with the hooks, but not on overlayfs: there it
//! reports a regular file's device as that of the layer holding it, while
//! the hooks see the overlay's superblock. So the device is always taken
//! from the superblock of the mount the file is on (`/proc/self/mountinfo`
//! lists each superblock's device), and where that differs from what `stat`
//! says, the inode number from the open file (`/proc/self/fdinfo`), which is
//! the inode the hooks see.
//!
//! Any other filesystem whose `stat` device differs from its superblock's
//! is refused: btrfs reports a device per subvolume, and each subvolume
//! (each snapshot too) numbers its inodes on its own, so the hooks'
//! (device, inode) names many files there. A directory above a protected
//! one may still be on such a filesystem: nothing may be mounted on it,
//! and naming several directories only refuses more mounts.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{statx, AtFlags, Statx, StatxFlags, CWD};

use super::resolve::{io_problem, kernel_dev};
use crate::events::kernel_dev_string;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Resolves identities; reads the mount table once.
#[derive(Default)]
pub(super) struct Identities {
    devs: Option<HashMap<u64, Superblock>>,
}

/// What the mount table says of a mount's filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Superblock {
    /// Kernel `dev_t` of the superblock (`major:minor`, third field).
    dev: u32,
    /// Filesystem type (first field after the ` - ` separator).
    fstype: String,
}

/// An open file as the hooks see it, with what `fstat` would also give.
pub(super) struct Examined {
    pub dev: u32,
    pub ino: u64,
    pub is_file: bool,
    pub size: u64,
}

/// How a path is looked up: following a final symlink or not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Follow {
    Symlinks,
    NotTheLast,
}

impl Identities {
    /// The identity of what `path` names.
    pub fn of_path(&mut self, path: &Path, follow: Follow) -> Result<(u32, u64), String> {
        let flags = match follow {
            Follow::Symlinks => AtFlags::empty(),
            Follow::NotTheLast => AtFlags::SYMLINK_NOFOLLOW,
        };
        let stat = statx(CWD, path, flags, StatxFlags::INO | StatxFlags::MNT_ID)
            .map_err(|e| io_problem(path, e.into()))?;
        self.resolve(&stat, path, || {
            let mut options = fs::OpenOptions::new();
            options.read(true);
            options.custom_flags(match follow {
                Follow::Symlinks => libc::O_PATH | libc::O_CLOEXEC,
                Follow::NotTheLast => libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            });
            let file = options.open(path).map_err(|e| io_problem(path, e))?;
            fdinfo_ino(&file, path)
        })
    }

    /// The identity, type and size of an open file, from one `statx`.
    pub fn of_file(&mut self, file: &File, path: &Path) -> Result<Examined, String> {
        let wanted = StatxFlags::INO | StatxFlags::MNT_ID | StatxFlags::TYPE | StatxFlags::SIZE;
        let stat = statx(file.as_fd(), "", AtFlags::EMPTY_PATH, wanted)
            .map_err(|e| io_problem(path, e.into()))?;
        let (dev, ino) = self.resolve(&stat, path, || fdinfo_ino(file, path))?;
        Ok(Examined {
            dev,
            ino,
            is_file: u32::from(stat.stx_mode) & libc::S_IFMT == libc::S_IFREG,
            size: stat.stx_size,
        })
    }

    fn resolve(
        &mut self,
        stat: &Statx,
        path: &Path,
        inode_the_hooks_see: impl FnOnce() -> Result<u64, String>,
    ) -> Result<(u32, u64), String> {
        let sb = self.superblock(stat, path)?;
        let reported = kernel_dev(libc::makedev(stat.stx_dev_major, stat.stx_dev_minor));
        if reported == sb.dev {
            return Ok((sb.dev, stat.stx_ino));
        }
        if sb.fstype != "overlay" {
            return Err(format!(
                "{}: on {}, whose files report a device ({}) other than their filesystem's ({}): \
                 its inode numbers repeat (btrfs numbers them per subvolume and snapshot), so \
                 guard's kernel checks could not tell its files apart; use ext4, XFS or \
                 another filesystem with one set of inode numbers",
                path.display(),
                sb.fstype,
                kernel_dev_string(reported),
                kernel_dev_string(sb.dev),
            ));
        }
        Ok((sb.dev, inode_the_hooks_see()?))
    }

    /// The identity of a directory above a protected one: its superblock's
    /// device and `stat`'s inode number, on any filesystem (see the module's
    /// comment).
    pub fn of_ancestor(&mut self, path: &Path) -> Result<(u32, u64), String> {
        let stat = statx(
            CWD,
            path,
            AtFlags::empty(),
            StatxFlags::INO | StatxFlags::MNT_ID,
        )
        .map_err(|e| io_problem(path, e.into()))?;
        Ok((self.superblock(&stat, path)?.dev, stat.stx_ino))
    }

    /// The superblock of the mount `stat` (with STATX_MNT_ID) was taken on.
    fn superblock(&mut self, stat: &Statx, path: &Path) -> Result<Superblock, String> {
        if stat.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
            return Err(format!(
                "{}: the kernel does not report mount ids (statx STATX_MNT_ID)",
                path.display()
            ));
        }
        let mount = stat.stx_mnt_id;
        if self.devs.is_none() {
            self.devs = Some(read_mount_table()?);
        }
        let devs = self.devs.as_ref().expect("just read");
        devs.get(&mount).cloned().ok_or_else(|| {
            format!(
                "{}: its mount ({mount}) is not in {MOUNTINFO}",
                path.display()
            )
        })
    }
}

/// The identity the kernel's hooks see for what `path` names now (symlinks
/// followed), to compare with one recorded at apply.
pub fn kernel_identity(path: &Path) -> Result<(u32, u64), String> {
    Identities::default().of_path(path, Follow::Symlinks)
}

/// The inode number of an open file as the kernel holds it.
fn fdinfo_ino(file: &File, path: &Path) -> Result<u64, String> {
    let fdinfo = format!("/proc/self/fdinfo/{}", file.as_raw_fd());
    let text = fs::read_to_string(&fdinfo).map_err(|e| format!("reading {fdinfo}: {e}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("ino:")?.trim().parse().ok())
        .ok_or_else(|| format!("{fdinfo} has no inode number for {}", path.display()))
}

fn read_mount_table() -> Result<HashMap<u64, Superblock>, String> {
    let text = fs::read_to_string(MOUNTINFO).map_err(|e| format!("reading {MOUNTINFO}: {e}"))?;
    parse_mount_table(&text)
}

/// Mount id -> its superblock, from mountinfo's text.
fn parse_mount_table(text: &str) -> Result<HashMap<u64, Superblock>, String> {
    let parse = |line: &str| -> Option<(u64, Superblock)> {
        let mut fields = line.split(' ');
        let id = fields.next()?.parse().ok()?;
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
        // Optional fields come before the separator; the type follows it.
        let fstype = fields.skip_while(|f| *f != "-").nth(1)?.to_owned();
        Some((
            id,
            Superblock {
                dev: kernel_dev(dev),
                fstype,
            },
        ))
    };
    text.lines()
        .map(|line| parse(line).ok_or_else(|| format!("unexpected line in {MOUNTINFO}: {line:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn on_an_ordinary_filesystem_the_identity_is_what_stat_says() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        let stat = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            (kernel_dev(m.dev()), m.ino())
        };
        let mut ids = Identities::default();
        let link = dir.path().join("link");
        assert_eq!(ids.of_path(&file, Follow::NotTheLast).unwrap(), stat(&file));
        assert_eq!(ids.of_path(&link, Follow::NotTheLast).unwrap(), stat(&link));
        assert_eq!(ids.of_path(&link, Follow::Symlinks).unwrap(), stat(&file));
        let open = File::open(&file).unwrap();
        let examined = ids.of_file(&open, &file).unwrap();
        assert_eq!((examined.dev, examined.ino), stat(&file));
        assert!(examined.is_file);
        assert_eq!(examined.size, 1);
    }

    #[test]
    fn the_mount_table_gives_each_mounts_device_and_type() {
        let text = "\
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            40 22 0:45 / /srv/b rw,relatime shared:9 master:2 - btrfs /dev/vdb rw,subvol=/\n\
            41 22 0:50 / /merged rw - overlay overlay rw,lowerdir=/l\n";
        let table = parse_mount_table(text).unwrap();
        let sb = |id| table[&id].clone();
        assert_eq!(
            sb(22),
            Superblock {
                dev: kernel_dev(libc::makedev(8, 1)),
                fstype: "ext4".into()
            }
        );
        assert_eq!(
            sb(40),
            Superblock {
                dev: kernel_dev(libc::makedev(0, 45)),
                fstype: "btrfs".into()
            }
        );
        assert_eq!(sb(41).fstype, "overlay");
        let error = parse_mount_table("22 1 8:1 / / rw shared:1\n").unwrap_err();
        assert!(error.contains("unexpected line"), "{error}");
    }

    #[test]
    fn a_missing_path_is_named() {
        let mut ids = Identities::default();
        let error = ids
            .of_path(Path::new("/nonexistent/guard"), Follow::Symlinks)
            .unwrap_err();
        assert!(error.contains("/nonexistent/guard"), "{error}");
    }
}
