//! `guardctl selftest --attack`: tries every known way around the guard
//! against the live policy, as root, and reports for each whether it was
//! blocked and whether guard's alert for it reached the journal.
//!
//! Each technique runs in a fresh process (`guardctl selftest row`) so its
//! journal alerts can be told apart by pid, a crash or hang in one cannot
//! spoil the others, and namespace or chroot changes die with it. Rows that
//! need a process the policy allows use the accomplice: a copy of guardctl at
//! an allowed path, run as `ACCOMPLICE selftest accomplice` (see
//! [`accomplice`]). The selftest never changes the policy.
//!
//! "Blocked" means the attacker obtained no byte of the protected file's
//! contents (reads), or the change was refused and did not happen
//! (mutations, mounts, kernel code loading), or the plaintext is not on the
//! raw device.

pub mod accomplice;
mod alerts;
mod block_targets;
mod config;
mod crash_dumps;
mod exe_switch;
mod fds;
mod files;
mod hardware;
mod kernel;
mod mounts;
mod procfs;
mod report;
mod swap;
mod sys;
mod trusted;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use accomplice::{AccompliceArgs, AccompliceInfo, Client};
pub use report::{Outcome, Row};

/// `guardctl selftest ...`
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SelftestArgs {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    attack: AttackArgs,
}

/// What `guardctl selftest --attack` attacks and with what.
#[derive(Debug, Clone, clap::Args)]
pub struct AttackArgs {
    /// Try every attack technique against the live guard (the only selftest so far).
    #[arg(long)]
    pub attack: bool,
    /// A protected directory of the applied policy.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A protected file in DIR to attack (default: one the accomplice makes).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A copy of guardctl that the policy allows to read, write, create,
    /// delete, rename and link in DIR; plays the allowed program.
    #[arg(long)]
    pub accomplice: Option<PathBuf>,
    /// The block device holding DIR's filesystem; the markers must not be in its bytes.
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// Text known to be in the protected files (repeatable), looked for on --device.
    #[arg(long = "marker")]
    pub markers: Vec<String>,
    /// A configuration file of the allowed program that the policy lists as
    /// `immutable` (rows `config-*` try to change it and its folder).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// guardd's KMS configuration (row `kms-client-key` tries to read the
    /// private key it names).
    #[arg(long)]
    pub kms_config: Option<PathBuf>,
    /// Only the techniques whose id contains this text (repeatable).
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Helper {
    /// (internal) Play the allowed program for the attack suite.
    #[command(hide = true)]
    Accomplice(AccompliceArgs),
    /// (internal) Run one technique and print what happened as JSON.
    #[command(hide = true)]
    Row {
        #[arg(long)]
        technique: String,
        /// The [`Target`] as JSON.
        #[arg(long)]
        target: String,
    },
    /// (internal) Print a file (used to run an allowed copy through ld.so).
    #[command(hide = true)]
    Dump { file: PathBuf },
    /// (internal) Run through ld.so: take ALLOWED as this process's
    /// executable, then print FILE.
    #[command(hide = true)]
    ExeSwitch { allowed: PathBuf, file: PathBuf },
    /// (internal) Abort in a folder with the core limit raised (run as the
    /// allowed program: where does its core go?).
    #[command(hide = true)]
    Crash {
        #[arg(long = "in")]
        dir: PathBuf,
    },
}

/// Runs `guardctl selftest`; the exit code says whether every row passed.
pub fn run(args: SelftestArgs) -> Result<ExitCode> {
    match args.helper {
        Some(Helper::Accomplice(a)) => accomplice::serve(a).map(|()| ExitCode::SUCCESS),
        Some(Helper::Row { technique, target }) => run_row_here(&technique, &target),
        Some(Helper::Dump { file }) => {
            let data = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            std::io::Write::write_all(&mut std::io::stdout(), &data)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Helper::Crash { dir }) => match crash_dumps::crash_in(&dir)? {},
        Some(Helper::ExeSwitch { allowed, file }) => {
            match exe_switch::take_over_and_print(&allowed, &file)? {}
        }
        None if args.attack.attack => run_attack(&args.attack),
        None => bail!("say what to test: --attack (see guardctl selftest --help)"),
    }
}

/// Everything a technique needs to know, handed to its process as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// The protected directory (canonical).
    pub dir: PathBuf,
    /// The protected file whose contents the reading techniques go after.
    pub file: PathBuf,
    /// A folder of the selftest outside DIR on the same filesystem.
    pub scratch: PathBuf,
    pub accomplice: Option<AccompliceInfo>,
    /// The allowed binary (the accomplice's path), if given.
    pub accomplice_exe: Option<PathBuf>,
    /// A protected file made for this row alone (mutating techniques).
    pub victim: Option<PathBuf>,
    pub device: Option<PathBuf>,
    pub markers: Vec<String>,
    pub config: Option<PathBuf>,
    /// The private key of guardd's KMS configuration (`--kms-config`).
    pub kms_key: Option<PathBuf>,
}

impl Target {
    /// `file` relative to `dir`.
    pub fn relative_file(&self) -> Result<&Path> {
        self.file
            .strip_prefix(&self.dir)
            .with_context(|| format!("{} is not in {}", self.file.display(), self.dir.display()))
    }

    pub fn accomplice(&self) -> Result<&AccompliceInfo> {
        self.accomplice
            .as_ref()
            .context("this technique needs --accomplice")
    }

    pub fn victim(&self) -> Result<&Path> {
        self.victim
            .as_deref()
            .context("this technique needs a victim file")
    }
}

/// What one technique did, as its process reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    /// No byte of the contents was obtained / the change did not happen.
    pub blocked: bool,
    /// What happened, e.g. "EPERM at open" or "read 4096 bytes".
    pub observed: String,
    /// Other processes that acted for the attacker (their alerts count too).
    #[serde(default)]
    pub pids: Vec<u32>,
}

impl Attempt {
    pub fn blocked(observed: impl Into<String>) -> Attempt {
        Attempt {
            blocked: true,
            observed: observed.into(),
            pids: Vec::new(),
        }
    }

    pub fn not_blocked(observed: impl Into<String>) -> Attempt {
        Attempt {
            blocked: false,
            observed: observed.into(),
            pids: Vec::new(),
        }
    }

    /// Blocked if `bytes` is zero: a read-type outcome.
    pub fn from_bytes(bytes: usize, how: &str) -> Attempt {
        if bytes == 0 {
            Attempt::blocked(format!("{how}: no data"))
        } else {
            Attempt::not_blocked(format!("{how}: got {bytes} bytes of the file"))
        }
    }

    pub fn with_pid(mut self, pid: u32) -> Attempt {
        self.pids.push(pid);
        self
    }
}

/// What a technique needs from the run to be tried at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub accomplice: bool,
    /// A fresh protected file of its own (it changes or destroys it).
    pub victim: bool,
    pub device: bool,
    /// The allowed program's configuration file (`--config`).
    pub config: bool,
    /// The host's KMS client key (`--kms-config`).
    pub kms_key: bool,
}

/// Whether a refusal of this technique must show up as a guard alert.
#[derive(Debug, Clone, Copy)]
pub enum AlertRule {
    /// A guard denial from the attacking processes must be in the journal.
    Denial,
    /// Nothing for guard to deny; the defence is elsewhere (said why).
    NotApplicable(&'static str),
}

/// One way around the guard.
pub struct Technique {
    /// Short stable id (`--only`, JSON).
    pub id: &'static str,
    /// What is tried, for the table.
    pub name: &'static str,
    /// What a working guard does.
    pub expected: &'static str,
    pub needs: Needs,
    pub alert: AlertRule,
    pub run: fn(&Target) -> Result<Attempt>,
}

const ACCOMPLICE: Needs = Needs {
    accomplice: true,
    ..NOTHING
};
const VICTIM: Needs = Needs {
    accomplice: true,
    victim: true,
    ..NOTHING
};
const NOTHING: Needs = Needs {
    accomplice: false,
    victim: false,
    device: false,
    config: false,
    kms_key: false,
};

/// Every technique, in the order they run. Kept in one list so the table,
/// the guest test and the README cannot disagree about what is tried.
pub fn catalog() -> Vec<Technique> {
    let mut all = Vec::new();
    all.extend(files::techniques());
    all.extend(procfs::techniques());
    all.extend(fds::techniques());
    all.extend(mounts::techniques());
    all.extend(kernel::techniques());
    all.extend(hardware::techniques());
    all.extend(crash_dumps::techniques());
    all.extend(swap::techniques());
    all.extend(block_targets::techniques());
    all.extend(config::techniques());
    all.extend(trusted::techniques());
    all
}

/// How long one technique may take before it counts as an error.
const ROW_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for guardd to journal the alerts of the last rows.
const ALERT_WAIT: Duration = Duration::from_secs(15);

fn run_attack(args: &AttackArgs) -> Result<ExitCode> {
    let dir_arg = args
        .dir
        .as_ref()
        .context("--attack needs --dir PROTECTED_DIR")?;
    let dir = dir_arg
        .canonicalize()
        .with_context(|| format!("--dir {}", dir_arg.display()))?;
    if !dir.is_dir() {
        bail!("--dir {} is not a directory", dir.display());
    }
    if args.file.is_none() && args.accomplice.is_none() {
        bail!("give --file (a protected file in --dir) or --accomplice (it makes one)");
    }
    let started_at = SystemTime::now();
    let scratch = make_scratch(&dir)?;
    let result = attack_with_scratch(args, &dir, &scratch, started_at);
    // The scratch folder may hold mount points and copies that got out.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn attack_with_scratch(
    args: &AttackArgs,
    dir: &Path,
    scratch: &Path,
    started_at: SystemTime,
) -> Result<ExitCode> {
    let token = random_token()?;
    let mut accomplice = match &args.accomplice {
        Some(exe) => Some(Client::start(
            exe,
            dir,
            args.file.as_deref(),
            scratch,
            &token,
        )?),
        None => None,
    };
    let file = match (&args.file, &accomplice) {
        (Some(file), _) => absolute_in(dir, file)?,
        (None, Some(a)) => a.info.file.clone(),
        (None, None) => unreachable!("checked in run_attack"),
    };
    let mut markers = args.markers.clone();
    if args.file.is_none() {
        markers.push(token.clone());
    }
    let target = Target {
        dir: dir.to_path_buf(),
        file,
        scratch: scratch.to_path_buf(),
        accomplice: accomplice.as_ref().map(|a| a.info.clone()),
        accomplice_exe: args.accomplice.clone(),
        victim: None,
        device: args.device.clone(),
        markers,
        config: args.config.clone(),
        kms_key: args.kms_config.as_deref().map(kms_key).transpose()?,
    };
    let before = accomplice.as_mut().map(Client::read_file).transpose()?;

    let mut rows = Vec::new();
    for technique in catalog() {
        if !args.only.is_empty() && !args.only.iter().any(|o| technique.id.contains(o.as_str())) {
            continue;
        }
        rows.push(run_row(&technique, &target, accomplice.as_mut()));
    }

    let after = accomplice.as_mut().map(Client::read_file).transpose()?;
    let allowed = report::AllowedProgram::from_reads(before, after);
    if let Some(a) = accomplice.take() {
        a.finish()?;
    }
    alerts::attach(&mut rows, started_at, ALERT_WAIT)?;
    let summary = report::Summary::of(&rows, allowed.as_ref());
    if args.json {
        println!("{}", report::json(&rows, allowed.as_ref(), &summary));
    } else {
        print!("{}", report::table(&rows, allowed.as_ref(), &summary));
    }
    Ok(summary.exit_code())
}

/// The private key a KMS configuration names.
fn kms_key(config: &Path) -> Result<PathBuf> {
    let config = crate::kms::KmsConfig::load(config).context("--kms-config")?;
    Ok(config.tls().key.clone())
}

/// Runs one technique in its own process and collects what it did.
fn run_row(technique: &Technique, target: &Target, accomplice: Option<&mut Client>) -> Row {
    let row_start = SystemTime::now();
    let skip = |why: &str| Row::new(technique, Outcome::Skipped(why.to_string()), row_start);
    if technique.needs.accomplice && accomplice.is_none() {
        return skip("no accomplice");
    }
    if technique.needs.device && target.device.is_none() {
        return skip("no --device");
    }
    if technique.needs.device && target.markers.is_empty() {
        return skip("no --marker to look for");
    }
    if technique.needs.config && target.config.is_none() {
        return skip("no --config");
    }
    if technique.needs.kms_key && target.kms_key.is_none() {
        return skip("no --kms-config");
    }
    let mut target = target.clone();
    let mut accomplice = accomplice;
    if technique.needs.victim {
        let client = accomplice.as_mut().expect("checked above");
        match client.make_victim() {
            Ok(victim) => target.victim = Some(victim),
            Err(e) => {
                return Row::new(
                    technique,
                    Outcome::Error(format!(
                        "the accomplice could not make a victim file: {e:#}"
                    )),
                    row_start,
                )
            }
        }
    }
    let outcome = match run_in_child(technique.id, &target) {
        Ok((pid, attempt)) => Outcome::Tried {
            pids: std::iter::once(pid)
                .chain(attempt.pids.iter().copied())
                .collect(),
            attempt,
        },
        Err(e) => Outcome::Error(format!("{e:#}")),
    };
    if let (Some(victim), Some(client)) = (&target.victim, accomplice) {
        // Whatever the attack left (or moved), the accomplice removes it.
        let _ = client.remove(victim);
    }
    Row::new(technique, outcome, row_start)
}

/// `guardctl selftest row`: the worker pid and its report.
fn run_in_child(technique: &str, target: &Target) -> Result<(u32, Attempt)> {
    let exe = std::env::current_exe().context("finding guardctl's own binary")?;
    let mut child = Command::new(&exe)
        .args(["selftest", "row", "--technique", technique, "--target"])
        .arg(serde_json::to_string(target)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + ROW_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no answer within {ROW_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the technique failed to run ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let attempt = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the technique's report is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((pid, attempt))
}

/// Inside the worker process: run the technique, print its [`Attempt`].
fn run_row_here(id: &str, target: &str) -> Result<ExitCode> {
    let target: Target = serde_json::from_str(target).context("--target is not a Target")?;
    let technique = catalog()
        .into_iter()
        .find(|t| t.id == id)
        .with_context(|| format!("no technique {id:?}"))?;
    let attempt = (technique.run)(&target)?;
    println!("{}", serde_json::to_string(&attempt)?);
    Ok(ExitCode::SUCCESS)
}

/// A folder next to DIR (same filesystem: links and renames out need it).
fn make_scratch(dir: &Path) -> Result<PathBuf> {
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent folder", dir.display()))?;
    let scratch = parent.join(format!(".guard-selftest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    Ok(scratch)
}

/// `file` made absolute and checked to lie in `dir` (names only: it cannot be opened).
fn absolute_in(dir: &Path, file: &Path) -> Result<PathBuf> {
    let absolute = if file.is_absolute() {
        file.to_path_buf()
    } else {
        std::env::current_dir()?.join(file)
    };
    let parent = absolute
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .with_context(|| format!("--file {}: no such folder", file.display()))?;
    let name = absolute
        .file_name()
        .with_context(|| format!("--file {} names no file", file.display()))?;
    let absolute = parent.join(name);
    if !absolute.starts_with(dir) {
        bail!(
            "--file {} is not in --dir {}",
            absolute.display(),
            dir.display()
        );
    }
    // stat is not guarded: it tells us the file is there and not empty.
    let meta =
        std::fs::metadata(&absolute).with_context(|| format!("--file {}", absolute.display()))?;
    if !meta.is_file() || meta.len() == 0 {
        bail!(
            "--file {} must be a non-empty regular file",
            absolute.display()
        );
    }
    Ok(absolute)
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    Ok(format!("guard-selftest-{}", hex::encode(bytes)))
}

/// Microseconds since the epoch (journal timestamps are in these).
fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}
