//! A full disk (issue 13 item 5): while storage writes fail for lack of
//! space, what waits on the log waits (the PUBACK of a message for a
//! persistent session), and nothing else does: a clean session on the same
//! shard connects, subscribes and gets its own QoS 0 and QoS 1 messages.
//!
//! The data directory is a small tmpfs the test mounts (root only; without
//! the right to mount, the test says SKIP).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::raw::RecvError;
use crate::common::shard::{id_on_shard, ShardId};
use crate::common::*;

/// A tmpfs of `size` bytes at a fresh directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: u64) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("vmqtt-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIP [{name}]: cannot mount a tmpfs ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn a_full_disk_stalls_only_what_waits_on_the_log() {
    let test = "full_disk";
    if skip_on_mosquitto(test, "vmqtt's storage") {
        return;
    }
    let Some(fs) = Tmpfs::mount(test, 16 << 20) else {
        return;
    };
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            data_dir: Some(fs.path().join("data")),
            extra_toml: "[storage]\nwrite_buffer_size = 1048576\n".into(),
            ..BrokerConfig::default()
        },
    );
    let durable = id_on_shard("full-disk-durable", ShardId::new(0));
    let mut c = connect_packet(V5P, &durable);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    let (mut sub, _) = Raw::connect_ok(b.port(), c).await;
    sub.subscribe("fill/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    // Fill the disk with messages for the offline persistent session until
    // a PUBACK no longer comes.
    let mut publ = Raw::v5(b.port(), "full-disk-filler").await;
    let payload = vec![b'x'; 64 * 1024];
    let mut acked = 0;
    let mut stalled = false;
    for _ in 0..2_000 {
        let mut p = publish("fill/t", payload.clone(), QoS::AtLeastOnce, false);
        p.packet_id = Some(publ.next_packet_id());
        publ.send(&Packet::Publish(p)).await;
        match publ.recv(Duration::from_secs(3)).await {
            Ok(Packet::PubAck(_)) => acked += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(RecvError::Timeout) => {
                stalled = true;
                break;
            }
            Err(e) => panic!("publisher: {e:?}"),
        }
    }
    assert!(
        stalled,
        "the disk never filled ({acked} messages acknowledged)"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.log().contains("storage write failed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.log().contains("storage write failed"),
        "the broker reports the failing writes"
    );

    // A clean client on the same shard: none of its traffic needs the log.
    let clean = id_on_shard("full-disk-clean", ShardId::new(0));
    let mut c = Raw::v5(b.port(), &clean).await;
    c.subscribe("own/#", QoS::AtLeastOnce).await;
    c.send(&Packet::Publish(publish(
        "own/q0",
        "zero",
        QoS::AtMostOnce,
        false,
    )))
    .await;
    let p = c.recv_publish().await;
    assert_eq!(text(&p), "zero");
    let ack = c
        .publish(publish("own/q1", "one", QoS::AtLeastOnce, false))
        .await;
    assert!(
        matches!(&ack, Some(a) if a.reason == ReasonCode::SUCCESS),
        "{ack:?}"
    );
    let p = c.recv_publish_acked().await;
    assert_eq!(text(&p), "one");
    b.assert_alive();
}
