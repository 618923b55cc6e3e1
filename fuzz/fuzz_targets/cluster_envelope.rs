//! Inter-node protobuf envelopes (everything a peer sends) and key-value snapshots: no panics,
//! decode → encode → decode round trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ioswarm::fuzzing::cluster_envelope(data);
});
