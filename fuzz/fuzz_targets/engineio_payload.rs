//! Engine.IO polling payload codec: decode, re-encode, re-decode.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ioswarm::fuzzing::engineio_payload(data);
});
