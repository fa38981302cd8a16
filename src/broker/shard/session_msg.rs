//! What nodes say to each other about one client's session
//! ([`SessionMsg`]) and a session as it moves between nodes
//! ([`SessionTransfer`]); handled in `takeover.rs`, `registration.rs`
//! and `moving.rs`.

use super::*;

/// What nodes say to each other about one client's session. Each is about
/// `client` and goes to its home shard on the receiving node.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionMsg {
    /// To the owner of the client's partition: the sending node has a
    /// CONNECT of `client` (its claim number `claim`).
    Claim {
        /// The client.
        client: ClientId,
        /// The claimant's number for this CONNECT.
        claim: u64,
    },
    /// The owner's answer: the claim holds with `epoch`; `previous` (if
    /// another node) holds the session now and must hand it over.
    Granted {
        /// The client.
        client: ClientId,
        /// The claimant's number.
        claim: u64,
        /// The session epoch granted.
        epoch: u64,
        /// The node that held the client until now.
        previous: Option<NodeId>,
    },
    /// The receiver does not own the client's partition (its map differs,
    /// one of the two is changing): the claim is sent again shortly, to the
    /// owner of the claimant's map then.
    NotOwner {
        /// The client.
        client: ClientId,
        /// The claimant's number.
        claim: u64,
    },
    /// To the previous holder: close the client's connection and hand its
    /// session to the sender (`clean`: the new CONNECT starts clean, the
    /// old session ends here).
    Take {
        /// The client.
        client: ClientId,
        /// The claimant's number.
        claim: u64,
        /// The claimant's granted epoch.
        epoch: u64,
        /// Clean Start of the new CONNECT.
        clean: bool,
    },
    /// The previous holder's answer: the session, or `None` (none here, or
    /// a clean start).
    Handover {
        /// The client.
        client: ClientId,
        /// The claimant's number.
        claim: u64,
        /// The session.
        session: Option<Box<SessionTransfer>>,
    },
    /// To the owner: the sender holds a session of `client` (after the
    /// partition moved, or from its disk at start).
    Register {
        /// The client.
        client: ClientId,
        /// Its epoch as the sender knows it (0: none known).
        epoch: u64,
    },
    /// To the owner: the sender's session of `client` ended.
    Release {
        /// The client.
        client: ClientId,
    },
    /// From the owner: a later session of `client` lives on `into`; the
    /// receiver hands what its copy holds there (queued messages, missing
    /// subscriptions: merged, so nothing acknowledged is lost) and drops
    /// it.
    Drop {
        /// The client.
        client: ClientId,
        /// The node with the later session.
        into: NodeId,
    },
    /// The new holder's answer to a [`SessionMsg::Handover`] of `claim`:
    /// the session is stored there, the sender of the handover deletes
    /// its copy.
    Took {
        /// The client.
        client: ClientId,
        /// The claim the handover answered (0: after a `Drop`).
        claim: u64,
    },
    /// A delivery for a session that left the sending node, to the node it
    /// went to (see `moving.rs`).
    Forward(Box<Forward>),
}

impl SessionMsg {
    /// The client it is about.
    pub fn client(&self) -> &ClientId {
        match self {
            SessionMsg::Claim { client, .. }
            | SessionMsg::Granted { client, .. }
            | SessionMsg::NotOwner { client, .. }
            | SessionMsg::Take { client, .. }
            | SessionMsg::Handover { client, .. }
            | SessionMsg::Register { client, .. }
            | SessionMsg::Release { client }
            | SessionMsg::Drop { client, .. }
            | SessionMsg::Took { client, .. } => client,
            SessionMsg::Forward(f) => &f.client,
        }
    }

    /// One line about it for a log: its kind, client and numbers, never
    /// the session's content.
    pub fn summary(&self) -> String {
        let c = self.client().as_str();
        match self {
            SessionMsg::Claim { claim, .. } => format!("Claim {c} claim={claim}"),
            SessionMsg::Granted {
                claim,
                epoch,
                previous,
                ..
            } => format!(
                "Granted {c} claim={claim} epoch={epoch} previous={:?}",
                previous.map(|n| n.0)
            ),
            SessionMsg::NotOwner { claim, .. } => format!("NotOwner {c} claim={claim}"),
            SessionMsg::Take {
                claim,
                epoch,
                clean,
                ..
            } => format!("Take {c} claim={claim} epoch={epoch} clean={clean}"),
            SessionMsg::Handover { claim, session, .. } => format!(
                "Handover {c} claim={claim} session={} subs={} queued={}",
                session.is_some(),
                session.as_ref().map_or(0, |s| s.subscriptions.len()),
                session.as_ref().map_or(0, |s| s.queue.len())
            ),
            SessionMsg::Register { epoch, .. } => format!("Register {c} epoch={epoch}"),
            SessionMsg::Release { .. } => format!("Release {c}"),
            SessionMsg::Drop { into, .. } => format!("Drop {c} into={}", into.0),
            SessionMsg::Took { claim, .. } => format!("Took {c} claim={claim}"),
            SessionMsg::Forward(_) => format!("Forward {c}"),
        }
    }
}

/// A session as it moves to another node: everything but its will (the new
/// connection brings its own) and its connection.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTransfer {
    /// Protocol level of its last connection.
    pub protocol: ProtocolVersion,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// Subscriptions by full filter.
    pub subscriptions: Vec<(TopicFilter, Subscription)>,
    /// Outbound messages: those in flight first (in the order they were
    /// sent, with their packet ids), then the queue.
    pub queue: Vec<TransferEntry>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<PacketId>,
}

/// One outbound message of a [`SessionTransfer`].
#[derive(Debug, Clone, PartialEq)]
pub struct TransferEntry {
    /// The message.
    pub msg: Arc<Message>,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
    /// Where it is in its flow.
    pub state: OutState,
}

impl TransferEntry {
    /// The delivery it is on the receiving node (not stored yet), and where
    /// it was in its flow.
    pub(super) fn into_delivery(self) -> (Delivery, OutState) {
        let d = Delivery {
            msg: self.msg,
            qos: self.qos,
            retain: self.retain,
            sub_ids: self.sub_ids,
            store: None,
            group: None,
        };
        (d, self.state)
    }
}
