//! Operations: the HTTP metrics and health endpoint scraped while clients
//! run, DISCONNECT 0x8B on SIGTERM, and configuration errors that name the
//! key and the line.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::broker::check_config;
use crate::common::http::{free_port, http_get, metric};
use crate::common::shard::{id_on_shard, ShardId};
use crate::common::*;
use vmqtt::codec::ProtocolVersion;

#[tokio::test]
async fn metrics_scraped_while_clients_run() {
    let test = "metrics_scraped_while_clients_run";
    if skip_on_mosquitto(test, "vmqtt's HTTP endpoint") {
        return;
    }
    let http = free_port();
    let b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            ..Default::default()
        },
    );
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("ops/m", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for i in 0..10 {
        publ.publish_ok("ops/m", &format!("m{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    for _ in 0..10 {
        let p = sub.recv_publish_within(Duration::from_secs(5)).await;
        sub.ack(&p).await;
    }

    assert_eq!(http_get(http, "/healthz").0, 200);
    assert_eq!(http_get(http, "/readyz").0, 200);
    assert_eq!(http_get(http, "/nothing").0, 404);
    // Shards publish their counters about once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(http, "/metrics");
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE vmqtt_messages_received_total counter"),
            "{body}"
        );
        let (connections, shards) = metric(&body, "vmqtt_connections");
        assert_eq!(shards, SHARDS, "one series per shard:\n{body}");
        let (received, _) = metric(&body, "vmqtt_messages_received_total");
        let (sent, _) = metric(&body, "vmqtt_messages_sent_total");
        let (forwarded, _) = metric(&body, "vmqtt_cross_shard_forwards_total");
        let (subscriptions, _) = metric(&body, "vmqtt_subscriptions");
        if connections == 2 && received >= 10 && sent >= 10 && forwarded >= 10 && subscriptions == 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the traffic (2 connections, 10 received, sent, forwarded \
             across shards, 1 subscription):\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sigterm_sends_v5_clients_0x8b() {
    let test = "sigterm_sends_v5_clients_0x8b";
    if skip_on_mosquitto(test, "Mosquitto 2.0 closes without DISCONNECT") {
        return;
    }
    let mut b = Broker::start(test);
    let mut c = Raw::v5(b.port(), "sigterm-v5").await;
    let status = b
        .terminate(Duration::from_secs(5))
        .expect("exit within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let got = c.expect_closed(Duration::from_secs(5)).await;
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SERVER_SHUTTING_DOWN),
        "expected DISCONNECT 0x8B, got {got:?}"
    );
}

#[test]
fn config_typo_names_the_key_and_line() {
    let dir = std::env::temp_dir().join(format!("vmqtt-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("typo.toml");
    std::fs::write(&file, "[mqtt]\nmax_inflight = 10\nrecieve_maximum = 5\n").expect("write");
    let exe = env!("CARGO_BIN_EXE_vmqtt-shard");

    let out = check_config(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "check-config exit status; stderr: {err}"
    );
    assert!(err.contains("recieve_maximum"), "names the key: {err}");
    assert!(err.contains("line 3"), "names the line: {err}");
    assert!(
        err.contains("receive_maximum"),
        "suggests the right key: {err}"
    );

    // Starting with it fails the same way, before listening.
    let out = Command::new(exe)
        .args([
            "--cores",
            "1",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("recieve_maximum") && err.contains("line 3"),
        "{err}"
    );

    std::fs::write(&file, "[mqtt]\nreceive_maximum = 0\n").expect("write");
    let out = check_config(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mqtt.receive_maximum = 0") && err.contains("between 1 and 65535"),
        "{err}"
    );

    std::fs::write(&file, "[mqtt]\nreceive_maximum = 5\n").expect("write");
    let out = check_config(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What vmqtt logs once every shard applied a SIGHUP reload.
const RELOADED: &str = "SIGHUP: reloaded, every shard applied it";

/// A reload is reported only once every shard applied it: right after the
/// line, a new connection homed on each shard is granted the new
/// `max_packet_size`, with no retry (five reloads in a row, so a report
/// that ran ahead of a shard would show). Then SIGINT stops the broker, every
/// shard acknowledging its stop.
#[tokio::test]
async fn sighup_reported_after_every_shard_applied_it() {
    let test = "sighup_reported_after_every_shard_applied_it";
    if skip_on_mosquitto(test, "vmqtt's reload") {
        return;
    }
    let mut b = Broker::start(test);
    let original = std::fs::read_to_string(b.config_path()).expect("read config");
    assert!(original.contains("[mqtt]\n"), "{original}");
    for (round, size) in [300u32, 400, 500, 600, 700].into_iter().enumerate() {
        let text = original.replace("[mqtt]\n", &format!("[mqtt]\nmax_packet_size = {size}\n"));
        std::fs::write(b.config_path(), text).expect("write config");
        b.signal(libc::SIGHUP);
        eventually("the reload reported", WAIT, || {
            let done = b.log().matches(RELOADED).count() > round;
            async move { done.then_some(()) }
        })
        .await;
        for shard in 0..SHARDS {
            let id = id_on_shard(&format!("{test}-{round}"), ShardId::new(shard as u16));
            let (c, ack) =
                Raw::connect_with(b.port(), connect_packet(ProtocolVersion::V5, &id)).await;
            assert_eq!(
                ack.properties.maximum_packet_size,
                Some(size),
                "round {round}: shard {shard} did not have the reloaded setting"
            );
            c.disconnect().await;
        }
    }
    b.signal(libc::SIGINT);
    let log = eventually(
        "every shard acknowledged the stop",
        Duration::from_secs(30),
        || {
            let log = b.log();
            async move {
                log.contains("stop acknowledged by every shard")
                    .then_some(log)
            }
        },
    )
    .await;
    assert_eq!(log.matches("shard stopped").count(), SHARDS, "{log}");
    assert!(!log.contains("did not acknowledge"), "{log}");
    b.stop_gracefully(Duration::from_secs(10));
}

/// SIGHUP re-reads the file: changed `[mqtt]` limits apply to new
/// connections; a connection keeps what its CONNACK granted; a setting that
/// needs a restart is logged as such.
#[tokio::test]
async fn sighup_reloads_mqtt_settings_live() {
    let test = "sighup_reloads_mqtt_settings_live";
    if skip_on_mosquitto(test, "vmqtt's reload") {
        return;
    }
    let b = Broker::start(test);
    let (old_id, new_id) = ids_on_different_shards(test);
    let mut old = Raw::v5(b.port(), &old_id).await;
    let text = std::fs::read_to_string(b.config_path()).expect("read config");
    let text = text.replace("[mqtt]\n", "[mqtt]\nmax_packet_size = 200\n");
    let text = format!("{text}\n[runtime]\nring_depth = 64\n");
    std::fs::write(b.config_path(), text).expect("write config");
    b.signal(libc::SIGHUP);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut c, ack) =
            Raw::connect_with(b.port(), connect_packet(ProtocolVersion::V5, &new_id)).await;
        if ack.properties.maximum_packet_size == Some(200) {
            // The new limit holds for the new connection...
            c.send(&Packet::Publish(publish(
                "ops/big",
                vec![0u8; 500],
                QoS::AtMostOnce,
                false,
            )))
            .await;
            let got = c.expect_closed(Duration::from_secs(5)).await;
            assert!(
                matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::PACKET_TOO_LARGE),
                "{got:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never took effect: {ack:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...while the old connection keeps the 1 MiB it was granted.
    old.publish_ok("ops/big", &"x".repeat(500), QoS::AtLeastOnce, false)
        .await;
    let log = b.log();
    assert!(
        log.contains("setting=\"runtime\"") && log.contains("after a restart"),
        "{log}"
    );
}
