//! `vmqtt-shard repair DATA_DIR [--backup PATH]`: the operator's action for
//! a data directory the broker refuses because its write-ahead log is
//! damaged before its end.
//!
//! In this order: check what is wrong (only a damaged write-ahead log is
//! repaired; anything else is reported and nothing is done), check that no
//! process has the database open, copy the whole directory to the backup
//! (which must not exist; synced), then recover everything before the
//! damage (`vmqtt_storage::repair_wal`) and print what was dropped. The
//! backup is the directory as it was found, byte for byte: putting it back
//! undoes the repair.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use vmqtt_config::Config;
use vmqtt_storage::{Census, RocksOptions, StorageError};

/// Runs the repair and prints its report on standard output.
pub fn run(config: Option<&Path>, dir: &Path, backup: Option<&Path>) -> anyhow::Result<()> {
    let options = match config {
        Some(path) => crate::store::rocks_options(&Config::load(path)?, 0),
        None => RocksOptions::default(),
    };
    println!("repair: {}", dir.display());
    match vmqtt_storage::check(dir) {
        Ok(()) => {
            println!(
                "nothing to repair: the data directory opens cleanly (nothing was changed, no \
                 backup made)"
            );
            return Ok(());
        }
        Err(e @ StorageError::CorruptWal { .. }) => println!("found: {e}"),
        Err(e) => bail!(
            "{e}\nrepair recovers only a damaged write-ahead log; this is other damage \
             (nothing was changed, no backup made)"
        ),
    }
    if let Some(pid) = crate::sys::lock_holder(&dir.join("LOCK"))
        .with_context(|| format!("checking the lock of {}", dir.display()))?
    {
        bail!(
            "{} is in use by pid {pid}: stop the broker first (nothing was changed)",
            dir.display()
        );
    }
    let backup = backup.map_or_else(|| default_backup(dir, SystemTime::now()), Path::to_path_buf);
    let (files, bytes) = copy_dir(dir, &backup).with_context(|| {
        format!(
            "copying {} to {} (the data directory was not changed)",
            dir.display(),
            backup.display()
        )
    })?;
    println!(
        "backup: {} ({files} files, {bytes} bytes: the directory as it was found; put it back \
         to undo the repair)",
        backup.display()
    );
    let report = vmqtt_storage::repair_wal(dir, &options)
        .with_context(|| {
            format!(
                "repairing {} (the backup is {})",
                dir.display(),
                backup.display()
            )
        })?
        .context("the damage was gone when the repair started (nothing dropped)")?;
    println!(
        "dropped: {} bytes of write-ahead log from the damage on, holding {} intact write \
         batches after the damaged one (each batch: one storage write of a shard, typically \
         several messages, sessions or retained messages)",
        report.dropped_bytes, report.dropped_batches
    );
    match &report.readable {
        Some(r) => println!("before: {r} (every record that still verifies, damaged ones skipped)"),
        None => println!("before: not readable even with damaged records skipped"),
    }
    println!("after:  {} (everything before the damage)", report.kept);
    if let Some(r) = &report.readable {
        println!("lost:   {}", lost(r, &report.kept));
    }
    println!(
        "done: {} opens cleanly now; start the broker on it",
        dir.display()
    );
    Ok(())
}

/// What `before` has beyond `after`, in words.
fn lost(before: &Census, after: &Census) -> String {
    let d = |b: usize, a: usize| b.saturating_sub(a);
    format!(
        "at least {} sessions, {} subscriptions, {} queued or in-flight messages, {} retained \
         messages",
        d(before.sessions, after.sessions),
        d(before.subscriptions, after.subscriptions),
        d(before.queued, after.queued),
        d(before.retained, after.retained)
    )
}

/// `DATA_DIR.bak-YYYYMMDDTHHMMSSZ` beside the data directory.
fn default_backup(dir: &Path, now: SystemTime) -> PathBuf {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = dir.components().as_path().as_os_str().to_owned();
    name.push(format!(".bak-{}", utc_stamp(secs)));
    PathBuf::from(name)
}

/// `YYYYMMDDTHHMMSSZ` of `secs` since the Unix epoch.
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Copies the tree `from` to `to` (which must not exist), syncing every
/// file and directory; returns the files and bytes copied.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::create_dir(to)?;
    let (mut files, mut bytes) = (0, 0);
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        let kind = e.file_type()?;
        if kind.is_dir() {
            let (f, b) = copy_dir(&e.path(), &target)?;
            files += f;
            bytes += b;
        } else if kind.is_file() {
            bytes += std::fs::copy(e.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
            files += 1;
        }
    }
    std::fs::File::open(to)?.sync_all()?;
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_796_428_799), "20261204T235959Z");
    }

    #[test]
    fn the_default_backup_sits_beside_the_directory() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_428_799);
        assert_eq!(
            default_backup(Path::new("/var/lib/vmqtt/data/"), at),
            Path::new("/var/lib/vmqtt/data.bak-20261204T235959Z")
        );
        assert_eq!(
            default_backup(Path::new("data"), at),
            Path::new("data.bak-20261204T235959Z")
        );
    }

    #[test]
    fn copies_are_whole_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("a"), b"alpha").unwrap();
        std::fs::write(from.join("sub/b"), b"beta!").unwrap();
        let to = dir.path().join("to");
        assert_eq!(copy_dir(&from, &to).unwrap(), (2, 10));
        assert_eq!(std::fs::read(to.join("sub/b")).unwrap(), b"beta!");
        assert!(copy_dir(&from, &to).is_err(), "an existing backup is kept");
    }
}
