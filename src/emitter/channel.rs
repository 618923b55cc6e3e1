//! Emitter channel names: `<key>#<nsp>#` and `<key>#<nsp>#<room>#` carry broadcasts,
//! `<key>-request#<nsp>#` carries requests (`<key>` is the emitters' `key` option, normally
//! [`DEFAULT_KEY`]). Pure: a channel name in, what it says out.

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
}

/// Classifies `channel` for emitters using the prefix `key` (normally [`DEFAULT_KEY`]); `None`
/// for every other channel.
pub(crate) fn classify<'a>(key: &str, channel: &'a [u8]) -> Option<EmitterChannel<'a>> {
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
    }
}
