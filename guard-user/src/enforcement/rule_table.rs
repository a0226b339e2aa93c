//! `GUARD_RULE_SLOTS`: the rule entries as the kernel reads them, an
//! open-addressed table (`guard_common::rule_slots`) in a BPF array that
//! guardd maps into its memory and writes directly.
//!
//! A slot is free while its generation is 0. Entries of a new generation go
//! only into free slots, body first and generation last, so the kernel, which
//! accepts a slot only when its whole key (generation included) matches,
//! never takes a half-written slot for a live one. Slots are freed by zeroing
//! their generation once no hook can still use it (`KernelMaps::retire`).

use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use guard_common::{rule_slots, RuleKey, RuleSlot, RuleValue};

pub struct RuleTable {
    slots: NonNull<RuleSlot>,
    bytes: usize,
    /// Keeps the map (and so the mapping's object) open.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and only reached through it.
unsafe impl Send for RuleTable {}
unsafe impl Sync for RuleTable {}

impl RuleTable {
    /// Maps the pinned array (created with `BPF_F_MMAPABLE`).
    pub fn open(map: MapData) -> Result<Self> {
        let bytes = rule_slots::COUNT as usize * std::mem::size_of::<RuleSlot>();
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
            return Err(std::io::Error::last_os_error()).context("mapping GUARD_RULE_SLOTS");
        }
        let slots = NonNull::new(addr.cast()).context("mapping GUARD_RULE_SLOTS")?;
        Ok(RuleTable {
            slots,
            bytes,
            _map: map,
        })
    }

    fn slot(&self, index: u32) -> *mut RuleSlot {
        // SAFETY: `index & MASK` is within the COUNT slots mapped.
        unsafe { self.slots.as_ptr().add((index & rule_slots::MASK) as usize) }
    }

    fn generation_at(&self, index: u32) -> u32 {
        // SAFETY: a mapped slot; volatile, the kernel may read it meanwhile.
        unsafe { std::ptr::addr_of!((*self.slot(index)).key.generation).read_volatile() }
    }

    /// Writes `entries` (all of one new generation). On error some may be
    /// written; the caller removes the whole generation.
    pub fn insert(&mut self, entries: &[(RuleKey, RuleValue)]) -> Result<()> {
        for (key, value) in entries {
            let index = self.free_slot_for(key)?;
            let body = RuleSlot {
                key: RuleKey {
                    generation: 0,
                    ..*key
                },
                value: *value,
            };
            let slot = self.slot(index);
            // SAFETY: a mapped slot that no live generation uses.
            unsafe {
                slot.write_volatile(body);
                fence(Ordering::Release);
                std::ptr::addr_of_mut!((*slot).key.generation).write_volatile(key.generation);
            }
        }
        // The flip to the new generation comes after every slot is visible.
        fence(Ordering::SeqCst);
        Ok(())
    }

    fn free_slot_for(&self, key: &RuleKey) -> Result<u32> {
        // SAFETY: a mapped slot; volatile, the kernel may read it meanwhile.
        place(key, |index| unsafe { self.slot(index).read_volatile() })
    }

    /// Frees every slot whose generation `doomed` names.
    pub fn remove_where(&mut self, doomed: impl Fn(u32) -> bool) {
        for index in 0..rule_slots::COUNT {
            let generation = self.generation_at(index);
            if generation != 0 && doomed(generation) {
                // SAFETY: a mapped slot; one aligned word.
                unsafe {
                    std::ptr::addr_of_mut!((*self.slot(index)).key.generation).write_volatile(0)
                };
            }
        }
    }
}

impl Drop for RuleTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.bytes) };
    }
}

/// The slot for `key` in a table whose slot `i` reads `slot(i)`: the one
/// holding it already, else the first free one of its `PROBES`.
fn place(key: &RuleKey, slot: impl Fn(u32) -> RuleSlot) -> Result<u32> {
    let home = rule_slots::home(key);
    let mut free = None;
    for probe in 0..rule_slots::PROBES {
        let index = (home + probe) & rule_slots::MASK;
        let current = slot(index);
        if current.key == *key {
            return Ok(index);
        }
        if current.key.generation == 0 && free.is_none() {
            free = Some(index);
        }
    }
    match free {
        Some(index) => Ok(index),
        None => bail!(
            "GUARD_RULE_SLOTS: the {} slots where rule entry {key:?} may go are all taken \
             (the table holds {} slots; a policy near {} rule entries can crowd it)",
            rule_slots::PROBES,
            rule_slots::COUNT,
            guard_common::MAX_RULE_ENTRIES
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::{ANY_ID, MAX_RULE_ENTRIES};

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
        let index = place(&key, |i| table[i as usize])?;
        table[index as usize] = RuleSlot { key, value };
        Ok(())
    }

    fn find(table: &[RuleSlot], key: &RuleKey) -> Option<RuleValue> {
        rule_slots::find(key, |i| table.get(i as usize))
    }

    #[test]
    fn two_full_generations_fit_and_each_entry_is_found_by_the_kernels_lookup() {
        let mut table = vec![EMPTY; rule_slots::COUNT as usize];
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
        let mut table = vec![EMPTY; rule_slots::COUNT as usize];
        insert(&mut table, key(1, 5), value(1)).unwrap();
        insert(&mut table, key(1, 5), value(2)).unwrap();
        assert_eq!(table.iter().filter(|s| s.key.generation == 1).count(), 1);
        assert_eq!(find(&table, &key(1, 5)), Some(value(2)));
    }

    #[test]
    fn a_key_whose_slots_are_all_taken_is_refused_by_name() {
        let mut table = vec![EMPTY; rule_slots::COUNT as usize];
        let wanted = key(1, 42);
        let home = rule_slots::home(&wanted);
        for probe in 0..rule_slots::PROBES {
            table[((home + probe) & rule_slots::MASK) as usize] = RuleSlot {
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
