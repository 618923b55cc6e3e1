//! RESP codec: request parsing (pipelines, inline commands, limits) and reply decoding, with
//! encode → decode round trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ioswarm::fuzzing::resp_frame(data);
});
