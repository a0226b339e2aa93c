//! The open-addressed tables the kernel reads (`guard_common::slots`:
//! `GUARD_RULE_SLOTS`), BPF arrays that guardd maps into its memory and
//! writes directly.
//!
//! A slot is free while its generation is 0. Entries of a new generation go
//! only into free slots, body first and generation last, so the kernel, which
//! accepts a slot only when its whole key (generation included) matches,
//! never takes a half-written slot for a live one. Slots are freed by zeroing
//! their generation once no hook can still use it (`KernelMaps::retire`).

use std::fmt::Debug;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use guard_common::slots::{Slot, Table};

pub struct SlotTable<T: Table> {
    name: &'static str,
    slots: NonNull<Slot<T::Key, T::Value>>,
    bytes: usize,
    /// Keeps the map (and so the mapping's object) open.
    _map: MapData,
    _table: PhantomData<T>,
}

// SAFETY: the mapping is owned by this value and only reached through it.
unsafe impl<T: Table> Send for SlotTable<T> {}
unsafe impl<T: Table> Sync for SlotTable<T> {}

impl<T: Table> SlotTable<T>
where
    T::Key: Debug,
{
    /// Maps the pinned array `name` (created with `BPF_F_MMAPABLE`).
    pub fn open(name: &'static str, map: MapData) -> Result<Self> {
        let bytes = T::COUNT as usize * std::mem::size_of::<Slot<T::Key, T::Value>>();
        // SAFETY: a shared read-write mapping of a BPF array fd, of the
        // array's size; the kernel keeps it valid until munmap.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {name}"));
        }
        let slots = NonNull::new(addr.cast()).with_context(|| format!("mapping {name}"))?;
        Ok(SlotTable {
            name,
            slots,
            bytes,
            _map: map,
            _table: PhantomData,
        })
    }

    fn slot(&self, index: u32) -> *mut Slot<T::Key, T::Value> {
        // SAFETY: `index & MASK` is within the COUNT slots mapped.
        unsafe { self.slots.as_ptr().add((index & T::MASK) as usize) }
    }

    fn read(&self, index: u32) -> Slot<T::Key, T::Value> {
        // SAFETY: a mapped slot; volatile, the kernel may read it meanwhile.
        unsafe { self.slot(index).read_volatile() }
    }

    /// Writes `entries` (all of one new generation). On error some may be
    /// written; the caller removes the whole generation.
    pub fn insert(&mut self, entries: &[(T::Key, T::Value)]) -> Result<()> {
        for (key, value) in entries {
            let index = place::<T>(key, |index| self.read(index))
                .with_context(|| format!("writing {}", self.name))?;
            let mut body = Slot {
                key: *key,
                value: *value,
            };
            T::set_generation(&mut body.key, 0);
            let slot = self.slot(index);
            // SAFETY: a mapped slot that no live generation uses. The
            // generation is the key's first field, one aligned u32.
            unsafe {
                slot.write_volatile(body);
                fence(Ordering::Release);
                slot.cast::<u32>().write_volatile(T::generation(key));
            }
        }
        // The flip to the new generation comes after every slot is visible.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Frees every slot whose generation `doomed` names.
    pub fn remove_where(&mut self, doomed: impl Fn(u32) -> bool) {
        for index in 0..T::COUNT {
            let generation = T::generation(&self.read(index).key);
            if generation != 0 && doomed(generation) {
                // SAFETY: a mapped slot; the generation is one aligned u32.
                unsafe { self.slot(index).cast::<u32>().write_volatile(0) };
            }
        }
    }
}

impl<T: Table> Drop for SlotTable<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.bytes) };
    }
}

/// The slot for `key` in a table whose slot `i` reads `slot(i)`: the one
/// holding it already, else the first free one of its `PROBES`.
fn place<T: Table>(key: &T::Key, slot: impl Fn(u32) -> Slot<T::Key, T::Value>) -> Result<u32>
where
    T::Key: Debug,
{
    let home = T::home(key);
    let mut free = None;
    for probe in 0..T::PROBES {
        let index = (home + probe) & T::MASK;
        let current = slot(index);
        if current.key == *key {
            return Ok(index);
        }
        if T::generation(&current.key) == 0 && free.is_none() {
            free = Some(index);
        }
    }
    match free {
        Some(index) => Ok(index),
        None => bail!(
            "the {} slots where entry {key:?} may go are all taken (the table holds {} slots)",
            T::PROBES,
            T::COUNT,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::slots::{self, Rules};
    use guard_common::{RuleKey, RuleSlot, RuleValue, ANY_ID, MAX_RULE_ENTRIES};

    const EMPTY: RuleSlot = RuleSlot {
        key: RuleKey {
            generation: 0,
            point: 0,
            exe_dev: 0,
            uid: 0,
            exe_ino: 0,
            gid: 0,
            _pad: 0,
        },
        value: RuleValue {
            allow: 0,
            audit: 0,
            rule: 0,
            _pad: 0,
        },
    };

    fn key(generation: u32, n: u32) -> RuleKey {
        RuleKey {
            generation,
            point: n % 7,
            exe_dev: 0x0800_0001,
            uid: ANY_ID,
            exe_ino: 1_000_000 + n as u64 * 3,
            gid: ANY_ID,
            _pad: 0,
        }
    }

    fn value(n: u32) -> RuleValue {
        RuleValue {
            allow: n,
            audit: 0,
            rule: n,
            _pad: 0,
        }
    }

    fn insert(table: &mut [RuleSlot], key: RuleKey, value: RuleValue) -> Result<()> {
        let index = place::<Rules>(&key, |i| table[i as usize])?;
        table[index as usize] = RuleSlot { key, value };
        Ok(())
    }

    fn find(table: &[RuleSlot], key: &RuleKey) -> Option<RuleValue> {
        slots::find::<Rules>(key, |i| table.get(i as usize))
    }

    #[test]
    fn two_full_generations_fit_and_each_entry_is_found_by_the_kernels_lookup() {
        let mut table = vec![EMPTY; Rules::COUNT as usize];
        for generation in [1, 2] {
            for n in 0..MAX_RULE_ENTRIES {
                insert(&mut table, key(generation, n), value(n)).unwrap();
            }
        }
        for generation in [1, 2] {
            for n in 0..MAX_RULE_ENTRIES {
                assert_eq!(find(&table, &key(generation, n)), Some(value(n)));
            }
        }
        assert_eq!(find(&table, &key(3, 0)), None, "another generation's key");
        assert_eq!(
            find(&table, &key(1, MAX_RULE_ENTRIES)),
            None,
            "a key never written"
        );
        // Retiring generation 1 frees its slots and leaves 2 whole.
        for slot in table.iter_mut().filter(|s| s.key.generation == 1) {
            slot.key.generation = 0;
        }
        for n in 0..MAX_RULE_ENTRIES {
            assert_eq!(find(&table, &key(1, n)), None);
            assert_eq!(find(&table, &key(2, n)), Some(value(n)));
        }
    }

    #[test]
    fn a_key_written_twice_keeps_one_slot() {
        let mut table = vec![EMPTY; Rules::COUNT as usize];
        insert(&mut table, key(1, 5), value(1)).unwrap();
        insert(&mut table, key(1, 5), value(2)).unwrap();
        assert_eq!(table.iter().filter(|s| s.key.generation == 1).count(), 1);
        assert_eq!(find(&table, &key(1, 5)), Some(value(2)));
    }

    #[test]
    fn a_key_whose_slots_are_all_taken_is_refused_by_name() {
        let mut table = vec![EMPTY; Rules::COUNT as usize];
        let wanted = key(1, 42);
        let home = Rules::home(&wanted);
        for probe in 0..Rules::PROBES {
            table[((home + probe) & Rules::MASK) as usize] = RuleSlot {
                key: key(2, 100_000 + probe),
                value: value(0),
            };
        }
        let error = insert(&mut table, wanted, value(1))
            .unwrap_err()
            .to_string();
        assert!(error.contains("all taken"), "{error}");
        assert!(error.contains("exe_ino: 1000126"), "{error}");
    }
}
