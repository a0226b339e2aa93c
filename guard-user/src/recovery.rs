//! Proof that the bytes on disk are encrypted, and disaster recovery, both
//! without the kernel: read the raw blocks beneath a volume, derive the
//! per-file keys exactly as the kernel does (HKDF-SHA512, fscrypt v2), and
//! decrypt names (AES-256-CTS) and contents (AES-256-XTS) in userspace.
//!
//! - `verify-encryption`: decrypted contents must equal what the kernel shows
//!   through the unlocked volume, and given plaintext markers must appear
//!   nowhere in the raw bytes.
//! - `recover`: extract a volume's files from an unmounted image with the
//!   key from the KMS.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::fscrypt::{self, ContextV2, KeyIdentifier};
use crate::keyring::SecretKey;
use crate::volume::{fetch_volume_key, KeysOptions, VolumeKind, VolumeRecord};

pub mod ext4;
pub mod xts;

use ext4::{Ext4, Inode, ROOT_INODE};

/// A file, directory or symlink found in an encrypted tree.
#[derive(Debug)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

/// One decrypted entry with its metadata.
#[derive(Debug)]
pub struct Decrypted {
    /// Path relative to the volume's directory.
    pub path: PathBuf,
    pub entry: Entry,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Reads an fscrypt volume out of a raw ext4 image.
pub struct VolumeReader<'a> {
    fs: Ext4,
    master: &'a SecretKey,
    identifier: KeyIdentifier,
    /// CPU time this thread spent in AES-XTS decryption of contents (for
    /// throughput figures; CPU time, like `openssl speed`, so that other load
    /// on the machine does not distort the comparison).
    pub decrypt_time: Duration,
    pub decrypted_bytes: u64,
}

impl<'a> VolumeReader<'a> {
    pub fn open(image: &Path, master: &'a SecretKey) -> Result<Self> {
        let fs = Ext4::open(image)?;
        if !fs.has_encrypt_feature() {
            bail!(
                "{}: this ext4 filesystem has no encrypt feature, so it holds no fscrypt volume",
                image.display()
            );
        }
        let identifier = fscrypt::key_identifier(master)?;
        Ok(Self {
            fs,
            master,
            identifier,
            decrypt_time: Duration::ZERO,
            decrypted_bytes: 0,
        })
    }

    /// Finds the encryption root for this key: an encrypted directory whose
    /// parent is not encrypted and whose context names our key identifier.
    /// Returns its path in the image and its inode.
    pub fn find_root(&self) -> Result<(PathBuf, Inode)> {
        let mut queue = vec![(PathBuf::from("/"), self.fs.inode(ROOT_INODE)?)];
        while let Some((path, dir)) = queue.pop() {
            for entry in self.fs.read_dir(&dir)? {
                if entry.name == b"." || entry.name == b".." || entry.file_type != ext4::FT_DIR {
                    continue;
                }
                let inode = self.fs.inode(entry.inode)?;
                let child = path.join(String::from_utf8_lossy(&entry.name).as_ref());
                if inode.is_encrypted() {
                    if let Some(raw) = self.fs.encryption_context(&inode)? {
                        if ContextV2::parse(&raw).is_ok_and(|c| c.key_identifier == self.identifier)
                        {
                            return Ok((child, inode));
                        }
                    }
                } else if inode.is_dir() {
                    queue.push((child, inode));
                }
            }
        }
        bail!(
            "no directory in the image is encrypted with key {}",
            self.identifier
        )
    }

    fn context(&self, inode: &Inode) -> Result<ContextV2> {
        let raw = self.fs.encryption_context(inode)?.with_context(|| {
            format!(
                "inode {} is marked encrypted but has no fscrypt context",
                inode.number
            )
        })?;
        let context = ContextV2::parse(&raw).with_context(|| format!("inode {}", inode.number))?;
        context
            .check_supported()
            .with_context(|| format!("inode {}", inode.number))?;
        ensure!(
            context.key_identifier == self.identifier,
            "inode {} is encrypted with key {}, not {}",
            inode.number,
            context.key_identifier,
            self.identifier
        );
        Ok(context)
    }

    /// Decrypts every entry under the encryption root `root`.
    pub fn read_tree(&mut self, root: &Inode) -> Result<Vec<Decrypted>> {
        let mut out = Vec::new();
        self.read_dir_into(root, Path::new(""), &mut out)?;
        Ok(out)
    }

    fn read_dir_into(&mut self, dir: &Inode, rel: &Path, out: &mut Vec<Decrypted>) -> Result<()> {
        let context = self.context(dir)?;
        let name_key = fscrypt::per_file_key(self.master, &context.nonce, 32)?;
        for entry in self.fs.read_dir(dir)? {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let name = fscrypt::decrypt_filename(&name_key, &entry.name)
                .with_context(|| format!("decrypting a name in {}", rel.display()))?;
            ensure!(
                !name.is_empty() && !name.contains(&b'/') && name != b"." && name != b"..",
                "decrypted name {:?} in {} is invalid (wrong key or corrupt image)",
                String::from_utf8_lossy(&name),
                rel.display()
            );
            let path = rel.join(std::ffi::OsStr::from_encoded_bytes_checked(&name));
            let inode = self.fs.inode(entry.inode)?;
            let entry = if inode.is_dir() {
                Entry::Dir
            } else if inode.is_file() {
                Entry::File(self.read_file(&inode)?)
            } else if inode.is_symlink() {
                Entry::Symlink(self.read_symlink(&inode)?)
            } else {
                continue; // devices, fifos, sockets: nothing encrypted to show
            };
            let is_dir = matches!(entry, Entry::Dir);
            out.push(Decrypted {
                path: path.clone(),
                entry,
                mode: inode.permissions(),
                uid: inode.uid,
                gid: inode.gid,
            });
            if is_dir {
                self.read_dir_into(&inode, &path, out)?;
            }
        }
        Ok(())
    }

    /// Decrypts a regular file's contents: AES-256-XTS per data unit, the IV
    /// being the data unit's index in the file; holes and unwritten extents
    /// read as zeros (they are not encrypted).
    pub fn read_file(&mut self, inode: &Inode) -> Result<Vec<u8>> {
        let context = self.context(inode)?;
        let block_size = self.fs.block_size;
        let unit = if context.log2_data_unit_size == 0 {
            block_size
        } else {
            1u64 << context.log2_data_unit_size
        };
        ensure!(
            unit <= block_size && block_size.is_multiple_of(unit),
            "inode {}: unsupported data unit size {unit}",
            inode.number
        );
        let key = fscrypt::per_file_key(self.master, &context.nonce, 64)?;
        let cipher = xts::ContentsCipher::new(&key)?;
        let size = inode.size;
        let mut data = vec![0u8; size as usize];
        // Read contiguous runs in chunks, so I/O is large and sequential.
        const CHUNK_BLOCKS: u64 = 256;
        for extent in self.fs.extents(inode)? {
            if extent.uninit {
                continue;
            }
            let mut done = 0;
            while done < extent.len {
                let logical = extent.logical + done;
                let start = logical * block_size;
                if start >= size {
                    break;
                }
                let blocks = (extent.len - done)
                    .min(CHUNK_BLOCKS)
                    .min((size - start).div_ceil(block_size));
                let mut buf = vec![0u8; (blocks * block_size) as usize];
                self.fs
                    .read_at((extent.physical + done) * block_size, &mut buf)?;
                let started = thread_cpu_time();
                for (i, chunk) in buf.chunks_mut(unit as usize).enumerate() {
                    cipher.decrypt_unit(start / unit + i as u64, chunk)?;
                }
                self.decrypt_time += thread_cpu_time().saturating_sub(started);
                self.decrypted_bytes += buf.len() as u64;
                let take = buf.len().min((size - start) as usize);
                data[start as usize..start as usize + take].copy_from_slice(&buf[..take]);
                done += blocks;
            }
        }
        Ok(data)
    }

    /// Decrypts a symlink target: `le16 length || ciphertext`, encrypted like
    /// a filename with the symlink's own key.
    pub fn read_symlink(&self, inode: &Inode) -> Result<Vec<u8>> {
        let context = self.context(inode)?;
        let raw = if inode.uses_extents() {
            let extents = self.fs.extents(inode)?;
            let first = extents
                .first()
                .context("encrypted symlink without a data block")?;
            self.fs.read_block(first.physical)?
        } else {
            inode.inline_block().to_vec()
        };
        let len = usize::from(u16::from_le_bytes([raw[0], raw[1]]));
        ensure!(
            2 + len <= raw.len(),
            "inode {}: symlink ciphertext length {len} overflows",
            inode.number
        );
        let key = fscrypt::per_file_key(self.master, &context.nonce, 32)?;
        fscrypt::decrypt_filename(&key, &raw[2..2 + len])
    }
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

// ---------------------------------------------------------------------------
// verify-encryption
// ---------------------------------------------------------------------------

/// Result of `verify-encryption`.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub image: PathBuf,
    pub root_in_image: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub decrypted_bytes: u64,
    pub decrypt_time: Duration,
    /// Files whose decryption differs from what the kernel shows.
    pub mismatches: Vec<String>,
    /// (marker, byte offset in the raw image) for every marker found.
    pub markers_found: Vec<(String, u64)>,
    pub image_bytes_scanned: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty() && self.markers_found.is_empty()
    }

    /// Decryption throughput in MB/s (10^6 bytes).
    pub fn throughput_mb_s(&self) -> f64 {
        let secs = self.decrypt_time.as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        self.decrypted_bytes as f64 / secs / 1e6
    }
}

/// Decrypts the volume in `image` with `master` and compares every file with
/// the kernel's view under `live_dir`; scans the raw image for `markers`.
pub fn verify_encryption(
    image: &Path,
    master: &SecretKey,
    live_dir: &Path,
    markers: &[String],
) -> Result<VerifyReport> {
    sync_filesystem(live_dir)?;
    let mut reader = VolumeReader::open(image, master)?;
    let (root_in_image, root) = reader.find_root()?;
    let tree = reader.read_tree(&root)?;
    let mut report = VerifyReport {
        image: image.to_path_buf(),
        root_in_image,
        ..Default::default()
    };
    let mut seen = BTreeMap::new();
    for item in &tree {
        let live = live_dir.join(&item.path);
        let mismatch = match &item.entry {
            Entry::Dir => {
                report.dirs += 1;
                (!live.is_dir()).then(|| "is not a directory in the live volume".to_string())
            }
            Entry::File(data) => {
                report.files += 1;
                match fs::read(&live) {
                    Ok(kernel) if &kernel == data => None,
                    Ok(kernel) => Some(format!(
                        "decrypts to {} bytes that differ from the kernel's {} bytes",
                        data.len(),
                        kernel.len()
                    )),
                    Err(e) => Some(format!("cannot be read through the volume: {e}")),
                }
            }
            Entry::Symlink(target) => {
                report.symlinks += 1;
                match fs::read_link(&live) {
                    Ok(kernel) if kernel.as_os_str().as_encoded_bytes() == target.as_slice() => {
                        None
                    }
                    Ok(kernel) => Some(format!(
                        "symlink decrypts to {:?}, kernel shows {kernel:?}",
                        String::from_utf8_lossy(target)
                    )),
                    Err(e) => Some(format!("symlink cannot be read through the volume: {e}")),
                }
            }
        };
        if let Some(why) = mismatch {
            report
                .mismatches
                .push(format!("{}: {why}", item.path.display()));
        }
        seen.insert(item.path.clone(), ());
    }
    // Everything the kernel shows must have been found in the raw image.
    for path in list_tree(live_dir)? {
        if !seen.contains_key(&path) {
            report.mismatches.push(format!(
                "{}: shown by the kernel but not found in the image",
                path.display()
            ));
        }
    }
    report.decrypted_bytes = reader.decrypted_bytes;
    report.decrypt_time = reader.decrypt_time;
    let (found, scanned) = scan_for_markers(image, markers)?;
    report.markers_found = found;
    report.image_bytes_scanned = scanned;
    Ok(report)
}

fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("syncfs {}", path.display()));
    }
    Ok(())
}

fn list_tree(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(base.join(rel))
            .with_context(|| format!("listing {}", base.join(rel).display()))?
        {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() || kind.is_file() || kind.is_symlink() {
                out.push(path.clone());
            }
            if kind.is_dir() {
                walk(base, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    Ok(out)
}

/// Streams the whole image looking for each marker; returns every hit.
pub fn scan_for_markers(image: &Path, markers: &[String]) -> Result<(Vec<(String, u64)>, u64)> {
    let mut found = Vec::new();
    if markers.is_empty() {
        return Ok((found, 0));
    }
    let finders: Vec<_> = markers
        .iter()
        .map(|m| memchr::memmem::Finder::new(m.as_bytes()))
        .collect();
    let overlap = markers
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut file = fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut kept = 0; // bytes carried over from the previous chunk
    let mut offset = 0u64; // image offset of buf[0]
    loop {
        let n = file
            .read(&mut buf[kept..])
            .with_context(|| format!("reading {}", image.display()))?;
        if n == 0 {
            break;
        }
        let window = &buf[..kept + n];
        for (marker, finder) in markers.iter().zip(&finders) {
            for pos in finder.find_iter(window) {
                let at = offset + pos as u64;
                if !found.iter().any(|(m, o)| m == marker && *o == at) {
                    found.push((marker.clone(), at));
                }
            }
        }
        let keep = overlap.min(window.len());
        let len = window.len();
        buf.copy_within(len - keep..len, 0);
        offset += (len - keep) as u64;
        kept = keep;
    }
    Ok((found, offset + kept as u64))
}

// ---------------------------------------------------------------------------
// recover
// ---------------------------------------------------------------------------

/// Result of `recover`.
#[derive(Debug, Default)]
pub struct RecoverReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Writes every file of the volume in `image` into `out` (which must be new
/// or empty), with modes and, when run as root, owners.
pub fn recover(image: &Path, master: &SecretKey, out: &Path) -> Result<RecoverReport> {
    let mut reader = VolumeReader::open(image, master)?;
    let (_, root) = reader.find_root()?;
    let tree = reader.read_tree(&root)?;
    match fs::read_dir(out) {
        Ok(mut entries) => ensure!(
            entries.next().is_none(),
            "output directory {} is not empty",
            out.display()
        ),
        Err(_) => fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?,
    }
    let mut report = RecoverReport::default();
    let is_root = unsafe { libc::geteuid() } == 0;
    for item in &tree {
        let path = out.join(&item.path);
        match &item.entry {
            Entry::Dir => {
                fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
                report.dirs += 1;
            }
            Entry::File(data) => {
                fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
                report.files += 1;
                report.bytes += data.len() as u64;
            }
            Entry::Symlink(target) => {
                std::os::unix::fs::symlink(
                    std::ffi::OsStr::from_encoded_bytes_checked(target),
                    &path,
                )
                .with_context(|| format!("creating symlink {}", path.display()))?;
                report.symlinks += 1;
            }
        }
        if !matches!(item.entry, Entry::Symlink(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(item.mode))?;
        }
        if is_root {
            std::os::unix::fs::lchown(&path, Some(item.uid), Some(item.gid))?;
        }
    }
    Ok(report)
}

/// `OsStr::from_encoded_bytes_unchecked` made safe for Unix, where any bytes
/// are a valid OsStr.
trait FromBytes {
    fn from_encoded_bytes_checked(bytes: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytes for std::ffi::OsStr {
    fn from_encoded_bytes_checked(bytes: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(bytes)
    }
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

/// `guardctl verify-encryption VOLUME`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyEncryptionArgs {
    /// The fscrypt volume to check (must be unlocked: its files are compared
    /// with what the kernel shows).
    pub volume: String,
    /// Image file or block device beneath the volume (default: the device
    /// the volume's filesystem is mounted from).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Plaintext that must not appear anywhere in the raw bytes (repeatable).
    #[arg(long = "marker")]
    pub markers: Vec<String>,
}

/// `guardctl recover VOLUME --image IMAGE --out DIR`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoverArgs {
    /// The volume whose files to recover (its record gives the wrapped key).
    pub volume: String,
    /// Unmounted image file or block device holding the volume.
    #[arg(long)]
    pub image: PathBuf,
    /// Directory to write the recovered files into (new or empty).
    #[arg(long)]
    pub out: PathBuf,
}

fn fscrypt_record(options: &KeysOptions, volume: &str) -> Result<(VolumeRecord, PathBuf)> {
    let record = options.store().load(volume)?;
    match &record.kind {
        VolumeKind::Fscrypt { path, .. } => {
            let path = path.clone();
            Ok((record, path))
        }
        VolumeKind::DmCrypt { .. } => bail!("volume {volume} is a dm-crypt volume; verify-encryption and recover read fscrypt volumes"),
    }
}

/// The source device of the filesystem mounted at the longest prefix of `path`.
pub fn backing_device(path: &Path) -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mut best: Option<(PathBuf, PathBuf)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
            continue;
        };
        let target = PathBuf::from(target.replace("\\040", " "));
        if path.starts_with(&target)
            && best
                .as_ref()
                .is_none_or(|(t, _)| target.as_os_str().len() >= t.as_os_str().len())
        {
            best = Some((target, PathBuf::from(source)));
        }
    }
    let (_, source) =
        best.with_context(|| format!("no mounted filesystem holds {}", path.display()))?;
    ensure!(
        source.is_absolute(),
        "{} is mounted from {source:?}, not a device; pass --image",
        path.display()
    );
    Ok(source)
}

pub fn run_verify_encryption(args: VerifyEncryptionArgs, options: &KeysOptions) -> Result<()> {
    let (record, live_dir) = fscrypt_record(options, &args.volume)?;
    let image = match args.image {
        Some(image) => image,
        None => backing_device(&live_dir)?,
    };
    let kms = options.kms()?;
    let master = fetch_volume_key(kms.as_ref(), &record)?;
    let report = verify_encryption(&image, &master, &live_dir, &args.markers)?;
    println!(
        "volume {} in {} (at {} in the image)",
        args.volume,
        image.display(),
        report.root_in_image.display()
    );
    println!(
        "decrypted {} files, {} directories, {} symlinks: {} bytes in {:.3} s ({:.0} MB/s AES-256-XTS)",
        report.files,
        report.dirs,
        report.symlinks,
        report.decrypted_bytes,
        report.decrypt_time.as_secs_f64(),
        report.throughput_mb_s()
    );
    for mismatch in &report.mismatches {
        println!("MISMATCH {mismatch}");
    }
    for (marker, offset) in &report.markers_found {
        println!("PLAINTEXT marker {marker:?} found at byte {offset} of the raw image");
    }
    if !args.markers.is_empty() {
        println!(
            "scanned {} raw bytes for {} marker(s)",
            report.image_bytes_scanned,
            args.markers.len()
        );
    }
    if !report.ok() {
        bail!("verify-encryption FAILED for volume {}", args.volume);
    }
    println!("OK: every file decrypts to what the kernel shows; no marker in the raw bytes");
    Ok(())
}

pub fn run_recover(args: RecoverArgs, options: &KeysOptions) -> Result<()> {
    let (record, _) = fscrypt_record(options, &args.volume)?;
    let kms = options.kms()?;
    let master = fetch_volume_key(kms.as_ref(), &record)?;
    let report = recover(&args.image, &master, &args.out)?;
    println!(
        "recovered {} files ({} bytes), {} directories, {} symlinks into {}",
        report.files,
        report.bytes,
        report.dirs,
        report.symlinks,
        args.out.display()
    );
    Ok(())
}
