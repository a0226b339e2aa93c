//! fscrypt directories for tests and benchmarks: make one, ask whether a
//! path is encrypted.

use guard::fscrypt;
use guard::keyring::{self, SecretKey};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Encrypts the empty directory `dir` with fscrypt v2 under a new random
/// key, added to its filesystem (`description` names the provisioning key
/// while it exists). Remove the key with `fscrypt::remove_key`.
pub fn encrypt_empty_dir(dir: &Path, description: &str) -> anyhow::Result<fscrypt::KeyIdentifier> {
    let master = SecretKey::random(64)?;
    let provisioning = keyring::add_fscrypt_provisioning_key(description, &master)?;
    let key = fscrypt::add_key_by_serial(dir, provisioning.serial)?;
    provisioning.invalidate()?;
    fscrypt::set_policy(dir, &key)?;
    Ok(key)
}

/// The kernel's STATX_ATTR_ENCRYPTED for `path` (not following symlinks).
pub fn is_encrypted(path: &Path) -> bool {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed statx buffer the kernel fills.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_TYPE,
            &mut stx,
        )
    };
    assert_eq!(rc, 0, "statx {}", path.display());
    stx.stx_attributes & libc::STATX_ATTR_ENCRYPTED as u64 != 0
}
