//! Feeds arbitrary bytes to `vmqtt::codec::decode` in every protocol version,
//! as a stream of frames, with a small maximum packet size.
//!
//! Oracle: decoding never panics (debug assertions are on in fuzz builds), and
//! every packet that decodes re-encodes, with `encoded_len` equal to the bytes
//! written, and decodes again to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vmqtt::codec::{decode, ProtocolVersion};

/// Small enough that the size check is exercised by inputs libFuzzer makes.
const MAX_PACKET_SIZE: u32 = 1024;

fuzz_target!(|data: &[u8]| {
    for version in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let mut buf = BytesMut::from(data);
        // Every decoded frame consumes at least its two-byte fixed header.
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            let mut wire = BytesMut::new();
            if let Err(e) = packet.encode(version, &mut wire) {
                panic!("decoded {packet:?} but re-encoding in {version:?} failed: {e}");
            }
            assert_eq!(packet.encoded_len(version), Ok(wire.len()), "{packet:?}");
            let again = decode(&mut wire, version, u32::MAX);
            assert!(wire.is_empty(), "re-decode of {packet:?} left bytes");
            assert_eq!(again, Ok(Some(packet)), "re-decode in {version:?}");
        }
    }
});
