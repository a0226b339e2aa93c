//! guardd: arms the kernel programs, applies policies, reports decisions.

use crate::audit::{AuditTrail, TrailConfig};
use crate::control::{Request, Response};
use crate::enforcement::{KeptDevices, KernelMaps, Stats};
use crate::events::{self, Decision, PolicyNames};
use crate::journal::{self, message_id, Journal};
use crate::kexec;
use crate::kms::KmsConfig;
use crate::loader::{self, Armed, Pins};
use crate::mappings;
use crate::policy::{self, ResolvedBinary, ResolvedPolicy};
use crate::signing::{trust::KeyMismatch, OrderAction, Refusal, Trust};
use anyhow::{Context, Result};
use aya::maps::{Map, MapData, RingBuf};
use guard_common::{maps, ExeKey, SelfProtect, Settings};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tokio::io::{unix::AsyncFd, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Clone, Debug)]
pub struct Config {
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Kernel BTF the struct layouts are read from.
    pub btf: PathBuf,
    /// Decision events per CPU per second before the kernel suppresses (and counts) them.
    pub events_per_sec: u32,
    /// Refuse signals and tracing of guardd from anyone else (`--protect-self`).
    pub protect_self: bool,
    /// The audit trail: local chain and remote destinations.
    pub audit: TrailConfig,
    /// Encrypted volumes to unlock at start (records folder) and the KMS to ask.
    pub volume_dir: PathBuf,
    pub kms_config: PathBuf,
    /// Public key file of the off-host key that must sign policies and
    /// orders (`--trust-key`); pinned with the armed guard.
    pub trust_key: Option<PathBuf>,
    /// Kernel modules to load before arming, besides `GUARD_MODULES`.
    pub preload_modules: Vec<String>,
}

impl Config {
    /// A local-only audit trail under the state folder, signed with a host key kept there.
    pub fn local_audit(state_dir: &Path) -> TrailConfig {
        let dir = state_dir.join("audit");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        TrailConfig::new(&dir, &host, dir.join("host.key"))
    }
}

/// What guardd records about the policy it applied (survives restarts).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppliedPolicy {
    pub applied_at: String,
    pub generation: u32,
    pub resolved: ResolvedPolicy,
    /// The policy as it was given.
    pub text: String,
    /// Who signed it, when policy signing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedBy>,
}

/// The signature an applied policy came with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedBy {
    /// Fingerprint of the signing key.
    pub signer: String,
    pub serial: u64,
    pub signed_at: String,
}

impl AppliedPolicy {
    /// Each allowed binary once, as resolved at apply.
    fn binaries(&self) -> Vec<&ResolvedBinary> {
        let mut seen = Vec::new();
        for b in self.resolved.rules.iter().flat_map(|r| &r.binaries) {
            if !seen
                .iter()
                .any(|s: &&ResolvedBinary| s.dev == b.dev && s.ino == b.ino)
            {
                seen.push(b);
            }
        }
        seen
    }
}

struct Daemon {
    config: Config,
    armed: Armed,
    maps: Mutex<KernelMaps>,
    applied: Mutex<Option<AppliedPolicy>>,
    names: RwLock<PolicyNames>,
    journal: Journal,
    /// Whether the kernel refuses signals and tracing of guardd.
    protected: bool,
    /// The pinned key policies and orders must be signed with; None when
    /// policy signing is off.
    trust: Mutex<Option<Trust>>,
    /// Notified by a stop or disarm once it has been answered.
    stop: tokio::sync::Notify,
    /// Set by an accepted stop or disarm, before `stop` is notified.
    ending: Mutex<Option<Ending>>,
    trail: AuditTrail,
}

/// Who sent a control request: (pid, uid) of the peer.
type Peer = (i32, u32);

/// A stop or disarm the main loop ends guardd for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Stop,
    Disarm,
}

pub async fn run(config: Config) -> Result<()> {
    let pins = Pins::new(&config.pin_dir);
    if !pins.complete() {
        preload_modules(&config.preload_modules);
    }
    let armed = loader::arm(&pins, crate::EBPF_OBJECT, &config.btf)?;
    let mut maps = KernelMaps::open(&pins)?;
    maps.remove_inactive_generations()
        .context("removing policy generations a previous guardd left")?;
    maps.set_settings(Settings {
        events_per_sec: config.events_per_sec,
        _pad: 0,
    })?;
    let trust = match establish_trust(&config, &pins) {
        Ok(trust) => trust,
        Err(e) => {
            refuse_trust_key(&config, &maps, &e).await;
            return Err(e);
        }
    };
    // Signing is only as strong as guard's hold on its own state: with a
    // trusted key, guardd always protects itself and its pins.
    let protect = config.protect_self || trust.is_some();
    let protected = register_self(&mut maps, &pins, protect)?;
    // The volumes unlocked below put their keys in memory, which a kernel
    // loaded for kexec would boot over (kdump: /proc/vmcore). A guardd that
    // protects itself refuses new loads, so it unloads those already there.
    let start_warnings = if protected {
        kexec::unload_loaded_kernels()
    } else {
        Vec::new()
    };
    let journal = Journal::connect().context("connecting to the systemd journal")?;
    let trail = AuditTrail::open(config.audit.clone()).context("opening the audit trail")?;
    let own_files = guard_files(&config)?;
    maps.set_guard_files(&own_files)?;
    maps.set_guard_devices(&guard_devices(&own_files, Path::new("/sys"))?)?;
    let applied = load_applied(&config.state_dir)?;
    let names = applied
        .as_ref()
        .map(|a| a.resolved.names())
        .unwrap_or_default();
    let signing = signing_state(trust.as_ref());
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        armed,
        maps: Mutex::new(maps),
        applied: Mutex::new(applied),
        names: RwLock::new(names),
        journal,
        protected,
        trust: Mutex::new(trust),
        stop: tokio::sync::Notify::new(),
        ending: Mutex::new(None),
        trail,
    });
    tokio::spawn(record_trail_alerts(daemon.clone()));
    tokio::spawn(unlock_volumes(daemon.clone()));
    let protection = if protected { "on" } else { "off" };
    let (signing_on, trust_key) = &signing;
    let signing_text = match trust_key {
        Some(key) => format!("policy signing: on, trusted key {key}"),
        None => "policy signing: off".into(),
    };
    let warnings_text = start_warnings.join("; ");
    let mut started_fields = vec![
        ("GUARD_ARMED", armed_name(armed)),
        ("GUARD_SELF_PROTECTION", protection),
        (journal::field::POLICY_SIGNING, signing_on),
        (
            journal::field::TRUST_KEY,
            trust_key.as_deref().unwrap_or(""),
        ),
    ];
    let warned = if start_warnings.is_empty() {
        String::new()
    } else {
        started_fields.push((journal::field::WARNINGS, &warnings_text));
        format!("; warning: {warnings_text}")
    };
    daemon.admin_entry(
        message_id::GUARDD_STARTED,
        &format!(
            "guardd started ({}, self-protection {protection}, {signing_text}){warned}",
            armed_name(armed)
        ),
        &started_fields,
    );
    let listener = bind_socket(&config.socket)?;
    let mut events = tokio::spawn(forward_events(daemon.clone(), pins.map(maps::EVENTS)));
    tokio::spawn(report_suppressed(daemon.clone()));
    tokio::spawn(retire_replaced_generations(daemon.clone()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let outcome = loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = conn.context("accepting a control connection")?;
                tokio::spawn(serve(daemon.clone(), stream));
            }
            res = &mut events => {
                break match res {
                    Ok(Err(e)) => Err(e.context("reading decision events")),
                    Ok(Ok(())) => Ok(()),
                    Err(e) => Err(anyhow::anyhow!("event reader crashed: {e}")),
                };
            }
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = daemon.stop.notified() => break Ok(()),
        }
    };
    let ending = *daemon.ending.lock().unwrap();
    // Only a stop or disarm someone asked for lifts the protection; guardd
    // failing (the event reader, say) leaves it on: fail closed.
    if ending.is_some() {
        if let Err(e) = daemon.lift_self_protection() {
            eprintln!("guardd: {e:#}");
        }
    }
    let stopped = if ending == Some(Ending::Disarm) {
        "guardd stopped; the guard is disarmed, nothing is enforced"
    } else {
        "guardd stopped; enforcement stays armed in the kernel"
    };
    daemon.admin_entry(message_id::GUARDD_STOPPED, stopped, &[]);
    let _ = std::fs::remove_file(&config.socket);
    daemon.trail.close().await;
    outcome
}

fn armed_name(armed: Armed) -> &'static str {
    match armed {
        Armed::Loaded => "loaded",
        Armed::Adopted => "adopted",
    }
}

fn bind_socket(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("socket path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve(daemon: Arc<Daemon>, stream: UnixStream) {
    let peer = stream
        .peer_cred()
        .map(|c| (c.pid().unwrap_or(0), c.uid()))
        .unwrap_or((0, u32::MAX));
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let (response, ending) = match BufReader::new(read).read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let d = daemon.clone();
                tokio::task::spawn_blocking(move || d.handle(request, peer))
                    .await
                    .unwrap_or_else(|e| (Response::err(format!("request failed: {e}")), None))
            }
            Err(e) => (Response::err(format!("malformed request: {e}")), None),
        },
        Err(e) => (Response::err(format!("reading request: {e}")), None),
    };
    let mut reply = serde_json::to_string(&response).unwrap_or_default();
    reply.push('\n');
    let _ = write.write_all(reply.as_bytes()).await;
    if let Some(ending) = ending {
        *daemon.ending.lock().unwrap() = Some(ending);
        // Only once answered: the main loop ends the process.
        daemon.stop.notify_one();
    }
}

/// Modules guard's own volumes need: device-mapper and dm-crypt, loop
/// devices, and the crypto fscrypt and dm-crypt use that Debian builds as
/// modules on some kernels (by their crypto API aliases): XTS over ECB for
/// contents, CTS for names, HKDF's HMAC-SHA512 for fscrypt's key derivation.
const GUARD_MODULES: [&str; 9] = [
    "dm_mod",
    "dm_crypt",
    "loop",
    "crypto-xts",
    "crypto-ecb",
    "crypto-cts",
    "crypto-aes",
    "crypto-hmac",
    "crypto-sha512",
];

/// Loads `GUARD_MODULES` and `extra` while nothing is armed yet: once guard
/// is, no module loads (a modprobe the kernel runs is whatever root put at
/// its path). Best effort: a module this kernel does not have, or has built
/// in, is no error.
fn preload_modules(extra: &[String]) {
    let status = std::process::Command::new("modprobe")
        .args(["-a", "-q", "--"])
        .args(GUARD_MODULES)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("guardd: modprobe of modules to load before arming: {s}"),
        Err(e) => eprintln!("guardd: running modprobe: {e}"),
    }
}

/// Records guardd's identity for the kernel (guardd may act on the processes
/// it guards). With `protect`, or when an earlier guardd protected itself and
/// is gone without a clean stop, the kernel refuses signals and tracing of
/// this guardd from anyone else. Returns whether it does.
fn register_self(maps: &mut KernelMaps, pins: &Pins, protect: bool) -> Result<bool> {
    let exe = identity(Path::new("/proc/self/exe")).context("identifying guardd's executable")?;
    let pin_dir = identity(pins.root()).context("identifying guard's pin folder")?;
    maps.set_objects(&loader::object_ids(pins)?)?;
    let previous = maps.self_protect()?;
    if previous.protect != 0 && runs(previous.tgid, &previous.exe) {
        anyhow::bail!(
            "a self-protecting guardd (pid {}) is running; stop it with `guardctl stop` first",
            previous.tgid
        );
    }
    let protect = protect || previous.protect != 0;
    maps.set_self_protect(SelfProtect {
        protect: protect as u32,
        tgid: std::process::id(),
        exe,
        pins: pin_dir,
    })?;
    Ok(protect)
}

/// guard's own binaries, configuration, keys and state, which nobody but
/// guardd may change while it protects itself.
fn guard_files(config: &Config) -> Result<Vec<(ExeKey, u32)>> {
    use guard_common::immutable::{DIR, FILE, SECRET};
    let exe = std::fs::read_link("/proc/self/exe").context("reading /proc/self/exe")?;
    let mut files = vec![(exe.clone(), FILE)];
    if let Some(bin_dir) = exe.parent() {
        for sibling in ["guardctl", "guard-kms", "guard-logd"] {
            files.push((bin_dir.join(sibling), FILE));
        }
    }
    if let Some(key) = &config.trust_key {
        files.push((key.clone(), FILE));
    }
    files.push((config.kms_config.clone(), FILE));
    files.extend(
        guard_secrets(config)
            .into_iter()
            .map(|key| (key, FILE | SECRET)),
    );
    files.push((config.audit.dir.clone(), DIR));
    files.push((config.state_dir.clone(), DIR));
    files.push((config.volume_dir.clone(), DIR));
    // What does not exist (yet) has nothing to protect.
    Ok(files
        .into_iter()
        .filter_map(|(path, kind)| identity(&path).ok().map(|id| (id, kind)))
        .collect())
}

/// guard's private keys: what proves this host to the KMS (and so obtains
/// the volume keys) and to the log collectors, and what signs its audit
/// trail. guardd alone reads them while it protects itself.
fn guard_secrets(config: &Config) -> Vec<PathBuf> {
    let mut secrets = vec![config.audit.key_file.clone()];
    // A missing or unreadable KMS configuration has no key to keep; the
    // volume unlock says what is wrong with it.
    if let Ok(kms) = KmsConfig::load(&config.kms_config) {
        secrets.push(kms.tls().key.clone());
    }
    secrets.extend(config.audit.collectors.iter().map(|c| c.tls.key.clone()));
    secrets.extend(config.audit.syslog.iter().map(|s| s.tls.key.clone()));
    secrets
}

/// The block devices beneath guard's own files, as (`dev`, bits kept), and
/// their passthrough nodes: kept while guardd protects itself. Writing one
/// would change guard's binaries and keys beneath its hooks; reading one
/// beneath a secret shows the secret (except below dm-crypt: ciphertext).
fn guard_devices(files: &[(ExeKey, u32)], sysfs: &Path) -> Result<KeptDevices> {
    use guard_common::{access, immutable::SECRET};
    let mut raw: std::collections::BTreeMap<u32, u32> = Default::default();
    for (file, kind) in files {
        let devices = policy::filesystem_devices(sysfs, file.dev)
            .map_err(|e| anyhow::anyhow!("{e} (a filesystem holding guard's own files)"))?;
        for device in devices {
            let mut bits = access::WRITE;
            if kind & SECRET != 0 && !device.ciphertext {
                bits |= access::READ;
            }
            *raw.entry(device.dev).or_insert(0) |= bits;
        }
    }
    let nodes = policy::passthrough_nodes(sysfs, raw.keys().copied())
        .map_err(|e| anyhow::anyhow!("{e} (beneath guard's own files)"))?;
    let passthrough = policy::passthrough_bits(&nodes, &raw);
    Ok(KeptDevices {
        raw: raw.into_iter().collect(),
        passthrough: passthrough.into_iter().collect(),
    })
}

/// The kernel's identity of a file: (dev, ino).
fn identity(path: &Path) -> Result<ExeKey> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(ExeKey {
        dev: policy::kernel_dev(meta.dev()),
        _pad: 0,
        ino: meta.ino(),
    })
}

/// Whether process `tgid` exists and runs the executable `exe`.
fn runs(tgid: u32, exe: &ExeKey) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{tgid}/exe"))
        .map(|m| policy::kernel_dev(m.dev()) == exe.dev && m.ino() == exe.ino)
        .unwrap_or(false)
}

impl Daemon {
    /// Answers a request; a stop or disarm also says how guardd ends.
    fn handle(&self, request: Request, peer: Peer) -> (Response, Option<Ending>) {
        let result = match request {
            Request::Apply { policy } => self.apply(policy, peer).map(|r| (r, None)),
            Request::Show => self.show().map(|r| (r, None)),
            Request::Status => self.status().map(|r| (r, None)),
            Request::Challenge => Ok((self.challenge(), None)),
            Request::Stop { order } => Ok(self.stop_requested(order.as_deref(), peer)),
            Request::Disarm { order } => self.disarm(&order, peer),
        };
        result.unwrap_or_else(|e| (Response::err(format!("{e:#}")), None))
    }

    /// Validates and resolves the policy, then swaps it in atomically. Any
    /// error leaves the running policy as it was. With policy signing on, the
    /// policy must come in a document signed by the trusted key, with a
    /// serial greater than the last applied one.
    fn apply(&self, document: String, peer: Peer) -> Result<Response> {
        let started = std::time::Instant::now();
        // Held to the end: two signed applies cannot both pass the serial check.
        let mut trust = self.trust.lock().unwrap();
        let (text, signed) = match trust.as_ref() {
            Some(trust) => match trust.check_policy(&document) {
                Ok(p) => {
                    let signed = SignedBy {
                        signer: p.signer,
                        serial: p.serial,
                        signed_at: p.signed_at,
                    };
                    (p.text, Some(signed))
                }
                Err(refusal) => return Ok(self.refused(&refusal, "policy", Some(trust), peer)),
            },
            None => (document, None),
        };
        let checked_at = started.elapsed();
        let parsed = policy::parse(&text);
        // Without policy signing, a signed document is refused as such, not
        // as a policy with unknown fields. Only a document that does not
        // parse can be one (a policy has no `signature` or `format` field),
        // so a large policy is not read a second time to find out.
        if trust.is_none() && parsed.is_err() && crate::signing::SignedDocument::looks_signed(&text)
        {
            let refusal = Refusal::SigningOff {
                what: "signed policy",
            };
            return Ok(self.refused(&refusal, "policy", None, peer));
        }
        let protected_now: Vec<policy::ResolvedPoint> = match self.applied.lock().unwrap().as_ref()
        {
            Some(applied) => applied.resolved.points.clone(),
            None => Vec::new(),
        };
        let checked = parsed
            .and_then(|p| policy::resolve(&p))
            .and_then(|r| policy::check_hard_links(&r, &protected_now).map(|()| r));
        let resolved = match checked {
            Ok(r) => r,
            Err(errors) => {
                self.admin_entry(
                    message_id::POLICY_REFUSED,
                    &format!("guard policy refused: {errors}"),
                    &[("GUARD_ERRORS", &errors.to_string())],
                );
                return Ok(Response::err(format!(
                    "policy refused, nothing changed:\n{errors}"
                )));
            }
        };
        let resolved_at = started.elapsed();
        if let (Some(trust), Some(signed)) = (trust.as_mut(), &signed) {
            // Recorded before the kernel maps change: a policy is never in
            // force without its serial being used up.
            trust.commit_serial(signed.serial)?;
        }
        let generation = {
            let mut maps = self.maps.lock().unwrap();
            maps.apply(|g| resolved.entries(g)).inspect_err(|e| {
                self.admin_entry(
                    message_id::POLICY_REFUSED,
                    &format!("guard policy could not be loaded: {e:#}"),
                    &[("GUARD_ERRORS", &format!("{e:#}"))],
                );
            })?
        };
        let in_force = started.elapsed();
        let in_force_ms = in_force.as_secs_f64() * 1000.0;
        // Where the time went, for `cargo xtask bench`: signature check,
        // parsing and resolving (binaries hashed), writing the kernel maps.
        let phases_ms = serde_json::json!({
            "signature": checked_at.as_secs_f64() * 1000.0,
            "resolve": (resolved_at - checked_at).as_secs_f64() * 1000.0,
            "maps": (in_force - resolved_at).as_secs_f64() * 1000.0,
        });
        let applied = AppliedPolicy {
            applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            generation,
            resolved,
            text,
            signed,
        };
        store_applied(&self.config.state_dir, &applied)?;
        *self.names.write().unwrap() = applied.resolved.names();
        let (hash, mode) = (&applied.resolved.hash, applied.resolved.mode.name());
        // After the maps: from here on no kernel can be loaded for kexec, so
        // one loaded earlier is unloaded for good.
        let mut warnings = kexec::unload_loaded_kernels();
        warnings.extend(apply_warnings());
        warnings.extend(mappings::warnings(&applied.resolved));
        warnings.extend(applied.resolved.loop_warnings());
        warnings.extend(applied.resolved.walk_warnings());
        let summary = serde_json::json!({
            "hash": hash, "generation": generation, "applied_at": applied.applied_at, "mode": mode,
            "in_force_ms": in_force_ms,
            "phases_ms": phases_ms,
            "signed": applied.signed,
            "warnings": warnings,
        });
        let generation_text = generation.to_string();
        let mut fields = vec![
            ("GUARD_POLICY_HASH", hash.as_str()),
            ("GUARD_GENERATION", generation_text.as_str()),
        ];
        let signed_text = match &applied.signed {
            Some(s) => {
                fields.push((journal::field::SIGNER, s.signer.as_str()));
                format!(", signed by {} serial {}", s.signer, s.serial)
            }
            None => String::new(),
        };
        let serial = applied.signed.as_ref().map(|s| s.serial.to_string());
        if let Some(serial) = &serial {
            fields.push((journal::field::SERIAL, serial));
        }
        let warnings_text = warnings.join("; ");
        if !warnings.is_empty() {
            fields.push((journal::field::WARNINGS, warnings_text.as_str()));
        }
        let warned = if warnings.is_empty() {
            String::new()
        } else {
            format!("; warning: {warnings_text}")
        };
        self.admin_entry(
            message_id::POLICY_APPLIED,
            &format!(
                "guard policy {hash} applied (generation {generation}, mode {mode}{signed_text}){warned}"
            ),
            &fields,
        );
        *self.applied.lock().unwrap() = Some(applied);
        Ok(Response::ok(summary))
    }

    fn show(&self) -> Result<Response> {
        let applied = self.applied.lock().unwrap().clone();
        let Some(applied) = applied else {
            return Ok(Response::ok(serde_json::json!({ "policy": null })));
        };
        let tainted = self.maps.lock().unwrap().tainted();
        let binaries: Vec<_> = applied
            .binaries()
            .into_iter()
            .map(|b| {
                serde_json::json!({
                    "path": b.path, "sha256": b.sha256.to_string(),
                    "device": events::kernel_dev_string(b.dev), "inode": b.ino,
                    "state": binary_state(b, &tainted),
                })
            })
            .collect();
        let r = &applied.resolved;
        let points: Vec<_> = r.points.iter().map(|p| &p.path).collect();
        let rules: Vec<_> = r.rules.iter().map(|r| &r.label).collect();
        Ok(Response::ok(serde_json::json!({
            "hash": r.hash, "applied_at": applied.applied_at,
            "generation": applied.generation, "mode": r.mode.name(),
            "protected": points, "rules": rules,
            "binaries": binaries,
            // Files the binaries may map executable; null: not confined.
            "approved_libraries": r.libraries.as_ref().map(Vec::len),
            // Files, symlinks and folders nobody may change; null: none listed.
            "immutable_files": r.immutable.as_ref().map(|i| i.entries.len()),
            "policy": serde_json::from_str::<serde_json::Value>(&applied.text).unwrap_or_default(),
            "signed": applied.signed,
        })))
    }

    fn status(&self) -> Result<Response> {
        // Read before the maps: apply takes the trust lock, then the maps'.
        let (signing, trust_key, serial) = match self.trust.lock().unwrap().as_ref() {
            Some(t) => (
                "on",
                Some(t.fingerprint().to_owned()),
                Some(t.last_serial()),
            ),
            None => ("off", None, None),
        };
        let maps = self.maps.lock().unwrap();
        let generation = maps.active_generation()?;
        let stats: Stats = maps.stats()?;
        let applied = self.applied.lock().unwrap();
        let pins = Pins::new(&self.config.pin_dir);
        let armed = pins.complete();
        let mode = applied.as_ref().map(|a| a.resolved.mode.name());
        let state = match (armed, generation, mode) {
            (false, _, _) => "not armed",
            (true, 0, _) => "armed, no policy",
            (true, _, Some("audit")) => "audit only (nothing is denied)",
            (true, _, _) => "enforcing",
        };
        Ok(Response::ok(serde_json::json!({
            "state": state,
            "enforcing": state == "enforcing",
            "armed": armed,
            "programs": armed_name(self.armed),
            "mode": mode,
            "policy_hash": applied.as_ref().map(|a| a.resolved.hash.clone()),
            "generation": generation,
            "kernel": kernel_release(),
            "counters": stats,
            "guardd_pid": std::process::id(),
            "self_protection": self.protected,
            "policy_signing": signing,
            "trust_key": trust_key,
            "policy_serial": serial,
        })))
    }

    /// A `guardctl stop`: journaled with who asked; the reply goes out
    /// first. With policy signing on it needs a signed stop order.
    fn stop_requested(&self, order: Option<&str>, peer: Peer) -> (Response, Option<Ending>) {
        let mut trust = self.trust.lock().unwrap();
        let signer = match (trust.as_mut(), order) {
            (Some(t), order) => match t.accept_order(order.unwrap_or(""), OrderAction::Stop) {
                Ok(order) => Some(order.signer),
                Err(refusal) => {
                    let response = self.refused(&refusal, "stop order", Some(t), peer);
                    return (response, None);
                }
            },
            (None, Some(_)) => {
                let refusal = Refusal::SigningOff { what: "stop order" };
                return (self.refused(&refusal, "stop order", None, peer), None);
            }
            (None, None) => None,
        };
        let (pid, uid) = (peer.0.to_string(), peer.1.to_string());
        let lifted = if self.protected {
            "; self-protection lifted"
        } else {
            ""
        };
        let by = signer
            .as_ref()
            .map(|s| format!(", by an order signed with key {s}"))
            .unwrap_or_default();
        let mut fields = vec![
            (journal::field::PID, pid.as_str()),
            (journal::field::UID, uid.as_str()),
        ];
        if let Some(signer) = &signer {
            fields.push((journal::field::SIGNER, signer));
        }
        self.admin_entry(
            message_id::GUARDD_STOP_REQUESTED,
            &format!("guardd stop requested by pid {pid} uid {uid}{by}{lifted}"),
            &fields,
        );
        (
            Response::ok(serde_json::json!({ "stopping": true })),
            Some(Ending::Stop),
        )
    }

    /// This guardd's nonce for orders.
    fn challenge(&self) -> Response {
        match self.trust.lock().unwrap().as_ref() {
            Some(t) => Response::ok(serde_json::json!({
                "nonce": t.nonce(),
                "trust_key": t.fingerprint(),
            })),
            None => Response::err(
                "policy signing is off (guardd was armed without --trust-key): \
                 there is no key to sign orders with",
            ),
        }
    }

    /// A signed disarm order: the pins go (the programs detach once nothing
    /// holds them), then guardd exits.
    fn disarm(&self, order: &str, peer: Peer) -> Result<(Response, Option<Ending>)> {
        let mut trust = self.trust.lock().unwrap();
        let accepted = match trust.as_mut() {
            Some(t) => t.accept_order(order, OrderAction::Disarm),
            None => Err(Refusal::SigningOff {
                what: "disarm order",
            }),
        };
        let order = match accepted {
            Ok(order) => order,
            Err(refusal) => {
                let response = self.refused(&refusal, "disarm order", trust.as_ref(), peer);
                return Ok((response, None));
            }
        };
        let pins = Pins::new(&self.config.pin_dir);
        loader::disarm(&pins).inspect_err(|e| {
            self.admin_entry(
                message_id::GUARD_DISARMED,
                &format!("guard disarm by key {} failed: {e:#}", order.signer),
                &[
                    (journal::field::SIGNER, &order.signer),
                    (journal::field::REASON, &format!("{e:#}")),
                ],
            );
        })?;
        // Nothing is in force any more; a new guardd starts without a policy.
        let _ = std::fs::remove_file(applied_path(&self.config.state_dir));
        *self.applied.lock().unwrap() = None;
        let (pid, uid) = (peer.0.to_string(), peer.1.to_string());
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        self.admin_entry(
            message_id::GUARD_DISARMED,
            &format!(
                "guard disarmed at {at} by an order signed with key {} (signed at {}), \
                 submitted by pid {pid} uid {uid}; enforcement is off",
                order.signer, order.signed_at
            ),
            &[
                (journal::field::SIGNER, &order.signer),
                (journal::field::PID, &pid),
                (journal::field::UID, &uid),
            ],
        );
        let data = serde_json::json!({ "disarmed": true, "signer": order.signer, "at": at });
        Ok((Response::ok(data), Some(Ending::Disarm)))
    }

    /// Journals and records a refused document; the reply names why.
    fn refused(
        &self,
        refusal: &Refusal,
        document: &str,
        trust: Option<&Trust>,
        (pid, uid): Peer,
    ) -> Response {
        let reason = refusal.to_string();
        let (pid, uid) = (pid.to_string(), uid.to_string());
        let mut fields = vec![
            (journal::field::REFUSAL, refusal.code().to_owned()),
            (journal::field::DOCUMENT, document.to_owned()),
            (journal::field::REASON, reason.clone()),
            (journal::field::PID, pid.clone()),
            (journal::field::UID, uid.clone()),
        ];
        if let Some(t) = trust {
            fields.push((journal::field::TRUST_KEY, t.fingerprint().to_owned()));
        }
        match refusal {
            Refusal::Document {
                error: crate::signing::DocumentError::WrongKey { found, .. },
                ..
            } => fields.push((journal::field::SIGNER, found.clone())),
            Refusal::StaleSerial { serial, last } => {
                fields.push((journal::field::SERIAL, serial.to_string()));
                fields.push((journal::field::LAST_SERIAL, last.to_string()));
            }
            _ => {}
        }
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.alert_entry(
            message_id::SIGNING_REFUSED,
            &format!("guard refused a {document} from pid {pid} uid {uid}: {reason}"),
            &fields,
        );
        Response::err(format!("{reason}; nothing changed"))
    }

    /// Clears the kernel's protection of this guardd, if it is ours.
    fn lift_self_protection(&self) -> Result<()> {
        let mut maps = self.maps.lock().unwrap();
        let mut me = maps.self_protect()?;
        if me.tgid == std::process::id() && me.protect != 0 {
            me.protect = 0;
            maps.set_self_protect(me)?;
        }
        Ok(())
    }

    /// Writes an admin action to the journal and the audit trail.
    fn admin_entry(&self, id: &str, message: &str, extra: &[(&str, &str)]) {
        admin_record(
            &self.journal,
            &self.trail,
            journal::priority::NOTICE,
            id,
            message,
            extra,
        );
    }

    /// An admin entry that is a warning: someone tried what guard refuses.
    fn alert_entry(&self, id: &str, message: &str, extra: &[(&str, &str)]) {
        admin_record(
            &self.journal,
            &self.trail,
            journal::priority::WARNING,
            id,
            message,
            extra,
        );
    }

    fn volume_event(&self, event: &crate::volume::startup::UnlockEvent) {
        use crate::volume::startup::UnlockEvent;
        match event {
            UnlockEvent::Unlocked { volume, elapsed } => self.admin_entry(
                message_id::VOLUME_UNLOCKED,
                &format!("guard volume {volume} unlocked from the KMS in {elapsed:?}"),
                &[("GUARD_VOLUME", volume)],
            ),
            UnlockEvent::AlreadyUnlocked { .. } => {}
            UnlockEvent::Failed { volume, attempt, reason, retry_in } => self.admin_entry(
                message_id::VOLUME_UNLOCK_FAILED,
                &format!(
                    "guard volume {volume} stays locked (attempt {attempt}): {reason}; retrying in {retry_in:?}"
                ),
                &[("GUARD_VOLUME", volume), ("GUARD_REASON", reason)],
            ),
            UnlockEvent::GaveUp { volume, reason } => self.admin_entry(
                message_id::VOLUME_UNLOCK_FAILED,
                &format!("guard volume {volume} stays locked for good: {reason}"),
                &[("GUARD_VOLUME", volume), ("GUARD_REASON", reason)],
            ),
        }
    }

    fn decision_entry(&self, d: &Decision) {
        if let Err(e) = d.send_to(&self.journal) {
            eprintln!("guardd: journal write failed: {e}: {}", d.message());
        }
    }
}

/// Writes an admin action to the journal and the audit trail.
fn admin_record(
    journal: &Journal,
    trail: &AuditTrail,
    priority: &str,
    id: &str,
    message: &str,
    extra: &[(&str, &str)],
) {
    let mut event = serde_json::Map::new();
    event.insert("kind".into(), message_id::name(id).into());
    event.insert("message".into(), message.into());
    for (k, v) in extra {
        event.insert(k.to_ascii_lowercase(), (*v).into());
    }
    // block_in_place: callable from the runtime and from blocking handlers alike.
    let recorded = tokio::task::block_in_place(|| trail.record_blocking(event.into()));
    if let Err(e) = recorded {
        eprintln!("guardd: audit trail write failed: {e}: {message}");
    }
    let mut fields = vec![
        ("MESSAGE_ID", id),
        ("MESSAGE", message),
        ("PRIORITY", priority),
        ("SYSLOG_IDENTIFIER", "guardd"),
    ];
    fields.extend_from_slice(extra);
    if let Err(e) = journal.send(&fields) {
        eprintln!("guardd: journal write failed: {e}: {message}");
    }
}

/// The trusted key for this run: the pinned one, or `--trust-key` pinned now.
fn establish_trust(config: &Config, pins: &Pins) -> Result<Option<Trust>> {
    let given = match &config.trust_key {
        Some(path) => {
            Some(crate::audit::checkpoint::load_verifying_key(path).context("--trust-key")?)
        }
        None => None,
    };
    Trust::establish(pins.root(), &config.state_dir, given.as_ref())
}

/// Journals a refused `--trust-key` (another key is pinned) before guardd
/// exits; into the audit trail too, unless a running guardd writes it.
async fn refuse_trust_key(config: &Config, maps: &KernelMaps, error: &anyhow::Error) {
    let Some(mismatch) = error.downcast_ref::<KeyMismatch>() else {
        return;
    };
    let message = format!("guardd refused to start: {mismatch}");
    let reason = mismatch.to_string();
    let fields = [
        ("MESSAGE_ID", message_id::TRUST_KEY_REFUSED),
        ("MESSAGE", message.as_str()),
        ("PRIORITY", journal::priority::ERR),
        ("SYSLOG_IDENTIFIER", "guardd"),
        (journal::field::DOCUMENT, "trust key"),
        (journal::field::TRUST_KEY, mismatch.pinned.as_str()),
        (journal::field::SIGNER, mismatch.given.as_str()),
        (journal::field::REASON, reason.as_str()),
    ];
    if let Err(e) = Journal::connect().and_then(|j| j.send(&fields)) {
        eprintln!("guardd: journal write failed: {e}: {message}");
    }
    let running = maps
        .self_protect()
        .map(|me| runs(me.tgid, &me.exe))
        .unwrap_or(true);
    if running {
        return; // one writer per audit chain
    }
    match AuditTrail::open(config.audit.clone()) {
        Ok(trail) => {
            let mut event = serde_json::Map::new();
            for (k, v) in &fields[4..] {
                event.insert(k.to_ascii_lowercase(), (*v).into());
            }
            event.insert("kind".into(), "trust_key_refused".into());
            event.insert("message".into(), message.clone().into());
            if let Err(e) = trail.record(event.into()).await {
                eprintln!("guardd: audit trail write failed: {e}: {message}");
            }
            trail.close().await;
        }
        Err(e) => eprintln!("guardd: opening the audit trail: {e:#}"),
    }
}

/// ("on"|"off", trusted key fingerprint) for messages.
fn signing_state(trust: Option<&Trust>) -> (&'static str, Option<String>) {
    match trust {
        Some(t) => ("on", Some(t.fingerprint().to_owned())),
        None => ("off", None),
    }
}

/// Reports, once a second, how many decision events were not delivered
/// since the last report: suppressed by the kernel's rate limit, or dropped
/// because the ring buffer was full. The sums are never lost, only delayed.
async fn report_suppressed(daemon: Arc<Daemon>) {
    let read = |d: &Daemon| {
        d.maps
            .lock()
            .unwrap()
            .stats()
            .map(|s| (s.events_suppressed, s.events_dropped))
            .unwrap_or_default()
    };
    let mut reported = read(&daemon);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = read(&daemon);
        if now.0 > reported.0 || now.1 > reported.1 {
            let suppressed = now.0.saturating_sub(reported.0).to_string();
            let dropped = now.1.saturating_sub(reported.1).to_string();
            daemon.admin_entry(
                message_id::SUPPRESSED,
                &format!(
                    "guard did not deliver decision events: {suppressed} suppressed by the \
                     rate limit, {dropped} dropped (event buffer full)"
                ),
                &[
                    (journal::field::SUPPRESSED, &suppressed),
                    (journal::field::DROPPED, &dropped),
                ],
            );
            reported = now;
        }
    }
}

/// Deletes a replaced policy generation once no hook can still be using it.
async fn retire_replaced_generations(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        daemon.maps.lock().unwrap().retire_due();
    }
}

/// Unlocks the configured volumes from the KMS, retrying with backoff. There
/// is no fallback: a volume whose key the KMS does not give stays locked.
async fn unlock_volumes(daemon: Arc<Daemon>) {
    use crate::volume::{startup, VolumeStore};
    let store = VolumeStore::new(&daemon.config.volume_dir);
    if store.list().map(|v| v.is_empty()).unwrap_or(true) {
        return; // no volumes configured
    }
    let kms = crate::kms::KmsConfig::load(&daemon.config.kms_config).and_then(|c| c.connect());
    let kms = match kms {
        Ok(kms) => kms,
        Err(e) => {
            let reason = format!("{e:#}");
            daemon.admin_entry(
                message_id::VOLUME_UNLOCK_FAILED,
                &format!("guard volumes stay locked: no usable KMS configuration: {reason}"),
                &[("GUARD_REASON", &reason)],
            );
            return;
        }
    };
    let d = daemon.clone();
    let on_event = move |event: startup::UnlockEvent| d.volume_event(&event);
    let result =
        startup::unlock_configured(store, kms, None, startup::Backoff::default(), on_event).await;
    if let Err(e) = result {
        let reason = format!("{e:#}");
        daemon.admin_entry(
            message_id::VOLUME_UNLOCK_FAILED,
            &format!("guard volume unlocking stopped: {reason}"),
            &[("GUARD_REASON", &reason)],
        );
    }
}

/// Records the trail's own alerts (a destination down or back, the spool
/// nearly full) as admin events.
async fn record_trail_alerts(daemon: Arc<Daemon>) {
    let mut alerts = daemon.trail.alerts();
    while let Ok(alert) = alerts.recv().await {
        if let Err(e) = daemon.trail.record(alert.to_event()).await {
            eprintln!("guardd: audit trail write failed: {e}");
        }
    }
}

/// Decision events handed to the audit trail and not yet durable. The ring is
/// read on while the trail writes, up to this many; then reading waits and a
/// flood overflows the kernel's ring, which counts what it drops.
const EVENTS_IN_FLIGHT: u32 = 16_384;
/// Events taken from the ring per batch (at most EVENTS_IN_FLIGHT).
const EVENTS_PER_BATCH: usize = 4_096;

/// Reads decision events from the pinned ring buffer into the journal and the audit trail.
async fn forward_events(daemon: Arc<Daemon>, ring_pin: PathBuf) -> Result<()> {
    let map =
        MapData::from_pin(&ring_pin).with_context(|| format!("opening {}", ring_pin.display()))?;
    let ring = RingBuf::try_from(Map::RingBuf(map))?;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(EVENTS_IN_FLIGHT as usize));
    loop {
        let mut ready = fd.readable_mut().await?;
        let batch = journal_ring_batch(&daemon, ready.get_inner_mut());
        if batch.len() < EVENTS_PER_BATCH {
            ready.clear_ready(); // the ring is empty: wait for the kernel
        }
        if batch.is_empty() {
            continue;
        }
        let permits = in_flight
            .clone()
            .acquire_many_owned(batch.len() as u32)
            .await?;
        match daemon.trail.record_batch_pending(batch) {
            Ok(durable) => {
                tokio::spawn(async move {
                    if let Err(e) = durable.await {
                        eprintln!("guardd: audit trail write failed: {e}");
                    }
                    drop(permits);
                });
            }
            Err(e) => eprintln!("guardd: audit trail write failed: {e}"),
        }
    }
}

/// Takes up to EVENTS_PER_BATCH events from the ring, journals each, and
/// returns their audit records.
fn journal_ring_batch(daemon: &Daemon, ring: &mut RingBuf<MapData>) -> Vec<serde_json::Value> {
    let names = daemon.names.read().unwrap();
    let mut batch = Vec::new();
    while batch.len() < EVENTS_PER_BATCH {
        let Some(item) = ring.next() else { break };
        if let Some(event) = events::decode(&item) {
            let decision = Decision::from_event(&event, &names);
            daemon.decision_entry(&decision);
            batch.push(decision.audit_event());
        }
    }
    batch
}

fn binary_state(b: &ResolvedBinary, tainted: &[(ExeKey, guard_common::Taint)]) -> String {
    let key = ExeKey {
        dev: b.dev,
        _pad: 0,
        ino: b.ino,
    };
    if let Some((_, t)) = tainted.iter().find(|(k, _)| *k == key) {
        return format!(
            "NOT ALLOWED: opened for writing after apply (pid {}, uid {}); re-apply to approve",
            t.pid, t.uid
        );
    }
    let now = match policy::kernel_identity(&b.path) {
        Ok(identity) => identity,
        Err(e) => return format!("NOT ALLOWED: {e}"),
    };
    if now != (b.dev, b.ino) {
        return "NOT ALLOWED: the path now names another file (replaced after apply)".into();
    }
    match policy::sha256_file(&b.path) {
        Ok(h) if h.0 == b.sha256.0 => "ok".into(),
        Ok(h) => format!("NOT ALLOWED: content changed after apply (sha256 now {h})"),
        Err(e) => format!("NOT ALLOWED: cannot hash: {e}"),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn applied_path(state_dir: &Path) -> PathBuf {
    state_dir.join("applied-policy.json")
}

fn load_applied(state_dir: &Path) -> Result<Option<AppliedPolicy>> {
    let path = applied_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the record atomically: a crash leaves the old or the new one.
fn store_applied(state_dir: &Path, applied: &AppliedPolicy) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = applied_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(applied)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// What guard cannot keep from root, said when a policy is applied:
/// - `kernel.core_pattern` piping crash dumps to a program (guard keeps the
///   pattern as it was): the kernel writes a core into the pipe without any
///   hook guard could refuse, so an allowed program's crash would hand its
///   memory to that program;
/// - swap files: the pages of the database swapped out to them can be read
///   like any file (swap devices guard keeps like a protected filesystem's).
fn apply_warnings() -> Vec<String> {
    let mut warnings = Vec::new();
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if let Some(program) = pattern.trim_end().strip_prefix('|') {
        warnings.push(format!(
            "kernel.core_pattern pipes crash dumps to `{program}`: a crash of an allowed program \
             hands its memory to that program; set a file pattern or disable core dumps"
        ));
    }
    let swaps = std::fs::read_to_string(policy::PROC_SWAPS).unwrap_or_default();
    for file in policy::swap_files(&swaps) {
        warnings.push(format!(
            "swap file {file}: memory of allowed programs swapped out there can be read; \
             swap to a dm-crypt device instead"
        ));
    }
    warnings
}
