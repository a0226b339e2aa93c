// SCRATCH (not committed): arm + hand-made policy in a guest.
use guard::enforcement::KernelMaps;
use guard::loader::{self, Pins};
use guard::policy::PolicyEntries;
use guard_common::*;
use std::os::unix::fs::MetadataExt;
fn kdev(d: u64) -> u32 {
    let (ma, mi) = (libc::major(d), libc::minor(d));
    (ma << 20) | mi
}
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let pins = Pins::new("/sys/fs/bpf/guard");
    println!(
        "arm: {:?}",
        loader::arm(
            &pins,
            guard::EBPF_OBJECT,
            std::path::Path::new("/sys/kernel/btf/vmlinux")
        )?
    );
    let mut maps = KernelMaps::open(&pins)?;
    let dir = std::fs::metadata(&a[1])?;
    let exe = std::fs::metadata(&a[2])?;
    let mode: u32 = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(0);
    let g = maps.apply(|g| PolicyEntries {
        meta: PolicyMeta { mode, _pad: 0 },
        devs: vec![DevKey {
            generation: g,
            dev: kdev(dir.dev()),
        }],
        dirs: vec![(
            DirKey {
                generation: g,
                dev: kdev(dir.dev()),
                ino: dir.ino(),
            },
            0,
        )],
        rules: vec![(
            RuleKey {
                generation: g,
                point: 0,
                exe_dev: kdev(exe.dev()),
                uid: ANY_ID,
                exe_ino: exe.ino(),
                gid: ANY_ID,
                _pad: 0,
            },
            RuleValue {
                allow: 0xff,
                audit: 0,
                rule: 0,
                _pad: 0,
            },
        )],
        exes: vec![ExeKey {
            dev: kdev(exe.dev()),
            _pad: 0,
            ino: exe.ino(),
        }],
    })?;
    println!("applied generation {g}; stats {:?}", maps.stats()?);
    Ok(())
}
