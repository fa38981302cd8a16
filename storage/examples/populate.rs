//! Writes a data directory the way the broker would lay it out, for
//! restart measurements (`scripts/bench-restart.sh`, `recover_time`).
//!
//! ```text
//! cargo run --release -p vmqtt-storage --example populate -- DIR \
//!     --sessions N --shards S [--subscriptions-per-session K] \
//!     [--queued-per-session Q] [--no-flush]
//! ```
//!
//! For each `i` in `0..N`: client id `bench-{i}` on its home shard
//! (`vmqtt::broker::home_shard`), an MQTT 3.1.1 session with clean session
//! 0 (expiry interval `u32::MAX`), disconnected now; `K` subscriptions with
//! maximum QoS 1 (`bench/{i}/#`, then `bench/{i}/{k}/#` for `k` in `1..K`;
//! default 1); `Q` queued QoS 1 deliveries (default 0) of `Q` messages
//! (`bench/queued/{q}`, 64-byte payload) stored once per shard, each
//! written in the batch holding its first queue entry.
//!
//! `DIR` must not exist or be empty. Writes go in batches of 10,000
//! operations per shard with `sync = false`, then one `sync()`, then a
//! flush of the memtables (what a graceful shutdown leaves; `--no-flush`
//! leaves the data in the write-ahead log instead, as a crash would).
//! Memory stays bounded: one pending batch per shard.
//!
//! Prints one line of `key=value` pairs (times in seconds).

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use vmqtt::broker::{home_shard, ShardId};
use vmqtt::codec::{ProtocolVersion, PublishProperties, QoS, SubscriptionOptions};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, ClientId};
use vmqtt_storage::{
    recover, unix_ms, DeliveryState, MessageId, MessageRefs, QueueEntry, RocksOptions,
    RocksStorage, SessionRecord, Storage, StoredMessage, SubscriptionRecord, WriteBatch,
};

type Res<T> = Result<T, Box<dyn Error>>;

/// Operations per `WriteBatch`.
const BATCH_OPS: usize = 10_000;

const USAGE: &str = "usage: populate DIR --sessions N --shards S \
                     [--subscriptions-per-session K] [--queued-per-session Q] [--no-flush]";

struct Args {
    dir: PathBuf,
    sessions: u64,
    shards: usize,
    subscriptions: u64,
    queued: u64,
    flush: bool,
}

fn parse_args() -> Res<Args> {
    let mut dir = None;
    let mut sessions = None;
    let mut shards = None;
    let mut subscriptions = 1;
    let mut queued = 0;
    let mut flush = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Res<u64> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            Ok(v.parse().map_err(|e| format!("{name} {v:?}: {e}"))?)
        };
        match a.as_str() {
            "--sessions" => sessions = Some(value("--sessions")?),
            "--shards" => shards = Some(value("--shards")?),
            "--subscriptions-per-session" => {
                subscriptions = value("--subscriptions-per-session")?;
            }
            "--queued-per-session" => queued = value("--queued-per-session")?,
            "--no-flush" => flush = false,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}").into()),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}").into()),
        }
    }
    let shards = shards.ok_or(USAGE)?;
    if !(1..=u64::from(u16::MAX)).contains(&shards) {
        return Err(format!("--shards must be 1..={}", u16::MAX).into());
    }
    if queued > u64::from(u32::MAX) {
        return Err("--queued-per-session is too large".into());
    }
    Ok(Args {
        dir: dir.ok_or(USAGE)?,
        sessions: sessions.ok_or(USAGE)?,
        shards: usize::try_from(shards)?,
        subscriptions,
        queued,
        flush,
    })
}

/// One shard's pending batch and message reference counts.
struct Pending {
    shard: ShardId,
    batch: WriteBatch,
    refs: MessageRefs,
}

impl Pending {
    fn write_if_full(&mut self, storage: &mut RocksStorage) -> Res<()> {
        if self.batch.len() >= BATCH_OPS {
            self.write(storage)?;
        }
        Ok(())
    }

    fn write(&mut self, storage: &mut RocksStorage) -> Res<()> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            storage.write(self.shard, batch, false)?;
        }
        Ok(())
    }
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn run(args: &Args) -> Res<()> {
    match std::fs::read_dir(&args.dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty: refusing to write into it",
                    args.dir.display()
                )
                .into());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", args.dir.display()).into()),
    }
    let started = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    let mut storage = RocksStorage::open(&args.dir, &RocksOptions::default())?;
    recover(&mut storage, args.shards)?;

    let session = SessionRecord {
        protocol: ProtocolVersion::V3_1_1,
        expiry_interval: u32::MAX,
        will: None,
        disconnected_at_ms: Some(now_ms),
    };
    let subscription = SubscriptionRecord {
        options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        id: None,
    };
    let messages: Vec<Arc<StoredMessage>> = (0..args.queued)
        .map(|q| -> Res<_> {
            Ok(Arc::new(StoredMessage {
                topic: TopicName::new(ByteStr::from(format!("bench/queued/{q}")))?,
                payload: Bytes::from(vec![b'x'; 64]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                expires_at_ms: None,
                origin: None,
            }))
        })
        .collect::<Res<_>>()?;
    let mut pending: Vec<Pending> = (0..args.shards)
        .map(|s| Pending {
            shard: ShardId::new(s as u16),
            batch: WriteBatch::new(),
            refs: MessageRefs::new(),
        })
        .collect();
    let mut records = 0u64;
    for i in 0..args.sessions {
        let client_id = ClientId::new(ByteStr::from(format!("bench-{i}")));
        let p = &mut pending[home_shard(client_id.as_str(), args.shards).get()];
        p.batch.put_session(client_id.clone(), session.clone());
        for k in 0..args.subscriptions {
            let filter = if k == 0 {
                format!("bench/{i}/#")
            } else {
                format!("bench/{i}/{k}/#")
            };
            let filter = TopicFilter::new(ByteStr::from(filter))?;
            p.batch
                .put_subscription(client_id.clone(), filter, subscription);
        }
        for (q, message) in messages.iter().enumerate() {
            // Message ids 1..=Q in every shard.
            let id = MessageId(q as u64 + 1);
            let entry = QueueEntry {
                message: id,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                state: DeliveryState::Queued,
            };
            let (batch, refs) = (&mut p.batch, &mut p.refs);
            batch.enqueue(refs, client_id.clone(), q as u64 + 1, entry, message);
        }
        records += 1 + args.subscriptions + args.queued;
        p.write_if_full(&mut storage)?;
    }
    for p in &mut pending {
        p.write(&mut storage)?;
    }
    let stored_messages: u64 = pending.iter().map(|p| p.refs.len() as u64).sum();
    records += stored_messages;
    let written = started.elapsed();
    storage.sync()?;
    let synced = started.elapsed();
    if args.flush {
        storage.flush()?;
    }
    let total = started.elapsed();
    println!(
        "populated {}: sessions={} shards={} subscriptions={} queue_entries={} messages={} \
         records={records} write_s={:.3} sync_s={:.3} flush_s={:.3} total_s={:.3} \
         peak_rss_mib={}",
        args.dir.display(),
        args.sessions,
        args.shards,
        args.sessions * args.subscriptions,
        args.sessions * args.queued,
        stored_messages,
        written.as_secs_f64(),
        (synced - written).as_secs_f64(),
        (total - synced).as_secs_f64(),
        total.as_secs_f64(),
        peak_rss_mib().map_or("?".into(), |m| m.to_string()),
    );
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("populate: {e}");
            ExitCode::FAILURE
        }
    }
}
