//! guardd: arms the kernel programs, applies policies, reports decisions.

use crate::audit::{AuditTrail, TrailConfig};
use crate::control::{Request, Response};
use crate::enforcement::{KernelMaps, Stats};
use crate::events::{self, Decision, PolicyNames};
use crate::journal::{self, message_id, Journal};
use crate::loader::{self, Armed, Pins};
use crate::policy::{self, ResolvedBinary, ResolvedPolicy};
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
    /// Notified by a `guardctl stop` once it has been answered.
    stop: tokio::sync::Notify,
    trail: AuditTrail,
}

pub async fn run(config: Config) -> Result<()> {
    let pins = Pins::new(&config.pin_dir);
    let armed = loader::arm(&pins, crate::EBPF_OBJECT, &config.btf)?;
    let mut maps = KernelMaps::open(&pins)?;
    maps.remove_inactive_generations()
        .context("removing policy generations a previous guardd left")?;
    maps.set_settings(Settings {
        events_per_sec: config.events_per_sec,
        _pad: 0,
    })?;
    let protected = register_self(&mut maps, &pins, config.protect_self)?;
    let applied = load_applied(&config.state_dir)?;
    let names = applied
        .as_ref()
        .map(|a| a.resolved.names())
        .unwrap_or_default();
    let journal = Journal::connect().context("connecting to the systemd journal")?;
    let trail = AuditTrail::open(config.audit.clone()).context("opening the audit trail")?;
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        armed,
        maps: Mutex::new(maps),
        applied: Mutex::new(applied),
        names: RwLock::new(names),
        journal,
        protected,
        stop: tokio::sync::Notify::new(),
        trail,
    });
    tokio::spawn(record_trail_alerts(daemon.clone()));
    tokio::spawn(unlock_volumes(daemon.clone()));
    let protection = if protected { "on" } else { "off" };
    daemon.admin_entry(
        message_id::GUARDD_STARTED,
        &format!(
            "guardd started ({}, self-protection {protection})",
            armed_name(armed)
        ),
        &[
            ("GUARD_ARMED", armed_name(armed)),
            ("GUARD_SELF_PROTECTION", protection),
        ],
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
    if let Err(e) = daemon.lift_self_protection() {
        eprintln!("guardd: {e:#}");
    }
    daemon.admin_entry(
        message_id::GUARDD_STOPPED,
        "guardd stopped; enforcement stays armed in the kernel",
        &[],
    );
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
    let mut stopping = false;
    let response = match BufReader::new(read).read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::Stop) => {
                stopping = true;
                daemon.stop_requested(peer)
            }
            Ok(request) => {
                let d = daemon.clone();
                tokio::task::spawn_blocking(move || d.handle(request))
                    .await
                    .unwrap_or_else(|e| Response::err(format!("request failed: {e}")))
            }
            Err(e) => Response::err(format!("malformed request: {e}")),
        },
        Err(e) => Response::err(format!("reading request: {e}")),
    };
    let mut reply = serde_json::to_string(&response).unwrap_or_default();
    reply.push('\n');
    let _ = write.write_all(reply.as_bytes()).await;
    if stopping {
        // Only once answered: the main loop ends the process.
        daemon.stop.notify_one();
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
    fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Apply { policy } => self.apply(policy),
            Request::Show => self.show(),
            Request::Status => self.status(),
            Request::Stop => Ok(Response::err("stop is handled by the connection")),
        };
        result.unwrap_or_else(|e| Response::err(format!("{e:#}")))
    }

    /// Validates and resolves the policy, then swaps it in atomically. Any
    /// error leaves the running policy as it was.
    fn apply(&self, text: String) -> Result<Response> {
        let started = std::time::Instant::now();
        let resolved = match policy::parse(&text).and_then(|p| policy::resolve(&p)) {
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
        let in_force_ms = started.elapsed().as_secs_f64() * 1000.0;
        let applied = AppliedPolicy {
            applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            generation,
            resolved,
            text,
        };
        store_applied(&self.config.state_dir, &applied)?;
        *self.names.write().unwrap() = applied.resolved.names();
        let (hash, mode) = (&applied.resolved.hash, applied.resolved.mode.name());
        let summary = serde_json::json!({
            "hash": hash, "generation": generation, "applied_at": applied.applied_at, "mode": mode,
            "in_force_ms": in_force_ms,
        });
        self.admin_entry(
            message_id::POLICY_APPLIED,
            &format!("guard policy {hash} applied (generation {generation}, mode {mode})"),
            &[
                ("GUARD_POLICY_HASH", hash),
                ("GUARD_GENERATION", &generation.to_string()),
            ],
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
            "policy": serde_json::from_str::<serde_json::Value>(&applied.text).unwrap_or_default(),
        })))
    }

    fn status(&self) -> Result<Response> {
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
        })))
    }

    /// A `guardctl stop`: journaled with who asked; the reply goes out first.
    fn stop_requested(&self, (pid, uid): (i32, u32)) -> Response {
        let (pid, uid) = (pid.to_string(), uid.to_string());
        let lifted = if self.protected {
            "; self-protection lifted"
        } else {
            ""
        };
        self.admin_entry(
            message_id::GUARDD_STOP_REQUESTED,
            &format!("guardd stop requested by pid {pid} uid {uid}{lifted}"),
            &[(journal::field::PID, &pid), (journal::field::UID, &uid)],
        );
        Response::ok(serde_json::json!({ "stopping": true }))
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
        let mut event = serde_json::Map::new();
        event.insert("kind".into(), message_id::name(id).into());
        event.insert("message".into(), message.into());
        for (k, v) in extra {
            event.insert(k.to_ascii_lowercase(), (*v).into());
        }
        // block_in_place: callable from the runtime and from blocking handlers alike.
        let recorded = tokio::task::block_in_place(|| self.trail.record_blocking(event.into()));
        if let Err(e) = recorded {
            eprintln!("guardd: audit trail write failed: {e}: {message}");
        }
        let mut fields = vec![
            ("MESSAGE_ID", id),
            ("MESSAGE", message),
            ("PRIORITY", "5"),
            ("SYSLOG_IDENTIFIER", "guardd"),
        ];
        fields.extend_from_slice(extra);
        if let Err(e) = self.journal.send(&fields) {
            eprintln!("guardd: journal write failed: {e}: {message}");
        }
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
        let (id, priority) = match d.verdict {
            "denied" => (message_id::DENIED, "4"),
            "audited" => (message_id::AUDITED, "5"),
            _ => (message_id::WOULD_DENY, "4"),
        };
        let (inode, pid, uid, gid) = (
            d.inode.to_string(),
            d.pid.to_string(),
            d.uid.to_string(),
            d.gid.to_string(),
        );
        let message = d.message();
        let mut fields = vec![
            ("MESSAGE_ID", id),
            ("MESSAGE", message.as_str()),
            ("PRIORITY", priority),
            ("SYSLOG_IDENTIFIER", "guardd"),
            (journal::field::PATH, d.path.as_str()),
            (journal::field::INODE, inode.as_str()),
            (journal::field::DEVICE, d.device.as_str()),
            (journal::field::PID, pid.as_str()),
            (journal::field::UID, uid.as_str()),
            (journal::field::GID, gid.as_str()),
            (journal::field::COMM, d.comm.as_str()),
            (journal::field::EXE, d.exe.as_str()),
            (journal::field::ACCESS, d.access.as_str()),
            (journal::field::VERDICT, d.verdict),
            (journal::field::RULE, d.rule.as_str()),
            (journal::field::HOOK, d.hook),
        ];
        if d.fail_closed {
            fields.push(("GUARD_FAIL_CLOSED", "1"));
        }
        if let Err(e) = self.journal.send(&fields) {
            eprintln!("guardd: journal write failed: {e}: {message}");
        }
    }
}

/// Reports, once a second, how many events the kernel's rate limit
/// suppressed since the last report (the sum is never lost, only delayed).
async fn report_suppressed(daemon: Arc<Daemon>) {
    let read = |d: &Daemon| {
        d.maps
            .lock()
            .unwrap()
            .stats()
            .map(|s| s.events_suppressed)
            .unwrap_or(0)
    };
    let mut reported = read(&daemon);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = read(&daemon);
        if now > reported {
            let n = (now - reported).to_string();
            daemon.admin_entry(
                message_id::SUPPRESSED,
                &format!("guard rate limit suppressed {n} decision events"),
                &[(journal::field::SUPPRESSED, &n)],
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

/// Reads decision events from the pinned ring buffer into the journal and the audit trail.
async fn forward_events(daemon: Arc<Daemon>, ring_pin: PathBuf) -> Result<()> {
    let map =
        MapData::from_pin(&ring_pin).with_context(|| format!("opening {}", ring_pin.display()))?;
    let ring = RingBuf::try_from(Map::RingBuf(map))?;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
    loop {
        let mut ready = fd.readable_mut().await?;
        let ring = ready.get_inner_mut();
        let names = daemon.names.read().unwrap().clone();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(event) = events::decode(&item) {
                let decision = Decision::from_event(&event, &names);
                daemon.decision_entry(&decision);
                batch.push(decision.audit_event());
            }
        }
        ready.clear_ready();
        if !batch.is_empty() {
            if let Err(e) = daemon.trail.record_batch(batch).await {
                eprintln!("guardd: audit trail write failed: {e}");
            }
        }
    }
}

fn binary_state(b: &ResolvedBinary, tainted: &[(ExeKey, guard_common::Taint)]) -> String {
    use std::os::unix::fs::MetadataExt;
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
    let meta = match std::fs::metadata(&b.path) {
        Ok(m) => m,
        Err(e) => return format!("NOT ALLOWED: {}: {e}", b.path.display()),
    };
    if policy::kernel_dev(meta.dev()) != b.dev || meta.ino() != b.ino {
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
