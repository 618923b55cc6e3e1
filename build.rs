//! Compiles the inter-node protobuf schemas under `proto/` with prost, parsing them with protox so
//! that no `protoc` binary is needed. The generated module is included once, by
//! `src/cluster/wire.rs`.

use std::error::Error;

const PROTOS: &[&str] = &[
    "proto/ioswarm/cluster/v1/envelope.proto",
    "proto/ioswarm/cluster/v1/broadcast.proto",
    "proto/ioswarm/cluster/v1/gossip.proto",
    "proto/ioswarm/cluster/v1/request.proto",
    "proto/ioswarm/cluster/v1/raft.proto",
    "proto/ioswarm/cluster/v1/relay.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields become `bytes::Bytes`, so packets move between the wire and the fan-out
        // without a copy.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
