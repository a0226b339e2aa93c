//! The MariaDB scenario's moving parts, for the guest test (tests/tests/mariadb.rs)
//! and the MariaDB benchmark (`guard-bench mariadb`): a guard-kms on loopback, a
//! Debian MariaDB whose data directory is wherever the caller says, started and
//! stopped by Debian's own launcher (/etc/init.d/mariadb: mysqld_safe supervising
//! mariadbd), and SQL through the `mariadb` client.
//!
//! Everything runs as root inside the QEMU guest, whose /etc is a writable overlay
//! (the my.cnf drop-in goes there) and whose /scratch is a fresh ext4 with the
//! encrypt feature.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::guest::{bin, SigningKeys};

/// MariaDB's server binary: the only program the policy lets read and write the data.
pub const SERVER: &str = "/usr/sbin/mariadbd";
/// Debian's mariabackup (`/usr/bin/mariabackup` is a symlink to it).
pub const BACKUP: &str = "/usr/bin/mariadb-backup";
/// The folders the server and the backup tool may load code from.
pub const LIBRARIES: [&str; 2] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/mysql/plugin"];
/// mariadbd's supervisor under the SysV launcher: it restarts the server
/// should it die, and starts it through nohup.
pub const SUPERVISOR: &str = "/usr/bin/mysqld_safe";
pub const NOHUP: &str = "/usr/bin/nohup";
/// The SysV launcher Debian uses when systemd is not PID 1.
pub const LAUNCHER: &str = "/etc/init.d/mariadb";
/// Where the server settings for this scenario go (the guest's /etc is an overlay).
pub const DROP_IN: &str = "/etc/mysql/mariadb.conf.d/90-guard.cnf";
/// What the server and its launcher read their settings from, immutable
/// under the policy: root cannot restart the server with options of its own
/// (`skip-grant-tables`) by editing them.
pub const CONFIGURATION: [&str; 4] = [
    "/etc/mysql",
    "/etc/my.cnf",
    "/etc/default/mariadb",
    LAUNCHER,
];
/// Files of CONFIGURATION that Debian does not ship but the server (first
/// in its search order) or the launcher would read if root created them:
/// created empty, so that they exist to be kept as they are.
const ABSENT_CONFIGURATION: [&str; 2] = ["/etc/my.cnf", "/etc/default/mariadb"];

/// Runs a command, returning its output; an error only if it cannot be started.
pub fn run(command: &mut Command) -> Result<Output> {
    let shown = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {shown}"))
}

/// Runs a command and fails, with its output, unless it exits with 0.
pub fn run_ok(command: &mut Command) -> Result<Output> {
    let shown = format!("{command:?}");
    let output = run(command)?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// A guard-kms server on 127.0.0.1 with its own PKI and master key, as a
/// separate process; killed when dropped.
pub struct LocalKms {
    pub dir: PathBuf,
    /// The client configuration guardctl and guardd read (`--kms-config`).
    pub config: PathBuf,
    pub audit_log: PathBuf,
    child: Child,
}

impl LocalKms {
    /// Starts guard-kms in `dir` (created; must not hold an old store). With
    /// `journal`, its audit entries go to the journal too.
    pub fn start(dir: &Path, journal: bool) -> Result<LocalKms> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let kms = bin("guard-kms");
        let pki = dir.join("pki");
        run_ok(Command::new(&kms).arg("gen-pki").arg("--out").arg(&pki))?;
        run_ok(
            Command::new(&kms)
                .arg("init-master-key")
                .arg(dir.join("master.key")),
        )?;
        let audit_log = dir.join("audit.log");
        let mut child = Command::new(&kms)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--master-key")
            .arg(dir.join("master.key"))
            .arg("--client-ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .arg("--audit-log")
            .arg(&audit_log)
            .args(journal.then_some("--journal"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting guard-kms")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading guard-kms's first line")?;
        let Some(address) = line.trim().strip_prefix("guard-kms listening on ") else {
            let _ = child.kill();
            bail!("guard-kms printed {line:?} instead of its address");
        };
        let config = dir.join("kms.json");
        let text = serde_json::json!({
            "kind": "guard-kms",
            "url": format!("https://{address}"),
            "tls": {
                "ca": pki.join("ca.pem"),
                "cert": pki.join("client.pem"),
                "key": pki.join("client.key"),
            }
        });
        std::fs::write(&config, text.to_string())
            .with_context(|| format!("writing {}", config.display()))?;
        Ok(LocalKms {
            dir: dir.to_path_buf(),
            config,
            audit_log,
            child,
        })
    }
}

impl Drop for LocalKms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `guardctl` with a volume store and KMS configuration.
pub struct Keys {
    pub volume_dir: PathBuf,
    pub kms_config: PathBuf,
}

impl Keys {
    pub fn guardctl(&self, args: &[&str]) -> Output {
        Command::new(bin("guardctl"))
            .arg("--volume-dir")
            .arg(&self.volume_dir)
            .arg("--kms-config")
            .arg(&self.kms_config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running guardctl")
    }

    /// The flags that make guardd unlock these volumes at start.
    pub fn guardd_args(&self) -> Vec<String> {
        vec![
            "--volume-dir".into(),
            self.volume_dir.display().to_string(),
            "--kms-config".into(),
            self.kms_config.display().to_string(),
        ]
    }
}

/// Debian's MariaDB with its data directory at `datadir`.
pub struct MariaDb {
    pub datadir: PathBuf,
}

impl MariaDb {
    /// Points the server at `datadir` through a my.cnf drop-in. `user = mysql`
    /// because without systemd it is mysqld_safe that drops root; the buffer pool
    /// and redo log are small because the guest is emulated and has 2 GiB. Nothing
    /// else departs from Debian's defaults.
    pub fn configure(datadir: &Path) -> Result<MariaDb> {
        let text = format!(
            "# Written by guard's MariaDB scenario.\n[mysqld]\nuser = mysql\ndatadir = {}\n\
             innodb_buffer_pool_size = 64M\ninnodb_log_file_size = 16M\n",
            datadir.display()
        );
        std::fs::write(DROP_IN, text).with_context(|| format!("writing {DROP_IN}"))?;
        create_absent_configuration()?;
        Ok(MariaDb {
            datadir: datadir.to_path_buf(),
        })
    }

    /// `mariadb-install-db` into the (empty) data directory, owned by mysql.
    pub fn install(&self) -> Result<()> {
        run_ok(Command::new("chown").arg("mysql:mysql").arg(&self.datadir))?;
        run_ok(
            Command::new("mariadb-install-db")
                .arg("--user=mysql")
                .arg(format!("--datadir={}", self.datadir.display()))
                .arg("--skip-test-db"),
        )?;
        Ok(())
    }

    /// `/etc/init.d/mariadb start`: mysqld_safe starts and supervises mariadbd.
    pub fn start(&self) -> Result<Output> {
        run_ok(Command::new(LAUNCHER).arg("start"))
    }

    pub fn stop(&self) -> Result<Output> {
        run_ok(Command::new(LAUNCHER).arg("stop"))
    }

    /// Runs SQL as root over the server's socket; tab-separated rows without headers.
    pub fn sql(&self, statements: &str) -> Result<String> {
        let output = run_ok(Command::new("mariadb").args([
            "--batch",
            "--skip-column-names",
            "-e",
            statements,
        ]))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The pids of running mariadbd processes.
    pub fn server_pids() -> Vec<u32> {
        let output = Command::new("pidof").arg("mariadbd").output();
        output
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Creates (empty) the files of CONFIGURATION that Debian does not ship, so
/// that the policy can list them.
pub fn create_absent_configuration() -> Result<()> {
    for path in ABSENT_CONFIGURATION {
        if !Path::new(path).exists() {
            std::fs::write(path, "").with_context(|| format!("creating {path}"))?;
        }
    }
    Ok(())
}

/// The scenario's policy: mariadbd, started only by its supervisor
/// mysqld_safe (which runs it through `nohup`), may do everything a database
/// does in `datadir`; mariabackup (as root) may read it and each read is
/// logged; nobody else may touch it. Both load code only from the system's
/// library folder and MariaDB's plugin folder. The server's configuration
/// cannot be changed.
pub fn policy(datadir: &Path) -> serde_json::Value {
    serde_json::json!({
        "mode": "enforce",
        "protected": [{
            "path": datadir,
            "rules": [
                { "name": "mariadb server", "binaries": [SERVER],
                  "started_by": { "supervisor": SUPERVISOR, "through": [NOHUP] },
                  "access": ["read", "write", "create", "delete", "rename", "setattr"],
                  "effect": "allow" },
                { "name": "backups", "binaries": [BACKUP], "uid": 0,
                  "access": ["read"], "effect": "audit" }
            ]
        }],
        "libraries": LIBRARIES,
        "immutable": CONFIGURATION
    })
}

/// The off-host key a policy is signed with, and the serial to sign it with
/// (greater than that of the policy applied before it).
pub struct PolicySigning<'a> {
    pub keys: &'a SigningKeys,
    pub serial: u64,
}

/// Applies `policy` with guardctl: with `signing`, signs it first
/// (`guardctl policy sign`) and applies the signed file, as a guardd that
/// trusts a key requires (the scenario's); without, applies it as it is (the
/// benchmark's guardd trusts no key). An error, with guardctl's words, if
/// signing or applying fails.
pub fn apply_policy(policy: &serde_json::Value, signing: Option<&PolicySigning>) -> Result<Output> {
    let plain = std::env::temp_dir().join("guard-mariadb-policy.json");
    std::fs::write(&plain, policy.to_string())
        .with_context(|| format!("writing {}", plain.display()))?;
    let applied = match signing {
        Some(signing) => {
            let signed = std::env::temp_dir().join("guard-mariadb-policy.signed.json");
            run_ok(
                Command::new(bin("guardctl"))
                    .args(["policy", "sign", "--key"])
                    .arg(&signing.keys.key)
                    .arg("--serial")
                    .arg(signing.serial.to_string())
                    .arg("-o")
                    .arg(&signed)
                    .arg(&plain),
            )?;
            signed
        }
        None => plain,
    };
    run_ok(
        Command::new(bin("guardctl"))
            .arg("policy")
            .arg("apply")
            .arg(&applied),
    )
}

/// How many times `needle` occurs in the raw bytes of `device`, read with O_DIRECT
/// so nothing comes from the page cache. The filesystem is synced first.
pub fn raw_occurrences(device: &Path, needle: &[u8]) -> Result<usize> {
    use std::io::Read;
    run_ok(&mut Command::new("sync"))?;
    let mut dd = Command::new("dd")
        .arg(format!("if={}", device.display()))
        .args(["bs=4M", "iflag=direct", "status=none"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dd")?;
    let mut stdout = dd.stdout.take().expect("piped");
    let mut count = 0;
    let mut carry: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 4 << 20];
    loop {
        let read = stdout.read(&mut buffer).context("reading dd's output")?;
        if read == 0 {
            break;
        }
        carry.extend_from_slice(&buffer[..read]);
        count += memchr::memmem::find_iter(&carry, needle).count();
        // Keep the tail so a match across two reads is found once.
        let keep = needle.len().saturating_sub(1).min(carry.len());
        carry.drain(..carry.len() - keep);
    }
    let status = dd.wait().context("waiting for dd")?;
    if !status.success() {
        bail!("dd of {} failed ({status})", device.display());
    }
    Ok(count)
}
