//! Which shard owns a client id, and client ids chosen to land on the same or
//! on different shards, so that every pub/sub test routes across cores.
//!
//! This is the ONE place the suite knows how vmqtt maps a client id to its
//! home shard.

/// The number of shards the harness starts vmqtt with (`--cores 2`).
pub const SHARDS: usize = 2;

// The broker's own mapping, so the suite places ids exactly as vmqtt does.
pub use vmqtt::broker::{home_shard, ShardId};

/// Searches `{prefix}-{tag}{n}` for the first `n` whose id satisfies `ok`.
fn find_id(prefix: &str, tag: &str, ok: impl Fn(&str) -> bool) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}-{tag}{n}"))
        .find(|id| ok(id))
        .unwrap_or_else(|| {
            panic!("no client id with prefix {prefix:?} satisfies the shard constraint")
        })
}

/// Two distinct client ids whose home shards differ (with `SHARDS` shards):
/// a message from one to the other crosses cores. With a single-threaded
/// broker such as Mosquitto this is just two distinct ids.
pub fn ids_on_different_shards(prefix: &str) -> (String, String) {
    let a = find_id(prefix, "a", |_| true);
    let sa = home_shard(&a, SHARDS);
    let b = find_id(prefix, "b", |id| home_shard(id, SHARDS) != sa);
    (a, b)
}

/// Two distinct client ids on the same home shard.
pub fn ids_on_same_shard(prefix: &str) -> (String, String) {
    let a = find_id(prefix, "a", |_| true);
    let sa = home_shard(&a, SHARDS);
    let b = find_id(prefix, "b", |id| home_shard(id, SHARDS) == sa);
    (a, b)
}

/// A client id on the given shard.
pub fn id_on_shard(prefix: &str, shard: ShardId) -> String {
    find_id(prefix, "s", |id| home_shard(id, SHARDS) == shard)
}

/// Where publisher and subscriber live relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Publisher and subscriber on different home shards.
    CrossShard,
    /// Publisher and subscriber on the same home shard.
    SameShard,
}

impl Placement {
    /// Two client ids `(first, second)` placed as `self` says.
    pub fn ids(self, prefix: &str) -> (String, String) {
        match self {
            Placement::CrossShard => ids_on_different_shards(prefix),
            Placement::SameShard => ids_on_same_shard(prefix),
        }
    }
}

/// The harness's own check: the id helpers place ids as they say.
#[test]
fn id_helpers_place_ids_as_they_say() {
    for prefix in ["x", "shard-check", "qos_matrix_v5_cross_shard"] {
        let (a, b) = ids_on_different_shards(prefix);
        assert_ne!(a, b);
        assert_ne!(home_shard(&a, SHARDS), home_shard(&b, SHARDS), "{a} {b}");
        let (a, b) = ids_on_same_shard(prefix);
        assert_ne!(a, b);
        assert_eq!(home_shard(&a, SHARDS), home_shard(&b, SHARDS), "{a} {b}");
        let s = home_shard(&a, SHARDS);
        assert_eq!(home_shard(&id_on_shard(prefix, s), SHARDS), s);
    }
    // Both shards are reachable.
    let shards: std::collections::BTreeSet<ShardId> = (0..64)
        .map(|i| home_shard(&format!("c{i}"), SHARDS))
        .collect();
    assert_eq!(shards.len(), SHARDS);
}
