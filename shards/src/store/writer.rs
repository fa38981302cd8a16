//! The storage task of a shard (on its core, in the background queue):
//! writes the core's batches one at a time on glommio's blocking thread.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::timer;
use tracing::{error, info};
use vmqtt::broker::ShardId;
use vmqtt_storage::{unix_ms, RocksStorage, Storage};

use crate::http::Metrics;
use crate::runtime::Shard;

/// Writes the core's storage batches, one at a time, off the reactor (on
/// glommio's blocking thread): what the core produces while one batch is
/// written goes into the next (group commit). A failed write is retried
/// until it succeeds: the replies that wait for it are never sent before.
pub(crate) async fn storage_loop(
    shard: Rc<Shard>,
    db: RocksStorage,
    sync: bool,
    metrics: Arc<Metrics>,
) {
    let id = ShardId::new(shard.index as u16);
    let mut failures = 0u32;
    loop {
        let next = shard.core.borrow_mut().poll_store();
        let Some((batch_no, ops)) = next else {
            shard.store_notify.wait().await;
            continue;
        };
        let now = Instant::now();
        let batch = crate::store::to_write_batch(ops, now, unix_ms(std::time::SystemTime::now()));
        loop {
            let mut db = db.clone();
            let b = batch.clone();
            let started = Instant::now();
            // A write's error is rare and carries diagnostics (see storage's
            // lib.rs): its size is not a hot-path cost.
            #[allow(clippy::result_large_err)]
            let write = move || db.write(id, b, sync);
            let res = glommio::executor().spawn_blocking(write).await;
            match res {
                Ok(()) => {
                    let took = started.elapsed();
                    metrics.observe_store_write(shard.index, took);
                    shard.core.borrow_mut().note_store_write(took);
                    if failures > 0 {
                        info!(shard = shard.index, failures, "storage writes work again");
                        failures = 0;
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    error!(
                        shard = shard.index,
                        error = %e,
                        failures,
                        "storage write failed; acknowledgements wait, retrying"
                    );
                    let backoff = Duration::from_millis(100 << failures.min(5));
                    timer::sleep(backoff).await;
                }
            }
        }
        shard.core.borrow_mut().handle_stored(batch_no);
        shard.after();
    }
}

/// How long a stopping shard waits for its last storage batch.
pub(crate) const STORE_GRACE: Duration = Duration::from_secs(10);
