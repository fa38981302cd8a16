//! Distinct identifier types: a packet identifier is not a `u16`, a client
//! identifier is not a `String`.

use std::fmt;
use std::num::NonZeroU16;

use crate::ByteStr;

/// An MQTT packet identifier: a non-zero 16-bit integer (MQTT 3.1.1 §2.3.1,
/// MQTT 5.0 §2.2.1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The packet identifier `n`, or `None` for 0, which is never valid.
    pub const fn new(n: u16) -> Option<Self> {
        match NonZeroU16::new(n) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The numeric value (never 0).
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// The next identifier after `self`, wrapping from 65535 to 1.
    pub const fn next(self) -> Self {
        match NonZeroU16::new(self.0.get().wrapping_add(1)) {
            Some(n) => Self(n),
            None => Self(NonZeroU16::MIN),
        }
    }
}

impl fmt::Debug for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PacketId({})", self.0)
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Identifier of a stored message, unique within its shard's column family
/// and allocated in increasing order by the shard that stores it (the core
/// allocates it, the storage keys the message by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The identifier after this one.
    pub const fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

/// Number of a shard's storage batch (`ShardCore::poll_store`), from 1 and
/// increasing; output that depends on a batch waits until the runtime
/// reports it written (`ShardCore::handle_stored`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BatchId(pub u64);

impl BatchId {
    /// The batch after this one.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// An MQTT client identifier, as sent in CONNECT or assigned by the server.
///
/// Hashes and borrows as `str`, so maps keyed by it can be searched with a
/// `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(ByteStr);

impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl ClientId {
    /// Wraps a client identifier string.
    pub fn new(id: ByteStr) -> Self {
        Self(id)
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The underlying string.
    pub fn as_bytestr(&self) -> &ByteStr {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:?})", self.0.as_str())
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_id_zero_is_invalid_and_next_wraps() {
        assert!(PacketId::new(0).is_none());
        assert_eq!(PacketId::new(65535).unwrap().next().get(), 1);
        assert_eq!(PacketId::new(7).unwrap().next().get(), 8);
    }
}
