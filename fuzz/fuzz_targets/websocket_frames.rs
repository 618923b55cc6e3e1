//! WebSocket client frames: the same messages whatever the chunks the stream arrives in.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ioswarm::fuzzing::websocket_frames(data);
});
