//! Client WebSocket frames into messages, without a read buffer per connection.
//!
//! fastwebsockets' own reader owns an 8 KiB buffer for as long as the connection lives; with
//! thousands of idle clients that buffer is most of a connection's memory. Here the socket is
//! read into a buffer on the reading thread's stack only when it has data, and a connection
//! keeps nothing between frames but the bytes of a frame that has not fully arrived (and of a
//! fragmented message being reassembled).
//!
//! Each complete frame is still parsed and checked by fastwebsockets (reserved bits, opcodes,
//! control-frame rules, close codes, UTF-8 of text frames, unmasking): one parser per thread
//! is fed exactly one frame at a time. Only the frame's length is read here, the same way
//! fastwebsockets reads it, to know where a frame ends. Pure: bytes in, messages out.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use fastwebsockets::{OpCode, Role, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, ReadBuf};

/// Frames up to this size keep using the per-thread parser's buffer; after a larger one the
/// parser is replaced so that its buffer shrinks back.
const PARSER_KEEP: usize = 64 * 1024;

/// What the client sent, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A complete text message (every frame reassembled).
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A frame the client is owed at once: the pong for its ping, the echo of its close.
    Reply(OpCode, Bytes),
    /// The client closed the WebSocket (nothing after it is read).
    Close,
}

/// One connection's read state: the unfinished frame and message, and the messages decoded
/// but not taken yet. Holds no allocation while the connection is idle.
#[derive(Debug)]
pub(crate) struct FrameReader {
    max_payload: usize,
    /// The bytes of a frame that has not fully arrived (empty, unallocated, between frames).
    pending: Vec<u8>,
    /// A fragmented message being reassembled: its opcode and the payload so far.
    partial: Option<(OpCode, Vec<u8>)>,
    ready: VecDeque<Incoming>,
    /// Set once the client closed or sent something invalid: nothing more is decoded.
    done: bool,
}

impl FrameReader {
    /// A reader that refuses messages larger than `max_payload` bytes.
    pub(crate) fn new(max_payload: usize) -> Self {
        Self { max_payload, pending: Vec::new(), partial: None, ready: VecDeque::new(), done: false }
    }

    /// The next decoded message, if any.
    pub(crate) fn pop(&mut self) -> Option<Incoming> {
        let next = self.ready.pop_front();
        if self.ready.is_empty() && self.ready.capacity() > 0 {
            // An idle connection keeps no queue.
            self.ready = VecDeque::new();
        }
        next
    }

    /// Decodes `data`, the next bytes of the stream. Messages decoded before an error are
    /// still returned by [`Self::pop`]; the error comes after them.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), WebSocketError> {
        if self.done {
            return Ok(());
        }
        let result = (|| {
            if !self.pending.is_empty() {
                let taken = self.complete_pending(data)?;
                data = &data[taken..];
            }
            while !data.is_empty() && self.pending.is_empty() && !self.done {
                match self.extent(data)? {
                    Some(len) if len <= data.len() => {
                        self.parse(&data[..len])?;
                        data = &data[len..];
                    }
                    Some(len) => {
                        // Only what this frame needs, and only until it is complete.
                        self.pending.reserve_exact(len);
                        self.pending.extend_from_slice(data);
                        data = &[];
                    }
                    None => {
                        self.pending.extend_from_slice(data);
                        data = &[];
                    }
                }
            }
            Ok(())
        })();
        if result.is_err() {
            self.done = true;
        }
        result
    }

    /// When an unfinished frame still needs more bytes than `chunk`, its buffer, sized for the
    /// whole frame: the caller reads straight into its spare capacity, then calls
    /// [`Self::tail_filled`]. Never more than the frame's own bytes fit.
    pub(crate) fn large_tail(&mut self, chunk: usize) -> Option<&mut Vec<u8>> {
        let len = self.extent(&self.pending).ok().flatten()?;
        let missing = len - self.pending.len();
        if missing <= chunk {
            return None;
        }
        self.pending.reserve_exact(missing);
        Some(&mut self.pending)
    }

    /// The buffer [`Self::large_tail`] lent was read into: decodes the frame once complete.
    pub(crate) fn tail_filled(&mut self) -> Result<(), WebSocketError> {
        let result = self.complete_pending(&[]).map(|_| ());
        if result.is_err() {
            self.done = true;
        }
        result
    }

    /// Adds bytes from `data` to the unfinished frame; decodes it once complete. Returns how
    /// many bytes of `data` it took.
    fn complete_pending(&mut self, data: &[u8]) -> Result<usize, WebSocketError> {
        let mut taken = 0;
        let len = loop {
            if let Some(len) = self.extent(&self.pending)? {
                break len;
            }
            // The header itself is incomplete: one byte at a time (at most 14).
            let Some(&byte) = data.get(taken) else { return Ok(taken) };
            self.pending.push(byte);
            taken += 1;
        };
        let want = (len - self.pending.len()).min(data.len() - taken);
        self.pending.reserve_exact(len - self.pending.len());
        self.pending.extend_from_slice(&data[taken..taken + want]);
        taken += want;
        if self.pending.len() == len {
            let frame = std::mem::take(&mut self.pending);
            self.parse(&frame)?;
        }
        Ok(taken)
    }

    /// The whole length of the frame `buf` starts with, once its header is there; reads the
    /// header the way fastwebsockets does. A frame larger than a message may be is refused
    /// before any of its payload is kept.
    fn extent(&self, buf: &[u8]) -> Result<Option<usize>, WebSocketError> {
        let [_, second, rest @ ..] = buf else { return Ok(None) };
        let masked = second & 0x80 != 0;
        let (extra, code) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let header = 2 + extra + if masked { 4 } else { 0 };
        if buf.len() < header {
            return Ok(None);
        }
        let payload = match code {
            Some(n) => n,
            None if extra == 2 => u64::from(u16::from_be_bytes([rest[0], rest[1]])),
            None => u64::from_be_bytes(rest[..8].try_into().map_err(|_| WebSocketError::FrameTooLarge)?),
        };
        match usize::try_from(payload) {
            Ok(n) if n <= self.max_payload => Ok(Some(header + n)),
            _ => Err(WebSocketError::FrameTooLarge),
        }
    }

    /// Parses one complete frame (exactly its bytes) and adds what it means to the queue.
    fn parse(&mut self, frame: &[u8]) -> Result<(), WebSocketError> {
        let (fin, opcode, payload) = parse_frame(frame)?;
        match (opcode, self.partial.as_mut()) {
            (OpCode::Close, _) => {
                self.ready.push_back(Incoming::Reply(OpCode::Close, payload));
                self.ready.push_back(Incoming::Close);
                self.done = true;
            }
            (OpCode::Ping, _) => self.ready.push_back(Incoming::Reply(OpCode::Pong, payload)),
            (OpCode::Pong, _) => {}
            (OpCode::Text | OpCode::Binary, None) if fin => self.ready.push_back(message(opcode, payload)),
            (OpCode::Text | OpCode::Binary, None) => self.partial = Some((opcode, payload.to_vec())),
            (OpCode::Continuation, Some((_, buf))) => {
                if buf.len() + payload.len() > self.max_payload {
                    return Err(WebSocketError::FrameTooLarge);
                }
                buf.extend_from_slice(&payload);
                if fin && let Some((op, buf)) = self.partial.take() {
                    self.ready.push_back(message(op, Bytes::from(buf)));
                }
            }
            // A new data frame inside a fragmented message, or a stray continuation.
            (OpCode::Text | OpCode::Binary | OpCode::Continuation, _) => {
                return Err(WebSocketError::InvalidContinuationFrame);
            }
        }
        Ok(())
    }
}

fn message(opcode: OpCode, payload: Bytes) -> Incoming {
    if opcode == OpCode::Text { Incoming::Text(payload) } else { Incoming::Binary(payload) }
}

/// The bytes the per-thread parser reads: one frame at a time.
#[derive(Default)]
struct Input {
    bytes: Vec<u8>,
    at: usize,
}

/// The parser's stream: reads [`Input`], shared with whoever fills it.
struct Feed(Rc<RefCell<Input>>);

impl AsyncRead for Feed {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let mut input = self.0.borrow_mut();
        let n = (input.bytes.len() - input.at).min(buf.remaining());
        buf.put_slice(&input.bytes[input.at..input.at + n]);
        input.at += n;
        Poll::Ready(Ok(()))
    }
}

/// A fastwebsockets reader and the input it reads.
struct Parser {
    input: Rc<RefCell<Input>>,
    read: WebSocketRead<Feed>,
}

impl Parser {
    fn new() -> Self {
        let input = Rc::new(RefCell::new(Input::default()));
        let (mut read, _) = fastwebsockets::after_handshake_split(Feed(input.clone()), tokio::io::sink(), Role::Server);
        // Sizes are checked before a frame gets here; pings are answered by the caller (the
        // parser's auto-pong would go on to read a next frame that is not there).
        read.set_max_message_size(usize::MAX);
        read.set_auto_pong(false);
        read.set_auto_close(true);
        Self { input, read }
    }
}

thread_local! {
    static PARSER: RefCell<Option<Parser>> = const { RefCell::new(None) };
}

/// Parses exactly one frame with this thread's fastwebsockets reader; returns its fin bit,
/// opcode and unmasked payload.
fn parse_frame(frame: &[u8]) -> Result<(bool, OpCode, Bytes), WebSocketError> {
    PARSER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let parser = slot.get_or_insert_with(Parser::new);
        {
            let mut input = parser.input.borrow_mut();
            input.bytes.clear();
            input.bytes.extend_from_slice(frame);
            input.at = 0;
        }
        // The parser owes the client a frame only for a close (echoed by the caller from the
        // frame itself) or an invalid close code (the connection is closed for that error).
        let mut send_fn = |_: fastwebsockets::Frame<'_>| std::future::ready(Ok::<(), WebSocketError>(()));
        let parsed = {
            let mut read = std::pin::pin!(parser.read.read_frame(&mut send_fn));
            match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(parsed) => parsed.map(|f| (f.fin, f.opcode, Bytes::copy_from_slice(&f.payload))),
                // The input holds the whole frame: the parser never waits.
                Poll::Pending => Err(WebSocketError::UnexpectedEOF),
            }
        };
        let clean = parser.input.borrow().at == frame.len();
        if parsed.is_err() || !clean || frame.len() > PARSER_KEEP {
            // After an error the parser may hold part of a frame; after a large frame, a large
            // buffer. Start afresh.
            *slot = None;
        } else {
            parser.input.borrow_mut().bytes.clear();
        }
        parsed
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | u8::try_from(n).unwrap()),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn drain(r: &mut FrameReader) -> Vec<Incoming> {
        std::iter::from_fn(|| r.pop()).collect()
    }

    fn text(s: &str) -> Incoming {
        Incoming::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut r = FrameReader::new(1000);
        let data = [frame(true, 1, b"4hello"), frame(true, 2, b"\x01\x02"), frame(true, 1, b"3")].concat();
        r.feed(&data).unwrap();
        assert_eq!(drain(&mut r), [text("4hello"), Incoming::Binary(Bytes::from_static(b"\x01\x02")), text("3")]);
        assert_eq!(r.pending.capacity(), 0);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_messages() {
        let big = "x".repeat(70_000);
        let data = [
            frame(true, 1, b"4first"),
            frame(true, 9, b"ping"),
            frame(false, 1, b"4frag"),
            frame(true, 0, b"mented"),
            frame(true, 1, big.as_bytes()),
            frame(true, 1, &[b'4'; 300]),
        ]
        .concat();
        let expected = [
            text("4first"),
            Incoming::Reply(OpCode::Pong, Bytes::from_static(b"ping")),
            text("4fragmented"),
            text(&big),
            Incoming::Text(Bytes::from(vec![b'4'; 300])),
        ];
        for chunk in [1, 2, 3, 7, 13, 200, 4096, data.len()] {
            let mut r = FrameReader::new(100_000);
            for part in data.chunks(chunk) {
                r.feed(part).unwrap();
            }
            assert_eq!(drain(&mut r), expected, "chunks of {chunk}");
            assert!(r.pending.is_empty() && r.partial.is_none());
        }
    }

    #[test]
    fn the_fuzz_target_holds_on_valid_and_broken_streams() {
        let stream =
            [frame(true, 1, b"4hello"), frame(false, 2, b"ab"), frame(true, 0, b"cd"), frame(true, 9, b"")].concat();
        for chunk in [0u8, 1, 2, 5, 255] {
            crate::fuzzing::websocket_frames(&[&[chunk][..], &stream].concat());
            crate::fuzzing::websocket_frames(&[&[chunk][..], &stream, &[0xc1, 0x80, 0, 0, 0, 0][..], &stream].concat());
            crate::fuzzing::websocket_frames(&[&[chunk][..], &stream[..stream.len() - 3]].concat());
        }
    }

    #[test]
    fn a_large_frame_can_be_read_straight_into_its_own_buffer() {
        let payload = vec![b'4'; 50_000];
        let data = frame(true, 1, &payload);
        let mut r = FrameReader::new(100_000);
        r.feed(&data[..10]).unwrap();
        let tail = r.large_tail(8192).unwrap();
        assert_eq!(tail.capacity(), data.len());
        tail.extend_from_slice(&data[10..]);
        r.tail_filled().unwrap();
        assert_eq!(drain(&mut r), [Incoming::Text(Bytes::from(payload))]);
        assert!(r.large_tail(8192).is_none());
    }

    #[test]
    fn a_frame_larger_than_the_limit_is_refused_from_its_header() {
        let mut r = FrameReader::new(100);
        let data = frame(true, 1, &[b'4'; 101]);
        assert!(matches!(r.feed(&data[..6]), Err(WebSocketError::FrameTooLarge)));
        // Nothing more is decoded after an error.
        r.feed(&frame(true, 1, b"4")).unwrap();
        assert_eq!(drain(&mut r), []);
        let mut r = FrameReader::new(100);
        r.feed(&frame(true, 1, &[b'4'; 100])).unwrap();
        assert_eq!(drain(&mut r).len(), 1);
    }

    #[test]
    fn a_fragmented_message_larger_than_the_limit_is_refused() {
        let mut r = FrameReader::new(10);
        r.feed(&frame(false, 1, b"4abcdef")).unwrap();
        assert!(matches!(r.feed(&frame(true, 0, b"ghijk")), Err(WebSocketError::FrameTooLarge)));
    }

    #[test]
    fn invalid_frames_are_errors_and_messages_before_them_are_kept() {
        let cases: [(Vec<u8>, &str); 5] = [
            (vec![0xc1, 0x80, 0, 0, 0, 0], "reserved bit"),
            (vec![0x83, 0x80, 0, 0, 0, 0], "unknown opcode"),
            (frame(false, 9, b""), "fragmented ping"),
            (frame(true, 0, b"x"), "stray continuation"),
            (frame(true, 1, b"\xff"), "text that is not UTF-8"),
        ];
        for (bad, why) in cases {
            let mut r = FrameReader::new(1000);
            let data = [frame(true, 1, b"4ok"), bad].concat();
            assert!(r.feed(&data).is_err(), "{why}");
            assert_eq!(drain(&mut r), [text("4ok")], "{why}");
        }
        // The thread's parser is still fine afterwards.
        let mut r = FrameReader::new(1000);
        r.feed(&frame(true, 1, b"4again")).unwrap();
        assert_eq!(drain(&mut r), [text("4again")]);
    }

    #[test]
    fn a_data_frame_inside_a_fragmented_message_is_an_error() {
        let mut r = FrameReader::new(1000);
        let data = [frame(false, 1, b"4a"), frame(true, 1, b"4b")].concat();
        assert!(matches!(r.feed(&data), Err(WebSocketError::InvalidContinuationFrame)));
    }

    #[test]
    fn close_is_echoed_and_ends_the_stream() {
        let mut r = FrameReader::new(1000);
        let close = frame(true, 8, &[0x03, 0xe8, b'b', b'y', b'e']);
        let data = [close, frame(true, 1, b"4after")].concat();
        r.feed(&data).unwrap();
        assert_eq!(
            drain(&mut r),
            [Incoming::Reply(OpCode::Close, Bytes::from_static(&[0x03, 0xe8, b'b', b'y', b'e'])), Incoming::Close]
        );
    }

    #[test]
    fn a_close_with_an_invalid_code_is_an_error() {
        let mut r = FrameReader::new(1000);
        assert!(r.feed(&frame(true, 8, &[0x03, 0xec])).is_err());
    }
}
