//! Helpers for the guest tests: run guardd and guardctl as a user would, make
//! protected sandboxes, read the journal back.
//!
//! These run as root inside the QEMU guest (`cargo xtask vm-test`), where the
//! BPF LSM is active and the scratch disk is mounted at /scratch.

use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where guardd and guardctl are (set by the runner; else this build's release dir).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("GUARD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    dir.join(name)
}

pub const SOCKET: &str = "/run/guard/guardd.sock";
pub const EPERM: i32 = 1;

/// A running guardd, stopped (SIGTERM) when dropped.
pub struct Guardd {
    child: Option<Child>,
}

impl Guardd {
    pub fn start() -> Guardd {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Guardd {
        Self::try_start_with(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts guardd and waits until it serves; an error, instead of a panic,
    /// if it does not (for cleanups, which must not panic).
    pub fn try_start_with(args: &[&str]) -> Result<Guardd, String> {
        let _ = std::fs::remove_file(SOCKET);
        let mut child = Command::new(bin("guardd"))
            .args(args)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning guardd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !Path::new(SOCKET).exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("guardd {args:?} exited before serving: {status}"));
            }
            if Instant::now() > deadline {
                // Not signalled: a guardd that protects itself would ignore it.
                return Err(format!("guardd {args:?} did not come up in 120 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Guardd { child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, as a crash or an attacker would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Guardd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// A guardd that protects itself (`--protect-self`); stopped with
/// `guardctl stop` when dropped, since it refuses signals.
pub struct ProtectedGuardd {
    pub guardd: Guardd,
}

impl ProtectedGuardd {
    /// `guardd --protect-self ARGS`.
    pub fn start_with(args: &[&str]) -> ProtectedGuardd {
        let mut all = vec!["--protect-self"];
        all.extend_from_slice(args);
        ProtectedGuardd {
            guardd: Guardd::start_with(&all),
        }
    }
}

impl Drop for ProtectedGuardd {
    fn drop(&mut self) {
        let _ = guardctl(&["stop"]);
    }
}

/// Runs `guardctl --volume-dir VOLUMES --kms-config KMS ARGS` (the volume
/// and key commands).
pub fn guardctl_keys(args: &[&str], volumes: &Path, kms: &Path) -> Output {
    let mut all = vec![
        "--volume-dir",
        volumes.to_str().unwrap(),
        "--kms-config",
        kms.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    guardctl(&all)
}

/// Runs guardctl; returns its output whatever the exit status.
pub fn guardctl(args: &[&str]) -> Output {
    Command::new(bin("guardctl"))
        .args(args)
        .output()
        .expect("running guardctl")
}

/// `guardctl policy apply` of `policy`, asserting success.
pub fn apply(policy: &Value) -> Output {
    let out = apply_raw(&policy.to_string());
    assert!(
        out.status.success(),
        "policy apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `guardctl policy apply` of raw text; the caller checks the outcome.
pub fn apply_raw(text: &str) -> Output {
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    guardctl(&["policy", "apply", file.path().to_str().unwrap()])
}

/// The warnings (`GUARD_WARNINGS`) of the journal entry of the policy in
/// force's apply, empty when it had none.
pub fn applied_policy_warnings() -> String {
    let hash = show()["hash"].as_str().unwrap().to_owned();
    let entries = journal_entries(
        guard::journal::message_id::POLICY_APPLIED,
        "GUARD_POLICY_HASH",
        &hash,
        Duration::from_secs(15),
    );
    entries
        .last()
        .and_then(|e| e[guard::journal::field::WARNINGS].as_str())
        .unwrap_or_default()
        .to_owned()
}

pub fn status() -> Value {
    json_of(guardctl(&["status", "--json"]))
}

pub fn show() -> Value {
    json_of(guardctl(&["policy", "show", "--json"]))
}

fn json_of(out: Output) -> Value {
    assert!(
        out.status.success(),
        "guardctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("guardctl printed JSON")
}

/// A protected directory with files, and binaries to act with, under /scratch.
pub struct Sandbox {
    pub root: PathBuf,
    pub data: PathBuf,
    /// A copy of busybox that the sandbox's policy allows.
    pub allowed: PathBuf,
    /// Another copy of the same busybox, not allowed.
    pub other: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let root = Path::new("/scratch").join(name);
        let _ = std::fs::remove_dir_all(&root);
        let data = root.join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        // busybox picks its applet from argv[0], so both copies keep the name.
        std::fs::create_dir_all(root.join("allowed")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        std::fs::write(data.join("secret.txt"), "patient record 4711\n").unwrap();
        std::fs::write(data.join("sub/nested.txt"), "nested record\n").unwrap();
        let allowed = root.join("allowed/busybox");
        let other = root.join("other/busybox");
        std::fs::copy("/bin/busybox", &allowed).unwrap();
        std::fs::copy("/bin/busybox", &other).unwrap();
        Sandbox {
            root,
            data,
            allowed,
            other,
        }
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.data.join(rel)
    }

    /// The usual policy: `allowed` may do everything in `data`.
    pub fn policy(&self, mode: &str) -> Value {
        serde_json::json!({
            "mode": mode,
            "protected": [{
                "path": self.data,
                "rules": [{
                    "name": "allowed busybox",
                    "binaries": [self.allowed],
                    "access": ["read", "write", "exec", "create", "delete", "rename", "link", "setattr"],
                    "effect": "allow"
                }]
            }]
        })
    }

    /// Runs `busybox APPLET ARGS` as the allowed binary.
    pub fn allowed_run(&self, applet: &str, args: &[&str]) -> Output {
        Command::new(&self.allowed)
            .arg(applet)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn other_run(&self, applet: &str, args: &[&str]) -> Output {
        Command::new(&self.other)
            .arg(applet)
            .args(args)
            .output()
            .unwrap()
    }
}

/// Runs a shell command line (as root, not an allowed binary).
pub fn sh(cmd: &str) -> Output {
    Command::new("/bin/sh").arg("-c").arg(cmd).output().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command failed with "Operation not permitted".
#[track_caller]
pub fn assert_eperm(out: &Output, what: &str) {
    assert!(
        !out.status.success() && stderr(out).contains("Operation not permitted"),
        "{what}: expected EPERM, got {} stdout={:?} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

#[track_caller]
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: expected success, got {} stderr={:?}",
        out.status,
        stderr(out)
    );
}

/// Asserts an open by this (not allowed) process fails with EPERM.
#[track_caller]
pub fn assert_open_eperm(path: &Path) {
    let err = std::fs::read(path).expect_err(&format!("{} was readable", path.display()));
    assert_eq!(err.raw_os_error(), Some(EPERM), "{}: {err}", path.display());
}

/// Journal entries with MESSAGE_ID `id` and `field=value`, waiting up to
/// `wait` for the first; panics naming what is missing.
/// Takes guard's programs and pins away, whatever a previous test left
/// armed, and waits until the kernel has let go of them: what follows runs
/// without guard (and a guardd started next preloads its modules again;
/// nothing loads while armed).
pub fn disarm() {
    let pins = guard::loader::Pins::new(guard::loader::DEFAULT_PIN_DIR);
    if let Err(e) = disarm_fully(&pins) {
        eprintln!("disarming: {e:#}");
    }
}

/// Removes guard's pins and waits until the kernel has let go of its
/// programs. Dropping the last pin does not detach them at once: the links
/// and programs are released later (on 6.12, still attached 0.5 s after).
pub fn disarm_fully(pins: &guard::loader::Pins) -> anyhow::Result<()> {
    guard::loader::disarm(pins)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while guard_programs_loaded() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "guard's LSM programs are still loaded 120 s after disarm"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether any LSM program named after one of guard's hooks is loaded.
fn guard_programs_loaded() -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| {
            p.program_type() == aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_LSM
                && p.name_as_str()
                    .is_some_and(|n| guard::loader::HOOKS.contains(&n))
        })
}

/// guard's DENIED journal entries about device node `node`, whose alert
/// path is `what` followed by its major:minor.
pub fn device_denials(what: &str, node: &Path) -> Vec<Value> {
    journal_entries(
        guard::journal::message_id::DENIED,
        "GUARD_PATH",
        &device_alert_path(what, node),
        Duration::from_secs(15),
    )
}

/// How an alert names device `node` kept as `what`: "what (major:minor)".
pub fn device_alert_path(what: &str, node: &Path) -> String {
    let rdev = std::fs::metadata(node).unwrap().rdev();
    format!("{what} ({}:{})", libc::major(rdev), libc::minor(rdev))
}

pub fn journal_entries(id: &str, field: &str, value: &str, wait: Duration) -> Vec<Value> {
    let matches = [format!("MESSAGE_ID={id}"), format!("{field}={value}")];
    let matches: Vec<&str> = matches.iter().map(String::as_str).collect();
    crate::wait_for_journal_entries(&matches, 1, wait).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The inode number of a path (stat is not a guarded operation).
pub fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

impl Guardd {
    /// Waits up to `timeout` for guardd to exit by itself (a disarm or a
    /// signed stop); its exit status, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Forgets the process without signalling or waiting for it (a guardd
    /// that protects itself cannot be signalled; waiting would hang).
    pub fn abandon(mut self) {
        self.child = None;
    }
}

/// An off-host signing key pair made with `guardctl keygen` in a temporary folder.
pub struct SigningKeys {
    dir: tempfile::TempDir,
    /// The private key file.
    pub key: PathBuf,
    /// The public key file (for `guardd --trust-key`).
    pub public: PathBuf,
    /// The key's fingerprint, as guard names it.
    pub fingerprint: String,
}

impl SigningKeys {
    pub fn new(name: &str) -> SigningKeys {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(name);
        let out = guardctl(&["keygen", key.to_str().unwrap()]);
        assert_ok(&out, "guardctl keygen");
        let public = dir.path().join(format!("{name}.pub"));
        let fingerprint = guard::signing::fingerprint(
            &guard::audit::checkpoint::load_verifying_key(&public).unwrap(),
        );
        SigningKeys {
            dir,
            key,
            public,
            fingerprint,
        }
    }

    /// `guardctl policy sign` of `policy` with `serial`; the signed file.
    pub fn sign_policy(&self, policy: &Value, serial: u64) -> PathBuf {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let plain = self.dir.path().join(format!("policy-{n}.json"));
        let signed = self.dir.path().join(format!("policy-{n}.signed.json"));
        std::fs::write(&plain, policy.to_string()).unwrap();
        let out = guardctl(&[
            "policy",
            "sign",
            "--key",
            self.key.to_str().unwrap(),
            "--serial",
            &serial.to_string(),
            "-o",
            signed.to_str().unwrap(),
            plain.to_str().unwrap(),
        ]);
        assert_ok(&out, "guardctl policy sign");
        signed
    }

    /// `guardctl order sign ACTION --nonce NONCE`; the signed order file.
    pub fn sign_order(&self, action: &str, nonce: &str) -> PathBuf {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let order = self.dir.path().join(format!("order-{n}.json"));
        let out = guardctl(&[
            "order",
            "sign",
            "--key",
            self.key.to_str().unwrap(),
            "--nonce",
            nonce,
            "-o",
            order.to_str().unwrap(),
            action,
        ]);
        assert_ok(&out, "guardctl order sign");
        order
    }
}

/// `guardctl order challenge`: the running guardd's nonce.
pub fn challenge() -> String {
    let out = guardctl(&["order", "challenge"]);
    assert_ok(&out, "guardctl order challenge");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `guardctl policy apply FILE`; the caller checks the outcome.
pub fn apply_file(file: &Path) -> Output {
    guardctl(&["policy", "apply", file.to_str().unwrap()])
}

/// A guardd that trusts `keys` (started with `--trust-key`, or adopting the
/// pinned key): policies, stops and disarms must be signed with them. It
/// protects itself and cannot be signalled, so it is stopped with a signed
/// order; when dropped, the guard is disarmed with one (starting a guardd to
/// take the order if none runs), so the tests after it find no pinned key.
pub struct SignedGuardd<'k> {
    guardd: Option<Guardd>,
    keys: &'k SigningKeys,
}

impl<'k> SignedGuardd<'k> {
    /// `guardd --trust-key KEYS.pub ARGS`.
    pub fn start(keys: &'k SigningKeys, args: &[&str]) -> SignedGuardd<'k> {
        let mut with_key = vec!["--trust-key", keys.public.to_str().unwrap()];
        with_key.extend_from_slice(args);
        Self::start_with(keys, &with_key)
    }

    /// `guardd ARGS` exactly: without `--trust-key` it adopts the pinned key.
    pub fn start_with(keys: &'k SigningKeys, args: &[&str]) -> SignedGuardd<'k> {
        SignedGuardd {
            guardd: Some(Guardd::start_with(args)),
            keys,
        }
    }

    /// A signed stop: guardd exits cleanly and lifts its self-protection; the
    /// kernel keeps enforcing, the key stays pinned.
    pub fn stop(&mut self) {
        self.order("stop");
    }

    /// A signed disarm: guardd detaches the programs, removes the pins (the
    /// pinned key with them) and exits.
    pub fn disarm(&mut self) {
        self.order("disarm");
    }

    fn order(&mut self, action: &str) {
        let order = self.keys.sign_order(action, &challenge());
        let out = guardctl(&[action, order.to_str().unwrap()]);
        assert_ok(&out, &format!("guardctl {action} with a signed order"));
        self.exited();
    }

    /// Waits for guardd to exit after a disarm or a signed stop; asserts it
    /// exited cleanly.
    pub fn exited(&mut self) {
        let mut guardd = self.guardd.take().expect("guardd running");
        let status = guardd.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "guardd did not exit cleanly: {status:?}"
        );
    }
}

/// Whether a trusted key is pinned in guard's BPF pins.
pub fn key_pinned() -> bool {
    Path::new(guard::loader::DEFAULT_PIN_DIR)
        .join(guard::signing::trust::PIN_FOLDER)
        .exists()
}

impl Drop for SignedGuardd<'_> {
    fn drop(&mut self) {
        let Some(mut guardd) = self.guardd_to_disarm() else {
            return;
        };
        if !self.cleanup_disarm() {
            eprintln!("SignedGuardd: the cleanup disarm was refused");
        }
        if guardd.wait_exit(Duration::from_secs(30)).is_none() {
            eprintln!("SignedGuardd: guardd did not exit after the cleanup disarm");
            guardd.abandon();
        }
    }
}

impl SignedGuardd<'_> {
    /// The guardd the cleanup disarms: this one if it still runs. If it was
    /// stopped, a key left pinned would make the later tests' unsigned
    /// policies fail, so a guardd is started (it adopts the key), unless
    /// another one serves (whoever started it disarms it).
    fn guardd_to_disarm(&mut self) -> Option<Guardd> {
        if let Some(guardd) = self.guardd.take() {
            return Some(guardd);
        }
        if !key_pinned() || guardctl(&["status"]).status.success() {
            return None;
        }
        Guardd::try_start_with(&[])
            .inspect_err(|e| eprintln!("SignedGuardd: cannot start guardd to disarm: {e}"))
            .ok()
    }

    /// A signed disarm of whatever guardd serves the socket; no panics (this
    /// runs in Drop, perhaps while a test unwinds). Whether it was accepted.
    fn cleanup_disarm(&self) -> bool {
        let challenge = guardctl(&["order", "challenge"]);
        if !challenge.status.success() {
            return false;
        }
        let nonce = String::from_utf8_lossy(&challenge.stdout)
            .trim()
            .to_string();
        let order = self.keys.dir.path().join("cleanup-disarm.json");
        let signed = guardctl(&[
            "order",
            "sign",
            "--key",
            self.keys.key.to_str().unwrap(),
            "--nonce",
            &nonce,
            "-o",
            order.to_str().unwrap(),
            "disarm",
        ]);
        signed.status.success()
            && guardctl(&["disarm", order.to_str().unwrap()])
                .status
                .success()
    }
}

/// A filesystem made on a loop device over an image in /scratch, mounted;
/// guard disarmed and everything undone when dropped.
pub struct LoopFs {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
    pub device: PathBuf,
}

impl LoopFs {
    /// An ext4 of 64 MiB at /scratch/NAME.
    pub fn mount(name: &str) -> LoopFs {
        LoopFs::mount_as(name, "ext4", "64M")
    }

    /// A `kind` filesystem (`mkfs.KIND`) of `size` at /scratch/NAME. Its
    /// module is loaded first: no module loads while guard is armed.
    pub fn mount_as(name: &str, kind: &str, size: &str) -> LoopFs {
        let image = Path::new("/scratch").join(format!("{name}.img"));
        let mountpoint = Path::new("/scratch").join(name);
        let _ = sh(&format!("umount -R {}", mountpoint.display()));
        let _ = std::fs::remove_file(&image);
        std::fs::create_dir_all(&mountpoint).unwrap();
        assert_ok(
            &sh(&format!("modprobe {kind}")),
            &format!("modprobe {kind}"),
        );
        assert_ok(
            &sh(&format!(
                "truncate -s {size} {i} && mkfs.{kind} -q {i}",
                i = image.display()
            )),
            &format!("making a {kind} image"),
        );
        let out = sh(&format!("losetup --find --show {}", image.display()));
        assert_ok(&out, "losetup");
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert_ok(
            &sh(&format!(
                "mount {} {}",
                device.display(),
                mountpoint.display()
            )),
            "mounting the loop device",
        );
        LoopFs {
            image,
            mountpoint,
            device,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        disarm();
        let _ = sh(&format!("umount -R {}", self.mountpoint.display()));
        let _ = sh(&format!("losetup -d {}", self.device.display()));
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Where `needle` first starts on `device`, read through the device.
pub fn find_on_device(device: &Path, needle: &[u8]) -> Option<u64> {
    let bytes = std::fs::read(device).expect("reading the device");
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at as u64)
}

/// Writes dirty pages out and drops the page cache: the next read of a file
/// comes from its device.
pub fn drop_caches() {
    assert_ok(
        &sh("sync && echo 3 > /proc/sys/vm/drop_caches"),
        "drop_caches",
    );
}
