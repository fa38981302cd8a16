//! The session registry's control plane with real etcd: one controller
//! elected, the partition map it writes (1024 partitions spread evenly),
//! and both moved to the survivors when the controller is killed with -9.

use super::*;

/// The controller and each node's partitions as `cluster status` says.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    controller: Option<u16>,
    partitions: BTreeMap<u16, usize>,
    epoch: Option<u64>,
}

fn parse_status(text: &str) -> Status {
    let controller = text
        .lines()
        .find_map(|l| l.strip_prefix("controller node "))
        .filter(|rest| rest.contains(" epoch "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok());
    let partitions = text
        .lines()
        .filter_map(|l| {
            let id = l.strip_prefix("node ")?.split(' ').next()?.parse().ok()?;
            let n = l
                .split_once(" partitions ")?
                .1
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((id, n))
        })
        .collect();
    let epoch = text
        .lines()
        .find_map(|l| l.strip_prefix("partitions epoch "))
        .and_then(|rest| rest.parse().ok());
    Status {
        controller,
        partitions,
        epoch,
    }
}

/// Polls `cluster status` (via node `via`) until `done` holds; returns it
/// and how long it took.
fn status_until(
    c: &Cluster,
    via: usize,
    within: Duration,
    done: impl Fn(&Status) -> bool,
) -> (Status, Duration) {
    let t0 = Instant::now();
    loop {
        let text = c.status(via);
        let s = parse_status(&text);
        if done(&s) {
            return (s, t0.elapsed());
        }
        assert!(t0.elapsed() < within, "never reached:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three nodes: node 1 (first up) is the controller and the map gives each
/// node 341 or 342 partitions. Killing the controller with -9 elects
/// another node and gives its partitions to the two survivors (512 each),
/// within the lease TTL and a little; the node that returns takes its
/// share back from a map with a new epoch.
#[test]
fn cluster_controller_fails_over_and_partitions_move() {
    let test = "cluster_controller_fails_over_and_partitions_move";
    let Some(mut c) = Cluster::start(test, 3) else {
        return;
    };
    let even = |s: &Status| {
        s.controller.is_some()
            && s.partitions.len() == 3
            && s.partitions.values().all(|&n| n == 341 || n == 342)
            && s.partitions.values().sum::<usize>() == 1024
    };
    let (first, _) = status_until(&c, 2, Duration::from_secs(20), even);
    assert_eq!(first.controller, Some(1), "the first node up: {first:?}");
    let epoch1 = first.epoch.expect("a map epoch");
    c.nodes[0].kill9();
    let killed = Instant::now();
    let (after, took) = status_until(&c, 1, Duration::from_secs(TTL + 10), |s| {
        s.controller.is_some_and(|n| n != 1)
            && s.partitions.get(&2) == Some(&512)
            && s.partitions.get(&3) == Some(&512)
    });
    eprintln!(
        "[{test}] controller and partitions moved {} ms after kill -9 (lease TTL {TTL} s)",
        took.as_millis()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(TTL + 4),
        "moved within the TTL and a little: {took:?}"
    );
    assert!(
        after.epoch.expect("epoch") > epoch1,
        "a new partition epoch"
    );
    // Node 1 returns: it rejoins as a member and gets a third again; the
    // controller stays where it is (no flapping back).
    c.nodes[0].restart();
    let (back, _) = status_until(&c, 0, Duration::from_secs(20), even);
    assert_eq!(back.controller, after.controller, "the controller stays");
    assert!(back.epoch > after.epoch);
}
