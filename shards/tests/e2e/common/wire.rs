//! Hand-written wire bytes, for input the codec would refuse to encode:
//! frames with any first byte, length-prefixed fields, property blocks,
//! CONNECTs with any name, level and flags; and a deterministic PRNG for
//! garbage.

/// A frame: first byte, remaining length (a variable byte integer), body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A two-byte length prefix and the bytes (an MQTT string or binary field).
pub fn s(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// The parts, concatenated.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A v5 property block: its length (one byte: test blocks are short) and
/// the properties.
pub fn props(p: &[u8]) -> Vec<u8> {
    assert!(p.len() < 128, "test property blocks are short");
    cat(&[&[p.len() as u8], p])
}

/// A CONNECT: protocol name, level, flags, keep alive 60, v5 properties
/// (when `props` is `Some`), then `payload`.
pub fn connect_frame(
    name: &[u8],
    level: u8,
    flags: u8,
    props_: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let p = props_.map(props).unwrap_or_default();
    frame(
        0x10,
        &cat(&[&s(name), &[level, flags], &60u16.to_be_bytes(), &p, payload]),
    )
}

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
