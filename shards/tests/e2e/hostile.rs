//! The hostile-input suite: no input a client can send takes the broker
//! down, and other clients are unaffected. Every test ends with
//! [`assert_still_serves`]: the process is alive and a fresh pair of clients
//! connects, subscribes, publishes and receives.
//!
//! - Decoder rules, one raw-socket case each (the rules `malformed.rs`
//!   already covers end to end are listed below, not repeated).
//! - Slowloris: CONNECTs dribbled one byte at a time, and a PUBLISH left
//!   half sent by a connected client.
//! - A connect flood (connect, CONNECT or garbage, close) beside a QoS 1
//!   stream that must lose nothing.
//! - Oversized packets, and a fixed header announcing 256 MB.
//! - Many clients that never read their socket.
//! - The configured limits (`max_connections`, `max_connect_rate`,
//!   `max_topic_length`, `max_topic_levels`, `max_subscriptions`,
//!   `[runtime] max_connections`) and their `vmqtt_limit_hits_total` series.
//!
//! Counts and durations are bounded (the whole file runs in seconds); the
//! deadlines are generous and only turn a hang into a failure. Nothing here
//! asserts latency.
//!
//! # Where each decoder rule is covered
//!
//! Every [`vmqtt::codec::DecodeError`] variant, with the test that sends it
//! over a socket (`m::` = `malformed.rs`, `h::` = this file):
//!
//! | rule | v5 answer | covered by |
//! |---|---|---|
//! | `PacketTooLarge` (v5 §3.1.2.11.4) | 0x95 | `h::oversized_packets_refused_without_allocating` |
//! | `ReservedPacketType` (§2.1.2) | 0x82 | `m::v5_malformed_packets_get_0x81` (type 0), `m::v311_malformed_packets_close_connection` (AUTH in 3.1.1) |
//! | `InvalidFixedHeaderFlags` [MQTT-2.1.3-1] | 0x81 | `m::` both tables (SUBSCRIBE, PUBREL, PINGREQ) |
//! | `VarIntTooLong` (§1.5.5) | 0x81 | `m::` both tables |
//! | `NonMinimalVarInt` [MQTT-1.5.5-1] | 0x81 | `h::decoder_rules_v5`, `h::decoder_rules_v311` |
//! | `Truncated` | 0x81 | `m::` both tables |
//! | `TrailingBytes` | 0x81 | `h::` all three tables |
//! | `InvalidUtf8` [MQTT-1.5.4-1] | 0x81 | `h::decoder_rules_v5`, `_v311` |
//! | `NulInString` [MQTT-1.5.4-2] | 0x81 | `h::` all three tables |
//! | `InvalidProtocolName` [MQTT-3.1.2-1] | CONNACK 0x84 | `m::bad_connect_closes_connection` (level 4), `h::decoder_rules_connect` (level 5) |
//! | `UnsupportedProtocolVersion` [MQTT-3.1.2-2] | CONNACK 0x84 / 3.x 0x01 | `m::bad_connect_closes_connection` (level 6), `h::decoder_rules_connect` (MQIsdp level 4) |
//! | `ConnectReservedFlag` [MQTT-3.1.2-3] | CONNACK 0x81 | `m::bad_connect_closes_connection` (loosely), `h::decoder_rules_connect` (exactly) |
//! | `InvalidQoS` [MQTT-3.3.1-4] | 0x81 | `m::` PUBLISH QoS 3, will QoS 3 (3.1.1); `h::` v5 will, subscription options |
//! | `WillFlagsWithoutWill` [MQTT-3.1.2-11/13] | CONNACK 0x81 | `h::decoder_rules_connect` |
//! | `PasswordWithoutUsername` [MQTT-3.1.2-22] | (3.1.1 only) | `h::decoder_rules_connect` |
//! | `ClientIdRejected` [MQTT-3.1.3-8] | 3.x CONNACK 0x02 | `h::decoder_rules_connect` |
//! | `DupWithQos0` [MQTT-3.3.1-2] | 0x81 | `h::decoder_rules_v5`, `_v311` |
//! | `ZeroPacketId` [MQTT-2.2.1-3] | 0x81 | `m::protocol_errors_after_connect` (PUBLISH); `h::` SUBSCRIBE, UNSUBSCRIBE, PUBREL |
//! | `InvalidTopicName` [MQTT-3.3.2-2] | 0x90 | `m::protocol_errors_after_connect` (loosely); `h::` exactly, empty 3.1.1 topic, will topic |
//! | `InvalidTopicFilter` [MQTT-4.7.1-1] | 0x81 | `m::protocol_errors_after_connect` (loosely); `h::` exactly, bad share name |
//! | `NoTopicFilters` [MQTT-3.8.3-3], [MQTT-3.10.3-2] | 0x82 | `h::decoder_rules_v5`, `_v311` |
//! | `NoReasonCodes` [MQTT-3.9.3-1] | 0x81 | `h::decoder_rules_v5`, `_v311` |
//! | `SubscriptionOptionsReserved` [MQTT-3.8.3-5] | 0x81 | `h::decoder_rules_v5`, `_v311` |
//! | `InvalidRetainHandling` (§3.8.3.1) | 0x82 | `h::decoder_rules_v5` |
//! | `NoLocalOnSharedSubscription` [MQTT-3.8.3-4] | 0x82 | `h::decoder_rules_v5` |
//! | `UnknownProperty` (§2.2.2.2) | 0x81 | `h::decoder_rules_v5` |
//! | `PropertyNotAllowed` (§2.2.2.2) | 0x81 | `h::decoder_rules_v5`, `_connect` |
//! | `DuplicateProperty` | 0x82 | `h::decoder_rules_v5`, `_connect` |
//! | `InvalidPropertyValue` | 0x82 | `h::decoder_rules_v5`, `_connect` |
//! | `TopicAliasZero` [MQTT-3.3.2-8] | 0x94 | `h::decoder_rules_v5` |
//! | `EmptyTopicWithoutAlias` (§3.3.2.1) | 0x82 | `h::decoder_rules_v5` |
//! | `AuthDataWithoutMethod` (§3.1.2.11.10) | 0x82 | `h::decoder_rules_v5` (AUTH), `_connect` |
//! | `InvalidReasonCode` (§2.4) | 0x81 | `h::decoder_rules_v5` (PUBACK, PUBREL), `_v311` (SUBACK) |
//! | `InvalidConnAck` [MQTT-3.2.2-1] | 0x81 | `h::decoder_rules_v5`, `_v311` |

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::http::{free_port, scrape, series_sum};
use crate::common::raw::filter;
use crate::common::raw::RecvError;
use crate::common::wire::{cat, connect_frame, frame, props, s, Rng};
use crate::common::*;

// ------------------------------------------------------------------ helpers

/// Distinct ids for every still-serves check of the process.
static SERVES: AtomicUsize = AtomicUsize::new(0);

/// The broker process is alive, and a fresh subscriber (v5) and publisher
/// (3.1.1) on different shards connect, subscribe, publish at QoS 1 and
/// receive; both then disconnect (freeing their places in any limit).
pub async fn assert_still_serves(b: &mut Broker, test: &str) {
    b.assert_alive();
    let n = SERVES.fetch_add(1, Ordering::Relaxed);
    let (pub_id, sub_id) = ids_on_different_shards(&format!("{test}-serves{n}"));
    let topic = format!("sv/{n}");
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publ = Raw::v311(b.port(), &pub_id).await;
    publ.publish_ok(&topic, "still serving", QoS::AtLeastOnce, false)
        .await;
    let p = sub.recv_publish_acked().await;
    assert_eq!(
        text(&p),
        "still serving",
        "[{test}] still-serves round trip"
    );
    publ.disconnect().await;
    sub.disconnect().await;
    b.assert_alive();
}

/// A packet encoded for `version`.
fn encode(p: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.encode(version, &mut buf).expect("encode a test packet");
    buf.to_vec()
}

/// A CONNECT for `id` with keep alive `keep_alive` seconds.
fn connect_with_keepalive(version: ProtocolVersion, id: &str, keep_alive: u16) -> Connect {
    let mut c = connect_packet(version, id);
    c.keep_alive = keep_alive;
    c
}

/// A steady QoS 1 stream of sequence numbers from `publ` to `sub` (already
/// subscribed to its topic), one every `pace`, while a test misbehaves on
/// other connections.
struct Qos1Stream {
    stop: Arc<AtomicBool>,
    publisher: tokio::task::JoinHandle<u32>,
    subscriber: tokio::task::JoinHandle<Vec<u32>>,
}

impl Qos1Stream {
    fn start(mut publ: Raw, mut sub: Raw, topic: &str, pace: Duration) -> Qos1Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let topic = topic.to_owned();
        let publisher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    publ.publish_ok(&topic, &sent.to_string(), QoS::AtLeastOnce, false)
                        .await;
                    sent += 1;
                    tokio::time::sleep(pace).await;
                }
                publ.publish_ok(&topic, "end", QoS::AtLeastOnce, false)
                    .await;
                sent
            })
        };
        let subscriber = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let p = sub.recv_publish_acked().await;
                if text(&p) == "end" {
                    return got;
                }
                got.push(text(&p).parse::<u32>().expect("a sequence number"));
            }
        });
        Qos1Stream {
            stop,
            publisher,
            subscriber,
        }
    }

    /// Stops the stream: how many were sent, and the numbers received.
    async fn finish(self) -> (u32, Vec<u32>) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.publisher.await.expect("publisher");
        let got = self.subscriber.await.expect("subscriber");
        (sent, got)
    }
}

// ------------------------------------------------------------ decoder rules

/// What the broker must answer to a malformed packet.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// (v5, after CONNECT) DISCONNECT with this reason code, then the close.
    Disconnect(u8),
    /// (a CONNECT) a v5 CONNACK with this reason code, then the close.
    ConnAck5(u8),
    /// (a CONNECT) a 3.x CONNACK with this return code, then the close.
    ConnAck3(u8),
    /// The connection closed with nothing sent.
    Closed,
}

/// Sends `bytes` on `c` and checks the broker answers as `expect` says.
async fn expect_answer(c: &mut Raw, what: &str, bytes: &[u8], expect: Expect) {
    // The broker may close as soon as it has read the first bad byte.
    let _ = c.try_send_raw(bytes).await;
    match expect {
        Expect::Disconnect(rc) => {
            let got = c.expect_disconnect(WAIT).await;
            assert_eq!(
                got,
                Some(ReasonCode(rc)),
                "[{what}] DISCONNECT reason, then the close"
            );
        }
        Expect::Closed => {
            let got = c.read_bytes_until_closed(WAIT).await;
            assert!(
                got.is_empty(),
                "[{what}] closed with nothing sent, got {got:02x?}"
            );
        }
        Expect::ConnAck5(rc) => {
            let got = c.read_bytes_until_closed(WAIT).await;
            let mut buf = BytesMut::from(&got[..]);
            match vmqtt::codec::decode(&mut buf, V5P, u32::MAX) {
                Ok(Some(Packet::ConnAck(ack))) => {
                    assert_eq!(ack.reason, ReasonCode(rc), "[{what}] v5 CONNACK: {ack:?}");
                    assert!(!ack.session_present, "[{what}] {ack:?}");
                }
                other => {
                    panic!("[{what}] expected a v5 CONNACK {rc:#04x}, got {other:?} ({got:02x?})")
                }
            }
            assert!(
                buf.is_empty(),
                "[{what}] only a CONNACK before the close: {got:02x?}"
            );
        }
        Expect::ConnAck3(code) => {
            let got = c.read_bytes_until_closed(WAIT).await;
            assert_eq!(
                got,
                vec![0x20, 0x02, 0x00, code],
                "[{what}] 3.x CONNACK return code {code:#04x}, then the close"
            );
        }
    }
}

/// QoS 0 PUBLISH to "a" (v5) with the property block `p`.
fn publish5_props(p: &[u8]) -> Vec<u8> {
    frame(0x30, &cat(&[&s(b"a"), &props(p), b"x"]))
}

/// v5 SUBSCRIBE (packet id 1, no properties) of one filter with `options`.
fn subscribe5(filter: &[u8], options: u8) -> Vec<u8> {
    frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &s(filter), &[options]]))
}

/// 3.1.1 SUBSCRIBE (packet id 1) of one filter with `options`.
fn subscribe311(filter: &[u8], options: u8) -> Vec<u8> {
    frame(0x82, &cat(&[&[0x00, 0x01], &s(filter), &[options]]))
}

/// Decoder rules broken by a connected v5 client, and the DISCONNECT reason
/// each must get (`DecodeError::reason_code`).
fn cases_v5() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::Disconnect as D;
    vec![
        (
            "[MQTT-1.5.5-1] remaining length not minimally encoded",
            vec![0xc0, 0x80, 0x00],
            D(0x81),
        ),
        (
            "[MQTT-1.5.5-1] property length not minimally encoded",
            frame(0x30, &cat(&[&s(b"a"), &[0x80, 0x00], b"x"])),
            D(0x81),
        ),
        (
            "[§3.12] PINGREQ with a trailing byte",
            vec![0xc0, 0x01, 0x00],
            D(0x81),
        ),
        (
            "[MQTT-1.5.4-1] topic not well-formed UTF-8 (0xff)",
            frame(0x30, &cat(&[&s(&[0xff]), &[0x00]])),
            D(0x81),
        ),
        (
            "[MQTT-1.5.4-1] topic with an encoded surrogate U+D800",
            frame(0x30, &cat(&[&s(&[0xed, 0xa0, 0x80]), &[0x00]])),
            D(0x81),
        ),
        (
            "[MQTT-1.5.4-2] topic containing U+0000",
            frame(0x30, &cat(&[&s(b"a\0"), &[0x00]])),
            D(0x81),
        ),
        (
            "[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH",
            frame(0x38, &cat(&[&s(b"a"), &[0x00]])),
            D(0x81),
        ),
        (
            "[MQTT-2.2.1-3] SUBSCRIBE with packet id 0",
            frame(0x82, &cat(&[&[0x00, 0x00, 0x00], &s(b"a"), &[0x00]])),
            D(0x81),
        ),
        (
            "[MQTT-2.2.1-3] UNSUBSCRIBE with packet id 0",
            frame(0xa2, &cat(&[&[0x00, 0x00, 0x00], &s(b"a")])),
            D(0x81),
        ),
        (
            "[MQTT-2.2.1-3] PUBREL with packet id 0",
            vec![0x62, 0x02, 0x00, 0x00],
            D(0x81),
        ),
        (
            "[MQTT-3.3.2-2] PUBLISH topic with a wildcard (a/#)",
            frame(0x30, &cat(&[&s(b"a/#"), &[0x00]])),
            D(0x90),
        ),
        (
            "[MQTT-4.7.1-1] SUBSCRIBE filter with a misplaced # (a/b#)",
            subscribe5(b"a/b#", 0x00),
            D(0x81),
        ),
        (
            "[§4.8.2] shared subscription with an empty share name ($share//t)",
            subscribe5(b"$share//t", 0x00),
            D(0x81),
        ),
        (
            "[MQTT-3.8.3-3] SUBSCRIBE with no topic filter",
            frame(0x82, &[0x00, 0x01, 0x00]),
            D(0x82),
        ),
        (
            "[MQTT-3.10.3-2] UNSUBSCRIBE with no topic filter",
            frame(0xa2, &[0x00, 0x01, 0x00]),
            D(0x82),
        ),
        (
            "[MQTT-3.9.3-1] SUBACK (from a client) with no reason code",
            frame(0x90, &[0x00, 0x01, 0x00]),
            D(0x81),
        ),
        (
            "[MQTT-3.8.3-5] subscription options with reserved bits 6-7 set",
            subscribe5(b"a", 0xc1),
            D(0x81),
        ),
        (
            "[§3.8.3.1] subscription options with maximum QoS 3",
            subscribe5(b"a", 0x03),
            D(0x81),
        ),
        (
            "[§3.8.3.1] subscription options with retain handling 3",
            subscribe5(b"a", 0x30),
            D(0x82),
        ),
        (
            "[MQTT-3.8.3-4] no local on a shared subscription",
            subscribe5(b"$share/g/t", 0x04),
            D(0x82),
        ),
        (
            "[§2.2.2.2] unknown property 0x7f in PUBLISH",
            publish5_props(&[0x7f]),
            D(0x81),
        ),
        (
            "[§2.2.2.2] Session Expiry Interval (0x11) in PUBLISH",
            publish5_props(&[0x11, 0x00, 0x00, 0x00, 0x01]),
            D(0x81),
        ),
        (
            "[§3.3.2.3.2] Payload Format Indicator twice",
            publish5_props(&[0x01, 0x00, 0x01, 0x00]),
            D(0x82),
        ),
        (
            "[§3.3.2.3.2] Payload Format Indicator 2",
            publish5_props(&[0x01, 0x02]),
            D(0x82),
        ),
        (
            "[MQTT-3.3.2-8] Topic Alias 0",
            publish5_props(&[0x23, 0x00, 0x00]),
            D(0x94),
        ),
        (
            "[§3.3.2.1] empty topic without a topic alias",
            frame(0x30, &cat(&[&s(b""), &[0x00], b"x"])),
            D(0x82),
        ),
        (
            "[§3.15.2.2] AUTH with authentication data and no method",
            frame(0xf0, &cat(&[&[0x18], &props(&cat(&[&[0x16], &s(b"x")]))])),
            D(0x82),
        ),
        (
            "[§2.4] PUBACK with reason code 0x05",
            vec![0x40, 0x03, 0x00, 0x01, 0x05],
            D(0x81),
        ),
        (
            "[§2.4] PUBREL with reason code 0x10",
            vec![0x62, 0x03, 0x00, 0x01, 0x10],
            D(0x81),
        ),
        (
            "[MQTT-3.2.2-1] CONNACK (from a client) with reserved flags",
            vec![0x20, 0x03, 0x02, 0x00, 0x00],
            D(0x81),
        ),
    ]
}

/// The same rules broken by a connected 3.1.1 client: the connection is
/// closed with nothing sent.
fn cases_v311() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "[MQTT-1.5.5-1] remaining length not minimally encoded",
            vec![0xc0, 0x80, 0x00],
        ),
        (
            "[§3.14] DISCONNECT with a trailing byte",
            vec![0xe0, 0x01, 0x00],
        ),
        (
            "[§3.12] PINGREQ with a trailing byte",
            vec![0xc0, 0x01, 0x00],
        ),
        (
            "[MQTT-1.5.3-1] topic not well-formed UTF-8 (0xff)",
            frame(0x30, &cat(&[&s(&[0xff]), b"x"])),
        ),
        (
            "[MQTT-1.5.3-2] topic containing U+0000",
            frame(0x30, &cat(&[&s(b"a\0"), b"x"])),
        ),
        (
            "[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH",
            frame(0x38, &cat(&[&s(b"a"), b"x"])),
        ),
        (
            "[MQTT-4.7.3-1] PUBLISH with an empty topic",
            frame(0x30, &cat(&[&s(b""), b"x"])),
        ),
        (
            "[MQTT-2.3.1-1] SUBSCRIBE with packet id 0",
            frame(0x82, &cat(&[&[0x00, 0x00], &s(b"a"), &[0x00]])),
        ),
        (
            "[MQTT-4.7.1-2] SUBSCRIBE filter with a misplaced # (a/b#)",
            subscribe311(b"a/b#", 0x00),
        ),
        (
            "[MQTT-3.8.3-3] SUBSCRIBE with no topic filter",
            frame(0x82, &[0x00, 0x01]),
        ),
        (
            "[MQTT-3.10.3-2] UNSUBSCRIBE with no topic filter",
            frame(0xa2, &[0x00, 0x01]),
        ),
        (
            "[MQTT-3-8.3-4] subscription options with reserved bit 2 set",
            subscribe311(b"a", 0x04),
        ),
        (
            "[MQTT-3-8.3-4] subscription options with QoS 3",
            subscribe311(b"a", 0x03),
        ),
        (
            "[MQTT-3.9.3-1] SUBACK (from a client) with no return code",
            frame(0x90, &[0x00, 0x01]),
        ),
        (
            "[MQTT-3.9.3-2] SUBACK (from a client) with return code 0x05",
            frame(0x90, &[0x00, 0x01, 0x05]),
        ),
        (
            "[MQTT-3.2.2-1] CONNACK (from a client) with return code 6",
            vec![0x20, 0x02, 0x00, 0x06],
        ),
    ]
}

/// Malformed CONNECTs (the first packet of a connection) and the answer
/// each must get.
fn cases_connect() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::{Closed, ConnAck3, ConnAck5};
    let id = s(b"c");
    vec![
        (
            "[MQTT-3.1.2-3] v5 CONNECT with the reserved flag set",
            connect_frame(b"MQTT", 5, 0x03, Some(&[]), &id),
            ConnAck5(0x81),
        ),
        (
            "[MQTT-3.1.2-3] 3.1.1 CONNECT with the reserved flag set",
            connect_frame(b"MQTT", 4, 0x03, None, &id),
            Closed,
        ),
        (
            "[MQTT-3.1.2-11] v5 will QoS 1 without the will flag",
            connect_frame(b"MQTT", 5, 0x02 | 0x08, Some(&[]), &id),
            ConnAck5(0x81),
        ),
        (
            "[MQTT-3.1.2-15] 3.1.1 will retain without the will flag",
            connect_frame(b"MQTT", 4, 0x02 | 0x20, None, &id),
            Closed,
        ),
        (
            "[MQTT-3.1.2-12] v5 will QoS 3",
            connect_frame(
                b"MQTT",
                5,
                0x02 | 0x04 | 0x18,
                Some(&[]),
                &cat(&[&id, &[0x00], &s(b"w"), &s(b"x")]),
            ),
            ConnAck5(0x81),
        ),
        (
            "[MQTT-3.1.2-22] 3.1.1 password without a user name",
            connect_frame(b"MQTT", 4, 0x02 | 0x40, None, &cat(&[&id, &s(b"pw")])),
            Closed,
        ),
        (
            "[MQTT-3.1.3-8] 3.1.1 empty client id with clean session 0",
            connect_frame(b"MQTT", 4, 0x00, None, &s(b"")),
            ConnAck3(0x02),
        ),
        (
            "[MQTT-3.1.3-9] 3.1 (MQIsdp) empty client id",
            connect_frame(b"MQIsdp", 3, 0x02, None, &s(b"")),
            ConnAck3(0x02),
        ),
        (
            "[MQTT-3.1.2-1] protocol name MQTX at level 5",
            connect_frame(b"MQTX", 5, 0x02, Some(&[]), &id),
            ConnAck5(0x84),
        ),
        (
            "[MQTT-3.1.2-2] protocol name MQIsdp at level 4",
            connect_frame(b"MQIsdp", 4, 0x02, None, &id),
            ConnAck3(0x01),
        ),
        (
            "[§3.1.2.11.3] v5 Receive Maximum 0",
            connect_frame(b"MQTT", 5, 0x02, Some(&[0x21, 0x00, 0x00]), &id),
            ConnAck5(0x82),
        ),
        (
            "[§3.1.2.11.10] v5 authentication data without a method",
            connect_frame(b"MQTT", 5, 0x02, Some(&cat(&[&[0x16], &s(b"x")])), &id),
            ConnAck5(0x82),
        ),
        (
            "[§2.2.2.2] v5 Topic Alias (0x23) in CONNECT",
            connect_frame(b"MQTT", 5, 0x02, Some(&[0x23, 0x00, 0x01]), &id),
            ConnAck5(0x81),
        ),
        (
            "[§3.1.2.11.2] v5 Session Expiry Interval twice",
            connect_frame(
                b"MQTT",
                5,
                0x02,
                Some(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1]),
                &id,
            ),
            ConnAck5(0x82),
        ),
        (
            "[MQTT-1.5.4-2] v5 client id containing U+0000",
            connect_frame(b"MQTT", 5, 0x02, Some(&[]), &s(b"c\0")),
            ConnAck5(0x81),
        ),
        (
            "[MQTT-3.3.2-2] v5 will topic with a wildcard",
            connect_frame(
                b"MQTT",
                5,
                0x02 | 0x04,
                Some(&[]),
                &cat(&[&id, &[0x00], &s(b"a/#"), &s(b"x")]),
            ),
            ConnAck5(0x90),
        ),
        (
            "[§3.1] v5 CONNECT with a byte after the last field",
            connect_frame(b"MQTT", 5, 0x02, Some(&[]), &cat(&[&id, &[0x00]])),
            ConnAck5(0x81),
        ),
    ]
}

/// v5: every decoder rule `malformed.rs` does not cover gets a DISCONNECT
/// with the reason `DecodeError::reason_code` gives it, and the close.
#[tokio::test]
async fn decoder_rules_v5() {
    let test = "decoder_rules_v5";
    if skip_on_mosquitto(test, "asserts vmqtt's reason code for each decoder rule") {
        return;
    }
    let mut b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    for (i, (what, bytes, expect)) in cases_v5().into_iter().enumerate() {
        let mut c = Raw::v5(b.port(), &format!("rule5-{i}")).await;
        c.name = format!("v5 {what}");
        expect_answer(&mut c, what, &bytes, expect).await;
        by.check().await;
    }
    assert_still_serves(&mut b, test).await;
}

/// 3.1.1: the same rules close the connection, with nothing sent.
#[tokio::test]
async fn decoder_rules_v311() {
    let test = "decoder_rules_v311";
    if skip_on_mosquitto(test, "asserts vmqtt's answer for each decoder rule") {
        return;
    }
    let mut b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    for (i, (what, bytes)) in cases_v311().into_iter().enumerate() {
        let mut c = Raw::v311(b.port(), &format!("rule311-{i}")).await;
        c.name = format!("3.1.1 {what}");
        expect_answer(&mut c, what, &bytes, Expect::Closed).await;
        by.check().await;
    }
    assert_still_serves(&mut b, test).await;
}

/// Malformed CONNECTs: a v5 one gets a CONNACK with the rule's reason code,
/// a 3.x one the return code the spec asks for (0x01, 0x02) or nothing; the
/// connection is closed.
#[tokio::test]
async fn decoder_rules_connect() {
    let test = "decoder_rules_connect";
    if skip_on_mosquitto(test, "asserts vmqtt's CONNACK for each decoder rule") {
        return;
    }
    let mut b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    for (what, bytes, expect) in cases_connect() {
        let mut c = Raw::tcp(b.port(), what).await;
        expect_answer(&mut c, what, &bytes, expect).await;
        by.check().await;
    }
    // The rule is 3.1.1's: a v5 client may send a password alone.
    let mut c = Raw::tcp(b.port(), "v5 password without user name").await;
    c.version = V5P;
    c.send_raw(&connect_frame(
        b"MQTT",
        5,
        0x02 | 0x40,
        Some(&[]),
        &cat(&[&s(b"v5-pw-only"), &s(b"pw")]),
    ))
    .await;
    match c.recv(WAIT).await {
        Ok(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}"),
        other => panic!("v5 CONNECT with a password alone: {other:?}"),
    }
    c.ping().await;
    assert_still_serves(&mut b, test).await;
}

// ---------------------------------------------------------------- slowloris

/// How many connections dribble a CONNECT.
const SLOWLORIS: usize = 200;
/// The connect timeout of the slowloris test.
const SLOW_CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// One connection that writes `bytes` one byte every 300 ms and watches for
/// the broker's close; returns when it saw the close, after how long.
async fn dribble(port: u16, bytes: Vec<u8>) -> Result<Duration, String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let start = Instant::now();
    let deadline = start + SLOW_CONNECT_TIMEOUT + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    for &byte in &bytes {
        if tcp.write_all(&[byte]).await.is_err() {
            // Reset by the broker: closed.
            return Ok(start.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(n)) => return Err(format!("the broker sent {:02x?}", &buf[..n])),
        }
        if Instant::now() > deadline {
            return Err(format!("still open after {:?}", start.elapsed()));
        }
    }
    Err("the whole CONNECT went through before the broker closed".to_owned())
}

/// 200 connections dribble a CONNECT one byte every 300 ms (it would take
/// them 30 s to finish) with `connect_timeout_ms = 1500`: meanwhile a
/// publisher and a subscriber exchange QoS 1 messages without loss, and the
/// broker closes every slow connection after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connects_closed_after_connect_timeout() {
    let test = "slowloris_connects_closed_after_connect_timeout";
    if skip_on_mosquitto(test, "Mosquitto has no connect timeout setting") {
        return;
    }
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            connect_timeout_ms: Some(SLOW_CONNECT_TIMEOUT.as_millis() as u64),
            ..Default::default()
        },
    );
    let port = b.port();
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(port, &sub_id).await;
    sub.subscribe("slow/t", QoS::AtLeastOnce).await;
    let publ = Raw::v5(port, &pub_id).await;

    // A CONNECT of 100 bytes: at one byte per 300 ms, never done in time.
    let long_id = "s".repeat(86);
    let connect = encode(
        &Packet::Connect(Box::new(connect_packet(V5P, &long_id))),
        V5P,
    );
    assert!(connect.len() >= 100, "{}", connect.len());
    let slow: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(dribble(port, connect.clone())))
        .collect();

    let stream = Qos1Stream::start(publ, sub, "slow/t", Duration::from_millis(20));

    let mut closed_after = Vec::with_capacity(SLOWLORIS);
    for (i, t) in slow.into_iter().enumerate() {
        match t.await.expect("dribbling task") {
            Ok(d) => closed_after.push(d),
            Err(e) => panic!("slow connection {i}: {e}"),
        }
    }
    let (sent, got) = stream.finish().await;
    closed_after.sort();
    eprintln!(
        "[{test}] {SLOWLORIS} slow connections closed after {:?}..{:?}; {sent} QoS 1 messages meanwhile",
        closed_after[0],
        closed_after[SLOWLORIS - 1]
    );
    // Closed for the timeout, not for dribbling: not before it (with 0.5 s
    // of slack for when the broker's clock started).
    assert!(
        closed_after[0] >= SLOW_CONNECT_TIMEOUT - Duration::from_millis(500),
        "a slow connection was closed after {:?}, before the connect timeout {SLOW_CONNECT_TIMEOUT:?}",
        closed_after[0]
    );
    assert!(sent > 0, "the publisher sent nothing");
    assert_eq!(
        got,
        (0..sent).collect::<Vec<_>>(),
        "QoS 1 messages lost or reordered"
    );
    assert_still_serves(&mut b, test).await;
}

/// A connected client (keep alive 2 s) sends the first 10 bytes of a
/// 102-byte PUBLISH and stalls: it is closed after 1.5x its keep alive (v5:
/// DISCONNECT 0x8D, if anything), while others keep being served.
#[tokio::test]
async fn half_publish_then_stall_closed_after_keepalive() {
    let test = "half_publish_then_stall_closed_after_keepalive";
    let mut b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    let mut stalled = Vec::new();
    for version in [V5P, V311] {
        let id = format!("half-{version:?}");
        let (mut c, _) = Raw::connect_ok(b.port(), connect_with_keepalive(version, &id, 2)).await;
        let mut body = s(b"half/t");
        if version.is_v5() {
            body.push(0x00);
        }
        body.resize(100, b'p');
        c.send_raw(&frame(0x30, &body)[..10]).await;
        stalled.push((c, Instant::now()));
    }
    by.check().await;
    for (c, since) in &mut stalled {
        let got = c.expect_closed(Duration::from_secs(10)).await;
        let after = since.elapsed();
        assert!(
            after >= Duration::from_millis(2500),
            "[{}] closed after {after:?}: before 1.5x keep alive (3 s)",
            c.name
        );
        for p in &got {
            match p {
                Packet::Disconnect(d) if c.version.is_v5() => assert_eq!(
                    d.reason,
                    ReasonCode::KEEP_ALIVE_TIMEOUT,
                    "[{}] DISCONNECT on keep alive timeout",
                    c.name
                ),
                other => panic!("[{}] unexpected {other:?} before the close", c.name),
            }
        }
    }
    by.check().await;
    assert_still_serves(&mut b, test).await;
}

/// A connected client (keep alive 2 s) dribbles a PUBLISH one byte every
/// 500 ms: bytes arrive, but no control packet does, so it is closed 1.5x
/// the keep alive after its CONNECT ([MQTT-3.1.2-24]), not after the 100 s
/// the whole packet would take (which would let one client hold a
/// connection, and a buffer of up to `max_packet_size`, for as long as it
/// likes). Mosquitto 2.0 closes it (after about 5 s, its keep alive check
/// being coarse).
#[tokio::test]
async fn dribbled_publish_closed_after_keepalive() {
    let test = "dribbled_publish_closed_after_keepalive";
    let mut b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    let (mut c, _) =
        Raw::connect_ok(b.port(), connect_with_keepalive(V5P, "dribble-publish", 2)).await;
    let since = Instant::now();
    let mut body = cat(&[&s(b"dribble/t"), &[0x00]]);
    body.resize(200, b'p');
    let bytes = frame(0x30, &body);
    let mut closed = false;
    for &byte in &bytes[..20] {
        if c.try_send_raw(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        match c.recv(Duration::from_millis(500)).await {
            Err(RecvError::Timeout) => {}
            Err(RecvError::Closed) => {
                closed = true;
                break;
            }
            Ok(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::KEEP_ALIVE_TIMEOUT, "{d:?}");
                c.expect_closed(WAIT).await;
                closed = true;
                break;
            }
            other => panic!("dribbling a PUBLISH: {other:?}"),
        }
    }
    assert!(
        closed,
        "a client dribbling a PUBLISH with keep alive 2 s was still connected {:?} after its CONNECT",
        since.elapsed()
    );
    by.check().await;
    assert_still_serves(&mut b, test).await;
}

// ------------------------------------------------------------ connect flood

/// Connections of the flood, and the threads that open them.
const FLOOD: usize = 2000;
const FLOOD_THREADS: usize = 4;

/// What one flood thread saw: connections opened, connect errors, CONNACKs
/// received (of the connections that waited for one).
#[derive(Debug, Default)]
struct FloodTally {
    opened: usize,
    connect_errors: Vec<String>,
    connacks: usize,
    connack_waits: usize,
}

/// One flood thread: `n` connections, as fast as possible, each closed at
/// once (after a CONNECT, a CONNECT and its CONNACK, garbage, or nothing).
fn flood_thread(port: u16, thread: usize, n: usize) -> FloodTally {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let v311 = encode(&Packet::Connect(Box::new(connect_packet(V311, "f"))), V311);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ thread as u64);
    let mut tally = FloodTally::default();
    for i in 0..n {
        let mut tcp = match StdTcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(t) => t,
            Err(e) => {
                tally.connect_errors.push(e.to_string());
                continue;
            }
        };
        tally.opened += 1;
        let _ = tcp.set_nodelay(true);
        match i % 4 {
            0 => {
                let _ = tcp.write_all(&v311);
            }
            1 => {
                let id = format!("flood-{thread}-{i}");
                let c = encode(&Packet::Connect(Box::new(connect_packet(V5P, &id))), V5P);
                tally.connack_waits += 1;
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = [0u8; 4];
                if tcp.write_all(&c).is_ok()
                    && tcp.read_exact(&mut head).is_ok()
                    && head[0] == 0x20
                    && head[3] == 0x00
                {
                    tally.connacks += 1;
                }
            }
            2 => {}
            _ => {
                let len = 1 + (rng.next() % 64) as usize;
                let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                junk[0] = [0x10, 0x30, 0x82, 0xff][i / 4 % 4];
                let _ = tcp.write_all(&junk);
            }
        }
        drop(tcp);
    }
    tally
}

/// 2000 connections opened and closed as fast as four threads can (a
/// CONNECT, a CONNECT and its CONNACK, garbage, or nothing) while a
/// subscriber receives a steady QoS 1 stream: no message is lost, every
/// connection was accepted, every CONNECT waited for was answered, and new
/// clients connect afterwards. (`load.rs` holds 2000 connections open at
/// once; this one churns them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_flood_loses_no_message() {
    let test = "connect_flood_loses_no_message";
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            connect_timeout_ms: Some(2000),
            ..Default::default()
        },
    );
    let port = b.port();
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(port, &sub_id).await;
    sub.subscribe("flood/stream", QoS::AtLeastOnce).await;
    let publ = Raw::v311(port, &pub_id).await;

    let stream = Qos1Stream::start(publ, sub, "flood/stream", Duration::from_millis(5));

    let start = Instant::now();
    let threads: Vec<_> = (0..FLOOD_THREADS)
        .map(|t| std::thread::spawn(move || flood_thread(port, t, FLOOD / FLOOD_THREADS)))
        .collect();
    let tallies: Vec<FloodTally> = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().expect("flood thread"))
            .collect()
    })
    .await
    .expect("join the flood threads");
    let flood_time = start.elapsed();
    let (sent, got) = stream.finish().await;

    let opened: usize = tallies.iter().map(|t| t.opened).sum();
    let connacks: usize = tallies.iter().map(|t| t.connacks).sum();
    let waits: usize = tallies.iter().map(|t| t.connack_waits).sum();
    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.connect_errors).collect();
    eprintln!(
        "[{test}] {opened} connections in {flood_time:?}, {connacks}/{waits} CONNACKs; {sent} QoS 1 messages meanwhile"
    );
    assert!(
        errors.is_empty(),
        "{} connects failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(opened, FLOOD);
    assert_eq!(connacks, waits, "every CONNECT waited for got CONNACK 0");
    assert!(sent > 0, "the publisher sent nothing");
    assert_eq!(
        got,
        (0..sent).collect::<Vec<_>>(),
        "QoS 1 messages lost or reordered"
    );
    assert_still_serves(&mut b, test).await;
}

// ---------------------------------------------------------------- oversized

/// `max_packet_size = 1024`: a v5 PUBLISH of 2 KiB gets DISCONNECT 0x95, a
/// 3.1.1 one a closed connection; a CONNECT over the limit gets CONNACK 0x95
/// (v5) or a close (3.1.1); fixed headers announcing 256 MB (PUBLISH after
/// CONNECT, CONNECT as the first packet), followed by silence, are refused at
/// once from the header — well before the keep alive or connect timeout —
/// and the broker allocates none of it.
#[tokio::test]
async fn oversized_packets_refused_without_allocating() {
    let test = "oversized_packets_refused_without_allocating";
    if skip_on_mosquitto(test, "asserts vmqtt's answers to oversized packets") {
        return;
    }
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            max_packet_size: Some(1024),
            // Far beyond `WAIT`: a close within it is the size check's.
            connect_timeout_ms: Some(60_000),
            ..Default::default()
        },
    );
    let mut by = Bystanders::new(&b, test).await;

    // A 2 KiB PUBLISH.
    for version in [V5P, V311] {
        let (mut c, ack) = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("big-{version:?}")),
        )
        .await;
        if version.is_v5() {
            assert_eq!(ack.properties.maximum_packet_size, Some(1024), "{ack:?}");
        }
        let p = Packet::Publish(publish("big/t", vec![b'B'; 2048], QoS::AtMostOnce, false));
        let bytes = encode(&p, version);
        let expect = if version.is_v5() {
            Expect::Disconnect(0x95)
        } else {
            Expect::Closed
        };
        expect_answer(
            &mut c,
            &format!("{version:?} 2 KiB PUBLISH"),
            &bytes,
            expect,
        )
        .await;
        by.check().await;
    }

    // A CONNECT over the limit (a 1500-byte password).
    for version in [V5P, V311] {
        let mut conn = connect_packet(version, &format!("bigconnect-{version:?}"));
        conn.username = Some("u".into());
        conn.password = Some(vec![b'p'; 1500].into());
        let bytes = encode(&Packet::Connect(Box::new(conn)), version);
        let mut c = Raw::tcp(b.port(), &format!("{version:?} 1.5 KiB CONNECT")).await;
        let expect = if version.is_v5() {
            Expect::ConnAck5(0x95)
        } else {
            Expect::Closed
        };
        expect_answer(
            &mut c,
            &format!("{version:?} 1.5 KiB CONNECT"),
            &bytes,
            expect,
        )
        .await;
        by.check().await;
    }

    // 256 MB announced, then silence: 16 connections of each kind at once.
    let huge = [0xff, 0xff, 0xff, 0x7f];
    let rss = RssSampler::start(&b, Duration::from_millis(20));
    let baseline = b.rss_kib();
    let mut silent = Vec::new();
    for i in 0..16 {
        let (c, _) = Raw::connect_ok(b.port(), connect_packet(V5P, &format!("huge5-{i}"))).await;
        silent.push((c, cat(&[&[0x30], &huge]), Expect::Disconnect(0x95)));
        let (c, _) = Raw::connect_ok(b.port(), connect_packet(V311, &format!("huge3-{i}"))).await;
        silent.push((c, cat(&[&[0x30], &huge]), Expect::Closed));
        let c = Raw::tcp(b.port(), &format!("huge-connect-{i}")).await;
        silent.push((c, cat(&[&[0x10], &huge]), Expect::Closed));
    }
    for (c, bytes, _) in &mut silent {
        c.send_raw(bytes).await;
    }
    for (c, bytes, expect) in &mut silent {
        let what = format!("{}: {bytes:02x?} then silence", c.name);
        expect_answer(c, &what, &[], *expect).await;
    }
    let peak = rss.peak().await;
    eprintln!("[{test}] RSS {baseline} KiB -> peak {peak} KiB");
    assert!(
        peak.saturating_sub(baseline) < 64 * 1024,
        "broker RSS grew by {} MiB for 48 connections announcing 256 MB each",
        peak.saturating_sub(baseline) >> 10
    );
    by.check().await;
    assert_still_serves(&mut b, test).await;
}

// ------------------------------------------------------ never-reading clients

/// Clients that never read, the payload and count of the busy topic.
const NEVER_READERS: usize = 50;
const BUSY_PAYLOAD: usize = 16 * 1024;
const BUSY_COUNT: usize = 1000;
/// Queue bound configured for this test (messages per session).
const BUSY_MAX_QUEUED: u32 = 100;

/// `load.rs` (`slow_consumer_does_not_grow_broker_or_block_others`) covers
/// one QoS 0 subscriber that stops reading under a flood. Here: 50 clients
/// at once (3.1.1 and v5, QoS 0 and QoS 1 subscriptions) subscribe to a busy
/// topic and never read their socket again, one of them keeps sending
/// PINGREQ (so keep alive never rids the broker of it), while 1000 QoS 1
/// messages of 16 KiB (16 MiB; 800 MiB if copied for every never-reader)
/// are published over about 3 s. A reading subscriber gets every message in order, the
/// publisher is acknowledged throughout, others are served, and the broker's
/// RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_never_reading_clients_bounded() {
    let test = "many_never_reading_clients_bounded";
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            max_queued_messages: Some(BUSY_MAX_QUEUED),
            ..Default::default()
        },
    );
    let port = b.port();
    let mut by = Bystanders::new(&b, test).await;
    let (pub_id, fast_id) = ids_on_different_shards(test);

    let mut never = Vec::with_capacity(NEVER_READERS);
    for i in 0..NEVER_READERS {
        let id = format!("{test}-never{i}");
        let version = if i % 2 == 0 { V311 } else { V5P };
        let qos = if i % 4 < 2 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut c = Raw::tcp_small_rcvbuf(port, &id, 4096).await;
        // Keep alive 0: only the pinger below sends anything from now on.
        let ack = c
            .handshake(connect_with_keepalive(
                version,
                &id,
                if i == 0 { 2 } else { 0 },
            ))
            .await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "[{id}] {ack:?}");
        c.subscribe("busy/t", qos).await;
        never.push(c);
    }
    // The pinger: never reads, sends PINGREQ every 50 ms (keep alive 2 s).
    let pinger = never.remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let pinging = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = pinger;
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if c.try_send(&Packet::PingReq).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (c, sent)
        })
    };

    let mut fast = Raw::v5(port, &fast_id).await;
    fast.subscribe("busy/t", QoS::AtLeastOnce).await;
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        while n < BUSY_COUNT {
            let p = fast.recv_publish_within(Duration::from_secs(30)).await;
            assert_eq!(
                p.payload[..8],
                (n as u64).to_be_bytes(),
                "message {n} out of order"
            );
            fast.ack(&p).await;
            n += 1;
        }
        n
    });

    let rss = RssSampler::start(&b, Duration::from_millis(20));
    let baseline = b.rss_kib();
    let mut publ = Raw::v311(port, &pub_id).await;
    // Pipelined in windows of 50: send 50, wait for their PUBACKs, pause
    // 150 ms; 20 windows take over 3 s, more than 1.5x the pinger's keep
    // alive.
    const WINDOW: usize = 50;
    let published = tokio::time::timeout(Duration::from_secs(60), async {
        for w in 0..BUSY_COUNT / WINDOW {
            let mut ids = Vec::with_capacity(WINDOW);
            let mut batch = BytesMut::new();
            for k in 0..WINDOW {
                let n = (w * WINDOW + k) as u64;
                let mut payload = vec![b'b'; BUSY_PAYLOAD];
                payload[..8].copy_from_slice(&n.to_be_bytes());
                let mut p = publish("busy/t", payload, QoS::AtLeastOnce, false);
                let id = publ.next_packet_id();
                p.packet_id = Some(id);
                ids.push(id);
                Packet::Publish(p).encode(V311, &mut batch).unwrap();
            }
            publ.send_raw(&batch).await;
            for id in ids {
                publ.wait_for("PUBACK", WAIT, |pk| match pk {
                    Packet::PubAck(a) if a.packet_id == id => Some(()),
                    _ => None,
                })
                .await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
    .await;
    assert!(
        published.is_ok(),
        "the publisher was not acknowledged within 60 s"
    );
    let fast_got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reading subscriber did not get every message within 60 s")
        .expect("reader task");
    by.check().await;
    let peak = rss.peak().await;
    stop.store(true, Ordering::Relaxed);
    let (mut pinger, pings) = pinging.await.expect("pinger");
    // Whether the broker kept the pinger (it sends, so keep alive does not
    // end it) or closed it for never reading is its choice: not asserted.
    let pinger_open = pinger.try_send(&Packet::PingReq).await.is_ok();
    eprintln!(
        "[{test}] {BUSY_COUNT} x {} KiB to {NEVER_READERS} never-readers: RSS {baseline} KiB -> peak {peak} KiB; the pinger sent {pings} PINGREQs (open at the end: {pinger_open})",
        BUSY_PAYLOAD >> 10
    );
    assert_eq!(fast_got, BUSY_COUNT);
    // Each never-reader may pin its queue (100 messages, mostly shared with
    // the others) and an output buffer; 128 MiB is far below the 800 MiB of
    // copying the stream for each of them.
    assert!(
        peak.saturating_sub(baseline) < 128 * 1024,
        "broker RSS grew by {} MiB with {NEVER_READERS} never-reading subscribers",
        peak.saturating_sub(baseline) >> 10
    );
    assert_still_serves(&mut b, test).await;
    drop(never);
}

// ------------------------------------------------------------------- limits

/// Every limit's name in `vmqtt_limit_hits_total{limit="…"}`.
const LIMITS: [&str; 10] = [
    "connections",
    "connect_rate",
    "connect_timeout",
    "packet_size",
    "topic_length",
    "topic_levels",
    "subscriptions",
    "receive_maximum",
    "inflight",
    "queued",
];

/// `vmqtt_limit_hits_total{limit=…}` summed over the shards, and how many
/// shards reported it.
fn limit_hits(body: &str, limit: &str) -> (u64, usize) {
    let label = format!("limit=\"{limit}\"");
    series_sum(body, |s| {
        s.starts_with("vmqtt_limit_hits_total{") && s.contains(&label)
    })
}

/// Waits (shards report about once a second) until every `(limit, n)` of
/// `want` has counted at least `n` hits; checks each limit has one series per
/// shard. Returns the last scrape.
async fn expect_limit_hits(http: u16, want: &[(&str, u64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = tokio::task::spawn_blocking(move || scrape(http))
            .await
            .expect("scrape task");
        for limit in LIMITS {
            let (_, shards) = limit_hits(&body, limit);
            assert_eq!(
                shards, SHARDS,
                "one vmqtt_limit_hits_total{{limit=\"{limit}\"}} series per shard:\n{body}"
            );
        }
        let short: Vec<String> = want
            .iter()
            .filter_map(|&(limit, n)| {
                let (got, _) = limit_hits(&body, limit);
                (got < n).then(|| format!("{limit}: {got} < {n}"))
            })
            .collect();
        if short.is_empty() {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "vmqtt_limit_hits_total never reached {want:?} ({}):\n{}",
            short.join(", "),
            body.lines()
                .filter(|l| l.contains("limit_hits"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a connection attempt ended.
#[derive(Debug)]
enum Attempt {
    /// CONNACK 0: the connection is open.
    Accepted(Box<Raw>),
    /// Closed (EOF or reset) with nothing sent.
    Closed,
}

/// Opens a connection and sends a CONNECT; the broker either accepts it or
/// closes it at once without answering.
async fn attempt(port: u16, version: ProtocolVersion, id: &str) -> Attempt {
    let mut c = Raw::tcp(port, id).await;
    c.version = version;
    let _ = c
        .try_send(&Packet::Connect(Box::new(connect_packet(version, id))))
        .await;
    match c.recv(WAIT).await {
        Ok(Packet::ConnAck(ack)) if ack.reason == ReasonCode::SUCCESS => {
            Attempt::Accepted(Box::new(c))
        }
        Err(RecvError::Closed) => Attempt::Closed,
        other => panic!("[{id}] CONNECT over a connection limit: expected CONNACK 0 or a close without answer, got {other:?}"),
    }
}

/// `n` attempts (`attempt`) with ids `{prefix}-{i}`, the `i`th in
/// `version(i)`: the connections served, and how many were closed.
async fn attempts(
    port: u16,
    n: usize,
    prefix: &str,
    version: impl Fn(usize) -> ProtocolVersion,
) -> (Vec<Box<Raw>>, u64) {
    let mut accepted = Vec::new();
    let mut closed = 0u64;
    for i in 0..n {
        match attempt(port, version(i), &format!("{prefix}-{i}")).await {
            Attempt::Accepted(c) => accepted.push(c),
            Attempt::Closed => closed += 1,
        }
    }
    (accepted, closed)
}

/// v5 for even `i`, 3.1.1 for odd.
fn alternate(i: usize) -> ProtocolVersion {
    if i.is_multiple_of(2) {
        V5P
    } else {
        V311
    }
}

/// Waits until a connection `id` is served again (the broker has seen the
/// earlier ones close), then closes it.
async fn served_again(port: u16, id: &str) {
    eventually("a connection served again", WAIT, || async move {
        match attempt(port, V5P, id).await {
            Attempt::Accepted(c) => {
                c.disconnect().await;
                Some(())
            }
            Attempt::Closed => None,
        }
    })
    .await;
}

/// `max_connections = 5` per shard (two shards): of 20 connections, at most
/// 10 are served (at least 5: one shard gets 10 or more), the others are
/// closed without an answer and counted; closing the served ones makes room
/// again.
#[tokio::test]
async fn limit_max_connections_per_shard() {
    let test = "limit_max_connections_per_shard";
    if skip_on_mosquitto(test, "vmqtt's limits") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_mqtt: "max_connections = 5".to_owned(),
            ..Default::default()
        },
    );
    let (mut accepted, closed) = attempts(b.port(), 20, "maxconn", alternate).await;
    assert!(
        (5..=10).contains(&accepted.len()),
        "{} of 20 connections served with max_connections = 5 on each of 2 shards",
        accepted.len()
    );
    for c in &mut accepted {
        c.ping().await;
    }
    expect_limit_hits(http, &[("connections", closed)]).await;
    for c in accepted {
        c.disconnect().await;
    }
    // The places are given back when the broker has seen the closes.
    served_again(b.port(), "maxconn-again").await;
    assert_still_serves(&mut b, test).await;
}

/// `[runtime] max_connections = 6`: the whole process serves 6 connections;
/// the next ones are closed without an answer and counted.
#[tokio::test]
async fn limit_max_connections_per_process() {
    let test = "limit_max_connections_per_process";
    if skip_on_mosquitto(test, "vmqtt's limits") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_toml: "[runtime]\nmax_connections = 6".to_owned(),
            ..Default::default()
        },
    );
    let (mut accepted, closed) = attempts(b.port(), 12, "maxproc", alternate).await;
    assert_eq!(
        accepted.len(),
        6,
        "connections served with [runtime] max_connections = 6"
    );
    for c in &mut accepted {
        c.ping().await;
    }
    expect_limit_hits(http, &[("connections", closed)]).await;
    for c in accepted {
        c.disconnect().await;
    }
    served_again(b.port(), "maxproc-again").await;
    assert_still_serves(&mut b, test).await;
}

/// `max_connect_rate = 5` per shard: 40 connections as fast as possible; no
/// more than the rate allows (a burst of one second's worth, then 5 per
/// second, on each of 2 shards) are served, the others are closed without
/// an answer and counted; a second later new clients are served again.
#[tokio::test]
async fn limit_max_connect_rate() {
    let test = "limit_max_connect_rate";
    if skip_on_mosquitto(test, "vmqtt's limits") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_mqtt: "max_connect_rate = 5".to_owned(),
            ..Default::default()
        },
    );
    let start = Instant::now();
    let (accepted, closed) = attempts(b.port(), 40, "rate", |_| V311).await;
    let secs = start.elapsed().as_secs_f64();
    let allowed = (2.0 * 5.0 * (1.0 + secs)).ceil() as usize;
    assert!(
        !accepted.is_empty() && accepted.len() <= allowed,
        "{} of 40 connections served in {secs:.2} s with max_connect_rate = 5 per shard (at most {allowed})",
        accepted.len()
    );
    assert!(closed > 0);
    expect_limit_hits(http, &[("connect_rate", closed)]).await;
    drop(accepted);
    sleep_ms(1500).await;
    assert_still_serves(&mut b, test).await;
}

/// `max_topic_length = 32`, `max_topic_levels = 4`: a PUBLISH to a longer
/// topic, or to one with more levels, gets PUBACK/PUBREC 0x90 (v5 QoS 1/2),
/// is dropped (v5 QoS 0) or closes the connection (3.1.1); a topic at the
/// limits is delivered; each refusal is counted.
#[tokio::test]
async fn limit_topic_length_and_levels_on_publish() {
    let test = "limit_topic_length_and_levels_on_publish";
    if skip_on_mosquitto(test, "vmqtt's limits") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_mqtt: "max_topic_length = 32\nmax_topic_levels = 4".to_owned(),
            ..Default::default()
        },
    );
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;

    let long = "l".repeat(33);
    let deep = "a/b/c/d/e";
    for t in [long.as_str(), deep] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let ack = publ.publish(publish(t, "refused", qos, false)).await;
            match qos {
                QoS::AtMostOnce => assert!(ack.is_none()),
                _ => assert_eq!(
                    ack.map(|a| a.reason),
                    Some(ReasonCode(0x90)),
                    "v5 {qos:?} PUBLISH to {t:?} (PUBACK/PUBREC)"
                ),
            }
        }
    }
    publ.ping().await;
    // At the limits: delivered, and the first thing the subscriber gets
    // (the refused QoS 0 messages, sent before on the same connection, were
    // dropped).
    let at_limit = "m".repeat(32);
    for t in [at_limit.as_str(), "a/b/c/d"] {
        publ.publish_ok(t, "at the limit", QoS::AtLeastOnce, false)
            .await;
        let p = sub.recv_publish_acked().await;
        assert_eq!(p.topic.as_str(), t, "delivered at the limit: {}", text(&p));
    }

    // 3.1.1 has no negative PUBACK: the connection is closed.
    for (i, t) in [long.as_str(), deep].into_iter().enumerate() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let mut c = Raw::v311(b.port(), &format!("{test}-v3-{i}-{qos:?}")).await;
            let mut p = publish(t, "refused", qos, false);
            if qos != QoS::AtMostOnce {
                p.packet_id = Some(c.next_packet_id());
            }
            c.send(&Packet::Publish(p)).await;
            let got = c.read_bytes_until_closed(WAIT).await;
            assert!(
                got.is_empty(),
                "3.1.1 {qos:?} PUBLISH to {t:?}: closed without PUBACK, got {got:02x?}"
            );
        }
    }
    sub.expect_no_publish(QUIET, "refused topics are not delivered")
        .await;
    expect_limit_hits(http, &[("topic_length", 3 + 2), ("topic_levels", 3 + 2)]).await;
    assert_still_serves(&mut b, test).await;
}

/// `max_topic_length = 32`, `max_topic_levels = 4`: a filter over either
/// limit gets SUBACK 0x8F (v5) / 0x80 (3.1.1), the other filters of the
/// same SUBSCRIBE are granted, the connection stays; the levels of a shared
/// subscription are those of its filter, without `$share/group/`.
#[tokio::test]
async fn limit_topic_length_and_levels_on_subscribe() {
    let test = "limit_topic_length_and_levels_on_subscribe";
    if skip_on_mosquitto(test, "vmqtt's limits") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_mqtt: "max_topic_length = 32\nmax_topic_levels = 4".to_owned(),
            ..Default::default()
        },
    );
    let long = "l".repeat(33);
    for version in [V5P, V311] {
        let mut c = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("subl-{version:?}")),
        )
        .await
        .0;
        let mut filters = vec![
            (filter(&long), SubscriptionOptions::qos(QoS::AtLeastOnce)),
            (
                filter("a/b/c/+/e"),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            ),
            (
                filter("a/b/c/#"),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            ),
            (
                filter(&"m".repeat(32)),
                SubscriptionOptions::qos(QoS::AtMostOnce),
            ),
        ];
        let mut want = vec![0x8f, 0x8f, 0x01, 0x00];
        if version.is_v5() {
            filters.push((
                filter("$share/g/a/b/c/d"),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            ));
            want.push(0x01);
        } else {
            for w in &mut want {
                if *w == 0x8f {
                    *w = 0x80;
                }
            }
        }
        let id = c.next_packet_id();
        c.send(&Packet::Subscribe(vmqtt::codec::Subscribe {
            packet_id: id,
            properties: Default::default(),
            filters,
        }))
        .await;
        let ack = c
            .wait_for("SUBACK", WAIT, |p| match p {
                Packet::SubAck(a) if a.packet_id == id => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            ack.reasons,
            want.iter().map(|&r| ReasonCode(r)).collect::<Vec<_>>(),
            "{version:?} SUBACK"
        );
        c.ping().await;
        c.disconnect().await;
    }
    expect_limit_hits(http, &[("topic_length", 2), ("topic_levels", 2)]).await;
    assert_still_serves(&mut b, test).await;
}

/// `max_subscriptions = 3`: a fourth filter gets SUBACK 0x97 (v5) / 0x80
/// (3.1.1); subscribing again to a filter the client has is not a new
/// subscription; after an UNSUBSCRIBE there is room again; refusals are
/// counted.
#[tokio::test]
async fn limit_max_subscriptions() {
    let test = "limit_max_subscriptions";
    if skip_on_mosquitto(test, "vmqtt's limits") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_mqtt: "max_subscriptions = 3".to_owned(),
            ..Default::default()
        },
    );
    let q1 = || SubscriptionOptions::qos(QoS::AtLeastOnce);
    for version in [V5P, V311] {
        let refused = ReasonCode(if version.is_v5() { 0x97 } else { 0x80 });
        let (pub_id, sub_id) = ids_on_different_shards(&format!("{test}-{version:?}"));
        let mut c = Raw::connect_ok(b.port(), connect_packet(version, &sub_id))
            .await
            .0;
        for f in ["s/a", "s/b", "s/c"] {
            c.subscribe(f, QoS::AtLeastOnce).await;
        }
        let ack = c.subscribe_opts("s/d", q1(), Default::default()).await;
        assert_eq!(
            ack.reasons,
            vec![refused],
            "{version:?} fourth subscription"
        );
        // Again to s/a, now at QoS 0: not a new subscription.
        c.subscribe("s/a", QoS::AtMostOnce).await;
        // One SUBSCRIBE: an existing filter granted, a new one refused.
        let id = c.next_packet_id();
        c.send(&Packet::Subscribe(vmqtt::codec::Subscribe {
            packet_id: id,
            properties: Default::default(),
            filters: vec![(filter("s/b"), q1()), (filter("s/e"), q1())],
        }))
        .await;
        let ack = c
            .wait_for("SUBACK", WAIT, |p| match p {
                Packet::SubAck(a) if a.packet_id == id => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            ack.reasons,
            vec![ReasonCode(0x01), refused],
            "{version:?} [s/b, s/e]"
        );
        // Room again after an UNSUBSCRIBE.
        c.unsubscribe("s/a").await;
        c.subscribe("s/d", QoS::AtLeastOnce).await;
        let mut publ = Raw::v311(b.port(), &pub_id).await;
        for t in ["s/e", "s/a", "s/d"] {
            publ.publish_ok(t, t, QoS::AtLeastOnce, false).await;
        }
        let p = c.recv_publish_acked().await;
        assert_eq!(
            p.topic.as_str(),
            "s/d",
            "{version:?}: only s/d of s/e, s/a, s/d is subscribed"
        );
        c.expect_no_publish(QUIET, "no other subscription").await;
        publ.disconnect().await;
        c.disconnect().await;
    }
    expect_limit_hits(http, &[("subscriptions", 4)]).await;
    assert_still_serves(&mut b, test).await;
}

/// The limits the broker had before counting: each firing shows in
/// `vmqtt_limit_hits_total` — `connect_timeout` (silent connections),
/// `packet_size` (a PUBLISH over `max_packet_size`), `receive_maximum` (a
/// third unreleased QoS 2 PUBLISH with `receive_maximum = 2`: DISCONNECT
/// 0x93), `inflight` (messages held back by a subscriber's Receive Maximum
/// of 1) and `queued` (dropped from a full queue of 2).
#[tokio::test]
async fn limit_hits_counted_for_every_limit() {
    let test = "limit_hits_counted_for_every_limit";
    if skip_on_mosquitto(test, "vmqtt's metrics") {
        return;
    }
    let http = free_port();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            connect_timeout_ms: Some(500),
            max_packet_size: Some(1024),
            receive_maximum: Some(2),
            max_queued_messages: Some(2),
            ..Default::default()
        },
    );
    // connect_timeout: three silent connections.
    let mut silent = Vec::new();
    for i in 0..3 {
        silent.push(Raw::tcp(b.port(), &format!("silent-{i}")).await);
    }
    for c in &mut silent {
        let got = c.read_bytes_until_closed(WAIT).await;
        assert!(got.is_empty(), "[{}] {got:02x?}", c.name);
    }
    // packet_size.
    let mut c = Raw::v5(b.port(), "too-big").await;
    let big = encode(
        &Packet::Publish(publish("big/t", vec![0u8; 2048], QoS::AtMostOnce, false)),
        V5P,
    );
    expect_answer(&mut c, "2 KiB PUBLISH", &big, Expect::Disconnect(0x95)).await;
    // receive_maximum: a third QoS 2 PUBLISH before any PUBREL.
    let mut c = Raw::v5(b.port(), "qos2-burst").await;
    for n in 1..=2u16 {
        let mut p = publish("rm/t", "q2", QoS::ExactlyOnce, false);
        p.packet_id = Some(c.next_packet_id());
        c.send(&Packet::Publish(p)).await;
        let rec = c
            .wait_for("PUBREC", WAIT, |pk| match pk {
                Packet::PubRec(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        assert_eq!(rec.packet_id.get(), n);
    }
    let mut p = publish("rm/t", "q2", QoS::ExactlyOnce, false);
    p.packet_id = Some(c.next_packet_id());
    let bytes = encode(&Packet::Publish(p), V5P);
    expect_answer(
        &mut c,
        "third QoS 2 PUBLISH",
        &bytes,
        Expect::Disconnect(0x93),
    )
    .await;
    // inflight and queued: a subscriber with Receive Maximum 1 that never
    // acknowledges; 10 QoS 1 messages: one in flight, two queued, the rest
    // dropped — and, as they reached no one, acknowledged with 0x97.
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.receive_maximum = Some(1);
    let mut sub = Raw::connect_ok(b.port(), conn).await.0;
    sub.subscribe("iq/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for i in 0..10 {
        let ack = publ
            .publish(publish("iq/t", i.to_string(), QoS::AtLeastOnce, false))
            .await
            .expect("PUBACK");
        let want = if i < 3 {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::QUOTA_EXCEEDED
        };
        assert_eq!(ack.reason, want, "message {i}");
    }
    let first = sub.recv_publish().await;
    assert_eq!(text(&first), "0");
    sub.expect_no_publish(QUIET, "Receive Maximum 1: one message in flight")
        .await;
    expect_limit_hits(
        http,
        &[
            ("connect_timeout", 3),
            ("packet_size", 1),
            ("receive_maximum", 1),
            ("inflight", 1),
            ("queued", 1),
        ],
    )
    .await;
    sub.ack(&first).await;
    assert_still_serves(&mut b, test).await;
}
