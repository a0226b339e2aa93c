//! guardd embeds the kernel object built by `cargo xtask build-ebpf`.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let object = root.join("target/ebpf/bpfel-unknown-none/release/guard");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "the kernel object {} is missing: run `cargo xtask build-ebpf` first",
            object.display()
        );
    }
    println!("cargo:rustc-env=GUARD_EBPF_OBJECT={}", object.display());
}
