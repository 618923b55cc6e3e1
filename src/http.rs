//! The HTTP listener shared by the Socket.IO and raw Engine.IO endpoints:
//! accepts connections (bounded by a semaphore so the node never runs out
//! of file descriptors), optionally runs a TLS handshake on each ([`crate::tls`]: `https://`
//! and `wss://` on the same port), serves HTTP/1.1 with upgrades, and routes by path.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engineio::{Body, Engine, Handler};
use crate::net::{Accepted, Acceptor, ConnPermit, WhenFull};
use crate::socketio::Server;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that answers HTTP requests for one path.
pub trait Endpoint: Send + Sync + 'static {
    /// Answers `req` from `remote`.
    fn call(&self, req: Request<Incoming>, remote: SocketAddr) -> BoxFuture<'_, Response<Body>>;
}

impl<H: Handler> Endpoint for Engine<H> {
    fn call(&self, req: Request<Incoming>, remote: SocketAddr) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(req, remote))
    }
}

impl Endpoint for Server {
    fn call(&self, req: Request<Incoming>, remote: SocketAddr) -> BoxFuture<'_, Response<Body>> {
        Box::pin(self.handle(req, remote))
    }
}

/// Path → endpoint. Paths match with or without their trailing slash; a request no path matches
/// goes to the fallback (static pages), or gets 404.
#[derive(Default, Clone)]
pub struct Router {
    routes: Vec<(String, Arc<dyn Endpoint>)>,
    fallback: Option<Arc<dyn Endpoint>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.iter().map(|(p, _)| p).collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Router {
    /// An empty router (every request gets 404).
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `endpoint` at `path` (e.g. `/socket.io/`).
    pub fn route(mut self, path: &str, endpoint: impl Endpoint) -> Self {
        self.routes.push((path.trim_end_matches('/').to_owned(), Arc::new(endpoint)));
        self
    }

    /// Serves `endpoint` for every request no route matches (routes keep precedence).
    pub fn fallback(mut self, endpoint: impl Endpoint) -> Self {
        self.fallback = Some(Arc::new(endpoint));
        self
    }

    async fn dispatch(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/');
        match self.routes.iter().find(|(p, _)| p == path).map(|(_, e)| e).or(self.fallback.as_ref()) {
            Some(endpoint) => endpoint.call(req, remote).await,
            None => {
                let mut res = Response::new(Full::new(Bytes::from_static(b"not found")));
                *res.status_mut() = StatusCode::NOT_FOUND;
                res
            }
        }
    }
}

/// Limits of the HTTP listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Most TCP connections held at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// How long a client may take to send request headers (and, with TLS, to complete the
    /// handshake).
    pub header_read_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self { max_connections: 10_000, header_read_timeout: Duration::from_secs(10) }
    }
}

/// Binds a listener with a large accept backlog (see [`crate::net::bind`]).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    crate::net::bind(addr, backlog)
}

/// Accepts connections on `listener` until `shutdown` is cancelled, over TLS when `tls` is
/// given (the handshake bounded by `header_read_timeout`). Every connection task is tracked by
/// `tasks`; on shutdown, idle keep-alive connections are closed and WebSockets are left to the
/// endpoints.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    tls: Option<crate::tls::ServerTls>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let router = Arc::new(router);
    let acceptor = Acceptor::new(listener, limits.max_connections, WhenFull::Wait, shutdown.clone(), "socketio");
    while let Some(Accepted { stream, remote, permit }) = acceptor.next().await {
        let Some(permit) = permit else { continue };
        let conn = Conn {
            router: router.clone(),
            remote,
            permit: ConnPermit(Arc::new(permit)),
            timeout: limits.header_read_timeout,
            shutdown: shutdown.clone(),
        };
        let tls = tls.clone();
        tasks.spawn(async move {
            match tls {
                None => conn.serve(stream).await,
                Some(tls) => {
                    // The handshake runs in the connection's task, holding its slot, so a slow
                    // client never stalls the accept loop.
                    let handshake = tokio::select! {
                        tls_stream = tls.accept(stream, conn.timeout) => tls_stream,
                        () = conn.shutdown.cancelled() => None,
                    };
                    if let Some(tls_stream) = handshake {
                        conn.serve(tls_stream).await;
                    }
                }
            }
        });
    }
}

/// One accepted connection: what its HTTP/1.1 task needs.
struct Conn {
    router: Arc<Router>,
    remote: SocketAddr,
    permit: ConnPermit,
    timeout: Duration,
    shutdown: CancellationToken,
}

impl Conn {
    /// Serves HTTP/1.1 (with upgrades) on `io`, a TCP or TLS stream, until the client leaves or
    /// shutdown closes an idle connection.
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Conn { router, remote, permit, timeout, shutdown } = self;
        let service = service_fn(move |mut req: Request<Incoming>| {
            let router = router.clone();
            req.extensions_mut().insert(permit.clone());
            async move { Ok::<_, std::convert::Infallible>(router.dispatch(req, remote).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }
}
