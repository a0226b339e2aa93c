//! guard's userspace library: everything `guardd` and `guardctl` share.

/// The kernel programs, built by `cargo xtask build-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GUARD_EBPF_OBJECT"));

pub mod fscrypt;
pub mod keyring;
pub mod kms;
pub mod recovery;
pub mod volume;
