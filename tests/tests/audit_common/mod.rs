//! Helpers shared by the audit trail tests (issue 4).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guard::audit::chain::{CHECKPOINTS_FILE, RECORDS_FILE};
use guard::audit::checkpoint::{load_or_create_signing_key, Checkpoint};
use guard::audit::forward::CollectorDestination;
use guard::audit::record::{Record, GENESIS};
use guard::audit::tls::{TestPki, TlsFiles};
use guard::audit::verify::{CopySpec, Role};
use serde_json::{json, Value};

/// Workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds guard-user's binaries once per test process and returns the bin dir.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["build", "-q", "-p", "guard-user", "--bin", "guard-logd"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building guard-logd failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root().join("target"));
        target.join("debug")
    })
    .clone()
}

pub fn event(i: u64) -> Value {
    json!({"kind": "denied", "path": format!("/var/lib/mysql/t{i}.ibd"), "inode": 1000 + i,
           "pid": 42, "uid": 0, "exe": "/usr/bin/cat", "access": "read", "rule": null})
}

/// Reads every record of a copy directory.
pub fn read_records(dir: &Path) -> Vec<Record> {
    let text = std::fs::read(dir.join(RECORDS_FILE)).unwrap();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Record::parse(l).unwrap())
        .collect()
}

/// What an attacker holding the host key can do: rewrite the chain from
/// (time, event) entries, re-hash it and re-sign every checkpoint.
pub fn rewrite_chain(dir: &Path, host: &str, entries: &[(i64, Value)], key_file: &Path) {
    let key = load_or_create_signing_key(key_file).unwrap();
    let mut prev = GENESIS;
    let mut lines = String::new();
    let mut hashes = Vec::new();
    for (i, (time, event)) in entries.iter().enumerate() {
        let record = Record::new(i as u64 + 1, *time, host, event.clone(), prev);
        prev = record.hash;
        hashes.push(record.hash);
        lines.push_str(&record.to_line());
        lines.push('\n');
    }
    std::fs::write(dir.join(RECORDS_FILE), lines).unwrap();
    let mut checkpoints = String::new();
    for seq in (100..=hashes.len()).step_by(100) {
        let cp = Checkpoint::sign(&key, host, seq as u64, &hashes[seq - 1], 1);
        checkpoints.push_str(&cp.to_line());
        checkpoints.push('\n');
    }
    std::fs::write(dir.join(CHECKPOINTS_FILE), checkpoints).unwrap();
    let _ = std::fs::remove_file(dir.join("receipts.jsonl"));
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Starts three collectors, `collector1` to `collector3`, each storing in a
/// folder of its name under `dir`.
pub fn start_collectors(dir: &Path, pki: &TestPki) -> Vec<Logd> {
    (1..=3)
        .map(|i| {
            let name = format!("collector{i}");
            Logd::start(pki, &dir.join(&name), &name, "127.0.0.1:0")
        })
        .collect()
}

/// What `verify` is to compare: `local` as the local copy, then each
/// `(label, folder)` as a remote copy.
pub fn copy_specs(
    local: &Path,
    remotes: impl IntoIterator<Item = (String, PathBuf)>,
) -> Vec<CopySpec> {
    let mut specs = vec![CopySpec {
        label: "local".into(),
        path: local.to_path_buf(),
        role: Role::Local,
    }];
    specs.extend(remotes.into_iter().map(|(label, path)| CopySpec {
        label,
        path,
        role: Role::Remote,
    }));
    specs
}

/// A guard-logd process.
pub struct Logd {
    pub name: String,
    pub store: PathBuf,
    pub address: String,
    pub key_hex: String,
    files: TlsFiles,
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Logd {
    /// Starts a collector named `name` (its certificate names it too), on
    /// `address` ("127.0.0.1:0" for a free port).
    pub fn start(pki: &TestPki, store: &Path, name: &str, address: &str) -> Logd {
        let files = pki.issue(name).unwrap();
        let mut logd = Logd {
            name: name.into(),
            store: store.to_path_buf(),
            address: address.into(),
            key_hex: String::new(),
            files,
            child: None,
            stderr_path: store.with_extension("stderr"),
        };
        logd.spawn();
        logd
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.store).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        // The port of a collector just stopped can take a moment to free.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(bin_dir().join("guard-logd"))
                .args(["--name", &self.name, "--listen", &self.address])
                .arg("--store")
                .arg(&self.store)
                .arg("--ca")
                .arg(&self.files.ca)
                .arg("--cert")
                .arg(&self.files.cert)
                .arg("--tls-key")
                .arg(&self.files.key)
                .stdout(Stdio::piped())
                .stderr(stderr.try_clone().unwrap())
                .spawn()
                .expect("starting guard-logd");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(pos) = words.iter().position(|w| *w == "on") {
                self.address = words[pos + 1].to_owned();
                self.key_hex = words[pos + 3].to_owned();
                self.child = Some(child);
                return;
            }
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "guard-logd {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address, with the same store and keys.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.store.join("hosts").join(host)
    }

    /// This collector as a destination of a host that presents `tls`; its
    /// receipts must be signed with this collector's key.
    pub fn destination(&self, tls: &TlsFiles) -> CollectorDestination {
        CollectorDestination {
            name: self.name.clone(),
            address: self.address.clone(),
            server_name: self.name.clone(),
            tls: tls.clone(),
            collector_key: Some(self.key_hex.clone()),
        }
    }

    /// The copy this collector holds of `host`'s log, labelled with its name.
    pub fn copy_of(&self, host: &str) -> (String, PathBuf) {
        (self.name.clone(), self.host_dir(host))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Logd {
    fn drop(&mut self) {
        self.stop();
    }
}

pub use guard_tests::wait_until;

/// A real rsyslog (Debian `rsyslog` + `rsyslog-gnutls`) receiving RFC 5425
/// syslog over TLS on a loopback port, writing what it parses to `out`.
pub struct Rsyslog {
    pub dir: PathBuf,
    pub port: u16,
    pub out: PathBuf,
    pub files: TlsFiles,
    child: Option<Child>,
}

pub fn rsyslogd_path() -> PathBuf {
    let path = PathBuf::from("/usr/sbin/rsyslogd");
    assert!(
        path.exists() && Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists(),
        "rsyslog with TLS is missing: install the Debian packages rsyslog and rsyslog-gnutls \
         (cargo xtask setup)"
    );
    path
}

impl Rsyslog {
    pub fn start(pki: &TestPki, dir: &Path) -> Rsyslog {
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let files = pki.issue("rsyslog").unwrap();
        let out = dir.join("received.log");
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="guard" type="string" string="%hostname% %app-name% %msgid% %structured-data% %msg%\n")
action(type="omfile" file="{out}" template="guard")
"#,
            work = dir.join("work").display(),
            ca = files.ca.display(),
            cert = files.cert.display(),
            key = files.key.display(),
            out = out.display(),
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let mut rsyslog = Rsyslog {
            dir: dir.to_path_buf(),
            port,
            out,
            files,
            child: None,
        };
        rsyslog.spawn();
        rsyslog
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))
            .unwrap();
        let child = Command::new(rsyslogd_path())
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting rsyslogd");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(15), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "rsyslogd did not listen on {port}: {}",
            std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
        );
    }

    /// Stops it the way an operator would (SIGTERM), letting it flush.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The messages received so far: (hostname, app-name, msgid, structured data, msg).
    pub fn received(&self) -> Vec<(String, String, String, String, String)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.splitn(4, ' ');
                let host = parts.next()?.to_owned();
                let app = parts.next()?.to_owned();
                let msgid = parts.next()?.to_owned();
                let rest = parts.next()?;
                let end = rest.find("] ")?;
                Some((
                    host,
                    app,
                    msgid,
                    rest[..=end].to_owned(),
                    rest[end + 2..].to_owned(),
                ))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}
