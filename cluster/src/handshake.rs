//! The link handshake: both sides say who they are ([`Hello`]), each proves
//! it knows the cluster's secret with an HMAC-SHA256 over the other's
//! random nonce, and the acceptor says where the stream resumes
//! ([`Frame::Welcome`]). Nothing else is read from a link before that.
//!
//! ```text
//! dialer                          acceptor
//!   Hello(d) ───────────────────────▶  checks version, cluster, epoch
//!            ◀─────────────────────── Hello(a)
//!   Proof(mac(d, nonce a)) ─────────▶  verifies
//!            ◀─────────────────────── Proof(mac(a, nonce d)), Welcome
//! verifies, established
//! ```

use ring::hmac;

use crate::frame::{Frame, Hello, Seq, PROTOCOL_VERSION};
use vmqtt::broker::{Epoch, NodeId};

/// The cluster's shared link secret.
pub struct LinkSecret(hmac::Key);

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

/// The least secret accepted, in bytes.
pub const MIN_SECRET: usize = 16;

impl LinkSecret {
    /// The secret from its bytes (a secret file's contents, surrounding
    /// white space removed); `None` if shorter than [`MIN_SECRET`].
    pub fn new(bytes: &[u8]) -> Option<LinkSecret> {
        let trimmed = bytes.trim_ascii();
        (trimmed.len() >= MIN_SECRET)
            .then(|| LinkSecret(hmac::Key::new(hmac::HMAC_SHA256, trimmed)))
    }

    fn input(role: u8, their_nonce: &[u8; 16], mine: &Hello) -> Vec<u8> {
        let mut m = Vec::with_capacity(96 + mine.cluster.len());
        m.extend_from_slice(b"vmqtt-link-v1\0");
        m.push(role);
        m.extend_from_slice(their_nonce);
        m.extend_from_slice(&mine.version.to_be_bytes());
        m.extend_from_slice(mine.cluster.as_bytes());
        m.push(0);
        m.extend_from_slice(&mine.node.0.to_be_bytes());
        m.extend_from_slice(&mine.epoch.0.to_be_bytes());
        m.extend_from_slice(&mine.shard.to_be_bytes());
        m.extend_from_slice(&mine.nonce);
        m
    }

    fn proof(&self, role: u8, their_nonce: &[u8; 16], mine: &Hello) -> [u8; 32] {
        let tag = hmac::sign(&self.0, &Self::input(role, their_nonce, mine));
        let mut out = [0; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn verify(&self, role: u8, my_nonce: &[u8; 16], theirs: &Hello, proof: &[u8; 32]) -> bool {
        // Constant time: ring's verify.
        hmac::verify(&self.0, &Self::input(role, my_nonce, theirs), proof).is_ok()
    }
}

/// A fresh random challenge for a [`Hello`] (the system's CSPRNG); `None`
/// only if the system has no randomness to give.
pub fn nonce() -> Option<[u8; 16]> {
    use ring::rand::SecureRandom;
    let mut n = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut n).ok()?;
    Some(n)
}

const DIALER: u8 = b'D';
const ACCEPTOR: u8 = b'A';

/// Why a handshake failed; sent to the other side as [`Frame::Refuse`]
/// where it can be, and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another protocol version.
    #[error("link protocol version {theirs}, this node speaks {PROTOCOL_VERSION}")]
    Version {
        /// The other side's.
        theirs: u16,
    },
    /// A node of another cluster.
    #[error("cluster {theirs:?}, this node is in {ours:?}")]
    Cluster {
        /// The other side's.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// Not the node that was dialed, or this node itself.
    #[error("node {theirs}: {why}")]
    Node {
        /// The other side's node id.
        theirs: NodeId,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An epoch older than the one the membership knows.
    #[error("node {node} epoch {theirs} is stale (current {current})")]
    StaleEpoch {
        /// The node.
        node: NodeId,
        /// Its claimed epoch.
        theirs: Epoch,
        /// The epoch the membership has.
        current: Epoch,
    },
    /// A wrong proof: the other side does not know the secret.
    #[error("wrong proof of the cluster secret")]
    Proof,
    /// A frame out of place.
    #[error("unexpected {0} during the handshake")]
    Unexpected(&'static str),
    /// The other side refused.
    #[error("refused by the peer: {0}")]
    ByPeer(String),
}

fn check_common(me: &Hello, theirs: &Hello) -> Result<(), Refused> {
    if theirs.version != PROTOCOL_VERSION {
        return Err(Refused::Version {
            theirs: theirs.version,
        });
    }
    if theirs.cluster != me.cluster {
        return Err(Refused::Cluster {
            theirs: theirs.cluster.clone(),
            ours: me.cluster.clone(),
        });
    }
    if theirs.node == me.node {
        return Err(Refused::Node {
            theirs: theirs.node,
            why: "is this node",
        });
    }
    Ok(())
}

fn name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Proof(_) => "proof",
        Frame::Welcome { .. } => "welcome",
        Frame::Refuse(_) => "refuse",
        Frame::Batch { .. } => "batch",
        Frame::Ack(_) => "ack",
        Frame::Ping(_) => "ping",
        Frame::Pong(_) => "pong",
    }
}

/// The dialing side of a handshake.
#[derive(Debug)]
pub struct Dialer {
    me: Hello,
    peer: NodeId,
    peer_epoch: Epoch,
    state: DialState,
}

#[derive(Debug)]
enum DialState {
    AwaitHello,
    AwaitProof(Hello),
    AwaitWelcome(Hello),
    Done,
}

/// What the dialer does next.
#[derive(Debug, PartialEq)]
pub enum DialStep {
    /// Send this frame and read on.
    Send(Frame),
    /// Read on.
    Wait,
    /// The link is up: the acceptor has received the stream's batches up
    /// to `received`.
    Established {
        /// The acceptor's hello (its shard, its epoch).
        peer: Hello,
        /// The last batch it has.
        received: Seq,
    },
}

impl Dialer {
    /// Dials `peer`, whose epoch the membership says is `peer_epoch`;
    /// returns the first frame to send.
    pub fn new(me: Hello, peer: NodeId, peer_epoch: Epoch) -> (Dialer, Frame) {
        let hello = Frame::Hello(me.clone());
        let d = Dialer {
            me,
            peer,
            peer_epoch,
            state: DialState::AwaitHello,
        };
        (d, hello)
    }

    /// The next frame from the acceptor.
    pub fn on_frame(&mut self, frame: Frame, secret: &LinkSecret) -> Result<DialStep, Refused> {
        if let Frame::Refuse(why) = frame {
            self.state = DialState::Done;
            return Err(Refused::ByPeer(why));
        }
        match (std::mem::replace(&mut self.state, DialState::Done), frame) {
            (DialState::AwaitHello, Frame::Hello(theirs)) => {
                check_common(&self.me, &theirs)?;
                if theirs.node != self.peer {
                    return Err(Refused::Node {
                        theirs: theirs.node,
                        why: "is not the node dialed",
                    });
                }
                if theirs.epoch != self.peer_epoch {
                    return Err(Refused::StaleEpoch {
                        node: theirs.node,
                        theirs: theirs.epoch,
                        current: self.peer_epoch,
                    });
                }
                let proof = secret.proof(DIALER, &theirs.nonce, &self.me);
                self.state = DialState::AwaitProof(theirs);
                Ok(DialStep::Send(Frame::Proof(proof)))
            }
            (DialState::AwaitProof(theirs), Frame::Proof(proof)) => {
                if !secret.verify(ACCEPTOR, &self.me.nonce, &theirs, &proof) {
                    return Err(Refused::Proof);
                }
                self.state = DialState::AwaitWelcome(theirs);
                Ok(DialStep::Wait)
            }
            (DialState::AwaitWelcome(peer), Frame::Welcome { received }) => {
                Ok(DialStep::Established { peer, received })
            }
            (_, other) => Err(Refused::Unexpected(name(&other))),
        }
    }
}

/// The accepting side of a handshake.
#[derive(Debug)]
pub struct Acceptor {
    me: Hello,
    state: AcceptState,
}

#[derive(Debug)]
enum AcceptState {
    AwaitHello,
    AwaitProof(Hello),
    Done,
}

/// What the acceptor does next.
#[derive(Debug, PartialEq)]
pub enum AcceptStep {
    /// Send this frame and read on.
    Send(Frame),
    /// The dialer is proven: send this proof, then a
    /// [`Frame::Welcome`] with what this node has of the stream.
    Proven {
        /// The dialer's hello.
        peer: Hello,
        /// Our proof, to send first.
        proof: Frame,
    },
}

impl Acceptor {
    /// A handshake on an accepted connection.
    pub fn new(me: Hello) -> Acceptor {
        Acceptor {
            me,
            state: AcceptState::AwaitHello,
        }
    }

    /// The next frame from the dialer. `current_epoch(node)` is the epoch the
    /// membership knows for a node (`None`: not known yet — a node that
    /// just joined may dial before this node's membership shows it).
    pub fn on_frame(
        &mut self,
        frame: Frame,
        secret: &LinkSecret,
        current_epoch: impl FnOnce(NodeId) -> Option<Epoch>,
    ) -> Result<AcceptStep, Refused> {
        match (std::mem::replace(&mut self.state, AcceptState::Done), frame) {
            (AcceptState::AwaitHello, Frame::Hello(theirs)) => {
                check_common(&self.me, &theirs)?;
                if let Some(current) = current_epoch(theirs.node) {
                    if theirs.epoch < current {
                        return Err(Refused::StaleEpoch {
                            node: theirs.node,
                            theirs: theirs.epoch,
                            current,
                        });
                    }
                }
                self.state = AcceptState::AwaitProof(theirs);
                Ok(AcceptStep::Send(Frame::Hello(self.me.clone())))
            }
            (AcceptState::AwaitProof(theirs), Frame::Proof(proof)) => {
                if !secret.verify(DIALER, &self.me.nonce, &theirs, &proof) {
                    return Err(Refused::Proof);
                }
                let proof = Frame::Proof(secret.proof(ACCEPTOR, &theirs.nonce, &self.me));
                Ok(AcceptStep::Proven {
                    peer: theirs,
                    proof,
                })
            }
            (_, other) => Err(Refused::Unexpected(name(&other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: u16, epoch: u64, nonce: u8) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            cluster: "fleet".into(),
            node: NodeId(node),
            epoch: Epoch(epoch),
            shard: 0,
            nonce: [nonce; 16],
        }
    }

    fn secret(s: &str) -> LinkSecret {
        LinkSecret::new(s.as_bytes()).unwrap()
    }

    /// Runs a handshake to its end; the dialer's and the acceptor's results.
    fn run(
        d_hello: Hello,
        a_hello: Hello,
        d_secret: &LinkSecret,
        a_secret: &LinkSecret,
        known: Option<Epoch>,
        dial_epoch: Epoch,
    ) -> (Result<DialStep, Refused>, Result<AcceptStep, Refused>) {
        let (mut d, first) = Dialer::new(d_hello, a_hello.node, dial_epoch);
        let mut a = Acceptor::new(a_hello);
        let step = a.on_frame(first, a_secret, |_| known);
        let Ok(AcceptStep::Send(a_first)) = step else {
            return (Ok(DialStep::Wait), step);
        };
        let proof = match d.on_frame(a_first, d_secret) {
            Ok(DialStep::Send(p)) => p,
            other => return (other, Ok(AcceptStep::Send(Frame::Ack(Seq(0))))),
        };
        let proven = a.on_frame(proof, a_secret, |_| known);
        let Ok(AcceptStep::Proven { proof, .. }) = &proven else {
            return (Ok(DialStep::Wait), proven);
        };
        assert_eq!(d.on_frame(proof.clone(), d_secret), Ok(DialStep::Wait));
        let done = d.on_frame(Frame::Welcome { received: Seq(3) }, d_secret);
        (done, proven)
    }

    #[test]
    fn both_sides_prove_the_secret() {
        let s = secret("0123456789abcdef-long-enough");
        let (d, a) = run(
            hello(1, 10, 1),
            hello(2, 20, 2),
            &s,
            &s,
            Some(Epoch(10)),
            Epoch(20),
        );
        assert!(matches!(a, Ok(AcceptStep::Proven { ref peer, .. }) if peer.node == NodeId(1)));
        assert!(
            matches!(d, Ok(DialStep::Established { ref peer, received: Seq(3) }) if peer.epoch == Epoch(20))
        );
    }

    #[test]
    fn a_wrong_secret_is_refused_on_either_side() {
        let good = secret("0123456789abcdef-long-enough");
        let bad = secret("0123456789abcdef-but-other");
        let (_, a) = run(hello(1, 1, 1), hello(2, 2, 2), &bad, &good, None, Epoch(2));
        assert_eq!(a, Err(Refused::Proof));
        // An impostor acceptor: the dialer sent only its proof, never data.
        let (d, _) = run(hello(1, 1, 1), hello(2, 2, 2), &good, &bad, None, Epoch(2));
        assert!(matches!(d, Err(Refused::Proof) | Ok(DialStep::Wait)));
        assert!(LinkSecret::new(b"  short  \n").is_none());
    }

    #[test]
    fn replayed_proof_with_another_nonce_fails() {
        let s = secret("0123456789abcdef-long-enough");
        let d_hello = hello(1, 1, 1);
        let old = s.proof(DIALER, &[7; 16], &d_hello);
        let mut a = Acceptor::new(hello(2, 2, 8));
        a.on_frame(Frame::Hello(d_hello), &s, |_| None).unwrap();
        assert_eq!(
            a.on_frame(Frame::Proof(old), &s, |_| None),
            Err(Refused::Proof)
        );
    }

    #[test]
    fn other_cluster_version_stale_epoch_and_self_are_refused() {
        let s = secret("0123456789abcdef-long-enough");
        let mut other = hello(1, 1, 1);
        other.cluster = "other".into();
        let mut a = Acceptor::new(hello(2, 2, 2));
        assert!(matches!(
            a.on_frame(Frame::Hello(other), &s, |_| None),
            Err(Refused::Cluster { .. })
        ));
        let mut old = hello(1, 1, 1);
        old.version = 99;
        let mut a = Acceptor::new(hello(2, 2, 2));
        assert!(matches!(
            a.on_frame(Frame::Hello(old), &s, |_| None),
            Err(Refused::Version { theirs: 99 })
        ));
        let mut a = Acceptor::new(hello(2, 2, 2));
        assert!(matches!(
            a.on_frame(Frame::Hello(hello(1, 5, 1)), &s, |_| Some(Epoch(6))),
            Err(Refused::StaleEpoch { .. })
        ));
        let mut a = Acceptor::new(hello(2, 2, 2));
        assert!(matches!(
            a.on_frame(Frame::Hello(hello(2, 5, 1)), &s, |_| None),
            Err(Refused::Node { .. })
        ));
        // The dialer refuses a restarted peer (another epoch than dialed).
        let (d, _) = run(hello(1, 1, 1), hello(2, 9, 2), &s, &s, None, Epoch(2));
        assert!(matches!(d, Err(Refused::StaleEpoch { .. })));
        // Data before the handshake is over.
        let mut a = Acceptor::new(hello(2, 2, 2));
        assert_eq!(
            a.on_frame(Frame::Ack(Seq(1)), &s, |_| None),
            Err(Refused::Unexpected("ack"))
        );
    }
}
