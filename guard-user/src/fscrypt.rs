//! fscrypt v2: the kernel ioctls, and the key derivations the kernel performs,
//! reproduced in userspace (Documentation/filesystems/fscrypt.rst).
//!
//! Everything here is specific to policy version 2 with AES-256-XTS for
//! contents and AES-256-CTS for filenames, the only policy guard creates.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use aes::cipher::KeyIvInit;
use aes::Aes256;
use anyhow::{anyhow, bail, Context, Result};
use cts::Decrypt as _;
use hkdf::Hkdf;
use sha2::Sha512;
use thiserror::Error;

use crate::keyring::{SecretKey, VOLUME_KEY_LEN};

pub const KEY_IDENTIFIER_SIZE: usize = 16;
pub const NONCE_SIZE: usize = 16;
pub const POLICY_V2: u8 = 2;
pub const CONTEXT_V2: u8 = 2;
pub const MODE_AES_256_XTS: u8 = 1;
pub const MODE_AES_256_CTS: u8 = 4;
/// Filenames padded to a multiple of 32 bytes: leaks the least about name lengths.
pub const POLICY_FLAGS_PAD_32: u8 = 0x03;

/// HKDF contexts (fs/crypto/fscrypt_private.h).
const HKDF_CONTEXT_KEY_IDENTIFIER: u8 = 1;
const HKDF_CONTEXT_PER_FILE_ENC_KEY: u8 = 2;

/// The 16-byte identifier of an fscrypt v2 master key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyIdentifier(pub [u8; KEY_IDENTIFIER_SIZE]);

impl KeyIdentifier {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes =
            hex::decode(text).with_context(|| format!("key identifier {text:?} is not hex"))?;
        let array: [u8; KEY_IDENTIFIER_SIZE] = bytes.try_into().map_err(|b: Vec<u8>| {
            anyhow!(
                "key identifier {text:?} has {} bytes, expected {KEY_IDENTIFIER_SIZE}",
                b.len()
            )
        })?;
        Ok(Self(array))
    }
}

impl std::fmt::Debug for KeyIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Display for KeyIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// HKDF-SHA512 expansion with fscrypt's info prefix `"fscrypt\0" || context || info`,
/// from a master key extracted with no salt, exactly as fs/crypto/hkdf.c does.
fn fscrypt_hkdf(master: &[u8], context: u8, info: &[u8], out: &mut [u8]) -> Result<()> {
    let hkdf = Hkdf::<Sha512>::new(None, master);
    let mut full_info = Vec::with_capacity(9 + info.len());
    full_info.extend_from_slice(b"fscrypt\0");
    full_info.push(context);
    full_info.extend_from_slice(info);
    hkdf.expand(&full_info, out)
        .map_err(|_| anyhow!("HKDF-SHA512 cannot produce {} bytes", out.len()))
}

/// The key identifier the kernel computes for `master` (HKDF context 1).
pub fn key_identifier(master: &SecretKey) -> Result<KeyIdentifier> {
    let mut id = [0u8; KEY_IDENTIFIER_SIZE];
    fscrypt_hkdf(master.as_ref(), HKDF_CONTEXT_KEY_IDENTIFIER, &[], &mut id)?;
    Ok(KeyIdentifier(id))
}

/// The per-file encryption key for a file with `nonce` (HKDF context 2), of
/// `len` bytes: 64 for AES-256-XTS contents, 32 for AES-256-CTS filenames.
pub fn per_file_key(master: &SecretKey, nonce: &[u8; NONCE_SIZE], len: usize) -> Result<SecretKey> {
    let mut key = SecretKey::zeroed(len)?;
    fscrypt_hkdf(
        master.as_ref(),
        HKDF_CONTEXT_PER_FILE_ENC_KEY,
        nonce,
        key.as_mut(),
    )?;
    Ok(key)
}

/// Decrypts an encrypted filename: AES-256-CBC with ciphertext stealing (CS3)
/// and an all-zero IV, then strips the NUL padding.
pub fn decrypt_filename(dir_key: &SecretKey, ciphertext: &[u8]) -> Result<Vec<u8>> {
    if dir_key.len() != 32 {
        bail!("AES-256-CTS needs a 32-byte key, got {}", dir_key.len());
    }
    if ciphertext.len() < 16 {
        bail!(
            "encrypted filename of {} bytes is shorter than one AES block",
            ciphertext.len()
        );
    }
    let mut name = ciphertext.to_vec();
    cts::CbcCs3Dec::<Aes256>::new_from_slices(dir_key.as_ref(), &[0u8; 16])
        .expect("key and IV sizes checked")
        .decrypt(&mut name)
        .map_err(|_| {
            anyhow!(
                "encrypted filename of {} bytes cannot be decrypted",
                ciphertext.len()
            )
        })?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    name.truncate(end);
    Ok(name)
}

/// The on-disk fscrypt v2 context (the xattr "c" in index 9 on ext4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextV2 {
    pub contents_mode: u8,
    pub filenames_mode: u8,
    pub flags: u8,
    pub log2_data_unit_size: u8,
    pub key_identifier: KeyIdentifier,
    pub nonce: [u8; NONCE_SIZE],
}

impl ContextV2 {
    pub const SIZE: usize = 40;

    pub fn parse(raw: &[u8]) -> Result<Self> {
        if raw.len() != Self::SIZE {
            bail!(
                "fscrypt context has {} bytes, expected {} (v2)",
                raw.len(),
                Self::SIZE
            );
        }
        if raw[0] != CONTEXT_V2 {
            bail!(
                "fscrypt context version {} is not supported (only v2)",
                raw[0]
            );
        }
        Ok(Self {
            contents_mode: raw[1],
            filenames_mode: raw[2],
            flags: raw[3],
            log2_data_unit_size: raw[4],
            key_identifier: KeyIdentifier(raw[8..24].try_into().expect("16 bytes")),
            nonce: raw[24..40].try_into().expect("16 bytes"),
        })
    }

    /// Refuses contexts guard cannot decrypt: other modes, or flags that change
    /// the key derivation (DIRECT_KEY, IV_INO_LBLK_64/32).
    pub fn check_supported(&self) -> Result<()> {
        if self.contents_mode != MODE_AES_256_XTS || self.filenames_mode != MODE_AES_256_CTS {
            bail!(
                "unsupported fscrypt modes contents={} filenames={} (need AES-256-XTS/AES-256-CTS)",
                self.contents_mode,
                self.filenames_mode
            );
        }
        if self.flags & !0x03 != 0 {
            bail!("unsupported fscrypt policy flags {:#x}", self.flags);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// ioctls (include/uapi/linux/fscrypt.h)
// ---------------------------------------------------------------------------

const fn ioc(dir: u32, nr: u32, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u32) << 16) | ((b'f' as u32) << 8) | nr) as libc::c_ulong
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `struct fscrypt_policy_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PolicyV2 {
    version: u8,
    contents_encryption_mode: u8,
    filenames_encryption_mode: u8,
    flags: u8,
    log2_data_unit_size: u8,
    reserved: [u8; 3],
    master_key_identifier: [u8; KEY_IDENTIFIER_SIZE],
}

/// `struct fscrypt_get_policy_ex_arg`.
#[repr(C)]
struct GetPolicyExArg {
    policy_size: u64,
    policy: [u8; 24],
}

/// `struct fscrypt_key_specifier`.
#[repr(C)]
#[derive(Clone, Copy)]
struct KeySpecifier {
    kind: u32,
    reserved: u32,
    u: [u8; 32],
}

impl KeySpecifier {
    fn identifier(id: &KeyIdentifier) -> Self {
        const FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
        let mut u = [0u8; 32];
        u[..KEY_IDENTIFIER_SIZE].copy_from_slice(&id.0);
        Self {
            kind: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
            reserved: 0,
            u,
        }
    }
}

/// `struct fscrypt_add_key_arg` (no trailing raw key: we pass a keyring serial).
#[repr(C)]
struct AddKeyArg {
    key_spec: KeySpecifier,
    raw_size: u32,
    key_id: i32,
    flags: u32,
    reserved: [u32; 7],
}

/// `struct fscrypt_remove_key_arg`.
#[repr(C)]
struct RemoveKeyArg {
    key_spec: KeySpecifier,
    removal_status_flags: u32,
    reserved: [u32; 5],
}

/// `struct fscrypt_get_key_status_arg`.
#[repr(C)]
struct KeyStatusArg {
    key_spec: KeySpecifier,
    reserved: [u32; 6],
    status: u32,
    status_flags: u32,
    user_count: u32,
    out_reserved: [u32; 13],
}

// FS_IOC_SET_ENCRYPTION_POLICY is declared with the 12-byte v1 struct; the
// kernel reads the version byte and then the full v2 struct.
const FS_IOC_SET_ENCRYPTION_POLICY: libc::c_ulong = ioc(IOC_READ, 19, 12);
const FS_IOC_GET_ENCRYPTION_POLICY_EX: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 22, 9);
const FS_IOC_ADD_ENCRYPTION_KEY: libc::c_ulong =
    ioc(IOC_READ | IOC_WRITE, 23, std::mem::size_of::<AddKeyArg>());
const FS_IOC_REMOVE_ENCRYPTION_KEY: libc::c_ulong = ioc(
    IOC_READ | IOC_WRITE,
    24,
    std::mem::size_of::<RemoveKeyArg>(),
);
const FS_IOC_GET_ENCRYPTION_KEY_STATUS: libc::c_ulong = ioc(
    IOC_READ | IOC_WRITE,
    26,
    std::mem::size_of::<KeyStatusArg>(),
);

const _: () = assert!(std::mem::size_of::<PolicyV2>() == 24);
const _: () = assert!(std::mem::size_of::<KeySpecifier>() == 40);
const _: () = assert!(std::mem::size_of::<AddKeyArg>() == 80);
const _: () = assert!(std::mem::size_of::<RemoveKeyArg>() == 64);
const _: () = assert!(std::mem::size_of::<KeyStatusArg>() == 128);

/// Errors from fscrypt ioctls that callers react to.
#[derive(Debug, Error)]
pub enum FscryptError {
    #[error("{path}: the filesystem does not support encryption (ext4 needs `-O encrypt`, or `tune2fs -O encrypt`)")]
    NotSupported { path: String },
    #[error("{path}: directory is not empty; an encryption policy can only be set on an empty directory")]
    NotEmpty { path: String },
    #[error("{path}: already has a different encryption policy")]
    AlreadyEncrypted { path: String },
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
}

fn open_dir(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

fn ioctl<T>(file: &File, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a properly sized #[repr(C)] struct matching `request`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The policy currently on a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirPolicy {
    Unencrypted,
    V2 {
        key_identifier: KeyIdentifier,
        contents_mode: u8,
        filenames_mode: u8,
        flags: u8,
    },
    Other {
        version: u8,
    },
}

/// Reads the encryption policy of `path`, failing with
/// [`FscryptError::NotSupported`] when its filesystem cannot encrypt.
pub fn get_policy(path: &Path) -> Result<DirPolicy> {
    let dir = open_dir(path)?;
    let mut arg = GetPolicyExArg {
        policy_size: 24,
        policy: [0; 24],
    };
    match ioctl(&dir, FS_IOC_GET_ENCRYPTION_POLICY_EX, &mut arg) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(DirPolicy::Unencrypted),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)
            ) =>
        {
            return Err(FscryptError::NotSupported {
                path: path.display().to_string(),
            }
            .into())
        }
        Err(source) => {
            return Err(FscryptError::Io {
                path: path.display().to_string(),
                op: "FS_IOC_GET_ENCRYPTION_POLICY_EX",
                source,
            }
            .into())
        }
    }
    let p = arg.policy;
    if p[0] != POLICY_V2 {
        return Ok(DirPolicy::Other { version: p[0] });
    }
    Ok(DirPolicy::V2 {
        contents_mode: p[1],
        filenames_mode: p[2],
        flags: p[3],
        key_identifier: KeyIdentifier(p[8..24].try_into().expect("16 bytes")),
    })
}

/// Sets guard's v2 policy (AES-256-XTS contents, AES-256-CTS names, 32-byte
/// name padding) on the empty directory `path`. The key must already be added.
pub fn set_policy(path: &Path, key_identifier: &KeyIdentifier) -> Result<()> {
    let dir = open_dir(path)?;
    let mut policy = PolicyV2 {
        version: POLICY_V2,
        contents_encryption_mode: MODE_AES_256_XTS,
        filenames_encryption_mode: MODE_AES_256_CTS,
        flags: POLICY_FLAGS_PAD_32,
        master_key_identifier: key_identifier.0,
        ..Default::default()
    };
    let shown = path.display().to_string();
    ioctl(&dir, FS_IOC_SET_ENCRYPTION_POLICY, &mut policy).map_err(|source| {
        match source.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) => {
                FscryptError::NotSupported { path: shown }
            }
            Some(libc::ENOTEMPTY) => FscryptError::NotEmpty { path: shown },
            Some(libc::EEXIST) => FscryptError::AlreadyEncrypted { path: shown },
            _ => FscryptError::Io {
                path: shown,
                op: "FS_IOC_SET_ENCRYPTION_POLICY",
                source,
            },
        }
    })?;
    Ok(())
}

/// Hands the master key held by the `fscrypt-provisioning` key `serial` to the
/// filesystem containing `path`, and returns the identifier the kernel computed.
pub fn add_key_by_serial(path: &Path, serial: i32) -> Result<KeyIdentifier> {
    let dir = open_dir(path)?;
    let mut arg = AddKeyArg {
        key_spec: KeySpecifier::identifier(&KeyIdentifier([0; KEY_IDENTIFIER_SIZE])),
        raw_size: 0,
        key_id: serial,
        flags: 0,
        reserved: [0; 7],
    };
    ioctl(&dir, FS_IOC_ADD_ENCRYPTION_KEY, &mut arg).map_err(|source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)
        ) {
            anyhow::Error::from(FscryptError::NotSupported {
                path: path.display().to_string(),
            })
        } else {
            FscryptError::Io {
                path: path.display().to_string(),
                op: "FS_IOC_ADD_ENCRYPTION_KEY",
                source,
            }
            .into()
        }
    })?;
    Ok(KeyIdentifier(
        arg.key_spec.u[..KEY_IDENTIFIER_SIZE]
            .try_into()
            .expect("16 bytes"),
    ))
}

/// What FS_IOC_REMOVE_ENCRYPTION_KEY reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Some files were still open: their contents stay readable until closed;
    /// the key is gone once they are and `lock` is run again.
    pub files_busy: bool,
    /// Other users had also added this key; it remains for them.
    pub other_users: bool,
}

/// Removes the key from the filesystem containing `path` for all users.
/// `path` must not be inside the encrypted directory: the descriptor opened on
/// it would itself keep an inode busy.
pub fn remove_key(path: &Path, id: &KeyIdentifier) -> Result<Removal> {
    const FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS: libc::c_ulong = ioc(
        IOC_READ | IOC_WRITE,
        25,
        std::mem::size_of::<RemoveKeyArg>(),
    );
    let dir = open_dir(path)?;
    let mut arg = RemoveKeyArg {
        key_spec: KeySpecifier::identifier(id),
        removal_status_flags: 0,
        reserved: [0; 5],
    };
    // Root removes every user's claim; this is what "lock" means to an admin.
    let request = if unsafe { libc::geteuid() } == 0 {
        FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS
    } else {
        FS_IOC_REMOVE_ENCRYPTION_KEY
    };
    match ioctl(&dir, request, &mut arg) {
        Ok(()) => Ok(Removal {
            files_busy: arg.removal_status_flags & 1 != 0,
            other_users: arg.removal_status_flags & 2 != 0,
        }),
        // Not present: already locked, which is what the caller wants.
        Err(e) if e.raw_os_error() == Some(libc::ENOKEY) => Ok(Removal {
            files_busy: false,
            other_users: false,
        }),
        Err(source) => Err(FscryptError::Io {
            path: path.display().to_string(),
            op: "FS_IOC_REMOVE_ENCRYPTION_KEY",
            source,
        }
        .into()),
    }
}

/// Whether a master key is present in the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Locked: file contents and names are unreadable.
    Absent,
    /// Unlocked.
    Present,
    /// Removed, but some files were still open: they stay readable until closed.
    IncompletelyRemoved,
}

impl std::fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Absent => "locked",
            Self::Present => "unlocked",
            Self::IncompletelyRemoved => "locking (files still in use)",
        })
    }
}

pub fn key_status(path: &Path, id: &KeyIdentifier) -> Result<KeyStatus> {
    let dir = open_dir(path)?;
    let mut arg = KeyStatusArg {
        key_spec: KeySpecifier::identifier(id),
        reserved: [0; 6],
        status: 0,
        status_flags: 0,
        user_count: 0,
        out_reserved: [0; 13],
    };
    ioctl(&dir, FS_IOC_GET_ENCRYPTION_KEY_STATUS, &mut arg).map_err(|source| FscryptError::Io {
        path: path.display().to_string(),
        op: "FS_IOC_GET_ENCRYPTION_KEY_STATUS",
        source,
    })?;
    match arg.status {
        1 => Ok(KeyStatus::Absent),
        2 => Ok(KeyStatus::Present),
        3 => Ok(KeyStatus::IncompletelyRemoved),
        other => bail!(
            "{}: kernel reported unknown key status {other}",
            path.display()
        ),
    }
}

/// Checks a master key's length before it is handed anywhere.
pub fn check_master_key(key: &SecretKey) -> Result<()> {
    if key.len() != VOLUME_KEY_LEN {
        bail!(
            "fscrypt master key has {} bytes, expected {VOLUME_KEY_LEN}",
            key.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // Values from include/uapi/linux/fscrypt.h, computed with _IOR/_IOWR.
        assert_eq!(FS_IOC_SET_ENCRYPTION_POLICY, 0x800c6613);
        assert_eq!(FS_IOC_GET_ENCRYPTION_POLICY_EX, 0xc0096616);
        assert_eq!(FS_IOC_ADD_ENCRYPTION_KEY, 0xc0506617);
        assert_eq!(FS_IOC_REMOVE_ENCRYPTION_KEY, 0xc0406618);
        assert_eq!(FS_IOC_GET_ENCRYPTION_KEY_STATUS, 0xc080661a);
    }

    #[test]
    fn identifier_is_deterministic_and_key_dependent() {
        let a = SecretKey::from_slice(&[1u8; 64]).unwrap();
        let b = SecretKey::from_slice(&[2u8; 64]).unwrap();
        assert_eq!(key_identifier(&a).unwrap(), key_identifier(&a).unwrap());
        assert_ne!(key_identifier(&a).unwrap(), key_identifier(&b).unwrap());
    }

    #[test]
    fn context_parse_rejects_wrong_sizes_and_versions() {
        assert!(ContextV2::parse(&[2u8; 39]).is_err());
        let mut raw = [0u8; 40];
        raw[0] = 1;
        assert!(ContextV2::parse(&raw).is_err());
        raw[0] = 2;
        raw[1] = MODE_AES_256_XTS;
        raw[2] = MODE_AES_256_CTS;
        raw[24] = 9;
        let ctx = ContextV2::parse(&raw).unwrap();
        assert_eq!(ctx.nonce[0], 9);
        ctx.check_supported().unwrap();
    }

    #[test]
    fn filename_round_trip_through_cts() {
        use cts::Encrypt as _;
        let key = SecretKey::from_slice(&[5u8; 32]).unwrap();
        let mut name = b"patients.ibd".to_vec();
        name.resize(32, 0);
        cts::CbcCs3Enc::<Aes256>::new_from_slices(key.as_ref(), &[0u8; 16])
            .unwrap()
            .encrypt(&mut name)
            .unwrap();
        assert_eq!(decrypt_filename(&key, &name).unwrap(), b"patients.ibd");
    }
}
