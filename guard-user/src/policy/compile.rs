//! Compiling a resolved policy to the kernel's map entries (`guard_common`).

use std::collections::{BTreeMap, BTreeSet};

use guard_common::{
    access, dir_value, env_entry, library, Arguments, DevKey, DirKey, EnvKey, ExeKey, LaunchKey,
    PolicyMeta, RuleKey, RuleValue, ANY_ID, IMMUTABLE_POINT, MAX_ANCESTORS, MAX_ARGUMENT_BYTES,
    MAX_ENV_ENTRIES, MAX_ENV_ENTRY_BYTES, MAX_EXES, MAX_IMMUTABLE_LISTED, MAX_LIBRARIES,
    MAX_POINTS, MAX_RULE_ENTRIES,
};

use super::{Effect, Pointer, PolicyError, ResolvedPolicy};

/// Everything one policy generation puts in the kernel maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntries {
    /// `META[generation]`.
    pub meta: PolicyMeta,
    /// `DEVS`: filesystems holding a protected directory.
    pub devs: Vec<DevKey>,
    /// `DIRS`: protected directories and their point index, with
    /// `dir_value::PLAIN` when fscrypt does not encrypt the directory.
    pub dirs: Vec<(DirKey, u32)>,
    /// `RAW_DEVICES`: what nobody gets on the block device of a filesystem
    /// holding protected directories: write, and read unless fscrypt
    /// encrypts every protected directory there.
    pub raw_devices: Vec<(DevKey, u32)>,
    /// `PASSTHROUGH`: the same for character devices passing commands to
    /// those devices' disks.
    pub passthrough: Vec<(DevKey, u32)>,
    /// `ANCESTORS`: directories above protected ones, and a point below each.
    pub ancestors: Vec<(DirKey, u32)>,
    /// `RULE_SLOTS`: one entry per (point, binary, uid or ANY, gid or ANY).
    pub rules: Vec<(RuleKey, RuleValue)>,
    /// `EXES`: every binary some rule names.
    pub exes: Vec<ExeKey>,
    /// `SUPERVISORS`: binaries only their supervisor may start, and that supervisor.
    pub supervisors: Vec<(LaunchKey, ExeKey)>,
    /// `ARGUMENTS`: the argument lists binaries must run with.
    pub arguments: Vec<(LaunchKey, Arguments)>,
    /// `ENVIRONMENT`: for each binary whose environment is pinned, a
    /// `PINNED` marker and the variables it may run with (value always 1).
    pub environment: Vec<(EnvKey, u32)>,
    /// `RELAYS`: programs a supervisor may start a binary through.
    pub relays: Vec<LaunchKey>,
    /// Supervisors and relays: immutable while the policy is active, like
    /// the allowed binaries.
    pub launchers: Vec<ExeKey>,
    /// `LIBRARIES`: with `libraries` in the policy, every allowed binary
    /// (`CONFINED`) and every listed file (`APPROVED`).
    pub libraries: Vec<(LaunchKey, u32)>,
    /// The listed files: immutable while the policy is active.
    pub library_files: Vec<ExeKey>,
    /// `IMMUTABLE`: what the policy's `immutable` lists, with its kind
    /// (`immutable::FILE` or `immutable::DIR`).
    pub immutable: Vec<(ExeKey, u32)>,
}

/// Sort key of a rule entry, so the output order does not depend on hashing.
type RuleOrder = (u32, u32, u64, u32, u32);

/// Sort key of an `ENVIRONMENT` entry: binary, kind, bytes.
type EnvOrder = ((u32, u64), u32, [u8; MAX_ENV_ENTRY_BYTES]);

impl ResolvedPolicy {
    /// The map entries of this policy as generation `generation`, in a stable order.
    ///
    /// Rules that produce the same key are merged: `allow` is the union of the
    /// access of `allow` and `audit` rules, `audit` that of `audit` rules, and
    /// `rule` the lowest rule id. The kernel looks up (uid, gid), (uid, ANY),
    /// (ANY, gid) and (ANY, ANY) and ORs what it finds, so the cost of a
    /// decision does not grow with the number of rules.
    pub fn entries(&self, generation: u32) -> PolicyEntries {
        let devs: BTreeSet<u32> = self.points.iter().map(|p| p.dev).collect();
        let dirs = self
            .points
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let key = DirKey {
                    generation,
                    dev: p.dev,
                    ino: p.ino,
                };
                let plain = if p.fscrypt { 0 } else { dir_value::PLAIN };
                (key, index as u32 | plain)
            })
            .collect();

        let mut raw_devices: BTreeMap<u32, u32> = BTreeMap::new();
        for point in &self.points {
            let denied = raw_devices.entry(point.dev).or_insert(access::WRITE);
            if !point.fscrypt {
                *denied |= access::READ;
            }
            for device in &point.below {
                let denied = raw_devices.entry(device.dev).or_insert(access::WRITE);
                if !point.fscrypt && !device.ciphertext {
                    *denied |= access::READ;
                }
            }
        }
        // Swapped-out pages of the database: in the clear unless below dm-crypt.
        for device in &self.swap {
            let denied = raw_devices.entry(device.dev).or_insert(access::WRITE);
            if !device.ciphertext {
                *denied |= access::READ;
            }
        }
        // A loop device reads and writes its protected file past every hook.
        for device in &self.loops {
            *raw_devices.entry(device.dev).or_insert(0) |= access::READ | access::WRITE;
        }
        // The files guard trusts by identity: their blocks may be read, not
        // written beneath the filesystem.
        for device in &self.trusted_devices {
            raw_devices.entry(device.dev).or_insert(access::WRITE);
        }
        let passthrough = super::resolve::passthrough_bits(&self.passthrough, &raw_devices);
        let mut ancestors: BTreeMap<(u32, u64), u32> = BTreeMap::new();
        for (index, point) in self.points.iter().enumerate() {
            for ancestor in &point.ancestors {
                ancestors.entry(*ancestor).or_insert(index as u32);
            }
        }
        // Nothing may be mounted on an immutable entry or above one either:
        // a mount would put other files in their place.
        if let Some(immutable) = &self.immutable {
            let entries = immutable.entries.iter().map(|e| (e.dev, e.ino));
            for identity in entries.chain(immutable.ancestors.iter().copied()) {
                ancestors.entry(identity).or_insert(IMMUTABLE_POINT);
            }
        }

        // Collected, then sorted and merged: a policy may name thousands of
        // binaries, and a sort of a list costs less than as many inserts
        // into a tree.
        let binaries = self.rules.iter().map(|r| r.binaries.len()).sum();
        let mut rules: Vec<(RuleOrder, RuleValue)> = Vec::with_capacity(binaries);
        let mut exes: Vec<(u32, u64)> = Vec::with_capacity(binaries);
        for rule in &self.rules {
            let audit = match rule.effect {
                Effect::Allow => 0,
                Effect::Audit => rule.access.0,
            };
            let uid = rule.uid.unwrap_or(ANY_ID);
            let gid = rule.gid.unwrap_or(ANY_ID);
            for binary in &rule.binaries {
                exes.push((binary.dev, binary.ino));
                let value = RuleValue {
                    allow: rule.access.0,
                    audit,
                    rule: rule.id,
                    ..RuleValue::default()
                };
                rules.push(((rule.point, binary.dev, binary.ino, uid, gid), value));
            }
        }
        rules.sort_unstable_by_key(|(order, _)| *order);
        rules.dedup_by(|(order, value), (kept_order, kept)| {
            let same = order == kept_order;
            if same {
                kept.allow |= value.allow;
                kept.audit |= value.audit;
                kept.rule = kept.rule.min(value.rule);
            }
            same
        });
        exes.sort_unstable();
        exes.dedup();

        let launch_key = |exe: ExeKey| LaunchKey {
            generation,
            _pad: 0,
            exe,
        };
        let mut supervisors = BTreeMap::new();
        let mut relays = BTreeSet::new();
        for rule in &self.rules {
            let Some(started_by) = &rule.started_by else {
                continue;
            };
            for binary in &rule.binaries {
                supervisors.insert(exe_order(binary.key()), started_by.supervisor.key());
            }
            relays.extend(started_by.through.iter().map(|r| exe_order(r.key())));
        }
        let mut arguments = BTreeMap::new();
        for rule in &self.rules {
            let Some(pinned) = rule.started_by.as_ref().and_then(|s| s.arguments.as_ref()) else {
                continue;
            };
            for binary in &rule.binaries {
                arguments.insert(exe_order(binary.key()), argument_bytes(pinned));
            }
        }
        let mut environment: BTreeSet<EnvOrder> = BTreeSet::new();
        for rule in &self.rules {
            let Some(pinned) = rule
                .started_by
                .as_ref()
                .and_then(|s| s.environment.as_ref())
            else {
                continue;
            };
            for binary in &rule.binaries {
                let exe = exe_order(binary.key());
                environment.insert((exe, env_entry::PINNED, [0; MAX_ENV_ENTRY_BYTES]));
                environment.extend(pinned.iter().map(|entry| {
                    let (kind, bytes) = environment_bytes(entry);
                    (exe, kind, bytes)
                }));
            }
        }
        let launchers: BTreeSet<(u32, u64)> = supervisors
            .values()
            .map(|k: &ExeKey| exe_order(*k))
            .chain(relays.iter().copied())
            .collect();

        let (libraries, library_files) = self.library_entries(&exes, &launch_key);

        PolicyEntries {
            meta: PolicyMeta {
                mode: self.mode.kernel_value(),
                uses_ids: self
                    .rules
                    .iter()
                    .any(|r| r.uid.is_some() || r.gid.is_some()) as u32,
                supervises: !supervisors.is_empty() as u32,
                confines: self.libraries.is_some() as u32,
                pins_arguments: !arguments.is_empty() as u32,
                pins_environment: !environment.is_empty() as u32,
            },
            devs: devs
                .into_iter()
                .map(|dev| DevKey { generation, dev })
                .collect(),
            dirs,
            raw_devices: raw_devices
                .into_iter()
                .map(|(dev, denied)| (DevKey { generation, dev }, denied))
                .collect(),
            passthrough: passthrough
                .into_iter()
                .map(|(dev, denied)| (DevKey { generation, dev }, denied))
                .collect(),
            ancestors: ancestors
                .into_iter()
                .map(|((dev, ino), point)| {
                    (
                        DirKey {
                            generation,
                            dev,
                            ino,
                        },
                        point,
                    )
                })
                .collect(),
            rules: rules
                .into_iter()
                .map(|((point, exe_dev, exe_ino, uid, gid), value)| {
                    let key = RuleKey {
                        generation,
                        point,
                        exe_dev,
                        uid,
                        exe_ino,
                        gid,
                        _pad: 0,
                    };
                    (key, value)
                })
                .collect(),
            exes: exes.into_iter().map(exe_key).collect(),
            supervisors: supervisors
                .into_iter()
                .map(|(exe, supervisor)| (launch_key(exe_key(exe)), supervisor))
                .collect(),
            relays: relays
                .into_iter()
                .map(|exe| launch_key(exe_key(exe)))
                .collect(),
            arguments: arguments
                .into_iter()
                .map(|(exe, pinned)| (launch_key(exe_key(exe)), pinned))
                .collect(),
            environment: environment
                .into_iter()
                .map(|(exe, kind, bytes)| {
                    let key = EnvKey {
                        launch: launch_key(exe_key(exe)),
                        kind,
                        _pad: 0,
                        bytes,
                    };
                    (key, 1)
                })
                .collect(),
            launchers: launchers.into_iter().map(exe_key).collect(),
            libraries,
            library_files,
            immutable: self
                .immutable
                .iter()
                .flat_map(|i| &i.entries)
                .map(|entry| (entry.key(), entry.kind()))
                .collect(),
        }
    }

    /// `LIBRARIES` entries (confined binaries, approved files) and the
    /// approved files; none when the policy lists no `libraries`.
    fn library_entries(
        &self,
        exes: &[(u32, u64)],
        launch_key: &dyn Fn(ExeKey) -> LaunchKey,
    ) -> (Vec<(LaunchKey, u32)>, Vec<ExeKey>) {
        let Some(listed) = &self.libraries else {
            return (Vec::new(), Vec::new());
        };
        let mut bits: BTreeMap<(u32, u64), u32> = BTreeMap::new();
        for exe in exes {
            *bits.entry(*exe).or_default() |= library::CONFINED;
        }
        for file in listed {
            *bits.entry(exe_order(file.key())).or_default() |= library::APPROVED;
        }
        let files: BTreeSet<(u32, u64)> = listed.iter().map(|f| exe_order(f.key())).collect();
        (
            bits.into_iter()
                .map(|(exe, bits)| (launch_key(exe_key(exe)), bits))
                .collect(),
            files.into_iter().map(exe_key).collect(),
        )
    }
}

/// `arguments` as the process holds them: NUL-terminated, zero-padded
/// (the parser checked that they fit).
fn argument_bytes(arguments: &[String]) -> Arguments {
    let mut pinned = Arguments {
        len: 0,
        count: arguments.len() as u32,
        bytes: [0; MAX_ARGUMENT_BYTES],
    };
    let mut at = 0;
    for argument in arguments {
        pinned.bytes[at..at + argument.len()].copy_from_slice(argument.as_bytes());
        at += argument.len() + 1;
    }
    pinned.len = at as u32;
    pinned
}

/// The kind and bytes of a pinned environment entry as the kernel compares
/// them: `NAME=VALUE` whole (`EXACT`), or `NAME=` for a name with any value
/// (`NAME`); the zero padding terminates them (the parser checked that
/// they fit).
fn environment_bytes(entry: &str) -> (u32, [u8; MAX_ENV_ENTRY_BYTES]) {
    let mut bytes = [0; MAX_ENV_ENTRY_BYTES];
    bytes[..entry.len()].copy_from_slice(entry.as_bytes());
    if entry.contains('=') {
        (env_entry::EXACT, bytes)
    } else {
        bytes[entry.len()] = b'=';
        (env_entry::NAME, bytes)
    }
}

/// An `ExeKey` as a sortable pair, so the output order does not depend on hashing.
fn exe_order(key: ExeKey) -> (u32, u64) {
    (key.dev, key.ino)
}

fn exe_key((dev, ino): (u32, u64)) -> ExeKey {
    ExeKey { dev, _pad: 0, ino }
}

/// Two generations share the maps during an apply, so one policy may use half.
pub const fn per_policy_capacity(map_capacity: u32) -> usize {
    (map_capacity / 2) as usize
}

/// Refuses a policy the kernel maps cannot hold.
pub(super) fn check_capacity(policy: &ResolvedPolicy) -> Vec<PolicyError> {
    let entries = policy.entries(0);
    let at = Pointer::root().key("protected");
    let checks = [
        ("protected directories", entries.dirs.len(), MAX_POINTS),
        // The device maps hold two generations of `MAX_POINTS`.
        (
            "block devices kept (filesystems, what they sit on, swap, loops, trusted files')",
            entries.raw_devices.len(),
            MAX_POINTS,
        ),
        (
            "command passthrough devices of those",
            entries.passthrough.len(),
            MAX_POINTS,
        ),
        (
            "directories above protected ones",
            entries.ancestors.len(),
            MAX_ANCESTORS,
        ),
        ("rule entries", entries.rules.len(), MAX_RULE_ENTRIES),
        ("distinct binaries", entries.exes.len(), MAX_EXES),
        (
            "binaries with a supervisor",
            entries.supervisors.len(),
            MAX_EXES,
        ),
        ("relays (`through`)", entries.relays.len(), MAX_EXES),
        (
            "allowed binaries and approved libraries",
            entries.libraries.len(),
            MAX_LIBRARIES,
        ),
        (
            "immutable files and folders",
            entries.immutable.len(),
            MAX_IMMUTABLE_LISTED,
        ),
        // The map holds two generations of `MAX_ENV_ENTRIES`.
        (
            "pinned environment entries (a marker per binary and one per variable)",
            entries.environment.len(),
            2 * MAX_ENV_ENTRIES,
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, count, capacity)| *count > per_policy_capacity(*capacity))
        .map(|(what, count, capacity)| {
            at.error(format!(
                "the policy has {count} {what}; the kernel holds at most {} per policy \
                 (one entry per protected directory, binary, uid and gid)",
                per_policy_capacity(capacity)
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::resolve::{Passthrough, ResolvedStartedBy};
    use crate::policy::{
        resolve, Access, Mode, ResolvedBinary, ResolvedPoint, RuleInfo, Sha256Digest,
    };
    use guard_common::access::*;
    use guard_common::{MODE_AUDIT, MODE_ENFORCE};

    fn binary(dev: u32, ino: u64) -> ResolvedBinary {
        ResolvedBinary {
            path: format!("/bin/{dev}-{ino}").into(),
            dev,
            ino,
            sha256: Sha256Digest([0; 32]),
        }
    }

    fn point(dev: u32, ino: u64) -> ResolvedPoint {
        ResolvedPoint {
            path: format!("/p/{dev}-{ino}").into(),
            dev,
            ino,
            ancestors: vec![(dev, 2)],
            fscrypt: dev == 7,
            below: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(
        id: u32,
        point: u32,
        effect: Effect,
        access: u32,
        uid: Option<u32>,
        gid: Option<u32>,
        binaries: Vec<ResolvedBinary>,
    ) -> RuleInfo {
        RuleInfo {
            id,
            label: format!("r{id}"),
            point,
            effect,
            access: Access(access),
            uid,
            gid,
            binaries,
            started_by: None,
        }
    }

    fn key(generation: u32, point: u32, exe: (u32, u64), uid: u32, gid: u32) -> RuleKey {
        RuleKey {
            generation,
            point,
            exe_dev: exe.0,
            uid,
            exe_ino: exe.1,
            gid,
            _pad: 0,
        }
    }

    #[test]
    fn compiles_points_rules_and_binaries() {
        let policy = ResolvedPolicy {
            mode: Mode::Enforce,
            hash: String::new(),
            points: vec![point(5, 100), point(7, 200), point(5, 300)],
            rules: vec![
                rule(
                    0,
                    0,
                    Effect::Allow,
                    READ | WRITE,
                    None,
                    None,
                    vec![binary(1, 10)],
                ),
                rule(
                    1,
                    1,
                    Effect::Audit,
                    READ,
                    Some(0),
                    None,
                    vec![binary(1, 10), binary(2, 20)],
                ),
                rule(
                    2,
                    2,
                    Effect::Allow,
                    DELETE,
                    Some(27),
                    Some(28),
                    vec![binary(2, 20)],
                ),
            ],
            libraries: None,
            immutable: None,
            swap: Vec::new(),
            loops: Vec::new(),
            trusted_devices: Vec::new(),
            passthrough: Vec::new(),
        };
        let e = policy.entries(9);
        assert_eq!(e.meta.mode, MODE_ENFORCE);
        // Device 7's only point is fscrypt-encrypted: its raw device may be read.
        assert_eq!(
            e.raw_devices,
            vec![
                (
                    DevKey {
                        generation: 9,
                        dev: 5
                    },
                    READ | WRITE
                ),
                (
                    DevKey {
                        generation: 9,
                        dev: 7
                    },
                    WRITE
                ),
            ]
        );
        assert_eq!(
            e.devs,
            vec![
                DevKey {
                    generation: 9,
                    dev: 5
                },
                DevKey {
                    generation: 9,
                    dev: 7
                }
            ]
        );
        // Device 7's point is fscrypt-encrypted: the others are plain.
        assert_eq!(
            e.dirs,
            vec![
                (
                    DirKey {
                        generation: 9,
                        dev: 5,
                        ino: 100
                    },
                    dir_value::PLAIN
                ),
                (
                    DirKey {
                        generation: 9,
                        dev: 7,
                        ino: 200
                    },
                    1
                ),
                (
                    DirKey {
                        generation: 9,
                        dev: 5,
                        ino: 300
                    },
                    2 | dir_value::PLAIN
                ),
            ]
        );
        let value = |allow, audit, rule| RuleValue {
            allow,
            audit,
            rule,
            _pad: 0,
        };
        assert_eq!(
            e.rules,
            vec![
                (
                    key(9, 0, (1, 10), ANY_ID, ANY_ID),
                    value(READ | WRITE, 0, 0)
                ),
                (key(9, 1, (1, 10), 0, ANY_ID), value(READ, READ, 1)),
                (key(9, 1, (2, 20), 0, ANY_ID), value(READ, READ, 1)),
                (key(9, 2, (2, 20), 27, 28), value(DELETE, 0, 2)),
            ]
        );
        assert_eq!(
            e.exes,
            vec![
                ExeKey {
                    dev: 1,
                    _pad: 0,
                    ino: 10
                },
                ExeKey {
                    dev: 2,
                    _pad: 0,
                    ino: 20
                },
            ]
        );
    }

    #[test]
    fn merges_rules_with_the_same_key() {
        let policy = ResolvedPolicy {
            mode: Mode::Audit,
            hash: String::new(),
            points: vec![point(5, 100)],
            rules: vec![
                rule(
                    0,
                    0,
                    Effect::Allow,
                    WRITE,
                    Some(3),
                    None,
                    vec![binary(1, 10)],
                ),
                rule(
                    1,
                    0,
                    Effect::Audit,
                    READ | SETATTR,
                    Some(3),
                    None,
                    vec![binary(1, 10)],
                ),
                rule(
                    2,
                    0,
                    Effect::Audit,
                    EXEC,
                    Some(3),
                    None,
                    vec![binary(1, 10), binary(1, 10)],
                ),
                rule(
                    3,
                    0,
                    Effect::Allow,
                    LINK,
                    Some(4),
                    None,
                    vec![binary(1, 10)],
                ),
            ],
            libraries: None,
            immutable: None,
            swap: Vec::new(),
            loops: Vec::new(),
            trusted_devices: Vec::new(),
            passthrough: Vec::new(),
        };
        let e = policy.entries(1);
        assert_eq!(e.meta.mode, MODE_AUDIT);
        assert_eq!(
            e.rules,
            vec![
                (
                    key(1, 0, (1, 10), 3, ANY_ID),
                    RuleValue {
                        allow: WRITE | READ | SETATTR | EXEC,
                        audit: READ | SETATTR | EXEC,
                        rule: 0,
                        _pad: 0
                    }
                ),
                (
                    key(1, 0, (1, 10), 4, ANY_ID),
                    RuleValue {
                        allow: LINK,
                        audit: 0,
                        rule: 3,
                        _pad: 0
                    }
                ),
            ]
        );
        assert_eq!(e.exes.len(), 1);
    }

    #[test]
    fn a_thousand_rules_resolve_and_compile_with_merged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let binaries: Vec<String> = (0..4)
            .map(|i| {
                let path = dir.path().join(format!("bin{i}"));
                std::fs::write(&path, vec![i as u8; 1 << 20]).unwrap();
                path.to_str().unwrap().to_string()
            })
            .collect();
        let rules: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                serde_json::json!({
                    "binaries": [binaries[i % 4], binaries[(i + 1) % 4]],
                    "uid": i % 50,
                    "access": [if i % 2 == 0 { "read" } else { "write" }],
                    "effect": if i % 3 == 0 { "audit" } else { "allow" },
                })
            })
            .collect();
        let text =
            serde_json::json!({"mode": "enforce", "protected": [{"path": data, "rules": rules}]});
        let started = std::time::Instant::now();
        let policy = crate::policy::parse(&text.to_string()).unwrap();
        let resolved = resolve(&policy).unwrap();
        let entries = resolved.entries(1);
        eprintln!(
            "parse + resolve + compile of 1000 rules: {:?}",
            started.elapsed()
        );
        assert_eq!(resolved.rules.len(), 1000);
        // uid = i % 50 and binaries follow i % 4, so keys repeat: 50 uids x 4 binaries.
        assert_eq!(entries.rules.len(), 200);
        assert_eq!(entries.exes.len(), 4);
        let lowest = entries.rules.iter().map(|(_, v)| v.rule).max().unwrap();
        assert!(lowest < 100, "merged entries keep the lowest rule id");
    }

    #[test]
    fn started_by_compiles_to_supervisors_relays_and_immutable_launchers() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            path
        };
        let (server, tool, supervisor, relay) = (
            file("server"),
            file("tool"),
            file("supervisor"),
            file("relay"),
        );
        let text = serde_json::json!({"mode": "enforce", "protected": [{"path": data, "rules": [
            {"binaries": [server], "access": ["read"], "effect": "allow",
             "started_by": {"supervisor": supervisor, "through": [relay]}},
            {"binaries": [tool], "access": ["read"], "effect": "allow"},
        ]}]});
        let policy = crate::policy::parse(&text.to_string()).unwrap();
        let e = resolve(&policy).unwrap().entries(3);
        let key = |path: &std::path::Path| {
            let m = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
            e.exes
                .iter()
                .chain(&e.launchers)
                .find(|k| k.ino == m)
                .copied()
                .unwrap()
        };
        assert_eq!(e.meta.supervises, 1);
        let launch = |exe| LaunchKey {
            generation: 3,
            _pad: 0,
            exe,
        };
        assert_eq!(
            e.supervisors,
            vec![(launch(key(&server)), key(&supervisor))]
        );
        assert_eq!(e.relays, vec![launch(key(&relay))]);
        assert_eq!(e.launchers.len(), 2);
        assert_eq!(
            e.exes.len(),
            2,
            "the tool has no supervisor and stays in EXES"
        );
    }

    #[test]
    fn pinned_arguments_compile_to_nul_terminated_bytes_for_each_binary() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (server, supervisor) = (dir.path().join("server"), dir.path().join("supervisor"));
        std::fs::write(&server, "server").unwrap();
        std::fs::write(&supervisor, "supervisor").unwrap();
        let text = serde_json::json!({"mode": "enforce", "protected": [{"path": data, "rules": [
            {"binaries": [server], "access": ["read"], "effect": "allow",
             "started_by": {"supervisor": supervisor,
                            "arguments": ["/usr/sbin/mariadbd", "--user=mysql"]}},
        ]}]});
        let policy = crate::policy::parse(&text.to_string()).unwrap();
        let e = resolve(&policy).unwrap().entries(3);
        assert_eq!(e.meta.pins_arguments, 1);
        assert_eq!(e.arguments.len(), 1);
        let (key, pinned) = &e.arguments[0];
        assert_eq!(key.generation, 3);
        assert_eq!(key.exe, e.exes[0]);
        let expected = b"/usr/sbin/mariadbd\0--user=mysql\0";
        assert_eq!(pinned.len as usize, expected.len());
        assert_eq!(pinned.count, 2);
        assert_eq!(&pinned.bytes[..expected.len()], expected);
        assert!(pinned.bytes[expected.len()..].iter().all(|b| *b == 0));
    }

    #[test]
    fn pinned_environment_compiles_to_a_marker_and_an_entry_per_variable() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (server, supervisor) = (dir.path().join("server"), dir.path().join("supervisor"));
        std::fs::write(&server, "server").unwrap();
        std::fs::write(&supervisor, "supervisor").unwrap();
        let policy = |started_by: serde_json::Value| {
            let text = serde_json::json!({"mode": "enforce", "protected": [{"path": data, "rules": [
                {"binaries": [server], "access": ["read"], "effect": "allow",
                 "started_by": started_by},
            ]}]});
            resolve(&crate::policy::parse(&text.to_string()).unwrap())
                .unwrap()
                .entries(3)
        };
        let e = policy(serde_json::json!({"supervisor": supervisor,
            "environment": ["LANG=C", "TZ", "LANG=C.UTF-8"]}));
        assert_eq!(e.meta.pins_environment, 1);
        assert_eq!(e.meta.pins_arguments, 0);
        let launch = LaunchKey {
            generation: 3,
            _pad: 0,
            exe: e.exes[0],
        };
        let entry = |kind, text: &[u8]| {
            let mut bytes = [0; MAX_ENV_ENTRY_BYTES];
            bytes[..text.len()].copy_from_slice(text);
            let key = EnvKey {
                launch,
                kind,
                _pad: 0,
                bytes,
            };
            (key, 1)
        };
        assert_eq!(
            e.environment,
            vec![
                entry(env_entry::PINNED, b""),
                entry(env_entry::EXACT, b"LANG=C"),
                entry(env_entry::EXACT, b"LANG=C.UTF-8"),
                entry(env_entry::NAME, b"TZ="),
            ]
        );

        // An empty list pins the environment to nothing at all.
        let e = policy(serde_json::json!({"supervisor": supervisor, "environment": []}));
        assert_eq!(e.meta.pins_environment, 1);
        assert_eq!(e.environment, vec![entry(env_entry::PINNED, b"")]);

        let e = policy(serde_json::json!({"supervisor": supervisor}));
        assert_eq!(e.meta.pins_environment, 0);
        assert!(e.environment.is_empty());
    }

    #[test]
    fn immutable_entries_carry_their_kind_and_nothing_may_be_mounted_on_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("server.cnf"), "[mysqld]").unwrap();
        let identity = |path: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(path).unwrap();
            (super::super::resolve::kernel_dev(m.dev()), m.ino())
        };
        let text = serde_json::json!({"mode": "enforce",
            "protected": [{"path": data, "rules": []}], "immutable": [conf]});
        let e = resolve(&crate::policy::parse(&text.to_string()).unwrap())
            .unwrap()
            .entries(2);
        let kind = |path: &std::path::Path| {
            let (dev, ino) = identity(path);
            e.immutable
                .iter()
                .find(|(k, _)| k.dev == dev && k.ino == ino)
                .map(|(_, kind)| *kind)
        };
        assert_eq!(kind(&conf), Some(guard_common::immutable::DIR));
        assert_eq!(
            kind(&conf.join("server.cnf")),
            Some(guard_common::immutable::FILE)
        );
        assert_eq!(e.immutable.len(), 2);
        let mounted_on = |path: &std::path::Path| {
            let (dev, ino) = identity(path);
            e.ancestors
                .iter()
                .any(|(k, _)| k.generation == 2 && k.dev == dev && k.ino == ino)
        };
        for path in [&conf, &conf.join("server.cnf"), dir.path()] {
            assert!(mounted_on(path), "{} may be mounted on", path.display());
        }
    }

    #[test]
    fn libraries_confine_every_allowed_binary_to_the_listed_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let libs = dir.path().join("libs");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&libs).unwrap();
        let file = |path: std::path::PathBuf| {
            std::fs::write(&path, path.to_str().unwrap()).unwrap();
            path
        };
        let (server, tool) = (
            file(dir.path().join("server")),
            file(dir.path().join("tool")),
        );
        let (libc, plugin) = (
            file(libs.join("libc.so")),
            file(dir.path().join("plugin.so")),
        );
        let ino = |path: &std::path::Path| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
        };
        let rules = serde_json::json!([
            {"binaries": [server], "access": ["read"], "effect": "allow"},
            {"binaries": [tool], "access": ["read"], "effect": "allow"},
        ]);
        let text = serde_json::json!({"mode": "enforce", "protected": [{"path": data, "rules": rules}],
            "libraries": [libs, plugin]});
        let e = resolve(&crate::policy::parse(&text.to_string()).unwrap())
            .unwrap()
            .entries(5);
        assert_eq!(e.meta.confines, 1);
        let bits = |path: &std::path::Path| {
            e.libraries
                .iter()
                .find(|(k, _)| k.exe.ino == ino(path) && k.generation == 5)
                .map(|(_, bits)| *bits)
        };
        assert_eq!(bits(&server), Some(library::CONFINED));
        assert_eq!(bits(&tool), Some(library::CONFINED));
        assert_eq!(bits(&libc), Some(library::APPROVED));
        assert_eq!(bits(&plugin), Some(library::APPROVED));
        assert_eq!(e.libraries.len(), 4);
        let mut immutable: Vec<u64> = e.library_files.iter().map(|k| k.ino).collect();
        immutable.sort();
        let mut expected = vec![ino(&libc), ino(&plugin)];
        expected.sort();
        assert_eq!(immutable, expected);

        let unconfined = serde_json::json!({"mode": "enforce",
            "protected": [{"path": data, "rules": rules}]});
        let e = resolve(&crate::policy::parse(&unconfined.to_string()).unwrap())
            .unwrap()
            .entries(5);
        assert_eq!(e.meta.confines, 0);
        assert!(e.libraries.is_empty() && e.library_files.is_empty());
    }

    #[test]
    fn a_binary_cannot_have_two_ways_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let server = dir.path().join("server");
        let supervisor = dir.path().join("supervisor");
        std::fs::write(&server, "s").unwrap();
        std::fs::write(&supervisor, "v").unwrap();
        let text = serde_json::json!({"mode": "enforce", "protected": [{"path": data, "rules": [
            {"binaries": [server], "access": ["read"], "effect": "allow",
             "started_by": {"supervisor": supervisor}},
            {"name": "writes", "binaries": [server], "access": ["write"], "effect": "allow"},
        ]}]});
        let policy = crate::policy::parse(&text.to_string()).unwrap();
        let errors = resolve(&policy).unwrap_err();
        assert!(
            errors.contains("/protected", "started by anyone in rule `writes`"),
            "{errors}"
        );
    }

    #[test]
    fn rules_naming_a_binary_must_pin_the_same_environment_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let server = dir.path().join("server");
        let supervisor = dir.path().join("supervisor");
        std::fs::write(&server, "s").unwrap();
        std::fs::write(&supervisor, "v").unwrap();
        let policy = |first: serde_json::Value, second: serde_json::Value| {
            let text = serde_json::json!({"mode": "enforce", "protected": [{"path": data, "rules": [
                {"binaries": [server], "access": ["read"], "effect": "allow",
                 "started_by": {"supervisor": supervisor, "environment": first}},
                {"name": "writes", "binaries": [server], "access": ["write"], "effect": "allow",
                 "started_by": {"supervisor": supervisor, "environment": second}},
            ]}]});
            resolve(&crate::policy::parse(&text.to_string()).unwrap())
        };
        let same = policy(
            serde_json::json!(["TZ", "LANG=C"]),
            serde_json::json!(["LANG=C", "TZ"]),
        );
        assert_eq!(same.unwrap().entries(1).environment.len(), 3);
        let errors = policy(
            serde_json::json!(["TZ"]),
            serde_json::json!(["TZ", "LANG=C"]),
        )
        .unwrap_err();
        assert!(
            errors.contains(
                "/protected",
                r#"with environment ["TZ", "LANG=C"] in rule `writes`"#
            ),
            "{errors}"
        );
    }

    #[test]
    fn kept_devices_are_closed_to_reads_unless_they_hold_ciphertext_or_only_trusted_files() {
        use crate::policy::devices::DeviceBelow;
        let mut on_luks = point(9, 100);
        on_luks.below = vec![
            DeviceBelow {
                dev: 11,
                ciphertext: true,
            },
            DeviceBelow {
                dev: 12,
                ciphertext: false,
            },
        ];
        let mut fscrypt = point(7, 200);
        fscrypt.below = vec![DeviceBelow {
            dev: 13,
            ciphertext: false,
        }];
        let policy = ResolvedPolicy {
            mode: Mode::Enforce,
            hash: String::new(),
            points: vec![on_luks, fscrypt],
            rules: vec![],
            libraries: None,
            immutable: None,
            // A swap partition on dm-crypt (20) and the disk below it (21).
            swap: vec![
                DeviceBelow {
                    dev: 20,
                    ciphertext: false,
                },
                DeviceBelow {
                    dev: 21,
                    ciphertext: true,
                },
            ],
            // A loop device bound to a protected file (50).
            loops: vec![crate::policy::devices::LoopDevice {
                dev: 50,
                backing: "/data/image.bin".into(),
            }],
            // The binaries' filesystem (40) and the point's own (9): writes
            // only, which adds nothing to 9.
            trusted_devices: [40, 9]
                .map(|dev| DeviceBelow {
                    dev,
                    ciphertext: false,
                })
                .to_vec(),
            // Passthrough nodes of disks 9, 21 and 40; 99 is no device of the policy's.
            passthrough: [(30, 9), (31, 21), (32, 99), (33, 40)]
                .map(|(char_dev, block_dev)| Passthrough {
                    char_dev,
                    block_dev,
                })
                .to_vec(),
        };
        let entries = policy.entries(1);
        let denied: Vec<(u32, u32)> = entries
            .raw_devices
            .iter()
            .map(|(key, bits)| (key.dev, *bits))
            .collect();
        let passthrough: Vec<(u32, u32)> = entries
            .passthrough
            .iter()
            .map(|(key, bits)| (key.dev, *bits))
            .collect();
        // A passthrough node is closed as its disk is.
        assert_eq!(passthrough, [(30, READ | WRITE), (31, WRITE), (33, WRITE)]);
        assert_eq!(
            denied,
            [
                (7, WRITE),
                (9, READ | WRITE),
                (11, WRITE),
                (12, READ | WRITE),
                (13, WRITE),
                (20, READ | WRITE),
                (21, WRITE),
                (40, WRITE),
                (50, READ | WRITE)
            ]
        );
    }

    #[test]
    fn refuses_policies_larger_than_the_maps() {
        let too_many = per_policy_capacity(MAX_POINTS) + 1;
        let policy = ResolvedPolicy {
            mode: Mode::Enforce,
            hash: String::new(),
            points: (0..too_many as u64).map(|i| point(1, i)).collect(),
            rules: vec![],
            libraries: None,
            immutable: None,
            swap: Vec::new(),
            loops: Vec::new(),
            trusted_devices: Vec::new(),
            passthrough: Vec::new(),
        };
        let errors = check_capacity(&policy);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location, "/protected");
        assert!(errors[0]
            .message
            .contains(&format!("{too_many} protected directories")));
        let fits = ResolvedPolicy {
            points: policy.points[..too_many - 1].to_vec(),
            ..policy
        };
        assert!(check_capacity(&fits).is_empty());
    }

    #[test]
    fn refuses_more_pinned_environment_entries_than_the_map_holds() {
        // Each binary takes a marker and an entry per variable.
        let variables = MAX_ENV_ENTRIES as usize / 2 - 1;
        let pinned = |binaries| {
            let mut server = rule(0, 0, Effect::Allow, READ, None, None, binaries);
            server.started_by = Some(ResolvedStartedBy {
                supervisor: binary(9, 90),
                through: vec![],
                arguments: None,
                environment: Some((0..variables).map(|i| format!("V{i}")).collect()),
            });
            ResolvedPolicy {
                mode: Mode::Enforce,
                hash: String::new(),
                points: vec![point(5, 100)],
                rules: vec![server],
                libraries: None,
                immutable: None,
                swap: Vec::new(),
                loops: Vec::new(),
                trusted_devices: Vec::new(),
                passthrough: Vec::new(),
            }
        };
        let two = pinned(vec![binary(1, 10), binary(1, 11)]);
        assert_eq!(two.entries(1).environment.len(), MAX_ENV_ENTRIES as usize);
        assert!(check_capacity(&two).is_empty());
        let three = pinned(vec![binary(1, 10), binary(1, 11), binary(1, 12)]);
        let errors = check_capacity(&three);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains(&format!(
                "{} pinned environment entries",
                3 * (variables + 1)
            )),
            "{}",
            errors[0].message
        );
    }
}
