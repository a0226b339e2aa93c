//! The Debian kernels the guests boot: Debian 12's own 6.1 cloud kernel and the
//! 6.12 cloud kernel from bookworm-backports, each the one the `linux-image-cloud-amd64`
//! metapackage of that suite depends on. They are fetched with `apt-get download`
//! and unpacked with `dpkg-deb -x` (never installed) into
//! `~/.cache/guard/kernels/<package>/`, with `depmod` run there so the guest's
//! `modprobe` finds their modules.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::command;

/// The `--kernel` argument of the VM commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    #[value(name = "6.1")]
    Debian12,
    #[value(name = "6.12")]
    Backports,
    All,
}

impl KernelChoice {
    pub fn includes(self, series: Series) -> bool {
        match self {
            KernelChoice::Debian12 => series == Series::Debian12,
            KernelChoice::Backports => series == Series::Backports,
            KernelChoice::All => true,
        }
    }
}

/// A line of Debian kernel packages; the newest package of each line is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// `linux-image-6.1.0-<abi>-cloud-amd64`, Debian 12's own kernel.
    Debian12,
    /// `linux-image-6.12.<patch>+deb12[.<n>]-cloud-amd64`, from bookworm-backports.
    /// (bookworm-security carries 6.12 builds too; the backports one is what a
    /// bookworm machine gets from `apt-get install -t bookworm-backports linux-image-cloud-amd64`.)
    Backports,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::Debian12, Series::Backports];

    /// The short name used on the command line, in logs and in `GUARD_VM_KERNEL`.
    pub fn label(self) -> &'static str {
        match self {
            Series::Debian12 => "6.1",
            Series::Backports => "6.12",
        }
    }

    /// If `package` belongs to this series, a key that orders packages oldest to newest.
    fn version_key(self, package: &str) -> Option<Vec<u64>> {
        let (prefix, suffix) = match self {
            Series::Debian12 => ("linux-image-6.1.0-", "-cloud-amd64"),
            Series::Backports => ("linux-image-6.12.", "-cloud-amd64"),
        };
        let middle = package.strip_prefix(prefix)?.strip_suffix(suffix)?;
        match self {
            // "57" in linux-image-6.1.0-57-cloud-amd64: the ABI number.
            Series::Debian12 => Some(vec![parse_number(middle)?]),
            // "95+deb12" or "90+deb12.1": the patch level, then the rebuild number.
            Series::Backports => {
                let (patch, rebuild) = middle.split_once("+deb12")?;
                let rebuild = match rebuild {
                    "" => 0,
                    dotted => parse_number(dotted.strip_prefix('.')?)?,
                };
                Some(vec![parse_number(patch)?, rebuild])
            }
        }
    }

    /// Whether a version of the `linux-image-cloud-amd64` metapackage is this series' suite's.
    fn owns_metapackage_version(self, version: &str) -> bool {
        let from_backports = version.contains("~bpo");
        match self {
            Series::Debian12 => !from_backports,
            Series::Backports => from_backports,
        }
    }

    /// The newest package of this series that a version of the metapackage depends on,
    /// given `apt-cache show linux-image-cloud-amd64`.
    fn newest_in(self, metapackage_stanzas: &str) -> Option<String> {
        metapackage_stanzas
            .split("\n\n")
            .filter(|stanza| {
                field(stanza, "Version")
                    .is_some_and(|version| self.owns_metapackage_version(version))
            })
            .filter_map(|stanza| field(stanza, "Depends"))
            .flat_map(|depends| depends.split([',', '|']))
            .filter_map(|dependency| dependency.split_whitespace().next())
            .filter_map(|name| Some((self.version_key(name)?, name)))
            .max()
            .map(|(_, name)| name.to_owned())
    }
}

/// The value of `name:` in one stanza of apt-cache's output.
fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An unpacked kernel package ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub series: Series,
    /// The package name, e.g. `linux-image-6.12.95+deb12-cloud-amd64`.
    pub package: String,
    /// What `uname -r` prints in the guest, e.g. `6.12.95+deb12-cloud-amd64`.
    pub release: String,
    /// The unpacked package.
    pub dir: PathBuf,
}

impl Kernel {
    pub fn label(&self) -> &'static str {
        self.series.label()
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.release))
    }

    /// The directory the guest bind-mounts over `/lib/modules`.
    pub fn modules_root(&self) -> PathBuf {
        self.dir.join("lib/modules")
    }

    fn new(series: Series, package: &str, cache: &Path) -> Kernel {
        let release = package
            .strip_prefix("linux-image-")
            .expect("series only match linux-image-* packages");
        Kernel {
            series,
            package: package.to_owned(),
            release: release.to_owned(),
            dir: cache.join(package),
        }
    }

    fn is_unpacked(&self) -> bool {
        self.dir.join(COMPLETE_MARKER).exists()
    }
}

/// Written last into an unpacked kernel directory, so an interrupted unpack is redone.
/// (The version changes whenever unpacking does something new.)
const COMPLETE_MARKER: &str = ".guard-unpacked-v2";

/// The kernel packages apt's lists offer, as the metapackage's versions name them.
pub struct Available {
    metapackage_stanzas: String,
}

impl Available {
    /// Reads apt's lists (one `apt-cache show`: it takes most of a second).
    pub fn from_apt() -> Result<Available> {
        let metapackage_stanzas =
            command::output(Command::new("apt-cache").args(["show", METAPACKAGE]))?;
        Ok(Available {
            metapackage_stanzas,
        })
    }

    /// The series' current package, or `None` if apt's lists have none
    /// (apt-get update has not seen bookworm-backports yet, for instance).
    pub fn kernel(&self, series: Series, cache: &Path) -> Option<Kernel> {
        series
            .newest_in(&self.metapackage_stanzas)
            .map(|package| Kernel::new(series, &package, cache))
    }
}

const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Downloads and unpacks the kernel unless a complete copy is already cached, and
/// removes older packages of the same series from the cache.
pub fn fetch(kernel: &Kernel, cache: &Path) -> Result<()> {
    if !kernel.is_unpacked() {
        download_and_unpack(kernel, cache)?;
    }
    remove_older(kernel, cache)
}

fn download_and_unpack(kernel: &Kernel, cache: &Path) -> Result<()> {
    let download = cache.join(format!(".download-{}", kernel.package));
    let partial = cache.join(format!(".partial-{}", kernel.package));
    for stale in [&download, &partial, &kernel.dir] {
        remove_dir_if_present(stale)?;
    }
    fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    command::run(
        Command::new("apt-get")
            .args(["download", &kernel.package])
            .current_dir(&download),
    )?;
    let deb = find_deb(&download)?;
    command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    decompress_modules(&partial)?;
    command::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&partial)
            .arg(&kernel.release),
    )?;
    let vmlinuz = partial.join(format!("boot/vmlinuz-{}", kernel.release));
    if !vmlinuz.is_file() {
        bail!("{} does not contain {}", deb.display(), vmlinuz.display());
    }
    fs::write(partial.join(COMPLETE_MARKER), &kernel.package)?;
    fs::rename(&partial, &kernel.dir).with_context(|| {
        format!(
            "cannot move {} to {}",
            partial.display(),
            kernel.dir.display()
        )
    })?;
    remove_dir_if_present(&download)
}

/// Unpacks xz-compressed modules (6.12 ships them so): decompressing in the guest
/// under TCG costs seconds per module, on the host milliseconds.
fn decompress_modules(unpacked: &Path) -> Result<()> {
    let modules = unpacked.join("lib/modules");
    command::run(Command::new("find").arg(&modules).args([
        "-name",
        "*.ko.xz",
        "-exec",
        "xz",
        "--decompress",
        "{}",
        "+",
    ]))
}

fn find_deb(dir: &Path) -> Result<PathBuf> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "deb") {
            return Ok(path);
        }
    }
    bail!("apt-get download left no .deb in {}", dir.display())
}

fn remove_older(kernel: &Kernel, cache: &Path) -> Result<()> {
    for entry in fs::read_dir(cache).with_context(|| format!("cannot read {}", cache.display()))? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name != kernel.package && kernel.series.version_key(name).is_some() {
            remove_dir_if_present(&cache.join(name))?;
        }
    }
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METAPACKAGE_STANZAS: &str = "\
Package: linux-image-cloud-amd64
Version: 6.12.95-1~bpo12+1
Depends: linux-image-6.12.95+deb12-cloud-amd64 (= 6.12.95-1~bpo12+1)

Package: linux-image-cloud-amd64
Version: 6.12.90-1~bpo12+1
Depends: linux-image-6.12.90+deb12.1-cloud-amd64 (= 6.12.90-1~bpo12+1)

Package: linux-image-cloud-amd64
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)

Package: linux-image-cloud-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-9-cloud-amd64 (= 6.1.176-1)
";

    #[test]
    fn debian12_kernel_is_the_newest_by_abi_number_not_by_text() {
        assert_eq!(
            Series::Debian12.newest_in(METAPACKAGE_STANZAS).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
    }

    #[test]
    fn backports_kernel_comes_from_a_backports_version_of_the_metapackage() {
        assert_eq!(
            Series::Backports.newest_in(METAPACKAGE_STANZAS).as_deref(),
            Some("linux-image-6.12.95+deb12-cloud-amd64")
        );
    }

    #[test]
    fn rebuilds_order_after_their_patch_level() {
        let older = Series::Backports.version_key("linux-image-6.12.90+deb12-cloud-amd64");
        let rebuild = Series::Backports.version_key("linux-image-6.12.90+deb12.1-cloud-amd64");
        assert!(rebuild > older);
        assert_eq!(
            Series::Backports.version_key("linux-image-6.12.95+deb12-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(
            Series::Debian12.version_key("linux-image-6.1.0-57-amd64"),
            None
        );
    }

    #[test]
    fn no_backports_metapackage_gives_none() {
        let stanzas = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-3\nDepends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(Series::Backports.newest_in(stanzas), None);
    }

    #[test]
    fn release_is_the_package_name_without_prefix() {
        let kernel = Kernel::new(
            Series::Backports,
            "linux-image-6.12.95+deb12-cloud-amd64",
            Path::new("/c"),
        );
        assert_eq!(kernel.release, "6.12.95+deb12-cloud-amd64");
        assert_eq!(
            kernel.vmlinuz(),
            Path::new(
                "/c/linux-image-6.12.95+deb12-cloud-amd64/boot/vmlinuz-6.12.95+deb12-cloud-amd64"
            )
        );
    }
}
