//! Consumer groups across nodes with real clients: a member that drops
//! with a message unacknowledged, on a node where its group has no other
//! member online, has it redelivered to the group's member on another
//! node.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_group_member_dropping_hands_its_message_to_another_node() {
    let test = "cluster_group_member_dropping_hands_its_message_to_another_node";
    if skip_without_mosquitto_clients(test) {
        return;
    }
    let Some(c) = Cluster::start(test, 2) else {
        return;
    };
    c.wait_linked();
    let (mut far, lines) =
        mosquitto_sub_on(c.port(1), "worker-far", "$share/w/task", "mqttv5", "1");
    // Node 1 routes the group to node 2 once it knows of the member there.
    probe_until(c.port(0), "task", || lines.try_iter().any(|l| l == "probe")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: Vec<_> = lines.try_iter().collect();
    // A member on node 1 that never acknowledges: node 1's publishes go to
    // it first (local_first).
    let mut near = Raw::v5(c.port(0), "worker-near").await;
    near.subscribe("$share/w/task", QoS::AtLeastOnce).await;
    mosquitto_pub_lines(c.port(0), "boss", "task", &["job".to_owned()], WAIT);
    let p = near.recv_publish_within(WAIT).await;
    assert_eq!(text(&p), "job");
    // It drops with the message unacknowledged: the member on node 2 gets
    // it.
    drop(near);
    let got = drain_real(&lines, WAIT);
    assert_eq!(got, ["job"], "redelivered across nodes");
    let _ = far.kill();
    let _ = far.wait();
}
