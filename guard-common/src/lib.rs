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
    /// Mounting on, or remounting or unmounting, protected data. No rule can
    /// grant it; it is a name in events only.
    pub const MOUNT: u32 = 1 << 8;

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

    /// The bit for a policy access name (process operations are not policy names).
    pub fn from_name(name: &str) -> Option<u32> {
        NAMES.iter().find(|(n, _)| *n == name).map(|(_, bit)| *bit)
    }
}

/// Access bits of attempts on a guarded process (`Event::access` for the
/// process hooks); never policy names.
pub mod tamper {
    /// Inspecting: /proc/PID/{fd,root,cwd,exe,maps,environ}, kcmp (PTRACE_MODE_READ).
    pub const PTRACE_READ: u32 = 1 << 16;
    /// Controlling: PTRACE_ATTACH/SEIZE, /proc/PID/mem, process_vm_readv/writev,
    /// pidfd_getfd (PTRACE_MODE_ATTACH).
    pub const PTRACE_ATTACH: u32 = 1 << 17;
    /// Starting an allowed binary under a tracer (strace, gdb).
    pub const EXEC_TRACED: u32 = 1 << 18;
    /// Sending a signal (`Event::detail` holds its number).
    pub const SIGNAL: u32 = 1 << 19;
    /// Reaching guard's BPF programs, maps or links, or loading programs that
    /// can read kernel memory or override LSM decisions.
    pub const BPF: u32 = 1 << 20;
    /// Unmounting the bpffs holding guard's pins.
    pub const UMOUNT: u32 = 1 << 21;
    /// Opening kernel memory: /proc/kcore, /dev/mem, /dev/port (the
    /// encryption keys live there).
    pub const KERNEL_MEMORY: u32 = 1 << 22;
    /// Loading a kernel module from user space.
    pub const MODULE: u32 = 1 << 23;
    /// Loading a new kernel to jump into (kexec_load, kexec_file_load).
    pub const KEXEC: u32 = 1 << 24;
    /// Starting an allowed binary that the policy says only its supervisor
    /// may start, from anything else (`Event::detail` unused).
    pub const UNSUPERVISED_START: u32 = 1 << 25;
    /// Running an allowed binary with arguments other than the ones its
    /// policy pins (the process is killed before its first instruction).
    pub const UNEXPECTED_ARGUMENTS: u32 = 1 << 26;
    /// Running an allowed binary with an environment variable its policy
    /// does not list, or with another value than the one it pins (the
    /// process is killed before its first instruction).
    pub const UNEXPECTED_ENVIRONMENT: u32 = 1 << 27;
    /// Loading a device-mapper table: the kernel itself opens the devices it
    /// names, so a mapping over a protected filesystem's device would show
    /// its blocks past the raw-device check.
    pub const DEVICE_MAPPER: u32 = 1 << 28;
    /// Opening a perf event whose samples copy process memory or registers
    /// (user stacks), of every process on a CPU, the database included.
    pub const PERF_SAMPLING: u32 = 1 << 29;
    /// Changing the running kernel or driving hardware that reaches all of
    /// memory (what the kernel's lockdown refuses in integrity mode).
    pub const KERNEL_INTEGRITY: u32 = 1 << 30;
    /// Replacing a process's executable (prctl PR_SET_MM_EXE_FILE or
    /// PR_SET_MM_MAP): the executable is who guard takes the caller for.
    pub const EXE_SWITCH: u32 = 1 << 31;

    pub const NAMES: [(&str, u32); 16] = [
        ("ptrace-read", PTRACE_READ),
        ("ptrace-attach", PTRACE_ATTACH),
        ("exec-traced", EXEC_TRACED),
        ("signal", SIGNAL),
        ("bpf", BPF),
        ("umount", UMOUNT),
        ("kernel-memory", KERNEL_MEMORY),
        ("module-load", MODULE),
        ("kexec", KEXEC),
        ("unsupervised-start", UNSUPERVISED_START),
        ("unexpected-arguments", UNEXPECTED_ARGUMENTS),
        ("unexpected-environment", UNEXPECTED_ENVIRONMENT),
        ("device-mapper", DEVICE_MAPPER),
        ("perf-sampling", PERF_SAMPLING),
        ("kernel-integrity", KERNEL_INTEGRITY),
        ("exe-switch", EXE_SWITCH),
    ];
}

/// What the `locked_down` hook refuses while guard is armed: the kernel's
/// lockdown reasons for ways to read kernel memory (where the volume keys
/// live) or a process's. `Event::ino` of a `hook::KERNEL_MEMORY` event.
pub mod lockdown {
    /// /dev/mem, /dev/port (LOCKDOWN_DEV_MEM).
    pub const DEV_MEM: u32 = 1;
    /// /proc/kcore (LOCKDOWN_KCORE).
    pub const KCORE: u32 = 2;
    /// A hibernation image: /dev/snapshot, /sys/power/state (LOCKDOWN_HIBERNATION).
    pub const HIBERNATION: u32 = 3;
    /// kprobe trace events, which fetch kernel memory (LOCKDOWN_KPROBES).
    pub const KPROBES: u32 = 4;
    /// Any tracefs file: uprobe events fetch process memory (LOCKDOWN_TRACEFS).
    pub const TRACEFS: u32 = 5;
    /// perf samples of kernel registers (LOCKDOWN_PERF).
    pub const PERF: u32 = 6;
    /// Kernel debuggers reading memory (LOCKDOWN_DBG_READ_KERNEL).
    pub const DBG_READ_KERNEL: u32 = 7;
    /// Every other reason the kernel's own lockdown refuses in its
    /// "integrity" mode (below LOCKDOWN_INTEGRITY_MAX): changing the running
    /// kernel, or driving hardware that reaches all of memory (PCI
    /// configuration and BARs, I/O ports, MSRs, ACPI tables...). The
    /// kernel's reason number is in the high 32 bits of `Event::ino`.
    pub const KERNEL_INTEGRITY: u32 = 8;

    /// `Event::ino` of a refusal: guard's code, and for `KERNEL_INTEGRITY`
    /// the kernel's `lockdown_reason` value.
    pub const fn event_id(code: u32, reason: u32) -> u64 {
        code as u64 | (reason as u64) << 32
    }

    /// (guard's code, the kernel's reason) of `Event::ino`.
    pub const fn split_event_id(id: u64) -> (u32, u32) {
        (id as u32, (id >> 32) as u32)
    }

    /// What a code stands for, for alerts.
    pub fn describe(code: u64) -> &'static str {
        match code {
            DEV_MEM_U64 => "/dev/mem or /dev/port",
            KCORE_U64 => "/proc/kcore",
            HIBERNATION_U64 => "a hibernation image (/dev/snapshot, /sys/power/state)",
            KPROBES_U64 => "kprobe trace events",
            TRACEFS_U64 => "tracefs (uprobe and kprobe events, trace buffers)",
            PERF_U64 => "perf samples of kernel registers",
            DBG_READ_KERNEL_U64 => "a kernel debugger",
            KERNEL_INTEGRITY_U64 => "the running kernel or hardware that reaches memory",
            _ => "unknown",
        }
    }
    const DEV_MEM_U64: u64 = DEV_MEM as u64;
    const KCORE_U64: u64 = KCORE as u64;
    const HIBERNATION_U64: u64 = HIBERNATION as u64;
    const KPROBES_U64: u64 = KPROBES as u64;
    const TRACEFS_U64: u64 = TRACEFS as u64;
    const PERF_U64: u64 = PERF as u64;
    const DBG_READ_KERNEL_U64: u64 = DBG_READ_KERNEL as u64;
    const KERNEL_INTEGRITY_U64: u64 = KERNEL_INTEGRITY as u64;
}

/// perf_event_attr `sample_type` bits (UAPI, include/uapi/linux/perf_event.h).
pub mod perf {
    pub const SAMPLE_REGS_USER: u64 = 1 << 12;
    pub const SAMPLE_STACK_USER: u64 = 1 << 13;
    pub const SAMPLE_REGS_INTR: u64 = 1 << 18;
    pub const SAMPLE_AUX: u64 = 1 << 20;
    /// Samples that copy memory or registers of whatever process runs:
    /// refused to all but guardd while guard is armed.
    pub const MEMORY_SAMPLES: u64 =
        SAMPLE_REGS_USER | SAMPLE_STACK_USER | SAMPLE_REGS_INTR | SAMPLE_AUX;
}

/// prctl options that replace a process's executable (UAPI,
/// include/uapi/linux/prctl.h).
pub mod prctl {
    pub const PR_SET_MM: i32 = 35;
    pub const PR_SET_MM_EXE_FILE: u64 = 13;
    /// A whole new memory map, whose `exe_fd` may name a new executable.
    pub const PR_SET_MM_MAP: u64 = 14;
}

/// Device-mapper's control ioctls (UAPI, include/uapi/linux/dm-ioctl.h).
pub mod device_mapper {
    /// `DM_TABLE_LOAD`: `_IOWR(0xfd, 9, struct dm_ioctl)`, 312 bytes.
    pub const TABLE_LOAD: u32 = 0xc138_fd09;
    /// `/dev/mapper/control`: misc major 10, minor 236, as a kernel `dev_t`.
    pub const CONTROL_RDEV: u32 = (10 << 20) | 236;
}

/// XFS's handle ioctls that list, read, set and remove any file's extended
/// attributes (ACLs included) given its handle, issued on any descriptor of
/// the filesystem: no inode hook sees the file. Told by type and number
/// alone, so the 32-bit forms (another size) match too.
pub mod xfs_handle {
    /// `XFS_IOC_ATTRLIST_BY_HANDLE`: `_IOW('X', 122, ...)`.
    pub const ATTRLIST_BY_HANDLE: u32 = 122;
    /// `XFS_IOC_ATTRMULTI_BY_HANDLE`: `_IOW('X', 123, ...)`.
    pub const ATTRMULTI_BY_HANDLE: u32 = 123;

    #[inline(always)]
    pub fn is_attrs_by_handle(cmd: u32) -> bool {
        let nr = cmd & 0xff;
        (cmd >> 8) & 0xff == b'X' as u32 && (nr == ATTRLIST_BY_HANDLE || nr == ATTRMULTI_BY_HANDLE)
    }
}

/// Block device ioctls that only report a device's geometry and settings
/// (what udev's and blkid's probes ask). Every other ioctl on a device guard
/// keeps may carry a command that reads or writes the disk (SG_IO, NVMe
/// passthrough, discard), and the kernel takes root's commands through a
/// descriptor opened only for reading.
pub mod block_ioctl {
    /// `_IO(0x12, nr)`
    const fn io(nr: u32) -> u32 {
        (0x12 << 8) | nr
    }
    /// `_IOR(0x12, nr, size)`
    const fn ior(nr: u32, size: u32) -> u32 {
        (2 << 30) | (size << 16) | (0x12 << 8) | nr
    }
    pub const BLKROGET: u32 = io(94);
    pub const BLKGETSIZE: u32 = io(96);
    pub const BLKRAGET: u32 = io(99);
    pub const BLKFRAGET: u32 = io(101);
    pub const BLKSECTGET: u32 = io(103);
    pub const BLKSSZGET: u32 = io(104);
    /// `size_t` sized: 8 bytes, or 4 from 32-bit callers.
    pub const BLKBSZGET: u32 = ior(112, 8);
    pub const BLKBSZGET_32: u32 = ior(112, 4);
    pub const BLKGETSIZE64: u32 = ior(114, 8);
    pub const BLKGETSIZE64_32: u32 = ior(114, 4);
    pub const BLKIOMIN: u32 = io(120);
    pub const BLKIOOPT: u32 = io(121);
    pub const BLKALIGNOFF: u32 = io(122);
    pub const BLKPBSZGET: u32 = io(123);
    pub const BLKDISCARDZEROES: u32 = io(124);
    pub const BLKROTATIONAL: u32 = io(126);
    pub const BLKGETDISKSEQ: u32 = ior(128, 8);
    pub const BLKGETZONESZ: u32 = ior(132, 4);
    pub const BLKGETNRZONES: u32 = ior(133, 4);
    /// `HDIO_GETGEO` (linux/hdreg.h).
    pub const HDIO_GETGEO: u32 = 0x0301;

    /// Whether `cmd` only reports, so it may reach a kept block device.
    pub fn reports_only(cmd: u32) -> bool {
        matches!(
            cmd,
            BLKROGET
                | BLKGETSIZE
                | BLKRAGET
                | BLKFRAGET
                | BLKSECTGET
                | BLKSSZGET
                | BLKBSZGET
                | BLKBSZGET_32
                | BLKGETSIZE64
                | BLKGETSIZE64_32
                | BLKIOMIN
                | BLKIOOPT
                | BLKALIGNOFF
                | BLKPBSZGET
                | BLKDISCARDZEROES
                | BLKROTATIONAL
                | BLKGETDISKSEQ
                | BLKGETZONESZ
                | BLKGETNRZONES
                | HDIO_GETGEO
        )
    }
}

/// `bpf(2)` commands and program types (UAPI, include/uapi/linux/bpf.h:
/// numbers that never change).
pub mod bpf_uapi {
    pub const BPF_PROG_LOAD: u32 = 5;
    pub const BPF_LINK_GET_FD_BY_ID: u32 = 30;
    pub const BPF_LINK_DETACH: u32 = 34;

    /// Program types that can read or write kernel memory, or change what
    /// an LSM hook returns: only guardd may load them while guard protects itself.
    pub const DANGEROUS_PROG_TYPES: [(&str, u32); 9] = [
        ("kprobe", 2),
        ("tracepoint", 5),
        ("perf_event", 7),
        ("raw_tracepoint", 17),
        ("raw_tracepoint_writable", 24),
        ("tracing", 26),
        ("struct_ops", 27),
        ("ext", 28),
        ("lsm", 29),
    ];

    pub fn is_dangerous_prog_type(prog_type: u32) -> bool {
        let mut i = 0;
        while i < DANGEROUS_PROG_TYPES.len() {
            if DANGEROUS_PROG_TYPES[i].1 == prog_type {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// `Event::point` of a decision about guard's own pin folder.
pub const PINS_POINT: u32 = u32::MAX - 1;
/// `Event::point` of a denied change to an immutable file (`IMMUTABLE`).
pub const IMMUTABLE_POINT: u32 = u32::MAX - 2;
/// `Event::point` of a denied executable mapping of a file the policy's
/// `libraries` do not approve (`LIBRARIES`).
pub const LIBRARY_POINT: u32 = u32::MAX - 3;
/// `Event::point` of a denied core dump: an allowed program's core file
/// outside its protected directories.
pub const CRASH_DUMP_POINT: u32 = u32::MAX - 4;
/// `Event::point` of a denied write to a kernel setting guard keeps
/// (`kernel_setting`).
pub const KERNEL_SETTING_POINT: u32 = u32::MAX - 5;
/// `Event::point` of a denied `swapon`: a swap area turned on while a
/// policy is active would hold the database's pages where guard does not
/// keep them.
pub const SWAPON_POINT: u32 = u32::MAX - 6;
/// `Event::point` of a denied read of one of guard's secrets
/// (`immutable::SECRET`).
pub const SECRET_POINT: u32 = u32::MAX - 7;

/// System call numbers guard recognises in `pt_regs.orig_ax` (x86).
pub mod syscall {
    /// swapon(2) on x86_64 (and x32, once `X32_BIT` is masked off).
    pub const SWAPON: u64 = 167;
    /// swapon(2) from a 32-bit program (i386). As an x86_64 number, 87 is
    /// unlink(2), which opens no file, so matching it too is exact.
    pub const SWAPON_I386: u64 = 87;
    /// `__X32_SYSCALL_BIT`.
    pub const X32_BIT: u64 = 0x4000_0000;

    pub const fn is_swapon(nr: u64) -> bool {
        let nr = nr & !X32_BIT;
        nr == SWAPON || nr == SWAPON_I386
    }
}

/// `task_struct.flags`: the task is writing its core dump
/// (include/linux/sched.h, unchanged for decades).
pub const PF_DUMPCORE: u32 = 0x0000_0200;

/// Kernel settings nobody but guardd may change while a policy is active:
/// where crash dumps go (a file or a program of root's would receive the
/// memory of a crashing allowed program), and which block device an NVMe
/// target namespace exports (the kernel opens it itself, not exclusively,
/// with no hook between: a mounted protected device would be served to
/// any NVMe-over-fabrics host, the local loop one included).
pub mod kernel_setting {
    /// `super_block.s_magic` of procfs (include/uapi/linux/magic.h).
    pub const PROC_SUPER_MAGIC: u64 = 0x9fa0;
    /// `super_block.s_magic` of configfs.
    pub const CONFIGFS_MAGIC: u64 = 0x6265_6570;

    /// A name of at most 15 bytes as the first two little-endian words of
    /// its NUL-terminated bytes, and masks of the bytes that belong to it
    /// (the NUL included: what follows it in a dentry is whatever was there).
    #[derive(Clone, Copy)]
    pub struct Name {
        pub words: [u64; 2],
        pub masks: [u64; 2],
    }

    pub const fn name(text: &[u8]) -> Name {
        assert!(text.len() < 16);
        let mut words = [0u64; 2];
        let mut masks = [0u64; 2];
        let mut b = 0;
        while b <= text.len() {
            let byte = if b < text.len() { text[b] } else { 0 };
            words[b / 8] |= (byte as u64) << ((b % 8) * 8);
            masks[b / 8] |= 0xff << ((b % 8) * 8);
            b += 1;
        }
        Name { words, masks }
    }

    /// The folder they are in: /proc/sys/kernel.
    pub const FOLDER: Name = name(b"kernel");
    /// /proc/sys/kernel/core_pattern.
    pub const NAMES: [Name; 1] = [name(b"core_pattern")];
    /// configfs `nvmet/subsystems/*/namespaces/*/device_path` (the only
    /// configfs attribute of that name in the kernel).
    pub const DEVICE_PATH: Name = name(b"device_path");

    /// Whether `words` (a name's first 16 bytes) are `name`'s.
    pub fn matches(name: &Name, words: [u64; 2]) -> bool {
        words[0] & name.masks[0] == name.words[0] && words[1] & name.masks[1] == name.words[1]
    }
}

/// `LIBRARIES` values, keyed by `LaunchKey` (generation and a file's
/// identity): which binaries are confined to approved libraries, and which
/// files those binaries may map executable.
pub mod library {
    /// The binary may map executable only itself and `APPROVED` files.
    pub const CONFINED: u32 = 1 << 0;
    /// A file confined binaries may map executable.
    pub const APPROVED: u32 = 1 << 1;
}

/// Capacity of `LIBRARIES` (two generations side by side).
pub const MAX_LIBRARIES: u32 = 16384;

/// `IMMUTABLE` values, keyed by a file's or directory's (dev, ino): nobody
/// but guardd may change these.
pub mod immutable {
    /// The file itself: no write, truncate, unlink, rename over, chmod...
    pub const FILE: u32 = 1 << 0;
    /// The directory's entries: nothing created, removed or renamed in it,
    /// and its files are immutable too.
    pub const DIR: u32 = 1 << 1;
    /// One of guard's own files: enforced while guardd protects itself.
    /// Without it, an allowed binary: enforced while a policy is active.
    pub const GUARD: u32 = 1 << 2;
    /// One of guard's secrets (a private key): nobody but guardd may read
    /// it either, while guardd protects itself.
    pub const SECRET: u32 = 1 << 3;
}

/// Room in `IMMUTABLE` for what policies list under `immutable` (two
/// policies' worth: the active one and the one replacing it).
pub const MAX_IMMUTABLE_LISTED: u32 = 8192;
/// Capacity of `IMMUTABLE`: allowed binaries, their approved libraries,
/// what policies list as immutable, and guard's own files.
pub const MAX_IMMUTABLE: u32 = MAX_EXES + MAX_LIBRARIES / 2 + MAX_IMMUTABLE_LISTED + 256;

/// `mode` bits of the `ptrace_access_check` hook (include/linux/ptrace.h).
pub const PTRACE_MODE_READ: u32 = 0x01;
pub const PTRACE_MODE_ATTACH: u32 = 0x02;
pub const PTRACE_MODE_NOAUDIT: u32 = 0x04;

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
    pub const RULE_SLOTS: &str = "GUARD_RULE_SLOTS";
    pub const EXES: &str = "GUARD_EXES";
    pub const TAINTED: &str = "GUARD_TAINTED";
    pub const STATS: &str = "GUARD_STATS";
    pub const RATE: &str = "GUARD_RATE";
    pub const EVENTS: &str = "GUARD_EVENTS";
    pub const SETTINGS: &str = "GUARD_SETTINGS";
    pub const SELF: &str = "GUARD_SELF";
    pub const OBJECTS: &str = "GUARD_OBJECTS";
    pub const IMMUTABLE: &str = "GUARD_IMMUTABLE";
    pub const DIR_FILTER: &str = "GUARD_DIR_FILTER";
    pub const SUPERVISORS: &str = "GUARD_SUPERVISORS";
    pub const RELAYS: &str = "GUARD_RELAYS";
    pub const LAUNCHES: &str = "GUARD_LAUNCHES";
    pub const ANCESTORS: &str = "GUARD_ANCESTORS";
    pub const RAW_DEVICES: &str = "GUARD_RAW_DEVICES";
    pub const PASSTHROUGH: &str = "GUARD_PASSTHROUGH";
    pub const TAINT_SEQ: &str = "GUARD_TAINT_SEQ";
    pub const LIBRARIES: &str = "GUARD_LIBRARIES";
    pub const ARGUMENTS: &str = "GUARD_ARGUMENTS";
    pub const ARGV_SCRATCH: &str = "GUARD_ARGV_SCRATCH";
    pub const ENVIRONMENT: &str = "GUARD_ENVIRONMENT";
    pub const ENV_SCRATCH: &str = "GUARD_ENV_SCRATCH";
    pub const ALL: [&str; 27] = [
        ACTIVE,
        META,
        DEVS,
        DIRS,
        RULE_SLOTS,
        EXES,
        TAINTED,
        STATS,
        RATE,
        EVENTS,
        SETTINGS,
        SELF,
        OBJECTS,
        IMMUTABLE,
        DIR_FILTER,
        SUPERVISORS,
        RELAYS,
        LAUNCHES,
        ANCESTORS,
        RAW_DEVICES,
        PASSTHROUGH,
        TAINT_SEQ,
        LIBRARIES,
        ARGUMENTS,
        ARGV_SCRATCH,
        ENVIRONMENT,
        ENV_SCRATCH,
    ];
}

/// Slots of `TAINT_SEQ` (an array of u64), so that a decision skips its
/// `TAINTED` lookup while no binary is tainted. The kernel adds 1 to
/// `RECORDED` after each `TAINTED` insert; guardd copies a value of
/// `RECORDED` it read *before* finding `TAINTED` empty into `CLEARED`. While
/// the two differ, the kernel looks `TAINTED` up.
pub mod taint_seq {
    pub const RECORDED: u32 = 0;
    pub const CLEARED: u32 = 1;
    pub const SLOTS: u32 = 2;
}

/// A bit set over inode numbers of protected directories (`DIR_FILTER`, an
/// array of u64 words), so the kernel's walk up a file's ancestors does a
/// hash-map lookup only where a protected directory may be. A set bit may be
/// a false positive; every protected directory of a live generation has its
/// bit set before that generation becomes active, and keeps it until that
/// generation is retired.
pub mod dir_filter {
    pub const WORDS: u32 = 4096;
    const BITS_LOG2: u32 = 18; // WORDS * 64 = 2^18

    /// The word index and bit mask of `ino`.
    #[inline(always)]
    pub fn slot(ino: u64) -> (u32, u64) {
        let h = hash(ino);
        ((h >> 6) as u32, 1u64 << (h & 63))
    }

    /// A bit index in the filter (Fibonacci hashing).
    #[inline(always)]
    fn hash(x: u64) -> u64 {
        x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS_LOG2)
    }

    /// Keeps device bits apart from inode bits (no inode number is this high).
    const DEV_TAG: u64 = 0xD5A1_0000_0000_0000;

    /// A filesystem's flags (`fs_flags`) sit in an aligned group of this
    /// many bits of one word, so the one load every open makes answers
    /// every question about the filesystem.
    pub const FS_GROUP_BITS: u32 = 4;

    /// The word index and bit shift of filesystem `dev`'s flags. The same
    /// rule holds as for inodes: every flag a live generation needs is set,
    /// and a bit shared with another inode or filesystem only sets more.
    #[inline(always)]
    pub fn dev_slot(dev: u32) -> (u32, u32) {
        let h = hash(DEV_TAG | dev as u64);
        ((h >> 6) as u32, (h & 63) as u32 & !(FS_GROUP_BITS - 1))
    }

    /// What a filesystem's flags say. Each is set when it may be true, so
    /// a bit set by a collision never lets anything through.
    pub mod fs_flags {
        /// It holds protected directories of a live generation.
        pub const POINTS: u64 = 1;
        /// It holds one of guard's secrets.
        pub const SECRETS: u64 = 2;
        /// It holds a protected directory that fscrypt does not encrypt.
        /// Without it, a regular file or directory fscrypt does not encrypt
        /// is outside every protected directory there (see `file_open`).
        pub const PLAIN: u64 = 4;
        pub const ALL: u64 = POINTS | SECRETS | PLAIN;
    }
}

/// `DIRS` values: the point index in the low bits and the policy's mode
/// bits above it, so that deciding on a protected object needs no `META`
/// lookup.
pub mod dir_value {
    use super::{PolicyMeta, MODE_AUDIT};

    pub const POINT_MASK: u32 = 0xffff;
    /// fscrypt does not encrypt this protected directory (`fs_flags::PLAIN`
    /// of its filesystem); set by the policy's compile, kept by `encode`.
    pub const PLAIN: u32 = 1 << 29;
    /// Some rule of the policy names a uid or gid (`PolicyMeta::uses_ids`).
    pub const USES_IDS: u32 = 1 << 30;
    /// The policy is in audit mode.
    pub const AUDIT: u32 = 1 << 31;

    pub fn encode(point: u32, meta: &PolicyMeta) -> u32 {
        let mut value = point & (POINT_MASK | PLAIN);
        if meta.uses_ids != 0 {
            value |= USES_IDS;
        }
        if meta.mode == MODE_AUDIT {
            value |= AUDIT;
        }
        value
    }
}

/// Capacities. Two policy generations live side by side during an apply.
pub const MAX_POINTS: u32 = 1024;
/// Room in `RAW_DEVICES` and `PASSTHROUGH` for the devices beneath guard's
/// own files, beside two policies' `MAX_POINTS` each.
pub const MAX_GUARD_DEVICES: u32 = 64;
/// `DevKey::generation` of the entries keeping the devices beneath guard's
/// own files (enforced while guardd protects itself, not by a policy): no
/// policy generation reaches it.
pub const GUARD_FILES_GENERATION: u32 = u32::MAX;
/// Capacity of `ANCESTORS`: the directories above protected ones (keyed
/// like `DIRS`), on which nothing may be mounted.
pub const MAX_ANCESTORS: u32 = 16384;
/// Rule entries of one generation (`RULE_SLOTS` holds two generations at
/// most a quarter full: `slots::Table`).
pub const MAX_RULE_ENTRIES: u32 = 8192;
pub const MAX_EXES: u32 = 8192;
/// The decision event ring: 8 MiB hold about 10,000 events (each under
/// 800 bytes), several seconds of what journald takes, so a burst of denials
/// waits for guardd instead of being dropped (and only counted).
pub const EVENTS_RING_BYTES: u32 = 1 << 23;

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
    pub const PTRACE_ACCESS_CHECK: u32 = 11;
    pub const BPRM_CHECK_SECURITY: u32 = 12;
    pub const TASK_KILL: u32 = 13;
    pub const BPF: u32 = 14;
    pub const BPF_MAP: u32 = 15;
    pub const BPF_PROG: u32 = 16;
    pub const SB_UMOUNT: u32 = 17;
    /// Every read and write on an open file (inherited or passed fds too).
    pub const FILE_PERMISSION: u32 = 18;
    pub const MMAP_FILE: u32 = 19;
    pub const SB_MOUNT: u32 = 20;
    pub const MOVE_MOUNT: u32 = 21;
    pub const INODE_SETXATTR: u32 = 22;
    pub const INODE_REMOVEXATTR: u32 = 23;
    pub const INODE_SET_ACL: u32 = 24;
    pub const INODE_REMOVE_ACL: u32 = 25;
    /// Opening kernel memory (/proc/kcore, /dev/mem, /dev/port).
    pub const KERNEL_MEMORY: u32 = 26;
    pub const KERNEL_READ_FILE: u32 = 27;
    pub const KERNEL_LOAD_DATA: u32 = 28;
    /// A remount or unmount of a filesystem holding protected directories.
    pub const PROTECTED_FS: u32 = 29;
    /// Receiving a file descriptor (SCM_RIGHTS, pidfd_getfd).
    pub const FILE_RECEIVE: u32 = 30;
    /// Mounting on a directory above a protected one, which would hide it.
    pub const ANCESTOR_MOUNT: u32 = 31;
    /// Opening the block device of a filesystem holding protected directories.
    pub const RAW_DEVICE: u32 = 32;
    /// mprotect adding PROT_EXEC to a file mapping.
    pub const FILE_MPROTECT: u32 = 33;
    /// An exec that has replaced the process's program (arguments checked).
    pub const BPRM_COMMITTED_CREDS: u32 = 34;
    /// An ioctl: loading a device-mapper table (also `file_ioctl_compat`).
    pub const FILE_IOCTL: u32 = 35;
    /// Opening a perf event that samples memory or registers.
    pub const PERF_EVENT_OPEN: u32 = 36;
    /// Opening a character device that passes commands to a disk guard
    /// keeps (NVMe controller and generic nodes, SCSI generic, bsg).
    pub const PASSTHROUGH_DEVICE: u32 = 37;
    /// An io_uring command handed to a file's driver (NVMe passthrough).
    pub const URING_CMD: u32 = 38;
    /// prctl(PR_SET_MM) replacing the caller's executable.
    pub const TASK_PRCTL: u32 = 39;
    /// Renaming a directory above a protected one (or exchanging another
    /// with it), which would move the data away from the database's path.
    pub const ANCESTOR_RENAME: u32 = 40;
    /// An XFS handle ioctl reading or changing extended attributes and ACLs
    /// on a filesystem holding protected directories (`xfs_handle`).
    pub const XFS_HANDLE_ATTRS: u32 = 41;

    /// Hooks whose object is a process, not a file.
    pub fn is_process(hook: u32) -> bool {
        matches!(
            hook,
            PTRACE_ACCESS_CHECK | BPRM_CHECK_SECURITY | TASK_KILL | BPRM_COMMITTED_CREDS
        )
    }

    /// Hooks whose object is guard's BPF state or the system's integrity
    /// (kernel memory, modules, filesystems holding protected data).
    pub fn is_bpf(hook: u32) -> bool {
        matches!(
            hook,
            BPF | BPF_MAP
                | BPF_PROG
                | SB_UMOUNT
                | KERNEL_MEMORY
                | KERNEL_READ_FILE
                | KERNEL_LOAD_DATA
                | PROTECTED_FS
                | ANCESTOR_MOUNT
                | ANCESTOR_RENAME
                | RAW_DEVICE
                | FILE_IOCTL
                | PERF_EVENT_OPEN
                | PASSTHROUGH_DEVICE
                | TASK_PRCTL
                | XFS_HANDLE_ATTRS
        )
    }

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
            PTRACE_ACCESS_CHECK => "ptrace_access_check",
            BPRM_CHECK_SECURITY => "bprm_check_security",
            TASK_KILL => "task_kill",
            BPF => "bpf",
            BPF_MAP => "bpf_map",
            BPF_PROG => "bpf_prog",
            SB_UMOUNT => "sb_umount",
            FILE_PERMISSION => "file_permission",
            MMAP_FILE => "mmap_file",
            SB_MOUNT => "sb_mount",
            MOVE_MOUNT => "move_mount",
            INODE_SETXATTR => "inode_setxattr",
            INODE_REMOVEXATTR => "inode_removexattr",
            INODE_SET_ACL => "inode_set_acl",
            INODE_REMOVE_ACL => "inode_remove_acl",
            KERNEL_MEMORY => "locked_down",
            KERNEL_READ_FILE => "kernel_read_file",
            KERNEL_LOAD_DATA => "kernel_load_data",
            PROTECTED_FS => "sb_mount/sb_umount",
            FILE_RECEIVE => "file_receive",
            ANCESTOR_MOUNT => "sb_mount/move_mount",
            RAW_DEVICE => "file_open",
            FILE_MPROTECT => "file_mprotect",
            BPRM_COMMITTED_CREDS => "bprm_committed_creds",
            FILE_IOCTL => "file_ioctl",
            PERF_EVENT_OPEN => "perf_event_open",
            PASSTHROUGH_DEVICE => "file_open",
            URING_CMD => "uring_cmd",
            TASK_PRCTL => "task_prctl",
            ANCESTOR_RENAME => "inode_rename",
            XFS_HANDLE_ATTRS => "file_ioctl",
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
    /// The file was opened under another filesystem's path (an overlay's,
    /// before Linux 6.8): the path's components are under the mount point
    /// of the device in `detail`; `dev` and `ino` are the file's own.
    pub const BENEATH: u32 = 1 << 3;
}

/// Key of `DEVS`: filesystems (kernel `dev_t` of the superblock) holding a
/// protected directory in a policy generation. A decision's first test is
/// the filesystem's bit in `DIR_FILTER` (`dir_filter::dev_slot`); `DEVS`
/// confirms where it matters (a failed walk, mounts).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevKey {
    pub generation: u32,
    pub dev: u32,
}

/// Key of `DIRS`: a protected directory by identity. Value: the point index
/// and mode bits (`dir_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirKey {
    pub generation: u32,
    pub dev: u32,
    pub ino: u64,
}

/// Key of a rule entry (`RULE_SLOTS`): who may do what inside one protected point.
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

/// Value of a rule entry.
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

pub type RuleSlot = slots::Slot<RuleKey, RuleValue>;

/// Open-addressed tables in BPF arrays (`RULE_SLOTS`): a key
/// sits in one of the `PROBES` slots from its `home` on. The kernel compares
/// a few slots instead of calling a hash map lookup, which hashes and
/// compares the whole key (about 220 guest instructions for a rule entry,
/// measured: 2% of an `open()` inside a protected directory).
pub mod slots {
    use super::{RuleKey, RuleValue, MAX_RULE_ENTRIES};

    /// A table entry; empty while its key's generation is 0.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Slot<K, V> {
        pub key: K,
        pub value: V,
    }

    /// A table's shape. Each holds at least four times the entries of the
    /// two generations that may be live together, so a free slot is near:
    /// an apply fails if none of a key's `PROBES` slots is free (at half
    /// full, linear probing runs past 16 for some keys; at a quarter it does
    /// not, tested).
    pub trait Table {
        type Key: Copy + PartialEq;
        type Value: Copy;
        const LOG2: u32;
        const COUNT: u32 = 1 << Self::LOG2;
        const MASK: u32 = Self::COUNT - 1;
        const PROBES: u32 = 16;
        /// The first slot `key` may sit in. The generation is part of the
        /// hash, so a slot's address depends on the generation the reader
        /// loaded (an address dependency orders the two loads on any CPU).
        fn home(key: &Self::Key) -> u32;
        fn generation(key: &Self::Key) -> u32;
        fn set_generation(key: &mut Self::Key, generation: u32);
    }

    pub struct Rules;

    const _: () = assert!(Rules::COUNT >= 8 * MAX_RULE_ENTRIES);
    // `find` compares keys as whole u64 words.
    const _: () = assert!(core::mem::size_of::<RuleKey>().is_multiple_of(8));
    const _: () = assert!(core::mem::align_of::<RuleKey>() == 8);
    // guardd writes a slot's generation last, as the slot's first u32.
    const _: () = assert!(core::mem::offset_of!(RuleKey, generation) == 0);

    #[inline(always)]
    fn spread(h: u64, log2: u32) -> u32 {
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - log2)) as u32
    }

    impl Table for Rules {
        type Key = RuleKey;
        type Value = RuleValue;
        const LOG2: u32 = 16;
        #[inline(always)]
        fn home(key: &RuleKey) -> u32 {
            let a = ((key.generation as u64) << 32 | key.point as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let b =
                ((key.exe_dev as u64) << 32 | key.uid as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            let c = key.exe_ino.wrapping_mul(0x1656_67B1_9E37_79F9);
            let d = (key.gid as u64).wrapping_mul(0x27D4_EB2F_1656_67C5);
            spread(a ^ b ^ c ^ d, Self::LOG2)
        }
        #[inline(always)]
        fn generation(key: &RuleKey) -> u32 {
            key.generation
        }
        fn set_generation(key: &mut RuleKey, generation: u32) {
            key.generation = generation;
        }
    }

    /// The value of `key` in a table whose slot `i` is `slot(i)`: the
    /// kernel's lookup (and the one guardd's placement is tested against).
    #[inline(always)]
    pub fn find<'a, T: Table>(
        key: &T::Key,
        slot: impl Fn(u32) -> Option<&'a Slot<T::Key, T::Value>>,
    ) -> Option<T::Value>
    where
        T::Key: 'a,
        T::Value: 'a,
    {
        let home = T::home(key);
        for probe in 0..T::PROBES {
            let s = slot((home + probe) & T::MASK)?;
            if same_words(&s.key, key) {
                return Some(s.value);
            }
        }
        None
    }

    /// `a == b` for keys made of whole u64 words with no implicit padding
    /// (explicit `_pad` fields are zeroed on both sides). One branch instead
    /// of one per field: the verifier walks each branch of each probe from
    /// every state it reaches the loop in, and the per-field compare was
    /// about a third of what it checked in most programs. The volatile
    /// loads keep LLVM from turning the loop back into compares and jumps.
    #[inline(always)]
    fn same_words<K>(a: &K, b: &K) -> bool {
        let words = core::mem::size_of::<K>() / 8;
        let (a, b) = (a as *const K as *const u64, b as *const K as *const u64);
        let mut diff = 0u64;
        for i in 0..words {
            // SAFETY: i < size_of::<K>() / 8 and both point to a K.
            diff |=
                unsafe { core::ptr::read_volatile(a.add(i)) ^ core::ptr::read_volatile(b.add(i)) };
        }
        diff == 0
    }
}

/// Value of `META`, keyed by generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyMeta {
    pub mode: u32,
    /// Non-zero when some rule names a uid or gid; otherwise the kernel
    /// looks up only the (any uid, any gid) rule entry.
    pub uses_ids: u32,
    /// Non-zero when some binary may only be started by its supervisor
    /// (`SUPERVISORS`); only then does the kernel record `LAUNCHES`.
    pub supervises: u32,
    /// Non-zero when the policy lists `libraries`: its binaries may map
    /// executable only themselves and approved files (`LIBRARIES`).
    pub confines: u32,
    /// Non-zero when some binary may only run with the arguments the policy
    /// gives it (`ARGUMENTS`).
    pub pins_arguments: u32,
    /// Non-zero when some binary may only run with the environment the
    /// policy lists for it (`ENVIRONMENT`).
    pub pins_environment: u32,
}

/// Longest argument list (`"arg0\0arg1\0..."`) a policy may pin.
pub const MAX_ARGUMENT_BYTES: usize = 512;

/// Value of `ARGUMENTS`, keyed by `LaunchKey`: the exact argument list the
/// binary must run with: `count` NUL-terminated strings, `len` bytes in all,
/// as exec copies them into the new process's memory. Bytes past `len` are
/// zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arguments {
    pub len: u32,
    pub count: u32,
    pub bytes: [u8; MAX_ARGUMENT_BYTES],
}

/// How much of an environment entry the kernel reads. An entry that fills it
/// may have been cut short and never matches a pinned `NAME=VALUE`, so one
/// of those is shorter, its NUL included.
pub const MAX_ENV_ENTRY_BYTES: usize = 256;
/// Longest variable name a policy may allow with any value: `NAME=` and a
/// NUL fit in this many bytes.
pub const MAX_ENV_NAME_BYTES: usize = 64;
/// Most arguments, and most environment entries, a process whose
/// environment is pinned may start with: more count as a mismatch.
pub const MAX_PINNED_STRINGS: u32 = 64;
/// Most `ENVIRONMENT` entries of one policy (markers included); the map
/// holds two generations.
pub const MAX_ENV_ENTRIES: u32 = 512;

/// `EnvKey::kind`.
pub mod env_entry {
    /// The binary's environment is pinned (`bytes` all zero).
    pub const PINNED: u32 = 0;
    /// `bytes` is a whole entry, `NAME=VALUE`, the only value allowed.
    pub const EXACT: u32 = 1;
    /// `bytes` is `NAME=`: the variable may have any value.
    pub const NAME: u32 = 2;
}

/// Key of `ENVIRONMENT` (value unused): what a binary whose environment is
/// pinned may find in it. `bytes` is NUL-terminated and zero-padded, as the
/// kernel reads each entry of the new process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvKey {
    pub launch: LaunchKey,
    pub kind: u32,
    pub _pad: u32,
    pub bytes: [u8; MAX_ENV_ENTRY_BYTES],
}

/// Most bytes (its NUL included) of one argument or environment entry of a
/// process whose environment is pinned; a longer one counts as a mismatch.
/// The kernel reads each whole to find where the next begins.
pub const MAX_PINNED_STRING_BYTES: usize = 4096;

/// Value of the per-CPU `ENV_SCRATCH`: room for the kernel's `ENVIRONMENT`
/// key and a string it reads (too big for the BPF stack).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvScratch {
    pub key: EnvKey,
    pub string: [u8; MAX_PINNED_STRING_BYTES],
}

/// Key of `EXES` (binaries some policy allows) and `TAINTED` (those opened for
/// writing since the policy was applied; they lose their rules).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
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

/// Key of `SUPERVISORS` (an allowed binary that only its supervisor may
/// start; value: the supervisor's `ExeKey`) and `RELAYS` (programs a
/// supervisor may start the binary through, such as `nohup`; value unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LaunchKey {
    pub generation: u32,
    pub _pad: u32,
    pub exe: ExeKey,
}

/// Value of `LAUNCHES` (LRU, keyed by thread group id): what a process last
/// executed and who started it, recorded at exec while a policy names a
/// supervisor.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Launch {
    /// `start_time` of the thread group leader: tells a reused pid apart.
    pub start_time: u64,
    /// The file the process runs (for a script, its interpreter).
    pub exe: ExeKey,
    /// What the process counts as: the file first executed (for a script, the script).
    pub identity: ExeKey,
    /// The identity of the process that started it, seen through relays.
    pub launcher: ExeKey,
}

/// Capacity of `LAUNCHES`.
pub const MAX_LAUNCHES: u32 = 65536;

/// Daemon settings the programs read at run time (`SETTINGS`, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Events per CPU per second before suppression; 0 means the default.
    pub events_per_sec: u32,
    pub _pad: u32,
}

/// guardd's identity and whether it protects itself (`SELF`, index 0).
/// Written by guardd at start; `protect` is set by `guardd --protect-self`
/// and cleared only by a clean, journaled `guardctl stop`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SelfProtect {
    /// 1: nobody but guardd may signal or trace guardd.
    pub protect: u32,
    /// The running guardd's process id (thread group id).
    pub tgid: u32,
    /// guardd's executable: processes running it are guardd.
    pub exe: ExeKey,
    /// guard's pin folder: only guardd may unlink or rename in it, or
    /// unmount its bpffs.
    pub pins: ExeKey,
}

/// Kinds of guard's BPF objects in `OBJECTS`.
pub mod object {
    pub const MAP: u32 = 1;
    pub const PROG: u32 = 2;
    pub const LINK: u32 = 3;
}

/// Key of `OBJECTS`: guard's own maps, programs and links by kernel id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub kind: u32,
    pub id: u32,
}

/// Capacity of `OBJECTS`.
pub const MAX_OBJECTS: u32 = 128;

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
    /// Process hooks: the process acted upon (its tgid); `dev`/`ino` are
    /// then its executable's identity. 0 for file hooks.
    pub target: u32,
    /// Process hooks: the signal number (`task_kill`), the ptrace mode
    /// (`ptrace_access_check`). 0 otherwise.
    pub detail: u32,
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
    pub task_struct_tgid: u32,
    /// `task_struct.ptrace`: non-zero while the task is traced.
    pub task_struct_ptrace: u32,
    pub linux_binprm_file: u32,
    /// `linux_binprm.filename` and `.interp`: the same pointer until a
    /// script's interpreter is substituted, which tells an exec's first
    /// round of `bprm_check_security` from the interpreter's.
    pub linux_binprm_filename: u32,
    pub linux_binprm_interp: u32,
    pub bpf_map_id: u32,
    pub bpf_prog_aux: u32,
    pub bpf_prog_aux_id: u32,
    pub vfsmount_mnt_sb: u32,
    /// union bpf_attr (UAPI; resolved all the same)
    pub bpf_attr_prog_type: u32,
    pub bpf_attr_link_id: u32,
    pub super_block_s_root: u32,
    pub vfsmount_mnt_root: u32,
    pub inode_i_mode: u32,
    pub inode_i_rdev: u32,
    pub inode_i_flags: u32,
    /// offsetof(path, dentry), for hooks handed a `struct path *`.
    pub path_dentry: u32,
    pub task_struct_real_parent: u32,
    pub task_struct_flags: u32,
    pub task_struct_group_leader: u32,
    pub task_struct_start_time: u32,
    /// `kernel_read_file_id` READING_MODULE and `kernel_load_data_id`
    /// LOADING_MODULE, enum values read from BTF.
    pub reading_module: u32,
    pub loading_module: u32,
    pub reading_kexec_image: u32,
    pub reading_kexec_initramfs: u32,
    pub loading_kexec_image: u32,
    pub vm_area_struct_vm_file: u32,
    /// `linux_binprm.p` (where exec copied the arguments, in the new
    /// memory) and `.argc`.
    pub linux_binprm_p: u32,
    pub linux_binprm_argc: u32,
    /// `linux_binprm.envc`: the environment's strings follow the arguments'.
    pub linux_binprm_envc: u32,
    /// `lockdown_reason` LOCKDOWN_DEV_MEM and LOCKDOWN_KCORE: what the
    /// kernel asks the `locked_down` hook before it opens /dev/mem,
    /// /dev/port or /proc/kcore.
    pub lockdown_dev_mem: u32,
    pub lockdown_kcore: u32,
    pub super_block_s_magic: u32,
    /// More `lockdown_reason` values (see `lockdown`).
    pub lockdown_hibernation: u32,
    pub lockdown_kprobes: u32,
    pub lockdown_tracefs: u32,
    pub lockdown_perf: u32,
    pub lockdown_dbg_read_kernel: u32,
    pub perf_event_attr_sample_type: u32,
    /// 1 when the `perf_event_open` hook is handed the event's attributes
    /// (its first argument); 0 on kernels whose hook no longer is (6.18 on).
    pub perf_event_open_has_attr: u32,
    /// `pt_regs.orig_ax`: the number of the system call a task is in.
    pub pt_regs_orig_ax: u32,
    /// `lockdown_reason` LOCKDOWN_INTEGRITY_MAX: the reasons below it are
    /// those the kernel's own lockdown refuses in integrity mode.
    pub lockdown_integrity_max: u32,
    /// `io_uring_cmd.file` (0 on a kernel without io_uring: no `uring_cmd`
    /// hook to attach then).
    pub io_uring_cmd_file: u32,
    /// offsetof(inode, i_dentry) + offsetof(hlist_head, first): the
    /// inode's first dentry, and offsetof(dentry, d_u.d_alias), where that
    /// list links dentries (an opened file's own dentry, when the file was
    /// opened under another's path: `guard-ebpf`'s `walk_start`).
    pub inode_i_dentry_first: u32,
    pub dentry_d_alias: u32,
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
    unsafe impl aya::Pod for RuleSlot {}
    unsafe impl aya::Pod for Arguments {}
    unsafe impl aya::Pod for EnvKey {}
    unsafe impl aya::Pod for EnvScratch {}
    unsafe impl aya::Pod for PolicyMeta {}
    unsafe impl aya::Pod for ExeKey {}
    unsafe impl aya::Pod for LaunchKey {}
    unsafe impl aya::Pod for Launch {}
    unsafe impl aya::Pod for Taint {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for SelfProtect {}
    unsafe impl aya::Pod for ObjectKey {}
    unsafe impl aya::Pod for KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use super::kernel_setting::{matches, name, FOLDER, NAMES};

    fn words(text: &[u8], garbage: u8) -> [u64; 2] {
        let mut bytes = [garbage; 16];
        bytes[..text.len()].copy_from_slice(text);
        bytes[text.len()] = 0;
        [
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            u64::from_le_bytes(bytes[8..].try_into().unwrap()),
        ]
    }

    #[test]
    fn a_filesystems_flags_are_distinct_bits_of_one_word() {
        use super::dir_filter::{dev_slot, fs_flags, FS_GROUP_BITS};
        for dev in (0..4096).chain([u32::MAX, 0x0fe0_0011]) {
            let (word, shift) = dev_slot(dev);
            assert!(word < super::dir_filter::WORDS);
            assert_eq!(shift % FS_GROUP_BITS, 0);
            assert!(shift + FS_GROUP_BITS <= 64);
            let flags = [fs_flags::POINTS, fs_flags::SECRETS, fs_flags::PLAIN];
            for (i, a) in flags.iter().enumerate() {
                assert_eq!(a.count_ones(), 1);
                assert!(*a < 1 << FS_GROUP_BITS);
                for b in &flags[i + 1..] {
                    assert_eq!(a & b, 0);
                }
            }
            assert_eq!(flags.iter().fold(0, |all, f| all | f), fs_flags::ALL);
        }
    }

    #[test]
    fn xfs_attribute_handle_ioctls_are_told_apart_in_both_sizes() {
        use super::xfs_handle::is_attrs_by_handle;
        // As the kernel's headers expand them: 64-bit (72 and 56 bytes)
        // and 32-bit (36 bytes) forms.
        assert!(is_attrs_by_handle(0x4048_587b)); // ATTRMULTI_BY_HANDLE
        assert!(is_attrs_by_handle(0x4024_587b)); // its 32-bit form
        assert!(is_attrs_by_handle(0x4048_587a)); // ATTRLIST_BY_HANDLE
        assert!(!is_attrs_by_handle(0xc038_5869)); // PATH_TO_HANDLE
        assert!(!is_attrs_by_handle(0xc018_5879)); // FITRIM ('X' 121)
        assert!(!is_attrs_by_handle(0x0000_127b)); // another type, same number
    }

    #[test]
    fn block_ioctls_that_only_report_are_told_from_commands() {
        use super::block_ioctl::*;
        // Values as the kernel's UAPI headers expand them on x86_64.
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
        assert_eq!(BLKBSZGET, 0x8008_1270);
        assert_eq!(BLKGETDISKSEQ, 0x8008_1280);
        assert_eq!(BLKGETZONESZ, 0x8004_1284);
        assert_eq!((BLKSSZGET, BLKPBSZGET, BLKROGET), (0x1268, 0x127b, 0x125e));
        for reporting in [BLKGETSIZE64, BLKSSZGET, BLKGETSIZE64_32, HDIO_GETGEO] {
            assert!(reports_only(reporting), "{reporting:#x}");
        }
        // SG_IO, NVME_IOCTL_IO_CMD, NVME_IOCTL_ADMIN_CMD, BLKDISCARD,
        // BLKZEROOUT, BLKSECDISCARD, BLKFLSBUF, BLKRRPART, BLKPG.
        for command in [
            0x2285,
            0xc048_4e43,
            0xc048_4e41,
            0x1277,
            0x127f,
            0x127d,
            0x1261,
            0x125f,
            0x1269,
        ] {
            assert!(!reports_only(command), "{command:#x}");
        }
    }

    #[test]
    fn a_setting_name_matches_whatever_follows_its_nul() {
        for text in [
            &b"core_pattern"[..],
            b"modprobe",
            b"hotplug",
            b"uevent_helper",
            b"kernel",
        ] {
            for garbage in [0u8, 0xa5, b'x'] {
                let n = name(text);
                assert!(matches(&n, words(text, garbage)), "{text:?} {garbage}");
            }
        }
        assert!(matches(&FOLDER, words(b"kernel", 0x7f)));
        assert!(matches(&NAMES[0], words(b"core_pattern", 0x7f)));
    }

    #[test]
    fn other_names_do_not_match() {
        let modprobe = name(b"modprobe");
        for other in [
            &b"modprobe2"[..],
            b"modprob",
            b"core_patter",
            b"kernel_",
            b"Modprobe",
        ] {
            assert!(!matches(&modprobe, words(other, 0)), "{other:?}");
        }
        assert!(!matches(&FOLDER, words(b"kernels", 0)));
        assert!(!matches(&name(b"core_pattern"), words(b"core_pattern_", 0)));
    }

    #[test]
    fn swapon_is_recognised_from_64_bit_x32_and_32_bit_programs_only() {
        use super::syscall::{is_swapon, X32_BIT};
        assert!(is_swapon(167));
        assert!(is_swapon(167 | X32_BIT));
        assert!(is_swapon(87));
        // openat, open, swapoff (x86_64 and i386), no system call.
        for other in [257, 2, 168, 115, u64::MAX, 0] {
            assert!(!is_swapon(other), "{other}");
        }
    }
}
