//! Measures what a broker start costs in storage: open the data directory,
//! [`recover`] every shard, [`ShardState::purge_expired`] each one (and
//! write its deletes, as the broker would).
//!
//! ```text
//! cargo run --release -p vmqtt-storage --example recover_time -- DIR --shards S
//! ```
//!
//! One thread, as `recover` is. `DIR` must exist (this does not create a
//! data directory). With another shard count than the data's, `recover`
//! reshards the directory, and the time includes that.
//!
//! Prints one line of `key=value` pairs (times in seconds).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use vmqtt_storage::{recover, unix_ms, RocksOptions, RocksStorage, Storage};

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: recover_time DIR --shards S";

fn parse_args() -> Res<(PathBuf, usize)> {
    let mut dir = None;
    let mut shards = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shards" => {
                let v = it.next().ok_or("--shards needs a value")?;
                shards = Some(v.parse().map_err(|e| format!("--shards {v:?}: {e}"))?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}").into()),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}").into()),
        }
    }
    let shards: usize = shards.ok_or(USAGE)?;
    if !(1..=usize::from(u16::MAX)).contains(&shards) {
        return Err(format!("--shards must be 1..={}", u16::MAX).into());
    }
    Ok((dir.ok_or(USAGE)?, shards))
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn run(dir: &Path, shards: usize) -> Res<()> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    let started = Instant::now();
    let mut storage = RocksStorage::open(dir, &RocksOptions::default())?;
    let opened = started.elapsed();
    let mut recovered = recover(&mut storage, shards)?;
    let loaded = started.elapsed();
    let now_ms = unix_ms(SystemTime::now());
    let (mut sessions, mut subscriptions, mut queue_entries, mut messages, mut records) =
        (0, 0, 0, 0, 0);
    for st in &recovered.states {
        sessions += st.clients.len();
        subscriptions += st
            .clients
            .values()
            .map(|c| c.subscriptions.len())
            .sum::<usize>();
        queue_entries += st.clients.values().map(|c| c.queue.len()).sum::<usize>();
        messages += st.messages.len();
        records += st.record_count();
    }
    let mut expired = 0;
    for st in &mut recovered.states {
        let purged = st.purge_expired(now_ms);
        expired += purged.sessions.len();
        if !purged.batch.is_empty() {
            storage.write(st.shard, purged.batch, false)?;
        }
    }
    let total = started.elapsed();
    let resharded = recovered
        .resharded_from
        .as_ref()
        .map_or("no".to_owned(), |from| format!("from-{}", from.len()));
    println!(
        "recovered {}: shards={shards} sessions={sessions} subscriptions={subscriptions} \
         queue_entries={queue_entries} messages={messages} records={records} \
         expired_sessions={expired} resharded={resharded} open_s={:.3} recover_s={:.3} \
         purge_s={:.3} total_s={:.3} peak_rss_mib={}",
        dir.display(),
        opened.as_secs_f64(),
        (loaded - opened).as_secs_f64(),
        (total - loaded).as_secs_f64(),
        total.as_secs_f64(),
        peak_rss_mib().map_or("?".into(), |m| m.to_string()),
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|(dir, shards)| run(&dir, shards)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recover_time: {e}");
            ExitCode::FAILURE
        }
    }
}
