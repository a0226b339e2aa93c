//! Booting a QEMU guest with one of Debian's kernels and running a shell script in it
//! as root.
//!
//! # How the guest gets a userland, and why
//! The guest's root filesystem is the HOST's root, shared read-only over virtio-fs
//! (virtiofsd from crates.io, `--readonly --sandbox none --cache always`). Everything
//! apt installed on the host (journald, MariaDB, rsyslog, cryptsetup, PyKMIP...) and
//! the workspace's freshly built binaries are therefore in the guest without building
//! any image. Writable places are memory: tmpfs on /run, /tmp, /var/tmp, /var/log,
//! /var/lib/guard, and overlays on /etc, /var, /root. Executables stay on plain
//! virtio-fs (no overlay), so the (device, inode) the kernel sees for a binary is the
//! one `stat` reports, which the guard's executable identity relies on.
//! journald is started by hand (PID 1 is not systemd); udev does not run, so
//! DM_DISABLE_UDEV=1 makes libdevmapper create /dev/mapper nodes itself.
//!
//! Measured here under TCG (2 vCPUs on a 2-core host shared with other builds): the
//! kernel runs stage 2 about 2.5-4 s after QEMU starts, and the script starts 7-8 s
//! after (scratch disk formatted, journald up); a guest running the smoke tests is
//! done in about 10 s. 9p was not needed: virtio-fs works under TCG with a memfd
//! memory backend. Modules are stored decompressed in the kernel cache because the
//! guest takes seconds to unpack an xz module under TCG.
//!
//! A tiny busybox initramfs (built here per kernel, a few MB) is still needed because
//! the 6.1 cloud kernel has virtio-pci, fuse and virtiofs as modules; on 6.12 they are
//! built in and it loads nothing. It mounts the host root and switch_roots into
//! stage 2, `guest/init.sh`, which sets up the system, runs the script and reports its
//! exit status.
//!
//! # Channels
//! - ttyS0, the kernel console: written by QEMU to `target/vm/<kernel>/console.log`.
//! - ttyS1: the script's stdout and stderr, read here line by line, copied to
//!   `target/vm/<kernel>/output.log` and handed to the caller. Marker lines carrying a
//!   per-boot random nonce tell when the guest is ready and the script's exit code.
//! - A fresh 1 GiB raw disk per boot (`target/vm/<kernel>/scratch.img`), formatted in
//!   the guest as ext4 with `-O encrypt` and mounted at /scratch.
//! - A fresh, blank 64 MiB NVMe disk per boot (`target/vm/<kernel>/nvme.img`,
//!   serial `guard-nvme`): NVMe has command passthrough nodes besides its block
//!   device, which the tests of raw-device protection need.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cargo;
use crate::command::{self, repo_root};
use crate::kernels::Kernel;

const STAGE1_INIT: &str = include_str!("../guest/initramfs-init.sh");
const STAGE2_INIT: &str = include_str!("../guest/init.sh");

/// Modules (with their dependencies) the initramfs loads to mount the root.
const ROOT_MODULES: &[&str] = &["virtio_pci", "virtiofs"];
const MEMORY: &str = "2G";
const SCRATCH_BYTES: u64 = 1 << 30;
const NVME_BYTES: u64 = 64 << 20;
const VIRTIOFS_TAG: &str = "hostroot";

/// How to run a guest.
pub struct Options {
    /// The guest fails (is killed) if the script has not finished by then.
    pub timeout: Duration,
    /// The guest fails (is killed) if the script prints no line for this long: the
    /// quick way to end a hung test. libtest shows a test's output only when it ends,
    /// so this must exceed the longest test.
    pub silence_timeout: Duration,
    /// Extra environment for the script.
    pub env: Vec<(String, String)>,
    /// Run the guest's clock from its instruction count (QEMU `-icount`), so
    /// that timings inside it do not depend on load on the host: for
    /// benchmarks. The guest then has one vCPU.
    pub instruction_clock: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(20 * 60),
            silence_timeout: Duration::from_secs(10 * 60),
            env: Vec::new(),
            instruction_clock: false,
        }
    }
}

/// Boots a guest with `kernel`, runs `script` (sh) in it as root with its output
/// streamed to stdout, and returns the script's exit code.
pub fn run(kernel: &Kernel, script: &str) -> Result<i32> {
    run_with(kernel, script, &Options::default(), &mut |line| {
        println!("{line}")
    })
}

/// Like `run`, handing each line the script prints to `on_line`.
///
/// An error means the guest did not report an exit code: it failed to boot or set up,
/// crashed or timed out. The tails of its logs are printed to stderr then.
/// Environment of the script: GUARD_VM_KERNEL (`6.1` or `6.12`), GUARD_VM_KERNEL_RELEASE
/// (what `uname -r` should say), GUARD_VM_KERNEL_IMAGE (its vmlinuz), GUARD_REPO (the
/// workspace), GUARD_BIN_DIR (the release binaries), HOME=/root, plus `options.env`.
/// It starts in the workspace directory.
pub fn run_with(
    kernel: &Kernel,
    script: &str,
    options: &Options,
    on_line: &mut dyn FnMut(&str),
) -> Result<i32> {
    let files = GuestFiles::new(kernel)?;
    let result = boot_and_wait(kernel, &files, script, options, on_line);
    if result.is_err() {
        eprintln!(
            "xtask: [{}] the guest failed; the ends of its logs follow",
            kernel.label()
        );
        print_log_tails(kernel)?;
    }
    result
}

/// Prints the last lines of the guest's output and console logs to stderr.
pub fn print_log_tails(kernel: &Kernel) -> Result<()> {
    let files = GuestFiles::new(kernel)?;
    let mut block = String::new();
    for (log, lines) in [(&files.output_log, 40), (&files.console_log, 40)] {
        let text = fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        block += &format!(
            "----- last {} lines of {} -----\n",
            tail.len(),
            log.display()
        );
        for line in tail {
            block += &format!("{line}\n");
        }
    }
    block += "-----\n";
    print_block(&block);
    Ok(())
}

/// Prints to stderr what the kernel logged while the script ran (BPF and LSM
/// messages, oopses): the console log after stage 2's "running" line.
pub fn print_kernel_log_of_script(kernel: &Kernel) -> Result<()> {
    let files = GuestFiles::new(kernel)?;
    let text = fs::read_to_string(&files.console_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .rposition(|line| line.contains(SCRIPT_STARTED))
        .map_or(0, |index| index + 1);
    let shown = &lines[start.max(lines.len().saturating_sub(60))..];
    let mut block = format!(
        "----- kernel messages while the script ran ({}) -----\n",
        files.console_log.display()
    );
    for line in shown {
        block += &format!("{line}\n");
    }
    block += "-----\n";
    print_block(&block);
    Ok(())
}

/// Writes a multi-line block to stderr in one call, so the other kernel's
/// guest (running at the same time) cannot print into the middle of it.
fn print_block(block: &str) {
    eprint!("{block}");
}

/// What stage 2 logs to the console just before it starts the script.
const SCRIPT_STARTED: &str = "guard-init: running ";

/// The files of one kernel's guest, under target/vm/<kernel>/.
struct GuestFiles {
    dir: PathBuf,
    target: PathBuf,
    stage2_init: PathBuf,
    initramfs: PathBuf,
    script: PathBuf,
    scratch: PathBuf,
    nvme: PathBuf,
    console_log: PathBuf,
    output_log: PathBuf,
    virtiofsd_log: PathBuf,
    qemu_log: PathBuf,
}

impl GuestFiles {
    fn new(kernel: &Kernel) -> Result<GuestFiles> {
        let target = cargo::target_dir()?;
        let dir = target.join("vm").join(kernel.label());
        Ok(GuestFiles {
            stage2_init: dir.join("init.sh"),
            initramfs: dir.join("initramfs.cpio"),
            script: dir.join("run.sh"),
            scratch: dir.join("scratch.img"),
            nvme: dir.join("nvme.img"),
            console_log: dir.join("console.log"),
            output_log: dir.join("output.log"),
            virtiofsd_log: dir.join("virtiofsd.log"),
            qemu_log: dir.join("qemu.log"),
            dir,
            target,
        })
    }
}

fn boot_and_wait(
    kernel: &Kernel,
    files: &GuestFiles,
    script: &str,
    options: &Options,
    on_line: &mut dyn FnMut(&str),
) -> Result<i32> {
    prepare(kernel, files, script, options)?;
    let nonce = random_nonce()?;
    let socket_dir = tempfile::Builder::new()
        .prefix("guard-vm-")
        .tempdir()
        .context("cannot create a directory for virtiofsd's socket")?;
    let socket = socket_dir.path().join("virtiofsd.sock");
    let started = Instant::now();
    let _virtiofsd = start_virtiofsd(&socket, &files.virtiofsd_log)?;
    let qemu = start_qemu(
        kernel,
        files,
        &socket,
        &kernel_command_line(kernel, files, &nonce)?,
        options,
    )?;
    let code = watch(kernel, qemu, files, &nonce, started, options, on_line)?;
    eprintln!(
        "xtask: [{}] guest finished in {:.1} s, script exit code {code}",
        kernel.label(),
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}

/// Writes everything the guest reads: stage 2, the script, the initramfs, fresh
/// scratch and NVMe disks, and empties the logs.
fn prepare(kernel: &Kernel, files: &GuestFiles, script: &str, options: &Options) -> Result<()> {
    fs::create_dir_all(&files.dir)
        .with_context(|| format!("cannot create {}", files.dir.display()))?;
    write_file(&files.stage2_init, STAGE2_INIT, 0o755)?;
    write_file(
        &files.script,
        &script_with_environment(kernel, files, script, options)?,
        0o755,
    )?;
    build_initramfs(kernel, files)?;
    for (disk, bytes) in [(&files.scratch, SCRATCH_BYTES), (&files.nvme, NVME_BYTES)] {
        let _ = fs::remove_file(disk);
        File::create(disk)
            .and_then(|file| file.set_len(bytes))
            .with_context(|| format!("cannot create {}", disk.display()))?;
    }
    for log in [
        &files.console_log,
        &files.output_log,
        &files.virtiofsd_log,
        &files.qemu_log,
    ] {
        File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn script_with_environment(
    kernel: &Kernel,
    files: &GuestFiles,
    script: &str,
    options: &Options,
) -> Result<String> {
    let mut env = vec![
        ("GUARD_VM_KERNEL".to_owned(), kernel.label().to_owned()),
        ("GUARD_VM_KERNEL_RELEASE".to_owned(), kernel.release.clone()),
        (
            "GUARD_VM_KERNEL_IMAGE".to_owned(),
            path_str(&kernel.vmlinuz())?.to_owned(),
        ),
        ("GUARD_REPO".to_owned(), path_str(&repo_root())?.to_owned()),
        (
            "GUARD_BIN_DIR".to_owned(),
            path_str(&files.target.join("release"))?.to_owned(),
        ),
    ];
    env.extend(options.env.iter().cloned());
    let mut text = String::from("# Written by xtask (src/vm.rs) for one guest boot.\n");
    for (key, value) in &env {
        text.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    // Relative paths in scripts mean the same as on the host.
    text.push_str("cd \"$GUARD_REPO\" || exit 125\n");
    text.push_str(script);
    text.push('\n');
    Ok(text)
}

/// Quotes a value for sh: single quotes, with each ' written as '\''.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// Packs busybox, stage 1 and the root filesystem's modules into an uncompressed cpio.
fn build_initramfs(kernel: &Kernel, files: &GuestFiles) -> Result<()> {
    let tree = files.dir.join("initramfs");
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    for dir in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        fs::create_dir_all(tree.join(dir))
            .with_context(|| format!("cannot create {}/{dir}", tree.display()))?;
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("cannot copy /bin/busybox (busybox-static)")?;
    write_file(&tree.join("init"), STAGE1_INIT, 0o755)?;
    for (index, module) in root_modules(kernel)?.iter().enumerate() {
        copy_module(
            module,
            &tree
                .join("modules")
                .join(format!("{:02}-{}", index + 10, module_file_name(module)?)),
        )?;
    }
    command::output(
        Command::new("sh")
            .current_dir(&tree)
            .args([
                "-c",
                r#"find . | cpio --create --format=newc --owner=0:0 --quiet > "$1""#,
                "sh",
            ])
            .arg(&files.initramfs),
    )?;
    Ok(())
}

/// The module files (dependencies first, each once) that ROOT_MODULES need; empty when
/// they are built into the kernel.
fn root_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut modules: Vec<PathBuf> = Vec::new();
    for name in ROOT_MODULES {
        let plan = command::output(
            Command::new("modprobe")
                .arg("--dirname")
                .arg(&kernel.dir)
                .args(["--set-version", &kernel.release, "--show-depends", name]),
        )?;
        for path in plan.lines().filter_map(|line| line.strip_prefix("insmod ")) {
            let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
            if !modules.contains(&path) {
                modules.push(path);
            }
        }
    }
    Ok(modules)
}

/// `virtio.ko` for `.../virtio.ko` or `.../virtio.ko.xz` (compressed ones are unpacked).
fn module_file_name(module: &Path) -> Result<String> {
    let name = module
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("odd module path {}", module.display()))?;
    Ok(name.strip_suffix(".xz").unwrap_or(name).to_owned())
}

fn copy_module(module: &Path, destination: &Path) -> Result<()> {
    if module.extension().is_some_and(|ext| ext == "xz") {
        let unpacked = File::create(destination)
            .with_context(|| format!("cannot create {}", destination.display()))?;
        command::run(
            Command::new("xz")
                .arg("--decompress")
                .arg("--stdout")
                .arg(module)
                .stdout(unpacked),
        )
    } else {
        fs::copy(module, destination)
            .with_context(|| format!("cannot copy {}", module.display()))?;
        Ok(())
    }
}

/// A random word for marker lines that test output cannot forge.
pub fn random_nonce() -> Result<String> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Makes the child get SIGKILL when xtask dies (killed by CI, say), so no QEMU or
/// virtiofsd outlives it.
fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only makes one
    // async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// A child process killed when dropped, so no error path leaves a QEMU or virtiofsd behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_virtiofsd(socket: &Path, log: &Path) -> Result<KillOnDrop> {
    let log_file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut virtiofsd = Command::new("virtiofsd");
    virtiofsd
        .args(["--shared-dir", "/", "--readonly", "--cache", "always"])
        // The share is read-only and serves only our own test guest; the namespace
        // sandbox adds nothing here and needs privileges some hosts withhold.
        .args(["--sandbox", "none"])
        .arg("--socket-path")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let mut child = KillOnDrop(
        die_with_parent(&mut virtiofsd)
            .spawn()
            .with_context(|| format!("cannot start `{}`", command::describe(&virtiofsd)))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(status) = child.0.try_wait()? {
            bail!(
                "virtiofsd exited ({status}) before creating its socket; see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "virtiofsd did not create {} within 10 s; see {}",
                socket.display(),
                log.display()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn kernel_command_line(kernel: &Kernel, files: &GuestFiles, nonce: &str) -> Result<String> {
    let mut keep = vec![path_str(&repo_root())?.to_owned()];
    let target = path_str(&files.target)?.to_owned();
    if !target.starts_with(&format!("{}/", keep[0])) {
        keep.push(target);
    }
    let words = [
        "console=ttyS0".to_owned(),
        // A kernel panic reboots, which ends QEMU (-no-reboot) instead of hanging.
        "panic=-1".to_owned(),
        // Room for a crash kernel, so that tests can load one as kdump would.
        "crashkernel=64M".to_owned(),
        format!("guard_init={}", path_str(&files.stage2_init)?),
        format!("guard_run={}", path_str(&files.script)?),
        format!("guard_nonce={nonce}"),
        format!("guard_modules={}", path_str(&kernel.modules_root())?),
        format!("guard_keep={}", keep.join(":")),
    ];
    for word in &words {
        if word.contains(char::is_whitespace) || word.contains('"') {
            bail!("the guest's kernel command line cannot hold `{word}`: move the workspace to a path without spaces");
        }
    }
    Ok(words.join(" "))
}

/// QEMU option values separate fields with commas; a literal comma is written twice.
fn qemu_path(path: &Path) -> Result<String> {
    Ok(path_str(path)?.replace(',', ",,"))
}

fn start_qemu(
    kernel: &Kernel,
    files: &GuestFiles,
    socket: &Path,
    command_line: &str,
    options: &Options,
) -> Result<KillOnDrop> {
    let qemu_log = File::create(&files.qemu_log)
        .with_context(|| format!("cannot create {}", files.qemu_log.display()))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-name", &format!("guard-{}", kernel.label())])
        // /dev/kvm exists on these machines but guests crash under it: emulate.
        .args(["-accel", "tcg", "-cpu", "max", "-m", MEMORY])
        .args(if options.instruction_clock {
            // 1 ns of guest time per instruction; idle time passes as on the
            // host. One vCPU: the clock counts every vCPU's instructions, so
            // a second one would charge its work to the measured thread.
            &["-smp", "1", "-icount", "shift=0,sleep=on"][..]
        } else {
            &["-smp", "2"][..]
        })
        // vhost-user (virtiofsd) needs the guest's memory shared with it.
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY},share=on"),
        ])
        .args(["-numa", "node,memdev=mem"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(&files.initramfs)
        .args(["-append", command_line])
        .args([
            "-chardev",
            &format!("socket,id=hostroot,path={}", qemu_path(socket)?),
        ])
        .args([
            "-device",
            &format!("vhost-user-fs-pci,chardev=hostroot,tag={VIRTIOFS_TAG}"),
        ])
        .args([
            "-drive",
            &format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                qemu_path(&files.scratch)?
            ),
        ])
        .args([
            "-drive",
            &format!(
                "file={},format=raw,if=none,id=nvme,cache=unsafe",
                qemu_path(&files.nvme)?
            ),
        ])
        .args(["-device", "nvme,serial=guard-nvme,drive=nvme"])
        .args([
            "-serial",
            &format!("file:{}", qemu_path(&files.console_log)?),
        ])
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(qemu_log);
    let child = die_with_parent(&mut qemu)
        .spawn()
        .with_context(|| format!("cannot start `{}`", command::describe(&qemu)))?;
    Ok(KillOnDrop(child))
}

/// A line of the guest's ttyS1 that xtask itself acts on.
#[derive(Debug, PartialEq)]
enum Marker {
    Ready { uptime: String },
    Exit { code: i32 },
    SetupFailed { reason: String },
}

fn parse_marker(line: &str, nonce: &str) -> Option<Marker> {
    let (word, rest) = line.split_once(' ')?;
    let rest = rest.strip_prefix(nonce)?.strip_prefix(' ')?;
    match word {
        "GUARD-VM-READY" => Some(Marker::Ready {
            uptime: rest.to_owned(),
        }),
        "GUARD-VM-EXIT" => rest.trim().parse().ok().map(|code| Marker::Exit { code }),
        "GUARD-VM-SETUP-FAILED" => Some(Marker::SetupFailed {
            reason: rest.to_owned(),
        }),
        _ => None,
    }
}

/// Follows the guest's output until it reports an exit code, stops, or times out.
fn watch(
    kernel: &Kernel,
    mut qemu: KillOnDrop,
    files: &GuestFiles,
    nonce: &str,
    started: Instant,
    options: &Options,
    on_line: &mut dyn FnMut(&str),
) -> Result<i32> {
    let stdout = qemu.0.stdout.take().expect("QEMU's stdout is piped");
    let lines = spawn_line_reader(stdout);
    let mut output_log = File::create(&files.output_log)
        .with_context(|| format!("cannot create {}", files.output_log.display()))?;
    let deadline = started + options.timeout;
    let mut exit_code = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(remaining.min(options.silence_timeout)) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                let why = if remaining <= options.silence_timeout {
                    format!("did not finish within {} s", options.timeout.as_secs())
                } else {
                    format!(
                        "printed nothing for {} s (hung?)",
                        options.silence_timeout.as_secs()
                    )
                };
                qemu.0.kill().context("cannot kill QEMU")?;
                // What the guest printed last (a test's name, say) tells where it hung.
                while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
                    writeln!(output_log, "{line}")?;
                    on_line(&line);
                }
                bail!("the guest {why} and was killed");
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        writeln!(output_log, "{line}")
            .with_context(|| format!("cannot write {}", files.output_log.display()))?;
        match parse_marker(&line, nonce) {
            Some(Marker::Ready { uptime }) => eprintln!(
                "xtask: [{}] guest ready after {:.1} s (guest uptime {uptime} s)",
                kernel.label(),
                started.elapsed().as_secs_f64()
            ),
            Some(Marker::Exit { code }) => exit_code = Some(code),
            Some(Marker::SetupFailed { reason }) => bail!("the guest failed to set up: {reason}"),
            None => on_line(&line),
        }
    }
    let status = wait_until(&mut qemu.0, Instant::now() + Duration::from_secs(30))?;
    match exit_code {
        Some(code) => Ok(code),
        None => bail!(
            "the guest stopped without reporting an exit code (QEMU: {}); see {} and {}",
            status.map_or("still running".to_owned(), |status| status.to_string()),
            files.console_log.display(),
            files.qemu_log.display()
        ),
    }
}

/// Reads lines (without line endings; the guest's tty sends \r\n) on a thread.
fn spawn_line_reader(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    if sender
                        .send(line.trim_end_matches(['\n', '\r']).to_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    receiver
}

fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_need_the_nonce() {
        assert_eq!(
            parse_marker("GUARD-VM-EXIT abc 3", "abc"),
            Some(Marker::Exit { code: 3 })
        );
        assert_eq!(parse_marker("GUARD-VM-EXIT abd 0", "abc"), None);
        assert_eq!(parse_marker("GUARD-VM-EXIT abcd 0", "abc"), None);
        assert_eq!(parse_marker("GUARD-VM-EXIT abc", "abc"), None);
        assert_eq!(parse_marker("GUARD-VM-EXIT abc x", "abc"), None);
        assert_eq!(
            parse_marker("GUARD-VM-SETUP-FAILED abc mount /scratch", "abc"),
            Some(Marker::SetupFailed {
                reason: "mount /scratch".to_owned()
            })
        );
        assert_eq!(parse_marker("test foo ... ok", "abc"), None);
    }

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn compressed_modules_are_named_without_xz() {
        assert_eq!(
            module_file_name(Path::new("/k/virtio_blk.ko.xz")).unwrap(),
            "virtio_blk.ko"
        );
        assert_eq!(
            module_file_name(Path::new("/k/fuse.ko")).unwrap(),
            "fuse.ko"
        );
    }
}
