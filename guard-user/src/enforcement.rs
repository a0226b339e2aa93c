//! The pinned maps the kernel programs decide from, and atomic policy swaps.
//!
//! A policy is written into the maps under a new generation number while the
//! kernel keeps deciding from the old one; then the one-word `ACTIVE` slot is
//! flipped. A hook reads the generation once, so it sees the old policy or the
//! new one, never a mix, and never none. The old generation is deleted once a
//! grace period longer than any hook runs has passed: at the next apply or
//! when guardd's housekeeping calls `retire_due`, never while `apply` waits.

mod batch;
mod slot_table;

use crate::loader::Pins;
use crate::policy::PolicyEntries;
use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use guard_common::slots::Rules;
use guard_common::{
    dir_filter, dir_filter::fs_flags, dir_value, immutable, maps, stat, taint_seq, Arguments,
    DevKey, DirKey, EnvKey, ExeKey, LaunchKey, ObjectKey, PolicyMeta, SelfProtect, Settings, Taint,
    GUARD_FILES_GENERATION, MAX_GUARD_DEVICES,
};
use serde::Serialize;
use slot_table::SlotTable;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long a replaced generation stays readable after the flip.
const GRACE: Duration = Duration::from_millis(50);

/// Counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
    pub would_deny: u64,
    pub events_dropped: u64,
    pub events_suppressed: u64,
    pub fail_closed: u64,
}

/// Devices nobody but guardd may use as `access` bits say, as (kernel
/// `dev_t`, bits): block devices and the passthrough nodes of their disks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeptDevices {
    pub raw: Vec<(u32, u32)>,
    pub passthrough: Vec<(u32, u32)>,
}

pub struct KernelMaps {
    active: Array<MapData, u32>,
    meta: HashMap<MapData, u32, PolicyMeta>,
    devs: HashMap<MapData, DevKey, u32>,
    dirs: HashMap<MapData, DirKey, u32>,
    rules: SlotTable<Rules>,
    exes: HashMap<MapData, ExeKey, u32>,
    tainted: HashMap<MapData, ExeKey, Taint>,
    stats: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    self_protect: Array<MapData, SelfProtect>,
    objects: HashMap<MapData, ObjectKey, u32>,
    immutable: HashMap<MapData, ExeKey, u32>,
    dir_filter: Array<MapData, u64>,
    taint_seq: Array<MapData, u64>,
    supervisors: HashMap<MapData, LaunchKey, ExeKey>,
    ancestors: HashMap<MapData, DirKey, u32>,
    raw_devices: HashMap<MapData, DevKey, u32>,
    passthrough: HashMap<MapData, DevKey, u32>,
    relays: HashMap<MapData, LaunchKey, u32>,
    libraries: HashMap<MapData, LaunchKey, u32>,
    arguments: HashMap<MapData, LaunchKey, Arguments>,
    environment: HashMap<MapData, EnvKey, u32>,
    /// What `dir_filter` holds, so updates write only the words that change.
    dir_filter_words: Vec<u64>,
    /// guard's secrets (`immutable::SECRET`), which have filter bits too.
    secrets: Vec<ExeKey>,
    /// The generation replaced by the last apply, still readable by hooks
    /// that started before the flip.
    retiring: Option<Retiring>,
}

struct Retiring {
    generation: u32,
    since: Instant,
    keep_exes: Vec<ExeKey>,
}

fn pinned(pins: &Pins, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl KernelMaps {
    pub fn open(pins: &Pins) -> Result<Self> {
        let typed =
            |name: &str, wrap: fn(MapData) -> Map| -> Result<Map> { Ok(wrap(pinned(pins, name)?)) };
        Ok(KernelMaps {
            active: typed(maps::ACTIVE, Map::Array)?.try_into()?,
            meta: typed(maps::META, Map::HashMap)?.try_into()?,
            devs: typed(maps::DEVS, Map::HashMap)?.try_into()?,
            dirs: typed(maps::DIRS, Map::HashMap)?.try_into()?,
            rules: SlotTable::open(maps::RULE_SLOTS, pinned(pins, maps::RULE_SLOTS)?)?,
            exes: typed(maps::EXES, Map::HashMap)?.try_into()?,
            tainted: typed(maps::TAINTED, Map::HashMap)?.try_into()?,
            stats: typed(maps::STATS, Map::PerCpuArray)?.try_into()?,
            settings: typed(maps::SETTINGS, Map::Array)?.try_into()?,
            self_protect: typed(maps::SELF, Map::Array)?.try_into()?,
            objects: typed(maps::OBJECTS, Map::HashMap)?.try_into()?,
            immutable: typed(maps::IMMUTABLE, Map::HashMap)?.try_into()?,
            dir_filter: typed(maps::DIR_FILTER, Map::Array)?.try_into()?,
            taint_seq: typed(maps::TAINT_SEQ, Map::Array)?.try_into()?,
            supervisors: typed(maps::SUPERVISORS, Map::HashMap)?.try_into()?,
            ancestors: typed(maps::ANCESTORS, Map::HashMap)?.try_into()?,
            raw_devices: typed(maps::RAW_DEVICES, Map::HashMap)?.try_into()?,
            passthrough: typed(maps::PASSTHROUGH, Map::HashMap)?.try_into()?,
            relays: typed(maps::RELAYS, Map::HashMap)?.try_into()?,
            libraries: typed(maps::LIBRARIES, Map::HashMap)?.try_into()?,
            arguments: typed(maps::ARGUMENTS, Map::HashMap)?.try_into()?,
            environment: typed(maps::ENVIRONMENT, Map::HashMap)?.try_into()?,
            dir_filter_words: Vec::new(),
            secrets: Vec::new(),
            retiring: None,
        })
        .and_then(|mut maps: KernelMaps| {
            maps.dir_filter_words = (0..dir_filter::WORDS)
                .map(|w| maps.dir_filter.get(&w, 0))
                .collect::<Result<_, _>>()
                .context("reading GUARD_DIR_FILTER")?;
            Ok(maps)
        })
    }

    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        self.settings
            .set(0, settings, 0)
            .context("writing GUARD_SETTINGS")
    }

    /// guardd's identity as the kernel knows it, and whether it protects itself.
    pub fn self_protect(&self) -> Result<SelfProtect> {
        self.self_protect.get(&0, 0).context("reading GUARD_SELF")
    }

    pub fn set_self_protect(&mut self, value: SelfProtect) -> Result<()> {
        self.self_protect
            .set(0, value, 0)
            .context("writing GUARD_SELF")
    }

    /// Records guard's own BPF objects, which only guardd may reach while it
    /// protects itself. Ids of objects that are gone are dropped.
    pub fn set_objects(&mut self, ids: &[ObjectKey]) -> Result<()> {
        for id in ids {
            self.objects
                .insert(id, 1, 0)
                .context("GUARD_OBJECTS is full")?;
        }
        remove_where(&mut self.objects, |k| !ids.contains(k));
        Ok(())
    }

    /// The generation the kernel decides from (0: no policy).
    pub fn active_generation(&self) -> Result<u32> {
        self.active
            .get(&0, 0)
            .context("reading the active generation")
    }

    /// Writes `entries` as a new generation and makes it the active one.
    /// On error the new generation is removed and the old one stays active.
    /// Returns once the new generation decides; the old one is retired later.
    pub fn apply(&mut self, entries: impl FnOnce(u32) -> PolicyEntries) -> Result<u32> {
        self.retire(true);
        let old = self.active_generation()?;
        let new = next_generation(old);
        let entries = entries(new);
        if let Err(e) = self.write_generation(new, &entries) {
            self.remove_generation(new);
            return Err(e);
        }
        self.active
            .set(0, new, 0)
            .context("activating the new policy generation")?;
        self.retiring = Some(Retiring {
            generation: old,
            since: Instant::now(),
            keep_exes: entries
                .exes
                .into_iter()
                .chain(entries.launchers)
                .chain(entries.library_files)
                .chain(entries.immutable.into_iter().map(|(key, _)| key))
                .collect(),
        });
        Ok(new)
    }

    /// Deletes every generation but the active one: what a guardd that died
    /// between activating a generation and retiring the old one left behind.
    pub fn remove_inactive_generations(&mut self) -> Result<()> {
        let active = self.active_generation()?;
        remove_where(&mut self.meta, |g| *g != active);
        remove_where(&mut self.devs, |k| k.generation != active);
        remove_where(&mut self.dirs, |k| k.generation != active);
        self.rules.remove_where(|g| g != active);
        remove_where(&mut self.supervisors, |k| k.generation != active);
        remove_where(&mut self.relays, |k| k.generation != active);
        remove_where(&mut self.libraries, |k| k.generation != active);
        remove_where(&mut self.arguments, |k| k.generation != active);
        remove_where(&mut self.environment, |k| k.launch.generation != active);
        remove_where(&mut self.ancestors, |k| k.generation != active);
        let stale = |k: &DevKey| k.generation != active && k.generation != GUARD_FILES_GENERATION;
        remove_where(&mut self.raw_devices, stale);
        remove_where(&mut self.passthrough, stale);
        self.rebuild_dir_filter()
    }

    /// Deletes the replaced generation if its grace period is over.
    pub fn retire_due(&mut self) {
        self.retire(false);
    }

    /// Deletes the replaced generation; with `wait`, sleeps out its grace
    /// period first (the next generation needs its map space).
    fn retire(&mut self, wait: bool) {
        let Some(r) = &self.retiring else {
            return;
        };
        let left = GRACE.saturating_sub(r.since.elapsed());
        if !left.is_zero() {
            if !wait {
                return;
            }
            std::thread::sleep(left);
        }
        let r = self.retiring.take().expect("checked above");
        self.remove_generation(r.generation);
        self.drop_stale_exes(&r.keep_exes);
        if let Err(e) = self.rebuild_dir_filter() {
            // Stale bits only cost a lookup; the filter stays correct.
            eprintln!("guardd: trimming the directory filter: {e:#}");
        }
    }

    /// Sets the filter bits of `dirs` (their inode and their filesystem's
    /// flags), keeping every bit already set.
    fn add_to_dir_filter(&mut self, dirs: &[(DirKey, u32)]) -> Result<()> {
        let mut wanted = self.dir_filter_words.clone();
        for (key, value) in dirs {
            set_filter_bits(&mut wanted, key, *value);
        }
        self.write_dir_filter(wanted)
    }

    /// Recomputes the filter from the directories in the maps, once no hook
    /// can use a retired generation. Each word goes from a superset of the
    /// live bits to exactly the live bits, so no live bit is ever clear.
    fn rebuild_dir_filter(&mut self) -> Result<()> {
        let mut wanted = vec![0u64; dir_filter::WORDS as usize];
        for entry in self.dirs.iter() {
            let (key, value) = entry.context("reading GUARD_DIRS")?;
            set_filter_bits(&mut wanted, &key, value);
        }
        for secret in &self.secrets {
            set_secret_bits(&mut wanted, secret);
        }
        self.write_dir_filter(wanted)
    }

    fn write_dir_filter(&mut self, wanted: Vec<u64>) -> Result<()> {
        for (word, want) in wanted.iter().enumerate() {
            if self.dir_filter_words[word] != *want {
                self.dir_filter
                    .set(word as u32, *want, 0)
                    .context("writing GUARD_DIR_FILTER")?;
                self.dir_filter_words[word] = *want;
            }
        }
        Ok(())
    }

    fn write_generation(&mut self, generation: u32, e: &PolicyEntries) -> Result<()> {
        // Binaries being (re)approved were just hashed: their taint is cleared.
        // The maps are read once, so that each binary costs a write only
        // where something changes (a syscall each, and a policy may name
        // thousands of binaries).
        let known: HashSet<ExeKey> = self.exes.keys().filter_map(|k| k.ok()).collect();
        let tainted: HashSet<ExeKey> = self.tainted.keys().filter_map(|k| k.ok()).collect();
        let immutable: std::collections::HashMap<ExeKey, u32> =
            self.immutable.iter().filter_map(|r| r.ok()).collect();
        let new_exes: Vec<(ExeKey, u32)> = e
            .exes
            .iter()
            .filter(|exe| !known.contains(exe))
            .map(|exe| (*exe, 1))
            .collect();
        batch::update(&self.exes, &new_exes).context("writing GUARD_EXES (is it full?)")?;
        for exe in e.exes.iter().filter(|exe| tainted.contains(exe)) {
            let _ = self.tainted.remove(exe);
        }
        if !tainted.is_empty() {
            self.note_if_untainted();
        }
        // Allowed binaries, their supervisors, relays and approved
        // libraries: nobody rewrites them; nor what the policy lists.
        let mut wanted: std::collections::HashMap<ExeKey, u32> = std::collections::HashMap::new();
        let files = e.exes.iter().chain(&e.launchers).chain(&e.library_files);
        for (key, kind) in files
            .map(|exe| (*exe, immutable::FILE))
            .chain(e.immutable.iter().copied())
        {
            *wanted.entry(key).or_default() |= kind;
        }
        let newly_immutable: Vec<(ExeKey, u32)> = wanted
            .into_iter()
            .map(|(key, kind)| (key, immutable.get(&key).copied().unwrap_or(0) | kind))
            .filter(|(key, bits)| immutable.get(key) != Some(bits))
            .collect();
        batch::update(&self.immutable, &newly_immutable)
            .context("writing GUARD_IMMUTABLE (is it full?)")?;
        batch::update(&self.supervisors, &e.supervisors)
            .context("writing GUARD_SUPERVISORS (is it full?)")?;
        batch::update(&self.raw_devices, &e.raw_devices)
            .context("writing GUARD_RAW_DEVICES (is it full?)")?;
        batch::update(&self.passthrough, &e.passthrough)
            .context("writing GUARD_PASSTHROUGH (is it full?)")?;
        batch::update(&self.ancestors, &e.ancestors)
            .context("writing GUARD_ANCESTORS (is it full?)")?;
        let relays: Vec<(LaunchKey, u32)> = e.relays.iter().map(|key| (*key, 1)).collect();
        batch::update(&self.relays, &relays).context("writing GUARD_RELAYS (is it full?)")?;
        batch::update(&self.libraries, &e.libraries)
            .context("writing GUARD_LIBRARIES (is it full?)")?;
        batch::update(&self.arguments, &e.arguments)
            .context("writing GUARD_ARGUMENTS (is it full?)")?;
        batch::update(&self.environment, &e.environment)
            .context("writing GUARD_ENVIRONMENT (is it full?)")?;
        self.meta
            .insert(generation, e.meta, 0)
            .context("writing policy mode")?;
        self.rules.insert(&e.rules)?;
        // Before the flip: the new generation's directories must pass the filter.
        self.add_to_dir_filter(&e.dirs)?;
        let dirs: Vec<(DirKey, u32)> = e
            .dirs
            .iter()
            .map(|(key, point)| (*key, dir_value::encode(*point, &e.meta)))
            .collect();
        batch::update(&self.dirs, &dirs).context("writing GUARD_DIRS (is it full?)")?;
        let devs: Vec<(DevKey, u32)> = e.devs.iter().map(|key| (*key, 1)).collect();
        batch::update(&self.devs, &devs).context("writing GUARD_DEVS (is it full?)")?;
        Ok(())
    }

    /// Best-effort removal: leftovers of an unused generation decide nothing.
    fn remove_generation(&mut self, generation: u32) {
        if generation == 0 {
            return;
        }
        let _ = self.meta.remove(&generation);
        remove_where(&mut self.devs, |k| k.generation == generation);
        remove_where(&mut self.dirs, |k| k.generation == generation);
        self.rules.remove_where(|g| g == generation);
        remove_where(&mut self.supervisors, |k| k.generation == generation);
        remove_where(&mut self.relays, |k| k.generation == generation);
        remove_where(&mut self.libraries, |k| k.generation == generation);
        remove_where(&mut self.arguments, |k| k.generation == generation);
        remove_where(&mut self.environment, |k| k.launch.generation == generation);
        remove_where(&mut self.ancestors, |k| k.generation == generation);
        remove_where(&mut self.raw_devices, |k| k.generation == generation);
        remove_where(&mut self.passthrough, |k| k.generation == generation);
    }

    fn drop_stale_exes(&mut self, keep: &[ExeKey]) {
        let keep: HashSet<&ExeKey> = keep.iter().collect();
        remove_where(&mut self.exes, |k| !keep.contains(k));
        remove_where(&mut self.tainted, |k| !keep.contains(k));
        self.note_if_untainted();
        let guard_own: Vec<ExeKey> = self
            .immutable
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, bits)| bits & immutable::GUARD != 0)
            .map(|(k, _)| k)
            .collect();
        remove_where(&mut self.immutable, |k| {
            !keep.contains(k) && !guard_own.contains(k)
        });
    }

    /// Records guard's own files and folders, which nobody but guardd may
    /// change while it protects itself; earlier ones no longer named go.
    pub fn set_guard_files(&mut self, files: &[(ExeKey, u32)]) -> Result<()> {
        let stale: Vec<ExeKey> = self
            .immutable
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, bits)| bits & immutable::GUARD != 0 && !files.iter().any(|(f, _)| f == k))
            .map(|(k, _)| k)
            .collect();
        for key in stale {
            let _ = self.immutable.remove(&key);
        }
        for (key, kind) in files {
            let bits = self.immutable.get(key, 0).unwrap_or(0) | kind | immutable::GUARD;
            self.immutable
                .insert(key, bits, 0)
                .context("GUARD_IMMUTABLE is full")?;
        }
        // The filter bits go on after the entries: a hook that sees a bit
        // finds the entry.
        self.secrets = files
            .iter()
            .filter(|(_, kind)| kind & immutable::SECRET != 0)
            .map(|(key, _)| *key)
            .collect();
        let mut wanted = self.dir_filter_words.clone();
        for secret in &self.secrets {
            set_secret_bits(&mut wanted, secret);
        }
        self.write_dir_filter(wanted)
    }

    /// Keeps the block devices beneath guard's own files and their
    /// passthrough nodes while guardd protects itself, replacing what a
    /// previous guardd kept.
    pub fn set_guard_devices(&mut self, kept: &KeptDevices) -> Result<()> {
        let (raw, passthrough) = (&kept.raw, &kept.passthrough);
        anyhow::ensure!(
            raw.len() <= MAX_GUARD_DEVICES as usize
                && passthrough.len() <= MAX_GUARD_DEVICES as usize,
            "more than {MAX_GUARD_DEVICES} devices beneath guard's own files"
        );
        for (map, entries, name) in [
            (&mut self.raw_devices, raw, "GUARD_RAW_DEVICES"),
            (&mut self.passthrough, passthrough, "GUARD_PASSTHROUGH"),
        ] {
            let wanted: HashSet<u32> = entries.iter().map(|(dev, _)| *dev).collect();
            remove_where(map, |k| {
                k.generation == GUARD_FILES_GENERATION && !wanted.contains(&k.dev)
            });
            for (dev, bits) in entries {
                let key = DevKey {
                    generation: GUARD_FILES_GENERATION,
                    dev: *dev,
                };
                map.insert(key, bits, 0)
                    .with_context(|| format!("writing {name}"))?;
            }
        }
        Ok(())
    }

    /// Tells the kernel it may skip its `TAINTED` lookup, if no binary is
    /// tainted (`guard_common::taint_seq`). The kernel's count is read
    /// *before* the map is listed: a taint recorded after the listing raises
    /// the count past the value written here, so the kernel keeps looking.
    /// Best effort: when this fails, the kernel just keeps looking.
    fn note_if_untainted(&mut self) {
        let Ok(recorded) = self.taint_seq.get(&taint_seq::RECORDED, 0) else {
            return;
        };
        if self.tainted.keys().next().is_some() {
            return; // a taint (or a read error): keep looking
        }
        let _ = self.taint_seq.set(taint_seq::CLEARED, recorded, 0);
    }

    /// Allowed binaries opened for writing since they were approved.
    pub fn tainted(&self) -> Vec<(ExeKey, Taint)> {
        self.tainted.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn stats(&self) -> Result<Stats> {
        let sum = |index: u32| -> Result<u64> {
            let values = self.stats.get(&index, 0).context("reading GUARD_STATS")?;
            Ok(values.iter().sum())
        };
        Ok(Stats {
            allowed: sum(stat::ALLOWED)?,
            denied: sum(stat::DENIED)?,
            audited: sum(stat::AUDITED)?,
            would_deny: sum(stat::WOULD_DENY)?,
            events_dropped: sum(stat::DROPPED)?,
            events_suppressed: sum(stat::SUPPRESSED)?,
            fail_closed: sum(stat::FAIL_CLOSED)?,
        })
    }
}

/// The filter bits of a protected directory (`value` its `DIRS` value):
/// its inode, and its filesystem's flags (the kernel's first test, before
/// any hash lookup).
fn set_filter_bits(words: &mut [u64], key: &DirKey, value: u32) {
    let (word, mask) = dir_filter::slot(key.ino);
    words[word as usize] |= mask;
    let mut flags = fs_flags::POINTS;
    if value & dir_value::PLAIN != 0 {
        flags |= fs_flags::PLAIN;
    }
    set_fs_flags(words, key.dev, flags);
}

/// A secret's bits: its inode's and its filesystem's secret flag.
fn set_secret_bits(words: &mut [u64], file: &ExeKey) {
    let (word, mask) = dir_filter::slot(file.ino);
    words[word as usize] |= mask;
    set_fs_flags(words, file.dev, fs_flags::SECRETS);
}

fn set_fs_flags(words: &mut [u64], dev: u32, flags: u64) {
    let (word, shift) = dir_filter::dev_slot(dev);
    words[word as usize] |= flags << shift;
}

fn remove_where<K: aya::Pod + PartialEq, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    doomed: impl Fn(&K) -> bool,
) {
    let keys: Vec<K> = map
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| doomed(k))
        .collect();
    if batch::delete(map, &keys).is_err() {
        // Some key went away meanwhile: the rest one by one.
        for key in keys {
            let _ = map.remove(&key);
        }
    }
}

fn next_generation(current: u32) -> u32 {
    match current.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_never_becomes_zero() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(7), 8);
        assert_eq!(next_generation(u32::MAX), 1);
    }
}
