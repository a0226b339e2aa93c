//! A minimal read-only ext4 reader: just enough to find encrypted files, their
//! fscrypt contexts and their raw (still encrypted) blocks in an image file or
//! block device, without the kernel. Supports extent-mapped files, linear and
//! htree directories (read linearly), in-inode and block xattrs, 32- and
//! 64-bit group descriptors. Anything else is refused with a clear error.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const EXTENT_MAGIC: u16 = 0xF30A;
const XATTR_MAGIC: u32 = 0xEA02_0000;
const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_ENCRYPT: u32 = 0x10000;
const FL_ENCRYPT: u32 = 0x800;
const FL_EXTENTS: u32 = 0x80000;
const FL_INLINE_DATA: u32 = 0x1000_0000;
pub const ROOT_INODE: u32 = 2;
/// xattr name index of fscrypt's context ("c").
const XATTR_INDEX_ENCRYPTION: u8 = 9;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// An opened ext4 image.
pub struct Ext4 {
    file: File,
    pub block_size: u64,
    inodes_per_group: u32,
    inode_size: u64,
    desc_size: u64,
    first_data_block: u64,
    group_count: u64,
    pub incompat: u32,
}

/// The parts of an inode guard needs.
#[derive(Debug, Clone)]
pub struct Inode {
    pub number: u32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub flags: u32,
    block: [u8; 60],
    raw: Vec<u8>,
    file_acl: u64,
}

/// One extent: `len` blocks from logical block `logical` at physical `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
    /// Allocated but never written: reads as zeros.
    pub uninit: bool,
}

/// A directory entry as stored (the name may be ciphertext).
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub inode: u32,
    pub file_type: u8,
    pub name: Vec<u8>,
}

pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_SYMLINK: u8 = 7;

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.mode & 0xF000 == 0x4000
    }
    pub fn is_file(&self) -> bool {
        self.mode & 0xF000 == 0x8000
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & 0xF000 == 0xA000
    }
    pub fn is_encrypted(&self) -> bool {
        self.flags & FL_ENCRYPT != 0
    }
    pub fn permissions(&self) -> u32 {
        u32::from(self.mode & 0o7777)
    }
    /// Raw `i_block`: the inline target of a fast symlink.
    pub fn inline_block(&self) -> &[u8] {
        &self.block
    }
    pub fn uses_extents(&self) -> bool {
        self.flags & FL_EXTENTS != 0
    }
}

impl Ext4 {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut sb = [0u8; 1024];
        file.read_exact_at(&mut sb, SUPERBLOCK_OFFSET)
            .with_context(|| format!("{}: reading the superblock", path.display()))?;
        if u16_at(&sb, 56) != EXT4_MAGIC {
            bail!(
                "{} is not an ext4 filesystem (bad superblock magic)",
                path.display()
            );
        }
        let block_size = 1024u64 << u32_at(&sb, 24);
        let incompat = u32_at(&sb, 96);
        let rev_level = u32_at(&sb, 76);
        let inode_size = if rev_level == 0 {
            128
        } else {
            u64::from(u16_at(&sb, 88))
        };
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            u64::from(u16_at(&sb, 254)).max(32)
        } else {
            32
        };
        let blocks = u64::from(u32_at(&sb, 4))
            | if incompat & INCOMPAT_64BIT != 0 {
                u64::from(u32_at(&sb, 0x150)) << 32
            } else {
                0
            };
        let blocks_per_group = u64::from(u32_at(&sb, 32));
        let first_data_block = u64::from(u32_at(&sb, 20));
        ensure!(
            blocks_per_group > 0 && inode_size >= 128,
            "{}: corrupt superblock",
            path.display()
        );
        let fs = Self {
            file,
            block_size,
            inodes_per_group: u32_at(&sb, 40),
            inode_size,
            desc_size,
            first_data_block,
            group_count: (blocks - first_data_block).div_ceil(blocks_per_group),
            incompat,
        };
        Ok(fs)
    }

    pub fn has_encrypt_feature(&self) -> bool {
        self.incompat & INCOMPAT_ENCRYPT != 0
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .with_context(|| format!("reading {} bytes at offset {offset}", buf.len()))
    }

    pub fn read_block(&self, block: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.block_size as usize];
        self.read_at(block * self.block_size, &mut buf)?;
        Ok(buf)
    }

    pub fn inode(&self, number: u32) -> Result<Inode> {
        ensure!(number >= 1, "inode number 0 is invalid");
        let index = u64::from(number - 1);
        let group = index / u64::from(self.inodes_per_group);
        ensure!(
            group < self.group_count,
            "inode {number} is beyond the last block group"
        );
        let mut desc = vec![0u8; self.desc_size as usize];
        let gdt = (self.first_data_block + 1) * self.block_size;
        self.read_at(gdt + group * self.desc_size, &mut desc)?;
        let mut table = u64::from(u32_at(&desc, 8));
        if self.desc_size >= 64 {
            table |= u64::from(u32_at(&desc, 0x28)) << 32;
        }
        let offset =
            table * self.block_size + (index % u64::from(self.inodes_per_group)) * self.inode_size;
        let mut raw = vec![0u8; self.inode_size as usize];
        self.read_at(offset, &mut raw)?;
        let flags = u32_at(&raw, 0x20);
        if flags & FL_INLINE_DATA != 0 {
            bail!("inode {number} uses inline data, which this reader does not support");
        }
        let size = u64::from(u32_at(&raw, 4)) | u64::from(u32_at(&raw, 0x6C)) << 32;
        let uid = u32::from(u16_at(&raw, 2)) | u32::from(u16_at(&raw, 0x78)) << 16;
        let gid = u32::from(u16_at(&raw, 0x18)) | u32::from(u16_at(&raw, 0x7A)) << 16;
        let file_acl = u64::from(u32_at(&raw, 0x68)) | u64::from(u16_at(&raw, 0x76)) << 32;
        Ok(Inode {
            number,
            mode: u16_at(&raw, 0),
            uid,
            gid,
            size,
            mtime: i64::from(u32_at(&raw, 0x10) as i32),
            flags,
            block: raw[0x28..0x28 + 60].try_into().expect("60 bytes"),
            raw,
            file_acl,
        })
    }

    /// The file's extents, in logical order.
    pub fn extents(&self, inode: &Inode) -> Result<Vec<Extent>> {
        if !inode.uses_extents() {
            bail!(
                "inode {} is not extent-mapped (old block maps are not supported)",
                inode.number
            );
        }
        let mut out = Vec::new();
        self.walk_extent_node(&inode.block, inode.number, 0, &mut out)?;
        out.sort_by_key(|e| e.logical);
        Ok(out)
    }

    fn walk_extent_node(
        &self,
        node: &[u8],
        ino: u32,
        level: u32,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        ensure!(level < 8, "inode {ino}: extent tree too deep");
        ensure!(
            node.len() >= 12 && u16_at(node, 0) == EXTENT_MAGIC,
            "inode {ino}: bad extent header"
        );
        let entries = usize::from(u16_at(node, 2));
        let depth = u16_at(node, 6);
        ensure!(
            12 + entries * 12 <= node.len(),
            "inode {ino}: extent entries overflow their node"
        );
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let raw_len = u16_at(e, 4);
                let (len, uninit) = if raw_len > 32768 {
                    (raw_len - 32768, true)
                } else {
                    (raw_len, false)
                };
                out.push(Extent {
                    logical: u64::from(u32_at(e, 0)),
                    physical: u64::from(u32_at(e, 8)) | u64::from(u16_at(e, 6)) << 32,
                    len: u64::from(len),
                    uninit,
                });
            } else {
                let child = u64::from(u32_at(e, 4)) | u64::from(u16_at(e, 8)) << 32;
                let block = self.read_block(child)?;
                self.walk_extent_node(&block, ino, level + 1, out)?;
            }
        }
        Ok(())
    }

    /// The fscrypt context xattr (index 9, name "c"), if any.
    pub fn encryption_context(&self, inode: &Inode) -> Result<Option<Vec<u8>>> {
        // In-inode xattrs follow the fixed part and i_extra_isize.
        if inode.raw.len() > 128 {
            let extra = usize::from(u16_at(&inode.raw, 0x80));
            let start = 128 + extra;
            if start + 4 <= inode.raw.len() && u32_at(&inode.raw, start) == XATTR_MAGIC {
                let region = &inode.raw[start + 4..];
                if let Some(v) =
                    find_xattr(region, region, XATTR_INDEX_ENCRYPTION, b"c", inode.number)?
                {
                    return Ok(Some(v));
                }
            }
        }
        if inode.file_acl != 0 {
            let block = self.read_block(inode.file_acl)?;
            ensure!(
                u32_at(&block, 0) == XATTR_MAGIC,
                "inode {}: bad xattr block magic",
                inode.number
            );
            return find_xattr(
                &block[32..],
                &block,
                XATTR_INDEX_ENCRYPTION,
                b"c",
                inode.number,
            );
        }
        Ok(None)
    }

    /// Every entry of a directory, read linearly (htree index blocks hold
    /// entries with inode 0 and are skipped).
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        ensure!(dir.is_dir(), "inode {} is not a directory", dir.number);
        let mut entries = Vec::new();
        for extent in self.extents(dir)? {
            if extent.uninit {
                continue;
            }
            for i in 0..extent.len {
                let block = self.read_block(extent.physical + i)?;
                parse_dir_block(&block, dir.number, &mut entries)?;
            }
        }
        Ok(entries)
    }
}

/// Looks up an xattr in an entry table. `values` is what `e_value_offs` is
/// relative to: the entry table for in-inode xattrs, the block for block ones.
fn find_xattr(
    entries: &[u8],
    values: &[u8],
    index: u8,
    name: &[u8],
    ino: u32,
) -> Result<Option<Vec<u8>>> {
    let mut off = 0;
    while off + 16 <= entries.len() {
        let name_len = usize::from(entries[off]);
        if name_len == 0 && u32_at(entries, off) == 0 {
            break;
        }
        let e_index = entries[off + 1];
        let value_offs = usize::from(u16_at(entries, off + 2));
        let value_inum = u32_at(entries, off + 4);
        let value_size = u32_at(entries, off + 8) as usize;
        ensure!(
            off + 16 + name_len <= entries.len(),
            "inode {ino}: xattr entry overflows"
        );
        let e_name = &entries[off + 16..off + 16 + name_len];
        if e_index == index && e_name == name {
            ensure!(
                value_inum == 0,
                "inode {ino}: xattr value in a separate inode is not supported"
            );
            ensure!(
                value_offs + value_size <= values.len(),
                "inode {ino}: xattr value overflows"
            );
            return Ok(Some(values[value_offs..value_offs + value_size].to_vec()));
        }
        off += (16 + name_len + 3) & !3;
    }
    Ok(None)
}

fn parse_dir_block(block: &[u8], dir: u32, out: &mut Vec<DirEntry>) -> Result<()> {
    let mut off = 0;
    while off + 8 <= block.len() {
        let inode = u32_at(block, off);
        let rec_len = usize::from(u16_at(block, off + 4));
        let name_len = usize::from(block[off + 6]);
        let file_type = block[off + 7];
        ensure!(
            rec_len >= 8 && off + rec_len <= block.len(),
            "directory {dir}: corrupt entry at offset {off}"
        );
        if inode != 0 && name_len > 0 {
            ensure!(
                8 + name_len <= rec_len,
                "directory {dir}: name overflows its entry at offset {off}"
            );
            out.push(DirEntry {
                inode,
                file_type,
                name: block[off + 8..off + 8 + name_len].to_vec(),
            });
        }
        off += rec_len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_block_parsing_skips_empty_and_rejects_overflow() {
        let mut block = vec![0u8; 64];
        // entry 1: inode 12, rec_len 16, "ab"
        block[0..4].copy_from_slice(&12u32.to_le_bytes());
        block[4..6].copy_from_slice(&16u16.to_le_bytes());
        block[6] = 2;
        block[7] = FT_REG;
        block[8..10].copy_from_slice(b"ab");
        // entry 2: inode 0 (deleted), covers the rest
        block[20..22].copy_from_slice(&48u16.to_le_bytes());
        let mut out = Vec::new();
        parse_dir_block(&block, 2, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, b"ab");
        block[20..22].copy_from_slice(&200u16.to_le_bytes());
        assert!(parse_dir_block(&block, 2, &mut Vec::new()).is_err());
    }
}
