//! Shared set-up for the keys_* tests: loop-mounted ext4 images, a real
//! guard-kms server on loopback with its own certificates, volume stores.
//! Everything a test starts is stopped and removed by `Drop`, also on failure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use guard::kms::pki::{write_pki_with, CertificateAuthority, Issued, PkiFiles, Role};
use guard::kms::{Kms, KmsConfig, TlsFiles};
use guard::volume::VolumeStore;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use tempfile::TempDir;
use time::OffsetDateTime;

pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root (loop devices, mounts, fscrypt ioctls)"
    );
}

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ext4 image loop-mounted on a temporary directory.
pub struct Ext4Image {
    pub dir: TempDir,
    pub image: PathBuf,
    pub mnt: PathBuf,
    mounted: bool,
}

impl Ext4Image {
    /// `encrypt`: make the filesystem with `-O encrypt`.
    pub fn new(size_mib: u64, encrypt: bool) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("guard-keys-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args(["-q", "-F", "-b", "4096"]);
        if encrypt {
            mkfs.args(["-O", "encrypt"]);
        }
        run(mkfs.arg(&image));
        let mut this = Self {
            dir,
            image,
            mnt,
            mounted: false,
        };
        this.mount();
        this
    }

    pub fn mount(&mut self) {
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&self.image)
            .arg(&self.mnt));
        self.mounted = true;
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            run(Command::new("umount").arg(&self.mnt));
            self.mounted = false;
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        if self.mounted {
            // Lazy unmount as a fallback so a failing test never leaves a mount.
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        // `mount -o loop` sets autoclear: the loop device goes with the mount.
    }
}

/// A binary of guard-user (`guard-kms`, `guardctl`), built once per test
/// process.
pub fn guard_binary(name: &str) -> PathBuf {
    static PROFILE_DIR: OnceLock<PathBuf> = OnceLock::new();
    // In the guest the workspace is read-only: use what vm-test built.
    if let Some(dir) = std::env::var_os("GUARD_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    PROFILE_DIR
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "--quiet", "-p", "guard-user"]);
            cargo.args(["--bin", "guard-kms", "--bin", "guardctl"]);
            if profile_dir.ends_with("release") {
                cargo.arg("--release");
            }
            run(&mut cargo);
            profile_dir
        })
        .join(name)
}

pub fn guard_kms_binary() -> PathBuf {
    guard_binary("guard-kms")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running guard-kms on 127.0.0.1 with a fresh PKI, master key and store.
pub struct KmsServer {
    pub dir: TempDir,
    pub pki: PkiFiles,
    pub addr: SocketAddr,
    pub audit_log: PathBuf,
    /// Pass `--journal` (audit entries to the systemd journal).
    journal: bool,
    child: Option<Child>,
}

impl KmsServer {
    /// Starts with `--journal`; the caller keeps journald running.
    pub fn start_journaled() -> Self {
        let mut server = Self::start();
        server.journal = true;
        server.restart();
        server
    }

    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts on `port` (0: any free port).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(&CertificateAuthority::new("test KMS CA").unwrap(), port)
    }

    /// Starts with certificates from `ca`, which the test can use to issue more.
    pub fn start_with(ca: &CertificateAuthority, port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("guard-kms-")
            .tempdir()
            .unwrap();
        let pki = write_pki_with(
            ca,
            &dir.path().join("pki"),
            &["localhost", "127.0.0.1"],
            "guardd",
            30,
        )
        .unwrap();
        let master = dir.path().join("master.key");
        run(Command::new(guard_kms_binary())
            .arg("init-master-key")
            .arg(&master));
        let mut server = Self {
            audit_log: dir.path().join("audit.log"),
            dir,
            pki,
            addr: ([127, 0, 0, 1], port).into(),
            journal: false,
            child: None,
        };
        server.spawn(port);
        server
    }

    fn spawn(&mut self, port: u16) {
        let mut child = Command::new(guard_kms_binary())
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--master-key")
            .arg(self.dir.path().join("master.key"))
            .arg("--client-ca")
            .arg(&self.pki.ca_cert)
            .arg("--cert")
            .arg(&self.pki.server_cert)
            .arg("--key")
            .arg(&self.pki.server_key)
            .arg("--audit-log")
            .arg(&self.audit_log)
            .args(self.journal.then_some("--journal"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting guard-kms");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("guard-kms listening on ")
            .unwrap_or_else(|| panic!("guard-kms printed {line:?}"));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.addr.port();
        self.spawn(port);
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn client_tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.pki.ca_cert.clone(),
            cert: self.pki.client_cert.clone(),
            key: self.pki.client_key.clone(),
        }
    }

    pub fn config(&self) -> KmsConfig {
        KmsConfig::GuardKms {
            url: self.url(),
            tls: self.client_tls(),
        }
    }

    pub fn client(&self) -> Arc<dyn Kms> {
        self.config().connect().unwrap()
    }

    /// Writes the client configuration file guardctl reads.
    pub fn write_config(&self, path: &Path) {
        std::fs::write(path, serde_json::to_vec_pretty(&self.config()).unwrap()).unwrap();
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A volume store in its own temporary directory.
pub struct Store {
    pub dir: TempDir,
    pub store: VolumeStore,
}

impl Store {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("guard-volumes-")
            .tempdir()
            .unwrap();
        let store = VolumeStore::new(dir.path());
        Self { dir, store }
    }

    /// Names of the files in the store (to show nothing changed).
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// One entry of a directory tree: relative path, contents (symlink target,
/// or the OS error number if the file cannot be read, as when its volume is
/// locked), mode, owner and group.
pub type Entry = (String, Result<Vec<u8>, i32>, u32, u32, u32);

/// Everything under `dir`, sorted, to compare a tree byte for byte before
/// and after.
pub fn snapshot(dir: &Path) -> Vec<Entry> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<Entry>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let data = if meta.file_type().is_symlink() {
                Ok(std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes())
            } else if meta.is_file() {
                read(&path)
            } else {
                Ok(Vec::new())
            };
            out.push((rel, data, meta.mode(), meta.uid(), meta.gid()));
            if meta.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// `guardctl` run as a user would, with its own volume store and the
/// configuration of a test KMS.
pub struct Guardctl {
    pub volume_dir: PathBuf,
    pub kms_config: PathBuf,
}

impl Guardctl {
    /// Records go to `store`; the KMS configuration is written next to the
    /// KMS's own files, so that `store` holds only what guardctl writes.
    pub fn new(store: &Store, kms: &KmsServer) -> Self {
        let kms_config = kms.dir.path().join("client.json");
        kms.write_config(&kms_config);
        Self {
            volume_dir: store.dir.path().to_path_buf(),
            kms_config,
        }
    }

    /// The command, ready for more arguments.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(guard_binary("guardctl"));
        command
            .arg("--volume-dir")
            .arg(&self.volume_dir)
            .arg("--kms-config")
            .arg(&self.kms_config)
            .args(args)
            .env_remove("GUARD_VOLUME_DIR")
            .env_remove("GUARD_KMS_CONFIG")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> CliRun {
        CliRun::of(args, self.command(args).output().expect("running guardctl"))
    }

    /// A guardctl with the same volume store that talks to the guard-kms at
    /// `url` presenting `tls`; its configuration is written to `config`.
    pub fn with_kms(&self, config: PathBuf, url: String, tls: TlsFiles) -> Guardctl {
        let json = KmsConfig::GuardKms { url, tls };
        std::fs::write(&config, serde_json::to_vec(&json).unwrap()).unwrap();
        Guardctl {
            volume_dir: self.volume_dir.clone(),
            kms_config: config,
        }
    }
}

/// What a guardctl run printed and how it exited.
#[derive(Debug)]
pub struct CliRun {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn of(args: &[&str], output: Output) -> Self {
        Self {
            args: args.join(" "),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Exit status 0; returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "guardctl {} failed:\n{}{}",
            self.args,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Exit status 1 and an error on stderr containing every one of `needles`.
    pub fn fails_with(&self, needles: &[&str]) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "guardctl {} should have failed:\n{}{}",
            self.args,
            self.stdout,
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "guardctl {}: the error should mention {needle:?}:\n{}",
                self.args,
                self.stderr
            );
        }
        &self.stderr
    }
}

/// A TLS server with a valid certificate from `kms`'s PKI that answers
/// every request with `reply`, for up to 8 connections, one at a time.
pub fn garbage_kms(kms: &KmsServer, reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let certs = guard::kms::load_certs(&kms.pki.server_cert).unwrap();
    let key = guard::kms::load_private_key(&kms.pki.server_key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(guard::kms::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut tcp) = stream else { continue };
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            // Everything the client sends first (it is done when it goes
            // quiet): closing with part of it unread would make the kernel
            // reset the connection, and the client would see that instead
            // of the garbage. Works for HTTP and KMIP requests alike.
            let _ = tcp.set_read_timeout(Some(std::time::Duration::from_millis(300)));
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut buf = [0u8; 4096];
            while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tls.write_all(reply);
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            let _ = tcp.shutdown(std::net::Shutdown::Write);
            let _ = std::io::copy(&mut tcp, &mut std::io::sink());
        }
    });
    format!("https://127.0.0.1:{port}")
}

/// Client TLS files with a certificate issued by some CA, written to `dir`
/// (created here; it must not exist yet).
pub fn client_files(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> TlsFiles {
    std::fs::create_dir(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("c.pem"), cert_pem).unwrap();
    std::fs::write(dir.join("c.key"), key_pem).unwrap();
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("c.pem"),
        key: dir.join("c.key"),
    }
}

/// A certificate from `ca` that expired yesterday (valid for the 29 days before).
pub fn expired_certificate(
    ca: &CertificateAuthority,
    common_name: &str,
    names: &[&str],
    role: Role,
) -> Issued {
    let now = OffsetDateTime::now_utc();
    ca.issue_with_validity(
        common_name,
        names,
        role,
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap()
}

/// A client of the guard-kms at `url` that presents `tls`.
pub fn guard_kms_client(url: String, tls: TlsFiles) -> Arc<dyn Kms> {
    KmsConfig::GuardKms { url, tls }.connect().unwrap()
}

/// Reads a file, returning the OS error number on failure.
pub fn read(path: &Path) -> Result<Vec<u8>, i32> {
    std::fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

pub use guard_tests::wait_until;

/// A real PyKMIP server (Debian `python3-pykmip`) on 127.0.0.1 with its own
/// certificates, policy directory and SQLite database.
pub struct KmipServer {
    pub dir: TempDir,
    pub pki: PkiFiles,
    pub port: u16,
    child: Option<Child>,
}

impl KmipServer {
    pub fn start() -> Self {
        let binary = Path::new("/usr/bin/pykmip-server");
        assert!(
            binary.exists(),
            "PyKMIP is not installed: `apt-get install python3-pykmip` (the KMIP tests need a real server)"
        );
        let dir = tempfile::Builder::new()
            .prefix("guard-kmip-")
            .tempdir()
            .unwrap();
        let ca = CertificateAuthority::new("test KMIP CA").unwrap();
        let pki = write_pki_with(
            &ca,
            &dir.path().join("pki"),
            &["localhost", "127.0.0.1"],
            "guardd",
            30,
        )
        .unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        // PyKMIP reads every setting from its configuration file.
        let port = free_port();
        let config = dir.path().join("server.conf");
        let p = |path: &Path| path.display().to_string();
        std::fs::write(
            &config,
            format!(
                "[server]\nhostname=127.0.0.1\nport={port}\ncertificate_path={}\nkey_path={}\n\
                 ca_path={}\nauth_suite=TLS1.2\npolicy_path={}\nenable_tls_client_auth=True\n\
                 database_path={}\nlogging_level=INFO\n",
                p(&pki.server_cert),
                p(&pki.server_key),
                p(&pki.ca_cert),
                p(&policies),
                p(&dir.path().join("kmip.db")),
            ),
        )
        .unwrap();
        // In a process group of its own: PyKMIP forks a policy-directory
        // monitor that outlives a kill of the server alone.
        let child = Command::new(binary)
            .arg("-f")
            .arg(&config)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting pykmip-server");
        let server = Self {
            dir,
            pki,
            port,
            child: Some(child),
        };
        let up = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "pykmip-server did not listen on port {port}: {}",
            server.log()
        );
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn config(&self) -> KmsConfig {
        KmsConfig::Kmip {
            address: format!("127.0.0.1:{}", self.port),
            server_name: "localhost".into(),
            tls: TlsFiles {
                ca: self.pki.ca_cert.clone(),
                cert: self.pki.client_cert.clone(),
                key: self.pki.client_key.clone(),
            },
        }
    }

    pub fn client(&self) -> Arc<dyn Kms> {
        self.config().connect().unwrap()
    }
}

impl Drop for KmipServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of the server's own process group.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}
