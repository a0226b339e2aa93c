//! Decision events from the kernel ring buffer, rendered for the journal.

use crate::journal::{field, message_id, Journal};
use guard_common::{
    access, bpf_uapi, flags, hook, lockdown, tamper, verdict, Event, ExeKey, CRASH_DUMP_POINT,
    IMMUTABLE_POINT, KERNEL_SETTING_POINT, LIBRARY_POINT, NO_RULE, PINS_POINT, SECRET_POINT,
    SWAPON_POINT,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How an alert's `GUARD_PATH` names a block device guard keeps (followed
/// by its major:minor).
pub const KEPT_BLOCK_DEVICE: &str =
    "a block device guard keeps (beneath protected directories, files guard trusts, or swap)";
/// How an alert's `GUARD_PATH` names a passthrough node of a kept disk.
pub const KEPT_PASSTHROUGH_DEVICE: &str = "a device passing commands to a disk guard keeps";

/// Names the daemon knows for the numbers in an event (from the applied policy).
#[derive(Clone, Debug, Default)]
pub struct PolicyNames {
    /// Protected directory path by point index.
    pub points: Vec<PathBuf>,
    /// Rule label by rule id.
    pub rules: Vec<String>,
    /// Allowed binaries' paths by identity.
    pub binaries: HashMap<ExeKey, PathBuf>,
}

/// Reads an event out of a ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data; the record may be unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

/// An event rendered with names: what goes into the journal and the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: &'static str,
    pub path: String,
    pub point: String,
    pub inode: u64,
    pub device: String,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: String,
    pub access: String,
    pub rule: String,
    pub hook: &'static str,
    pub fail_closed: bool,
}

impl Decision {
    /// Journals the decision: a stable MESSAGE_ID and PRIORITY per verdict,
    /// a readable MESSAGE and one field per fact.
    pub fn send_to(&self, journal: &Journal) -> std::io::Result<()> {
        let (id, priority) = match self.verdict {
            "denied" => (message_id::DENIED, "4"),
            "audited" => (message_id::AUDITED, "5"),
            _ => (message_id::WOULD_DENY, "4"),
        };
        let (inode, pid, uid, gid) = (
            self.inode.to_string(),
            self.pid.to_string(),
            self.uid.to_string(),
            self.gid.to_string(),
        );
        let message = self.message();
        let mut fields = vec![
            ("MESSAGE_ID", id),
            ("MESSAGE", message.as_str()),
            ("PRIORITY", priority),
            ("SYSLOG_IDENTIFIER", "guardd"),
            (field::PATH, self.path.as_str()),
            (field::INODE, inode.as_str()),
            (field::DEVICE, self.device.as_str()),
            (field::PID, pid.as_str()),
            (field::UID, uid.as_str()),
            (field::GID, gid.as_str()),
            (field::COMM, self.comm.as_str()),
            (field::EXE, self.exe.as_str()),
            (field::ACCESS, self.access.as_str()),
            (field::VERDICT, self.verdict),
            (field::RULE, self.rule.as_str()),
            (field::HOOK, self.hook),
        ];
        if self.fail_closed {
            fields.push(("GUARD_FAIL_CLOSED", "1"));
        }
        journal.send(&fields)
    }

    pub fn from_event(e: &Event, names: &PolicyNames) -> Self {
        if hook::is_process(e.hook) || hook::is_bpf(e.hook) {
            return Self::from_process_event(e, names);
        }
        let point = names.points.get(e.point as usize);
        let rule = if e.point == PINS_POINT {
            "self-protection".into()
        } else if e.point == IMMUTABLE_POINT {
            "immutable".into()
        } else if e.point == LIBRARY_POINT {
            "approved-libraries".into()
        } else if e.point == CRASH_DUMP_POINT {
            "crash-dumps".into()
        } else if e.point == KERNEL_SETTING_POINT {
            "kernel-settings".into()
        } else if e.point == SWAPON_POINT {
            "swap".into()
        } else if e.point == SECRET_POINT {
            "guard-secrets".into()
        } else {
            rule_label(e.rule, names)
        };
        Decision {
            verdict: verdict_name(e.verdict),
            path: object_path(point.map(PathBuf::as_path), e),
            point: point.map(|p| p.display().to_string()).unwrap_or_default(),
            inode: e.ino,
            device: kernel_dev_string(e.dev),
            pid: e.tgid,
            tid: e.pid,
            uid: e.uid,
            gid: e.gid,
            comm: c_string(&e.comm),
            exe: exe_path(e, names),
            access: access_names(e.access),
            rule,
            hook: hook::name(e.hook),
            fail_closed: e.flags & flags::FAIL_CLOSED != 0,
        }
    }

    /// An attempt on a guarded process: `path` names the process and its binary.
    fn from_process_event(e: &Event, names: &PolicyNames) -> Self {
        let path = if hook::is_bpf(e.hook) {
            bpf_object(e)
        } else {
            let target_exe = identity_path(e.target, e.dev, e.ino, names);
            format!("process {} ({target_exe})", e.target)
        };
        Decision {
            verdict: verdict_name(e.verdict),
            path,
            point: String::new(),
            inode: e.ino,
            device: kernel_dev_string(e.dev),
            pid: e.tgid,
            tid: e.pid,
            uid: e.uid,
            gid: e.gid,
            comm: c_string(&e.comm),
            exe: exe_path(e, names),
            access: process_access(e),
            rule: "self-protection".into(),
            hook: reported_hook(e),
            fail_closed: e.flags & flags::FAIL_CLOSED != 0,
        }
    }

    /// The audit trail's record of this decision.
    pub fn audit_event(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["kind"] = self.verdict.into();
        v
    }

    /// One readable sentence.
    pub fn message(&self) -> String {
        let what = match self.verdict {
            "denied" => "denied",
            "audited" => "allowed (audited)",
            _ => "would deny (audit mode)",
        };
        format!(
            "guard {what} {} of {} by {} (pid {}, uid {}, rule: {})",
            self.access, self.path, self.exe, self.pid, self.uid, self.rule
        )
    }
}

/// The hook an attempt came through. A kept device's events name the hook
/// it was used through in `detail` (opened, read, mapped, sent a command).
fn reported_hook(e: &Event) -> &'static str {
    match e.hook {
        hook::RAW_DEVICE | hook::PASSTHROUGH_DEVICE if e.detail != 0 => hook::name(e.detail),
        _ => hook::name(e.hook),
    }
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        verdict::DENIED => "denied",
        verdict::AUDITED => "audited",
        verdict::WOULD_DENY => "would-deny",
        _ => "unknown",
    }
}

/// Comma-separated policy names of the access bits.
pub fn access_names(bits: u32) -> String {
    access::NAMES
        .iter()
        .chain([("mount", access::MOUNT)].iter())
        .filter(|(_, bit)| bits & bit != 0)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

/// What a refused lockdown question was about: kernel memory, or (integrity)
/// the kernel's own name of what was tried.
fn kernel_lockdown(id: u64) -> String {
    let (code, reason) = lockdown::split_event_id(id);
    if code == lockdown::KERNEL_INTEGRITY {
        let name = crate::offsets::lockdown_reason_name(reason)
            .unwrap_or_else(|| format!("lockdown reason {reason}"));
        return format!("{} ({name})", lockdown::describe(code.into()));
    }
    format!("kernel memory ({})", lockdown::describe(code.into()))
}

/// Which of guard's BPF objects, or what kind of program, an attempt was about.
fn bpf_object(e: &Event) -> String {
    match e.hook {
        hook::BPF_MAP => format!("guard's bpf map (id {})", e.ino),
        hook::BPF_PROG => format!("guard's bpf program (id {})", e.ino),
        hook::SB_UMOUNT => format!("bpffs holding guard's pins ({})", kernel_dev_string(e.dev)),
        hook::PROTECTED_FS => format!(
            "filesystem holding protected directories ({})",
            kernel_dev_string(e.dev)
        ),
        hook::XFS_HANDLE_ATTRS => format!(
            "extended attributes by XFS handle ({}) on a filesystem holding protected directories ({})",
            if e.detail == guard_common::xfs_handle::ATTRLIST_BY_HANDLE {
                "XFS_IOC_ATTRLIST_BY_HANDLE"
            } else {
                "XFS_IOC_ATTRMULTI_BY_HANDLE"
            },
            kernel_dev_string(e.dev)
        ),
        hook::KERNEL_MEMORY => kernel_lockdown(e.ino),
        hook::PERF_EVENT_OPEN => format!(
            "perf samples of process memory or registers (sample_type {:#x})",
            e.ino
        ),
        hook::FILE_IOCTL => "a device-mapper table (/dev/mapper/control)".into(),
        hook::TASK_PRCTL => format!(
            "replacing its own executable (prctl PR_SET_MM, {})",
            if e.ino == guard_common::prctl::PR_SET_MM_MAP {
                "PR_SET_MM_MAP"
            } else {
                "PR_SET_MM_EXE_FILE"
            }
        ),
        hook::PASSTHROUGH_DEVICE => {
            format!("{KEPT_PASSTHROUGH_DEVICE} ({})", kernel_dev_string(e.dev))
        }
        hook::RAW_DEVICE => format!("{KEPT_BLOCK_DEVICE} ({})", kernel_dev_string(e.dev)),
        hook::ANCESTOR_MOUNT | hook::ANCESTOR_RENAME => format!(
            "a directory guard keeps in place: above a protected one, or immutable ({}, inode {})",
            kernel_dev_string(e.dev),
            e.ino
        ),
        hook::KERNEL_READ_FILE | hook::KERNEL_LOAD_DATA if e.access & tamper::KEXEC != 0 => {
            "loading a new kernel (kexec)".into()
        }
        hook::KERNEL_READ_FILE | hook::KERNEL_LOAD_DATA => "loading a kernel module".into(),
        _ => match e.detail {
            bpf_uapi::BPF_PROG_LOAD => {
                let kind = bpf_uapi::DANGEROUS_PROG_TYPES
                    .iter()
                    .find(|(_, t)| u64::from(*t) == e.ino)
                    .map(|(name, _)| *name)
                    .unwrap_or("unknown");
                format!("BPF_PROG_LOAD of a {kind} program")
            }
            bpf_uapi::BPF_LINK_GET_FD_BY_ID => format!("guard's bpf link (id {})", e.ino),
            bpf_uapi::BPF_LINK_DETACH => "BPF_LINK_DETACH".into(),
            cmd => format!("bpf command {cmd}"),
        },
    }
}

/// What was tried on a process: `ptrace-attach`, `signal:SIGKILL`, ...
fn process_access(e: &Event) -> String {
    let mut names: Vec<&str> = tamper::NAMES
        .iter()
        .filter(|(_, bit)| e.access & bit != 0)
        .map(|(name, _)| *name)
        .collect();
    // Mounts and raw devices carry file access bits (mount, read, write).
    let file_access = access_names(e.access);
    if !file_access.is_empty() {
        names.push(&file_access);
    }
    let mut text = names.join(",");
    if e.access & tamper::SIGNAL != 0 {
        text.push(':');
        text.push_str(&signal_name(e.detail));
    }
    text
}

fn signal_name(sig: u32) -> String {
    let name = match sig as i32 {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        _ => return format!("signal {sig}"),
    };
    name.into()
}

fn rule_label(rule: u32, names: &PolicyNames) -> String {
    if rule == NO_RULE {
        return "default-deny".into();
    }
    names
        .rules
        .get(rule as usize)
        .cloned()
        .unwrap_or_else(|| format!("rule #{rule}"))
}

/// The protected directory joined with the components the kernel collected.
fn object_path(point: Option<&Path>, e: &Event) -> String {
    let mut path = match point {
        // Opened under another filesystem's path (an overlay's): the
        // components go up to that filesystem's root. Looked up afresh:
        // such mounts come and go, and their devices are reused.
        _ if e.flags & flags::BENEATH != 0 => mount_point_uncached(e.detail)
            .map(|m| m.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("<filesystem {}>", kernel_dev_string(e.detail))),
        Some(p) => p.display().to_string(),
        None if e.point == PINS_POINT => "<guard pins>".into(),
        // A file anywhere (immutable, mapped executable, a crash dump): the
        // components up to its filesystem's root, under that filesystem's
        // mount point.
        None if [
            IMMUTABLE_POINT,
            LIBRARY_POINT,
            CRASH_DUMP_POINT,
            KERNEL_SETTING_POINT,
            SWAPON_POINT,
            SECRET_POINT,
        ]
        .contains(&e.point) =>
        {
            mount_point(e.dev)
                .map(|m| m.trim_end_matches('/').to_string())
                .unwrap_or_default()
        }
        None => "<unknown>".into(),
    };
    if e.flags & flags::PATH_TRUNCATED != 0 {
        path.push_str("/...");
    }
    path + &join_components(&e.path)
}

/// The caller's executable: an allowed binary's policy path, else the path the
/// kernel collected under the mount point of its filesystem, else /proc.
fn exe_path(e: &Event, names: &PolicyNames) -> String {
    let key = ExeKey {
        dev: e.exe_dev,
        _pad: 0,
        ino: e.exe_ino,
    };
    if let Some(p) = names.binaries.get(&key) {
        return p.display().to_string();
    }
    // The kernel reports no executable for a kernel thread, and none when a
    // failed read forced the decision (then /proc may still know it).
    if key == ExeKey::default() && e.flags & flags::FAIL_CLOSED == 0 {
        return format!("kernel thread {}", c_string(&e.comm));
    }
    let components = join_components(&e.exe_path);
    if !components.is_empty() {
        if let Some(mount) = mount_point(e.exe_dev) {
            let dots = if e.flags & flags::EXE_TRUNCATED != 0 {
                "/..."
            } else {
                ""
            };
            return format!("{}{dots}{components}", mount.trim_end_matches('/'));
        }
    }
    std::fs::read_link(format!("/proc/{}/exe", e.tgid))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| {
            format!(
                "<unknown> dev {} ino {}{components}",
                kernel_dev_string(e.exe_dev),
                e.exe_ino
            )
        })
}

/// The path of the executable `(dev, ino)` that process `tgid` runs.
fn identity_path(tgid: u32, dev: u32, ino: u64, names: &PolicyNames) -> String {
    let key = ExeKey { dev, _pad: 0, ino };
    if let Some(p) = names.binaries.get(&key) {
        return p.display().to_string();
    }
    // The process may be gone by now; then say what identity it had.
    std::fs::read_link(format!("/proc/{tgid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("<exited> dev {} ino {ino}", kernel_dev_string(dev)))
}

/// "/a/b/c" from components collected nearest first.
fn join_components<const N: usize>(names: &[[u8; N]]) -> String {
    let mut path = String::new();
    for name in names.iter().rev() {
        let name = c_string(name);
        // A walk that reached its filesystem's root also copied the root's
        // name, "/".
        if !name.is_empty() && name != "/" {
            path.push('/');
            path.push_str(&name);
        }
    }
    path
}

/// Where the filesystem with kernel device `dev` is mounted (its root, not a
/// bind mount of a subfolder), from /proc/self/mountinfo, cached.
fn mount_point(dev: u32) -> Option<String> {
    use std::sync::{Mutex, OnceLock};
    // Misses are cached too: a flood of events must not reread the table.
    static CACHE: OnceLock<Mutex<HashMap<u32, Option<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = cache.lock().unwrap().get(&dev) {
        return m.clone();
    }
    let found = mount_point_uncached(dev);
    cache.lock().unwrap().insert(dev, found.clone());
    found
}

/// Where the root of filesystem `dev` is mounted, from guardd's mount table.
fn mount_point_uncached(dev: u32) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let (major, minor) = f.get(2)?.split_once(':')?;
        let this = (major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?;
        (this == dev && *f.get(3)? == "/").then(|| f.get(4).map(|m| m.to_string()))?
    })
}

/// "major:minor" of a kernel-encoded dev_t.
pub fn kernel_dev_string(dev: u32) -> String {
    let (major, minor) = crate::policy::kernel_dev_parts(dev);
    format!("{major}:{minor}")
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::{EXE_DEPTH, NAME_LEN, PATH_DEPTH};

    fn event() -> Event {
        let mut path = [[0u8; NAME_LEN]; PATH_DEPTH];
        path[0][..7].copy_from_slice(b"t1.ibd\0");
        path[1][..5].copy_from_slice(b"shop\0");
        Event {
            verdict: verdict::DENIED,
            access: access::READ | access::WRITE,
            hook: hook::FILE_OPEN,
            flags: 0,
            pid: 41,
            tgid: 40,
            uid: 0,
            gid: 0,
            point: 0,
            rule: NO_RULE,
            generation: 1,
            _pad: 0,
            dev: (8 << 20) | 1,
            exe_dev: (8 << 20) | 1,
            ino: 1234,
            exe_ino: 99,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
            path,
            target: 0,
            detail: 0,
            exe_path: [[0; NAME_LEN]; EXE_DEPTH],
        }
    }

    #[test]
    fn renders_path_access_and_default_rule() {
        let names = PolicyNames {
            points: vec!["/var/lib/mysql".into()],
            binaries: [(
                ExeKey {
                    dev: (8 << 20) | 1,
                    _pad: 0,
                    ino: 99,
                },
                "/usr/bin/cat".into(),
            )]
            .into(),
            ..Default::default()
        };
        let d = Decision::from_event(&event(), &names);
        assert_eq!(d.path, "/var/lib/mysql/shop/t1.ibd");
        assert_eq!(d.access, "read,write");
        assert_eq!(d.rule, "default-deny");
        assert_eq!(d.exe, "/usr/bin/cat");
        assert_eq!(d.device, "8:1");
        assert_eq!(d.pid, 40);
        assert!(d
            .message()
            .contains("denied read,write of /var/lib/mysql/shop/t1.ibd"));
    }

    #[test]
    fn a_signal_to_guardd_is_rendered_with_its_name_and_target() {
        let mut e = event();
        e.hook = hook::TASK_KILL;
        e.access = tamper::SIGNAL;
        e.detail = libc::SIGKILL as u32;
        e.target = 77;
        e.path = [[0u8; NAME_LEN]; PATH_DEPTH];
        let names = PolicyNames {
            binaries: [(
                ExeKey {
                    dev: (8 << 20) | 1,
                    _pad: 0,
                    ino: 1234,
                },
                "/usr/sbin/guardd".into(),
            )]
            .into(),
            ..Default::default()
        };
        let d = Decision::from_event(&e, &names);
        assert_eq!(d.hook, "task_kill");
        assert_eq!(d.access, "signal:SIGKILL");
        assert_eq!(d.path, "process 77 (/usr/sbin/guardd)");
        assert_eq!(d.rule, "self-protection");
        assert!(d.message().contains("denied signal:SIGKILL of process 77"));
    }

    #[test]
    fn replacing_the_executable_is_named() {
        let mut e = event();
        e.hook = hook::TASK_PRCTL;
        e.access = tamper::EXE_SWITCH;
        e.ino = guard_common::prctl::PR_SET_MM_EXE_FILE;
        let d = Decision::from_event(&e, &PolicyNames::default());
        assert_eq!(d.hook, "task_prctl");
        assert_eq!(d.access, "exe-switch");
        assert_eq!(
            d.path,
            "replacing its own executable (prctl PR_SET_MM, PR_SET_MM_EXE_FILE)"
        );
        assert_eq!(d.rule, "self-protection");
    }

    #[test]
    fn renaming_a_directory_above_a_protected_one_is_named() {
        let mut e = event();
        e.hook = hook::ANCESTOR_RENAME;
        e.access = guard_common::access::RENAME;
        e.dev = (8 << 20) | 1;
        e.ino = 4242;
        let d = Decision::from_event(&e, &PolicyNames::default());
        assert_eq!(d.hook, "inode_rename");
        assert_eq!(d.access, "rename");
        assert_eq!(
            d.path,
            "a directory guard keeps in place: above a protected one, or immutable (8:1, inode 4242)"
        );
        assert_eq!(d.rule, "self-protection");
    }

    #[test]
    fn a_ptrace_attach_is_named() {
        let mut e = event();
        e.hook = hook::PTRACE_ACCESS_CHECK;
        e.access = tamper::PTRACE_ATTACH;
        e.detail = guard_common::PTRACE_MODE_ATTACH;
        let d = Decision::from_event(&e, &PolicyNames::default());
        assert_eq!(d.access, "ptrace-attach");
        assert_eq!(d.hook, "ptrace_access_check");
    }

    #[test]
    fn a_kept_device_is_reported_with_the_hook_it_was_used_through() {
        let mut e = event();
        e.hook = hook::PASSTHROUGH_DEVICE;
        e.access = access::WRITE;
        e.dev = 246 << 20;
        for (via, name) in [
            (hook::FILE_OPEN, "file_open"),
            (hook::FILE_PERMISSION, "file_permission"),
            (hook::FILE_IOCTL, "file_ioctl"),
            (hook::URING_CMD, "uring_cmd"),
        ] {
            e.detail = via;
            let d = Decision::from_event(&e, &PolicyNames::default());
            assert_eq!(d.hook, name);
            assert_eq!(d.access, "write");
            assert_eq!(
                d.path,
                "a device passing commands to a disk guard keeps (246:0)"
            );
        }
    }

    #[test]
    fn a_kernel_thread_is_named_as_one() {
        let mut e = event();
        (e.exe_dev, e.exe_ino) = (0, 0);
        e.comm = *b"kworker/0:1\0\0\0\0\0";
        let d = Decision::from_event(&e, &PolicyNames::default());
        assert_eq!(d.exe, "kernel thread kworker/0:1");
    }

    #[test]
    fn exe_of_an_exited_process_comes_from_the_kernel_path_and_mountinfo() {
        use std::os::unix::fs::MetadataExt;
        let root_dev = crate::policy::kernel_dev(std::fs::metadata("/").unwrap().dev());
        let mut e = event();
        e.tgid = u32::MAX; // no such process: /proc cannot answer
        e.exe_dev = root_dev;
        for (slot, name) in e.exe_path.iter_mut().zip(["cat", "bin", "usr"]) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        let d = Decision::from_event(&e, &PolicyNames::default());
        assert_eq!(d.exe, "/usr/bin/cat");
    }

    /// Opened under an overlay's path: the names go up to the overlay's
    /// root, under its mount point; the device stays the protected file's.
    #[test]
    fn a_file_opened_beneath_another_filesystem_is_shown_under_its_mount() {
        use std::os::unix::fs::MetadataExt;
        let names = PolicyNames {
            points: vec!["/var/lib/mysql".into()],
            ..Default::default()
        };
        let mut e = event();
        e.flags |= flags::BENEATH;
        e.detail = crate::policy::kernel_dev(std::fs::metadata("/").unwrap().dev());
        let d = Decision::from_event(&e, &names);
        assert_eq!(d.path, "/shop/t1.ibd");
        assert_eq!(d.device, "8:1");
        e.detail = (250 << 20) | 77; // mounted nowhere guardd sees
        let d = Decision::from_event(&e, &names);
        assert_eq!(d.path, "<filesystem 250:77>/shop/t1.ibd");
    }

    #[test]
    fn short_record_is_rejected() {
        assert!(decode(&[0u8; 16]).is_none());
    }
}
