//! rumqttc clients (the v4 API for MQTT 3.1.1 and `rumqttc::v5`), each with
//! its event loop polled on a task that forwards incoming packets to the test.
//! The loop stops at the first connection error, which is reported too: these
//! wrappers never reconnect behind the test's back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::raw::WAIT;

/// An MQTT 3.1.1 client (rumqttc v4 API).
pub struct V4 {
    /// The rumqttc handle, for requests.
    pub client: rumqttc::AsyncClient,
    /// The client id.
    pub id: String,
    rx: mpsc::UnboundedReceiver<Result<rumqttc::Packet, String>>,
    stash: VecDeque<rumqttc::Packet>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for V4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "V4({})", self.id)
    }
}

impl V4 {
    /// Connects with clean session and keep alive 30 s, after `tune` adjusts
    /// the options. Returns the client and its CONNACK (asserted successful).
    pub async fn connect(
        port: u16,
        id: &str,
        tune: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> (V4, rumqttc::ConnAck) {
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        tune(&mut opts);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = V4 {
            client,
            id: id.to_owned(),
            rx,
            stash: VecDeque::new(),
            task,
        };
        let ack = c
            .wait_for("CONNACK", WAIT, |p| match p {
                rumqttc::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            ack.code,
            rumqttc::ConnectReturnCode::Success,
            "[{id}] CONNACK"
        );
        (c, ack)
    }

    /// Connects with clean session and default options.
    pub async fn new(port: u16, id: &str) -> V4 {
        Self::connect(port, id, |_| {}).await.0
    }

    /// Waits for an incoming packet that `want` maps to `Some`; others are
    /// stashed. A connection error fails the test.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut want: impl FnMut(&rumqttc::Packet) -> Option<T>,
    ) -> T {
        if let Some(i) = self.stash.iter().position(|p| want(p).is_some()) {
            let p = self.stash.remove(i).expect("in range");
            return want(&p).expect("matched");
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!(
                    "[{}] no {what} within {within:?}; stashed: {:?}",
                    self.id, self.stash
                ),
                Ok(None) => panic!("[{}] event loop ended while waiting for {what}", self.id),
                Ok(Some(Err(e))) => panic!(
                    "[{}] connection error while waiting for {what}: {e}",
                    self.id
                ),
                Ok(Some(Ok(p))) => {
                    if let Some(t) = want(&p) {
                        return t;
                    }
                    self.stash.push_back(p);
                }
            }
        }
    }

    /// Subscribes and waits for the SUBACK; asserts the granted QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        let ack = self
            .wait_for(&format!("SUBACK for {filter}"), WAIT, |p| match p {
                rumqttc::Packet::SubAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        let granted = match qos {
            rumqttc::QoS::AtMostOnce => {
                rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce)
            }
            rumqttc::QoS::AtLeastOnce => {
                rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
            }
            rumqttc::QoS::ExactlyOnce => {
                rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::ExactlyOnce)
            }
        };
        assert_eq!(
            ack.return_codes,
            vec![granted],
            "[{}] SUBACK for {filter}",
            self.id
        );
    }

    /// Queues a PUBLISH (does not wait for its acknowledgement).
    pub async fn publish(
        &self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("queue PUBLISH");
    }

    /// Waits until `n` QoS 1 (PUBACK) or QoS 2 (PUBCOMP) acknowledgements
    /// have arrived.
    pub async fn wait_acks(&mut self, n: usize) {
        for i in 0..n {
            self.wait_for(&format!("ack {} of {n}", i + 1), WAIT, |p| match p {
                rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_) => Some(()),
                _ => None,
            })
            .await;
        }
    }

    /// The next delivered PUBLISH (acknowledged by rumqttc).
    pub async fn recv_publish(&mut self) -> rumqttc::Publish {
        self.recv_publish_within(WAIT).await
    }

    /// The next delivered PUBLISH within `within`.
    pub async fn recv_publish_within(&mut self, within: Duration) -> rumqttc::Publish {
        self.wait_for("PUBLISH", within, |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Asserts no PUBLISH arrives within `within`.
    pub async fn expect_no_publish(&mut self, within: Duration, why: &str) {
        if let Some(p) = self
            .stash
            .iter()
            .find(|p| matches!(p, rumqttc::Packet::Publish(_)))
        {
            panic!("[{}] {why}: unexpected {p:?}", self.id);
        }
        let start = Instant::now();
        while let Some(left) = within.checked_sub(start.elapsed()) {
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(rumqttc::Packet::Publish(p)))) => {
                    panic!("[{}] {why}: unexpected PUBLISH {p:?}", self.id)
                }
                Ok(Some(Ok(p))) => self.stash.push_back(p),
                Ok(Some(Err(e))) => panic!("[{}] {why}: connection error {e}", self.id),
                Ok(None) => panic!("[{}] {why}: event loop ended", self.id),
            }
        }
    }

    /// Sends DISCONNECT and waits until the event loop has ended.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if ev.is_err() {
                break;
            }
        }
    }
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use rumqttc::v5::mqttbytes::v5 as p5;
pub use rumqttc::v5::mqttbytes::QoS as QoS5;

/// An MQTT 5 client (`rumqttc::v5`).
pub struct V5 {
    /// The rumqttc handle, for requests.
    pub client: rumqttc::v5::AsyncClient,
    /// The client id.
    pub id: String,
    rx: mpsc::UnboundedReceiver<Result<p5::Packet, String>>,
    stash: VecDeque<p5::Packet>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for V5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "V5({})", self.id)
    }
}

impl V5 {
    /// Connects with clean start and keep alive 30 s after `tune` adjusts the
    /// options; returns the client and its CONNACK (asserted successful).
    pub async fn connect(
        port: u16,
        id: &str,
        tune: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> (V5, p5::ConnAck) {
        let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        tune(&mut opts);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        let mut c = V5 {
            client,
            id: id.to_owned(),
            rx,
            stash: VecDeque::new(),
            task,
        };
        let ack = c
            .wait_for("CONNACK", WAIT, |p| match p {
                p5::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, p5::ConnectReturnCode::Success, "[{id}] CONNACK");
        (c, ack)
    }

    /// Connects with clean start and default options.
    pub async fn new(port: u16, id: &str) -> V5 {
        Self::connect(port, id, |_| {}).await.0
    }

    /// Waits for an incoming packet that `want` maps to `Some`; others are
    /// stashed. A connection error fails the test.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut want: impl FnMut(&p5::Packet) -> Option<T>,
    ) -> T {
        match self.wait_event(what, within, &mut want).await {
            Ok(t) => t,
            Err(e) => panic!(
                "[{}] connection error while waiting for {what}: {e}",
                self.id
            ),
        }
    }

    /// Like `wait_for`, but returns a connection error instead of failing.
    pub async fn wait_event<T>(
        &mut self,
        what: &str,
        within: Duration,
        want: &mut impl FnMut(&p5::Packet) -> Option<T>,
    ) -> Result<T, String> {
        if let Some(i) = self.stash.iter().position(|p| want(p).is_some()) {
            let p = self.stash.remove(i).expect("in range");
            return Ok(want(&p).expect("matched"));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!(
                    "[{}] no {what} within {within:?}; stashed: {:?}",
                    self.id, self.stash
                ),
                Ok(None) => return Err("event loop ended".into()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(p))) => {
                    if let Some(t) = want(&p) {
                        return Ok(t);
                    }
                    self.stash.push_back(p);
                }
            }
        }
    }

    /// Subscribes and waits for the SUBACK; asserts the granted QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS5) {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        let ack = self
            .wait_for(&format!("SUBACK for {filter}"), WAIT, |p| match p {
                p5::Packet::SubAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        let granted = match qos {
            QoS5::AtMostOnce => p5::SubscribeReasonCode::Success(QoS5::AtMostOnce),
            QoS5::AtLeastOnce => p5::SubscribeReasonCode::Success(QoS5::AtLeastOnce),
            QoS5::ExactlyOnce => p5::SubscribeReasonCode::Success(QoS5::ExactlyOnce),
        };
        assert_eq!(
            ack.return_codes,
            vec![granted],
            "[{}] SUBACK for {filter}",
            self.id
        );
    }

    /// Queues a PUBLISH (does not wait for its acknowledgement).
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS5,
        retain: bool,
        payload: impl Into<bytes::Bytes>,
    ) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("queue PUBLISH");
    }

    /// Waits until `n` PUBACKs or PUBCOMPs have arrived.
    pub async fn wait_acks(&mut self, n: usize) {
        for i in 0..n {
            self.wait_for(&format!("ack {} of {n}", i + 1), WAIT, |p| match p {
                p5::Packet::PubAck(_) | p5::Packet::PubComp(_) => Some(()),
                _ => None,
            })
            .await;
        }
    }

    /// The next delivered PUBLISH (acknowledged by rumqttc).
    pub async fn recv_publish(&mut self) -> p5::Publish {
        self.wait_for("PUBLISH", WAIT, |p| match p {
            p5::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Asserts no PUBLISH arrives within `within`.
    pub async fn expect_no_publish(&mut self, within: Duration, why: &str) {
        if let Some(p) = self
            .stash
            .iter()
            .find(|p| matches!(p, p5::Packet::Publish(_)))
        {
            panic!("[{}] {why}: unexpected {p:?}", self.id);
        }
        let start = Instant::now();
        while let Some(left) = within.checked_sub(start.elapsed()) {
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(p5::Packet::Publish(p)))) => {
                    panic!("[{}] {why}: unexpected PUBLISH {p:?}", self.id)
                }
                Ok(Some(Ok(p))) => self.stash.push_back(p),
                Ok(Some(Err(e))) => panic!("[{}] {why}: connection error {e}", self.id),
                Ok(None) => panic!("[{}] {why}: event loop ended", self.id),
            }
        }
    }

    /// Sends DISCONNECT and waits until the event loop has ended.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if ev.is_err() {
                break;
            }
        }
    }
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A delivered message, whatever the client library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Delivered QoS (0, 1, 2).
    pub qos: u8,
    /// RETAIN flag as delivered.
    pub retain: bool,
}

impl Msg {
    /// The payload as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What the version-generic pub/sub tests need from a client.
#[allow(async_fn_in_trait)]
pub trait MqttClient {
    /// Subscribes with maximum QoS `qos` (0..=2) and waits for the SUBACK.
    async fn sub(&mut self, filter: &str, qos: u8);
    /// Queues a PUBLISH.
    async fn publ(&mut self, topic: &str, qos: u8, retain: bool, payload: Vec<u8>);
    /// Waits for `n` PUBACK/PUBCOMP.
    async fn acks(&mut self, n: usize);
    /// The next delivered message, or `None` after `within`.
    async fn next_msg(&mut self, within: Duration) -> Option<Msg>;
    /// A label.
    fn label(&self) -> String;
}

fn q4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn q5(qos: u8) -> QoS5 {
    match qos {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

impl MqttClient for V4 {
    async fn sub(&mut self, filter: &str, qos: u8) {
        self.subscribe(filter, q4(qos)).await;
    }
    async fn publ(&mut self, topic: &str, qos: u8, retain: bool, payload: Vec<u8>) {
        self.publish(topic, q4(qos), retain, payload).await;
    }
    async fn acks(&mut self, n: usize) {
        self.wait_acks(n).await;
    }
    async fn next_msg(&mut self, within: Duration) -> Option<Msg> {
        if let Some(i) = self
            .stash
            .iter()
            .position(|p| matches!(p, rumqttc::Packet::Publish(_)))
        {
            if let Some(rumqttc::Packet::Publish(p)) = self.stash.remove(i) {
                return Some(msg4(&p));
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(Some(Ok(rumqttc::Packet::Publish(p)))) => return Some(msg4(&p)),
                Ok(Some(Ok(p))) => self.stash.push_back(p),
                Ok(Some(Err(e))) => panic!("[{}] connection error: {e}", self.id),
                Ok(None) => panic!("[{}] event loop ended", self.id),
            }
        }
    }
    fn label(&self) -> String {
        format!("v3.1.1 {}", self.id)
    }
}

fn msg4(p: &rumqttc::Publish) -> Msg {
    Msg {
        topic: p.topic.clone(),
        payload: p.payload.to_vec(),
        qos: p.qos as u8,
        retain: p.retain,
    }
}

impl MqttClient for V5 {
    async fn sub(&mut self, filter: &str, qos: u8) {
        self.subscribe(filter, q5(qos)).await;
    }
    async fn publ(&mut self, topic: &str, qos: u8, retain: bool, payload: Vec<u8>) {
        self.publish(topic, q5(qos), retain, payload).await;
    }
    async fn acks(&mut self, n: usize) {
        self.wait_acks(n).await;
    }
    async fn next_msg(&mut self, within: Duration) -> Option<Msg> {
        if let Some(i) = self
            .stash
            .iter()
            .position(|p| matches!(p, p5::Packet::Publish(_)))
        {
            if let Some(p5::Packet::Publish(p)) = self.stash.remove(i) {
                return Some(msg5(&p));
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(Some(Ok(p5::Packet::Publish(p)))) => return Some(msg5(&p)),
                Ok(Some(Ok(p))) => self.stash.push_back(p),
                Ok(Some(Err(e))) => panic!("[{}] connection error: {e}", self.id),
                Ok(None) => panic!("[{}] event loop ended", self.id),
            }
        }
    }
    fn label(&self) -> String {
        format!("v5 {}", self.id)
    }
}

fn msg5(p: &p5::Publish) -> Msg {
    Msg {
        topic: String::from_utf8_lossy(&p.topic).into_owned(),
        payload: p.payload.to_vec(),
        qos: p.qos as u8,
        retain: p.retain,
    }
}
