//! Techniques that go under the files: kernel memory (where the fscrypt and
//! dm-crypt keys live), code in the kernel, the raw block device, and
//! running the allowed binary through the dynamic loader.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::sys::{self, errno_name, last_errno, refused, refused_by_policy};
use super::{AlertRule, Attempt, Needs, Target, Technique, ACCOMPLICE, NOTHING};

pub fn techniques() -> Vec<Technique> {
    let t = |id, name, expected, needs, run| Technique {
        id,
        name,
        expected,
        needs,
        alert: AlertRule::Denial,
        run,
    };
    vec![
        t(
            "proc-kcore",
            "read /proc/kcore (kernel memory: the volume keys)",
            "EPERM",
            NOTHING,
            kcore,
        ),
        t("dev-mem", "read /dev/mem", "EPERM", NOTHING, dev_mem),
        t(
            "dev-mem-node",
            "read a /dev/mem node root made elsewhere (mknod c 1 1)",
            "EPERM",
            NOTHING,
            dev_mem_node,
        ),
        t(
            "kcore-new-procfs",
            "read /proc/kcore of a procfs root mounts anew",
            "EPERM",
            NOTHING,
            kcore_new_procfs,
        ),
        t(
            "hibernation-image",
            "open /dev/snapshot (a hibernation image: all of memory)",
            "EPERM",
            NOTHING,
            hibernation_image,
        ),
        t(
            "tracefs-uprobe",
            "open tracefs uprobe_events (uprobes fetch the allowed program's memory)",
            "EPERM",
            NOTHING,
            tracefs_uprobe,
        ),
        t(
            "perf-user-stack",
            "perf_event_open sampling user stacks on a whole CPU",
            "EPERM",
            NOTHING,
            perf_user_stack,
        ),
        t(
            "finit-module",
            "finit_module of a file (garbage)",
            "EPERM from guard, not ENOEXEC",
            NOTHING,
            finit_module,
        ),
        t(
            "init-module",
            "init_module from memory (garbage)",
            "EPERM from guard, not ENOEXEC",
            NOTHING,
            init_module,
        ),
        t(
            "kexec-file-load",
            "kexec_file_load of a file (garbage)",
            "EPERM from guard, not ENOEXEC",
            NOTHING,
            kexec_file_load,
        ),
        t(
            "kexec-load",
            "kexec_load (empty: unloads, harmless)",
            "EPERM",
            NOTHING,
            kexec_load,
        ),
        t(
            "bpf-kprobe",
            "load a kprobe BPF program (reads kernel memory)",
            "EPERM",
            NOTHING,
            bpf_kprobe,
        ),
        t(
            "ld-so",
            "run the allowed binary through ld.so",
            "EPERM",
            ACCOMPLICE,
            ld_so,
        ),
        t(
            "exe-switch",
            "take the allowed binary as one's executable (prctl PR_SET_MM_EXE_FILE), then read",
            "EPERM",
            ACCOMPLICE,
            super::exe_switch::technique,
        ),
        t(
            "foreign-library",
            "LD_PRELOAD a library from elsewhere into the allowed binary",
            "not mapped executable (policy `libraries`)",
            ACCOMPLICE,
            foreign_library,
        ),
        Technique {
            id: "raw-device",
            name: "search the raw block device for the plaintext",
            expected: "markers absent (ciphertext only)",
            needs: Needs {
                device: true,
                ..NOTHING
            },
            alert: AlertRule::NotApplicable("encrypted at rest: nothing to deny"),
            run: raw_device,
        },
        Technique {
            id: "raw-device-write",
            name: "open the raw block device for writing (nothing is written)",
            expected: "EPERM",
            needs: Needs {
                device: true,
                ..NOTHING
            },
            alert: AlertRule::Denial,
            run: raw_device_write,
        },
        Technique {
            id: "device-mapper-remap",
            name: "map the raw block device again (device-mapper linear table)",
            expected: "EPERM",
            needs: Needs {
                device: true,
                ..NOTHING
            },
            alert: AlertRule::Denial,
            run: device_mapper_remap,
        },
        Technique {
            id: "md-remap",
            name: "add the raw block device to a new md array (sysfs new_dev)",
            expected: "EBUSY (the kernel: the device is in use)",
            needs: Needs {
                device: true,
                ..NOTHING
            },
            alert: AlertRule::NotApplicable(
                "the kernel refuses: a mounted device is claimed by its filesystem",
            ),
            run: md_remap,
        },
    ]
}

/// md, like device-mapper, opens the devices of an array itself. Unlike
/// device-mapper (whose tables all share one holder), it claims each device
/// exclusively, so a device something has mounted must be refused.
fn md_remap(t: &Target) -> Result<Attempt> {
    let device = t.device.as_ref().context("needs --device")?;
    let rdev = std::fs::metadata(device)
        .with_context(|| format!("reading {}", device.display()))?
        .rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let array = (100..200)
        .find(|n| !Path::new(&format!("/sys/block/md{n}")).exists())
        .context("no free md number between 100 and 199")?;
    let node = t.scratch.join(format!("guard-selftest-md{array}"));
    let _ = std::fs::remove_file(&node);
    let path = sys::cstring(&node)?;
    // SAFETY: valid C string.
    let rc = unsafe {
        libc::mknod(
            path.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(MD_MAJOR, array),
        )
    };
    sys::check(rc as libc::c_long).with_context(|| format!("mknod {}", node.display()))?;
    // Opening an md node makes its array.
    let held = std::fs::OpenOptions::new().read(true).open(&node);
    let _ = std::fs::remove_file(&node);
    let _held = match held {
        Ok(file) => file,
        Err(e) if !Path::new("/sys/module/md_mod").exists() => {
            return Ok(refused(
                "open an md array (md is not loaded, and no module loads while guard is armed)",
                &e,
            ))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {}", node.display()))),
    };
    let md = PathBuf::from(format!("/sys/block/md{array}/md"));
    // An array without metadata; its level needs the raid1 module, which
    // adding a device does not.
    let _ = std::fs::write(md.join("metadata_version"), "none");
    let _ = std::fs::write(md.join("level"), "raid1");
    let _ = std::fs::write(md.join("raid_disks"), "1");
    let what = format!(
        "new_dev {major}:{minor} ({}) in md{array}",
        device.display()
    );
    let attempt = match std::fs::write(md.join("new_dev"), format!("{major}:{minor}")) {
        Ok(()) => Attempt::not_blocked(format!("{what}: accepted")),
        Err(e)
            if e.raw_os_error() == Some(libc::EBUSY)
                || refused_by_policy(e.raw_os_error().unwrap_or(0)) =>
        {
            refused(&what, &e)
        }
        Err(e) => return Err(anyhow::Error::new(e).context(what)),
    };
    // The array goes away with its last device and opener.
    let _ = std::fs::write(md.join("array_state"), "clear");
    Ok(attempt)
}

/// Block major of md arrays (include/uapi/linux/major.h).
const MD_MAJOR: u32 = 9;

/// The kernel opens the devices a device-mapper table names itself: a new
/// mapping over the raw device would read and write it past `file_open`.
fn device_mapper_remap(t: &Target) -> Result<Attempt> {
    use crate::volume::device_mapper;
    let device = t.device.as_ref().context("needs --device")?;
    let rdev = std::fs::metadata(device)
        .with_context(|| format!("reading {}", device.display()))?
        .rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let size = format!("/sys/dev/block/{major}:{minor}/size");
    let sectors: u64 = std::fs::read_to_string(&size)
        .with_context(|| format!("reading {size}"))?
        .trim()
        .parse()
        .with_context(|| format!("{size} is not a number of sectors"))?;
    let name = format!("guard-selftest-remap-{}", std::process::id());
    let params = format!("{major}:{minor} 0");
    let target = device_mapper::Target {
        sectors,
        target: "linear",
        params: &params,
    };
    let what = format!("load a linear table over {}", device.display());
    match device_mapper::create(&name, "", &target) {
        Ok(node) => {
            let removed = device_mapper::remove(&name).is_ok();
            Ok(Attempt::not_blocked(format!(
                "{what}: mapped as {} (removed: {removed})",
                node.display()
            )))
        }
        Err(e) => match e.root_cause().downcast_ref::<std::io::Error>() {
            Some(io) if refused_by_policy(io.raw_os_error().unwrap_or(0)) => Ok(refused(&what, io)),
            _ => Err(e.context(what)),
        },
    }
}

/// Writing the device would change the protected files beneath the guard;
/// opening it for writing is enough to show whether that is possible.
fn raw_device_write(t: &Target) -> Result<Attempt> {
    let device = t.device.as_ref().context("needs --device")?;
    match std::fs::OpenOptions::new().write(true).open(device) {
        Ok(_) => Ok(Attempt::not_blocked(format!(
            "{} opened for writing",
            device.display()
        ))),
        Err(e) => Ok(refused(
            &format!("open {} for writing", device.display()),
            &e,
        )),
    }
}

fn read_kernel_file(path: &str) -> Attempt {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return refused(&format!("open {path}"), &e),
    };
    let mut buf = vec![0u8; 4096];
    match file.read(&mut buf) {
        Ok(0) => Attempt::blocked(format!("{path}: opened, read 0 bytes")),
        Ok(n) => Attempt::not_blocked(format!("{path}: opened, read {n} bytes")),
        Err(e) => refused(&format!("{path}: opened, read"), &e),
    }
}

fn kcore(_: &Target) -> Result<Attempt> {
    Ok(read_kernel_file("/proc/kcore"))
}

fn dev_mem(_: &Target) -> Result<Attempt> {
    Ok(read_kernel_file("/dev/mem"))
}

/// The device number is what the kernel goes by, not the path.
fn dev_mem_node(t: &Target) -> Result<Attempt> {
    let node = t.scratch.join("guard-selftest-mem");
    let _ = std::fs::remove_file(&node);
    let path = sys::cstring(&node)?;
    // SAFETY: valid C string.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 1)) };
    sys::check(rc as libc::c_long).with_context(|| format!("mknod {}", node.display()))?;
    let attempt = read_kernel_file(&node.to_string_lossy());
    let _ = std::fs::remove_file(&node);
    Ok(attempt)
}

/// Every procfs instance has its own /proc/kcore.
fn kcore_new_procfs(t: &Target) -> Result<Attempt> {
    let dir = t.scratch.join("guard-selftest-proc");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sys::mount(Some(Path::new("proc")), &dir, Some("proc"), 0, None)
        .with_context(|| format!("mounting procfs on {}", dir.display()))?;
    let attempt = read_kernel_file(&dir.join("kcore").to_string_lossy());
    let target = sys::cstring(&dir)?;
    // SAFETY: valid C string.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(&dir);
    Ok(attempt)
}

/// uswsusp's device hands out the hibernation image: all of memory, the
/// volume keys and the database's buffers included. Opening it is enough.
fn hibernation_image(t: &Target) -> Result<Attempt> {
    let node = t.scratch.join("guard-selftest-snapshot");
    let _ = std::fs::remove_file(&node);
    let path = sys::cstring(&node)?;
    // SAFETY: valid C string. misc 10:231 is /dev/snapshot.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 231)) };
    sys::check(rc as libc::c_long).with_context(|| format!("mknod {}", node.display()))?;
    let attempt = match std::fs::File::open(&node) {
        Ok(_) => Attempt::not_blocked("/dev/snapshot (10:231) opened for reading"),
        Err(e) => refused("open /dev/snapshot (10:231)", &e),
    };
    let _ = std::fs::remove_file(&node);
    Ok(attempt)
}

/// A uprobe event with fetch arguments copies the probed program's memory
/// into the trace buffer. tracefs is mounted anew in this row's own mount
/// namespace (there is one tracefs: the same files).
fn tracefs_uprobe(t: &Target) -> Result<Attempt> {
    sys::private_mount_namespace()?;
    let dir = t.scratch.join("guard-selftest-tracefs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sys::mount(Some(Path::new("tracefs")), &dir, Some("tracefs"), 0, None)
        .with_context(|| format!("mounting tracefs on {}", dir.display()))?;
    let events = dir.join("uprobe_events");
    let attempt = match std::fs::OpenOptions::new().append(true).open(&events) {
        Ok(_) => Attempt::not_blocked("tracefs uprobe_events opened for writing"),
        Err(e) => refused("open tracefs uprobe_events for writing", &e),
    };
    Ok(attempt)
}

/// `perf record -a --call-graph dwarf`: every sample copies the user stack
/// of whatever runs on the CPU.
fn perf_user_stack(_: &Target) -> Result<Attempt> {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_SAMPLE_IP: u64 = 1;
    const PERF_ATTR_SIZE_VER5: u32 = 112;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    // struct perf_event_attr (UAPI), as bytes: type, size, config
    // (PERF_COUNT_SW_CPU_CLOCK = 0), sample_period, sample_type, read_format,
    // flags (disabled), ..., sample_stack_user at 88.
    let mut attr = [0u8; PERF_ATTR_SIZE_VER5 as usize];
    attr[0..4].copy_from_slice(&PERF_TYPE_SOFTWARE.to_ne_bytes());
    attr[4..8].copy_from_slice(&PERF_ATTR_SIZE_VER5.to_ne_bytes());
    attr[16..24].copy_from_slice(&100_000u64.to_ne_bytes());
    let sample_type = PERF_SAMPLE_IP | guard_common::perf::SAMPLE_STACK_USER;
    attr[24..32].copy_from_slice(&sample_type.to_ne_bytes());
    attr[40..48].copy_from_slice(&1u64.to_ne_bytes());
    attr[88..92].copy_from_slice(&4096u32.to_ne_bytes());
    // SAFETY: a valid attr buffer of the size it states; pid -1, cpu 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::c_int,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if rc >= 0 {
        drop(sys::owned_fd(rc)?);
        return Ok(Attempt::not_blocked(
            "perf event sampling user stacks on CPU 0 opened",
        ));
    }
    Ok(code_load("perf_event_open", rc))
}

/// A refusal must be a policy refusal: any other error means the kernel
/// accepted the request and only the garbage content stopped it.
fn code_load(what: &str, rc: libc::c_long) -> Attempt {
    if rc == 0 {
        return Attempt::not_blocked(format!("{what}: accepted"));
    }
    let errno = last_errno();
    if refused_by_policy(errno) {
        Attempt::blocked(format!("{what}: {}", errno_name(errno)))
    } else {
        Attempt::not_blocked(format!(
            "{what}: {} (not refused by policy: the kernel went on and the content failed)",
            errno_name(errno)
        ))
    }
}

const GARBAGE: &[u8] = b"guard selftest: this is not a kernel module or a kernel image\n";

fn garbage_memfd() -> Result<std::fs::File> {
    let name = c"guard-selftest";
    // SAFETY: valid C string.
    let fd = sys::owned_fd(unsafe { libc::memfd_create(name.as_ptr(), 0) } as libc::c_long)
        .context("memfd_create")?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, &GARBAGE.repeat(64))?;
    Ok(file)
}

fn finit_module(_: &Target) -> Result<Attempt> {
    let file = garbage_memfd()?;
    let params = c"";
    // SAFETY: valid descriptor and C string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    Ok(code_load("finit_module", rc))
}

fn init_module(_: &Target) -> Result<Attempt> {
    let image = GARBAGE.repeat(64);
    let params = c"";
    // SAFETY: valid buffer and C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            params.as_ptr(),
        )
    };
    Ok(code_load("init_module", rc))
}

fn kexec_file_load(_: &Target) -> Result<Attempt> {
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 0x4;
    let file = garbage_memfd()?;
    let cmdline = c"";
    // SAFETY: valid descriptor; the command line is one NUL byte.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            file.as_raw_fd(),
            -1,
            1usize,
            cmdline.as_ptr(),
            KEXEC_FILE_NO_INITRAMFS,
        )
    };
    Ok(code_load("kexec_file_load", rc))
}

fn kexec_load(_: &Target) -> Result<Attempt> {
    // No segments and no flags: unload the loaded image (there is none).
    // SAFETY: no pointers are dereferenced with zero segments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0usize,
            0usize,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    Ok(code_load("kexec_load", rc))
}

fn bpf_kprobe(_: &Target) -> Result<Attempt> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_KPROBE: u32 = 2;
    // mov r0, 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD part: prog_type, insn_cnt, insns, license.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_KPROBE.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a bpf_attr of the size passed; insns and license outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if rc >= 0 {
        // SAFETY: closing the program fd we were given.
        unsafe { libc::close(rc as i32) };
    }
    Ok(code_load("BPF_PROG_LOAD kprobe", rc.min(0)))
}

fn ld_so(t: &Target) -> Result<Attempt> {
    let loader = sys::dynamic_loader()?;
    let exe = t.accomplice_exe.as_ref().context("needs --accomplice")?;
    let (bytes, pid, status) = sys::run_program(
        loader,
        &[
            exe.as_os_str(),
            "selftest".as_ref(),
            "dump".as_ref(),
            t.file.as_os_str(),
        ],
    )?;
    Ok(Attempt::from_bytes(bytes, &format!("ld.so ALLOWED ({status})")).with_pid(pid))
}

/// A system library every Debian has; a copy of it is a file no policy lists.
const SAMPLE_LIBRARIES: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/libz.so.1",
    "/usr/lib/aarch64-linux-gnu/libz.so.1",
];

/// Starts the allowed binary with a copy of a system library in LD_PRELOAD
/// and has it print its own memory map: code of root's choosing would run
/// inside it if the copy is mapped executable.
fn foreign_library(t: &Target) -> Result<Attempt> {
    let exe = t.accomplice_exe.as_ref().context("needs --accomplice")?;
    let sample = SAMPLE_LIBRARIES
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("no libz.so.1 to copy as the foreign library")?;
    let foreign = t
        .scratch
        .join(format!("libforeign-{}.so", std::process::id()));
    std::fs::copy(sample, &foreign)
        .with_context(|| format!("copying {sample} to {}", foreign.display()))?;
    let run = || -> std::io::Result<(u32, std::process::Output)> {
        let child = std::process::Command::new(exe)
            .args(["selftest", "dump", "/proc/self/maps"])
            .env("LD_PRELOAD", &foreign)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let pid = child.id();
        Ok((pid, child.wait_with_output()?))
    };
    let ran = run();
    let _ = std::fs::remove_file(&foreign);
    let (pid, out) = ran.with_context(|| format!("starting {}", exe.display()))?;
    let name = foreign.file_name().unwrap_or_default().to_string_lossy();
    let maps = String::from_utf8_lossy(&out.stdout);
    let executable = maps.lines().any(|line| {
        line.ends_with(name.as_ref())
            && line
                .split_whitespace()
                .nth(1)
                .is_some_and(|perms| perms.contains('x'))
    });
    let loader_said = String::from_utf8_lossy(&out.stderr);
    let loader_said = loader_said.lines().next().unwrap_or("").trim();
    let attempt = if executable {
        Attempt::not_blocked(format!("{name} mapped executable ({})", out.status))
    } else if maps.is_empty() {
        Attempt::not_blocked(format!(
            "no memory map printed ({}): {loader_said}",
            out.status
        ))
    } else {
        Attempt::blocked(format!("not mapped; ld.so: {loader_said}"))
    };
    Ok(attempt.with_pid(pid))
}

/// Reads the whole device with O_DIRECT (what is on the disk, not a cached
/// view) and looks for every marker.
fn raw_device(t: &Target) -> Result<Attempt> {
    let device = t.device.as_ref().context("needs --device")?;
    // SAFETY: sync(2) takes no arguments; it puts the latest writes on the disk.
    unsafe { libc::sync() };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
    {
        Ok(f) => f,
        Err(e) => return Ok(refused(&format!("open {}", device.display()), &e)),
    };
    let markers: Vec<&[u8]> = t.markers.iter().map(|m| m.as_bytes()).collect();
    let overlap = markers.iter().map(|m| m.len()).max().unwrap_or(1) - 1;
    let chunk = 1 << 20;
    let mut buffer = AlignedBuffer::new(chunk)?;
    let mut carry: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let n = match file.read(buffer.as_mut()) {
            Ok(n) => n,
            Err(e) => return Err(e).with_context(|| format!("reading {}", device.display())),
        };
        if n == 0 {
            break;
        }
        total += n as u64;
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buffer.as_mut()[..n]);
        for (marker, text) in markers.iter().zip(&t.markers) {
            if let Some(at) = memchr::memmem::find(&window, marker) {
                let offset = total - window.len() as u64 + at as u64;
                return Ok(Attempt::not_blocked(format!(
                    "{text:?} found at byte {offset} of {}",
                    device.display()
                )));
            }
        }
        carry = window[window.len().saturating_sub(overlap)..].to_vec();
    }
    Ok(Attempt::blocked(format!(
        "read all {total} bytes of {}: no marker",
        device.display()
    )))
}

/// A page-aligned buffer, as O_DIRECT reads need.
struct AlignedBuffer {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuffer {
    fn new(len: usize) -> Result<AlignedBuffer> {
        let layout = std::alloc::Layout::from_size_align(len, 4096)?;
        // SAFETY: a non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            anyhow::bail!("out of memory for a {len} byte buffer");
        }
        Ok(AlignedBuffer { ptr, layout })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in new().
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}
