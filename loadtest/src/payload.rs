//! The payload every published message carries: a 16-byte header with the
//! send time, the publisher and a per-publisher sequence number, then filler
//! up to the configured size.
//!
//! ```text
//! 0        8          12       16
//! | sent_ns | publisher | seq    | filler ('x') ...
//! ```
//!
//! All fields are big-endian. `sent_ns` is `CLOCK_MONOTONIC` in nanoseconds,
//! which every process on the machine shares, so a subscriber in another
//! process of the same run can compute the end-to-end latency.

/// Bytes taken by the header; the smallest payload the generator sends.
pub const HEADER_LEN: usize = 16;

/// What the header of a payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// `CLOCK_MONOTONIC` nanoseconds when the publisher wrote the message.
    pub sent_ns: u64,
    /// The publisher's index in the run (global across processes).
    pub publisher: u32,
    /// The publisher's sequence number, from 0, one per message.
    pub seq: u32,
}

impl Stamp {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`;
    /// `false` (and nothing written) if `buf` is shorter.
    pub fn write(&self, buf: &mut [u8]) -> bool {
        let Some(head) = buf.get_mut(..HEADER_LEN) else {
            return false;
        };
        head[0..8].copy_from_slice(&self.sent_ns.to_be_bytes());
        head[8..12].copy_from_slice(&self.publisher.to_be_bytes());
        head[12..16].copy_from_slice(&self.seq.to_be_bytes());
        true
    }

    /// Reads the header of `buf`; `None` if it is shorter than
    /// [`HEADER_LEN`] (a message this generator did not send).
    pub fn read(buf: &[u8]) -> Option<Self> {
        let head = buf.get(..HEADER_LEN)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&head[0..8]);
        let mut publisher = [0u8; 4];
        publisher.copy_from_slice(&head[8..12]);
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&head[12..16]);
        Some(Self {
            sent_ns: u64::from_be_bytes(ts),
            publisher: u32::from_be_bytes(publisher),
            seq: u32::from_be_bytes(seq),
        })
    }
}

/// A payload of `size` bytes (at least [`HEADER_LEN`]) with a zero header
/// and filler, to be stamped in place before each send.
pub fn blank(size: usize) -> Vec<u8> {
    let mut v = vec![b'x'; size.max(HEADER_LEN)];
    v[..HEADER_LEN].fill(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = blank(64);
        let stamp = Stamp {
            sent_ns: 0x0102_0304_0506_0708,
            publisher: 77,
            seq: u32::MAX,
        };
        assert!(stamp.write(&mut buf));
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(&buf[16..], &[b'x'; 48][..]);
        assert_eq!(&buf[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn minimum_size_is_the_header() {
        let mut buf = blank(3);
        assert_eq!(buf.len(), HEADER_LEN);
        let stamp = Stamp {
            sent_ns: 5,
            publisher: 0,
            seq: 9,
        };
        assert!(stamp.write(&mut buf));
        assert_eq!(Stamp::read(&buf), Some(stamp));
    }

    #[test]
    fn short_buffers_are_refused() {
        let mut short = [0u8; 15];
        let stamp = Stamp {
            sent_ns: 1,
            publisher: 2,
            seq: 3,
        };
        assert!(!stamp.write(&mut short));
        assert_eq!(short, [0u8; 15]);
        assert_eq!(Stamp::read(&short), None);
        assert_eq!(Stamp::read(&[]), None);
    }
}
