//! Layouts shared by the kernel programs (`guard-ebpf`) and userspace (`guard-user`).
//!
//! Every map key, map value, event record and global handed across the
//! kernel/user boundary is defined here, once, with `#[repr(C)]` and explicit
//! padding so both sides agree byte for byte.
#![no_std]

/// Access bits: what an operation on a protected object asks for.
pub mod access {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const EXEC: u32 = 1 << 2;
    pub const CREATE: u32 = 1 << 3;
    pub const DELETE: u32 = 1 << 4;
    pub const RENAME: u32 = 1 << 5;
    pub const LINK: u32 = 1 << 6;
    pub const SETATTR: u32 = 1 << 7;

    /// Policy names of the access bits, in bit order.
    pub const NAMES: [(&str, u32); 8] = [
        ("read", READ),
        ("write", WRITE),
        ("exec", EXEC),
        ("create", CREATE),
        ("delete", DELETE),
        ("rename", RENAME),
        ("link", LINK),
        ("setattr", SETATTR),
    ];

    /// The bit for a policy access name.
    pub fn from_name(name: &str) -> Option<u32> {
        NAMES.iter().find(|(n, _)| *n == name).map(|(_, bit)| *bit)
    }
}

/// Wildcard for `RuleKey::uid` and `RuleKey::gid`.
pub const ANY_ID: u32 = u32::MAX;
/// `Event::rule` when no rule decided (default deny).
pub const NO_RULE: u32 = u32::MAX;

/// Policy modes (`PolicyMeta::mode`).
pub const MODE_ENFORCE: u32 = 0;
pub const MODE_AUDIT: u32 = 1;

/// How many dentries a hook walks up looking for a protected directory.
/// A protected filesystem deeper than this is denied (fail closed).
pub const MAX_DEPTH: u32 = 64;
/// Path components carried in an event (nearest the file first).
pub const PATH_DEPTH: usize = 8;
/// Path components of the caller's executable carried in an event.
pub const EXE_DEPTH: usize = 6;
/// Bytes per path component in an event, NUL included.
pub const NAME_LEN: usize = 48;
/// Default kernel-side event budget per CPU per second (`Settings`); the rest
/// are counted as suppressed and reported in a later event.
pub const DEFAULT_EVENTS_PER_SEC_PER_CPU: u32 = 2000;

/// Map names, as the kernel object defines them and userspace pins them.
pub mod maps {
    pub const ACTIVE: &str = "GUARD_ACTIVE";
    pub const META: &str = "GUARD_META";
    pub const DEVS: &str = "GUARD_DEVS";
    pub const DIRS: &str = "GUARD_DIRS";
    pub const RULES: &str = "GUARD_RULES";
    pub const EXES: &str = "GUARD_EXES";
    pub const TAINTED: &str = "GUARD_TAINTED";
    pub const STATS: &str = "GUARD_STATS";
    pub const RATE: &str = "GUARD_RATE";
    pub const EVENTS: &str = "GUARD_EVENTS";
    pub const SETTINGS: &str = "GUARD_SETTINGS";
    pub const ALL: [&str; 11] = [
        ACTIVE, META, DEVS, DIRS, RULES, EXES, TAINTED, STATS, RATE, EVENTS, SETTINGS,
    ];
}

/// Capacities. Two policy generations live side by side during an apply.
pub const MAX_POINTS: u32 = 1024;
pub const MAX_RULE_ENTRIES: u32 = 32768;
pub const MAX_EXES: u32 = 8192;
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    pub const ALLOWED: u32 = 0;
    pub const DENIED: u32 = 1;
    pub const AUDITED: u32 = 2;
    /// Decisions that would have denied in audit mode.
    pub const WOULD_DENY: u32 = 3;
    /// Events lost because the ring buffer was full.
    pub const DROPPED: u32 = 4;
    /// Events not sent because of the per-CPU rate limit.
    pub const SUPPRESSED: u32 = 5;
    /// Decisions forced to deny because a kernel read failed or a walk was too deep.
    pub const FAIL_CLOSED: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Hooks, as reported in events.
pub mod hook {
    pub const FILE_OPEN: u32 = 1;
    pub const INODE_CREATE: u32 = 2;
    pub const INODE_MKDIR: u32 = 3;
    pub const INODE_MKNOD: u32 = 4;
    pub const INODE_SYMLINK: u32 = 5;
    pub const INODE_UNLINK: u32 = 6;
    pub const INODE_RMDIR: u32 = 7;
    pub const INODE_RENAME: u32 = 8;
    pub const INODE_LINK: u32 = 9;
    pub const INODE_SETATTR: u32 = 10;

    pub fn name(hook: u32) -> &'static str {
        match hook {
            FILE_OPEN => "file_open",
            INODE_CREATE => "inode_create",
            INODE_MKDIR => "inode_mkdir",
            INODE_MKNOD => "inode_mknod",
            INODE_SYMLINK => "inode_symlink",
            INODE_UNLINK => "inode_unlink",
            INODE_RMDIR => "inode_rmdir",
            INODE_RENAME => "inode_rename",
            INODE_LINK => "inode_link",
            INODE_SETATTR => "inode_setattr",
            _ => "unknown",
        }
    }
}

/// `Event::verdict` values.
pub mod verdict {
    pub const DENIED: u32 = 1;
    /// Allowed by a rule whose effect is `audit`.
    pub const AUDITED: u32 = 2;
    /// Policy mode `audit`: would have been denied, was allowed.
    pub const WOULD_DENY: u32 = 3;
}

/// `Event::flags` bits.
pub mod flags {
    /// The decision was forced by an error (unreadable kernel field, walk too deep).
    pub const FAIL_CLOSED: u32 = 1 << 0;
    /// The file is deeper than `PATH_DEPTH` below its protected directory.
    pub const PATH_TRUNCATED: u32 = 1 << 1;
    /// The executable is deeper than `EXE_DEPTH` below its filesystem's root.
    pub const EXE_TRUNCATED: u32 = 1 << 2;
}

/// Key of `DEVS`: filesystems (kernel `dev_t` of the superblock) holding a
/// protected directory in a policy generation. The fast path of every hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevKey {
    pub generation: u32,
    pub dev: u32,
}

/// Key of `DIRS`: a protected directory by identity. Value: the point index (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirKey {
    pub generation: u32,
    pub dev: u32,
    pub ino: u64,
}

/// Key of `RULES`: who may do what inside one protected point.
/// `uid`/`gid` are `ANY_ID` when the rule does not restrict them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleKey {
    pub generation: u32,
    pub point: u32,
    pub exe_dev: u32,
    pub uid: u32,
    pub exe_ino: u64,
    pub gid: u32,
    pub _pad: u32,
}

/// Value of `RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleValue {
    /// Access bits granted (by `allow` and `audit` rules).
    pub allow: u32,
    /// Access bits whose use is logged (`audit` rules).
    pub audit: u32,
    /// Index of the deciding rule in the applied policy.
    pub rule: u32,
    pub _pad: u32,
}

/// Value of `META`, keyed by generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyMeta {
    pub mode: u32,
    pub _pad: u32,
}

/// Key of `EXES` (binaries some policy allows) and `TAINTED` (those opened for
/// writing since the policy was applied; they lose their rules).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Value of `TAINTED`: who opened the binary for writing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Taint {
    pub pid: u32,
    pub uid: u32,
}

/// Daemon settings the programs read at run time (`SETTINGS`, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Events per CPU per second before suppression; 0 means the default.
    pub events_per_sec: u32,
    pub _pad: u32,
}

/// Per-CPU rate limiter state (`RATE`). Suppressed events are counted in
/// `STATS[SUPPRESSED]`, which guardd reports to the journal.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    pub window_start_ns: u64,
    pub sent: u32,
    pub _pad: u32,
}

/// A decision the kernel reports (denied, audited, would-deny).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub verdict: u32,
    pub access: u32,
    pub hook: u32,
    pub flags: u32,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub point: u32,
    pub rule: u32,
    pub generation: u32,
    pub _pad: u32,
    pub dev: u32,
    pub exe_dev: u32,
    pub ino: u64,
    pub exe_ino: u64,
    pub comm: [u8; 16],
    /// Names from the object up to (not including) its protected directory,
    /// nearest first, each NUL-terminated; empty slots start with NUL.
    pub path: [[u8; NAME_LEN]; PATH_DEPTH],
    /// Names from the caller's executable up to the root of its filesystem,
    /// nearest first, like `path` (the process may be gone when guardd reads this).
    pub exe_path: [[u8; NAME_LEN]; EXE_DEPTH],
}

/// Kernel struct layout, resolved from the running kernel's BTF by userspace
/// and handed to the programs as a read-only global before load. Nothing here
/// is known at build time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelOffsets {
    pub file_f_inode: u32,
    /// offsetof(file, f_path) + offsetof(path, dentry)
    pub file_f_path_dentry: u32,
    pub file_f_mode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub super_block_s_dev: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    /// offsetof(dentry, d_name) + offsetof(qstr, name)
    pub dentry_d_name_name: u32,
    pub task_struct_mm: u32,
    pub mm_struct_exe_file: u32,
    /// Position of the `struct dentry *` argument of the `inode_setattr` hook
    /// (0 before Linux 6.3, 1 after `struct mnt_idmap *` was added in front).
    pub setattr_dentry_arg: u32,
    pub _pad: u32,
}

/// `fmode_t` bits read from `struct file`.
pub const FMODE_READ: u32 = 0x1;
pub const FMODE_WRITE: u32 = 0x2;
pub const FMODE_EXEC: u32 = 0x20;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain integers with explicit padding.
    unsafe impl aya::Pod for DevKey {}
    unsafe impl aya::Pod for DirKey {}
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for PolicyMeta {}
    unsafe impl aya::Pod for ExeKey {}
    unsafe impl aya::Pod for Taint {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for KernelOffsets {}
}
