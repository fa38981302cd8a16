//! Consumer groups across nodes: what a member that drops leaves
//! unfinished goes to a member on another node when its own node has no
//! member of the group online, and to that group only.

use super::*;

#[test]
fn a_dropped_members_unfinished_message_goes_to_a_member_on_another_node() {
    let mut ns = Nodes::new(2);
    let a = ns.node(0).connect(V5, "wa");
    ns.node(0)
        .subscribe(&a, "$share/w/task", q(QoS::AtLeastOnce));
    let b = ns.node(1).connect(V5, "wb");
    ns.node(1)
        .subscribe(&b, "$share/w/task", q(QoS::AtLeastOnce));
    // A plain subscriber beside wb: it has its copy already, the
    // redelivery is for the group only.
    let plain = ns.node(1).connect(V5, "plain");
    ns.node(1).subscribe(&plain, "task", q(QoS::AtLeastOnce));
    ns.link();
    let p = ns.node(0).connect(V5, "boss");
    ns.node(0).publish(&p, "task", b"job", QoS::AtLeastOnce, 1);
    ns.node(0).run();
    ns.link();
    // Its own node's member takes it (local first) and drops without
    // acknowledging it.
    assert_eq!(ns.node(0).publishes(&a).len(), 1);
    assert!(ns.node(1).publishes(&b).is_empty());
    assert_eq!(ns.node(1).publishes(&plain).len(), 1);
    ns.node(0).drop_socket(&a);
    ns.node(0).run();
    ns.link();
    let got = ns.node(1).publishes(&b);
    assert!(
        matches!(&got[..], [g] if &g.payload[..] == b"job"),
        "redelivered to the member on the other node: {got:?}"
    );
    assert!(
        ns.node(1).publishes(&plain).is_empty(),
        "not a second copy for the plain subscriber"
    );
}

#[test]
fn a_dropped_members_message_stays_with_a_member_online_on_its_node() {
    let mut ns = Nodes::new(2);
    let a = ns.node(0).connect(V5, "wa");
    ns.node(0)
        .subscribe(&a, "$share/w/task", q(QoS::AtLeastOnce));
    let a2 = ns.node(0).connect(V5, "wa2");
    ns.node(0)
        .subscribe(&a2, "$share/w/task", q(QoS::AtLeastOnce));
    let b = ns.node(1).connect(V5, "wb");
    ns.node(1)
        .subscribe(&b, "$share/w/task", q(QoS::AtLeastOnce));
    ns.link();
    let p = ns.node(0).connect(V5, "boss");
    ns.node(0).publish(&p, "task", b"job", QoS::AtLeastOnce, 1);
    ns.node(0).run();
    ns.link();
    let (first, other) = if ns.node(0).publishes(&a).len() == 1 {
        (&a, &a2)
    } else {
        (&a2, &a)
    };
    ns.node(0).drop_socket(first);
    ns.node(0).run();
    ns.link();
    assert_eq!(ns.node(0).publishes(other).len(), 1);
    assert!(ns.node(1).publishes(&b).is_empty());
}
