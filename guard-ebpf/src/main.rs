//! guard's kernel programs: BPF LSM hooks that deny every access to a
//! protected directory that the active policy does not allow.
//!
//! A protected object is recognised by identity: the (device, inode) of a
//! protected directory found among the dentry ancestors of the object on its
//! own superblock. Paths, mounts, chroots and symlinks do not matter.
//! The caller is recognised by the (device, inode) of `current->mm->exe_file`.
//!
//! Struct offsets come from the running kernel's BTF, resolved by userspace and
//! handed over in `OFFSETS` before load. Every read that fails once an object
//! may be protected denies (fail closed).
#![no_std]
#![no_main]
// atomic_xadd: the BPF target has atomic add but no compare-and-swap, so
// core's AtomicU64 offers no fetch_add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::ffi::c_void;
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_send_signal,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{lsm, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::LsmContext,
    EbpfContext,
};
use guard_common::{
    access, block_ioctl, bpf_uapi, device_mapper, xfs_handle, flags, kernel_setting, lockdown, perf, prctl, CRASH_DUMP_POINT, KERNEL_SETTING_POINT, PF_DUMPCORE, SWAPON_POINT, syscall, hook, Arguments, MAX_ARGUMENT_BYTES, env_entry, EnvKey, EnvScratch,
    MAX_PINNED_STRING_BYTES, MAX_ENV_ENTRIES, MAX_ENV_ENTRY_BYTES, MAX_ENV_NAME_BYTES,
    MAX_PINNED_STRINGS, object, stat, tamper, verdict, DevKey, DirKey, Event, ExeKey,
    KernelOffsets, ObjectKey, PolicyMeta, RateState, RuleKey, RuleSlot, RuleValue, SelfProtect, Settings,
    slots::{self, Rules, Table},
    Taint, Launch, LaunchKey, library, LIBRARY_POINT, MAX_LIBRARIES, MAX_ANCESTORS, MAX_LAUNCHES, ANY_ID, MAX_OBJECTS, taint_seq, PINS_POINT, IMMUTABLE_POINT, MAX_IMMUTABLE, immutable, dir_filter, dir_filter::fs_flags, dir_value,
    DEFAULT_EVENTS_PER_SEC_PER_CPU, PTRACE_MODE_ATTACH, PTRACE_MODE_NOAUDIT,
    EVENTS_RING_BYTES, FMODE_EXEC, FMODE_READ, FMODE_WRITE, MAX_DEPTH, MAX_EXES, MAX_POINTS,
    MODE_AUDIT, NAME_LEN, NO_RULE, PATH_DEPTH, EXE_DEPTH, SECRET_POINT, GUARD_FILES_GENERATION, MAX_GUARD_DEVICES,
};

const ALLOW: i32 = 0;
const EPERM: i32 = -1;

/// Set by userspace from BTF before load (read-only global).
#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
    file_f_inode: 0,
    file_f_path_dentry: 0,
    file_f_mode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    super_block_s_dev: 0,
    dentry_d_parent: 0,
    dentry_d_inode: 0,
    dentry_d_sb: 0,
    dentry_d_name_name: 0,
    task_struct_mm: 0,
    mm_struct_exe_file: 0,
    setattr_dentry_arg: 0,
    task_struct_tgid: 0,
    task_struct_ptrace: 0,
    linux_binprm_file: 0,
    linux_binprm_filename: 0,
    linux_binprm_interp: 0,
    bpf_map_id: 0,
    bpf_prog_aux: 0,
    bpf_prog_aux_id: 0,
    vfsmount_mnt_sb: 0,
    bpf_attr_prog_type: 0,
    bpf_attr_link_id: 0,
    super_block_s_root: 0,
    vfsmount_mnt_root: 0,
    inode_i_mode: 0,
    inode_i_rdev: 0,
    inode_i_flags: 0,
    path_dentry: 0,
    task_struct_real_parent: 0,
    task_struct_flags: 0,
    task_struct_group_leader: 0,
    task_struct_start_time: 0,
    reading_module: 0,
    loading_module: 0,
    reading_kexec_image: 0,
    reading_kexec_initramfs: 0,
    loading_kexec_image: 0,
    vm_area_struct_vm_file: 0,
    linux_binprm_p: 0,
    linux_binprm_argc: 0,
    linux_binprm_envc: 0,
    lockdown_dev_mem: 0,
    lockdown_kcore: 0,
    super_block_s_magic: 0,
    lockdown_hibernation: 0,
    lockdown_kprobes: 0,
    lockdown_tracefs: 0,
    lockdown_perf: 0,
    lockdown_dbg_read_kernel: 0,
    perf_event_attr_sample_type: 0,
    perf_event_open_has_attr: 0,
    pt_regs_orig_ax: 0,
    lockdown_integrity_max: 0,
    io_uring_cmd_file: 0,
    inode_i_dentry_first: 0,
    dentry_d_alias: 0,
};

/// Index 0: the active policy generation (0 = no policy).
#[map(name = "GUARD_ACTIVE")]
static ACTIVE: Array<u32> = Array::pinned(1, 0);
#[map(name = "GUARD_META")]
static META: HashMap<u32, PolicyMeta> = HashMap::pinned(4, 0);
#[map(name = "GUARD_DEVS")]
static DEVS: HashMap<DevKey, u32> = HashMap::pinned(2 * MAX_POINTS, 0);
#[map(name = "GUARD_DIRS")]
static DIRS: HashMap<DirKey, u32> = HashMap::pinned(2 * MAX_POINTS, 0);
#[map(name = "GUARD_RULE_SLOTS")]
static RULE_SLOTS: Array<RuleSlot> = Array::pinned(Rules::COUNT, BPF_F_MMAPABLE);
#[map(name = "GUARD_EXES")]
static EXES: HashMap<ExeKey, u32> = HashMap::pinned(MAX_EXES, 0);
#[map(name = "GUARD_TAINTED")]
static TAINTED: HashMap<ExeKey, Taint> = HashMap::pinned(MAX_EXES, 0);
#[map(name = "GUARD_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);
#[map(name = "GUARD_RATE")]
static RATE: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);
#[map(name = "GUARD_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);
#[map(name = "GUARD_SELF")]
static SELF: Array<SelfProtect> = Array::pinned(1, 0);
#[map(name = "GUARD_OBJECTS")]
static OBJECTS: HashMap<ObjectKey, u32> = HashMap::pinned(MAX_OBJECTS, 0);
#[map(name = "GUARD_DIR_FILTER")]
static DIR_FILTER: Array<u64> = Array::pinned(dir_filter::WORDS, 0);
#[map(name = "GUARD_IMMUTABLE")]
static IMMUTABLE: HashMap<ExeKey, u32> = HashMap::pinned(MAX_IMMUTABLE, 0);
#[map(name = "GUARD_SUPERVISORS")]
static SUPERVISORS: HashMap<LaunchKey, ExeKey> = HashMap::pinned(MAX_EXES, 0);
#[map(name = "GUARD_RELAYS")]
static RELAYS: HashMap<LaunchKey, u32> = HashMap::pinned(MAX_EXES, 0);
#[map(name = "GUARD_LAUNCHES")]
static LAUNCHES: LruHashMap<u32, Launch> = LruHashMap::pinned(MAX_LAUNCHES, 0);
#[map(name = "GUARD_ANCESTORS")]
static ANCESTORS: HashMap<DirKey, u32> = HashMap::pinned(MAX_ANCESTORS, 0);
/// Block devices of filesystems holding protected directories (keyed like
/// `DEVS`): the access bits nobody but guardd gets on them (write; read too
/// unless every protected directory there is fscrypt-encrypted).
#[map(name = "GUARD_RAW_DEVICES")]
static RAW_DEVICES: HashMap<DevKey, u32> = HashMap::pinned(2 * MAX_POINTS + MAX_GUARD_DEVICES, 0);
/// Character devices passing commands to a disk in `RAW_DEVICES`, with
/// what nobody but guardd gets on them (that disk's bits).
#[map(name = "GUARD_PASSTHROUGH")]
static PASSTHROUGH: HashMap<DevKey, u32> = HashMap::pinned(2 * MAX_POINTS + MAX_GUARD_DEVICES, 0);
/// Binaries confined to approved libraries, and the approved files
/// (`guard_common::library` bits), per generation.
#[map(name = "GUARD_LIBRARIES")]
static LIBRARIES: HashMap<LaunchKey, u32> = HashMap::pinned(MAX_LIBRARIES, 0);
#[map(name = "GUARD_ARGUMENTS")]
static ARGUMENTS: HashMap<LaunchKey, Arguments> = HashMap::pinned(MAX_EXES, 0);
/// Where `bprm_committed_creds` copies a process's arguments (too big for
/// the BPF stack).
#[map(name = "GUARD_ARGV_SCRATCH")]
static ARGV_SCRATCH: PerCpuArray<Arguments> = PerCpuArray::pinned(1, 0);
#[map(name = "GUARD_ENVIRONMENT")]
static ENVIRONMENT: HashMap<EnvKey, u32> = HashMap::pinned(2 * MAX_ENV_ENTRIES, 0);
/// Where `bprm_committed_creds` builds `ENVIRONMENT` keys and reads strings.
#[map(name = "GUARD_ENV_SCRATCH")]
static ENV_SCRATCH: PerCpuArray<EnvScratch> = PerCpuArray::pinned(1, 0);
#[map(name = "GUARD_TAINT_SEQ")]
static TAINT_SEQ: Array<u64> = Array::pinned(taint_seq::SLOTS, 0);
#[map(name = "GUARD_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// The offsets patched into `.rodata` at load time. Only the pointer is read
/// volatile, so the compiler cannot fold the fields to their build-time zeros
/// yet loads just the fields a hook uses (the verifier sees each as a
/// constant of the frozen map).
#[inline(always)]
fn offsets() -> &'static KernelOffsets {
    unsafe { &*core::ptr::read_volatile(&core::ptr::addr_of!(OFFSETS)) }
}

/// Reads the field at `base + off` of a kernel object.
///
/// `base` is always a BTF-typed pointer (a hook argument, the current task
/// from `bpf_get_current_task_btf`, or a pointer field read from one) and
/// `off` a constant from the frozen `OFFSETS`, so the verifier checks the
/// access against the field's type and emits a fault-safe direct load: a
/// few instructions instead of a `bpf_probe_read_kernel` call. A load that
/// faults reads 0; a null `base` is an error (fail closed).
#[inline(always)]
unsafe fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    if base == 0 {
        return Err(EPERM);
    }
    Ok(core::ptr::read_volatile((base + off as u64) as *const T))
}

/// How a walk reads a dentry's fields: `Typed` for a BTF-typed pointer
/// (`read`), `Untyped` for one found by arithmetic, which the verifier
/// does not let the program load through (`walk_start`).
trait Fields {
    unsafe fn get<T>(base: u64, off: u32) -> Result<T, i32>;
}

struct Typed;

impl Fields for Typed {
    #[inline(always)]
    unsafe fn get<T>(base: u64, off: u32) -> Result<T, i32> {
        read(base, off)
    }
}

struct Untyped;

impl Fields for Untyped {
    /// A fault is an error here (fail closed), not a 0.
    #[inline(always)]
    unsafe fn get<T>(base: u64, off: u32) -> Result<T, i32> {
        if base == 0 {
            return Err(EPERM);
        }
        bpf_probe_read_kernel((base + off as u64) as *const T).map_err(|_| EPERM)
    }
}

/// The current task as a BTF-typed pointer, so its fields can be `read`.
#[inline(always)]
fn current_task() -> u64 {
    unsafe { bpf_get_current_task_btf() as u64 }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(v) = STATS.get_ptr_mut(index) {
        unsafe { *v += 1 };
    }
}

/// The object of a decision: a dentry (possibly negative) on some superblock.
struct Object {
    dentry: u64,
    dev: u32,
    ino: u64,
    /// Not 0 when `dentry` is another filesystem's name for the object
    /// (`flags::BENEATH`): that filesystem's device.
    beneath: u32,
}

/// Where the object sits in the active policy.
struct Protection {
    generation: u32,
    point: u32,
    /// `dir_value` mode bits of the generation.
    mode_bits: u32,
}

/// Outcome of looking for a protected ancestor.
enum Lookup {
    NotProtected,
    Protected(Protection),
}

#[inline(always)]
unsafe fn dentry_ino(o: &KernelOffsets, dentry: u64) -> Result<u64, i32> {
    dentry_ino_with::<Typed>(o, dentry)
}

#[inline(always)]
unsafe fn dentry_ino_with<F: Fields>(o: &KernelOffsets, dentry: u64) -> Result<u64, i32> {
    let inode: u64 = F::get(dentry, o.dentry_d_inode)?;
    if inode == 0 {
        return Ok(0); // negative dentry: the name does not exist (yet)
    }
    F::get(inode, o.inode_i_ino)
}

/// The device of the filesystem `dentry` is on.
#[inline(always)]
unsafe fn dentry_dev(o: &KernelOffsets, dentry: u64) -> Result<u32, i32> {
    let sb: u64 = read(dentry, o.dentry_d_sb)?;
    read(sb, o.super_block_s_dev)
}

#[inline(always)]
unsafe fn object(o: &KernelOffsets, dentry: u64) -> Result<Object, i32> {
    let dev = dentry_dev(o, dentry)?;
    let ino = dentry_ino(o, dentry)?;
    Ok(Object { dentry, dev, ino, beneath: 0 })
}

/// False when `ino` is certainly not a protected directory (one array
/// load instead of a hash lookup); a missing word counts as maybe.
#[inline(always)]
fn may_be_protected(ino: u64) -> bool {
    in_dir_filter(dir_filter::slot(ino))
}

/// False when nothing on filesystem `dev` is protected by a live generation.
#[inline(always)]
fn may_hold_protected(dev: u32) -> bool {
    filesystem_flags(dev) & fs_flags::POINTS != 0
}

/// What filesystem `dev` may hold (`fs_flags`), from one load of the filter
/// word its flags share; a missing word counts as everything.
#[inline(always)]
fn filesystem_flags(dev: u32) -> u64 {
    let (word, shift) = dir_filter::dev_slot(dev);
    match DIR_FILTER.get(word) {
        Some(bits) => (bits >> shift) & fs_flags::ALL,
        None => fs_flags::ALL,
    }
}

#[inline(always)]
fn in_dir_filter((word, mask): (u32, u64)) -> bool {
    match DIR_FILTER.get(word) {
        Some(bits) => bits & mask != 0,
        None => true,
    }
}

/// Walks the dentry ancestors of `dentry` on filesystem `dev` looking for a
/// protected directory of the active generation. `dentry` itself is looked
/// at only with `itself`: protected points are directories, so a file never
/// is one.
#[inline(always)]
unsafe fn find_point<F: Fields>(
    o: &KernelOffsets,
    generation: u32,
    dev: u32,
    dentry: u64,
    itself: bool,
) -> Result<Lookup, i32> {
    let mut dentry = dentry;
    let mut ino = if itself { dentry_ino_with::<F>(o, dentry)? } else { 0 };
    for _ in 0..MAX_DEPTH {
        if ino != 0 && may_be_protected(ino) {
            let key = DirKey { generation, dev, ino };
            if let Some(value) = protected_dir(&key) {
                return Ok(Lookup::Protected(Protection {
                    generation,
                    point: value & dir_value::POINT_MASK,
                    mode_bits: value & !dir_value::POINT_MASK,
                }));
            }
        }
        let parent: u64 = F::get(dentry, o.dentry_d_parent)?;
        if parent == dentry || parent == 0 {
            // The top of the walk must be the filesystem's root. Anything
            // else is a disconnected dentry (open_by_handle_at of an uncached
            // file): its place in the tree is unknown, so deny.
            let sb: u64 = F::get(dentry, o.dentry_d_sb)?;
            let root: u64 = F::get(sb, o.super_block_s_root)?;
            if root != dentry {
                return Err(EPERM);
            }
            return Ok(Lookup::NotProtected);
        }
        dentry = parent;
        ino = dentry_ino_with::<F>(o, dentry)?;
    }
    Err(EPERM) // deeper than MAX_DEPTH on a protected filesystem
}

/// The executable identity decisions give a kernel thread (no real file
/// has device 0): it matches no rule.
const KERNEL_THREAD: ExeKey = ExeKey { dev: 0, _pad: 0, ino: 0 };

/// Who is asking: the executable's identity (credentials are read only
/// where a policy names a uid or gid).
struct Caller {
    exe: ExeKey,
}

/// The identity of a file's inode.
#[inline(always)]
unsafe fn file_identity(o: &KernelOffsets, file: u64) -> Result<ExeKey, i32> {
    let inode: u64 = read(file, o.file_f_inode)?;
    let dev = inode_dev(o, inode)?;
    let ino: u64 = read(inode, o.inode_i_ino)?;
    Ok(ExeKey { dev, _pad: 0, ino })
}

/// The executable of `task`; `None` for kernel threads (no mm).
#[inline(always)]
unsafe fn task_exe(o: &KernelOffsets, task: u64) -> Result<Option<ExeKey>, i32> {
    let mm: u64 = read(task, o.task_struct_mm)?;
    if mm == 0 {
        return Ok(None);
    }
    let exe_file: u64 = read(mm, o.mm_struct_exe_file)?;
    if exe_file == 0 {
        return Err(EPERM);
    }
    Ok(Some(file_identity(o, exe_file)?))
}

/// `None` for kernel threads (no mm): the kernel itself is not confined.
#[inline(always)]
unsafe fn caller(o: &KernelOffsets) -> Result<Option<Caller>, i32> {
    let Some(exe) = task_exe(o, current_task())? else {
        return Ok(None);
    };
    Ok(Some(Caller { exe }))
}

/// What the rules of `point` grant `caller`: (allow, audit, rule).
#[inline(always)]
fn grants(p: &Protection, c: &Caller) -> (u32, u32, u32) {
    let (mut allow, mut audit, mut rule) = (0u32, 0u32, NO_RULE);
    if taints_outstanding() && TAINTED.get_ptr(&c.exe).is_some() {
        return (allow, audit, rule); // the binary was written to since apply
    }
    // Most policies name no uid or gid: then one lookup, not four.
    let uses_ids = p.mode_bits & dir_value::USES_IDS != 0;
    let (uid, gid) = if uses_ids {
        let uid_gid = bpf_get_current_uid_gid();
        (uid_gid as u32, (uid_gid >> 32) as u32)
    } else {
        (ANY_ID, ANY_ID) // not looked up
    };
    let ids = [(ANY_ID, ANY_ID), (uid, gid), (uid, ANY_ID), (ANY_ID, gid)];
    for (i, (uid, gid)) in ids.into_iter().enumerate() {
        if i > 0 && !uses_ids {
            break;
        }
        let key = RuleKey {
            generation: p.generation,
            point: p.point,
            exe_dev: c.exe.dev,
            uid,
            exe_ino: c.exe.ino,
            gid,
            _pad: 0,
        };
        if let Some(v) = rule_entry(&key) {
            allow |= v.allow;
            audit |= v.audit;
            if v.rule < rule {
                rule = v.rule;
            }
        }
    }
    (allow, audit, rule)
}

/// The value of rule entry `key`, if the active policy has it.
#[inline(always)]
fn rule_entry(key: &RuleKey) -> Option<RuleValue> {
    slots::find::<Rules>(key, |index| RULE_SLOTS.get(index))
}

/// The `dir_value` bits of protected directory `key`, if it is one.
#[inline(always)]
fn protected_dir(key: &DirKey) -> Option<u32> {
    unsafe { DIRS.get(key) }.copied()
}

/// What to report about one decision.
struct Report {
    verdict: u32,
    access: u32,
    hook: u32,
    flags: u32,
    point: u32,
    rule: u32,
    generation: u32,
    exe: ExeKey,
}

/// Decides `access` to `dentry`. Returns 0 or -EPERM.
#[inline(always)]
unsafe fn decide(dentry: u64, access: u32, hook: u32) -> i32 {
    let generation = match ACTIVE.get(0) {
        Some(g) if *g != 0 => *g,
        _ => return ALLOW, // no policy applied
    };
    let o = offsets();
    let dev = dentry_dev(o, dentry);
    if let Ok(dev) = dev {
        if !may_hold_protected(dev) {
            return ALLOW; // nothing protected on this filesystem
        }
    }
    decide_on(o, generation, dentry, dev, true, access, hook)
}

/// `decide` for a caller that already read the active generation (not 0)
/// and the device of the dentry's filesystem (`dentry_dev`), found that
/// filesystem may hold protected directories, and knows whether the dentry
/// may be a directory (`itself`, see `find_point`).
#[inline(always)]
unsafe fn decide_on(
    o: &KernelOffsets,
    generation: u32,
    dentry: u64,
    dev: Result<u32, i32>,
    itself: bool,
    access: u32,
    hook: u32,
) -> i32 {
    let lookup = dev.and_then(|dev| find_point::<Typed>(o, generation, dev, dentry, itself));
    decide_found(o, generation, dentry, None, dev, lookup, access, hook)
}

/// `decide_on` once the walk is done: `lookup` is where it found the
/// object, reported as `dentry` and the inode `inode` (when given, else
/// the dentry's).
#[inline(always)]
unsafe fn decide_found(
    o: &KernelOffsets,
    generation: u32,
    dentry: u64,
    inode: Option<u64>,
    dev: Result<u32, i32>,
    lookup: Result<Lookup, i32>,
    access: u32,
    hook: u32,
) -> i32 {
    match dev.and_then(|dev| try_decide_found(o, generation, dentry, inode, dev, lookup, access, hook)) {
        Ok(ret) => ret,
        Err(_) => fail_closed(dentry, access, hook),
    }
}

/// Decides `access` to `dentry` on filesystem `dev` under `generation`
/// (not 0), found by a walk at `lookup`.
#[inline(always)]
unsafe fn try_decide_found(
    o: &KernelOffsets,
    generation: u32,
    dentry: u64,
    inode: Option<u64>,
    dev: u32,
    lookup: Result<Lookup, i32>,
    access: u32,
    hook: u32,
) -> Result<i32, i32> {
    let protection = match lookup {
        Ok(Lookup::NotProtected) => return Ok(ALLOW),
        Ok(Lookup::Protected(p)) => p,
        Err(e) => return walk_failed(generation, dev, e),
    };
    // Read only to be reported.
    let obj = reported(o, dentry, inode, dev);
    // A kernel thread has no executable, so no rule: nothing of the kernel's
    // own reaches a protected file through these hooks (writeback, swap, loop
    // and dm-crypt I/O do not pass them; io_uring's workers are the
    // submitter's threads), but an in-kernel file server (nfsd, ksmbd)
    // serves the files to whoever it lets in.
    let caller = caller(&o)?.unwrap_or(Caller { exe: KERNEL_THREAD });
    let (allow, audit, rule) = grants(&protection, &caller);
    let mut report = Report {
        verdict: 0,
        access,
        hook,
        flags: 0,
        point: protection.point,
        rule,
        generation,
        exe: caller.exe,
    };
    // One report site for the three verdicts (`fail_closed` has the other),
    // so the verifier checks `emit` here once, not once per verdict.
    if access & allow == access {
        count(stat::ALLOWED);
        // Reads and maps of an opened file are not audited one by one: the
        // open was.
        let per_open = hook != hook::FILE_PERMISSION && hook != hook::MMAP_FILE;
        if access & audit == 0 || !per_open {
            return Ok(ALLOW);
        }
        report.verdict = verdict::AUDITED;
    } else if protection.mode_bits & dir_value::AUDIT != 0 {
        report.verdict = verdict::WOULD_DENY;
    } else {
        report.verdict = verdict::DENIED;
    }
    count(verdict_counter(report.verdict));
    emit(&o, &obj, &report);
    // Read back volatile: computed from the policy's mode bits, the return
    // value would be folded into arithmetic whose range the verifier loses.
    if core::ptr::read_volatile(&report.verdict) == verdict::DENIED {
        Ok(EPERM)
    } else {
        Ok(ALLOW)
    }
}

/// The object of a decision on `dentry` as reported: `inode` when given
/// (`file_open`: the opened file's), else the dentry's.
#[inline(always)]
unsafe fn reported(o: &KernelOffsets, dentry: u64, inode: Option<u64>, dev: u32) -> Object {
    let Some(inode) = inode else {
        let ino = dentry_ino(o, dentry).unwrap_or(0);
        return Object { dentry, dev, ino, beneath: 0 };
    };
    let ino = read(inode, o.inode_i_ino).unwrap_or(0);
    let beneath = match read::<u64>(dentry, o.dentry_d_inode) {
        Ok(own_inode) if own_inode == inode => 0,
        _ => dentry_dev(o, dentry).unwrap_or(0),
    };
    Object { dentry, dev, ino, beneath }
}

/// The `stat` counter of a reported verdict.
#[inline(always)]
fn verdict_counter(v: u32) -> u32 {
    match v {
        verdict::AUDITED => stat::AUDITED,
        verdict::WOULD_DENY => stat::WOULD_DENY,
        _ => stat::DENIED,
    }
}

/// A failed read or walk (disconnected dentry, too deep) denies only on a
/// filesystem that really holds protected directories, not on one that
/// merely shares its filter bit with one.
#[inline(always)]
fn walk_failed(generation: u32, dev: u32, e: i32) -> Result<i32, i32> {
    if DEVS.get_ptr(&DevKey { generation, dev }).is_none() {
        return Ok(ALLOW);
    }
    Err(e)
}

/// Per-CPU budget of events per second: false when this one is suppressed.
#[inline(always)]
fn within_rate() -> bool {
    let Some(state) = RATE.get_ptr_mut(0) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let s = unsafe { &mut *state };
    if now.wrapping_sub(s.window_start_ns) >= 1_000_000_000 {
        s.window_start_ns = now;
        s.sent = 0;
    }
    let budget = match SETTINGS.get(0).map(|s| s.events_per_sec) {
        Some(n) if n != 0 => n,
        _ => DEFAULT_EVENTS_PER_SEC_PER_CPU,
    };
    if s.sent >= budget {
        count(stat::SUPPRESSED);
        return false;
    }
    s.sent += 1;
    true
}

#[inline(always)]
unsafe fn emit(o: &KernelOffsets, obj: &Object, r: &Report) {
    if !within_rate() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::DROPPED);
        return;
    };
    let e = &mut *entry.as_mut_ptr();
    fill_header(r, e);
    e.dev = obj.dev;
    e.ino = obj.ino;
    if obj.beneath != 0 {
        e.flags |= flags::BENEATH;
        e.detail = obj.beneath;
    }
    let generation = e.generation;
    // Names under another filesystem go up to its root.
    let beneath = obj.beneath != 0;
    fill_path(o, obj, e, |ino| {
        if beneath {
            return false;
        }
        let key = DirKey { generation, dev: obj.dev, ino };
        protected_dir(&key)
            .map(|bits| bits & dir_value::POINT_MASK == r.point)
            .unwrap_or(false)
    });
    fill_exe(o, e);
    entry.submit(0);
}

/// The fields every event has: the decision and who asked.
#[inline(always)]
unsafe fn fill_header(r: &Report, e: &mut Event) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    e.verdict = r.verdict;
    e.access = r.access;
    e.hook = r.hook;
    e.flags = r.flags;
    e.pid = pid_tgid as u32;
    e.tgid = (pid_tgid >> 32) as u32;
    e.uid = uid_gid as u32;
    e.gid = (uid_gid >> 32) as u32;
    e.point = r.point;
    e.rule = r.rule;
    e.generation = r.generation;
    e._pad = 0;
    e.exe_dev = r.exe.dev;
    e.exe_ino = r.exe.ino;
    e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    e.target = 0;
    e.detail = 0;
}

/// Copies the names of the caller's executable up to its filesystem's root.
#[inline(always)]
unsafe fn fill_exe(o: &KernelOffsets, e: &mut Event) {
    for i in 0..EXE_DEPTH {
        e.exe_path[i][0] = 0;
    }
    let task = current_task();
    let Ok(mm) = read::<u64>(task, o.task_struct_mm) else {
        return;
    };
    if mm == 0 {
        return;
    }
    let Ok(exe) = read::<u64>(mm, o.mm_struct_exe_file) else {
        return;
    };
    if exe == 0 {
        return;
    }
    let Ok(mut dentry) = read::<u64>(exe, o.file_f_path_dentry) else {
        return;
    };
    for i in 0..EXE_DEPTH {
        let Ok(parent) = read::<u64>(dentry, o.dentry_d_parent) else {
            return;
        };
        if parent == dentry {
            return; // the filesystem's root
        }
        let Ok(name) = read::<u64>(dentry, o.dentry_d_name_name) else {
            return;
        };
        let slot: &mut [u8; NAME_LEN] = &mut e.exe_path[i];
        if bpf_probe_read_kernel_str_bytes(name as *const u8, slot).is_err() {
            slot[0] = 0;
        }
        dentry = parent;
    }
    if read::<u64>(dentry, o.dentry_d_parent).is_ok_and(|p| p != dentry) {
        e.flags |= flags::EXE_TRUNCATED;
    }
}

/// Copies the names from the object up to the directory `is_top` recognises.
#[inline(always)]
unsafe fn fill_path(o: &KernelOffsets, obj: &Object, e: &mut Event, is_top: impl Fn(u64) -> bool) {
    let mut dentry = obj.dentry;
    let mut ino = obj.ino;
    for i in 0..PATH_DEPTH {
        e.path[i][0] = 0;
    }
    for i in 0..PATH_DEPTH {
        if ino != 0 && is_top(ino) {
            return;
        }
        let Ok(name) = read::<u64>(dentry, o.dentry_d_name_name) else {
            return;
        };
        let slot: &mut [u8; NAME_LEN] = &mut e.path[i];
        if bpf_probe_read_kernel_str_bytes(name as *const u8, slot).is_err() {
            slot[0] = 0;
        }
        let Ok(parent) = read::<u64>(dentry, o.dentry_d_parent) else {
            return;
        };
        if parent == dentry {
            return;
        }
        dentry = parent;
        ino = dentry_ino(o, dentry).unwrap_or(0);
    }
    e.flags |= flags::PATH_TRUNCATED;
}

/// Denies after a kernel read about `dentry` failed (fail closed): counted,
/// and reported with what could be read.
#[inline(always)]
unsafe fn fail_closed(dentry: u64, access: u32, hook: u32) -> i32 {
    count(stat::FAIL_CLOSED);
    count(stat::DENIED);
    let o = offsets();
    let obj = object(&o, dentry).unwrap_or(Object { dentry, dev: 0, ino: 0, beneath: 0 });
    let report = Report {
        verdict: verdict::DENIED,
        access,
        hook,
        flags: flags::FAIL_CLOSED,
        point: u32::MAX,
        rule: NO_RULE,
        generation: ACTIVE.get(0).copied().unwrap_or(0),
        exe: ExeKey { dev: 0, _pad: 0, ino: 0 },
    };
    emit(&o, &obj, &report);
    EPERM
}

/// A binary some policy allows lost its rules once opened for writing.
#[inline(always)]
unsafe fn taint_if_allowed_exe(o: &KernelOffsets, inode: u64) {
    let (Ok(dev), Ok(ino)) = (inode_dev(o, inode), read::<u64>(inode, o.inode_i_ino)) else {
        return;
    };
    let key = ExeKey { dev, _pad: 0, ino };
    if EXES.get_ptr(&key).is_some() {
        let uid_gid = bpf_get_current_uid_gid();
        let taint = Taint {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            uid: uid_gid as u32,
        };
        let _ = TAINTED.insert(&key, &taint, 0);
        // After the insert: once decisions see the count move, they look
        // the binary up in TAINTED and find it.
        if let Some(recorded) = TAINT_SEQ.get_ptr_mut(taint_seq::RECORDED) {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(recorded, 1);
        }
    }
}

/// Whether some binary may be tainted (`taint_seq`): false only when guardd
/// found `TAINTED` empty and the kernel recorded no taint since.
#[inline(always)]
fn taints_outstanding() -> bool {
    match (TAINT_SEQ.get(taint_seq::RECORDED), TAINT_SEQ.get(taint_seq::CLEARED)) {
        (Some(recorded), Some(cleared)) => {
            unsafe { core::ptr::read_volatile(recorded) != core::ptr::read_volatile(cleared) }
        }
        _ => true,
    }
}

#[lsm(hook = "file_open")]
#[inline(always)]
pub fn file_open(ctx: LsmContext) -> i32 {
    unsafe {
        let file: u64 = ctx.arg(0);
        if opens_nothing_guarded(file) {
            return ALLOW;
        }
        let o = offsets();
        let Ok(mode) = read::<u32>(file, o.file_f_mode) else {
            return EPERM;
        };
        let Ok(dentry) = read::<u64>(file, o.file_f_path_dentry) else {
            return EPERM;
        };
        if mode & FMODE_WRITE != 0 {
            let ret = protect_immutable(dentry, access::WRITE, hook::FILE_OPEN);
            if ret != ALLOW {
                return ret;
            }
            if let Ok(inode) = read::<u64>(file, o.file_f_inode) {
                taint_if_allowed_exe(o, inode);
            }
            let ret = protect_kernel_writes(o, dentry);
            if ret != ALLOW {
                return ret;
            }
        }
        let opened = match opened(o, file) {
            Ok(opened) => opened,
            Err(e) => return e,
        };
        // The inode's filesystem, not the path's: they differ for a file
        // opened under another's path (`walk_start`).
        let dev = inode_dev(o, opened.inode);
        let fs = match dev {
            Ok(dev) => filesystem_flags(dev),
            Err(_) => fs_flags::ALL, // decided (denied) below
        };
        let may_hold = may_be_inside(o, fs, &opened);
        let may_hold_secret = fs & fs_flags::SECRETS != 0;
        // Opens for writing of such files end here (those for reading
        // ended in `opens_nothing_guarded`), before the policy is looked up.
        if !may_hold && !may_hold_secret && opened.device.is_none() {
            return ALLOW;
        }
        if may_hold_secret && mode & FMODE_READ != 0 {
            let ret = protect_secret(o, dentry, opened.inode, dev);
            if ret != ALLOW {
                return ret;
            }
        }
        let generation = ACTIVE.get(0).copied().unwrap_or(0);
        let mut want = 0;
        if mode & FMODE_READ != 0 {
            want |= access::READ;
        }
        if mode & FMODE_WRITE != 0 {
            want |= access::WRITE;
        }
        if mode & FMODE_EXEC != 0 {
            want |= access::EXEC;
        }
        if let Some(node) = opened.device {
            let ret = protect_device(generation, node, want, hook::FILE_OPEN);
            if ret != ALLOW {
                return ret;
            }
        }
        if generation == 0 || !may_hold {
            return ALLOW; // no policy, or nothing protected here
        }
        decide_opened(o, generation, dentry, &opened, dev, want, hook::FILE_OPEN)
    }
}

/// Most opens: for reading, not of a device node, of a file no protected
/// directory or secret of its filesystem can hold. Decided first, in a few
/// loads kept apart from the rest of `file_open` (which reads them again),
/// so that the compiler keeps them in registers: every open pays for this
/// path. Any failed read answers false, and the full decision follows.
#[inline(always)]
unsafe fn opens_nothing_guarded(file: u64) -> bool {
    let o = offsets();
    let Ok(mode) = read::<u32>(file, o.file_f_mode) else {
        return false;
    };
    if mode & FMODE_WRITE != 0 {
        return false;
    }
    let Ok(opened) = opened(o, file) else {
        return false;
    };
    if opened.device.is_some() {
        return false;
    }
    let Ok(dev) = inode_dev(o, opened.inode) else {
        return false;
    };
    let fs = filesystem_flags(dev);
    fs & fs_flags::SECRETS == 0 && !may_be_inside(o, fs, &opened)
}

/// Decides `access` to an opened file (`dentry` its path's, `opened` its
/// inode's, `dev` the inode's filesystem, which may hold protected
/// directories).
#[inline(always)]
unsafe fn decide_opened(
    o: &KernelOffsets,
    generation: u32,
    dentry: u64,
    opened: &Opened,
    dev: Result<u32, i32>,
    access: u32,
    hook: u32,
) -> i32 {
    let lookup = match (dev, walk_start(o, dentry, opened.inode)) {
        (Ok(dev), Ok(Start::Typed(start))) => find_point::<Typed>(o, generation, dev, start, opened.is_dir),
        (Ok(dev), Ok(Start::Untyped(start))) => find_point::<Untyped>(o, generation, dev, start, false),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    decide_found(o, generation, dentry, Some(opened.inode), dev, lookup, access, hook)
}

/// Whether the opened file may be inside a protected directory of its
/// filesystem (whose `fs_flags` are `fs`); false decides without a walk.
#[inline(always)]
unsafe fn may_be_inside(o: &KernelOffsets, fs: u64, opened: &Opened) -> bool {
    fs & fs_flags::POINTS != 0 && !outside_encrypted_points(o, fs, opened)
}

/// Whether the opened file is certainly outside every protected directory
/// of a filesystem where fscrypt encrypts them all (no `fs_flags::PLAIN`):
/// a regular file or directory fscrypt does not encrypt. fscrypt keeps
/// such a file out of every encrypted directory: it cannot be created,
/// linked or renamed into one (EXDEV), and a directory is encrypted only
/// while empty. So, by induction up its names, none of its ancestors is a
/// protected directory, and the walk (about 70 guest instructions a level)
/// is skipped for one load. Other kinds (fifos, sockets, device nodes) are
/// never encrypted and are walked as before; a read that fails walks too.
#[inline(always)]
unsafe fn outside_encrypted_points(o: &KernelOffsets, fs: u64, opened: &Opened) -> bool {
    // One shift tests both kinds (a bit per `S_IFMT >> 12`).
    const KINDS_FSCRYPT_KEEPS_OUT: u32 = 1 << (S_IFREG >> 12) | 1 << (S_IFDIR >> 12);
    if fs & fs_flags::PLAIN != 0 || (KINDS_FSCRYPT_KEEPS_OUT >> (opened.kind >> 12)) & 1 == 0 {
        return false;
    }
    match read::<u32>(opened.inode, o.inode_i_flags) {
        Ok(flags) => flags & S_ENCRYPTED == 0,
        Err(_) => false,
    }
}

/// Where the walk for an opened file starts.
enum Start {
    Typed(u64),
    Untyped(u64),
}

/// The opened file's own dentry. Before Linux 6.8 overlayfs opens the file
/// beneath an overlay under the overlay's path: `f_path` is then the
/// overlay's dentry (on a filesystem without protected directories) and
/// `f_inode` the file beneath, which may be a protected one (an overlay
/// whose lower layer is a protected directory). That file is walked from
/// its inode's first dentry (any: no protected file has a name outside
/// protected directories), a pointer found by arithmetic.
#[inline(always)]
unsafe fn walk_start(o: &KernelOffsets, dentry: u64, inode: u64) -> Result<Start, i32> {
    let own: u64 = read(dentry, o.dentry_d_inode)?;
    if own == inode {
        return Ok(Start::Typed(dentry));
    }
    let first: u64 = Untyped::get(inode, o.inode_i_dentry_first)?;
    if first == 0 {
        return Err(EPERM); // no name to find it by: fail closed
    }
    Ok(Start::Untyped(first - o.dentry_d_alias as u64))
}

/// The device of the filesystem `inode` is on.
#[inline(always)]
unsafe fn inode_dev(o: &KernelOffsets, inode: u64) -> Result<u32, i32> {
    let sb: u64 = read(inode, o.inode_i_sb)?;
    read(sb, o.super_block_s_dev)
}

/// Checked on every open for writing while a policy is active. An allowed
/// program's core holds its memory (the data it read), so the kernel may
/// write it only inside a protected directory; nobody but guardd may
/// change where cores go (`kernel_setting`) or turn on swap (it would hold
/// the database's pages where guard does not keep them).
#[inline(always)]
unsafe fn protect_kernel_writes(o: &KernelOffsets, dentry: u64) -> i32 {
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return ALLOW;
    }
    match try_protect_kernel_writes(o, generation, dentry) {
        Ok(ret) => ret,
        Err(_) => fail_closed(dentry, access::WRITE, hook::FILE_OPEN),
    }
}

#[inline(always)]
unsafe fn try_protect_kernel_writes(o: &KernelOffsets, generation: u32, dentry: u64) -> Result<i32, i32> {
    let task_flags: u32 = read(current_task(), o.task_struct_flags)?;
    let dumping = task_flags & PF_DUMPCORE != 0;
    let swapping_on = !dumping && in_swapon(o)?;
    if !dumping && !swapping_on && !is_kernel_setting(o, dentry)? {
        return Ok(ALLOW);
    }
    let Some(caller) = caller(o)? else {
        return Ok(ALLOW);
    };
    if is_guardd(&caller.exe) {
        return Ok(ALLOW);
    }
    let dev = dentry_dev(o, dentry)?;
    let point = if dumping {
        if EXES.get_ptr(&caller.exe).is_none() {
            return Ok(ALLOW); // not an allowed program: its memory holds no protected data
        }
        // Inside a protected directory the policy decides the core file like any other.
        if let Lookup::Protected(_) = find_point::<Typed>(o, generation, dev, dentry, false)? {
            return Ok(ALLOW);
        }
        CRASH_DUMP_POINT
    } else if swapping_on {
        SWAPON_POINT
    } else {
        KERNEL_SETTING_POINT
    };
    let ino = dentry_ino(o, dentry)?;
    let report = Report {
        verdict: verdict::DENIED,
        access: access::WRITE,
        hook: hook::FILE_OPEN,
        flags: 0,
        point,
        rule: NO_RULE,
        generation,
        exe: caller.exe,
    };
    let audit_mode = META.get(&generation).map(|m| m.mode).unwrap_or(0) == MODE_AUDIT;
    Ok(deny_or_report(o, &Object { dentry, dev, ino, beneath: 0 }, report, audit_mode))
}

/// Whether the current task is in swapon(2): its open of the swap area is
/// the only hook on the way (the kernel then writes pages there itself).
#[inline(always)]
unsafe fn in_swapon(o: &KernelOffsets) -> Result<bool, i32> {
    let regs = aya_ebpf::helpers::generated::bpf_task_pt_regs(current_task() as *mut _) as u64;
    let nr: u64 = read(regs, o.pt_regs_orig_ax)?;
    Ok(syscall::is_swapon(nr))
}

/// Whether `dentry` is one of `kernel_setting::NAMES` in procfs's
/// `sys/kernel` (any procfs instance, any path to it), or an NVMe target
/// namespace's `device_path` in configfs.
#[inline(always)]
unsafe fn is_kernel_setting(o: &KernelOffsets, dentry: u64) -> Result<bool, i32> {
    let sb: u64 = read(dentry, o.dentry_d_sb)?;
    let magic: u64 = read(sb, o.super_block_s_magic)?;
    if magic == kernel_setting::CONFIGFS_MAGIC {
        return Ok(kernel_setting::matches(&kernel_setting::DEVICE_PATH, name_words(o, dentry)?));
    }
    if magic != kernel_setting::PROC_SUPER_MAGIC {
        return Ok(false); // every other filesystem: a few loads
    }
    let words = name_words(o, dentry)?;
    let mut listed = false;
    for name in kernel_setting::NAMES.iter() {
        listed |= kernel_setting::matches(name, words);
    }
    if !listed {
        return Ok(false);
    }
    let parent: u64 = read(dentry, o.dentry_d_parent)?;
    Ok(kernel_setting::matches(&kernel_setting::FOLDER, name_words(o, parent)?))
}

/// The first 16 bytes of a dentry's name. Names are NUL-terminated and
/// stored in at least 32 bytes (short ones inline in the dentry), so the
/// read never runs past them.
#[inline(always)]
unsafe fn name_words(o: &KernelOffsets, dentry: u64) -> Result<[u64; 2], i32> {
    let name: u64 = read(dentry, o.dentry_d_name_name)?;
    bpf_probe_read_kernel(name as *const [u64; 2]).map_err(|_| EPERM)
}

const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFBLK: u16 = 0o060000;
const S_IFCHR: u16 = 0o020000;
const S_IFREG: u16 = 0o100000;
/// `inode.i_flags`: fscrypt encrypts the inode (include/linux/fs.h, the
/// same bit since fscrypt had one).
const S_ENCRYPTED: u32 = 1 << 14;

/// What `file_open` needs to know of the opened inode.
struct Opened {
    inode: u64,
    is_dir: bool,
    /// `i_mode & S_IFMT`.
    kind: u32,
    /// A device node (wherever root made it). Kernel memory (/dev/mem,
    /// /proc/kcore) is refused in `locked_down`.
    device: Option<DeviceNode>,
}

/// A device node's kind and kernel dev_t.
#[derive(Clone, Copy)]
struct DeviceNode {
    block: bool,
    rdev: u32,
}

#[inline(always)]
unsafe fn opened(o: &KernelOffsets, file: u64) -> Result<Opened, i32> {
    let inode: u64 = read(file, o.file_f_inode)?;
    let kind = read::<u16>(inode, o.inode_i_mode)? & S_IFMT;
    let device = if kind == S_IFBLK || kind == S_IFCHR {
        Some(DeviceNode {
            block: kind == S_IFBLK,
            rdev: read(inode, o.inode_i_rdev)?,
        })
    } else {
        None
    };
    Ok(Opened {
        inode,
        is_dir: kind == S_IFDIR,
        kind: kind as u32,
        device,
    })
}

/// The block device under protected directories: writing it would change
/// their data beneath the guard, reading it shows their data unless fscrypt
/// encrypts it. The same for a character device passing commands to it
/// (an NVMe read command returns the same blocks). `via` is the hook the
/// device is used through, for the report.
///
/// The devices beneath guard's own files are kept while guardd protects
/// itself, whether or not a policy is active (`generation` 0).
#[inline(always)]
unsafe fn protect_device(generation: u32, node: DeviceNode, want: u32, via: u32) -> i32 {
    let mut kept = 0;
    if generation != 0 {
        kept |= kept_bits(generation, node);
    }
    if self_protecting() {
        kept |= kept_bits(GUARD_FILES_GENERATION, node);
    }
    let denied = kept & want;
    if denied == 0 {
        return ALLOW;
    }
    let hook = if node.block {
        hook::RAW_DEVICE
    } else {
        hook::PASSTHROUGH_DEVICE
    };
    match armed_outsider() {
        Ok(Some(exe)) => deny_bpf(exe, hook, denied, via, 0, node.rdev),
        Ok(None) => ALLOW,
        Err(_) => EPERM,
    }
}

/// What nobody but guardd gets on `node` in `generation` (`RAW_DEVICES` or
/// `PASSTHROUGH` bits).
#[inline(always)]
unsafe fn kept_bits(generation: u32, node: DeviceNode) -> u32 {
    let key = DevKey { generation, dev: node.rdev };
    let bits = if node.block {
        RAW_DEVICES.get(&key)
    } else {
        PASSTHROUGH.get(&key)
    };
    bits.copied().unwrap_or(0)
}

/// The active generation (0 for none) and `file`'s device node, when a
/// policy is active or guardd protects itself and `file` is a device node.
#[inline(always)]
unsafe fn kept_device(file: u64) -> Result<Option<(u32, DeviceNode)>, i32> {
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    if generation == 0 && !self_protecting() {
        return Ok(None);
    }
    Ok(opened(offsets(), file)?.device.map(|node| (generation, node)))
}

/// A kept device used through a descriptor: read or written, or mapped.
/// `file_open` checked it, but the descriptor may predate the policy.
#[inline(always)]
unsafe fn protect_device_use(file: u64, want: u32, via: u32) -> i32 {
    match kept_device(file) {
        Ok(Some((generation, node))) => protect_device(generation, node, want, via),
        Ok(None) => ALLOW,
        Err(e) => e,
    }
}

/// A command to a kept device (an ioctl `cmd`, or an io_uring command when
/// `None`). A command may read or write whatever mode the descriptor was
/// opened in (the kernel takes root's SG_IO and NVMe writes through a
/// read-only one), so any kept bit refuses it; only block ioctls that
/// report the device's geometry pass (udev's probes).
#[inline(always)]
unsafe fn protect_device_command(file: u64, cmd: Option<u32>, via: u32) -> i32 {
    match kept_device(file) {
        Ok(Some((_, node))) if node.block && cmd.is_some_and(block_ioctl::reports_only) => ALLOW,
        Ok(Some((generation, node))) => {
            protect_device(generation, node, access::READ | access::WRITE, via)
        }
        Ok(None) => ALLOW,
        Err(e) => e,
    }
}

/// Denies and reports an attempt on the system's integrity by anyone but
/// guardd and the kernel's own threads, while something is armed.
#[inline(always)]
unsafe fn deny_outsider(hook: u32, access: u32, id: u64) -> i32 {
    match armed_outsider() {
        Ok(Some(exe)) => deny_bpf(exe, hook, access, 0, id, 0),
        Ok(None) => ALLOW,
        Err(_) => EPERM,
    }
}

/// The caller, when a policy or self-protection is armed and the caller is
/// neither guardd nor a kernel thread; `None` means allow.
#[inline(always)]
unsafe fn armed_outsider() -> Result<Option<ExeKey>, i32> {
    if ACTIVE.get(0).copied().unwrap_or(0) == 0 && self_protect().protect == 0 {
        return Ok(None);
    }
    match caller(offsets())? {
        Some(c) if !is_guardd(&c.exe) => Ok(Some(c.exe)),
        _ => Ok(None),
    }
}

/// file_permission(file, mask): every read and write through an open file,
/// however the caller got it (inherited across exec, passed over a UNIX
/// socket, pidfd_getfd). Also splice, sendfile, copy_file_range, io_uring.
#[lsm(hook = "file_permission")]
#[inline(always)]
pub fn file_permission(ctx: LsmContext) -> i32 {
    unsafe {
        let file: u64 = ctx.arg(0);
        let mask = ctx.arg::<u64>(1) as u32;
        let mut want = 0;
        if mask & MAY_READ != 0 {
            want |= access::READ;
        }
        if mask & (MAY_WRITE | MAY_APPEND) != 0 {
            want |= access::WRITE;
        }
        if want == 0 {
            return ALLOW;
        }
        let generation = ACTIVE.get(0).copied().unwrap_or(0);
        if generation == 0 && !self_protecting() {
            return ALLOW; // nothing armed
        }
        let o = offsets();
        let opened = match opened(o, file) {
            Ok(opened) => opened,
            Err(e) => return e,
        };
        if let Some(node) = opened.device {
            let ret = protect_device(generation, node, want, hook::FILE_PERMISSION);
            if ret != ALLOW {
                return ret;
            }
        }
        if generation == 0 {
            return ALLOW; // no policy applied
        }
        // As in `file_open`: the inode's filesystem, not the path's.
        let dev = inode_dev(o, opened.inode);
        if let Ok(dev) = dev {
            if !may_be_inside(o, filesystem_flags(dev), &opened) {
                return ALLOW; // nothing protected on this filesystem holds it
            }
        }
        let Ok(dentry) = read::<u64>(file, o.file_f_path_dentry) else {
            return EPERM;
        };
        decide_opened(o, generation, dentry, &opened, dev, want, hook::FILE_PERMISSION)
    }
}

const MAY_WRITE: u32 = 0x2;
const MAY_READ: u32 = 0x4;
const MAY_APPEND: u32 = 0x8;
const PROT_WRITE: u64 = 0x2;
const PROT_EXEC: u64 = 0x4;
const MAP_SHARED: u64 = 0x1;

/// mmap_file(file, reqprot, prot, flags): mapping a file reads it without
/// read(2); a shared writable map writes it.
#[lsm(hook = "mmap_file")]
#[inline(always)]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    unsafe {
        let file: u64 = ctx.arg(0);
        if file == 0 {
            return ALLOW; // anonymous memory
        }
        let prot: u64 = ctx.arg(2);
        let flags: u64 = ctx.arg(3);
        let mut want = access::READ;
        if prot & PROT_WRITE != 0 && flags & MAP_SHARED != 0 {
            want |= access::WRITE;
        }
        if prot & PROT_EXEC != 0 {
            want |= access::EXEC;
        }
        let ret = protect_device_use(file, want, hook::MMAP_FILE);
        if ret != ALLOW {
            return ret;
        }
        let Ok(dentry) = read::<u64>(file, offsets().file_f_path_dentry) else {
            return EPERM;
        };
        let ret = decide(dentry, want, hook::MMAP_FILE);
        if ret != ALLOW || prot & PROT_EXEC == 0 {
            return ret;
        }
        exec_mapping(file, dentry, hook::MMAP_FILE)
    }
}

/// file_mprotect(vma, reqprot, prot): making a file mapping executable
/// after the fact must pass the same library check as mapping it so.
#[lsm(hook = "file_mprotect")]
#[inline(always)]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    unsafe {
        let prot: u64 = ctx.arg(2);
        if prot & PROT_EXEC == 0 {
            return ALLOW;
        }
        let vma: u64 = ctx.arg(0);
        let o = offsets();
        let Ok(file) = read::<u64>(vma, o.vm_area_struct_vm_file) else {
            return EPERM;
        };
        if file == 0 {
            return ALLOW; // anonymous memory
        }
        let Ok(dentry) = read::<u64>(file, o.file_f_path_dentry) else {
            return EPERM;
        };
        exec_mapping(file, dentry, hook::FILE_MPROTECT)
    }
}

/// Whether the current process may map `file` executable: a binary the
/// active policy confines (`libraries`) may map only itself and approved
/// files, so neither LD_PRELOAD, a plugin nor a memfd puts foreign code
/// into it. Returns 0 or -EPERM.
#[inline(always)]
unsafe fn exec_mapping(file: u64, dentry: u64, hook: u32) -> i32 {
    let generation = match ACTIVE.get(0) {
        Some(g) if *g != 0 => *g,
        _ => return ALLOW,
    };
    let meta = match META.get(&generation) {
        Some(m) if m.confines != 0 => *m,
        _ => return ALLOW,
    };
    match try_exec_mapping(file, dentry, hook, generation, &meta) {
        Ok(ret) => ret,
        Err(_) => fail_closed(dentry, access::EXEC, hook),
    }
}

#[inline(always)]
unsafe fn try_exec_mapping(
    file: u64,
    dentry: u64,
    hook: u32,
    generation: u32,
    meta: &PolicyMeta,
) -> Result<i32, i32> {
    let o = offsets();
    let Some(caller) = caller(o)? else {
        return Ok(ALLOW);
    };
    let bits = |exe: ExeKey| {
        LIBRARIES
            .get(&LaunchKey { generation, _pad: 0, exe })
            .copied()
            .unwrap_or(0)
    };
    if bits(caller.exe) & library::CONFINED == 0 {
        return Ok(ALLOW);
    }
    let mapped = file_identity(o, file)?;
    if mapped == caller.exe || bits(mapped) & library::APPROVED != 0 {
        return Ok(ALLOW);
    }
    let obj = Object { dentry, dev: mapped.dev, ino: mapped.ino, beneath: 0 };
    let report = Report {
        verdict: verdict::DENIED,
        access: access::EXEC,
        hook,
        flags: 0,
        point: LIBRARY_POINT,
        rule: NO_RULE,
        generation,
        exe: caller.exe,
    };
    Ok(deny_or_report(o, &obj, report, meta.mode == MODE_AUDIT))
}

/// Denies what `report` describes, or under an audit-mode policy reports
/// it as would-deny and allows it.
#[inline(always)]
unsafe fn deny_or_report(o: &KernelOffsets, obj: &Object, mut report: Report, audit_mode: bool) -> i32 {
    if audit_mode {
        count(stat::WOULD_DENY);
        report.verdict = verdict::WOULD_DENY;
        emit(o, obj, &report);
        return ALLOW;
    }
    count(stat::DENIED);
    emit(o, obj, &report);
    EPERM
}

/// inode_setxattr([userns|idmap,] dentry, name, ...): extended attributes
/// (security labels, ACLs before Linux 6.2, fscrypt has none settable).
#[lsm(hook = "inode_setxattr")]
#[inline(always)]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::SETATTR, hook::INODE_SETXATTR) }
}

#[lsm(hook = "inode_removexattr")]
#[inline(always)]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::SETATTR, hook::INODE_REMOVEXATTR) }
}

/// inode_set_acl(idmap, dentry, name, acl): POSIX ACLs since Linux 6.2
/// (attached only where the hook exists).
#[lsm(hook = "inode_set_acl")]
#[inline(always)]
pub fn inode_set_acl(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::SETATTR, hook::INODE_SET_ACL) }
}

#[lsm(hook = "inode_remove_acl")]
#[inline(always)]
pub fn inode_remove_acl(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::SETATTR, hook::INODE_REMOVE_ACL) }
}

const MS_REMOUNT: u64 = 32;

/// sb_mount(dev_name, path, type, flags, data): nothing may be mounted on a
/// protected directory or inside one (it would hide or divert the data),
/// and a filesystem holding protected directories is not remounted.
#[lsm(hook = "sb_mount")]
#[inline(always)]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    unsafe {
        let path: u64 = ctx.arg(1);
        let flags: u64 = ctx.arg(3);
        let Ok(dentry) = read::<u64>(path, offsets().path_dentry) else {
            return EPERM;
        };
        if flags & MS_REMOUNT != 0 {
            return match dentry_dev(offsets(), dentry) {
                Ok(dev) => protect_fs(dev),
                Err(_) => EPERM,
            };
        }
        // Changing propagation (shared, private...) mounts nothing.
        if flags & (MS_BIND | MS_MOVE) == 0 && flags & MS_PROPAGATION != 0 {
            return ALLOW;
        }
        let ret = protect_ancestor(dentry, access::MOUNT, hook::ANCESTOR_MOUNT);
        if ret != ALLOW {
            return ret;
        }
        decide(dentry, access::MOUNT, hook::SB_MOUNT)
    }
}

const MS_BIND: u64 = 4096;
const MS_MOVE: u64 = 8192;
/// MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED
const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);

/// Nothing may be mounted on a directory above a protected one, nor may it
/// be renamed: the protected files would stay guarded, but away from the
/// database's path, which would then lead to root's files.
#[inline(always)]
unsafe fn protect_ancestor(dentry: u64, access: u32, hook: u32) -> i32 {
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return ALLOW;
    }
    let Ok(obj) = object(offsets(), dentry) else {
        return EPERM;
    };
    if ANCESTORS.get_ptr(&DirKey { generation, dev: obj.dev, ino: obj.ino }).is_none() {
        return ALLOW;
    }
    match armed_outsider() {
        Ok(Some(exe)) => deny_bpf(exe, hook, access, 0, obj.ino, obj.dev),
        Ok(None) => ALLOW,
        Err(_) => EPERM,
    }
}

/// move_mount(from_path, to_path): the new mount API's way to mount.
#[lsm(hook = "move_mount")]
#[inline(always)]
pub fn move_mount(ctx: LsmContext) -> i32 {
    unsafe {
        let to: u64 = ctx.arg(1);
        let Ok(dentry) = read::<u64>(to, offsets().path_dentry) else {
            return EPERM;
        };
        let ret = protect_ancestor(dentry, access::MOUNT, hook::ANCESTOR_MOUNT);
        if ret != ALLOW {
            return ret;
        }
        decide(dentry, access::MOUNT, hook::MOVE_MOUNT)
    }
}

/// Refuses remounting or unmounting a filesystem that holds protected
/// directories of the active policy.
#[inline(always)]
unsafe fn protect_fs(dev: u32) -> i32 {
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return ALLOW;
    }
    if DEVS.get_ptr(&DevKey { generation, dev }).is_none() {
        return ALLOW;
    }
    match armed_outsider() {
        Ok(Some(exe)) => deny_bpf(exe, hook::PROTECTED_FS, access::MOUNT, 0, 0, dev),
        Ok(None) => ALLOW,
        Err(_) => EPERM,
    }
}

/// file_receive(file): a descriptor arriving over SCM_RIGHTS or through
/// pidfd_getfd. Refused at once when the receiver may not use the file, so
/// the attempt is seen even if nothing is read from it.
#[lsm(hook = "file_receive")]
#[inline(always)]
pub fn file_receive(ctx: LsmContext) -> i32 {
    unsafe {
        let file: u64 = ctx.arg(0);
        let o = offsets();
        let Ok(mode) = read::<u32>(file, o.file_f_mode) else {
            return EPERM;
        };
        let mut want = 0;
        if mode & FMODE_READ != 0 {
            want |= access::READ;
        }
        if mode & FMODE_WRITE != 0 {
            want |= access::WRITE;
        }
        if want == 0 {
            return ALLOW; // O_PATH: no contents through it
        }
        let Ok(dentry) = read::<u64>(file, o.file_f_path_dentry) else {
            return EPERM;
        };
        decide(dentry, want, hook::FILE_RECEIVE)
    }
}

/// kernel_read_file(file, id, contents): a module file read for finit_module,
/// or a kernel image for kexec_file_load. Also the modules the kernel asks
/// for: the modprobe it runs is whatever root put at its path.
#[lsm(hook = "kernel_read_file")]
#[inline(always)]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    unsafe {
        let id = ctx.arg::<u64>(1) as u32;
        let o = offsets();
        if id == o.reading_module {
            return deny_outsider(hook::KERNEL_READ_FILE, tamper::MODULE, 0);
        }
        if id == o.reading_kexec_image || id == o.reading_kexec_initramfs {
            return deny_outsider(hook::KERNEL_READ_FILE, tamper::KEXEC, 0);
        }
        ALLOW
    }
}

/// file_ioctl(file, cmd, arg): loading a device-mapper table. The kernel
/// opens the devices a table names itself, past `file_open`, so a linear
/// mapping over a protected filesystem's device would show its blocks;
/// while guard is armed only guardd (unlocking dm-crypt volumes) may. And
/// commands to a kept device (`protect_device_command`).
#[lsm(hook = "file_ioctl")]
#[inline(always)]
pub fn file_ioctl(ctx: LsmContext) -> i32 {
    unsafe { check_ioctl(ctx.arg(0), ctx.arg::<u64>(1) as u32) }
}

/// file_ioctl_compat(file, cmd, arg): the same for 32-bit callers (Linux
/// 6.8 on; before, their ioctls come through `file_ioctl`).
#[lsm(hook = "file_ioctl_compat")]
#[inline(always)]
pub fn file_ioctl_compat(ctx: LsmContext) -> i32 {
    unsafe { check_ioctl(ctx.arg(0), ctx.arg::<u64>(1) as u32) }
}

#[inline(always)]
unsafe fn check_ioctl(file: u64, cmd: u32) -> i32 {
    let ret = deny_dm_table_load(file, cmd);
    if ret != ALLOW {
        return ret;
    }
    let ret = deny_xfs_handle_attrs(file, cmd);
    if ret != ALLOW {
        return ret;
    }
    protect_device_command(file, Some(cmd), hook::FILE_IOCTL)
}

/// XFS's handle ioctls list, read, set and remove any file's extended
/// attributes and ACLs by handle, issued on any descriptor of the
/// filesystem (its mount point): no inode hook sees the file. On a
/// filesystem holding protected directories only guardd may, while a
/// policy is active.
#[inline(always)]
unsafe fn deny_xfs_handle_attrs(file: u64, cmd: u32) -> i32 {
    if !xfs_handle::is_attrs_by_handle(cmd) {
        return ALLOW;
    }
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return ALLOW;
    }
    let o = offsets();
    let Ok(inode) = read::<u64>(file, o.file_f_inode) else {
        return EPERM;
    };
    let Ok(dev) = inode_dev(o, inode) else {
        return EPERM;
    };
    if DEVS.get_ptr(&DevKey { generation, dev }).is_none() {
        return ALLOW;
    }
    match armed_outsider() {
        Ok(Some(exe)) => deny_bpf(exe, hook::XFS_HANDLE_ATTRS, access::SETATTR, cmd & 0xff, 0, dev),
        Ok(None) => ALLOW,
        Err(_) => EPERM,
    }
}

/// uring_cmd(ioucmd): an io_uring command handed to a file's driver; NVMe
/// generic nodes take read and write commands this way.
#[lsm(hook = "uring_cmd")]
#[inline(always)]
pub fn uring_cmd(ctx: LsmContext) -> i32 {
    unsafe {
        let ioucmd: u64 = ctx.arg(0);
        let Ok(file) = read::<u64>(ioucmd, offsets().io_uring_cmd_file) else {
            return EPERM;
        };
        protect_device_command(file, None, hook::URING_CMD)
    }
}

#[inline(always)]
unsafe fn deny_dm_table_load(file: u64, cmd: u32) -> i32 {
    if cmd != device_mapper::TABLE_LOAD {
        return ALLOW;
    }
    let o = offsets();
    let Ok(inode) = read::<u64>(file, o.file_f_inode) else {
        return EPERM;
    };
    let Ok(rdev) = read::<u32>(inode, o.inode_i_rdev) else {
        return EPERM;
    };
    if rdev != device_mapper::CONTROL_RDEV {
        return ALLOW;
    }
    deny_outsider(hook::FILE_IOCTL, tamper::DEVICE_MAPPER, 0)
}

/// kernel_load_data(id, contents): a module image handed to init_module, or
/// a kernel for kexec_load.
#[lsm(hook = "kernel_load_data")]
#[inline(always)]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    unsafe {
        let id = ctx.arg::<u64>(0) as u32;
        let o = offsets();
        if id == o.loading_module {
            return deny_outsider(hook::KERNEL_LOAD_DATA, tamper::MODULE, 0);
        }
        if id == o.loading_kexec_image {
            return deny_outsider(hook::KERNEL_LOAD_DATA, tamper::KEXEC, 0);
        }
        ALLOW
    }
}

/// locked_down(what): the kernel asks before it opens kernel memory, where
/// the volume keys live: /dev/mem and /dev/port, /proc/kcore (whatever node
/// or procfs instance they are reached through), a hibernation image, kprobe
/// events; and before tracefs opens a file (uprobe events fetch a process's
/// memory) or perf samples kernel registers. Also everything the kernel's
/// own lockdown refuses in integrity mode: the ways to change the running
/// kernel or drive hardware that reaches all memory (the attacker is root
/// who cannot run code in the kernel). Kernel threads are let through.
#[lsm(hook = "locked_down")]
#[inline(always)]
pub fn locked_down(ctx: LsmContext) -> i32 {
    unsafe {
        let what = ctx.arg::<u64>(0) as u32;
        let o = offsets();
        let code = if what == o.lockdown_dev_mem {
            lockdown::DEV_MEM
        } else if what == o.lockdown_kcore {
            lockdown::KCORE
        } else if what == o.lockdown_hibernation {
            lockdown::HIBERNATION
        } else if what == o.lockdown_kprobes {
            lockdown::KPROBES
        } else if what == o.lockdown_tracefs {
            lockdown::TRACEFS
        } else if what == o.lockdown_perf {
            lockdown::PERF
        } else if what == o.lockdown_dbg_read_kernel {
            lockdown::DBG_READ_KERNEL
        } else if what != 0 && what < o.lockdown_integrity_max {
            lockdown::KERNEL_INTEGRITY
        } else {
            return ALLOW;
        };
        let attempt = if code == lockdown::KERNEL_INTEGRITY {
            tamper::KERNEL_INTEGRITY
        } else {
            tamper::KERNEL_MEMORY
        };
        deny_outsider(hook::KERNEL_MEMORY, attempt, lockdown::event_id(code, what))
    }
}

/// perf_event_open(attr, type): samples that copy the memory or registers
/// of whatever runs (`perf record -a --call-graph dwarf` snapshots user
/// stacks, the database's included). Following one process needs ptrace
/// rights, which `ptrace_access_check` refuses for allowed processes; a
/// whole CPU does not. Where the kernel no longer hands the hook the
/// attributes (`perf_event_open(type)`), no event can be told safe: all are
/// refused while armed.
#[lsm(hook = "perf_event_open")]
#[inline(always)]
pub fn perf_event_open(ctx: LsmContext) -> i32 {
    unsafe {
        let o = offsets();
        if o.perf_event_open_has_attr == 0 {
            return deny_outsider(hook::PERF_EVENT_OPEN, tamper::PERF_SAMPLING, 0);
        }
        let attr: u64 = ctx.arg(0);
        let Ok(sample_type) = read::<u64>(attr, o.perf_event_attr_sample_type) else {
            return EPERM;
        };
        if sample_type & perf::MEMORY_SAMPLES == 0 {
            return ALLOW;
        }
        deny_outsider(hook::PERF_EVENT_OPEN, tamper::PERF_SAMPLING, sample_type)
    }
}

/// task_prctl(option, arg2, ...): PR_SET_MM_EXE_FILE (or PR_SET_MM_MAP,
/// which can carry an executable) replaces the process's executable, the
/// identity every decision takes the caller by: root's program that
/// unmapped itself could take the allowed binary's. Refused to all but
/// guardd while armed. (This hook's programs run in place of the kernel's
/// default, which answers "not handled": returning 0 lets it.)
#[lsm(hook = "task_prctl")]
#[inline(always)]
pub fn task_prctl(ctx: LsmContext) -> i32 {
    unsafe {
        let option = ctx.arg::<u64>(0) as i32;
        let arg2: u64 = ctx.arg(1);
        if option != prctl::PR_SET_MM
            || (arg2 != prctl::PR_SET_MM_EXE_FILE && arg2 != prctl::PR_SET_MM_MAP)
        {
            return ALLOW;
        }
        deny_outsider(hook::TASK_PRCTL, tamper::EXE_SWITCH, arg2)
    }
}

#[lsm(hook = "inode_create")]
#[inline(always)]
pub fn inode_create(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::CREATE, hook::INODE_CREATE) }
}

#[lsm(hook = "inode_mkdir")]
#[inline(always)]
pub fn inode_mkdir(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::CREATE, hook::INODE_MKDIR) }
}

#[lsm(hook = "inode_mknod")]
#[inline(always)]
pub fn inode_mknod(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::CREATE, hook::INODE_MKNOD) }
}

#[lsm(hook = "inode_symlink")]
#[inline(always)]
pub fn inode_symlink(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::CREATE, hook::INODE_SYMLINK) }
}

#[lsm(hook = "inode_unlink")]
#[inline(always)]
pub fn inode_unlink(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::DELETE, hook::INODE_UNLINK) }
}

#[lsm(hook = "inode_rmdir")]
#[inline(always)]
pub fn inode_rmdir(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(1), access::DELETE, hook::INODE_RMDIR) }
}

/// inode_rename(old_dir, old_dentry, new_dir, new_dentry): both the source and
/// the destination name must be allowed; this program decides the source.
#[lsm(hook = "inode_rename")]
#[inline(always)]
pub fn inode_rename(ctx: LsmContext) -> i32 {
    unsafe { decide_rename(ctx.arg(1)) }
}

/// The second program on inode_rename: the target name (new_dentry). A
/// program of its own, run only when the first allowed, so the verifier
/// checks each decision once instead of the second once per way the first
/// can end.
#[lsm(hook = "inode_rename")]
#[inline(always)]
pub fn inode_rename_target(ctx: LsmContext) -> i32 {
    unsafe { decide_rename(ctx.arg(3)) }
}

/// One name of a rename: a directory above a protected one stays where it
/// is (the target name too: RENAME_EXCHANGE swaps it with another), and
/// the policy decides the rest.
#[inline(always)]
unsafe fn decide_rename(dentry: u64) -> i32 {
    let ret = protect_ancestor(dentry, access::RENAME, hook::ANCESTOR_RENAME);
    if ret != ALLOW {
        return ret;
    }
    decide_dir_op(dentry, access::RENAME, hook::INODE_RENAME)
}

/// inode_link(old_dentry, dir, new_dentry): linking a protected file anywhere,
/// or anything into a protected directory.
#[lsm(hook = "inode_link")]
#[inline(always)]
pub fn inode_link(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(0), access::LINK, hook::INODE_LINK) }
}

/// The second program on inode_link: the new name (see `inode_rename_target`).
#[lsm(hook = "inode_link")]
#[inline(always)]
pub fn inode_link_target(ctx: LsmContext) -> i32 {
    unsafe { decide_dir_op(ctx.arg(2), access::LINK, hook::INODE_LINK) }
}

/// inode_setattr([idmap,] dentry, attr): the dentry's position differs by kernel.
#[lsm(hook = "inode_setattr")]
#[inline(always)]
pub fn inode_setattr(ctx: LsmContext) -> i32 {
    unsafe {
        let o = offsets();
        // Both loads are volatile so the compiler cannot turn the choice into
        // a variable context offset, which the verifier rejects.
        let args = ctx.as_ptr() as *const u64;
        let first = core::ptr::read_volatile(args);
        let second = core::ptr::read_volatile(args.add(1));
        let dentry = if o.setattr_dentry_arg == 0 { first } else { second };
        let ret = decide_dir_op(dentry, access::SETATTR, hook::INODE_SETATTR);
        if ret == ALLOW {
            if let Ok(inode) = read::<u64>(dentry, o.dentry_d_inode) {
                if inode != 0 {
                    taint_if_allowed_exe(o, inode);
                }
            }
        }
        ret
    }
}

// Processes: the allowed binaries and guardd cannot be traced, inspected
// through /proc or (guardd) signalled by anyone else, root included.

/// A process acted upon: its thread group id and executable.
struct Target {
    tgid: u32,
    exe: ExeKey,
}

/// Why a process is guarded.
enum Guarded {
    No,
    /// It runs a binary the active policy allows.
    AllowedBinary { generation: u32 },
    /// It is guardd, and guardd protects itself.
    Guardd,
}

#[inline(always)]
fn self_protect() -> SelfProtect {
    SELF.get(0).copied().unwrap_or_default()
}

/// Whether guardd protects itself (one field, not the whole `SELF` copy).
#[inline(always)]
fn self_protecting() -> bool {
    SELF.get(0).map(|s| s.protect != 0).unwrap_or(false)
}

#[inline(always)]
fn guarded(target: &Target) -> Guarded {
    let me = self_protect();
    if me.protect != 0 && me.tgid == target.tgid && me.exe == target.exe {
        return Guarded::Guardd;
    }
    match ACTIVE.get(0) {
        Some(g) if *g != 0 && EXES.get_ptr(&target.exe).is_some() => {
            Guarded::AllowedBinary { generation: *g }
        }
        _ => Guarded::No,
    }
}

/// guardd's binary (recorded by guardd at start) is trusted with its own
/// processes and the database's.
#[inline(always)]
fn is_guardd(exe: &ExeKey) -> bool {
    let me = self_protect();
    me.exe.ino != 0 && me.exe == *exe
}

/// What a process decision is about.
struct ProcessAttempt {
    access: u32,
    hook: u32,
    /// Signal number or ptrace mode, for the report.
    detail: u32,
    /// The kernel asked for no audit record (e.g. `ps` probing /proc/PID/stat).
    quiet: bool,
}

/// Decides whether the current process may act on `task`: only processes of
/// the same binary (and guardd) may. Returns 0 or -EPERM.
#[inline(always)]
unsafe fn decide_process(task: u64, a: &ProcessAttempt) -> i32 {
    match try_decide_process(task, a) {
        Ok(ret) => ret,
        Err(_) => {
            count(stat::FAIL_CLOSED);
            count(stat::DENIED);
            let report = process_report(verdict::DENIED, a, ExeKey::default(), 0);
            let target = Target { tgid: 0, exe: ExeKey::default() };
            emit_process(&report, &target, a.detail, flags::FAIL_CLOSED);
            EPERM
        }
    }
}

#[inline(always)]
unsafe fn try_decide_process(task: u64, a: &ProcessAttempt) -> Result<i32, i32> {
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    if generation == 0 && self_protect().protect == 0 {
        return Ok(ALLOW); // nothing guarded: no reads on this path
    }
    let o = offsets();
    let Some(exe) = task_exe(&o, task)? else {
        return Ok(ALLOW); // a kernel thread, or a process that is exiting
    };
    let tgid: u32 = read(task, o.task_struct_tgid)?;
    let target = Target { tgid, exe };
    let guarded = guarded(&target);
    if let Guarded::No = guarded {
        return Ok(ALLOW);
    }
    let Some(caller) = caller(&o)? else {
        return Ok(ALLOW);
    };
    if caller.exe == target.exe || is_guardd(&caller.exe) {
        return Ok(ALLOW);
    }
    finish_process_decision(guarded, a, &caller.exe, &target)
}

/// Denies (or, for a policy in audit mode, reports) an attempt on a guarded process.
#[inline(always)]
unsafe fn finish_process_decision(
    guarded: Guarded,
    a: &ProcessAttempt,
    caller: &ExeKey,
    target: &Target,
) -> Result<i32, i32> {
    let generation = match guarded {
        Guarded::AllowedBinary { generation } => generation,
        _ => ACTIVE.get(0).copied().unwrap_or(0),
    };
    let audit_only = match guarded {
        Guarded::AllowedBinary { generation } => {
            META.get(&generation).map(|m| m.mode).unwrap_or(0) == MODE_AUDIT
        }
        _ => false,
    };
    if audit_only {
        count(stat::WOULD_DENY);
        if !a.quiet {
            let report = process_report(verdict::WOULD_DENY, a, *caller, generation);
            emit_process(&report, target, a.detail, 0);
        }
        return Ok(ALLOW);
    }
    count(stat::DENIED);
    if !a.quiet {
        let report = process_report(verdict::DENIED, a, *caller, generation);
        emit_process(&report, target, a.detail, 0);
    }
    Ok(EPERM)
}

#[inline(always)]
fn process_report(verdict: u32, a: &ProcessAttempt, exe: ExeKey, generation: u32) -> Report {
    Report {
        verdict,
        access: a.access,
        hook: a.hook,
        flags: 0,
        point: u32::MAX,
        rule: NO_RULE,
        generation,
        exe,
    }
}

/// Reports a decision about a process: `dev`/`ino` name its executable.
#[inline(always)]
unsafe fn emit_process(r: &Report, target: &Target, detail: u32, extra_flags: u32) {
    if !within_rate() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::DROPPED);
        return;
    };
    let e = &mut *entry.as_mut_ptr();
    fill_header(r, e);
    e.flags |= extra_flags;
    e.dev = target.exe.dev;
    e.ino = target.exe.ino;
    for i in 0..PATH_DEPTH {
        e.path[i][0] = 0;
    }
    e.target = target.tgid;
    e.detail = detail;
    fill_exe(&offsets(), e);
    entry.submit(0);
}

/// ptrace_access_check(child, mode): PTRACE_ATTACH/SEIZE, /proc/PID/mem,
/// process_vm_readv/writev, pidfd_getfd, and the /proc/PID links and files
/// (fd, root, cwd, exe, maps, environ) all ask this before touching `child`.
#[lsm(hook = "ptrace_access_check")]
#[inline(always)]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    unsafe {
        let child: u64 = ctx.arg(0);
        let mode = ctx.arg::<u64>(1) as u32;
        let access = if mode & PTRACE_MODE_ATTACH != 0 {
            tamper::PTRACE_ATTACH
        } else {
            tamper::PTRACE_READ
        };
        let attempt = ProcessAttempt {
            access,
            hook: hook::PTRACE_ACCESS_CHECK,
            detail: mode,
            quiet: mode & PTRACE_MODE_NOAUDIT != 0,
        };
        decide_process(child, &attempt)
    }
}

/// bprm_check_security(bprm): a traced process may not start an allowed
/// binary (strace or gdb would see everything it reads), and a binary the
/// policy says only its supervisor may start is started by nothing else.
#[lsm(hook = "bprm_check_security")]
#[inline(always)]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    unsafe {
        let bprm: u64 = ctx.arg(0);
        let traced = ProcessAttempt {
            access: tamper::EXEC_TRACED,
            hook: hook::BPRM_CHECK_SECURITY,
            detail: 0,
            quiet: false,
        };
        let ret = exec_decision(try_exec_traced(bprm, &traced), &traced);
        if ret != ALLOW {
            return ret;
        }
        let unsupervised = ProcessAttempt {
            access: tamper::UNSUPERVISED_START,
            ..traced
        };
        exec_decision(try_exec_supervised(bprm, &unsupervised), &unsupervised)
    }
}

/// An exec decision; a failed kernel read denies (fail closed).
#[inline(always)]
unsafe fn exec_decision(decision: Result<i32, i32>, a: &ProcessAttempt) -> i32 {
    match decision {
        Ok(ret) => ret,
        Err(_) => {
            count(stat::FAIL_CLOSED);
            count(stat::DENIED);
            let report = process_report(verdict::DENIED, a, ExeKey::default(), 0);
            let target = Target { tgid: 0, exe: ExeKey::default() };
            emit_process(&report, &target, 0, flags::FAIL_CLOSED);
            EPERM
        }
    }
}

/// bprm_committed_creds(bprm): the exec has replaced the program and no
/// instruction of it has run yet. A binary whose policy pins its arguments
/// or its environment and was started with others is killed here (the hook
/// cannot refuse), so root cannot start a second copy of the database with
/// options of its own, nor point it at a configuration of its own
/// (`MYSQL_HOME`), even through its supervisor (`systemd-run`,
/// `systemctl set-environment`).
#[lsm(hook = "bprm_committed_creds")]
#[inline(always)]
pub fn bprm_committed_creds(ctx: LsmContext) -> i32 {
    unsafe {
        let bprm: u64 = ctx.arg(0);
        let arguments = ProcessAttempt {
            access: tamper::UNEXPECTED_ARGUMENTS,
            hook: hook::BPRM_COMMITTED_CREDS,
            detail: 0,
            quiet: false,
        };
        let environment = ProcessAttempt {
            access: tamper::UNEXPECTED_ENVIRONMENT,
            ..arguments
        };
        let kill = exec_decision(try_check_arguments(bprm, &arguments), &arguments) != ALLOW
            || exec_decision(try_check_environment(bprm, &environment), &environment) != ALLOW;
        if kill {
            bpf_send_signal(SIGKILL);
        }
    }
    ALLOW
}

const SIGKILL: u32 = 9;

#[inline(always)]
unsafe fn try_check_arguments(bprm: u64, a: &ProcessAttempt) -> Result<i32, i32> {
    let generation = match ACTIVE.get(0) {
        Some(g) if *g != 0 => *g,
        _ => return Ok(ALLOW),
    };
    if META.get(&generation).map(|m| m.pins_arguments).unwrap_or(0) == 0 {
        return Ok(ALLOW);
    }
    let o = offsets();
    let task = current_task();
    let Some(exe) = task_exe(o, task)? else {
        return Ok(ALLOW);
    };
    let Some(pinned) = ARGUMENTS.get(&LaunchKey { generation, _pad: 0, exe }) else {
        return Ok(ALLOW);
    };
    if arguments_are(o, bprm, pinned)? {
        return Ok(ALLOW);
    }
    let target = Target {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        exe,
    };
    finish_process_decision(Guarded::AllowedBinary { generation }, a, &exe, &target)
}

/// Whether the exec's argument list is exactly `pinned`. The process runs in
/// its new memory already, where exec copied the strings from `bprm->p` on
/// (`mm->arg_start` is set only later, by the binary's loader): with as
/// many strings as pinned, equal bytes up to the pinned length mean equal
/// lists.
#[inline(always)]
unsafe fn arguments_are(o: &KernelOffsets, bprm: u64, pinned: &Arguments) -> Result<bool, i32> {
    let count: u32 = read(bprm, o.linux_binprm_argc)?;
    let start: u64 = read(bprm, o.linux_binprm_p)?;
    let len = pinned.len as u64;
    if count != pinned.count || len == 0 || len > MAX_ARGUMENT_BYTES as u64 {
        return Ok(false);
    }
    let copy = &mut *ARGV_SCRATCH.get_ptr_mut(0).ok_or(EPERM)?;
    // Word by word, volatile: the compiler would otherwise call memcmp, a
    // byte loop the verifier follows 512 times.
    zero_words(copy.bytes.as_mut_ptr(), MAX_ARGUMENT_BYTES);
    let words = MAX_ARGUMENT_BYTES / 8;
    let mine = copy.bytes.as_mut_ptr() as *mut u64;
    let read = aya_ebpf::helpers::generated::bpf_probe_read_user(
        mine as *mut c_void,
        len as u32,
        start as *const c_void,
    );
    if read != 0 {
        return Err(EPERM); // not readable: fail closed
    }
    let theirs = pinned.bytes.as_ptr() as *const u64;
    for i in 0..words {
        if core::ptr::read_volatile(mine.add(i)) != core::ptr::read_volatile(theirs.add(i)) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[inline(always)]
unsafe fn try_check_environment(bprm: u64, a: &ProcessAttempt) -> Result<i32, i32> {
    let generation = match ACTIVE.get(0) {
        Some(g) if *g != 0 => *g,
        _ => return Ok(ALLOW),
    };
    if META.get(&generation).map(|m| m.pins_environment).unwrap_or(0) == 0 {
        return Ok(ALLOW);
    }
    let o = offsets();
    let Some(exe) = task_exe(o, current_task())? else {
        return Ok(ALLOW);
    };
    let scratch = &mut *ENV_SCRATCH.get_ptr_mut(0).ok_or(EPERM)?;
    scratch.key.launch = LaunchKey { generation, _pad: 0, exe };
    scratch.key.kind = env_entry::PINNED;
    scratch.key._pad = 0;
    zero_words(scratch.key.bytes.as_mut_ptr(), MAX_ENV_ENTRY_BYTES);
    if ENVIRONMENT.get_ptr(&scratch.key).is_none() {
        return Ok(ALLOW); // this binary's environment is not pinned
    }
    if environment_is_allowed(o, bprm, scratch)? {
        return Ok(ALLOW);
    }
    let target = Target {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        exe,
    };
    finish_process_decision(Guarded::AllowedBinary { generation }, a, &exe, &target)
}

/// Whether every entry of the new process's environment is one the policy
/// allows its binary (`s.key.launch`). Exec copied the argument strings
/// from `bprm->p` on and the environment's right after them.
#[inline(always)]
unsafe fn environment_is_allowed(
    o: &KernelOffsets,
    bprm: u64,
    s: &mut EnvScratch,
) -> Result<bool, i32> {
    let argc: u32 = read(bprm, o.linux_binprm_argc)?;
    let envc: u32 = read(bprm, o.linux_binprm_envc)?;
    if argc > MAX_PINNED_STRINGS || envc > MAX_PINNED_STRINGS {
        return Ok(false);
    }
    let mut at: u64 = read(bprm, o.linux_binprm_p)?;
    for i in 0..MAX_PINNED_STRINGS {
        if i >= argc {
            break;
        }
        let Some(next) = after_string(&mut s.string, at)? else {
            return Ok(false);
        };
        at = next;
    }
    for i in 0..MAX_PINNED_STRINGS {
        if i >= envc {
            break;
        }
        if !entry_allowed(&mut s.key, at)? {
            return Ok(false);
        }
        let Some(next) = after_string(&mut s.string, at)? else {
            return Ok(false);
        };
        at = next;
    }
    Ok(true)
}

/// Where the string at `at` (the new process's memory) ends, past its NUL;
/// `None` when it is `MAX_PINNED_STRING_BYTES` long or more. One read: a
/// loop of reads per string, in the loops over strings, is more than the
/// verifier follows.
#[inline(always)]
unsafe fn after_string(
    string: &mut [u8; MAX_PINNED_STRING_BYTES],
    at: u64,
) -> Result<Option<u64>, i32> {
    let n = aya_ebpf::helpers::generated::bpf_probe_read_user_str(
        string.as_mut_ptr() as *mut c_void,
        MAX_PINNED_STRING_BYTES as u32,
        at as *const c_void,
    );
    if n <= 0 {
        return Err(EPERM);
    }
    if n as usize >= MAX_PINNED_STRING_BYTES {
        return Ok(None); // cut short by the read
    }
    Ok(Some(at + n as u64))
}

/// Whether the environment entry at `at` is allowed to `key.launch`: as a
/// whole (`EXACT`), or by its name (`NAME`). Leaves `key` overwritten.
#[inline(always)]
unsafe fn entry_allowed(key: &mut EnvKey, at: u64) -> Result<bool, i32> {
    zero_words(key.bytes.as_mut_ptr(), MAX_ENV_ENTRY_BYTES);
    let n = aya_ebpf::helpers::generated::bpf_probe_read_user_str(
        key.bytes.as_mut_ptr() as *mut c_void,
        MAX_ENV_ENTRY_BYTES as u32,
        at as *const c_void,
    );
    if n <= 0 {
        return Err(EPERM);
    }
    // A read that filled the buffer may have cut a longer entry short: such
    // an entry matches no exact one.
    if (n as usize) < MAX_ENV_ENTRY_BYTES {
        key.kind = env_entry::EXACT;
        if ENVIRONMENT.get_ptr(&*key).is_some() {
            return Ok(true);
        }
    }
    if !keep_name(key) {
        return Ok(false); // no `=` within a name's length
    }
    key.kind = env_entry::NAME;
    Ok(ENVIRONMENT.get_ptr(&*key).is_some())
}

/// Zeroes `key.bytes` after the first `=` of its first `MAX_ENV_NAME_BYTES`,
/// leaving `NAME=`; false when there is no `=` there. Without branches: a
/// branch per byte, in the loop over entries, is more than the verifier
/// follows.
#[inline(always)]
unsafe fn keep_name(key: &mut EnvKey) -> bool {
    let bytes = key.bytes.as_mut_ptr();
    let mut cut = 0u64; // 1 once past the `=`
    for i in 0..MAX_ENV_NAME_BYTES {
        let at = bytes.add(i);
        let b = core::ptr::read_volatile(at) as u64;
        core::ptr::write_volatile(at, (b & cut.wrapping_sub(1)) as u8);
        // 1 when b is `=`: only 0 wraps around to set the top bit.
        cut |= (b ^ b'=' as u64).wrapping_sub(1) >> 63;
    }
    zero_words(bytes.add(MAX_ENV_NAME_BYTES), MAX_ENV_ENTRY_BYTES - MAX_ENV_NAME_BYTES);
    cut != 0
}

/// Zeroes `len` bytes (a multiple of 8) at the 8-byte aligned `at`, a word at
/// a time: the compiler would otherwise call memset, a byte loop.
#[inline(always)]
unsafe fn zero_words(at: *mut u8, len: usize) {
    let words = at as *mut u64;
    for i in 0..len / 8 {
        core::ptr::write_volatile(words.add(i), 0);
    }
}

/// How far up a chain of forked (not executed) processes `launched` looks
/// for the one that executed their program.
const FORK_DEPTH: u32 = 4;

/// What a process counts as and who started it.
struct Launched {
    identity: ExeKey,
    /// Zero when unknown.
    launcher: ExeKey,
}

#[inline(always)]
unsafe fn start_time(o: &KernelOffsets, task: u64) -> Result<u64, i32> {
    let leader: u64 = read(task, o.task_struct_group_leader)?;
    read(leader, o.task_struct_start_time)
}

/// `task`'s `LAUNCHES` entry, or for a child forked without exec, that of
/// the ancestor which executed their common program; failing both, the
/// program itself with no known launcher.
#[inline(always)]
unsafe fn launched(o: &KernelOffsets, task: u64) -> Result<Launched, i32> {
    let Some(exe) = task_exe(o, task)? else {
        return Ok(Launched { identity: ExeKey::default(), launcher: ExeKey::default() });
    };
    let mut t = task;
    for _ in 0..FORK_DEPTH {
        let tgid: u32 = read(t, o.task_struct_tgid)?;
        if let Some(l) = LAUNCHES.get(&tgid) {
            // The program it runs and the pid's start time say the entry is
            // this process's, not a failed exec's or a reused pid's.
            if l.exe == exe && l.start_time == start_time(o, t)? {
                return Ok(Launched { identity: l.identity, launcher: l.launcher });
            }
        }
        let parent: u64 = read(t, o.task_struct_real_parent)?;
        match task_exe(o, parent)? {
            Some(p) if p == exe => t = parent,
            _ => break,
        }
    }
    Ok(Launched { identity: exe, launcher: ExeKey::default() })
}

/// Records what the current process executes and who starts it; returns
/// that launcher. A relay (such as `nohup`) passes on its own launcher.
#[inline(always)]
unsafe fn record_launch(o: &KernelOffsets, bprm: u64, exe: ExeKey, generation: u32) -> Result<ExeKey, i32> {
    let task = current_task();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let started = start_time(o, task)?;
    let filename: u64 = read(bprm, o.linux_binprm_filename)?;
    let interp: u64 = read(bprm, o.linux_binprm_interp)?;
    if filename != interp {
        // A script's interpreter: the process keeps the script's identity.
        if let Some(l) = LAUNCHES.get_ptr_mut(&tgid) {
            if (*l).start_time == started {
                (*l).exe = exe;
                return Ok((*l).launcher);
            }
        }
    }
    let me = launched(o, task)?;
    let relay = LaunchKey { generation, _pad: 0, exe: me.identity };
    let launcher = if RELAYS.get_ptr(&relay).is_some() { me.launcher } else { me.identity };
    let entry = Launch { start_time: started, exe, identity: exe, launcher };
    LAUNCHES.insert(&tgid, &entry, 0).map_err(|_| EPERM)?;
    Ok(launcher)
}

/// While the active policy names supervisors: records every exec, and
/// refuses one of a supervised binary by anything but its supervisor.
#[inline(always)]
unsafe fn try_exec_supervised(bprm: u64, a: &ProcessAttempt) -> Result<i32, i32> {
    let generation = match ACTIVE.get(0) {
        Some(g) if *g != 0 => *g,
        _ => return Ok(ALLOW),
    };
    if META.get(&generation).map(|m| m.supervises).unwrap_or(0) == 0 {
        return Ok(ALLOW);
    }
    let o = offsets();
    let file: u64 = read(bprm, o.linux_binprm_file)?;
    let exe = file_identity(&o, file)?;
    let key = LaunchKey { generation, _pad: 0, exe };
    let supervisor = SUPERVISORS.get(&key).copied();
    let launcher = match (record_launch(&o, bprm, exe, generation), supervisor) {
        (Ok(launcher), _) => launcher,
        (Err(e), Some(_)) => return Err(e),
        // Not supervised: a lost record only means a later supervised start
        // through this process is refused.
        (Err(_), None) => return Ok(ALLOW),
    };
    match supervisor {
        Some(s) if s != launcher => {
            let target = Target {
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                exe,
            };
            let caller = caller(&o)?.map(|c| c.exe).unwrap_or_default();
            finish_process_decision(Guarded::AllowedBinary { generation }, a, &caller, &target)
        }
        _ => Ok(ALLOW),
    }
}

#[inline(always)]
unsafe fn try_exec_traced(bprm: u64, a: &ProcessAttempt) -> Result<i32, i32> {
    let generation = match ACTIVE.get(0) {
        Some(g) if *g != 0 => *g,
        _ => return Ok(ALLOW),
    };
    let o = offsets();
    let task = current_task();
    let ptrace: u32 = read(task, o.task_struct_ptrace)?;
    if ptrace == 0 {
        return Ok(ALLOW); // not traced: the usual case, one read
    }
    let file: u64 = read(bprm, o.linux_binprm_file)?;
    let exe = file_identity(&o, file)?;
    if EXES.get_ptr(&exe).is_none() {
        return Ok(ALLOW);
    }
    let target = Target {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        exe,
    };
    let caller = caller(&o)?.map(|c| c.exe).unwrap_or_default();
    finish_process_decision(Guarded::AllowedBinary { generation }, a, &caller, &target)
}

/// task_kill(p, info, sig, cred): while guardd protects itself, only guardd
/// may signal guardd. Signals the kernel sends (terminal, SIGCHLD) do not
/// come through here.
#[lsm(hook = "task_kill")]
#[inline(always)]
pub fn task_kill(ctx: LsmContext) -> i32 {
    unsafe {
        let sig = ctx.arg::<u64>(2) as u32;
        if sig == 0 {
            return ALLOW; // signal 0 only asks whether the process exists
        }
        let p: u64 = ctx.arg(0);
        let attempt = ProcessAttempt {
            access: tamper::SIGNAL,
            hook: hook::TASK_KILL,
            detail: sig,
            quiet: false,
        };
        if sig < 64 && CORE_SIGNALS & (1u64 << sig) != 0 {
            // A core dump would hand the allowed process's memory to
            // whatever kernel.core_pattern names. Stopping it stays possible.
            let ret = decide_process(p, &attempt);
            if ret != ALLOW {
                return ret;
            }
        }
        let me = self_protect();
        if me.protect == 0 {
            return ALLOW;
        }
        match try_signal(p, &me, &attempt) {
            Ok(ret) => ret,
            Err(_) => decide_process(p, &attempt),
        }
    }
}

/// Signals whose default action dumps core: SIGQUIT, SIGILL, SIGTRAP,
/// SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGXCPU, SIGXFSZ, SIGSYS.
const CORE_SIGNALS: u64 = (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 11)
    | (1 << 24)
    | (1 << 25)
    | (1 << 31);

#[inline(always)]
unsafe fn try_signal(p: u64, me: &SelfProtect, a: &ProcessAttempt) -> Result<i32, i32> {
    let o = offsets();
    let tgid: u32 = read(p, o.task_struct_tgid)?;
    if tgid != me.tgid {
        return Ok(ALLOW); // the cheap test for every other kill()
    }
    if (bpf_get_current_pid_tgid() >> 32) as u32 == me.tgid {
        return Ok(ALLOW);
    }
    let Some(exe) = task_exe(&o, p)? else {
        return Ok(ALLOW);
    };
    let target = Target { tgid, exe };
    if let Guarded::Guardd = guarded(&target) {
        let caller = caller(&o)?.map(|c| c.exe).unwrap_or_default();
        return finish_process_decision(Guarded::Guardd, a, &caller, &target);
    }
    Ok(ALLOW)
}

// guard's own BPF state: while guardd protects itself, only guardd may reach
// guard's maps, programs and links, change its pin folder or unmount its
// bpffs, or load programs that read kernel memory or override LSM decisions.

/// A namespace operation: guard's pin folder first, then immutable files,
/// then the policy.
#[inline(always)]
unsafe fn decide_dir_op(dentry: u64, access: u32, hook: u32) -> i32 {
    let ret = protect_pins(dentry, access, hook);
    if ret != ALLOW {
        return ret;
    }
    let ret = protect_immutable(dentry, access, hook);
    if ret != ALLOW {
        return ret;
    }
    decide(dentry, access, hook)
}

/// Access that changes a file, or a directory's entries.
const CHANGES: u32 = access::WRITE
    | access::CREATE
    | access::DELETE
    | access::RENAME
    | access::LINK
    | access::SETATTR;

/// Refuses changes to guard's own files (while guardd protects itself) and
/// to the binaries the policy allows (while it is active), to all but guardd.
#[inline(always)]
unsafe fn protect_immutable(dentry: u64, access: u32, hook: u32) -> i32 {
    if access & CHANGES == 0 {
        return ALLOW;
    }
    // Allowed binaries are enforced only under a policy, guard's own files
    // only under self-protection: with neither, no lookup can deny.
    if ACTIVE.get(0).copied().unwrap_or(0) == 0 && !self_protecting() {
        return ALLOW;
    }
    match try_protect_immutable(dentry, access, hook) {
        Ok(ret) => ret,
        Err(_) => fail_closed(dentry, access, hook),
    }
}

#[inline(always)]
unsafe fn try_protect_immutable(dentry: u64, access: u32, hook: u32) -> Result<i32, i32> {
    let o = offsets();
    let dev = dentry_dev(o, dentry)?;
    let ino = dentry_ino(o, dentry)?;
    let mut kind = 0;
    // A new hard link to an immutable file changes nothing in it.
    if ino != 0 && access != access::LINK {
        if let Some(bits) = IMMUTABLE.get(&ExeKey { dev, _pad: 0, ino }) {
            kind |= *bits;
        }
    }
    let parent: u64 = read(dentry, o.dentry_d_parent)?;
    if parent != dentry {
        let parent_ino = dentry_ino(o, parent)?;
        if let Some(bits) = IMMUTABLE.get(&ExeKey { dev, _pad: 0, ino: parent_ino }) {
            if *bits & immutable::DIR != 0 {
                kind |= *bits;
            }
        }
    }
    if kind == 0 {
        return Ok(ALLOW);
    }
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    let enforced = if kind & immutable::GUARD != 0 {
        self_protect().protect != 0
    } else {
        generation != 0
    };
    if !enforced {
        return Ok(ALLOW);
    }
    let Some(caller) = caller(o)? else {
        return Ok(ALLOW);
    };
    if is_guardd(&caller.exe) {
        return Ok(ALLOW);
    }
    let audit_mode = kind & immutable::GUARD == 0
        && META.get(&generation).map(|m| m.mode).unwrap_or(0) == MODE_AUDIT;
    let obj = Object { dentry, dev, ino, beneath: 0 };
    let report = Report {
        verdict: verdict::DENIED,
        access,
        hook,
        flags: 0,
        point: IMMUTABLE_POINT,
        rule: NO_RULE,
        generation,
        exe: caller.exe,
    };
    Ok(deny_or_report(o, &obj, report, audit_mode))
}

/// Refuses reading guard's secrets (`immutable::SECRET`: the KMS client's
/// private key, the audit signing key) to all but guardd while it protects
/// itself: with the KMS key root would ask the KMS for the volume keys as
/// this host. `inode` is the opened one (an overlay's path hides it).
#[inline(always)]
unsafe fn protect_secret(o: &KernelOffsets, dentry: u64, inode: u64, dev: Result<u32, i32>) -> i32 {
    if !self_protecting() {
        return ALLOW;
    }
    match dev.and_then(|dev| try_protect_secret(o, dentry, inode, dev)) {
        Ok(ret) => ret,
        Err(_) => fail_closed(dentry, access::READ, hook::FILE_OPEN),
    }
}

#[inline(always)]
unsafe fn try_protect_secret(o: &KernelOffsets, dentry: u64, inode: u64, dev: u32) -> Result<i32, i32> {
    let ino: u64 = read(inode, o.inode_i_ino)?;
    if !may_be_protected(ino) {
        return Ok(ALLOW);
    }
    let secret = IMMUTABLE
        .get(&ExeKey { dev, _pad: 0, ino })
        .is_some_and(|bits| *bits & immutable::SECRET != 0);
    if !secret {
        return Ok(ALLOW);
    }
    let Some(caller) = caller(o)? else {
        return Ok(ALLOW);
    };
    if is_guardd(&caller.exe) {
        return Ok(ALLOW);
    }
    let obj = Object { dentry, dev, ino, beneath: 0 };
    let report = Report {
        verdict: verdict::DENIED,
        access: access::READ,
        hook: hook::FILE_OPEN,
        flags: 0,
        point: SECRET_POINT,
        rule: NO_RULE,
        generation: ACTIVE.get(0).copied().unwrap_or(0),
        exe: caller.exe,
    };
    Ok(deny_or_report(o, &obj, report, false))
}

/// Refuses changes inside guard's pin folder to all but guardd.
#[inline(always)]
unsafe fn protect_pins(dentry: u64, access: u32, hook: u32) -> i32 {
    let me = self_protect();
    if me.protect == 0 || me.pins.ino == 0 {
        return ALLOW; // one array lookup on this path while unprotected
    }
    match try_protect_pins(&me, dentry, access, hook) {
        Ok(ret) => ret,
        Err(_) => fail_closed(dentry, access, hook),
    }
}

#[inline(always)]
unsafe fn try_protect_pins(me: &SelfProtect, dentry: u64, access: u32, hook: u32) -> Result<i32, i32> {
    let o = offsets();
    let obj = object(&o, dentry)?;
    if obj.dev != me.pins.dev || !under(&o, &obj, me.pins.ino)? {
        return Ok(ALLOW);
    }
    let Some(caller) = caller(&o)? else {
        return Ok(ALLOW);
    };
    if is_guardd(&caller.exe) {
        return Ok(ALLOW);
    }
    count(stat::DENIED);
    let report = Report {
        verdict: verdict::DENIED,
        access,
        hook,
        flags: 0,
        point: PINS_POINT,
        rule: NO_RULE,
        generation: ACTIVE.get(0).copied().unwrap_or(0),
        exe: caller.exe,
    };
    if within_rate() {
        if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
            let e = &mut *entry.as_mut_ptr();
            fill_header(&report, e);
            e.dev = obj.dev;
            e.ino = obj.ino;
            let top = me.pins.ino;
            fill_path(&o, &obj, e, |ino| ino == top);
            fill_exe(&o, e);
            entry.submit(0);
        } else {
            count(stat::DROPPED);
        }
    }
    Ok(EPERM)
}

/// Whether `obj` is the directory `ino` or below it (same filesystem).
#[inline(always)]
unsafe fn under(o: &KernelOffsets, obj: &Object, ino: u64) -> Result<bool, i32> {
    let mut dentry = obj.dentry;
    let mut current = obj.ino;
    for _ in 0..MAX_DEPTH {
        if current == ino {
            return Ok(true);
        }
        let parent: u64 = read(dentry, o.dentry_d_parent)?;
        if parent == dentry || parent == 0 {
            return Ok(false);
        }
        dentry = parent;
        current = dentry_ino(o, dentry)?;
    }
    Err(EPERM)
}

/// Who is asking, when guard protects itself: `None` when the answer is
/// allow (no protection, a kernel thread, or guardd itself).
#[inline(always)]
unsafe fn bpf_outsider() -> Result<Option<ExeKey>, i32> {
    if self_protect().protect == 0 {
        return Ok(None);
    }
    match caller(&offsets())? {
        Some(c) if !is_guardd(&c.exe) => Ok(Some(c.exe)),
        _ => Ok(None),
    }
}

/// Denies and reports an attempt on guard's BPF state. `what` is the
/// command, `id` the object id or program type.
#[inline(always)]
unsafe fn deny_bpf(exe: ExeKey, hook: u32, access: u32, what: u32, id: u64, dev: u32) -> i32 {
    count(stat::DENIED);
    let a = ProcessAttempt { access, hook, detail: what, quiet: false };
    let report = process_report(verdict::DENIED, &a, exe, ACTIVE.get(0).copied().unwrap_or(0));
    let target = Target { tgid: 0, exe: ExeKey { dev, _pad: 0, ino: id } };
    emit_process(&report, &target, what, 0);
    EPERM
}

#[inline(always)]
fn is_guard_object(kind: u32, id: u32) -> bool {
    unsafe { OBJECTS.get(&ObjectKey { kind, id }).is_some() }
}

/// bpf(cmd, attr, size[, kernel]): loading tracing, kprobe, LSM, extension
/// programs (they could read keys and data, or override guard's decisions),
/// taking guard's links by id, or detaching links.
#[lsm(hook = "bpf")]
#[inline(always)]
pub fn bpf(ctx: LsmContext) -> i32 {
    unsafe {
        let exe = match bpf_outsider() {
            Ok(Some(exe)) => exe,
            Ok(None) => return ALLOW,
            Err(_) => return EPERM,
        };
        let cmd = ctx.arg::<u64>(0) as u32;
        let attr: u64 = ctx.arg(1);
        let o = offsets();
        match cmd {
            bpf_uapi::BPF_PROG_LOAD => {
                let Ok(prog_type) = read::<u32>(attr, o.bpf_attr_prog_type) else {
                    return deny_bpf(exe, hook::BPF, tamper::BPF, cmd, 0, 0);
                };
                if bpf_uapi::is_dangerous_prog_type(prog_type) {
                    return deny_bpf(exe, hook::BPF, tamper::BPF, cmd, prog_type as u64, 0);
                }
                ALLOW
            }
            bpf_uapi::BPF_LINK_GET_FD_BY_ID => {
                let Ok(id) = read::<u32>(attr, o.bpf_attr_link_id) else {
                    return deny_bpf(exe, hook::BPF, tamper::BPF, cmd, 0, 0);
                };
                if is_guard_object(object::LINK, id) {
                    return deny_bpf(exe, hook::BPF, tamper::BPF, cmd, id as u64, 0);
                }
                ALLOW
            }
            // The hook cannot tell whose link an fd is: nobody detaches links
            // while guard protects itself.
            bpf_uapi::BPF_LINK_DETACH => deny_bpf(exe, hook::BPF, tamper::BPF, cmd, 0, 0),
            _ => ALLOW,
        }
    }
}

/// bpf_map(map, fmode): an fd to one of guard's maps (by id, pin or iteration).
#[lsm(hook = "bpf_map")]
#[inline(always)]
pub fn bpf_map(ctx: LsmContext) -> i32 {
    unsafe {
        let exe = match bpf_outsider() {
            Ok(Some(exe)) => exe,
            Ok(None) => return ALLOW,
            Err(_) => return EPERM,
        };
        let map: u64 = ctx.arg(0);
        let Ok(id) = read::<u32>(map, offsets().bpf_map_id) else {
            return deny_bpf(exe, hook::BPF_MAP, tamper::BPF, 0, 0, 0);
        };
        if is_guard_object(object::MAP, id) {
            return deny_bpf(exe, hook::BPF_MAP, tamper::BPF, 0, id as u64, 0);
        }
        ALLOW
    }
}

/// bpf_prog(prog): an fd to one of guard's programs.
#[lsm(hook = "bpf_prog")]
#[inline(always)]
pub fn bpf_prog(ctx: LsmContext) -> i32 {
    unsafe {
        let exe = match bpf_outsider() {
            Ok(Some(exe)) => exe,
            Ok(None) => return ALLOW,
            Err(_) => return EPERM,
        };
        let o = offsets();
        let prog: u64 = ctx.arg(0);
        let id = match read::<u64>(prog, o.bpf_prog_aux).and_then(|aux| read::<u32>(aux, o.bpf_prog_aux_id)) {
            Ok(id) => id,
            Err(_) => return deny_bpf(exe, hook::BPF_PROG, tamper::BPF, 0, 0, 0),
        };
        if is_guard_object(object::PROG, id) {
            return deny_bpf(exe, hook::BPF_PROG, tamper::BPF, 0, id as u64, 0);
        }
        ALLOW
    }
}

/// sb_umount(mnt, flags): unmounting the bpffs that holds guard's pins
/// would drop them and detach the programs; unmounting a filesystem that
/// holds protected directories would take the data from under the database.
#[lsm(hook = "sb_umount")]
#[inline(always)]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    unsafe {
        let o = offsets();
        let mnt: u64 = ctx.arg(0);
        let Ok(sb) = read::<u64>(mnt, o.vfsmount_mnt_sb) else {
            return EPERM;
        };
        let Ok(dev) = read::<u32>(sb, o.super_block_s_dev) else {
            return EPERM;
        };
        let me = self_protect();
        if me.protect != 0 && dev == me.pins.dev {
            return match bpf_outsider() {
                Ok(Some(exe)) => deny_bpf(exe, hook::SB_UMOUNT, tamper::UMOUNT, 0, 0, dev),
                Ok(None) => ALLOW,
                Err(_) => EPERM,
            };
        }
        // A bind mount of a subtree can go: the filesystem stays mounted
        // where the database has it. Unmounting a whole filesystem cannot.
        let (Ok(mnt_root), Ok(fs_root)) = (
            read::<u64>(mnt, o.vfsmount_mnt_root),
            read::<u64>(sb, o.super_block_s_root),
        ) else {
            return EPERM;
        };
        if mnt_root != fs_root {
            return ALLOW;
        }
        protect_fs(dev)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
