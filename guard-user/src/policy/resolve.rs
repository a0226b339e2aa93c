//! Checking a policy against the running system and recording the kernel
//! identities (device, inode) of its directories and binaries.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use guard_common::ExeKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::identity::{Follow, Identities};
use super::immutable::{resolve_immutable, ResolvedImmutables};
use super::libraries::{resolve_libraries, ResolvedLibrary};
use super::{
    Access, Effect, Mode, Place, Pointer, Policy, PolicyError, PolicyErrors, Protected,
    Sha256Digest, StartedBy,
};

/// A policy checked against the system, ready to compile to kernel entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedPolicy {
    pub mode: Mode,
    /// Hex SHA-256 of the policy's canonical form ([`Policy::hash`]).
    pub hash: String,
    /// Protected directories; the index is the kernel's point number.
    pub points: Vec<ResolvedPoint>,
    /// Rules in document order; the index is the rule id events carry.
    pub rules: Vec<RuleInfo>,
    /// The files the binaries may map executable (`libraries`), when the
    /// policy confines them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libraries: Option<Vec<ResolvedLibrary>>,
    /// What nobody may change (`immutable`), when the policy lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<ResolvedImmutables>,
    /// The swap devices when the policy was applied, and those below them.
    #[serde(default)]
    pub swap: Vec<super::devices::DeviceBelow>,
    /// Loop devices bound, when the policy was applied, to a file inside a
    /// protected directory (or one guard could not place): kept like a
    /// protected filesystem's device.
    #[serde(default)]
    pub loops: Vec<super::devices::LoopDevice>,
    /// The block devices of the filesystems holding what the policy trusts
    /// by identity (binaries, supervisors, relays, libraries, immutable
    /// files), and those below them: kept from writes, which would change
    /// those files beneath the guard.
    #[serde(default)]
    pub trusted_devices: Vec<super::devices::DeviceBelow>,
    /// Character devices passing commands to the disks of the block devices
    /// above (points' filesystems, what they sit on, swap, trusted files').
    #[serde(default)]
    pub passthrough: Vec<Passthrough>,
}

/// A character device that passes commands to a disk guard keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Passthrough {
    /// Its kernel `dev_t`.
    pub char_dev: u32,
    /// The kept block device (kernel `dev_t`) whose disk it reaches.
    pub block_dev: u32,
}

/// A protected directory as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedPoint {
    /// Canonical path (symlinks resolved).
    pub path: PathBuf,
    /// Kernel `dev_t` of its filesystem ([`kernel_dev`]).
    pub dev: u32,
    pub ino: u64,
    /// The directories above it, up to `/`, as (kernel `dev_t` of their
    /// superblock, inode) the way `stat` sees them (a mount point is its
    /// mounted root): nothing may be mounted on them.
    #[serde(default)]
    pub ancestors: Vec<(u32, u64)>,
    /// fscrypt encrypts it: its filesystem's raw device shows only ciphertext of it.
    #[serde(default)]
    pub fscrypt: bool,
    /// The block devices below its filesystem's (what a dm target sits on,
    /// the disk of a partition): as closed to everyone as that one, except
    /// that those below dm-crypt may be read.
    #[serde(default)]
    pub below: Vec<super::devices::DeviceBelow>,
}

/// A rule with its binaries resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub id: u32,
    /// The rule's name, or its position such as `protected[0].rules[1]`.
    pub label: String,
    /// Index of its protected directory in [`ResolvedPolicy::points`].
    pub point: u32,
    pub effect: Effect,
    pub access: Access,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub binaries: Vec<ResolvedBinary>,
    /// Who alone may start the binaries (`started_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<ResolvedStartedBy>,
}

/// A rule's `started_by` with its programs resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedStartedBy {
    pub supervisor: ResolvedBinary,
    pub through: Vec<ResolvedBinary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<String>>,
}

/// How a binary may be started: its supervisor's identity, its relays',
/// its pinned arguments and its pinned environment.
type StartIdentity = (
    ExeKey,
    Vec<ExeKey>,
    Option<Vec<String>>,
    Option<Vec<String>>,
);

impl ResolvedStartedBy {
    /// The supervisor's and relays' identities, which say the same thing
    /// whatever paths named them, the arguments, and the environment in
    /// a fixed order (the kernel checks each variable on its own).
    fn identities(&self) -> StartIdentity {
        let mut through: Vec<ExeKey> = self.through.iter().map(ResolvedBinary::key).collect();
        through.sort_by_key(|k| (k.dev, k.ino));
        through.dedup();
        let environment = self.environment.clone().map(|mut entries| {
            entries.sort_unstable();
            entries.dedup();
            entries
        });
        (
            self.supervisor.key(),
            through,
            self.arguments.clone(),
            environment,
        )
    }

    /// How the binaries must be started, for error messages.
    fn describe(&self) -> String {
        let mut text = format!("started by {}", self.supervisor.path.display());
        let pinned: Vec<String> = [
            ("arguments", &self.arguments),
            ("environment", &self.environment),
        ]
        .into_iter()
        .filter_map(|(what, list)| list.as_ref().map(|list| format!("{what} {list:?}")))
        .collect();
        if !pinned.is_empty() {
            text.push_str(" with ");
            text.push_str(&pinned.join(" and "));
        }
        text
    }
}

/// A binary as the kernel identifies it (the inode of `task->mm->exe_file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedBinary {
    /// Canonical path (symlinks resolved).
    pub path: PathBuf,
    /// Kernel `dev_t` of its filesystem ([`kernel_dev`]).
    pub dev: u32,
    pub ino: u64,
    /// SHA-256 of its content when the policy was resolved.
    pub sha256: Sha256Digest,
}

impl ResolvedBinary {
    /// The binary as the kernel maps key it.
    pub fn key(&self) -> ExeKey {
        ExeKey {
            dev: self.dev,
            _pad: 0,
            ino: self.ino,
        }
    }
}

impl ResolvedPolicy {
    /// The rule an event names, if the id is one of this policy's.
    pub fn rule(&self, id: u32) -> Option<&RuleInfo> {
        self.rules.get(id as usize)
    }

    /// The names events are rendered with: point paths, rule labels, binary paths.
    /// What `policy apply` says about the loop devices it keeps.
    pub fn loop_warnings(&self) -> Vec<String> {
        self.loops
            .iter()
            .map(|device| {
                let (major, minor) = kernel_dev_parts(device.dev);
                format!(
                    "loop device {major}:{minor} is bound to {}, in a protected directory \
                     (or not to be found): nobody but guardd may read or write it while \
                     the policy is active; detach it (losetup -d) once unused",
                    device.backing.display()
                )
            })
            .collect()
    }

    /// What `policy apply` says about protected directories fscrypt does not
    /// encrypt on a filesystem they share with their parent: there the
    /// kernel decides an open of any other file by walking up to the
    /// filesystem's root, where with every protected directory encrypted one
    /// flag of the file decides (`file_open`).
    pub fn walk_warnings(&self) -> Vec<String> {
        self.points
            .iter()
            .filter(|p| !p.fscrypt && p.ancestors.first().is_some_and(|(dev, _)| *dev == p.dev))
            .map(|p| {
                format!(
                    "protected directory {} is not encrypted by fscrypt and shares its \
                     filesystem with other files: every open of a file there is decided \
                     by walking up the tree instead of by one flag; encrypt it (guardctl \
                     volume init) or give it a filesystem of its own",
                    p.path.display()
                )
            })
            .collect()
    }

    pub fn names(&self) -> crate::events::PolicyNames {
        let binaries = self
            .rules
            .iter()
            .flat_map(|rule| &rule.binaries)
            .map(|b| {
                let key = guard_common::ExeKey {
                    dev: b.dev,
                    _pad: 0,
                    ino: b.ino,
                };
                (key, b.path.clone())
            })
            .collect();
        crate::events::PolicyNames {
            points: self.points.iter().map(|p| p.path.clone()).collect(),
            rules: self.rules.iter().map(|r| r.label.clone()).collect(),
            binaries,
        }
    }
}

/// Converts a userspace `st_dev` to the kernel's internal `dev_t` encoding
/// (`(major << 20) | minor`), which is what `super_block.s_dev` holds and so
/// what the kernel programs compare against.
pub fn kernel_dev(st_dev: u64) -> u32 {
    const MINOR_BITS: u32 = 20;
    let major = libc::major(st_dev) & 0xfff;
    let minor = libc::minor(st_dev) & ((1 << MINOR_BITS) - 1);
    (major << MINOR_BITS) | minor
}

/// The (major, minor) of a kernel `dev_t`: [`kernel_dev`] undone.
pub fn kernel_dev_parts(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// Checks a parsed policy against the running system: protected directories
/// exist, are directories and do not overlap (also through symlinks or bind
/// mounts); binaries exist, are regular files and match their pinned SHA-256;
/// the compiled policy fits the kernel maps. Lists every problem found.
pub fn resolve(policy: &Policy) -> Result<ResolvedPolicy, PolicyErrors> {
    let mut resolver = Resolver::for_policy(policy);
    let mounts = match Mounts::read() {
        Ok(mounts) => mounts,
        Err(e) => {
            let at = Pointer::root().key("protected");
            let message = format!("cannot read {MOUNTINFO} to check for overlaps: {e}");
            return Err(PolicyErrors(vec![at.error(message)]));
        }
    };
    let located: Vec<Option<LocatedPoint>> = policy
        .protected
        .iter()
        .enumerate()
        .map(|(index, protected)| resolver.point(index, protected, &mounts))
        .collect();
    resolver.check_overlaps(&located);
    let rules = resolver.rules(policy);
    let libraries = policy
        .libraries
        .as_ref()
        .map(|listed| resolve_libraries(listed, &mut resolver.errors));
    let immutable = policy
        .immutable
        .as_ref()
        .map(|listed| resolve_immutable(listed, &mut resolver.errors));
    let swap = resolve_swap().unwrap_or_else(|message| {
        resolver.errors.push(Pointer::root().error(message));
        Vec::new()
    });
    if !resolver.errors.is_empty() {
        return Err(PolicyErrors(resolver.errors));
    }
    let points: Vec<ResolvedPoint> = located
        .into_iter()
        .map(|p| p.expect("no errors, so every point resolved").point)
        .collect();
    let loops = resolve_loops(&points, Path::new("/sys"))
        .map_err(|message| PolicyErrors(vec![Pointer::root().error(message)]))?;
    let trusted_devices =
        resolve_trusted_devices(&rules, &libraries, &immutable, Path::new("/sys"))
            .map_err(|message| PolicyErrors(vec![Pointer::root().error(message)]))?;
    let passthrough = resolve_passthrough(&points, &swap, &trusted_devices, Path::new("/sys"))
        .map_err(|message| PolicyErrors(vec![Pointer::root().error(message)]))?;
    let resolved = ResolvedPolicy {
        mode: policy.mode,
        hash: policy.hash(),
        points,
        rules,
        libraries,
        immutable,
        swap,
        loops,
        trusted_devices,
        passthrough,
    };
    let capacity_errors = super::compile::check_capacity(&resolved);
    if !capacity_errors.is_empty() {
        return Err(PolicyErrors(capacity_errors));
    }
    Ok(resolved)
}

/// The swap devices, which guard keeps like a protected filesystem's own
/// device. A kernel without swap has no `/proc/swaps`; any other failure
/// refuses the policy (a swap device guard cannot see must not be left open).
fn resolve_swap() -> Result<Vec<super::devices::DeviceBelow>, String> {
    let swaps = match fs::read_to_string(super::devices::PROC_SWAPS) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", super::devices::PROC_SWAPS)),
    };
    super::devices::swap_devices(&swaps, Path::new("/sys"))
}

/// The loop devices bound to a file inside a protected directory. The loop
/// driver reads and writes its file from the kernel, past every hook of
/// guard's on the file: a device bound before the policy would show a
/// protected file in the clear. A failure to list them refuses the policy.
fn resolve_loops(
    points: &[ResolvedPoint],
    sysfs: &Path,
) -> Result<Vec<super::devices::LoopDevice>, String> {
    let points: HashSet<(u32, u64)> = points.iter().map(|p| (p.dev, p.ino)).collect();
    let mut identities = Identities::default();
    let devices = super::devices::loop_devices(sysfs)
        .map_err(|e| format!("finding the loop devices: {e}"))?;
    Ok(devices
        .into_iter()
        .filter(|device| may_be_protected(&device.backing, &points, &mut identities))
        .collect())
}

/// Whether `file` (a loop device's backing file as the kernel names it) is
/// inside one of `points`. A name that does not lead to a file (deleted,
/// renamed since, another mount namespace's) cannot be placed: yes.
fn may_be_protected(
    file: &Path,
    points: &HashSet<(u32, u64)>,
    identities: &mut Identities,
) -> bool {
    if !file.is_absolute() || file.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return true;
    }
    if fs::symlink_metadata(file).is_err() {
        return true;
    }
    file.ancestors().skip(1).any(|dir| {
        identities
            .of_ancestor(dir)
            .map_or(true, |id| points.contains(&id))
    })
}

/// The block devices of the filesystems holding the files the policy trusts
/// by identity, and those below them. guard knows those files by device and
/// inode; root writing their blocks through the device would change them
/// unseen (an allowed binary's code, once the page cache lets go of it). A
/// device guard cannot see below refuses the policy.
fn resolve_trusted_devices(
    rules: &[RuleInfo],
    libraries: &Option<Vec<ResolvedLibrary>>,
    immutable: &Option<ResolvedImmutables>,
    sysfs: &Path,
) -> Result<Vec<super::devices::DeviceBelow>, String> {
    let mut filesystems: Vec<u32> = Vec::new();
    for rule in rules {
        filesystems.extend(rule.binaries.iter().map(|b| b.dev));
        if let Some(start) = &rule.started_by {
            filesystems.push(start.supervisor.dev);
            filesystems.extend(start.through.iter().map(|b| b.dev));
        }
    }
    filesystems.extend(libraries.iter().flatten().map(|l| l.dev));
    filesystems.extend(
        immutable
            .iter()
            .flat_map(|i| i.entries.iter().map(|e| e.dev)),
    );
    filesystems.sort();
    filesystems.dedup();
    let mut found = Vec::new();
    for dev in filesystems {
        let devices = super::devices::filesystem_devices(sysfs, dev)
            .map_err(|e| format!("{e} (a filesystem holding files the policy trusts)"))?;
        found.extend(devices);
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The passthrough nodes of every block device guard keeps. A failure
/// refuses the policy: a node guard cannot see must not be left open.
fn resolve_passthrough(
    points: &[ResolvedPoint],
    swap: &[super::devices::DeviceBelow],
    trusted: &[super::devices::DeviceBelow],
    sysfs: &Path,
) -> Result<Vec<Passthrough>, String> {
    let mut kept: Vec<u32> = points.iter().map(|p| p.dev).collect();
    kept.extend(points.iter().flat_map(|p| p.below.iter().map(|d| d.dev)));
    kept.extend(swap.iter().chain(trusted).map(|d| d.dev));
    kept.sort();
    kept.dedup();
    passthrough_nodes(sysfs, kept)
}

/// The passthrough nodes reaching the disks of `block_devs`.
pub fn passthrough_nodes(
    sysfs: &Path,
    block_devs: impl IntoIterator<Item = u32>,
) -> Result<Vec<Passthrough>, String> {
    let mut found = Vec::new();
    for block_dev in block_devs {
        let nodes = super::devices::passthrough_devices(sysfs, block_dev).map_err(|e| {
            let (major, minor) = kernel_dev_parts(block_dev);
            format!("finding the command passthrough devices of block device {major}:{minor}: {e}")
        })?;
        found.extend(nodes.into_iter().map(|char_dev| Passthrough {
            char_dev,
            block_dev,
        }));
    }
    Ok(found)
}

/// The access bits each passthrough node is kept from: those of its block
/// device (`kept`: dev -> bits), since it reaches the same disk.
pub fn passthrough_bits(
    nodes: &[Passthrough],
    kept: &std::collections::BTreeMap<u32, u32>,
) -> std::collections::BTreeMap<u32, u32> {
    let mut bits = std::collections::BTreeMap::new();
    for node in nodes {
        if let Some(denied) = kept.get(&node.block_dev) {
            *bits.entry(node.char_dev).or_insert(0) |= denied;
        }
    }
    bits
}

/// What makes two directories the same one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Identity {
    /// Userspace (`st_dev`, `st_ino`): catches symlink and bind-mount aliases.
    Inode(u64, u64),
    /// Filesystem (`major:minor` from mountinfo) and the path inside it: the
    /// dentry ancestry the kernel walks, which also sees through a bind mount
    /// of a subdirectory.
    FsPath(String, PathBuf),
}

/// A resolved point with its identities and those of its ancestors.
struct LocatedPoint {
    point: ResolvedPoint,
    own: Vec<Identity>,
    ancestors: Vec<Identity>,
}

/// A map filled with an entry per binary of a policy that may name
/// thousands: hashed with foldhash (still seeded per process), not SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn fast_map<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, Default::default())
}

#[derive(Default)]
struct Resolver<'p> {
    errors: Vec<PolicyError>,
    /// Binaries by the path the policy gives, so each is examined once.
    binaries: FastMap<&'p Path, Result<ResolvedBinary, String>>,
    hashing: Hashing,
}

impl<'p> Resolver<'p> {
    /// A resolver with room for every binary `policy` names.
    fn for_policy(policy: &Policy) -> Resolver<'p> {
        let binaries = policy
            .protected
            .iter()
            .flat_map(|p| &p.rules)
            .map(|r| {
                let launchers = r.started_by.as_ref().map_or(0, |s| 1 + s.through.len());
                r.binaries.len() + launchers
            })
            .sum();
        Resolver {
            errors: Vec::new(),
            binaries: fast_map(binaries),
            hashing: Hashing {
                digests: fast_map(binaries),
                ..Hashing::default()
            },
        }
    }

    fn point(
        &mut self,
        index: usize,
        protected: &Protected,
        mounts: &Mounts,
    ) -> Option<LocatedPoint> {
        let at = Pointer::protected(index).key("path");
        match locate_directory(&protected.path, mounts, &mut self.hashing.identities) {
            Ok(located) => Some(located),
            Err(message) => {
                self.errors.push(at.error(message));
                None
            }
        }
    }

    /// Refuses a directory that is (by identity) the same as, or inside,
    /// another. A file's nearest protected ancestor would otherwise decide
    /// silently, and the outer directory's rules would not mean what they say.
    fn check_overlaps(&mut self, points: &[Option<LocatedPoint>]) {
        let mut first_with_identity: HashMap<&Identity, usize> = HashMap::new();
        for (index, point) in points.iter().enumerate() {
            for identity in point.iter().flat_map(|p| &p.own) {
                first_with_identity.entry(identity).or_insert(index);
            }
        }
        let mut reported = HashSet::new();
        for (index, point) in points.iter().enumerate() {
            let Some(point) = point else { continue };
            let same = point.own.iter().map(|id| (id, "is the same directory as"));
            let inside = point.ancestors.iter().map(|id| (id, "is inside"));
            for (identity, relation) in same.chain(inside) {
                let Some(&other) = first_with_identity.get(identity) else {
                    continue;
                };
                if other == index || !reported.insert((index, other)) {
                    continue;
                }
                let other_path = &points[other].as_ref().expect("located").point.path;
                self.errors.push(Pointer::protected(index).key("path").error(format!(
                    "{} {relation} /protected/{other}/path ({}); protected directories must not overlap",
                    point.point.path.display(),
                    other_path.display()
                )));
            }
        }
    }

    fn rules(&mut self, policy: &'p Policy) -> Vec<RuleInfo> {
        let mut rules = Vec::new();
        let root = Place::Root;
        let all = root.key("protected");
        for (point, protected) in policy.protected.iter().enumerate() {
            let point_at = all.index(point);
            let rules_at = point_at.key("rules");
            for (index, rule) in protected.rules.iter().enumerate() {
                let rule_at = rules_at.index(index);
                let at = rule_at.key("binaries");
                let binaries = rule
                    .binaries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, binary)| {
                        self.binary(&binary.path, binary.sha256, &at.index(i))
                    })
                    .collect();
                let started_by = rule
                    .started_by
                    .as_ref()
                    .and_then(|started_by| self.started_by(started_by, &rule_at.key("started_by")));
                rules.push(RuleInfo {
                    id: rules.len() as u32,
                    label: policy.rule_label(point, index),
                    point: point as u32,
                    effect: rule.effect,
                    access: rule.access,
                    uid: rule.uid,
                    gid: rule.gid,
                    binaries,
                    started_by,
                });
            }
        }
        self.check_supervisors_agree(&rules);
        rules
    }

    fn started_by(&mut self, started_by: &'p StartedBy, at: &Place) -> Option<ResolvedStartedBy> {
        let supervisor = &started_by.supervisor;
        let supervisor = self.binary(&supervisor.path, supervisor.sha256, &at.key("supervisor"));
        let through: Vec<Option<ResolvedBinary>> = started_by
            .through
            .iter()
            .enumerate()
            .map(|(i, relay)| self.binary(&relay.path, relay.sha256, &at.key("through").index(i)))
            .collect();
        Some(ResolvedStartedBy {
            supervisor: supervisor?,
            through: through.into_iter().collect::<Option<_>>()?,
            arguments: started_by.arguments.clone(),
            environment: started_by.environment.clone(),
        })
    }

    /// A binary has one way to be started: every rule naming it must give it
    /// the same supervisor and relays, or none.
    fn check_supervisors_agree(&mut self, rules: &[RuleInfo]) {
        type Launch = Option<StartIdentity>;
        let mut first: FastMap<ExeKey, (&RuleInfo, Launch)> = fast_map(rules.len());
        for rule in rules {
            let launch: Launch = rule.started_by.as_ref().map(ResolvedStartedBy::identities);
            for binary in &rule.binaries {
                let (other, other_launch) =
                    first.entry(binary.key()).or_insert((rule, launch.clone()));
                if *other_launch != launch {
                    let describe = |r: &RuleInfo| match &r.started_by {
                        Some(s) => s.describe(),
                        None => "started by anyone".to_string(),
                    };
                    self.errors
                        .push(Pointer::root().key("protected").error(format!(
                            "{} is {} in rule `{}` but {} in rule `{}`; every rule naming a \
                         binary must give it the same `started_by`",
                            binary.path.display(),
                            describe(other),
                            other.label,
                            describe(rule),
                            rule.label
                        )));
                }
            }
        }
    }

    fn binary(
        &mut self,
        path: &'p Path,
        pinned: Option<Sha256Digest>,
        at: &Place,
    ) -> Option<ResolvedBinary> {
        // One hash of the path, not three: hashing a Path walks its components.
        let examined = match self.binaries.entry(path) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(examine_binary(path, &mut self.hashing)),
        };
        match examined {
            Err(message) => {
                self.errors.push(at.error(message.clone()));
                None
            }
            Ok(binary) => match pinned {
                Some(expected) if expected != binary.sha256 => {
                    self.errors.push(at.key("sha256").error(format!(
                        "{} has SHA-256 {}, not the pinned {expected}",
                        binary.path.display(),
                        binary.sha256
                    )));
                    None
                }
                _ => Some(binary.clone()),
            },
        }
    }
}

fn locate_directory(
    path: &Path,
    mounts: &Mounts,
    identities: &mut Identities,
) -> Result<LocatedPoint, String> {
    let metadata = fs::metadata(path).map_err(|e| io_problem(path, e))?;
    if !metadata.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    let canonical = fs::canonicalize(path).map_err(|e| io_problem(path, e))?;
    if canonical.parent().is_none() {
        return Err("the root directory cannot be protected".to_string());
    }
    let mut inodes = canonical
        .ancestors()
        .map(|dir| {
            let m = fs::metadata(dir).map_err(|e| io_problem(dir, e))?;
            Ok(Identity::Inode(m.dev(), m.ino()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut own = vec![inodes.remove(0)];
    let mut ancestors = inodes;
    if let Some((fs_dev, fs_path)) = mounts.locate(&canonical) {
        own.push(Identity::FsPath(fs_dev.to_string(), fs_path.clone()));
        ancestors.extend(
            fs_path
                .ancestors()
                .skip(1)
                .map(|a| Identity::FsPath(fs_dev.to_string(), a.to_path_buf())),
        );
    }
    // The identities the kernel's hooks see (refused where they would be
    // ambiguous: btrfs).
    let (dev, ino) = identities.of_path(&canonical, Follow::Symlinks)?;
    let kernel_ancestors = canonical
        .ancestors()
        .skip(1)
        .map(|dir| identities.of_ancestor(dir))
        .collect::<Result<Vec<_>, String>>()?;
    let fscrypt = crate::volume::is_encrypted_dir(&canonical);
    let (major, minor) = kernel_dev_parts(dev);
    let below = super::devices::devices_below(Path::new("/sys"), major, minor)
        .map_err(|e| format!("finding the block devices below its filesystem: {e}"))?;
    Ok(LocatedPoint {
        point: ResolvedPoint {
            path: canonical,
            dev,
            ino,
            fscrypt,
            ancestors: kernel_ancestors,
            below,
        },
        own,
        ancestors,
    })
}

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The mount table: which filesystem, and which directory of it, each mount shows.
struct Mounts(Vec<Mount>);

struct Mount {
    /// `major:minor` of the filesystem (its superblock's `s_dev`).
    dev: String,
    /// The directory of the filesystem mounted (not `/` for bind mounts of a subdirectory).
    root: PathBuf,
    mountpoint: PathBuf,
}

impl Mounts {
    fn read() -> io::Result<Mounts> {
        let text = fs::read_to_string(MOUNTINFO)?;
        let mounts = text
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                match fields.as_slice() {
                    [_, _, dev, root, mountpoint, ..] => Ok(Mount {
                        dev: dev.to_string(),
                        root: PathBuf::from(unescape_octal(root)),
                        mountpoint: PathBuf::from(unescape_octal(mountpoint)),
                    }),
                    _ => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected line {line:?}"),
                    )),
                }
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Mounts(mounts))
    }

    /// The filesystem holding `path` (canonical) and the path inside it.
    /// Of mounts on the same point, the last one listed is on top.
    fn locate(&self, path: &Path) -> Option<(&str, PathBuf)> {
        let mount = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, m)| path.starts_with(&m.mountpoint))
            .max_by_key(|(index, m)| (m.mountpoint.components().count(), *index))?
            .1;
        let inside = path.strip_prefix(&mount.mountpoint).ok()?;
        Some((&mount.dev, mount.root.join(inside)))
    }
}

/// mountinfo and /proc/swaps write space, tab, newline and backslash in
/// paths as `\ooo` octal escapes.
pub(super) fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Identity and content hash of a binary, both taken from one open file so
/// they describe the same inode.
fn examine_binary(path: &Path, hashing: &mut Hashing) -> Result<ResolvedBinary, String> {
    let not_regular = || format!("{} is not a regular file", path.display());
    // Checked before opening: opening a device node can have effects (a
    // watchdog starts, a tape rewinds).
    if !fs::metadata(path)
        .map_err(|e| io_problem(path, e))?
        .is_file()
    {
        return Err(not_regular());
    }
    let (mut file, canonical) = open_binary(path)?;
    let examined = hashing.identities.of_file(&file, &canonical)?;
    if !examined.is_file {
        return Err(not_regular());
    }
    let identity = (examined.dev, examined.ino);
    let sha256 = match hashing.digests.get(&identity) {
        Some(digest) => *digest,
        None => {
            let digest = sha256_of(&mut file, examined.size, &mut hashing.buffer)
                .map_err(|e| io_problem(&canonical, e))?;
            hashing.digests.insert(identity, digest);
            digest
        }
    };
    Ok(ResolvedBinary {
        path: canonical,
        dev: examined.dev,
        ino: examined.ino,
        sha256,
    })
}

/// Opens a binary to read, with its canonical path (symlinks resolved).
///
/// A path that is written canonically (absolute, no `.`, `..`, repeated or
/// trailing `/`) and that the kernel opens without following a symlink
/// (`openat2` with `RESOLVE_NO_SYMLINKS`) is the canonical path of what it
/// opened, with no need to ask the kernel for it: in an emulated guest that
/// procfs lookup costs more than the open. Any other path, or a refusal of
/// that open (a symlink on the way, no `openat2`), takes the general way.
fn open_binary(path: &Path) -> Result<(File, PathBuf), String> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    // O_NONBLOCK: if the path was swapped for a FIFO since it was checked,
    // opening it must not hang.
    if is_written_canonically(path) {
        if let Ok(fd) = openat2(
            CWD,
            path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS,
        ) {
            return Ok((File::from(fd), path.to_path_buf()));
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_problem(path, e))?;
    let canonical = canonical_path(&file, path)?;
    Ok((file, canonical))
}

/// Whether `path` is absolute and made only of plain names: no `.` or `..`
/// component, no empty one (`//`, a trailing `/`).
fn is_written_canonically(path: &Path) -> bool {
    match path.as_os_str().as_bytes().strip_prefix(b"/") {
        Some(rest) => rest
            .split(|b| *b == b'/')
            .all(|name| !matches!(name, b"" | b"." | b"..")),
        None => false,
    }
}

/// The canonical path of the open `file` (opened by `path`): what the kernel
/// resolved, read back in one system call where `fs::canonicalize` makes one
/// per path component (a policy may name thousands of binaries).
fn canonical_path(file: &File, path: &Path) -> Result<PathBuf, String> {
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    match fs::read_link(&link) {
        // Anything but an absolute path to a file that still exists (no
        // procfs, an unlinked file " (deleted)"): resolve the path itself.
        Ok(resolved)
            if resolved.is_absolute()
                && !resolved.as_os_str().as_bytes().ends_with(b" (deleted)") =>
        {
            Ok(resolved)
        }
        _ => fs::canonicalize(path).map_err(|e| io_problem(path, e)),
    }
}

/// What hashing binaries reuses from one to the next.
struct Hashing {
    /// Content digests by identity, so aliases of one file are hashed once.
    digests: FastMap<(u32, u64), Sha256Digest>,
    buffer: Vec<u8>,
    /// Binaries' identities as the kernel's hooks see them.
    identities: Identities,
}

impl Default for Hashing {
    fn default() -> Self {
        Hashing {
            digests: FastMap::default(),
            buffer: vec![0; READ_CHUNK],
            identities: Identities::default(),
        }
    }
}

/// Bytes read at a time when hashing: a large binary in few system calls.
const READ_CHUNK: usize = 64 * 1024;

/// SHA-256 of a file's content now (to compare with what was approved).
pub fn sha256_file(path: &Path) -> io::Result<Sha256Digest> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    sha256_of(&mut file, size, &mut vec![0; READ_CHUNK])
}

/// SHA-256 of the rest of `file`, which held `size` bytes when it was
/// stat'ed. Each read asks for one byte more than should be left, so a read
/// that comes back short after `size` bytes is the end of the file, and a
/// small file takes one read, not two. A file that has grown is read on to
/// its end.
fn sha256_of(file: &mut File, size: u64, buffer: &mut [u8]) -> io::Result<Sha256Digest> {
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    loop {
        let want = match size.checked_sub(total) {
            Some(left) => usize::try_from(left + 1).map_or(buffer.len(), |w| w.min(buffer.len())),
            None => buffer.len(),
        };
        let n = match file.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        total += n as u64;
        if n < want && total == size {
            break;
        }
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

pub(super) fn io_problem(path: &Path, error: io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("cannot read {}: {error}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;
    use std::os::unix::fs::symlink;

    /// A directory tree with protected directories and binaries, for policies to point at.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, relative: &str) -> String {
            self.dir.path().join(relative).to_str().unwrap().to_string()
        }

        fn mkdir(&self, relative: &str) -> String {
            fs::create_dir_all(self.path(relative)).unwrap();
            self.path(relative)
        }

        fn file(&self, relative: &str, content: &[u8]) -> String {
            fs::write(self.path(relative), content).unwrap();
            self.path(relative)
        }
    }

    fn hex_sha256(content: &[u8]) -> String {
        hex::encode(Sha256::digest(content))
    }

    fn policy(json: serde_json::Value) -> Policy {
        parse(&json.to_string()).unwrap()
    }

    fn rule(binaries: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"binaries": binaries, "access": ["read"], "effect": "allow"})
    }

    #[test]
    fn a_loop_devices_file_is_placed_by_its_ancestors_and_kept_when_it_cannot_be() {
        let tree = Tree::new();
        tree.mkdir("data/sub");
        let inside = PathBuf::from(tree.file("data/sub/image.bin", b"x"));
        let outside = PathBuf::from(tree.file("image.bin", b"x"));
        let mut identities = Identities::default();
        let point = identities
            .of_path(Path::new(&tree.path("data")), Follow::Symlinks)
            .unwrap();
        let points = HashSet::from([point]);
        let mut placed = |file: &Path| may_be_protected(file, &points, &mut identities);
        assert!(placed(&inside));
        assert!(!placed(&outside));
        // Deleted, renamed away, or named relative to another root: kept.
        let deleted = format!("{} (deleted)", outside.display());
        assert!(placed(Path::new(&deleted)));
        assert!(placed(Path::new(&tree.path("gone.bin"))));
        assert!(placed(Path::new("image.bin")));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/mnt/my\040disk\134x"), "/mnt/my disk\\x");
        assert_eq!(unescape_octal(r"/a\b"), r"/a\b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn mounts_locate_paths_inside_their_filesystem() {
        let mount = |dev: &str, root: &str, at: &str| Mount {
            dev: dev.into(),
            root: root.into(),
            mountpoint: at.into(),
        };
        let mounts = Mounts(vec![
            mount("8:1", "/", "/"),
            mount("8:2", "/", "/srv"),
            mount("8:1", "/var/lib", "/srv/bind"),
            mount("0:50", "/", "/srv/bind"),
        ]);
        let locate = |p: &str| mounts.locate(Path::new(p)).map(|(d, p)| (d.to_string(), p));
        assert_eq!(
            locate("/var/lib/x"),
            Some(("8:1".into(), "/var/lib/x".into()))
        );
        assert_eq!(locate("/srv/data"), Some(("8:2".into(), "/data".into())));
        assert_eq!(locate("/srvx"), Some(("8:1".into(), "/srvx".into())));
        // The later mount on /srv/bind hides the bind mount below it.
        assert_eq!(locate("/srv/bind/y"), Some(("0:50".into(), "/y".into())));
    }

    #[test]
    fn kernel_dev_uses_the_kernel_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(
            kernel_dev(libc::makedev(259, 0x12345)),
            (259 << 20) | 0x12345
        );
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
    }

    #[test]
    fn kernel_dev_parts_undoes_kernel_dev() {
        for (major, minor) in [(0, 45), (8, 1), (259, 0), (4095, 1_048_575)] {
            let dev = kernel_dev(libc::makedev(major, minor));
            assert_eq!(kernel_dev_parts(dev), (major, minor));
        }
    }

    #[test]
    fn kernel_dev_matches_what_the_kernel_reports_in_mountinfo() {
        // mountinfo's major:minor is the superblock's s_dev. (btrfs reports a
        // per-subvolume st_dev instead, so it is left out.)
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut top_mounts = HashMap::new();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let fstype = fields[fields.iter().position(|f| *f == "-").unwrap() + 1];
            if fstype != "btrfs" && !fields[4].contains('\\') {
                // A later mount on the same point hides the earlier one.
                top_mounts.insert(fields[4], fields[2]);
            }
        }
        let mut checked_block_device = false;
        for (mountpoint, dev) in top_mounts {
            let Ok(metadata) = fs::metadata(mountpoint) else {
                continue;
            };
            let (major, minor) = dev.split_once(':').unwrap();
            let (major, minor) = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
            assert_eq!(
                kernel_dev(metadata.dev()),
                (major << 20) | minor,
                "{mountpoint}"
            );
            checked_block_device |= major != 0;
        }
        assert!(
            checked_block_device,
            "no mount with a major number to check"
        );
    }

    #[test]
    fn resolves_directories_and_binaries() {
        let tree = Tree::new();
        let data = tree.mkdir("data");
        let server = tree.file("server", b"server binary");
        let alias = tree.path("server-link");
        symlink(&server, &alias).unwrap();
        let backup = tree.file("backup", b"backup binary");
        let p = policy(
            serde_json::json!({"mode": "audit", "protected": [{"path": data, "rules": [
                rule(serde_json::json!([alias])),
                {"name": "backup", "binaries": [{"path": backup, "sha256": hex_sha256(b"backup binary")}],
                 "uid": 0, "gid": 5, "access": ["read", "write"], "effect": "audit"}
            ]}]}),
        );
        let resolved = resolve(&p).unwrap();
        assert_eq!(resolved.mode, Mode::Audit);
        assert_eq!(resolved.hash, p.hash());
        let data_meta = fs::metadata(&data).unwrap();
        let root_meta = fs::metadata("/").unwrap();
        let parent_meta = fs::metadata(Path::new(&data).parent().unwrap()).unwrap();
        assert_eq!(
            resolved.points,
            vec![ResolvedPoint {
                path: fs::canonicalize(&data).unwrap(),
                dev: kernel_dev(data_meta.dev()),
                ino: data_meta.ino(),
                ancestors: resolved.points[0].ancestors.clone(),
                fscrypt: false,
                below: super::super::devices::devices_below(
                    Path::new("/sys"),
                    libc::major(data_meta.dev()),
                    libc::minor(data_meta.dev()),
                )
                .unwrap(),
            }]
        );
        let warnings = resolved.walk_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(resolved.points[0].path.to_str().unwrap()));
        let mut encrypted = resolved.clone();
        encrypted.points[0].fscrypt = true;
        assert!(encrypted.walk_warnings().is_empty());
        let ancestors = &resolved.points[0].ancestors;
        assert_eq!(
            ancestors.first(),
            Some(&(kernel_dev(parent_meta.dev()), parent_meta.ino())),
            "the parent comes first"
        );
        assert_eq!(
            ancestors.last(),
            Some(&(kernel_dev(root_meta.dev()), root_meta.ino())),
            "/ comes last"
        );
        let server_meta = fs::metadata(&server).unwrap();
        let first = &resolved.rules[0];
        assert_eq!(first.id, 0);
        assert_eq!(first.label, "protected[0].rules[0]");
        assert_eq!(first.point, 0);
        assert_eq!(first.effect, Effect::Allow);
        assert_eq!(
            first.binaries,
            vec![ResolvedBinary {
                path: fs::canonicalize(&server).unwrap(),
                dev: kernel_dev(server_meta.dev()),
                ino: server_meta.ino(),
                sha256: Sha256Digest::from_hex(&hex_sha256(b"server binary")).unwrap(),
            }]
        );
        let second = &resolved.rules[1];
        assert_eq!((second.id, second.label.as_str()), (1, "backup"));
        assert_eq!((second.uid, second.gid), (Some(0), Some(5)));
        assert_eq!(second.effect, Effect::Audit);
        assert_eq!(resolved.rule(1).unwrap().label, "backup");
        assert!(resolved.rule(2).is_none());
        let names = resolved.names();
        assert_eq!(names.points, vec![fs::canonicalize(&data).unwrap()]);
        assert_eq!(names.rules, vec!["protected[0].rules[0]", "backup"]);
        let server_key = guard_common::ExeKey {
            dev: kernel_dev(server_meta.dev()),
            _pad: 0,
            ino: server_meta.ino(),
        };
        assert_eq!(
            names.binaries[&server_key],
            fs::canonicalize(&server).unwrap()
        );
        assert_eq!(names.binaries.len(), 2);
        // A resolved policy can be stored and read back.
        let json = serde_json::to_string(&resolved).unwrap();
        assert_eq!(
            serde_json::from_str::<ResolvedPolicy>(&json).unwrap(),
            resolved
        );
    }

    #[test]
    fn binaries_resolve_to_their_canonical_path_however_written() {
        let tree = Tree::new();
        tree.mkdir("real/bin");
        let server = tree.file("real/bin/server", b"server binary");
        let canonical = fs::canonicalize(&server).unwrap();
        symlink(tree.path("real"), tree.path("alias")).unwrap();
        let written = [
            server.clone(),
            tree.path("alias/bin/server"),
            tree.path("real//bin/./server"),
            tree.path("real/bin/../bin/server"),
            tree.path("alias/../real/bin/server"),
        ];
        let mut resolver = Resolver::default();
        for path in &written {
            let binary = resolver
                .binary(Path::new(path), None, &Place::Root)
                .unwrap_or_else(|| panic!("{path}: {:?}", resolver.errors));
            assert_eq!(binary.path, canonical, "{path}");
            assert_eq!(
                binary.sha256,
                Sha256Digest::from_hex(&hex_sha256(b"server binary")).unwrap()
            );
        }
        assert!(resolver.errors.is_empty());
    }

    #[test]
    fn only_plain_absolute_paths_count_as_written_canonically() {
        for plain in ["/usr/bin/env", "/a", "/a b/c\\d"] {
            assert!(is_written_canonically(Path::new(plain)), "{plain}");
        }
        for other in [
            "/",
            "usr/bin",
            "//usr/bin",
            "/usr//bin",
            "/usr/bin/",
            "/usr/./bin",
            "/usr/../bin",
            "/..",
            "/.",
        ] {
            assert!(!is_written_canonically(Path::new(other)), "{other}");
        }
    }

    #[test]
    fn hashing_reads_to_the_end_whatever_size_was_stated() {
        let tree = Tree::new();
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expected = Sha256Digest::from_hex(&hex_sha256(&content)).unwrap();
        let file = tree.file("big", &content);
        let real = content.len() as u64;
        // As stat'ed; shrunk since (stated bigger); grown since (stated smaller).
        for stated in [real, real + 10, real - 1, 0, 5, READ_CHUNK as u64, real * 2] {
            for chunk in [7, 4096, READ_CHUNK] {
                let mut buffer = vec![0; chunk];
                let mut f = File::open(&file).unwrap();
                let digest = sha256_of(&mut f, stated, &mut buffer).unwrap();
                assert_eq!(digest, expected, "stated {stated}, chunk {chunk}");
            }
        }
        let empty = tree.file("empty", b"");
        let digest = sha256_of(&mut File::open(&empty).unwrap(), 0, &mut [0; 16]).unwrap();
        assert_eq!(digest.to_string(), hex_sha256(b""));
        assert_eq!(sha256_file(Path::new(&file)).unwrap(), expected);
    }

    #[test]
    fn reports_every_system_problem_with_its_location() {
        let tree = Tree::new();
        let data = tree.mkdir("data");
        let plain_file = tree.file("plain", b"x");
        let good = tree.file("good", b"good");
        let p = policy(serde_json::json!({"mode": "enforce", "protected": [
            {"path": tree.path("missing"), "rules": []},
            {"path": plain_file, "rules": []},
            {"path": data, "rules": [
                rule(serde_json::json!([tree.path("nope"), data])),
                rule(serde_json::json!([{"path": good, "sha256": hex_sha256(b"other")}])),
            ]},
        ]}));
        let e = resolve(&p).unwrap_err();
        let expected: &[(&str, &str)] = &[
            ("/protected/0/path", "missing does not exist"),
            ("/protected/1/path", "plain is not a directory"),
            ("/protected/2/rules/0/binaries/0", "nope does not exist"),
            (
                "/protected/2/rules/0/binaries/1",
                "data is not a regular file",
            ),
            ("/protected/2/rules/1/binaries/0/sha256", "not the pinned"),
        ];
        for (location, text) in expected {
            assert!(
                e.contains(location, text),
                "missing `{location}: {text}` in:\n{e}"
            );
        }
        assert_eq!(e.0.len(), expected.len(), "{e}");
        let mismatch = e.0.iter().find(|e| e.message.contains("pinned")).unwrap();
        assert!(
            mismatch.message.contains(&hex_sha256(b"good")),
            "{mismatch:?}"
        );
        assert!(
            mismatch.message.contains(&hex_sha256(b"other")),
            "{mismatch:?}"
        );
    }

    #[test]
    fn refuses_the_root_directory() {
        let p = policy(
            serde_json::json!({"mode": "enforce", "protected": [{"path": "/", "rules": []}]}),
        );
        let e = resolve(&p).unwrap_err();
        assert!(e.contains("/protected/0/path", "root directory"), "{e}");
    }

    #[test]
    fn refuses_nested_and_duplicate_directories() {
        let tree = Tree::new();
        let outer = tree.mkdir("outer");
        let inner = tree.mkdir("outer/inner");
        let p = policy(serde_json::json!({"mode": "enforce", "protected": [
            {"path": inner, "rules": []},
            {"path": outer, "rules": []},
            {"path": format!("{outer}/"), "rules": []},
        ]}));
        let e = resolve(&p).unwrap_err();
        assert!(
            e.contains("/protected/0/path", "is inside /protected/1/path"),
            "{e}"
        );
        assert!(
            e.contains(
                "/protected/2/path",
                "is the same directory as /protected/1/path"
            ),
            "{e}"
        );
        assert_eq!(e.0.len(), 2, "{e}");
    }

    #[test]
    fn refuses_overlap_through_a_symlinked_alias() {
        let tree = Tree::new();
        let outer = tree.mkdir("real/outer");
        tree.mkdir("real/outer/db");
        let alias = tree.path("alias");
        symlink(&outer, &alias).unwrap();
        let p = policy(serde_json::json!({"mode": "enforce", "protected": [
            {"path": outer, "rules": []},
            {"path": format!("{alias}/db"), "rules": []},
            {"path": alias, "rules": []},
        ]}));
        let e = resolve(&p).unwrap_err();
        assert!(
            e.contains("/protected/1/path", "is inside /protected/0/path"),
            "{e}"
        );
        assert!(
            e.contains(
                "/protected/2/path",
                "is the same directory as /protected/0/path"
            ),
            "{e}"
        );
    }

    #[test]
    fn refuses_overlap_through_bind_mounts() {
        // Needs root for a mount namespace of our own; says so when skipped.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for bind mounts");
            return;
        }
        let tree = Tree::new();
        let outer = tree.mkdir("outer");
        tree.mkdir("outer/db");
        let whole = tree.mkdir("whole");
        let sub = tree.mkdir("sub");
        let status = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {outer} {whole} && mount --bind {outer}/db {sub} && \
                 {exe} --exact policy::resolve::tests::bind_mount_probe --nocapture --ignored",
                exe = std::env::current_exe().unwrap().display()
            ))
            .env("GUARD_BIND_PROBE", format!("{outer}:{whole}:{sub}"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the probe inside the mount namespace failed"
        );
    }

    /// Runs inside the namespace set up by `refuses_overlap_through_bind_mounts`.
    #[test]
    #[ignore = "run by refuses_overlap_through_bind_mounts"]
    fn bind_mount_probe() {
        let spec = std::env::var("GUARD_BIND_PROBE").expect("run by the bind mount test");
        let [outer, whole, sub]: [&str; 3] =
            spec.split(':').collect::<Vec<_>>().try_into().unwrap();
        // `whole` shows `outer`: its db is outer's db.
        let p = policy(serde_json::json!({"mode": "enforce", "protected": [
            {"path": outer, "rules": []},
            {"path": format!("{whole}/db"), "rules": []},
        ]}));
        let e = resolve(&p).unwrap_err();
        assert!(
            e.contains("/protected/1/path", "is inside /protected/0/path"),
            "{e}"
        );
        // `sub` shows outer/db: no path ancestor of `sub` is `outer`, but the
        // kernel's dentry walk from a file in `sub` reaches it.
        let p = policy(serde_json::json!({"mode": "enforce", "protected": [
            {"path": outer, "rules": []},
            {"path": sub, "rules": []},
        ]}));
        let e = resolve(&p).unwrap_err();
        assert!(
            e.contains("/protected/1/path", "is inside /protected/0/path"),
            "{e}"
        );
        assert_eq!(e.0.len(), 1, "{e}");
        // And the other way round: the outer directory given through the bind mount.
        let p = policy(serde_json::json!({"mode": "enforce", "protected": [
            {"path": sub, "rules": []},
            {"path": whole, "rules": []},
        ]}));
        let e = resolve(&p).unwrap_err();
        assert!(
            e.contains("/protected/0/path", "is inside /protected/1/path"),
            "{e}"
        );
    }
}
