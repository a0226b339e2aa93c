//! guard's userspace library: everything `guardd` and `guardctl` share.

pub mod alerts;
pub mod audit;
pub mod control;
pub mod daemon;
pub mod enforcement;
pub mod events;
pub mod fscrypt;
pub mod journal;
pub mod kexec;
pub mod keyring;
pub mod kms;
pub mod loader;
pub mod mappings;
pub mod offsets;
pub mod policy;
pub mod recovery;
pub mod selftest;
pub mod signing;
pub mod volume;

/// The kernel programs, built by `cargo xtask build-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GUARD_EBPF_OBJECT"));
