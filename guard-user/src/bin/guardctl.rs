//! guardctl: the administrator's command line for guard.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use guard::control::{self, Request};
use guard::policy;
use guard::signing::{self, OrderAction, Payload, SignedDocument};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// guardd's control socket.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(flatten)]
    keys: guard::volume::cli::KeysOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate, apply and inspect policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Is the guard enforcing? Mode, policy hash, kernel, counters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop guardd: lifts its self-protection (journaled); the kernel keeps
    /// enforcing. With policy signing on, give a signed stop order.
    Stop {
        /// A stop order signed off-host (`guardctl order sign stop`).
        order: Option<PathBuf>,
    },
    /// Disarm the guard with an order signed off-host: guardd detaches the
    /// programs, removes its pins and exits. Nothing is enforced afterwards.
    Disarm {
        /// The signed disarm order (`guardctl order sign disarm`).
        order: PathBuf,
    },
    /// Signed orders (disarm, stop): get this guardd's nonce, sign off-host.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Off-host: make an Ed25519 key pair for signing policies and orders.
    /// Writes KEY_FILE (private, mode 0600) and KEY_FILE.pub (for guardd --trust-key).
    Keygen {
        /// Where to write the private key; the public key goes to KEY_FILE.pub.
        key_file: PathBuf,
    },
    /// Follow guard's decision alerts in the journal.
    Alerts(guard::alerts::AlertOptions),
    /// Verify the tamper-evident audit log and its remote copies.
    #[command(subcommand)]
    Log(guard::audit::LogCommand),
    /// Encrypted volumes: init, unlock, lock, status, migrate.
    #[command(subcommand)]
    Volume(guard::volume::cli::VolumeCommand),
    /// Volume keys in the KMS: rotate, revoke.
    #[command(subcommand)]
    Key(guard::volume::cli::KeyCommand),
    /// Prove a volume's bytes on disk are encrypted: decrypt them as the kernel does.
    VerifyEncryption(guard::recovery::VerifyEncryptionArgs),
    /// Read files out of an unmounted volume image with the key from the KMS.
    Recover(guard::recovery::RecoverArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Prove the guard holds: `--attack` tries every known way around it
    /// against the live policy and prints what was blocked and alerted.
    Selftest(guard::selftest::SelftestArgs),
}

#[derive(Subcommand)]
enum OrderCommand {
    /// Print this guardd's nonce: an order signed for it works once, on it only.
    Challenge,
    /// Off-host: sign an order for the guardd whose nonce is NONCE.
    Sign {
        /// The private key file (from `guardctl keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The nonce `guardctl order challenge` printed on the guarded host.
        #[arg(long)]
        nonce: String,
        /// Where to write the signed order (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// What guardd is to do.
        action: OrderAction,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Unlock latency end to end and verify-encryption throughput vs openssl.
    Keys(guard::volume::bench::BenchKeysArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file against its format and this system; list every problem.
    Validate { file: PathBuf },
    /// Apply a policy atomically; an invalid one changes nothing. FILE is a
    /// policy, or a signed policy (required when policy signing is on).
    Apply { file: PathBuf },
    /// Off-host: sign a policy with the key guardd trusts.
    Sign {
        /// The private key file (from `guardctl keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Must be greater than the serial of the policy applied last; by
        /// default the current time in seconds since the Unix epoch.
        #[arg(long)]
        serial: Option<u64>,
        /// Where to write the signed policy (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The policy file.
        file: PathBuf,
    },
    /// Show the applied policy, its hash, when it was applied, and its binaries' state.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the policy format.
    Schema,
    /// Print the arguments and environment of a running server (its pid) as
    /// `started_by` entries to pin; values that change at each start are
    /// listed by name only.
    PinStart { pid: u32 },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Selftest(args) = cli.command {
        // Its exit code says how the attacks went.
        return guard::selftest::run(args).unwrap_or_else(|e| {
            eprintln!("guardctl selftest: {e:#}");
            std::process::ExitCode::FAILURE
        });
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guardctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Policy(cmd) => run_policy(&cli.socket, cmd),
        Command::Status { json } => {
            let status = control::call(&cli.socket, &Request::Status)?;
            print_value(&status, json);
            Ok(())
        }
        Command::Stop { order } => {
            let order = order.as_deref().map(read_document).transpose()?;
            control::call(&cli.socket, &Request::Stop { order })?;
            println!("guardd stopped; enforcement stays armed in the kernel");
            Ok(())
        }
        Command::Disarm { order } => {
            let text = read_document(&order)?;
            let done = control::call(&cli.socket, &Request::Disarm { order: text })
                .with_context(|| format!("disarming with {}", order.display()))?;
            println!(
                "guard disarmed by key {}: programs detached, pins removed, guardd exiting",
                done["signer"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        Command::Order(OrderCommand::Challenge) => {
            let challenge = control::call(&cli.socket, &Request::Challenge)?;
            println!("{}", challenge["nonce"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Order(OrderCommand::Sign {
            key,
            nonce,
            output,
            action,
        }) => sign_order(&key, &nonce, action, output.as_deref()),
        Command::Keygen { key_file } => keygen(&key_file),
        Command::Alerts(options) => guard::alerts::follow(options),
        Command::Log(command) => guard::audit::cli::run(command),
        Command::Volume(command) => guard::volume::cli::run_volume(command, &cli.keys),
        Command::Key(command) => guard::volume::cli::run_key(command, &cli.keys),
        Command::VerifyEncryption(args) => guard::recovery::run_verify_encryption(args, &cli.keys),
        Command::Recover(args) => guard::recovery::run_recover(args, &cli.keys),
        Command::Bench(BenchCommand::Keys(args)) => guard::volume::bench::run(args),
        Command::Selftest(_) => unreachable!("handled in main"),
    }
}

fn run_policy(socket: &Path, cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Validate { file } => {
            let text = read_policy(&file)?;
            let resolved = policy::parse(&text)
                .and_then(|p| policy::resolve(&p))
                .map_err(|errors| {
                    anyhow::anyhow!("{}: invalid policy:\n{errors}", file.display())
                })?;
            println!(
                "{}: valid ({} protected directories, {} rules, hash {})",
                file.display(),
                resolved.points.len(),
                resolved.rules.len(),
                resolved.hash
            );
            Ok(())
        }
        PolicyCommand::Apply { file } => {
            let policy = read_policy(&file)?;
            let applied = control::call(socket, &Request::Apply { policy })
                .with_context(|| format!("applying {}", file.display()))?;
            let signed = match applied["signed"].as_object() {
                Some(s) => format!(
                    ", signed by {} serial {}",
                    s["signer"].as_str().unwrap_or("?"),
                    s["serial"]
                ),
                None => String::new(),
            };
            println!(
                "applied {} (hash {}, generation {}, mode {}{signed})",
                file.display(),
                applied["hash"].as_str().unwrap_or("?"),
                applied["generation"],
                applied["mode"].as_str().unwrap_or("?"),
            );
            for warning in applied["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", warning.as_str().unwrap_or("?"));
            }
            Ok(())
        }
        PolicyCommand::Sign {
            key,
            serial,
            output,
            file,
        } => sign_policy(&key, serial, output.as_deref(), &file),
        PolicyCommand::Show { json } => {
            let shown = control::call(socket, &Request::Show)?;
            print_value(&shown, json);
            Ok(())
        }
        PolicyCommand::Schema => {
            println!("{}", serde_json::to_string_pretty(&policy::schema())?);
            Ok(())
        }
        PolicyCommand::PinStart { pid } => {
            let pinned = policy::pin_start(Path::new("/proc"), pid)?;
            println!("{}", serde_json::to_string_pretty(&pinned)?);
            Ok(())
        }
    }
}

/// Signs a policy whose shape is valid (its binaries and directories are
/// checked where it is applied: they need not exist where it is signed).
fn sign_policy(key: &Path, serial: Option<u64>, output: Option<&Path>, file: &Path) -> Result<()> {
    let text = read_policy(file)?;
    policy::parse(&text)
        .map_err(|errors| anyhow::anyhow!("{}: invalid policy:\n{errors}", file.display()))?;
    let key = guard::audit::checkpoint::load_signing_key(key)?;
    let serial = match serial {
        Some(serial) => serial,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs(),
    };
    let document = SignedDocument::sign(&key, &Payload::policy(&text, serial));
    write_document(&document, output)?;
    eprintln!(
        "signed {} with key {}, serial {serial}",
        file.display(),
        document.signer
    );
    Ok(())
}

fn sign_order(key: &Path, nonce: &str, action: OrderAction, output: Option<&Path>) -> Result<()> {
    let nonce = nonce.trim();
    if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!(
            "--nonce {nonce:?} is not a guardd nonce (32 hex digits from `guardctl order challenge`)"
        );
    }
    let key = guard::audit::checkpoint::load_signing_key(key)?;
    let document = SignedDocument::sign(&key, &Payload::order(action, nonce));
    write_document(&document, output)?;
    eprintln!(
        "signed a {action} order for guardd nonce {nonce} with key {}",
        document.signer
    );
    Ok(())
}

fn keygen(key_file: &Path) -> Result<()> {
    let mut public = key_file.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    if public.exists() {
        anyhow::bail!("{} exists already; not overwriting it", public.display());
    }
    let key = guard::audit::checkpoint::create_signing_key(key_file)?;
    guard::audit::checkpoint::create_verifying_key_file(&public, &key.verifying_key())?;
    println!(
        "private key {} (mode 0600: keep it off the guarded host)\npublic key {} (guardd --trust-key)\nfingerprint {}",
        key_file.display(),
        public.display(),
        signing::fingerprint(&key.verifying_key())
    );
    Ok(())
}

fn write_document(document: &SignedDocument, output: Option<&Path>) -> Result<()> {
    match output {
        Some(path) => std::fs::write(path, document.to_json())
            .with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{}", document.to_json());
            Ok(())
        }
    }
}

fn read_document(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

fn read_policy(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading policy {}", file.display()))
}

/// JSON as is, or as indented `key: value` lines.
fn print_value(value: &serde_json::Value, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print_text(value, 0);
    }
}

fn print_text(value: &serde_json::Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if v.is_object() || v.is_array() {
                    println!("{pad}{k}:");
                    print_text(v, indent + 1);
                } else {
                    println!("{pad}{k}: {}", scalar(v));
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                if v.is_object() || v.is_array() {
                    println!("{pad}-");
                    print_text(v, indent + 1);
                } else {
                    println!("{pad}- {}", scalar(v));
                }
            }
        }
        v => println!("{pad}{}", scalar(v)),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}
