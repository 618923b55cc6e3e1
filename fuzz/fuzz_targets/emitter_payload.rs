//! Socket.IO emitter payloads on the Redis ingress: msgpack broadcasts and requests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ioswarm::fuzzing::emitter_payload(data);
});
