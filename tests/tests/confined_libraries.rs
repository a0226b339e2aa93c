//! Approved libraries, end to end on a real kernel: with `libraries` in the
//! policy, an allowed binary maps executable only itself and the listed
//! files. Root cannot put code into it with LD_PRELOAD, a plugin (dlopen)
//! or mprotect of a file mapping; the listed files cannot be rewritten.
//!
//! Run inside the QEMU guests by `cargo xtask vm-test` (both kernels).

use guard::journal::{field, message_id};
use guard_tests::guest::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Debian's shared libraries and Python's extension modules: what the
/// dynamically linked allowed binaries below load.
const SYSTEM_LIBRARIES: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/python3.11/lib-dynload",
];
/// A real shared library to copy: any copy at another path is another file.
const SAMPLE_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/libz.so.1";

/// A sandbox whose allowed binaries are dynamically linked (`cat` and
/// `python3` copies), a library folder the policy approves, and copies of a
/// library elsewhere that it does not.
struct Confined {
    sb: Sandbox,
    cat: PathBuf,
    python: PathBuf,
    /// In the approved folder when the policy is applied.
    approved: PathBuf,
    /// The same library, at a path the policy does not list.
    foreign: PathBuf,
}

impl Confined {
    fn new(name: &str) -> Confined {
        let sb = Sandbox::new(name);
        let copy = |from: &str, to: PathBuf| {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, &to).unwrap();
            to
        };
        let cat = copy("/usr/bin/cat", sb.root.join("bin/cat"));
        let python = copy("/usr/bin/python3", sb.root.join("bin/python3"));
        let approved = copy(SAMPLE_LIBRARY, sb.root.join("libs/libapproved.so"));
        let foreign = copy(SAMPLE_LIBRARY, sb.root.join("elsewhere/libforeign.so"));
        Confined {
            sb,
            cat,
            python,
            approved,
            foreign,
        }
    }

    fn policy(&self, mode: &str) -> Value {
        let mut policy = self.sb.policy(mode);
        policy["protected"][0]["rules"][0]["binaries"] =
            serde_json::json!([self.sb.allowed, self.cat, self.python]);
        let mut libraries: Vec<Value> = SYSTEM_LIBRARIES.iter().map(|l| (*l).into()).collect();
        libraries.push(self.approved.parent().unwrap().to_str().unwrap().into());
        policy["libraries"] = libraries.into();
        policy
    }

    /// `cat /proc/self/maps` by `cat` with `preload` in LD_PRELOAD.
    fn maps_with_preload(&self, cat: &Path, preload: &Path) -> Output {
        Command::new(cat)
            .arg("/proc/self/maps")
            .env("LD_PRELOAD", preload)
            .output()
            .unwrap()
    }

    /// Runs a Python script as the allowed python copy.
    fn python(&self, script: &str, args: &[&Path]) -> Output {
        Command::new(&self.python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the /proc/PID/maps text in `out` has `name` mapped executable
/// (the loader may leave a read-only mapping of a library it gave up on).
fn mapped_executable(out: &Output, name: &str) -> bool {
    stdout(out).lines().any(|line| {
        let perms = line.split_whitespace().nth(1).unwrap_or("");
        line.ends_with(name) && perms.contains('x')
    })
}

/// Journal entries with `id` about an executable mapping of `file`.
fn library_alerts(id: &str, file: &Path) -> Vec<Value> {
    let name = file.file_name().unwrap().to_str().unwrap();
    journal_entries(
        id,
        field::RULE,
        "approved-libraries",
        Duration::from_secs(15),
    )
    .into_iter()
    .filter(|e| e[field::PATH].as_str().unwrap_or("").ends_with(name))
    .collect()
}

/// Loads the library named by argv[1] with dlopen, then maps it read-only
/// and asks mprotect to make that mapping executable; prints both outcomes.
const LOAD_AND_MPROTECT: &str = r#"
import ctypes, os, sys
try:
    ctypes.CDLL(sys.argv[1])
    print("dlopen: loaded")
except OSError as e:
    print("dlopen: refused:", e)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
fd = os.open(sys.argv[1], os.O_RDONLY)
address = libc.mmap(None, 4096, 1, 2, fd, 0)  # PROT_READ, MAP_PRIVATE
result = libc.mprotect(address, 4096, 5)  # PROT_READ | PROT_EXEC
print("mprotect:", result, "errno", ctypes.get_errno())
"#;

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn an_allowed_binary_maps_only_approved_libraries() {
    let c = Confined::new("libraries");
    let _guardd = Guardd::start();
    apply(&c.policy("enforce"));
    // `policy show` says how many files the binaries may map executable.
    let approved = show()["approved_libraries"].as_u64().unwrap_or(0);
    assert!(approved > 100, "approved_libraries: {approved}");

    // The allowed binaries work, with the libraries the policy approves.
    let out = Command::new(&c.cat)
        .arg(c.sb.file("secret.txt"))
        .output()
        .unwrap();
    assert_ok(&out, "the allowed cat reading the protected file");
    assert!(stdout(&out).contains("patient record 4711"), "{out:?}");
    let out = c.maps_with_preload(&c.cat, &c.approved);
    assert_ok(&out, "the allowed cat with an approved library preloaded");
    assert!(mapped_executable(&out, "libapproved.so"), "{out:?}");

    // LD_PRELOAD of a library from elsewhere: the loader cannot map it, the
    // program runs without it.
    let out = c.maps_with_preload(&c.cat, &c.foreign);
    assert!(!mapped_executable(&out, "libforeign.so"), "{out:?}");
    assert!(stderr(&out).contains("cannot be preloaded"), "{out:?}");
    // A file dropped into the approved folder after apply is not approved.
    let late = c.approved.with_file_name("liblate.so");
    std::fs::copy(SAMPLE_LIBRARY, &late).unwrap();
    let out = c.maps_with_preload(&c.cat, &late);
    assert!(!mapped_executable(&out, "liblate.so"), "{out:?}");

    // A binary the policy does not name is not confined: the same preload
    // works for it (so the refusals above are the guard's).
    let out = c.maps_with_preload(Path::new("/usr/bin/cat"), &c.foreign);
    assert!(mapped_executable(&out, "libforeign.so"), "{out:?}");

    // dlopen (a plugin) and mprotect of a file mapping, from inside an
    // allowed process: the approved library loads, the foreign one does not.
    let out = c.python(LOAD_AND_MPROTECT, &[&c.approved]);
    assert_ok(&out, "python loading the approved library");
    assert!(stdout(&out).contains("dlopen: loaded"), "{out:?}");
    assert!(stdout(&out).contains("mprotect: 0 "), "{out:?}");
    let out = c.python(LOAD_AND_MPROTECT, &[&c.foreign]);
    assert_ok(&out, "python trying the foreign library");
    assert!(stdout(&out).contains("dlopen: refused"), "{out:?}");
    assert!(stdout(&out).contains("mprotect: -1 errno 1"), "{out:?}");

    // Each refusal is in the journal: the file, the binary, the access.
    let alerts = library_alerts(message_id::DENIED, &c.foreign);
    assert!(
        alerts
            .iter()
            .any(|e| e[field::EXE] == c.cat.to_str().unwrap()),
        "no alert for the preload into cat: {alerts:?}"
    );
    assert!(
        alerts
            .iter()
            .any(|e| e[field::EXE] == c.python.to_str().unwrap()
                && e[field::HOOK] == "file_mprotect"),
        "no alert for mprotect in python: {alerts:?}"
    );
    assert!(
        alerts.iter().all(|e| e[field::ACCESS] == "exec"),
        "{alerts:?}"
    );
    assert!(
        alerts
            .iter()
            .any(|e| e[field::PATH] == c.foreign.to_str().unwrap()),
        "the alert names the file by its path: {alerts:?}"
    );
    assert!(!library_alerts(message_id::DENIED, &late).is_empty());
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn approved_libraries_cannot_be_rewritten() {
    let c = Confined::new("libraries-immutable");
    let _guardd = Guardd::start();
    apply(&c.policy("enforce"));
    let approved = c.approved.to_str().unwrap();
    let out = sh(&format!("cat {} > {approved}", c.foreign.display()));
    assert!(!out.status.success(), "root overwrote {approved}: {out:?}");
    assert_eperm(
        &sh(&format!("rm {approved}")),
        "removing an approved library",
    );
    assert_eperm(
        &sh(&format!("mv {} {approved}", c.foreign.display())),
        "renaming over an approved library",
    );
    // Untouched: the loader still maps it into the allowed binary.
    let out = c.maps_with_preload(&c.cat, &c.approved);
    assert!(mapped_executable(&out, "libapproved.so"), "{out:?}");
}

#[test]
#[ignore = "guest: run by cargo xtask vm-test"]
fn audit_mode_reports_a_foreign_library_and_loads_it() {
    let c = Confined::new("libraries-audit");
    let _guardd = Guardd::start();
    apply(&c.policy("audit"));
    let out = c.maps_with_preload(&c.cat, &c.foreign);
    assert!(mapped_executable(&out, "libforeign.so"), "{out:?}");
    assert!(!library_alerts(message_id::WOULD_DENY, &c.foreign).is_empty());
}
