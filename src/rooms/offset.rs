//! The offset of a recoverable broadcast (connection state recovery): which node built it and
//! that node's counter. It travels inside the packet as its last argument (the text form, which
//! socket.io-client keeps as `_lastOffset` and sends back on reconnect) and beside it when the
//! broadcast is forwarded to another node, so that every node logs the same broadcast under the
//! same offset and a session can be recovered on a node other than the one that built it.

use std::fmt;

/// Names one broadcast cluster-wide: the 24-bit tag of the node that built it and a counter
/// that only grows on that node (it starts at the node's start time in microseconds, so a
/// restarted node does not reuse the offsets of its previous run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Offset {
    /// The origin node's tag (the node id's low 24 bits; 0 on a single node).
    pub origin: u32,
    /// The origin's counter; never 0.
    pub counter: u64,
}

impl Offset {
    /// Parses the text form `<origin hex>~<counter hex>`; anything else (a client sends whatever
    /// string last ended one of its events) is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let (origin, counter) = text.split_once('~')?;
        let hex = |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(origin) || !hex(counter) || origin.len() > 6 {
            return None;
        }
        let origin = u32::from_str_radix(origin, 16).ok()?;
        let counter = u64::from_str_radix(counter, 16).ok().filter(|c| *c != 0)?;
        Some(Self { origin, counter })
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}~{:x}", self.origin, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_foreign_strings_are_refused() {
        for offset in [Offset { origin: 0, counter: 1 }, Offset { origin: 0xff_ffff, counter: u64::MAX }] {
            assert_eq!(Offset::parse(&offset.to_string()), Some(offset));
        }
        assert_eq!(Offset { origin: 3, counter: 0x1a2b }.to_string(), "3~1a2b");
        for bad in ["", "~", "3~", "~1", "3~0", "x~1", "3-1", "1000000~1", "3~1~2", "3~11111111111111111", "hello"] {
            assert_eq!(Offset::parse(bad), None, "{bad:?}");
        }
    }
}
