//! Emitter channel names: `<key>#<nsp>#` and `<key>#<nsp>#<room>#` carry broadcasts,
//! `<key>-request#<nsp>#` carries requests (`<key>` is the emitters' `key` option, normally
//! [`DEFAULT_KEY`]), and `<any key>#emitter` carries the broadcasts of the emitters written for
//! socket.io 1.x (docs/protocol.md#emitters-of-socketio-1x). Pure: a channel name in, what it
//! says out.

/// The channel prefix emitters use unless configured otherwise (their `key` option).
pub(crate) const DEFAULT_KEY: &str = "socket.io";

/// What an emitter channel name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmitterChannel<'a> {
    /// `<key>#<nsp>#` (no room) or `<key>#<nsp>#<room>#`.
    Broadcast {
        /// The namespace, e.g. `/` or `/chat`.
        nsp: &'a str,
        /// The room, when the emitter targeted exactly one.
        room: Option<&'a str>,
    },
    /// `<key>-request#<nsp>#`.
    Request {
        /// The namespace.
        nsp: &'a str,
    },
    /// `<key>#emitter`: a broadcast of a socket.io 1.x emitter (`[packet, opts]`, the namespace in
    /// the packet). Any key is accepted, not only the bridge's: those emitters put no namespace
    /// or room in the channel, and socket.io-redis 0.1.x read every `<its key>#*` channel.
    Legacy {
        /// The emitter's key (`socket.io` unless the application configured another).
        key: &'a str,
    },
}

/// The suffix socket.io 1.x emitters append to their key.
const LEGACY_SUFFIX: &str = "#emitter";

/// Classifies `channel` for emitters using the prefix `key` (normally [`DEFAULT_KEY`]); `None`
/// for every other channel.
pub(crate) fn classify<'a>(key: &str, channel: &'a [u8]) -> Option<EmitterChannel<'a>> {
    if let Some(legacy) = channel.strip_suffix(LEGACY_SUFFIX.as_bytes())
        && !legacy.is_empty()
        && !legacy.contains(&b'#')
        && let Ok(key) = std::str::from_utf8(legacy)
    {
        return Some(EmitterChannel::Legacy { key });
    }
    let rest = channel.strip_prefix(key.as_bytes())?;
    let channel = std::str::from_utf8(rest).ok()?;
    if let Some(rest) = channel.strip_prefix("-request#") {
        let nsp = rest.strip_suffix('#')?;
        return valid_nsp(nsp).then_some(EmitterChannel::Request { nsp });
    }
    let rest = channel.strip_prefix('#')?;
    let (nsp, rest) = rest.split_once('#')?;
    if !valid_nsp(nsp) {
        return None;
    }
    let room = match rest {
        "" => None,
        room => Some(room.strip_suffix('#')?),
    };
    Some(EmitterChannel::Broadcast { nsp, room })
}

fn valid_nsp(nsp: &str) -> bool {
    nsp.starts_with('/') && !nsp.contains('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        use EmitterChannel::*;
        fn c(ch: &str) -> Option<EmitterChannel<'_>> {
            classify(DEFAULT_KEY, ch.as_bytes())
        }
        assert_eq!(c("socket.io#/#"), Some(Broadcast { nsp: "/", room: None }));
        assert_eq!(c("socket.io#/chat#room#"), Some(Broadcast { nsp: "/chat", room: Some("room") }));
        assert_eq!(c("socket.io#/#a#b#"), Some(Broadcast { nsp: "/", room: Some("a#b") }));
        assert_eq!(c("socket.io-request#/chat#"), Some(Request { nsp: "/chat" }));
        for other in [
            "socket.io",
            "socket.io#",
            "socket.io##",
            "socket.io#/",
            "socket.io#/#room",
            "socket.io-response#/#",
            "news",
            "socket.io#chat#",
            "socket.io-request#/#x#",
        ] {
            assert_eq!(c(other), None, "{other}");
        }
        assert_eq!(classify("myapp", b"myapp#/#"), Some(Broadcast { nsp: "/", room: None }));
        // socket.io 1.x emitters: `<key>#emitter`, whatever the key.
        assert_eq!(c("socket.io#emitter"), Some(Legacy { key: "socket.io" }));
        assert_eq!(c("myapp#emitter"), Some(Legacy { key: "myapp" }));
        assert_eq!(classify("myapp", b"socket.io#emitter"), Some(Legacy { key: "socket.io" }));
        for other in
            ["#emitter", "emitter", "socket.io#emitter#", "socket.io#/#emitter", "a#b#emitter", "socket.io#emitters"]
        {
            assert!(!matches!(c(other), Some(Legacy { .. })), "{other}");
        }
        // A room named `emitter` is still a room.
        assert_eq!(c("socket.io#/#emitter#"), Some(Broadcast { nsp: "/", room: Some("emitter") }));
    }
}
