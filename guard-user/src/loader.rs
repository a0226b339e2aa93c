//! Loading, attaching and pinning the kernel programs.
//!
//! Programs, links and maps are pinned under one bpffs folder, so enforcement
//! stays on while guardd is dead or restarting. A restarted guardd adopts the
//! pinned state instead of loading a second copy.

use crate::offsets;
use anyhow::{bail, Context, Result};
use aya::{
    programs::{links::FdLink, Lsm},
    Btf, Ebpf, EbpfLoader,
};
use guard_common::{maps, object, ObjectKey};
use std::{
    fs,
    path::{Path, PathBuf},
};

/// Default bpffs folder of guard's pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/guard";
const LSM_LIST: &str = "/sys/kernel/security/lsm";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const SECURITYFS_MAGIC: i64 = 0x73636673;

/// guard's programs; each is named after the LSM hook it attaches to, except
/// the second programs of a hook (`SECOND_PROGRAMS`).
pub const HOOKS: [&str; 38] = [
    "file_open",
    "inode_create",
    "inode_mkdir",
    "inode_mknod",
    "inode_symlink",
    "inode_unlink",
    "inode_rmdir",
    "inode_rename",
    "inode_rename_target",
    "inode_link",
    "inode_link_target",
    "inode_setattr",
    "ptrace_access_check",
    "bprm_check_security",
    "task_kill",
    "bpf",
    "bpf_map",
    "bpf_prog",
    "sb_umount",
    "file_permission",
    "mmap_file",
    "file_mprotect",
    "sb_mount",
    "move_mount",
    "inode_setxattr",
    "inode_removexattr",
    "kernel_read_file",
    "kernel_load_data",
    "file_receive",
    "inode_set_acl",
    "inode_remove_acl",
    "locked_down",
    "bprm_committed_creds",
    "file_ioctl",
    "file_ioctl_compat",
    "perf_event_open",
    "uring_cmd",
    "task_prctl",
];

/// Hooks only some kernels have (POSIX ACLs got their own in Linux 6.2;
/// before, ACL changes come through `inode_setxattr`; 32-bit ioctls got
/// theirs in 6.8, before they come through `file_ioctl`; `uring_cmd` only
/// where io_uring is built in). Attached where present.
const OPTIONAL_HOOKS: [&str; 4] = [
    "inode_set_acl",
    "inode_remove_acl",
    "file_ioctl_compat",
    "uring_cmd",
];

/// Programs that are a hook's second: (program, hook). The kernel runs a
/// hook's programs in turn until one denies.
const SECOND_PROGRAMS: [(&str, &str); 2] = [
    ("inode_rename_target", "inode_rename"),
    ("inode_link_target", "inode_link"),
];

/// The LSM hook program `name` attaches to.
fn hook_of(name: &str) -> &str {
    SECOND_PROGRAMS
        .iter()
        .find(|(program, _)| *program == name)
        .map_or(name, |(_, hook)| hook)
}

/// Whether a pin for `hook` is expected: every required hook, and optional
/// ones this kernel has (known from the pins of the guardd that armed).
fn optional(hook: &str) -> bool {
    OPTIONAL_HOOKS.contains(&hook)
}

/// Where guard's pins live.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
    pub fn link(&self, program: &str) -> PathBuf {
        self.root.join("links").join(program)
    }
    pub fn program(&self, program: &str) -> PathBuf {
        self.root.join("programs").join(program)
    }

    /// True when every link and map is pinned: the guard is armed.
    pub fn complete(&self) -> bool {
        HOOKS
            .iter()
            .filter(|h| !optional(h))
            .all(|h| self.link(h).exists())
            && maps::ALL.iter().all(|m| self.map(m).exists())
    }

    /// True when anything of guard is pinned.
    pub fn any(&self) -> bool {
        self.root.exists()
    }
}

/// How the programs came to be running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Armed {
    /// Loaded and attached by this process.
    Loaded,
    /// Already pinned by an earlier guardd; adopted as is.
    Adopted,
}

/// Refuses to go on unless the BPF LSM is active: on a kernel without `bpf` in
/// the LSM list the programs attach and then never run.
pub fn check_bpf_lsm() -> Result<()> {
    mount_if_missing(
        Path::new("/sys/kernel/security"),
        "securityfs",
        SECURITYFS_MAGIC,
    )?;
    let list = fs::read_to_string(LSM_LIST).with_context(|| format!("reading {LSM_LIST}"))?;
    let list = list.trim();
    if !list.split(',').any(|l| l == "bpf") {
        bail!(
            "the BPF LSM is not active on this kernel ({LSM_LIST} lists \"{list}\"): \
             guard's programs would attach and never run. Add `lsm={list},bpf` to the \
             kernel command line and reboot."
        );
    }
    Ok(())
}

/// Makes sure the programs are attached and pinned, adopting earlier pins.
/// Struct layouts are resolved from the kernel BTF at `btf`.
pub fn arm(pins: &Pins, object: &[u8], btf: &Path) -> Result<Armed> {
    check_bpf_lsm()?;
    let bpffs = pins.root().parent().context("pin folder has no parent")?;
    mount_if_missing(bpffs, "bpf", BPF_FS_MAGIC)?;
    if pins.complete() {
        return Ok(Armed::Adopted);
    }
    load_and_pin(pins, object, btf)?;
    Ok(Armed::Loaded)
}

/// Loads a fresh copy of the programs (reusing pinned maps, so an applied
/// policy survives) and atomically replaces any older link pins.
fn load_and_pin(pins: &Pins, object: &[u8], btf: &Path) -> Result<()> {
    let kernel_btf = offsets::read_btf(btf)?;
    let offsets = offsets::resolve(&kernel_btf)
        .context("refusing to load: the kernel's layout is not fully known")?;
    let absent = offsets::absent_hooks(&kernel_btf, &OPTIONAL_HOOKS);
    for dir in [
        pins.maps(),
        pins.root().join("links"),
        pins.root().join("programs"),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps())
        .override_global("OFFSETS", &offsets, true)
        .load(object)
        .context("loading guard's kernel object")?;
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    load_programs(&mut ebpf, &btf, &absent)?;
    for name in HOOKS {
        if absent.contains(&name) {
            continue;
        }
        let program: &mut Lsm = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the kernel object"))?
            .try_into()
            .with_context(|| format!("program {name} is not an LSM program"))?;
        replace_pin(&pins.program(name), |tmp| Ok(program.pin(tmp)?))
            .with_context(|| format!("pinning program {name}"))?;
        let link_id = program
            .attach()
            .with_context(|| format!("attaching LSM program {name}"))?;
        let link: FdLink = program.take_link(link_id)?.into();
        replace_pin(&pins.link(name), |tmp| {
            link.pin(tmp)?;
            Ok(())
        })
        .with_context(|| format!("pinning link {name}"))?;
    }
    Ok(())
}

/// Loads guard's programs (the kernel verifies each) on one thread per CPU.
/// Verification is most of a fresh start, and each program is verified on
/// its own; nothing is attached yet, so the order does not matter.
fn load_programs(ebpf: &mut Ebpf, btf: &Btf, absent: &[&str]) -> Result<()> {
    let mut programs: Vec<(&str, &mut Lsm)> = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        if !HOOKS.contains(&name) || absent.contains(&name) {
            continue;
        }
        let program: &mut Lsm = program
            .try_into()
            .with_context(|| format!("program {name} is not an LSM program"))?;
        programs.push((name, program));
    }
    // The costliest programs (file_open, then the inode hooks) come first
    // in HOOKS: taking them first keeps the threads' shares even.
    programs.sort_by_key(|(name, _)| HOOKS.iter().position(|hook| hook == name));
    let queue = std::sync::Mutex::new(programs.into_iter());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let next = queue.lock().expect("no loader thread panics").next();
                        let Some((name, program)) = next else {
                            return Ok(());
                        };
                        program
                            .load(hook_of(name), btf)
                            .with_context(|| format!("loading LSM program {name}"))?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("a loader thread panicked"))
    })
}

/// Pins under a temporary name, then renames over `path`, so a reader never
/// finds the pin missing and an older pinned link is released only once the
/// new one holds.
fn replace_pin(path: &Path, pin: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // bpffs refuses names with dots.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push("_new");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    pin(&tmp)?;
    fs::rename(&tmp, path).with_context(|| format!("renaming pin to {}", path.display()))
}

/// The kernel ids of guard's pinned maps, programs and links.
pub fn object_ids(pins: &Pins) -> Result<Vec<ObjectKey>> {
    use aya::{maps::MapInfo, programs::links::PinnedLink, programs::ProgramInfo};
    let mut ids = Vec::new();
    for name in maps::ALL {
        let path = pins.map(name);
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading the id of {}", path.display()))?;
        ids.push(ObjectKey {
            kind: object::MAP,
            id: info.id(),
        });
    }
    for hook in HOOKS {
        let path = pins.program(hook);
        if optional(hook) && !path.exists() {
            continue; // not on this kernel
        }
        let info = ProgramInfo::from_pin(&path)
            .with_context(|| format!("reading the id of {}", path.display()))?;
        ids.push(ObjectKey {
            kind: object::PROG,
            id: info.id(),
        });
        let path = pins.link(hook);
        let link: FdLink = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening {}", path.display()))?
            .into();
        let info = link
            .info()
            .with_context(|| format!("reading the id of {}", path.display()))?;
        ids.push(ObjectKey {
            kind: object::LINK,
            id: info.id(),
        });
    }
    Ok(ids)
}

/// Removes every pin: the programs detach once nothing holds them.
pub fn disarm(pins: &Pins) -> Result<()> {
    if pins.any() {
        fs::remove_dir_all(pins.root())
            .with_context(|| format!("removing {}", pins.root().display()))?;
    }
    Ok(())
}

fn mount_if_missing(target: &Path, fstype: &str, magic: i64) -> Result<()> {
    if fs_magic(target)? == magic {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let path = c(&target.to_string_lossy());
    let fstype_c = c(fstype);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype_c.as_ptr(),
            path.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting {fstype} on {}", target.display()));
    }
    Ok(())
}

fn fs_magic(path: &Path) -> Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64)
}
