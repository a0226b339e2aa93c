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

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{lsm, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::LsmContext,
    EbpfContext,
};
use guard_common::{
    access, flags, hook, stat, verdict, DevKey, DirKey, Event, ExeKey, KernelOffsets,
    PolicyMeta, RateState, RuleKey, RuleValue, Settings, Taint, ANY_ID, DEFAULT_EVENTS_PER_SEC_PER_CPU,
    EVENTS_RING_BYTES, FMODE_EXEC, FMODE_READ, FMODE_WRITE, MAX_DEPTH, MAX_EXES, MAX_POINTS,
    MAX_RULE_ENTRIES, MODE_AUDIT, NAME_LEN, NO_RULE, PATH_DEPTH, EXE_DEPTH,
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
    _pad: 0,
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
#[map(name = "GUARD_RULES")]
static RULES: HashMap<RuleKey, RuleValue> = HashMap::pinned(2 * MAX_RULE_ENTRIES, 0);
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
#[map(name = "GUARD_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

#[inline(always)]
fn offsets() -> KernelOffsets {
    // volatile: the value is patched into .rodata at load time.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
unsafe fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    bpf_probe_read_kernel((base + off as u64) as *const T)
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
}

/// Where the object sits in the active policy.
struct Protection {
    generation: u32,
    point: u32,
}

/// Outcome of looking for a protected ancestor.
enum Lookup {
    NotProtected,
    Protected(Protection),
}

#[inline(always)]
unsafe fn dentry_ino(o: &KernelOffsets, dentry: u64) -> Result<u64, i32> {
    let inode: u64 = read(dentry, o.dentry_d_inode)?;
    if inode == 0 {
        return Ok(0); // negative dentry: the name does not exist (yet)
    }
    read(inode, o.inode_i_ino)
}

#[inline(always)]
unsafe fn object(o: &KernelOffsets, dentry: u64) -> Result<Object, i32> {
    let sb: u64 = read(dentry, o.dentry_d_sb)?;
    let dev: u32 = read(sb, o.super_block_s_dev)?;
    let ino = dentry_ino(o, dentry)?;
    Ok(Object { dentry, dev, ino })
}

/// Walks the dentry ancestors of `obj` on its superblock looking for a
/// protected directory of the active generation.
#[inline(always)]
unsafe fn find_point(o: &KernelOffsets, generation: u32, obj: &Object) -> Result<Lookup, i32> {
    let mut dentry = obj.dentry;
    let mut ino = obj.ino;
    for _ in 0..MAX_DEPTH {
        if ino != 0 {
            let key = DirKey { generation, dev: obj.dev, ino };
            if let Some(point) = DIRS.get(&key) {
                return Ok(Lookup::Protected(Protection { generation, point: *point }));
            }
        }
        let parent: u64 = read(dentry, o.dentry_d_parent)?;
        if parent == dentry || parent == 0 {
            return Ok(Lookup::NotProtected); // reached the root of this filesystem
        }
        dentry = parent;
        ino = dentry_ino(o, dentry)?;
    }
    Err(EPERM) // deeper than MAX_DEPTH on a protected filesystem
}

/// Who is asking: the executable's identity and credentials.
struct Caller {
    exe: ExeKey,
    uid: u32,
    gid: u32,
}

/// `None` for kernel threads (no mm): the kernel itself is not confined.
#[inline(always)]
unsafe fn caller(o: &KernelOffsets) -> Result<Option<Caller>, i32> {
    let task = bpf_get_current_task();
    let mm: u64 = read(task, o.task_struct_mm)?;
    if mm == 0 {
        return Ok(None);
    }
    let exe_file: u64 = read(mm, o.mm_struct_exe_file)?;
    if exe_file == 0 {
        return Err(EPERM);
    }
    let inode: u64 = read(exe_file, o.file_f_inode)?;
    let sb: u64 = read(inode, o.inode_i_sb)?;
    let dev: u32 = read(sb, o.super_block_s_dev)?;
    let ino: u64 = read(inode, o.inode_i_ino)?;
    let uid_gid = bpf_get_current_uid_gid();
    Ok(Some(Caller {
        exe: ExeKey { dev, _pad: 0, ino },
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
    }))
}

/// What the rules of `point` grant `caller`: (allow, audit, rule).
#[inline(always)]
fn grants(p: &Protection, c: &Caller) -> (u32, u32, u32) {
    let (mut allow, mut audit, mut rule) = (0u32, 0u32, NO_RULE);
    if TAINTED.get_ptr(&c.exe).is_some() {
        return (allow, audit, rule); // the binary was written to since apply
    }
    let ids = [(c.uid, c.gid), (c.uid, ANY_ID), (ANY_ID, c.gid), (ANY_ID, ANY_ID)];
    for (uid, gid) in ids {
        let key = RuleKey {
            generation: p.generation,
            point: p.point,
            exe_dev: c.exe.dev,
            uid,
            exe_ino: c.exe.ino,
            gid,
            _pad: 0,
        };
        if let Some(v) = unsafe { RULES.get(&key) } {
            allow |= v.allow;
            audit |= v.audit;
            if v.rule < rule {
                rule = v.rule;
            }
        }
    }
    (allow, audit, rule)
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
    match try_decide(dentry, access, hook) {
        Ok(ret) => ret,
        Err(_) => {
            count(stat::FAIL_CLOSED);
            count(stat::DENIED);
            emit_failure(dentry, access, hook);
            EPERM
        }
    }
}

#[inline(always)]
unsafe fn try_decide(dentry: u64, access: u32, hook: u32) -> Result<i32, i32> {
    let generation = match ACTIVE.get(0) {
        Some(g) if *g != 0 => *g,
        _ => return Ok(ALLOW), // no policy applied
    };
    let o = offsets();
    let obj = object(&o, dentry)?;
    if DEVS.get_ptr(&DevKey { generation, dev: obj.dev }).is_none() {
        return Ok(ALLOW); // fast path: nothing protected on this filesystem
    }
    let protection = match find_point(&o, generation, &obj)? {
        Lookup::NotProtected => return Ok(ALLOW),
        Lookup::Protected(p) => p,
    };
    let Some(caller) = caller(&o)? else {
        return Ok(ALLOW);
    };
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
    if access & allow == access {
        count(stat::ALLOWED);
        if access & audit != 0 {
            count(stat::AUDITED);
            report.verdict = verdict::AUDITED;
            emit(&o, &obj, &report);
        }
        return Ok(ALLOW);
    }
    let mode = META.get(&generation).map(|m| m.mode).unwrap_or(0);
    if mode == MODE_AUDIT {
        count(stat::WOULD_DENY);
        report.verdict = verdict::WOULD_DENY;
        emit(&o, &obj, &report);
        return Ok(ALLOW);
    }
    count(stat::DENIED);
    report.verdict = verdict::DENIED;
    emit(&o, &obj, &report);
    Ok(EPERM)
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
    e.dev = obj.dev;
    e.exe_dev = r.exe.dev;
    e.ino = obj.ino;
    e.exe_ino = r.exe.ino;
    e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    fill_path(o, obj, r.point, e);
    fill_exe(o, e);
    entry.submit(0);
}

/// Copies the names of the caller's executable up to its filesystem's root.
#[inline(always)]
unsafe fn fill_exe(o: &KernelOffsets, e: &mut Event) {
    for i in 0..EXE_DEPTH {
        e.exe_path[i][0] = 0;
    }
    let task = bpf_get_current_task();
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

/// Copies the names from the object up to its protected directory.
#[inline(always)]
unsafe fn fill_path(o: &KernelOffsets, obj: &Object, point: u32, e: &mut Event) {
    let mut dentry = obj.dentry;
    let mut ino = obj.ino;
    for i in 0..PATH_DEPTH {
        e.path[i][0] = 0;
    }
    for i in 0..PATH_DEPTH {
        if ino != 0 {
            let key = DirKey { generation: e.generation, dev: obj.dev, ino };
            if DIRS.get(&key).map(|p| *p == point).unwrap_or(false) {
                return;
            }
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

/// Reports a fail-closed denial, with what could be read.
#[inline(always)]
unsafe fn emit_failure(dentry: u64, access: u32, hook: u32) {
    let o = offsets();
    let obj = object(&o, dentry).unwrap_or(Object { dentry, dev: 0, ino: 0 });
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
}

/// A binary some policy allows lost its rules once opened for writing.
#[inline(always)]
unsafe fn taint_if_allowed_exe(o: &KernelOffsets, inode: u64) {
    let Ok(sb) = read::<u64>(inode, o.inode_i_sb) else {
        return;
    };
    let (Ok(dev), Ok(ino)) = (read::<u32>(sb, o.super_block_s_dev), read::<u64>(inode, o.inode_i_ino))
    else {
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
    }
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
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
            if let Ok(inode) = read::<u64>(file, o.file_f_inode) {
                taint_if_allowed_exe(&o, inode);
            }
        }
        if mode & FMODE_EXEC != 0 {
            want |= access::EXEC;
        }
        let Ok(dentry) = read::<u64>(file, o.file_f_path_dentry) else {
            return EPERM;
        };
        decide(dentry, want, hook::FILE_OPEN)
    }
}

#[lsm(hook = "inode_create")]
pub fn inode_create(ctx: LsmContext) -> i32 {
    unsafe { decide(ctx.arg(1), access::CREATE, hook::INODE_CREATE) }
}

#[lsm(hook = "inode_mkdir")]
pub fn inode_mkdir(ctx: LsmContext) -> i32 {
    unsafe { decide(ctx.arg(1), access::CREATE, hook::INODE_MKDIR) }
}

#[lsm(hook = "inode_mknod")]
pub fn inode_mknod(ctx: LsmContext) -> i32 {
    unsafe { decide(ctx.arg(1), access::CREATE, hook::INODE_MKNOD) }
}

#[lsm(hook = "inode_symlink")]
pub fn inode_symlink(ctx: LsmContext) -> i32 {
    unsafe { decide(ctx.arg(1), access::CREATE, hook::INODE_SYMLINK) }
}

#[lsm(hook = "inode_unlink")]
pub fn inode_unlink(ctx: LsmContext) -> i32 {
    unsafe { decide(ctx.arg(1), access::DELETE, hook::INODE_UNLINK) }
}

#[lsm(hook = "inode_rmdir")]
pub fn inode_rmdir(ctx: LsmContext) -> i32 {
    unsafe { decide(ctx.arg(1), access::DELETE, hook::INODE_RMDIR) }
}

/// inode_rename(old_dir, old_dentry, new_dir, new_dentry): both the source and
/// the destination name must be allowed.
#[lsm(hook = "inode_rename")]
pub fn inode_rename(ctx: LsmContext) -> i32 {
    unsafe {
        let ret = decide(ctx.arg(1), access::RENAME, hook::INODE_RENAME);
        if ret != ALLOW {
            return ret;
        }
        decide(ctx.arg(3), access::RENAME, hook::INODE_RENAME)
    }
}

/// inode_link(old_dentry, dir, new_dentry): linking a protected file anywhere,
/// or anything into a protected directory.
#[lsm(hook = "inode_link")]
pub fn inode_link(ctx: LsmContext) -> i32 {
    unsafe {
        let ret = decide(ctx.arg(0), access::LINK, hook::INODE_LINK);
        if ret != ALLOW {
            return ret;
        }
        decide(ctx.arg(2), access::LINK, hook::INODE_LINK)
    }
}

/// inode_setattr([idmap,] dentry, attr): the dentry's position differs by kernel.
#[lsm(hook = "inode_setattr")]
pub fn inode_setattr(ctx: LsmContext) -> i32 {
    unsafe {
        let o = offsets();
        // Both loads are volatile so the compiler cannot turn the choice into
        // a variable context offset, which the verifier rejects.
        let args = ctx.as_ptr() as *const u64;
        let first = core::ptr::read_volatile(args);
        let second = core::ptr::read_volatile(args.add(1));
        let dentry = if o.setattr_dentry_arg == 0 { first } else { second };
        if let Ok(inode) = read::<u64>(dentry, o.dentry_d_inode) {
            if inode != 0 {
                taint_if_allowed_exe(&o, inode);
            }
        }
        decide(dentry, access::SETATTR, hook::INODE_SETATTR)
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
