//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks to build and test
//! guard, and does nothing slow when everything is already there (no `apt-get update`
//! unless a package or kernel is missing). Every other command runs it first.

use std::env;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::command;
use crate::kernels::{self, Available, Kernel, KernelChoice, Series};

/// One apt package and the release it must come from (`None`: the default release).
struct AptPackage {
    name: &'static str,
    release: Option<&'static str>,
}

/// A package from the default release (bookworm and its updates).
const fn apt(name: &'static str) -> AptPackage {
    AptPackage {
        name,
        release: None,
    }
}

/// A package that must come from bookworm-backports.
const fn backports(name: &'static str) -> AptPackage {
    AptPackage {
        name,
        release: Some(BACKPORTS),
    }
}

/// Every apt package the build, the host tests and the guests need, in one place.
/// The guest runs the host's own programs (its root is the host's root, shared read-only),
/// so programs tests start inside the guest belong here too.
const APT_PACKAGES: &[AptPackage] = &[
    // The stable qemu-system-x86 conflicts with the qemu-utils from backports that
    // these machines have installed.
    backports("qemu-system-x86"),
    // Guest boot: busybox is the initramfs, cpio packs it, kmod resolves and loads
    // the guest kernel's modules, xz unpacks compressed ones.
    apt("busybox-static"),
    apt("cpio"),
    apt("kmod"),
    apt("xz-utils"),
    apt("util-linux"),
    apt("iproute2"),
    // Building: clang/llvm for eBPF C shims, bpftool to inspect objects; libseccomp
    // and libcap-ng for building virtiofsd.
    apt("clang"),
    apt("llvm"),
    apt("bpftool"),
    apt("libseccomp-dev"),
    apt("libcap-ng-dev"),
    // Programs the tests use, on the host and in the guests.
    apt("e2fsprogs"),
    // btrfs, whose inode numbers repeat across subvolumes: policies on it are refused.
    apt("btrfs-progs"),
    // XFS, whose handle ioctls change extended attributes past the inode hooks.
    apt("xfsprogs"),
    apt("systemd"),
    apt("cryptsetup-bin"),
    apt("strace"),
    // The audit trail's syslog destination is tested against a real rsyslog.
    apt("rsyslog"),
    apt("rsyslog-gnutls"),
    apt("openssl"),
    // The KMIP client is tested against PyKMIP's real server.
    apt("python3-pykmip"),
    // The MariaDB scenario (tests/tests/mariadb.rs, the demo, `bench mariadb`) runs
    // Debian's own server, clients, backup tool and sysbench inside the guests.
    // Installing the server must not start one on the host: see `NoServiceStarts`.
    apt("mariadb-server"),
    apt("mariadb-client"),
    apt("mariadb-backup"),
    apt("sysbench"),
    // The kernel's NFS server (its tools, and the client's mount.nfs), for the
    // guest test that it cannot serve protected files (tests/tests/file_servers.rs).
    apt("nfs-kernel-server"),
];

const BACKPORTS: &str = "bookworm-backports";
const BACKPORTS_SOURCE: &str = "deb http://deb.debian.org/debian bookworm-backports main";

/// Versions of the tools built from crates.io, pinned so a new release cannot break CI.
const BPF_LINKER: &str = "bpf-linker@0.13.0";
const VIRTIOFSD: &str = "virtiofsd@1.14.0";

/// Directories the guest mounts over. The guest's root is the host's root, read-only,
/// so a mount point the host lacks cannot be created inside the guest.
const GUEST_MOUNTPOINTS: &[&str] = &["/lib/modules", "/scratch"];

/// What setup made sure of, for the commands that follow it.
pub struct Installed {
    pub kernels: Vec<Kernel>,
}

impl Installed {
    pub fn kernels(&self, choice: KernelChoice) -> Vec<&Kernel> {
        self.kernels
            .iter()
            .filter(|kernel| choice.includes(kernel.series))
            .collect()
    }
}

pub fn run() -> Result<Installed> {
    let started = Instant::now();
    let cache = cache_dir()?;
    let cargo_bin = cargo_bin_dir()?;
    put_on_path(&cargo_bin)?;

    let mut apt = Apt::default();
    if add_backports_source()? {
        apt.update()?;
    }
    install_missing_packages(&mut apt)?;
    create_guest_mountpoints()?;
    add_rust_src()?;
    install_bpf_linker(&cargo_bin, &cache)?;
    install_virtiofsd(&cargo_bin)?;
    let kernels = fetch_kernels(&mut apt, &cache.join("kernels"))?;

    eprintln!(
        "xtask: setup complete ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(Installed { kernels })
}

/// `~/.cache/guard` (or `$XDG_CACHE_HOME/guard`): the guest kernels and bpf-linker's LLVM prefix.
fn cache_dir() -> Result<PathBuf> {
    let base = match env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home_dir()?.join(".cache"),
    };
    let dir = base.join("guard");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn home_dir() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn cargo_bin_dir() -> Result<PathBuf> {
    let cargo_home = match env::var_os("CARGO_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home_dir()?.join(".cargo"),
    };
    Ok(cargo_home.join("bin"))
}

/// Tools installed with `cargo install` (bpf-linker, virtiofsd) must be found by the
/// programs xtask starts, whether or not the caller's PATH has ~/.cargo/bin.
fn put_on_path(dir: &Path) -> Result<()> {
    let current = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&current).any(|entry| entry == dir) {
        return Ok(());
    }
    let joined =
        env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&current)))
            .context("cannot add the cargo bin directory to PATH")?;
    // Single-threaded at this point: nothing else reads the environment concurrently.
    env::set_var("PATH", joined);
    Ok(())
}

/// Runs `apt-get update` at most once per setup, and only when something is missing.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            command::run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    fn install(&mut self, release: Option<&str>, names: &[&str]) -> Result<()> {
        self.update()?;
        // Packages such as mariadb-server start their service from postinst; the
        // packages are there for the guests, so nothing may start on the host.
        let _no_starts = NoServiceStarts::install(Path::new(POLICY_RC_D))?;
        let mut apt_get = Command::new("apt-get");
        apt_get.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
        ]);
        if let Some(release) = release {
            apt_get.args(["-t", release]);
        }
        command::run(apt_get.args(names))
    }
}

/// Debian's hook asked before a package's maintainer scripts start a service
/// (invoke-rc.d, deb-systemd-invoke); exit status 101 means "not allowed".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const DENY_ALL_STARTS: &str =
    "#!/bin/sh\n# Written by `cargo xtask setup` for the length of one apt-get install.\nexit 101\n";

/// While alive, no package's maintainer scripts may start a service. Writes
/// policy-rc.d only when the machine has none, and removes only what it wrote, so a
/// machine's own policy (Docker images ship one) is left as it was.
struct NoServiceStarts {
    written: Option<PathBuf>,
}

impl NoServiceStarts {
    fn install(path: &Path) -> Result<NoServiceStarts> {
        if path.exists() {
            return Ok(NoServiceStarts { written: None });
        }
        write_executable(path, DENY_ALL_STARTS)?;
        Ok(NoServiceStarts {
            written: Some(path.to_path_buf()),
        })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.written {
            if let Err(error) = fs::remove_file(path) {
                eprintln!(
                    "xtask: warning: cannot remove {} ({error}); remove it by hand",
                    path.display()
                );
            }
        }
    }
}

fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents)
        .with_context(|| format!("cannot write {} (setup must run as root)", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// Adds bookworm-backports to apt's sources unless some source already names it.
/// Returns whether it was added (apt's lists then need an update).
fn add_backports_source() -> Result<bool> {
    if apt_sources()?.iter().any(|text| names_backports(text)) {
        return Ok(false);
    }
    let file = Path::new("/etc/apt/sources.list.d/bookworm-backports.list");
    eprintln!("xtask: adding `{BACKPORTS_SOURCE}` to {}", file.display());
    fs::write(file, format!("{BACKPORTS_SOURCE}\n"))
        .with_context(|| format!("cannot write {} (setup must run as root)", file.display()))?;
    Ok(true)
}

fn apt_sources() -> Result<Vec<String>> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|ext| ext == "list" || ext == "sources")
            {
                files.push(path);
            }
        }
    }
    Ok(files
        .iter()
        .filter_map(|file| fs::read_to_string(file).ok())
        .collect())
}

/// Whether a sources file (one-line `.list` or deb822 `.sources`) enables bookworm-backports.
fn names_backports(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .any(|line| line.split_whitespace().any(|word| word == BACKPORTS))
}

fn install_missing_packages(apt: &mut Apt) -> Result<()> {
    let installed = installed_packages()?;
    let missing: Vec<&AptPackage> = APT_PACKAGES
        .iter()
        .filter(|package| !installed.iter().any(|name| name == package.name))
        .collect();
    let mut releases: Vec<Option<&str>> = missing.iter().map(|package| package.release).collect();
    releases.sort();
    releases.dedup();
    for release in releases {
        let names: Vec<&str> = missing
            .iter()
            .filter(|package| package.release == release)
            .map(|package| package.name)
            .collect();
        apt.install(release, &names)?;
    }
    Ok(())
}

/// The names among APT_PACKAGES that dpkg reports as installed.
fn installed_packages() -> Result<Vec<String>> {
    // dpkg-query exits non-zero when it knows nothing of a package; the packages it
    // does know are still printed, so the exit status is not checked.
    let output = Command::new("dpkg-query")
        .arg("--show")
        .arg("--showformat=${Package} ${db:Status-Status}\n")
        .args(APT_PACKAGES.iter().map(|package| package.name))
        .output()
        .context("cannot run dpkg-query")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| *status == "installed")
        .map(|(name, _)| name.to_owned())
        .collect())
}

fn create_guest_mountpoints() -> Result<()> {
    for dir in GUEST_MOUNTPOINTS {
        if !Path::new(dir).is_dir() {
            eprintln!("xtask: creating {dir} (a mount point for the guests)");
            fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
        }
    }
    Ok(())
}

fn add_rust_src() -> Result<()> {
    if !command::succeeds(Command::new("rustc").args(["+nightly", "--version"])) {
        command::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = command::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        command::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker has no prebuilt download here: build it against the nightly's own LLVM.
fn install_bpf_linker(cargo_bin: &Path, cache: &Path) -> Result<()> {
    if command::succeeds(Command::new(cargo_bin.join("bpf-linker")).arg("--version")) {
        return Ok(());
    }
    let sysroot = PathBuf::from(
        command::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let llvm_major = nightly_llvm_major()?;
    let prefix = cache.join("llvm-prefix");
    link_nightly_llvm(&sysroot.join("lib"), &prefix.join("lib"))?;
    command::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--force",
                BPF_LINKER,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}")),
    )
}

/// The LLVM major version of the nightly toolchain, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> Result<u32> {
    let version = command::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    parse_llvm_major(&version)
        .with_context(|| format!("no `LLVM version: N.…` line in `rustc +nightly -vV`:\n{version}"))
}

fn parse_llvm_major(rustc_version: &str) -> Option<u32> {
    let version = rustc_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// Makes `prefix_lib` hold `libLLVM.so` and a same-named link, both to the nightly's real
/// `libLLVM.so.*` (not the tiny `libLLVM-NN-rust-*.so` linker script next to it).
/// bpf-linker keeps `prefix_lib` as its runpath, so these links must stay.
fn link_nightly_llvm(sysroot_lib: &Path, prefix_lib: &Path) -> Result<()> {
    let library = fs::read_dir(sysroot_lib)
        .with_context(|| format!("cannot read {}", sysroot_lib.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let file_name = library.file_name().expect("found by its file name");
    fs::create_dir_all(prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        symlink(&library, &link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(())
}

fn install_virtiofsd(cargo_bin: &Path) -> Result<()> {
    if command::succeeds(Command::new(cargo_bin.join("virtiofsd")).arg("--version")) {
        return Ok(());
    }
    command::run(Command::new("cargo").args(["install", "--locked", VIRTIOFSD]))
}

fn fetch_kernels(apt: &mut Apt, cache: &Path) -> Result<Vec<Kernel>> {
    fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let mut available = Available::from_apt()?;
    let mut fetched = Vec::new();
    for series in Series::ALL {
        fetched.push(fetch_kernel(apt, &mut available, series, cache)?);
    }
    Ok(fetched)
}

/// Fetches the series' current kernel; when apt's lists name none, or a package the
/// mirror no longer has, updates the lists once and tries again.
fn fetch_kernel(
    apt: &mut Apt,
    available: &mut Available,
    series: Series,
    cache: &Path,
) -> Result<Kernel> {
    let first_try = match available.kernel(series, cache) {
        Some(kernel) => kernels::fetch(&kernel, cache).map(|()| kernel),
        None => Err(anyhow::anyhow!(
            "apt knows no {} cloud kernel package",
            series.label()
        )),
    };
    match first_try {
        Ok(kernel) => Ok(kernel),
        Err(error) if !apt.updated => {
            eprintln!("xtask: {error:#}; updating apt's package lists and retrying");
            apt.update()?;
            *available = Available::from_apt()?;
            let Some(kernel) = available.kernel(series, cache) else {
                bail!(
                    "apt knows no {} cloud kernel package, even after apt-get update",
                    series.label()
                );
            };
            kernels::fetch(&kernel, cache)?;
            Ok(kernel)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_llvm_version_line() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(text), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.97.0-nightly\n"), None);
    }

    #[test]
    fn backports_source_is_recognised_in_both_formats_but_not_in_comments() {
        assert!(names_backports(
            "deb http://deb.debian.org/debian bookworm-backports main\n"
        ));
        assert!(names_backports(
            "Types: deb\nSuites: bookworm-backports\nComponents: main\n"
        ));
        assert!(!names_backports(
            "# deb http://deb.debian.org/debian bookworm-backports main\n"
        ));
        assert!(!names_backports("Suites: bookworm bookworm-updates\n"));
    }

    #[test]
    fn service_starts_are_denied_while_installing_and_an_existing_policy_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy-rc.d");
        {
            let _guard = NoServiceStarts::install(&path).unwrap();
            let status = Command::new(&path).status().unwrap();
            assert_eq!(status.code(), Some(101));
        }
        assert!(!path.exists(), "the temporary policy-rc.d was left behind");

        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        drop(NoServiceStarts::install(&path).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n");
    }

    #[test]
    fn every_package_is_listed_once() {
        for (index, package) in APT_PACKAGES.iter().enumerate() {
            assert!(
                APT_PACKAGES[index + 1..]
                    .iter()
                    .all(|other| other.name != package.name),
                "{} is listed twice",
                package.name
            );
        }
    }
}
