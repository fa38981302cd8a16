//! Reading RocksDB's write-ahead log files (`NNNNNN.log`) record by record,
//! without RocksDB, to say *where* one is damaged: RocksDB refuses a damaged
//! log with a bare "Corruption: checksum mismatch", naming neither the file
//! nor the offset.
//!
//! The format (RocksDB `db/log_format.h`): the file is a sequence of 32 KiB
//! blocks; each holds physical records `crc32c:u32le | length:u16le |
//! type:u8 [| log number:u32le] | payload`, the checksum (masked CRC-32C)
//! covering the type, the log number of recyclable records and the payload.
//! A logical record (one write batch) is one `Full` record or a `First`,
//! `Middle`s and a `Last`; a block's tail too short for a header is zero
//! padding.
//!
//! A record cut short by the end of the file is a *torn tail* (the process
//! died while writing it; the write it belonged to never returned, so
//! nothing acknowledged is lost): RocksDB's
//! `TolerateCorruptedTailRecords` recovery drops it silently. Anything else
//! that does not verify is *damage*: everything from there on cannot be
//! replayed in order.

use std::io::Read;
use std::path::{Path, PathBuf};

/// RocksDB's `log::kBlockSize`.
const BLOCK: usize = 32768;
/// Header of a legacy record; recyclable records add a 4-byte log number.
const HEADER: usize = 7;
const RECYCLABLE_HEADER: usize = 11;

/// What a scan of one write-ahead log file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalScan {
    /// The file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// Complete logical records (write batches) that verify, before any
    /// damage.
    pub records: u64,
    /// The first damage, if any.
    pub damage: Option<WalDamage>,
    /// The offset of a record cut short by the end of the file (a torn
    /// tail, normal after a crash mid-write), if any.
    pub torn_tail: Option<u64>,
}

/// Damage found in a write-ahead log before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalDamage {
    /// Byte offset in the file of the first record that does not verify.
    pub offset: u64,
    /// What is wrong with it (RocksDB's words).
    pub reason: &'static str,
    /// Bytes from `offset` to the end of the file.
    pub bytes_after: u64,
    /// Complete records after the damage that still verify: recovering up
    /// to the damage drops them too.
    pub records_after: u64,
}

/// Logical-record assembly state while walking physical records.
#[derive(Default)]
struct Walk {
    in_fragment: bool,
    /// Start offset of the logical record being assembled.
    start: u64,
    complete: u64,
}

impl Walk {
    /// Feeds one verified physical record of `kind`; `resync` after damage
    /// (fragments without their start are skipped, not an error).
    fn feed(&mut self, kind: u8, at: u64, resync: bool) -> Result<(), &'static str> {
        match kind {
            1 | 5 => {
                if self.in_fragment && !resync {
                    return Err("partial record without end");
                }
                self.in_fragment = false;
                self.complete += 1;
            }
            2 | 6 => {
                if self.in_fragment && !resync {
                    return Err("partial record without end");
                }
                self.in_fragment = true;
                self.start = at;
            }
            3 | 7 => {
                if !self.in_fragment && !resync {
                    return Err("missing start of fragmented record");
                }
            }
            4 | 8 => {
                if !self.in_fragment {
                    if !resync {
                        return Err("missing start of fragmented record");
                    }
                } else {
                    self.complete += 1;
                }
                self.in_fragment = false;
            }
            // Compression type, user-defined timestamp sizes, predecessor
            // WAL info: metadata, not data.
            9..=11 | 130 | 131 => {}
            // Unknown types with the "safe to ignore" bit.
            k if k & 0x80 != 0 => {}
            _ => return Err("unknown record type"),
        }
        Ok(())
    }
}

/// Reads up to one block; fewer bytes only at the end of the file.
fn read_block(r: &mut impl Read, buf: &mut [u8; BLOCK]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < BLOCK {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Scans the write-ahead log `r` (named `file`, `len` bytes long).
pub fn scan(file: &Path, len: u64, mut r: impl Read) -> std::io::Result<WalScan> {
    let mut out = WalScan {
        file: file.to_path_buf(),
        len,
        records: 0,
        damage: None,
        torn_tail: None,
    };
    let mut walk = Walk::default();
    let mut buf = Box::new([0u8; BLOCK]);
    let mut base = 0u64;
    // After damage: counts the records that still verify.
    let mut after: Option<(u64, &'static str, Walk)> = None;
    loop {
        let n = read_block(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        let eof = n < BLOCK;
        let block = &buf[..n];
        let mut pos = 0usize;
        while pos < n {
            let at = base + pos as u64;
            let rem = n - pos;
            let h = &block[pos..];
            if rem < HEADER {
                if eof && after.is_none() && h.iter().any(|&b| b != 0) {
                    out.torn_tail = Some(at);
                }
                break;
            }
            let length = usize::from(u16::from_le_bytes([h[4], h[5]]));
            let kind = h[6];
            let header = if matches!(kind, 5..=8 | 11 | 131) {
                RECYCLABLE_HEADER
            } else {
                HEADER
            };
            if kind == 0 && length == 0 {
                // Zero padding (preallocated space): the rest of the block.
                break;
            }
            if rem < header || header + length > rem {
                if eof {
                    // Cut short by the end of the file.
                    if after.is_none() {
                        out.torn_tail = Some(if walk.in_fragment { walk.start } else { at });
                        walk.in_fragment = false;
                    }
                    break;
                }
                if after.is_none() {
                    after = Some((at, "bad record length", Walk::default()));
                }
                break;
            }
            let stored = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            if crc32c(&h[6..header + length]) != unmask(stored) {
                if after.is_none() {
                    after = Some((at, "checksum mismatch", Walk::default()));
                }
                // As RocksDB does: the length may be damaged too, so the
                // rest of the block is not trusted.
                break;
            }
            match after.as_mut() {
                None => {
                    if let Err(reason) = walk.feed(kind, at, false) {
                        after = Some((at, reason, Walk::default()));
                    }
                }
                Some((_, _, w)) => {
                    let _ = w.feed(kind, at, true);
                }
            }
            pos += header + length;
        }
        base += n as u64;
        if eof {
            break;
        }
    }
    out.records = walk.complete;
    if let Some((offset, reason, w)) = after {
        out.damage = Some(WalDamage {
            offset,
            reason,
            bytes_after: len.saturating_sub(offset),
            records_after: w.complete,
        });
        out.torn_tail = None;
    } else if walk.in_fragment {
        // The file ends inside a fragmented record at a block boundary.
        out.torn_tail = Some(walk.start);
    }
    Ok(out)
}

/// The write-ahead log files of the RocksDB database in `dir`, in log
/// number order.
pub fn wal_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut logs: Vec<(u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            logs.push((n, e.path()));
        }
    }
    logs.sort();
    Ok(logs.into_iter().map(|(_, p)| p).collect())
}

/// Scans every write-ahead log file of the database in `dir`.
pub fn scan_dir(dir: &Path) -> std::io::Result<Vec<WalScan>> {
    wal_files(dir)?
        .into_iter()
        .map(|p| {
            let f = std::fs::File::open(&p)?;
            let len = f.metadata()?.len();
            scan(&p, len, std::io::BufReader::new(f))
        })
        .collect()
}

const MASK_DELTA: u32 = 0xa282_ead8;

/// RocksDB's `crc32c::Unmask`.
fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(MASK_DELTA);
    rot.rotate_left(15)
}

/// RocksDB's `crc32c::Mask` (tests write records with it).
#[cfg(test)]
fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// CRC-32C (Castagnoli), table-driven.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests;
