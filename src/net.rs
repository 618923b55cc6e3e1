//! The accept loop every TCP listener of a node shares (Socket.IO, admin, Redis-protocol).
//!
//! [`Acceptor::next`] hands out one accepted connection at a time until shutdown: it stops at
//! once when the token is cancelled, backs off after a failed `accept` (EMFILE and friends)
//! instead of spinning, sets `TCP_NODELAY`, and applies the listener's connection bound in one
//! of two ways ([`WhenFull`]): wait (the client stays in the kernel's backlog until a slot
//! frees) or hand the connection over without a slot so the caller can refuse it with its
//! protocol's own error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What an acceptor does when every connection slot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Stop accepting until a slot frees; new clients wait in the listen backlog.
    Wait,
    /// Accept anyway and hand the connection over with no slot, so the caller can answer it
    /// with an error (Redis' "max number of clients reached") or drop it.
    Refuse,
}

/// One accepted TCP connection.
#[derive(Debug)]
pub struct Accepted {
    /// The connection, with `TCP_NODELAY` set.
    pub stream: TcpStream,
    /// The client's address.
    pub remote: SocketAddr,
    /// The connection's slot; `None` when the listener was full ([`WhenFull::Refuse`]).
    /// Dropping it frees the slot.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A listener with its connection bound and the shutdown token it stops on.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    when_full: WhenFull,
    shutdown: CancellationToken,
    name: &'static str,
}

impl Acceptor {
    /// Accepts on `listener` with at most `max_connections` (at least 1) held at once; `name`
    /// labels log lines (`"socketio"`, `"admin"`, `"redis"`).
    pub fn new(
        listener: TcpListener,
        max_connections: usize,
        when_full: WhenFull,
        shutdown: CancellationToken,
        name: &'static str,
    ) -> Self {
        Self { listener, slots: Arc::new(Semaphore::new(max_connections.max(1))), when_full, shutdown, name }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connection slots free right now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// The next connection, or `None` once shutdown started.
    pub async fn next(&self) -> Option<Accepted> {
        loop {
            let permit = match self.when_full {
                WhenFull::Wait => tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return None,
                    permit = self.slots.clone().acquire_owned() => Some(permit.ok()?),
                },
                WhenFull::Refuse => None,
            };
            let accepted = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let permit = permit.or_else(|| self.slots.clone().try_acquire_owned().ok());
                    return Some(Accepted { stream, remote, permit });
                }
                Err(err) => {
                    tracing::warn!(listener = self.name, %err, "accept failed; backing off");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return None,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }
}

/// The listener's slot for one TCP connection. It rides in each HTTP request's extensions so
/// that a WebSocket keeps holding it after the HTTP connection task has handed the socket over
/// (the Engine.IO endpoint takes it from there).
#[derive(Debug, Clone)]
pub(crate) struct ConnPermit(#[allow(dead_code)] pub(crate) Arc<OwnedSemaphorePermit>);

/// Binds a listener with a large accept backlog: thousands of clients connecting at once must
/// not see SYNs dropped (tokio's default is 128).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn acceptor(max: usize, when_full: WhenFull) -> (Acceptor, SocketAddr, CancellationToken) {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        (Acceptor::new(listener, max, when_full, token.clone(), "test"), addr, token)
    }

    #[tokio::test]
    async fn waits_for_a_free_slot() {
        let (acc, addr, _token) = acceptor(1, WhenFull::Wait).await;
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let first = acc.next().await.unwrap();
        assert!(first.permit.is_some());
        let _c2 = TcpStream::connect(addr).await.unwrap();
        // The second client stays in the backlog while the first holds the only slot.
        assert!(tokio::time::timeout(Duration::from_millis(200), acc.next()).await.is_err());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), acc.next()).await.unwrap().unwrap();
        assert!(second.permit.is_some());
    }

    #[tokio::test]
    async fn refuse_hands_over_connections_without_a_slot() {
        let (acc, addr, _token) = acceptor(1, WhenFull::Refuse).await;
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let first = acc.next().await.unwrap();
        let second = acc.next().await.unwrap();
        assert!(first.permit.is_some());
        assert!(second.permit.is_none());
        assert_eq!(acc.free_slots(), 0);
    }

    #[tokio::test]
    async fn stops_on_shutdown() {
        let (acc, _addr, token) = acceptor(1, WhenFull::Wait).await;
        token.cancel();
        assert!(acc.next().await.is_none());
    }
}
