//! Session and socket identifiers: 20 URL-safe base64 characters from 15
//! random bytes, stored inline so that maps keyed by them allocate nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A 20-character identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid([u8; 20]);

impl Sid {
    /// A fresh random id.
    pub fn random() -> Self {
        Self::from_random(rand::random::<[u8; 15]>())
    }

    /// An id whose first four characters encode `tag` (24 bits), so that an id
    /// tells which node issued it; the other 12 bytes are random.
    pub fn with_tag(tag: u32) -> Self {
        let mut raw = rand::random::<[u8; 15]>();
        raw[..3].copy_from_slice(&tag.to_be_bytes()[1..]);
        Self::from_random(raw)
    }

    /// The 24-bit tag in the first four characters.
    pub fn tag(&self) -> u32 {
        let mut raw = [0u8; 3];
        match URL_SAFE_NO_PAD.decode_slice(&self.0[..4], &mut raw) {
            Ok(3) => u32::from_be_bytes([0, raw[0], raw[1], raw[2]]),
            _ => 0,
        }
    }

    fn from_random(raw: [u8; 15]) -> Self {
        let mut out = [0u8; 20];
        // 15 bytes always encode to exactly 20 characters.
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, &mut out);
        Self(out)
    }

    /// Parses an id the server issued; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 20 || !bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            return None;
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(bytes);
        Some(Self(out))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Sid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Sid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_parse_back_and_differ() {
        let a = Sid::random();
        let b = Sid::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 20);
        assert_eq!(Sid::parse(a.as_str()), Some(a));
    }

    #[test]
    fn tag_round_trips() {
        for tag in [0, 1, 7, 0xabcdef, 0xff_ffff] {
            assert_eq!(Sid::with_tag(tag).tag(), tag);
        }
    }

    #[test]
    fn rejects_foreign_ids() {
        assert_eq!(Sid::parse("short"), None);
        assert_eq!(Sid::parse("aaaaaaaaaaaaaaaaaaa!"), None);
        assert_eq!(Sid::parse("ééééééééééé"), None);
    }
}
