//! Consumer groups: `$share/{group}/{filter}` as a job queue, with paho-mqtt
//! workers (v5 and 3.1.1, driven by `shards/tests/python/paho_groups.py`),
//! across a kill -9 of the broker, and visible in `/metrics` and `$SYS`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::http::{free_port, http_get};
use crate::common::process::{
    have_paho, line_within, lines_of, mosquitto_pub_lines, python_script,
    skip_without_mosquitto_clients, sub_messages, wait_exit,
};
use crate::common::raw::persistent;
use crate::common::shard::id_on_shard;
use crate::common::*;

/// Strategies by group name, as an operator would write them.
const GROUPS_TOML: &str = r#"
[shared_subscriptions]
strategy = "round_robin"
groups = [{ pattern = "slow*", strategy = "least_inflight" }]
"#;

/// Runs one `paho_groups.py` scenario against a new broker.
fn run_scenario(test: &str, protocol: &str, scenario: &str) {
    if skip_missing_external(test, "python3 with paho-mqtt 2.x", have_paho()) {
        return;
    }
    if skip_on_mosquitto(test, "vmqtt's group strategies and redelivery") {
        return;
    }
    let b = Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: GROUPS_TOML.to_owned(),
            ..Default::default()
        },
    );
    let script = python_script("paho_groups.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--port", &b.port().to_string(), "--protocol", protocol])
        .args(["--scenario", scenario, "--prefix", test])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn python3 {}: {e}", script.display()));
    let status = wait_exit(&mut child, "paho_groups.py", Duration::from_secs(120));
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("[{test}] {stdout}{stderr}");
    assert!(
        status.success(),
        "paho_groups.py {protocol} {scenario} failed ({status}):\n{stdout}\n{stderr}"
    );
}

/// 4 paho workers of equal speed, round_robin: each QoS 1 message processed
/// once, each worker within 10% of the mean.
#[test]
fn paho_workers_share_evenly_v5() {
    run_scenario("paho_workers_share_evenly_v5", "v5", "even");
}

/// The same over MQTT 3.1.1 (shared subscriptions as Mosquitto accepts them).
#[test]
fn paho_workers_share_evenly_v311() {
    run_scenario("paho_workers_share_evenly_v311", "v311", "even");
}

/// A worker killed with SIGKILL while holding unacknowledged messages: all
/// of them are processed by the others; none stays with the dead worker.
#[test]
fn a_killed_worker_leaves_nothing_stuck_v5() {
    run_scenario("a_killed_worker_leaves_nothing_stuck_v5", "v5", "kill");
}

/// The same over MQTT 3.1.1.
#[test]
fn a_killed_worker_leaves_nothing_stuck_v311() {
    run_scenario("a_killed_worker_leaves_nothing_stuck_v311", "v311", "kill");
}

/// least_inflight: a worker 10x slower gets about a tenth as much.
#[test]
fn least_inflight_gives_a_slow_worker_less() {
    run_scenario("least_inflight_gives_a_slow_worker_less", "v5", "slow");
}

/// mosquitto_sub members (3.1.1 and 5) of one group and mosquitto_pub: 60
/// QoS 1 messages split 20/20/20 across three members (round_robin), none
/// twice.
#[test]
fn mosquitto_clients_share_a_group() {
    let test = "mosquitto_clients_share_a_group";
    if skip_without_mosquitto_clients(test) {
        return;
    }
    if skip_on_mosquitto(test, "vmqtt's round_robin over the whole group") {
        return;
    }
    let b = Broker::start(test);
    let port = b.port().to_string();
    const N: usize = 60;
    let mut subs = Vec::new();
    for (i, v) in ["mqttv5", "mqttv311", "mqttv5"].into_iter().enumerate() {
        let mut sub = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port])
            .args(["-i", &format!("{test}-{i}"), "-t", "$share/mosq/work/#"])
            .args(["-q", "1", "-V", v, "-d", "-W", "20"])
            .args(["-C", &(N / 3).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto_sub");
        let lines = lines_of(&mut sub);
        assert!(
            line_within(&lines, "received SUBACK", WAIT),
            "member {i} got no SUBACK"
        );
        subs.push((sub, lines));
    }
    let jobs: Vec<String> = (0..N).map(|i| format!("job-{i}")).collect();
    mosquitto_pub_lines(b.port(), &format!("{test}-pub"), "work/x", &jobs, WAIT * 4);
    let mut all = std::collections::BTreeSet::new();
    for (i, (mut sub, lines)) in subs.into_iter().enumerate() {
        // -C N/3: each exits once it has its third.
        let st = wait_exit(&mut sub, "mosquitto_sub", WAIT * 4);
        let got: Vec<String> = sub_messages(&lines)
            .into_iter()
            .filter(|l| l.starts_with("job-"))
            .collect();
        assert!(st.success(), "member {i} exited with {st}: {got:?}");
        assert_eq!(got.len(), N / 3, "member {i}: {got:?}");
        for m in got {
            assert!(all.insert(m.clone()), "{m} delivered twice");
        }
    }
    assert_eq!(all.len(), N);
}

/// A group whose only member is persistent and away: QoS 1 messages
/// acknowledged to the publisher survive kill -9 and reach the member when
/// it returns, in order; the group's state shows in `/metrics` and `$SYS`.
#[tokio::test]
async fn a_durable_group_loses_nothing_across_kill9() {
    let test = "a_durable_group_loses_nothing_across_kill9";
    if skip_on_mosquitto(test, "needs vmqtt's persistence and a restart") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            sys_interval_ms: Some(200),
            ..Default::default()
        },
    );
    let (member_id, pub_home) = ids_on_different_shards(test);
    let (mut m, _) = Raw::connect_ok(b.port(), persistent(V5P, &member_id, true, 3600)).await;
    m.subscribe("$share/durable/jobs/+", QoS::AtLeastOnce).await;
    m.disconnect().await;
    let pub_id = id_on_shard(&format!("{test}-pub"), home_shard(&pub_home, SHARDS));
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    const N: usize = 50;
    for i in 0..N {
        // publish_ok: the PUBACK came, so the broker owes this message.
        publ.publish_ok("jobs/x", &format!("d{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let watcher_id = format!("{test}-sys");
    let mut sys = Raw::v5(b.port(), &watcher_id).await;
    sys.subscribe("$SYS/broker/groups/durable/#", QoS::AtMostOnce)
        .await;
    let mut seen = std::collections::BTreeMap::new();
    while !seen.contains_key("members") || !seen.contains_key("dispatched") {
        let p = sys.recv_publish_within(WAIT).await;
        let key = p.topic.as_str().rsplit('/').next().unwrap_or("").to_owned();
        seen.insert(key, text(&p));
    }
    assert_eq!(seen["members"], "1", "{seen:?}");
    // Shards publish their metrics about once a second.
    let line =
        "vmqtt_group_members{group=\"durable\",filter=\"jobs/+\",strategy=\"round_robin\"} 1";
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, metrics) = http_get(http, "/metrics");
        assert_eq!(status, 200);
        if metrics.contains(line) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}` in /metrics:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("vmqtt_group"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, groups) = http_get(http, "/groups");
    assert_eq!(status, 200);
    assert!(
        groups.contains(r#""group":"durable","filter":"jobs/+""#)
            && groups.contains(&format!(r#"{{"client_id":"{member_id}","online":false,"#)),
        "{groups}"
    );

    b.kill9();
    b.restart();

    let (mut m, ack) = Raw::connect_ok(b.port(), persistent(V5P, &member_id, false, 3600)).await;
    assert!(ack.session_present, "the member's session survived");
    let mut got = Vec::with_capacity(N);
    for _ in 0..N {
        got.push(text(&m.recv_publish_acked().await));
    }
    let want: Vec<String> = (0..N).map(|i| format!("d{i}")).collect();
    assert_eq!(got, want, "every acknowledged message, in order");
    m.expect_no_publish(QUIET, "each message once").await;
}
