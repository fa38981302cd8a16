use super::*;

/// Writes logical records as RocksDB's `log::Writer` does (legacy record
/// format): fragments at block boundaries, a block tail shorter than a
/// header zero-filled. Returns the log and each record's start offset.
fn write_log(records: &[Vec<u8>]) -> (Vec<u8>, Vec<u64>) {
    let mut out = Vec::new();
    let mut starts = Vec::new();
    for r in records {
        let mut left: &[u8] = r;
        let mut first = true;
        loop {
            let in_block = BLOCK - out.len() % BLOCK;
            if in_block < HEADER {
                out.extend(std::iter::repeat_n(0u8, in_block));
                continue;
            }
            if first {
                starts.push(out.len() as u64);
            }
            let avail = in_block - HEADER;
            let take = left.len().min(avail);
            let last = take == left.len();
            let kind: u8 = match (first, last) {
                (true, true) => 1,
                (true, false) => 2,
                (false, false) => 3,
                (false, true) => 4,
            };
            let mut body = vec![kind];
            body.extend_from_slice(&left[..take]);
            let crc = mask(crc32c(&body));
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(take as u16).to_le_bytes());
            out.extend_from_slice(&body);
            left = &left[take..];
            first = false;
            if last {
                break;
            }
        }
    }
    (out, starts)
}

fn records(n: usize) -> Vec<Vec<u8>> {
    // Small ones and some spanning several blocks.
    (0..n)
        .map(|i| {
            let len = if i % 7 == 3 { 70_000 + i } else { 100 + i * 13 };
            (0..len).map(|k| (k * 31 + i) as u8).collect()
        })
        .collect()
}

fn scan_bytes(b: &[u8]) -> WalScan {
    scan(Path::new("000009.log"), b.len() as u64, b).unwrap()
}

#[test]
fn crc32c_and_mask_match_rocksdb() {
    // The CRC-32C check value.
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(crc32c(b""), 0);
    for v in [0u32, 1, 0xe306_9283, u32::MAX] {
        assert_eq!(unmask(mask(v)), v);
    }
}

#[test]
fn an_intact_log_verifies() {
    let recs = records(40);
    let (log, _) = write_log(&recs);
    assert!(log.len() > 4 * BLOCK, "spans blocks: {}", log.len());
    let s = scan_bytes(&log);
    assert_eq!(s.records, 40);
    assert_eq!(s.damage, None);
    assert_eq!(s.torn_tail, None);
    // Preallocated, zero-filled space after the last record is not damage.
    let mut padded = log.clone();
    padded.extend(std::iter::repeat_n(0u8, 5000));
    let s = scan_bytes(&padded);
    assert_eq!((s.records, s.damage, s.torn_tail), (40, None, None));
    // An empty log is fine.
    let s = scan_bytes(&[]);
    assert_eq!((s.records, s.damage, s.torn_tail), (0, None, None));
}

#[test]
fn a_log_cut_inside_its_last_record_is_a_torn_tail() {
    let recs = records(12);
    let (log, starts) = write_log(&recs);
    let last = *starts.last().unwrap();
    // Cut anywhere inside the last record (header, payload, a later
    // fragment of it).
    for cut in [last + 1, last + 6, last + 8, log.len() as u64 - 1] {
        let s = scan_bytes(&log[..cut as usize]);
        assert_eq!(s.damage, None, "cut at {cut}");
        assert_eq!(s.torn_tail, Some(last), "cut at {cut}");
        assert_eq!(s.records, 11, "cut at {cut}");
    }
    // Cut exactly after a record: nothing torn.
    let s = scan_bytes(&log[..starts[11] as usize]);
    assert_eq!((s.records, s.damage, s.torn_tail), (11, None, None));
}

#[test]
fn damage_in_the_middle_is_found_at_its_record() {
    let recs = records(40);
    let (log, starts) = write_log(&recs);
    let victim = 20;
    let mut bad = log.clone();
    let at = starts[victim] as usize + 9;
    for b in &mut bad[at..at + 64] {
        *b ^= 0x5a;
    }
    let s = scan_bytes(&bad);
    let d = s.damage.expect("damage found");
    assert_eq!(d.offset, starts[victim]);
    assert_eq!(d.reason, "checksum mismatch");
    assert_eq!(d.bytes_after, log.len() as u64 - starts[victim]);
    assert_eq!(s.records, victim as u64);
    // The records from the next block on still verify, and are counted.
    let next_block = (starts[victim] as usize / BLOCK + 1) * BLOCK;
    let whole_after = starts.iter().filter(|&&o| o as usize >= next_block).count() as u64;
    assert!(d.records_after >= whole_after, "{d:?} vs {whole_after}");
    assert!(d.records_after < 40 - victim as u64, "{d:?}");
    assert_eq!(s.torn_tail, None);
}

#[test]
fn a_damaged_length_is_bad_record_length_not_a_torn_tail() {
    let recs = records(40);
    let (log, starts) = write_log(&recs);
    // A record early in a full block claiming more bytes than the block has.
    let victim = 2;
    let mut bad = log.clone();
    let at = starts[victim] as usize;
    bad[at + 4] = 0xff;
    bad[at + 5] = 0xff;
    let s = scan_bytes(&bad);
    let d = s.damage.expect("damage found");
    assert_eq!((d.offset, d.reason), (starts[victim], "bad record length"));
}

#[test]
fn garbage_from_the_start_is_damage_at_offset_zero() {
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let s = scan_bytes(&garbage);
    assert_eq!(s.damage.map(|d| d.offset), Some(0));
    assert_eq!(s.records, 0);
}

#[test]
fn wal_files_are_listed_in_log_number_order() {
    let dir = tempfile::tempdir().unwrap();
    for n in [
        "000012.log",
        "000009.log",
        "LOG",
        "LOG.old.1",
        "000010.sst",
        "x.log",
    ] {
        std::fs::write(dir.path().join(n), b"").unwrap();
    }
    let names: Vec<String> = wal_files(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["000009.log", "000012.log"]);
}
