//! `guardctl volume migrate` killed with SIGKILL at many points of its run
//! loses nothing: the source is intact where it was (or, once the swap is
//! done, the old data is at DEST and the verified encrypted copy at SRC), no
//! plaintext copy is left where it should not be, and running the same
//! command again finishes the migrate. Host test, run as root.
//!
//! The kills are external. Most come from strace, which delivers SIGKILL to
//! guardctl as it enters the Nth `openat` (or its `renameat2`, the swap), so
//! each lands at the same point of the run every time; a few are plain kills
//! after increasing delays; and one waits, with strace holding guardctl just
//! after its `renameat2` returned, for the swap to show on disk.

mod keys_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guard::fscrypt::{self, DirPolicy};
use guard::volume::VolumeStore;
use guard_tests::encrypted_dirs::is_encrypted;
use keys_support::*;

/// Directories and small files per directory of the source tree, plus a few
/// large files: about 650 files and 4.5 MB, so that copying and verifying
/// take most of a run.
const DIRS: usize = 16;
const FILES_PER_DIR: usize = 40;
const LARGE_FILES: [usize; 4] = [1 << 20, 1 << 20, 3 << 19, 1 << 19];

/// A database-like data directory with deterministic contents.
fn make_source(dir: &Path) {
    fs::create_dir(dir).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for d in 0..DIRS {
        let sub = dir.join(format!("db{d:02}"));
        fs::create_dir(&sub).unwrap();
        for f in 0..FILES_PER_DIR {
            fs::write(
                sub.join(format!("t{f:03}.ibd")),
                bytes((d * 131 + f * 17) % 3000),
            )
            .unwrap();
        }
    }
    for (i, size) in LARGE_FILES.iter().enumerate() {
        fs::write(dir.join(format!("ibdata{i}")), bytes(*size)).unwrap();
    }
    let private = dir.join("db00/t000.ibd");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(&private, Some(999), Some(999)).unwrap();
    std::os::unix::fs::symlink("db01/t001.ibd", dir.join("current")).unwrap();
}

/// One migrate to interrupt: its own source, destination and volume name
/// on a filesystem, volume store and KMS shared by the whole test.
struct Migration<'a> {
    env: &'a Env,
    name: String,
    src: PathBuf,
    dest: PathBuf,
    before: Vec<Entry>,
}

struct Env {
    image: Ext4Image,
    _kms: KmsServer,
    store: Store,
    guardctl: Guardctl,
}

impl Env {
    fn new() -> Env {
        let image = Ext4Image::new(256, true);
        let kms = KmsServer::start();
        let store = Store::new();
        let guardctl = Guardctl::new(&store, &kms);
        Env {
            image,
            _kms: kms,
            store,
            guardctl,
        }
    }

    fn migration(&self, name: &str) -> Migration<'_> {
        let src = self.image.path(name);
        make_source(&src);
        Migration {
            env: self,
            name: name.to_string(),
            dest: self.image.path(&format!("{name}.new")),
            before: snapshot(&src),
            src,
        }
    }
}

/// Where a killed migrate stood, from what it left on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// No journal yet: killed before it wrote anything (or never started).
    NotStarted,
    /// Journal in the phase `copying`.
    Copying,
    /// Journal in the phase `swapping`, SRC not yet exchanged.
    SwappingBeforeExchange,
    /// Journal in the phase `swapping`, SRC already the encrypted copy.
    SwappingAfterExchange,
    /// No journal, and SRC is the encrypted volume: it had finished.
    Done,
}

impl Migration<'_> {
    fn args(&self) -> Vec<String> {
        vec![
            "volume".into(),
            "migrate".into(),
            self.src.display().to_string(),
            self.dest.display().to_string(),
            "--name".into(),
            self.name.clone(),
        ]
    }

    fn command(&self) -> Command {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env.guardctl.command(&args)
    }

    /// guardctl under strace, with `inject` if given, its trace written to `log`.
    fn spawn_traced(&self, inject: Option<&str>, log: &Path) -> Child {
        let command = self.command();
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=openat,renameat2"])
            // Stopping only at the traced calls is much faster, but strace
            // 6.1 ignores injections when it does.
            .args(match inject {
                Some(inject) => vec![format!("--inject={inject}")],
                None => vec!["--seccomp-bpf".to_string()],
            })
            .arg("-o")
            .arg(log)
            .arg(command.get_program())
            .args(command.get_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running strace (apt-get install strace)")
    }

    fn journal(&self) -> PathBuf {
        self.env
            .store
            .dir
            .path()
            .join(format!("{}.migrate", self.name))
    }

    fn src_is_volume(&self) -> bool {
        matches!(
            fscrypt::get_policy(&self.src).unwrap(),
            DirPolicy::V2 { .. }
        )
    }

    /// What the killed run left, checked against what must hold at every
    /// point of a migrate.
    fn check_after_kill(&self) -> Found {
        let journal = fs::read_to_string(self.journal()).ok();
        let found = match (&journal, self.src_is_volume()) {
            (None, false) => Found::NotStarted,
            (None, true) => Found::Done,
            (Some(text), swapped) => {
                let journal: serde_json::Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{}: {e}: {text}", self.journal().display()));
                match (journal["phase"].as_str(), swapped) {
                    (Some("copying"), false) => Found::Copying,
                    (Some("swapping"), false) => Found::SwappingBeforeExchange,
                    (Some("swapping"), true) => Found::SwappingAfterExchange,
                    other => panic!("journal {other:?} with SRC swapped={swapped}: {text}"),
                }
            }
        };
        if matches!(found, Found::SwappingAfterExchange | Found::Done) {
            // The commit point has passed: the old data is at DEST, in the
            // clear as documented, and the encrypted copy at SRC is complete.
            assert_eq!(
                fscrypt::get_policy(&self.dest).unwrap(),
                DirPolicy::Unencrypted
            );
            assert_eq!(snapshot(&self.dest), self.before, "old data at DEST");
            assert_eq!(snapshot(&self.src), self.before, "encrypted copy at SRC");
        } else {
            // Before it: SRC untouched, and DEST absent, empty or encrypted.
            assert_eq!(
                fscrypt::get_policy(&self.src).unwrap(),
                DirPolicy::Unencrypted
            );
            assert_eq!(snapshot(&self.src), self.before, "SRC must be untouched");
            assert_no_plaintext_at(&self.dest);
        }
        // Nothing else appeared next to SRC and DEST (no stray plaintext copy).
        let mut siblings: Vec<String> = fs::read_dir(self.src.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n == &self.name || n.starts_with(&format!("{}.", self.name)))
            .collect();
        siblings.sort();
        let expected = [self.name.clone(), format!("{}.new", self.name)];
        assert!(
            siblings.iter().all(|n| expected.contains(n)),
            "{siblings:?}"
        );
        found
    }

    /// Runs the same command again; it must finish the migrate.
    fn rerun_and_check(&self, found: Found) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.env.guardctl.run(&args);
        if found == Found::Done {
            // Already complete: a second migrate is refused and changes nothing.
            run.fails_with(&["not empty"]);
        } else {
            let out = run.ok();
            let recovered = out.contains("interrupted migrate");
            assert_eq!(
                recovered,
                !matches!(found, Found::NotStarted),
                "{found:?}: {out}"
            );
        }
        self.check_complete();
    }

    /// The end state of a finished migrate, checked through guardctl too.
    fn check_complete(&self) {
        let store = VolumeStore::new(self.env.store.dir.path());
        let record = store.load(&self.name).unwrap();
        match fscrypt::get_policy(&self.src).unwrap() {
            DirPolicy::V2 { key_identifier, .. } => {
                assert_eq!(key_identifier.to_hex(), record.key_identifier)
            }
            other => panic!("{} is {other:?}", self.src.display()),
        }
        assert_eq!(
            snapshot(&self.src),
            self.before,
            "the volume holds the data"
        );
        assert_eq!(
            fscrypt::get_policy(&self.dest).unwrap(),
            DirPolicy::Unencrypted
        );
        assert_eq!(snapshot(&self.dest), self.before, "the old data is at DEST");
        let leftovers: Vec<String> = self
            .env
            .store
            .files()
            .into_iter()
            .filter(|f| f.starts_with(&format!("{}.", self.name)))
            .collect();
        assert_eq!(leftovers, [format!("{}.json", self.name)]);

        let status = self.env.guardctl.run(&["volume", "status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(status.ok()).unwrap();
        let line = status
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == self.name.as_str())
            .unwrap();
        assert_eq!(line["state"], "unlocked", "{line}");
        assert_eq!(line["location"], self.src.display().to_string());
        // A working volume: locked, the data is unreadable; unlocked, it is back.
        self.env.guardctl.run(&["volume", "lock", &self.name]).ok();
        // Locked: names are ciphertext, contents cannot be opened.
        let names: Vec<_> = fs::read_dir(&self.src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(names.len(), DIRS + LARGE_FILES.len() + 1);
        assert!(!self.src.join("ibdata0").exists());
        assert!(names.iter().any(|p| read(p) == Err(libc::ENOKEY)));
        self.env
            .guardctl
            .run(&["volume", "unlock", &self.name])
            .ok();
        assert_eq!(snapshot(&self.src), self.before);
    }

    /// Frees the filesystem for the next case.
    fn remove(self) {
        self.env.guardctl.run(&["volume", "lock", &self.name]).ok();
        fs::remove_dir_all(&self.src).unwrap();
        fs::remove_dir_all(&self.dest).unwrap();
    }
}

/// DEST before the swap: missing, empty, or encrypted through and through.
fn assert_no_plaintext_at(dest: &Path) {
    let Ok(entries) = fs::read_dir(dest) else {
        return;
    };
    if entries.count() == 0 {
        return;
    }
    assert_ne!(
        fscrypt::get_policy(dest).unwrap(),
        DirPolicy::Unencrypted,
        "{} holds data but is not encrypted",
        dest.display()
    );
    fn walk(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            assert!(
                is_encrypted(&path),
                "{} in the partial copy is not encrypted",
                path.display()
            );
            if meta.is_dir() {
                walk(&path);
            }
        }
    }
    walk(dest);
}

/// Waits for strace and the guardctl under it to be gone.
fn reap(mut strace: Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while strace.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "strace did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILL to the guardctl that strace holds, then to strace, which would
/// otherwise sit out its injected delay (and keep guardctl stopped, SIGKILL
/// pending, until then). The pending SIGKILL ends guardctl the moment strace
/// lets go of it, before it runs another instruction of its own.
fn kill_tracee(mut strace: Child) {
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id()))
        .expect("strace's children");
    let pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("guardctl under strace");
    // SAFETY: kill(2) on the pid of a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    strace.kill().unwrap();
    strace.wait().unwrap();
    let gone = wait_until(Duration::from_secs(30), || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    });
    assert!(gone, "guardctl {pid} survived SIGKILL");
}

/// How many `openat` calls guardctl makes before its swap, from the trace of
/// a complete run.
fn openats_before_swap(log: &Path) -> usize {
    let text = fs::read_to_string(log).unwrap();
    let swap = text
        .lines()
        .position(|l| l.contains("renameat2("))
        .unwrap_or_else(|| panic!("no renameat2 in the trace:\n{text}"));
    text.lines()
        .take(swap)
        .filter(|l| l.contains("openat("))
        .count()
}

#[test]
fn a_killed_migrate_loses_nothing_and_a_rerun_finishes_it() {
    let env = Env::new();
    let traces = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();

    // A complete run, traced, to learn where its phases are.
    let whole = env.migration("whole");
    let log = traces.path().join("whole.log");
    let status = whole.spawn_traced(None, &log).wait().unwrap();
    assert!(
        status.success(),
        "untouched traced migrate failed: {status}"
    );
    let total = openats_before_swap(&log);
    assert!(total > 2 * DIRS * FILES_PER_DIR, "{total} openat calls");
    assert_eq!(whole.check_after_kill(), Found::Done);
    whole.check_complete();
    whole.remove();

    // SIGKILL as guardctl enters its Nth openat: start, copy, verify.
    for (i, fraction) in [0.02, 0.25, 0.5, 0.75, 0.98].iter().enumerate() {
        let m = env.migration(&format!("at{i}"));
        let when = ((total as f64 * fraction) as usize).max(1);
        let strace = m.spawn_traced(
            Some(&format!("openat:signal=KILL:when={when}")),
            &traces.path().join(format!("at{i}.log")),
        );
        reap(strace);
        let found = m.check_after_kill();
        seen.push(found);
        m.rerun_and_check(found);
        m.remove();
    }

    // SIGKILL as guardctl enters renameat2: everything up to the swap is on disk.
    let m = env.migration("swap");
    reap(m.spawn_traced(
        Some("renameat2:signal=KILL"),
        &traces.path().join("swap.log"),
    ));
    let found = m.check_after_kill();
    assert_eq!(found, Found::SwappingBeforeExchange);
    seen.push(found);
    m.rerun_and_check(found);
    m.remove();

    // Held by strace just after renameat2 returned, then killed: swapped,
    // but neither the records nor the journal were finished.
    let m = env.migration("swapped");
    let strace = m.spawn_traced(
        Some("renameat2:delay_exit=30000000"),
        &traces.path().join("swapped.log"),
    );
    assert!(
        wait_until(Duration::from_secs(60), || m.src_is_volume()),
        "the swap did not happen"
    );
    kill_tracee(strace);
    let found = m.check_after_kill();
    assert_eq!(found, Found::SwappingAfterExchange);
    seen.push(found);
    m.rerun_and_check(found);
    m.remove();

    // Plain kills after increasing delays, wherever they land.
    for (i, delay_ms) in [30u64, 120, 300].iter().enumerate() {
        let m = env.migration(&format!("late{i}"));
        let mut child = m
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        let found = m.check_after_kill();
        seen.push(found);
        m.rerun_and_check(found);
        m.remove();
    }

    eprintln!("kills landed in: {seen:?}");
    assert!(
        seen.contains(&Found::Copying),
        "no kill landed while copying: {seen:?}"
    );
}
