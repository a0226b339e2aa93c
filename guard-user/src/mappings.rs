//! Mappings of protected files made before a policy was applied.
//!
//! guard checks every use of a descriptor, but a mapping needs no system
//! call to be read, and a shared mapping shows every later write of the
//! database. A process that mapped a protected file before the policy keeps
//! reading it; guard cannot revoke the mapping, so applying a policy names
//! each such process that is not an allowed binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::policy::{kernel_dev, kernel_identity, ResolvedPolicy};

/// One file-backed line of `/proc/PID/maps`.
#[derive(Debug, PartialEq, Eq)]
struct MappedFile {
    /// Kernel `dev_t` of the file's filesystem.
    dev: u32,
    path: PathBuf,
}

/// The file a maps line maps, if any: `start-end perms offset MM:mm inode
/// path`, the device in hex, the path after any run of spaces.
fn parse_maps_line(line: &str) -> Option<MappedFile> {
    let mut rest = line;
    let mut fields = [""; 5];
    for field in &mut fields {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ')?;
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let inode: u64 = fields[4].parse().ok()?;
    let path = rest.trim_start_matches(' ');
    if inode == 0 || !path.starts_with('/') {
        return None;
    }
    let (major, minor) = fields[3].split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    Some(MappedFile {
        dev: kernel_dev(libc::makedev(major, minor)),
        path: PathBuf::from(path),
    })
}

/// The protected files `maps` (one process's) maps, deduplicated, with the
/// protected directory each is in.
fn protected_in(maps: &str, policy: &ResolvedPolicy) -> BTreeMap<PathBuf, PathBuf> {
    maps.lines()
        .filter_map(parse_maps_line)
        .filter_map(|file| {
            let point = policy
                .points
                .iter()
                .find(|p| p.dev == file.dev && file.path.starts_with(&p.path))?;
            Some((file.path, point.path.clone()))
        })
        .collect()
}

/// One warning per process, other than guardd and the policy's binaries,
/// that maps a protected file.
pub fn warnings(policy: &ResolvedPolicy) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec!["could not list /proc to look for mappings of protected files".into()];
    };
    let own = std::process::id();
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != own)
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .filter_map(|pid| warning_for(pid, policy))
        .collect()
}

fn warning_for(pid: u32, policy: &ResolvedPolicy) -> Option<String> {
    let proc = Path::new("/proc").join(pid.to_string());
    // A process that ended meanwhile, or a kernel thread, has nothing to say.
    let maps = std::fs::read_to_string(proc.join("maps")).ok()?;
    let files = protected_in(&maps, policy);
    if files.is_empty() || is_allowed_binary(&proc, policy) {
        return None;
    }
    let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let listed: Vec<String> = files
        .iter()
        .map(|(file, point)| format!("{} (in {})", file.display(), point.display()))
        .collect();
    Some(format!(
        "process {pid} ({}) has mapped {} since before this policy: guard cannot revoke a \
         mapping, which keeps showing the file's contents; stop that process",
        comm.trim(),
        listed.join(", ")
    ))
}

fn is_allowed_binary(proc: &Path, policy: &ResolvedPolicy) -> bool {
    let Ok((dev, ino)) = kernel_identity(&proc.join("exe")) else {
        return false;
    };
    policy
        .rules
        .iter()
        .flat_map(|r| &r.binaries)
        .any(|b| b.dev == dev && b.ino == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_give_the_mapped_file_and_its_device() {
        let line = "7f1c2a000000-7f1c2a001000 r--s 00000000 fe:01 1311  /var/lib/my data/ibdata1";
        assert_eq!(
            parse_maps_line(line),
            Some(MappedFile {
                dev: kernel_dev(libc::makedev(0xfe, 1)),
                path: PathBuf::from("/var/lib/my data/ibdata1"),
            })
        );
        let deleted = "7f1c2a000000-7f1c2a001000 rw-s 00000000 08:11 12 /srv/db/x (deleted)";
        assert_eq!(
            parse_maps_line(deleted).unwrap().path,
            Path::new("/srv/db/x")
        );
        let stack = "7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]";
        assert_eq!(parse_maps_line(stack), None);
        assert_eq!(
            parse_maps_line("55d0c000-55d0d000 rw-p 00000000 00:00 0 "),
            None
        );
        assert_eq!(parse_maps_line("garbage"), None);
    }

    #[test]
    fn only_files_inside_a_protected_directory_on_its_filesystem_count() {
        let dev = kernel_dev(libc::makedev(8, 1));
        let policy = ResolvedPolicy {
            mode: crate::policy::Mode::Enforce,
            hash: String::new(),
            points: vec![crate::policy::ResolvedPoint {
                path: PathBuf::from("/var/lib/mysql"),
                dev,
                ino: 2,
                ancestors: Vec::new(),
                fscrypt: false,
                below: Vec::new(),
            }],
            rules: Vec::new(),
            libraries: None,
            immutable: None,
            swap: Vec::new(),
            loops: Vec::new(),
            trusted_devices: Vec::new(),
            passthrough: Vec::new(),
        };
        let maps = "\
            1000-2000 r--s 00000000 08:01 11 /var/lib/mysql/ibdata1\n\
            2000-3000 r--s 00001000 08:01 11 /var/lib/mysql/ibdata1\n\
            3000-4000 r--p 00000000 08:01 12 /var/lib/mysql-files/x\n\
            4000-5000 r--p 00000000 08:02 13 /var/lib/mysql/on-another-fs\n\
            5000-6000 r-xp 00000000 08:01 14 /usr/lib/libc.so.6\n";
        let found = protected_in(maps, &policy);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec![(
                PathBuf::from("/var/lib/mysql/ibdata1"),
                PathBuf::from("/var/lib/mysql")
            )]
        );
    }
}
