//! The end-to-end harness: start a broker (vmqtt or Mosquitto), pick client
//! ids on given shards, talk to it with raw packets or with rumqttc, scrape
//! its HTTP endpoint (`http`), run other programs against it (`process`),
//! write bytes by hand (`wire`).

#![allow(dead_code)]

pub mod broker;
pub mod clients;
pub mod etcd;
pub mod http;
pub mod process;
pub mod raw;
pub mod shard;
pub mod wire;

pub use broker::{Broker, BrokerConfig, BrokerKind, RssSampler};
pub use clients::{MqttClient, QoS5, V4, V5};
pub use raw::{
    aliased_publish, connect_packet, persistent, publish, text, topic, will, Raw, QUIET, WAIT,
};
pub use shard::{home_shard, ids_on_different_shards, Placement, SHARDS};

pub use vmqtt::codec::{
    Connect, Disconnect, Packet, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode,
    RetainHandling, SubscribeProperties, SubscriptionOptions,
};

use std::time::Duration;

/// MQTT 3.1.1.
pub const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
/// MQTT 5.0.
pub const V5P: ProtocolVersion = ProtocolVersion::V5;

/// Says, loudly, that a test does not apply to this broker, and returns
/// `true` so the caller can `return`.
pub fn skip_unless_vmqtt(broker: &Broker, test: &str, why: &str) -> bool {
    if broker.is_vmqtt() {
        return false;
    }
    eprintln!("SKIP [{test}] on {:?}: {why}", broker.kind());
    true
}

/// Same as `skip_unless_vmqtt`, decided before starting a broker.
pub fn skip_on_mosquitto(test: &str, why: &str) -> bool {
    if BrokerKind::from_env() == BrokerKind::Vmqtt {
        return false;
    }
    eprintln!("SKIP [{test}] on Mosquitto: {why}");
    true
}

/// Sleeps (only for time-based behaviour: keepalive, expiry, will delay).
pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: not true within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether tests must fail (not skip) when an external client is missing.
pub fn require_external_clients() -> bool {
    std::env::var_os("VMQTT_REQUIRE_EXTERNAL_CLIENTS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Skips loudly (returns `true`) when `what` is unavailable, unless
/// `VMQTT_REQUIRE_EXTERNAL_CLIENTS` is set, in which case it fails.
pub fn skip_missing_external(test: &str, what: &str, available: bool) -> bool {
    if available {
        return false;
    }
    if require_external_clients() {
        panic!("[{test}] {what} is required (VMQTT_REQUIRE_EXTERNAL_CLIENTS is set) but missing; run scripts/install-test-deps.sh");
    }
    eprintln!(
        "\n!!!!! SKIP [{test}]: {what} is not installed; run scripts/install-test-deps.sh \
         (set VMQTT_REQUIRE_EXTERNAL_CLIENTS=1 to make this a failure) !!!!!\n"
    );
    true
}

/// Asserts `got == want` when the broker is vmqtt. On Mosquitto, whose
/// behaviour is known to differ here (`mosquitto_note` says how), a mismatch
/// is printed instead of failing, so the rest of the test still runs.
pub fn assert_vmqtt_eq<T: PartialEq + std::fmt::Debug>(
    broker: &Broker,
    got: T,
    want: T,
    what: &str,
    mosquitto_note: &str,
) {
    if broker.is_vmqtt() {
        assert_eq!(got, want, "{what}");
    } else if got != want {
        eprintln!(
            "DIFFERS on {:?} [{what}]: got {got:?}, vmqtt must give {want:?} ({mosquitto_note})",
            broker.kind()
        );
    }
}

/// A publisher and a subscriber on different shards that keep checking the
/// broker still routes while a test misbehaves on other connections.
#[derive(Debug)]
pub struct Bystanders {
    publ: Raw,
    sub: Raw,
    topic: String,
    n: usize,
}

impl Bystanders {
    /// Connects the pair (3.1.1 publisher, v5 subscriber) for test `test`.
    pub async fn new(broker: &Broker, test: &str) -> Bystanders {
        let (pub_id, sub_id) = ids_on_different_shards(&format!("{test}-bystander"));
        let topic = format!("bystander/{test}");
        let mut sub = Raw::v5(broker.port(), &sub_id).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        let publ = Raw::v311(broker.port(), &pub_id).await;
        let mut b = Bystanders {
            publ,
            sub,
            topic,
            n: 0,
        };
        b.check().await;
        b
    }

    /// One QoS 1 round trip; fails if it does not complete within `WAIT`.
    pub async fn check(&mut self) {
        self.n += 1;
        let m = format!("bystander {}", self.n);
        self.publ
            .publish_ok(&self.topic, &m, QoS::AtLeastOnce, false)
            .await;
        let p = self.sub.recv_publish_acked().await;
        assert_eq!(text(&p), m, "bystander round trip");
    }
}
