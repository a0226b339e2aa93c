//! The append-only chain file (`records.jsonl`) shared by the host and the
//! collectors, and a reader that finds a record by sequence number.
//!
//! A copy of a host's log is a directory holding:
//! - `records.jsonl`: one record line per record, seq 1, 2, 3, ... in order;
//! - `checkpoints.jsonl`: the host's signed checkpoints, in increasing seq;
//! - `receipts.jsonl`: collectors' cosigned checkpoints (receipts);
//! - `host.pub`: the host's Ed25519 public key (hex).
//!
//! Writers append whole lines and fsync before anyone is told a record is
//! stored. A crash can leave at most a torn last line; `ChainFile::open`
//! cuts it off, since nobody was ever told that record was stored.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::record::{Hash, Record, Seq, GENESIS, MAX_LINE_BYTES};

pub const RECORDS_FILE: &str = "records.jsonl";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const RECEIPTS_FILE: &str = "receipts.jsonl";
pub const HOST_KEY_FILE: &str = "host.pub";

/// The last record of a chain (seq 0 and the genesis hash when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: Seq,
    pub hash: Hash,
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS,
    };
}

/// An open `records.jsonl`, positioned for appending.
pub struct ChainFile {
    path: PathBuf,
    file: File,
    head: Head,
    len: u64,
    /// Bytes of a torn last line cut off when opening, if any.
    pub torn_bytes_removed: u64,
}

impl ChainFile {
    /// Opens (creating if needed) the chain file in `dir`, cuts off a torn
    /// last line, and reads the head from the last complete line.
    pub fn open(dir: &Path) -> anyhow::Result<ChainFile> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(RECORDS_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let (complete_len, last_line) = read_last_line(&mut file)
            .with_context(|| format!("reading the end of {}", path.display()))?;
        let total = file.metadata()?.len();
        let torn = total - complete_len;
        if torn > 0 {
            file.set_len(complete_len)
                .with_context(|| format!("cutting the torn last line of {}", path.display()))?;
            file.sync_all()?;
        }
        let head = match last_line {
            None => Head::EMPTY,
            Some(line) => {
                let record = Record::parse(&line).with_context(|| {
                    format!(
                        "the last record of {} is damaged; run `guardctl log verify` on it",
                        path.display()
                    )
                })?;
                Head {
                    seq: record.seq,
                    hash: record.hash,
                }
            }
        };
        Ok(ChainFile {
            path,
            file,
            head,
            len: complete_len,
            torn_bytes_removed: torn,
        })
    }

    pub fn head(&self) -> Head {
        self.head
    }

    /// Bytes of complete records in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records that the caller has already checked to continue this
    /// chain (each `prev` is the hash before it), as one write, then fsyncs.
    pub fn append(&mut self, records: &[Record]) -> anyhow::Result<()> {
        let lines: Vec<String> = records.iter().map(Record::to_line).collect();
        self.append_rendered(records, &lines)
    }

    /// `append` for records whose lines are already rendered (`Record::build`).
    pub fn append_rendered(&mut self, records: &[Record], lines: &[String]) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        let mut head = self.head;
        for (record, line) in records.iter().zip(lines) {
            if record.seq != head.seq + 1 || record.prev != head.hash {
                bail!(
                    "internal error: record {} does not continue the chain at {}",
                    record.seq,
                    head.seq
                );
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            head = Head {
                seq: record.seq,
                hash: record.hash,
            };
        }
        self.append_lines(&buf, head)
    }

    /// Appends pre-rendered record lines (each ending in `\n`) whose last
    /// record is `new_head`, then fsyncs. The collector uses this to store the
    /// exact bytes it received.
    pub fn append_lines(&mut self, lines: &[u8], new_head: Head) -> anyhow::Result<()> {
        self.file
            .write_all(lines)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        self.len += lines.len() as u64;
        self.head = new_head;
        Ok(())
    }
}

/// Returns the length of the file up to and including its last `\n`, and that
/// last complete line (without `\n`).
fn read_last_line(file: &mut File) -> std::io::Result<(u64, Option<Vec<u8>>)> {
    let total = file.metadata()?.len();
    let window = (2 * MAX_LINE_BYTES as u64 + 2).min(total);
    let start = total - window;
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut tail)?;
    let Some(last_nl) = tail.iter().rposition(|&b| b == b'\n') else {
        // No complete line in the window: either an empty file or one torn line.
        return Ok((if start == 0 { 0 } else { total }, None));
    };
    let complete_len = start + last_nl as u64 + 1;
    let line_start = tail[..last_nl]
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    Ok((complete_len, Some(tail[line_start..last_nl].to_vec())))
}

/// Reads `seq` out of a record line without parsing the whole line.
pub fn line_seq(line: &[u8]) -> Option<Seq> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Sequential reader of a chain file that can start at any seq.
pub struct ChainReader {
    reader: BufReader<File>,
    offset: u64,
}

impl ChainReader {
    /// Opens `dir`'s chain file positioned at the record `seq` (or at the end
    /// if the file has no such record yet).
    pub fn open_at(dir: &Path, seq: Seq) -> anyhow::Result<ChainReader> {
        let path = dir.join(RECORDS_FILE);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let offset = find_offset(&file, seq)
            .with_context(|| format!("looking for record {seq} in {}", path.display()))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        reader.seek(SeekFrom::Start(offset))?;
        Ok(ChainReader { reader, offset })
    }

    /// Byte offset of the next line to be read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next complete line into `buf` (without `\n`); false at the end
    /// of the file or at a line not yet complete (the reader then stays put).
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
        buf.clear();
        let n = self.reader.read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(false);
        }
        if buf.last() != Some(&b'\n') {
            // A line still being written: step back so it is read whole later.
            self.reader.seek(SeekFrom::Start(self.offset))?;
            buf.clear();
            return Ok(false);
        }
        buf.pop();
        self.offset += n as u64;
        Ok(true)
    }
}

/// Byte offset of the line holding `seq`, by binary search over the file
/// (lines hold strictly increasing seqs). Returns the file length if `seq` is
/// past the last record.
pub fn find_offset(file: &File, seq: Seq) -> anyhow::Result<u64> {
    let len = file.metadata()?.len();
    // Invariant: the line starting at `lo` has seq < target or lo == 0;
    // the answer lies in [lo, hi].
    let mut lo = 0u64;
    let mut hi = len;
    while hi - lo > 4096 {
        let mid = lo + (hi - lo) / 2;
        match line_after(file, mid)? {
            Some((start, line_seq_found)) if start < hi => {
                if line_seq_found < seq {
                    lo = start;
                } else {
                    hi = start;
                }
            }
            _ => hi = mid,
        }
    }
    // Linear scan of the last few KiB.
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(lo))?;
    let mut offset = lo;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Ok(offset);
        }
        match line_seq(&buf) {
            Some(s) if s >= seq => return Ok(offset),
            Some(_) => offset += n as u64,
            None => bail!("line at byte {offset} is not a record"),
        }
    }
}

/// The first complete line starting after byte `pos` (or at 0): its offset and seq.
fn line_after(file: &File, pos: u64) -> anyhow::Result<Option<(u64, Seq)>> {
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(pos))?;
    let mut start = pos;
    let mut buf = Vec::new();
    if pos > 0 {
        let n = reader.read_until(b'\n', &mut buf)?;
        start += n as u64;
    }
    buf.clear();
    let n = reader.read_until(b'\n', &mut buf)?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Ok(None);
    }
    match line_seq(&buf) {
        Some(seq) => Ok(Some((start, seq))),
        None => bail!("line at byte {start} is not a record"),
    }
}

/// Appends one line to a small side file (checkpoints, receipts) and fsyncs.
pub fn append_line_synced(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    file.write_all(&buf)
        .with_context(|| format!("appending to {}", path.display()))?;
    file.sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Cuts a torn last line (no trailing `\n`) off a side file after a crash,
/// so the next append starts on a fresh line.
pub fn cut_torn_tail(path: &Path) -> anyhow::Result<()> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let (complete_len, _) = read_last_line(&mut file)?;
    if complete_len < file.metadata()?.len() {
        file.set_len(complete_len)
            .with_context(|| format!("cutting the torn last line of {}", path.display()))?;
        file.sync_all()?;
    }
    Ok(())
}

/// Replaces a small file atomically: write a temporary file, fsync, rename, fsync the directory.
pub fn write_file_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records(n: u64) -> Vec<Record> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let r = Record::new(seq, seq as i64, "h", json!({"kind":"k","n":seq}), prev);
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn append_reopen_and_find() {
        let dir = tempfile::tempdir().unwrap();
        let all = records(3000);
        {
            let mut chain = ChainFile::open(dir.path()).unwrap();
            assert_eq!(chain.head(), Head::EMPTY);
            chain.append(&all[..1000]).unwrap();
            chain.append(&all[1000..]).unwrap();
        }
        let chain = ChainFile::open(dir.path()).unwrap();
        assert_eq!(chain.head().seq, 3000);
        assert_eq!(chain.head().hash, all[2999].hash);
        for seq in [1u64, 2, 17, 1500, 2999, 3000] {
            let mut reader = ChainReader::open_at(dir.path(), seq).unwrap();
            let mut line = Vec::new();
            assert!(reader.next_line(&mut line).unwrap());
            assert_eq!(Record::parse(&line).unwrap(), all[seq as usize - 1]);
        }
        let mut reader = ChainReader::open_at(dir.path(), 3001).unwrap();
        let mut line = Vec::new();
        assert!(!reader.next_line(&mut line).unwrap());
    }

    #[test]
    fn torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let all = records(5);
        ChainFile::open(dir.path()).unwrap().append(&all).unwrap();
        let path = dir.path().join(RECORDS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":6,\"time_ns\":6,\"ho").unwrap();
        let chain = ChainFile::open(dir.path()).unwrap();
        assert_eq!(chain.head().seq, 5);
        assert_eq!(chain.torn_bytes_removed, 24);
        assert!(fs::read(&path).unwrap().ends_with(b"}\n"));
    }

    #[test]
    fn a_damaged_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        ChainFile::open(dir.path())
            .unwrap()
            .append(&records(2))
            .unwrap();
        let path = dir.path().join(RECORDS_FILE);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"n\":2", "\"n\":9");
        fs::write(&path, text).unwrap();
        let err = ChainFile::open(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    }
}
