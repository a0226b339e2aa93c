//! Many hash-map entries per `bpf(2)` call (`BPF_MAP_*_BATCH`, Linux 5.6+).
//!
//! aya 0.14 writes and deletes one entry per system call; a policy naming
//! thousands of binaries then spends most of its apply time entering the
//! kernel. The batch commands take arrays of keys and values instead. The
//! argument block is the kernel's own `union bpf_attr` as aya-obj generates
//! it from the UAPI headers.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, IterableMap, MapData};
use aya::Pod;
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Writes every `(key, value)` of `entries` into `map` (flags 0: insert or
/// replace). On error some entries may have been written; the caller treats
/// the whole generation as failed and removes it.
pub fn update<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, entries: &[(K, V)]) -> io::Result<()> {
    let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
    let values: Vec<V> = entries.iter().map(|(_, v)| *v).collect();
    let mut done = 0;
    while done < keys.len() {
        done += call(
            bpf_cmd::BPF_MAP_UPDATE_BATCH,
            map.map(),
            keys[done..].as_ptr().cast(),
            values[done..].as_ptr().cast(),
            keys.len() - done,
        )?;
    }
    Ok(())
}

/// Deletes every key of `keys` from `map`. Keys that are already gone are
/// an error to the kernel, so callers pass only keys they just read.
pub fn delete<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, keys: &[K]) -> io::Result<()> {
    let mut done = 0;
    while done < keys.len() {
        done += call(
            bpf_cmd::BPF_MAP_DELETE_BATCH,
            map.map(),
            keys[done..].as_ptr().cast(),
            std::ptr::null(),
            keys.len() - done,
        )?;
    }
    Ok(())
}

/// One batch call; returns how many entries the kernel processed (at least
/// one, or an error).
fn call(
    cmd: bpf_cmd,
    map: &MapData,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> io::Result<usize> {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    // SAFETY: an all-zero bpf_attr is valid (every member is integers); the
    // kernel requires unused bytes to be zero.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    attr.batch.keys = keys as u64;
    attr.batch.values = values as u64;
    attr.batch.count = count;
    // SAFETY: `attr` is a valid bpf_attr of the size passed; `keys` (and
    // `values`, when not null) point at `count` entries of the map's key and
    // value sizes, which the typed maps were checked against when opened.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    // SAFETY: the kernel wrote back how many entries it processed.
    let processed = unsafe { attr.batch.count } as usize;
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if processed == 0 {
        return Err(io::Error::other("the kernel processed no entry of a batch"));
    }
    Ok(processed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::maps::Map;
    use aya_obj::generated::bpf_map_type;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A real kernel hash map of u64 -> u32 (needs root, as guardd does).
    fn hash_map(max_entries: u32) -> HashMap<MapData, u64, u32> {
        // SAFETY: an all-zero bpf_attr is valid.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_1.map_type = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
        attr.__bindgen_anon_1.key_size = 8;
        attr.__bindgen_anon_1.value_size = 4;
        attr.__bindgen_anon_1.max_entries = max_entries;
        // SAFETY: valid attr of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_CREATE as libc::c_int,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>() as libc::c_uint,
            )
        };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: the kernel just returned this fd to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let data = MapData::from_fd(fd).unwrap();
        HashMap::try_from(Map::HashMap(data)).unwrap()
    }

    fn contents(map: &HashMap<MapData, u64, u32>) -> Vec<(u64, u32)> {
        let mut all: Vec<(u64, u32)> = map.iter().map(|r| r.unwrap()).collect();
        all.sort();
        all
    }

    #[test]
    fn update_writes_every_entry_and_replaces_existing_ones() {
        let mut map = hash_map(4096);
        map.insert(7, 1, 0).unwrap();
        let entries: Vec<(u64, u32)> = (0..3000).map(|k| (k, k as u32 * 2)).collect();
        update(&map, &entries).unwrap();
        assert_eq!(contents(&map), entries);
    }

    #[test]
    fn update_beyond_capacity_fails() {
        let map = hash_map(10);
        let entries: Vec<(u64, u32)> = (0..11).map(|k| (k, 1)).collect();
        assert!(update(&map, &entries).is_err());
    }

    #[test]
    fn delete_removes_exactly_the_keys_given() {
        let map = hash_map(4096);
        let entries: Vec<(u64, u32)> = (0..2000).map(|k| (k, 1)).collect();
        update(&map, &entries).unwrap();
        let doomed: Vec<u64> = (0..2000).filter(|k| k % 3 != 0).collect();
        delete(&map, &doomed).unwrap();
        let left: Vec<(u64, u32)> = (0..2000).filter(|k| k % 3 == 0).map(|k| (k, 1)).collect();
        assert_eq!(contents(&map), left);
        assert!(
            delete(&map, &[1]).is_err(),
            "deleting a missing key is an error"
        );
    }
}
