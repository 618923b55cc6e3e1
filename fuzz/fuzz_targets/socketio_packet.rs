//! Socket.IO packet codec: decode, re-encode, re-decode, binary reassembly.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ioswarm::fuzzing::socketio_packet(data);
});
