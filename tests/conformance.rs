//! Engine.IO v4 / Socket.IO v5 wire conformance (docs/conformance.md), raw packets over long-polling
//! and WebSocket.
//!
//! Runs against `$CONFORMANCE_ADDR` (`host:port`) when set, e.g. the Node reference server in
//! `tests/reference/`:
//!
//! ```text
//! cd tests/reference && npm ci && node conformance-server.mjs 3000 &
//! CONFORMANCE_ADDR=127.0.0.1:3000 cargo test --test conformance
//! ```
//!
//! Otherwise it starts the in-process conformance server (`examples/conformance.rs`, ioswarm)
//! once per test binary on `127.0.0.1:0`.

#[path = "conformance/engineio.rs"]
mod engineio;
#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/socketio.rs"]
mod socketio;

/// The ioswarm conformance server (`cargo run --example conformance`).
#[allow(dead_code, unreachable_pub, missing_debug_implementations)]
#[path = "../examples/conformance.rs"]
mod conformance_app;

/// Starts the in-process conformance server on `127.0.0.1:0` in a thread of its own (its runtime
/// must outlive every test's runtime) and returns its address.
fn start_in_process() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let addr = listener.local_addr().expect("listener address");
    std::thread::Builder::new()
        .name("conformance-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                conformance_app::start(listener).await;
                std::future::pending::<()>().await;
            });
        })
        .expect("spawn server thread");
    addr.to_string()
}
