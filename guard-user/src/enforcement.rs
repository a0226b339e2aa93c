//! The pinned maps the kernel programs decide from, and atomic policy swaps.
//!
//! A policy is written into the maps under a new generation number while the
//! kernel keeps deciding from the old one; then the one-word `ACTIVE` slot is
//! flipped. A hook reads the generation once, so it sees the old policy or the
//! new one, never a mix, and never none. The old generation is deleted once a
//! grace period longer than any hook runs has passed: at the next apply or
//! when guardd's housekeeping calls `retire_due`, never while `apply` waits.

use crate::loader::Pins;
use crate::policy::PolicyEntries;
use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use guard_common::{
    maps, stat, DevKey, DirKey, ExeKey, ObjectKey, PolicyMeta, RuleKey, RuleValue, SelfProtect,
    Settings, Taint,
};
use serde::Serialize;
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

pub struct KernelMaps {
    active: Array<MapData, u32>,
    meta: HashMap<MapData, u32, PolicyMeta>,
    devs: HashMap<MapData, DevKey, u32>,
    dirs: HashMap<MapData, DirKey, u32>,
    rules: HashMap<MapData, RuleKey, RuleValue>,
    exes: HashMap<MapData, ExeKey, u32>,
    tainted: HashMap<MapData, ExeKey, Taint>,
    stats: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    self_protect: Array<MapData, SelfProtect>,
    objects: HashMap<MapData, ObjectKey, u32>,
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
            rules: typed(maps::RULES, Map::HashMap)?.try_into()?,
            exes: typed(maps::EXES, Map::HashMap)?.try_into()?,
            tainted: typed(maps::TAINTED, Map::HashMap)?.try_into()?,
            stats: typed(maps::STATS, Map::PerCpuArray)?.try_into()?,
            settings: typed(maps::SETTINGS, Map::Array)?.try_into()?,
            self_protect: typed(maps::SELF, Map::Array)?.try_into()?,
            objects: typed(maps::OBJECTS, Map::HashMap)?.try_into()?,
            retiring: None,
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
            keep_exes: entries.exes,
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
        remove_where(&mut self.rules, |k| k.generation != active);
        Ok(())
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
    }

    fn write_generation(&mut self, generation: u32, e: &PolicyEntries) -> Result<()> {
        // Binaries being (re)approved were just hashed: their taint is cleared.
        for exe in &e.exes {
            self.exes.insert(exe, 1, 0).context("GUARD_EXES is full")?;
            let _ = self.tainted.remove(exe);
        }
        self.meta
            .insert(generation, e.meta, 0)
            .context("writing policy mode")?;
        for (key, value) in &e.rules {
            self.rules
                .insert(key, value, 0)
                .context("GUARD_RULES is full")?;
        }
        for (key, point) in &e.dirs {
            self.dirs
                .insert(key, point, 0)
                .context("GUARD_DIRS is full")?;
        }
        for key in &e.devs {
            self.devs.insert(key, 1, 0).context("GUARD_DEVS is full")?;
        }
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
        remove_where(&mut self.rules, |k| k.generation == generation);
    }

    fn drop_stale_exes(&mut self, keep: &[ExeKey]) {
        remove_where(&mut self.exes, |k| !keep.contains(k));
        remove_where(&mut self.tainted, |k| !keep.contains(k));
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

fn remove_where<K: aya::Pod + PartialEq, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    doomed: impl Fn(&K) -> bool,
) {
    let keys: Vec<K> = map
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| doomed(k))
        .collect();
    for key in keys {
        let _ = map.remove(&key);
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
