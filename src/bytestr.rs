//! [`ByteStr`]: an immutable UTF-8 string backed by [`Bytes`], so strings
//! decoded from a packet are slices of the read buffer, not copies.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// A UTF-8 string that shares its storage with a [`Bytes`] buffer.
///
/// Invariant: the bytes are valid UTF-8. Cloning is a reference-count bump.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// An empty string.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// A string that borrows a `'static` str without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps `bytes` after checking that they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks or guarantees UTF-8 (the type's
        // invariant), and `Bytes` is immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Consumes the string, returning the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A sub-slice `[start, end)` sharing the same storage.
    ///
    /// Returns `None` if the bounds are out of range or not on char boundaries.
    pub fn slice(&self, start: usize, end: usize) -> Option<Self> {
        let s = self.as_str();
        if start <= end && end <= s.len() && s.is_char_boundary(start) && s.is_char_boundary(end) {
            Some(Self(self.0.slice(start..end)))
        } else {
            None
        }
    }
}

// Hashes as `str` does, so that `Borrow<str>` lookups find the same entries.
impl Hash for ByteStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&String> for ByteStr {
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_utf8_and_surrogates() {
        assert!(ByteStr::from_utf8(Bytes::from_static(b"\xff")).is_err());
        // U+D800 encoded as UTF-8 (CESU style) is not valid UTF-8.
        assert!(ByteStr::from_utf8(Bytes::from_static(b"\xed\xa0\x80")).is_err());
        assert_eq!(
            ByteStr::from_utf8(Bytes::from_static(b"a/b")).unwrap(),
            "a/b"
        );
    }

    #[test]
    fn hashes_like_str() {
        use std::collections::HashMap;
        let mut m = HashMap::new();
        m.insert(ByteStr::from("k"), 1);
        assert_eq!(m.get("k"), Some(&1));
    }

    #[test]
    fn slice_respects_char_boundaries() {
        let s = ByteStr::from("aé/b");
        assert!(s.slice(0, 2).is_none());
        assert_eq!(s.slice(0, 3).unwrap(), "aé");
        assert!(s.slice(3, 10).is_none());
    }
}
