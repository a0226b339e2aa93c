//! Key material in memory and in the kernel keyring.
//!
//! A plaintext volume key exists in this process only inside a [`SecretKey`]: a
//! heap buffer that is `mlock`ed (never written to swap), excluded from core
//! dumps, and zeroized when dropped. From there it goes straight into the kernel
//! keyring with `add_key(2)`; the host's disk never sees it.

use std::ffi::CString;
use std::fmt;

use anyhow::{bail, Context, Result};
use linux_keyutils::{Key, KeyRing, KeyRingIdentifier};
use zeroize::Zeroize;

/// Size of an fscrypt v2 master key and of a dm-crypt AES-256-XTS volume key.
pub const VOLUME_KEY_LEN: usize = 64;

/// Bytes that must never reach the disk or a core dump.
///
/// The buffer is allocated once with its final size (so it is never moved by a
/// reallocation that would leave a copy behind), locked into RAM, marked
/// `MADV_DONTDUMP`, and wiped on drop.
pub struct SecretKey {
    bytes: Box<[u8]>,
    locked: bool,
}

impl SecretKey {
    /// A zero-filled secret of `len` bytes, locked in memory.
    pub fn zeroed(len: usize) -> Result<Self> {
        let mut bytes = vec![0u8; len].into_boxed_slice();
        let locked = lock_memory(&mut bytes)?;
        Ok(Self { bytes, locked })
    }

    /// A fresh random secret from the kernel's CSPRNG.
    pub fn random(len: usize) -> Result<Self> {
        let mut secret = Self::zeroed(len)?;
        getrandom::getrandom(secret.as_mut())
            .map_err(|e| anyhow::anyhow!("reading {len} random bytes from the kernel: {e}"))?;
        Ok(secret)
    }

    /// Copies `source` into a new locked buffer. The caller stays responsible
    /// for wiping `source`.
    pub fn from_slice(source: &[u8]) -> Result<Self> {
        let mut secret = Self::zeroed(source.len())?;
        secret.as_mut().copy_from_slice(source);
        Ok(secret)
    }

    /// Takes ownership of `source`, copying it into locked memory and wiping it.
    pub fn from_vec(mut source: Vec<u8>) -> Result<Self> {
        let secret = Self::from_slice(&source);
        source.zeroize();
        secret
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl AsRef<[u8]> for SecretKey {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for SecretKey {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked {
            // SAFETY: the range is the buffer we locked in `lock_memory` and it
            // is still allocated.
            unsafe { libc::munlock(self.bytes.as_ptr().cast(), self.bytes.len()) };
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({} bytes, redacted)", self.bytes.len())
    }
}

/// Locks `bytes` into RAM and keeps it out of core dumps. Returns whether the
/// range was locked (an empty buffer has nothing to lock).
fn lock_memory(bytes: &mut [u8]) -> Result<bool> {
    if bytes.is_empty() {
        return Ok(false);
    }
    // SAFETY: the pointer and length describe a live allocation owned by the caller.
    let rc = unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("mlock of key memory failed (is RLIMIT_MEMLOCK too small?)");
    }
    // madvise needs a page-aligned start: apply it to the pages the buffer spans.
    let page = page_size();
    let start = bytes.as_ptr() as usize & !(page - 1);
    let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page) * page;
    // SAFETY: advisory only; the pages belong to our heap. MADV_DONTDUMP on
    // neighbouring heap data merely keeps it out of core dumps too.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTDUMP) };
    Ok(true)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// Key types guard installs into the kernel keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKeyType {
    /// Holds an fscrypt master key for FS_IOC_ADD_ENCRYPTION_KEY; unreadable
    /// from userspace.
    FscryptProvisioning,
    /// Holds a dm-crypt volume key referenced from a table as
    /// `:<size>:logon:<description>`; unreadable from userspace.
    Logon,
}

impl KernelKeyType {
    fn name(self) -> &'static str {
        match self {
            Self::FscryptProvisioning => "fscrypt-provisioning",
            Self::Logon => "logon",
        }
    }
}

/// A key guard added to the kernel keyring. Dropping it does nothing: call
/// [`InstalledKey::invalidate`] to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstalledKey {
    pub serial: i32,
}

impl InstalledKey {
    /// Removes the key from every keyring at once (KEYCTL_INVALIDATE).
    pub fn invalidate(self) -> Result<()> {
        Key::from_id(self.serial.into())
            .invalidate()
            .map_err(|e| anyhow::anyhow!("invalidating kernel key {}: {e:?}", self.serial))
    }
}

/// Adds a key of `kind` with `payload` to the keyring `ring` and returns its serial.
///
/// linux-keyutils only adds `user` keys, so this one call goes to the syscall
/// directly; everything else about keys uses the crate.
pub fn add_key(
    kind: KernelKeyType,
    description: &str,
    payload: &[u8],
    ring: KeyRingIdentifier,
) -> Result<InstalledKey> {
    let type_name = CString::new(kind.name()).expect("static name has no NUL");
    let desc = CString::new(description)
        .with_context(|| format!("key description {description:?} contains a NUL byte"))?;
    // SAFETY: all pointers are valid for the lengths given; the kernel copies
    // the payload before returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            type_name.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            ring as i32,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| {
            format!(
                "add_key({}, {description:?}) to the kernel keyring failed",
                kind.name()
            )
        });
    }
    Ok(InstalledKey { serial: rc as i32 })
}

/// Adds an `fscrypt-provisioning` key holding `master_key` (for
/// FS_IOC_ADD_ENCRYPTION_KEY with a v2 policy identifier) to the process keyring.
pub fn add_fscrypt_provisioning_key(
    description: &str,
    master_key: &SecretKey,
) -> Result<InstalledKey> {
    // struct fscrypt_provisioning_key_payload { __u32 type; __u32 flags; __u8 raw[]; }
    const FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
    let mut payload = SecretKey::zeroed(8 + master_key.len())?;
    payload.as_mut()[..4].copy_from_slice(&FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER.to_ne_bytes());
    payload.as_mut()[8..].copy_from_slice(master_key.as_ref());
    // The process keyring is private to this process and goes away with it, so
    // the provisioning key cannot outlive a crash between add and invalidate.
    ensure_process_keyring()?;
    add_key(
        KernelKeyType::FscryptProvisioning,
        description,
        payload.as_ref(),
        KeyRingIdentifier::Process,
    )
}

/// Adds a `logon` key (dm-crypt volume key) to the session keyring, where
/// dm-crypt finds it when guard loads the table.
pub fn add_logon_key(description: &str, key: &SecretKey) -> Result<InstalledKey> {
    if !description.contains(':') {
        bail!("logon key description {description:?} needs a \"prefix:\" part");
    }
    add_key(
        KernelKeyType::Logon,
        description,
        key.as_ref(),
        KeyRingIdentifier::Session,
    )
}

fn ensure_process_keyring() -> Result<()> {
    KeyRing::from_special_id(KeyRingIdentifier::Process, true)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("creating the process keyring: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_random_and_redacted_in_debug() {
        let a = SecretKey::random(VOLUME_KEY_LEN).unwrap();
        let b = SecretKey::random(VOLUME_KEY_LEN).unwrap();
        assert_eq!(a.len(), VOLUME_KEY_LEN);
        assert_ne!(a.as_ref(), b.as_ref());
        assert!(!format!("{a:?}").contains(&format!("{:?}", &a.as_ref()[..4])));
    }

    #[test]
    fn from_vec_wipes_the_source() {
        let source = vec![7u8; 32];
        let ptr = source.as_ptr();
        let secret = SecretKey::from_vec(source).unwrap();
        assert_eq!(secret.as_ref(), &[7u8; 32]);
        // The Vec was consumed; its bytes were zeroized before being freed. We
        // cannot read freed memory safely, so check the copy's independence instead.
        assert_ne!(secret.as_ref().as_ptr(), ptr);
    }

    #[test]
    fn logon_key_is_added_and_unreadable() {
        let key = SecretKey::random(VOLUME_KEY_LEN).unwrap();
        let installed = add_logon_key("guard-test:logon-unit", &key).unwrap();
        let handle = Key::from_id(installed.serial.into());
        let meta = handle.metadata().unwrap();
        assert_eq!(meta.get_description(), "guard-test:logon-unit");
        assert!(
            handle.read_to_vec().is_err(),
            "logon keys must not be readable"
        );
        installed.invalidate().unwrap();
    }
}
