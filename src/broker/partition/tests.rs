use std::collections::BTreeSet;

use super::*;

fn members(ids: &[u16]) -> BTreeMap<NodeId, u16> {
    ids.iter().map(|&id| (NodeId(id), 1 + id % 4)).collect()
}

fn loads(m: &PartitionMap, ids: &[u16]) -> Vec<usize> {
    ids.iter().map(|&id| m.owned_by(NodeId(id))).collect()
}

fn assert_balanced(m: &PartitionMap, ids: &[u16]) {
    let l = loads(m, ids);
    assert_eq!(l.iter().sum::<usize>(), usize::from(PARTITIONS), "{l:?}");
    let (lo, hi) = (l.iter().min().unwrap(), l.iter().max().unwrap());
    assert!(hi - lo <= 1, "unbalanced {l:?}");
}

#[test]
fn the_partition_of_a_client_id_is_fixed_and_spread() {
    // Golden values: a change here moves every session of a live cluster.
    let golden: Vec<u16> = ["", "a", "sensor-1", "device/42"]
        .iter()
        .map(|c| partition_of(c).0)
        .collect();
    assert_eq!(golden, vec![805, 140, 809, 150]);
    let mut per = vec![0u32; usize::from(PARTITIONS)];
    for i in 0..102_400 {
        per[usize::from(partition_of(&format!("client-{i}")).0)] += 1;
    }
    let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
    assert!(*lo > 40 && *hi < 180, "spread {lo}..{hi} around 100");
}

#[test]
fn a_map_is_balanced_and_moves_only_what_it_must() {
    let three = PartitionMap::assign(None, &members(&[1, 2, 3])).unwrap();
    assert_balanced(&three, &[1, 2, 3]);
    assert_eq!(
        PartitionMap::assign(None, &members(&[3, 1, 2])),
        Some(three.clone()),
        "deterministic"
    );
    // Node 2 leaves: only its partitions move, to the others evenly.
    let two = PartitionMap::assign(Some(&three), &members(&[1, 3])).unwrap();
    assert_balanced(&two, &[1, 3]);
    let moved = three.moved(&two);
    assert!(moved
        .iter()
        .all(|&p| three.owner(p).node == NodeId(2) && two.owner(p).node != NodeId(2)));
    assert_eq!(moved.len(), three.owned_by(NodeId(2)));
    // Node 4 joins: it takes a quarter, and nothing moves between the others.
    let four = PartitionMap::assign(Some(&two), &members(&[1, 3, 4])).unwrap();
    assert_balanced(&four, &[1, 3, 4]);
    assert!(four.to_value().len() < 200, "{}", four.to_value());
    for p in two.moved(&four) {
        assert_eq!(four.owner(p).node, NodeId(4), "{p:?} moved elsewhere");
    }
    // The shard of a partition is within its node's shards.
    for p in (0..PARTITIONS).map(Partition) {
        let o = four.owner(p);
        assert!(o.shard < members(&[1, 3, 4])[&o.node]);
    }
    assert_eq!(PartitionMap::assign(Some(&four), &members(&[])), None);
}

#[test]
fn the_etcd_value_round_trips_and_bad_ones_are_refused() {
    let m = PartitionMap::assign(None, &members(&[1, 2, 5])).unwrap();
    let v = m.to_value();
    assert!(v.len() < 100, "one run per node: {v}");
    let back = PartitionMap::from_value(&v, 42).unwrap();
    assert_eq!(back.revision, 42);
    assert_eq!(
        PartitionMap {
            revision: 0,
            ..back
        },
        m
    );
    for bad in [
        "",
        "v2 s=1:1 o=1*1024",
        "v1 s=1:1 o=1*1023",
        "v1 s=1:1 o=1*1025",
        "v1 s=1:1 o=2*1024",
        "v1 s=1:x o=1*1024",
        "v1 s=1:1 o=1*1024 extra",
        "v1 o=1*1024",
    ] {
        assert_eq!(PartitionMap::from_value(bad, 1), None, "{bad:?}");
    }
    assert!(PartitionMap::from_value("v1 s=1:1 o=1*1024", 1).is_some());
}

#[test]
fn the_newest_claim_wins_and_a_stale_registration_is_refused() {
    let mut r = Registry::new();
    let (a, prev) = r.claim("dev", NodeId(1), 0);
    assert_eq!((a.epoch, prev), (1, None));
    // The same client connects on node 2: node 1 must hand the session over.
    let (b, prev) = r.claim("dev", NodeId(2), 1);
    assert_eq!(prev, Some(a));
    assert_eq!(b.epoch, 2);
    // Node 1, re-registering after a partition move, is told it lost it.
    assert_eq!(r.reregister("dev", a), Reregistered::Refused(b));
    assert_eq!(
        r.reregister("dev", b),
        Reregistered::Accepted,
        "the holder keeps it"
    );
    // A new owner learns registrations in any order: the latest stays, and
    // the node it replaces is named (it drops its copy).
    let mut fresh = Registry::new();
    assert_eq!(fresh.reregister("dev", a), Reregistered::Accepted);
    assert_eq!(fresh.reregister("dev", b), Reregistered::Replaced(a));
    assert_eq!(fresh.reregister("dev", a), Reregistered::Refused(b));
    assert_eq!(fresh.get("dev"), Some(b));
    // Node 2 restarts and registers from its disk (epoch 0): still its own,
    // at the epoch the owner knew.
    let restarted = Registration { epoch: 0, ..b };
    assert_eq!(fresh.reregister("dev", restarted), Reregistered::Accepted);
    assert_eq!(fresh.get("dev"), Some(b));
    // Node 2 leaves: its registrations go.
    assert_eq!(fresh.forget_node(NodeId(2)), 1);
    assert_eq!(fresh.get("dev"), None);
    // A release of an old registration does not forget the new one.
    r.release("dev", a.node);
    assert_eq!(r.get("dev"), Some(b));
    r.release("dev", b.node);
    assert_eq!(r.get("dev"), None);
}

#[test]
fn an_owner_forgets_the_partitions_it_gave_away() {
    let mut r = Registry::new();
    let mut parts = BTreeSet::new();
    for i in 0..200 {
        let c = format!("c{i}");
        parts.insert(partition_of(&c));
        r.claim(&c, NodeId(1 + (i % 2) as u16), 0);
    }
    assert_eq!(r.per_node().values().sum::<usize>(), 200);
    let keep: BTreeSet<Partition> = parts.iter().take(parts.len() / 2).copied().collect();
    let gone = r.keep_only(|p| keep.contains(&p));
    assert!(gone > 0 && gone < 200);
    assert_eq!(r.per_node().values().sum::<usize>(), 200 - gone);
}

#[test]
fn any_sequence_of_joins_and_leaves_stays_balanced_and_moves_minimally() {
    for seed in 0..200u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut ids: Vec<u16> = vec![1];
        let mut map = PartitionMap::assign(None, &members(&ids)).unwrap();
        for _ in 0..12 {
            let leave = ids.len() > 1 && next(2) == 0;
            let changed = if leave {
                ids.remove(next(ids.len() as u64) as usize)
            } else {
                let id = (1..=40)
                    .find(|i| !ids.contains(i) && next(3) == 0)
                    .unwrap_or(41);
                if ids.contains(&id) {
                    continue;
                }
                ids.push(id);
                id
            };
            ids.sort_unstable();
            let m = PartitionMap::assign(Some(&map), &members(&ids)).unwrap();
            assert_balanced(&m, &ids);
            for p in map.moved(&m) {
                let (from, to) = (map.owner(p).node, m.owner(p).node);
                if from == to {
                    continue; // the same node, another shard: not a move
                }
                if leave {
                    assert_eq!(from, NodeId(changed), "seed {seed}: {p:?} {from}→{to}");
                } else {
                    assert_eq!(to, NodeId(changed), "seed {seed}: {p:?} {from}→{to}");
                }
            }
            map = m;
        }
    }
}
