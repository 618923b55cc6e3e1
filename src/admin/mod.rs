//! Admin HTTP/1 server: `GET /healthz`, `GET /metrics`, and everything else delegated to
//! [`AdminRoutes`] (the `/v1/...` API lives with the code it drives).
//!
//! Bounded like the client listener: at most [`MAX_CONNECTIONS`] connections, request headers
//! within [`HEADER_READ_TIMEOUT`], bodies at most [`MAX_BODY_BYTES`] (413) read within
//! [`BODY_READ_TIMEOUT`] (408). On shutdown it stops accepting, lets in-flight requests finish
//! and closes idle keep-alive connections.
//!
//! Access: with [`AdminOptions::token`] set, every route other than `/healthz` and `/metrics`
//! (the `/v1/...` API, `/cluster...`) needs `Authorization: Bearer <token>`, compared in
//! constant time; anything else gets 401. `/healthz` answers 503 from the moment the node
//! starts draining ([`AdminOptions::draining`]), while everything else keeps being served.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::{Accepted, Acceptor, WhenFull};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most admin connections open at once; further connections are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send the request line and headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send the whole request body; slower bodies get 408.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the Prometheus recorder's upkeep (histogram draining) runs.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A boxed, sendable future borrowing the routes, as returned by [`AdminRoutes::handle`].
pub type RouteFuture<'a> = Pin<Box<dyn Future<Output = Option<Response<Bytes>>> + Send + 'a>>;

/// Admin endpoints beyond `/healthz` and `/metrics`.
pub trait AdminRoutes: Send + Sync + 'static {
    /// Answers `req` (its body already read, at most [`MAX_BODY_BYTES`]), or `None` when no
    /// route matches (the server then answers 404 `{"error":"not found"}`).
    fn handle(&self, req: Request<Bytes>) -> Pin<Box<dyn Future<Output = Option<Response<Bytes>>> + Send + '_>>;
}

/// Routes that match nothing: only `/healthz` and `/metrics` are served.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRoutes;

impl AdminRoutes for NoRoutes {
    fn handle(&self, _req: Request<Bytes>) -> RouteFuture<'_> {
        Box::pin(std::future::ready(None))
    }
}

/// A response with `body` and the given status and content type.
pub fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response; a value that cannot be serialized gives 500 `{"error":"..."}`.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Bytes> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize admin response");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialize response")
        }
    }
}

/// A JSON error response `{"error": message}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Bytes> {
    let body = serde_json::json!({ "error": message }).to_string();
    response(status, "application/json", body)
}

/// Access control and health state of the admin listener.
#[derive(Clone, Default)]
pub struct AdminOptions {
    /// When set, routes other than `/healthz` and `/metrics` need `Authorization: Bearer
    /// <token>` (`--admin-token`).
    pub token: Option<String>,
    /// Cancelled when the node starts draining: `/healthz` answers 503 from then on, so a load
    /// balancer takes the node out while it still serves its clients.
    pub draining: CancellationToken,
    /// Run before every `/metrics` render: sets the gauges sampled at scrape time (queue depths,
    /// task counts) rather than kept up to date on every change.
    pub sample: Option<Arc<dyn Fn() + Send + Sync>>,
}

// Hand-written so that logging the options never prints the token.
impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("draining", &self.draining.is_cancelled())
            .field("sample", &self.sample.is_some())
            .finish()
    }
}

/// Shared by every connection.
struct Ctx {
    handle: PrometheusHandle,
    routes: Arc<dyn AdminRoutes>,
    options: AdminOptions,
    shutdown: CancellationToken,
}

impl Ctx {
    /// Whether `req` may use the protected routes: no token configured, or the request's
    /// bearer token equals it (constant-time comparison, so timing does not leak a prefix).
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some(expected) = &self.options.token else { return true };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
    }
}

/// Serves the admin API on `listener` until `shutdown` is cancelled, then stops accepting and
/// returns once every in-flight request has been answered and every connection closed.
///
/// Also runs the Prometheus recorder's upkeep every 5 s while serving.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    routes: Arc<dyn AdminRoutes>,
    options: AdminOptions,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    tracker.spawn(upkeep(handle.clone(), shutdown.clone()));

    let ctx = Arc::new(Ctx { handle, routes, options, shutdown: shutdown.clone() });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(64 * 1024);
    let acceptor = Acceptor::new(listener, MAX_CONNECTIONS, WhenFull::Refuse, shutdown.clone(), "admin");

    while let Some(Accepted { stream, remote: peer, permit }) = acceptor.next().await {
        let Some(permit) = permit else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "admin connection limit reached");
            drop(stream);
            continue;
        };
        let conn = serve_connection(builder.clone(), stream, ctx.clone());
        tracker.spawn(
            async move {
                conn.await;
                drop(permit);
            }
            .instrument(tracing::debug_span!("admin_conn", %peer)),
        );
    }

    drop(acceptor);
    tracker.close();
    tracker.wait().await;
    tracing::debug!("admin server stopped");
}

/// Runs the recorder's upkeep until cancelled.
async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// Serves one connection; on shutdown finishes the request in flight, then closes.
async fn serve_connection(builder: http1::Builder, stream: TcpStream, ctx: Arc<Ctx>) {
    let shutdown = ctx.shutdown.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(respond(&ctx, req).await.map(Full::new)) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

/// Answers one request.
async fn respond(ctx: &Ctx, req: Request<Incoming>) -> Response<Bytes> {
    match req.uri().path() {
        "/healthz" | "/metrics" if req.method() != Method::GET && req.method() != Method::HEAD => {
            let mut resp = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            resp
        }
        "/healthz" if ctx.shutdown.is_cancelled() || ctx.options.draining.is_cancelled() => {
            response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down")
        }
        "/healthz" => response(StatusCode::OK, "text/plain", "ok"),
        "/metrics" => {
            if let Some(sample) = &ctx.options.sample {
                sample();
            }
            response(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, ctx.handle.render())
        }
        _ if !ctx.authorized(&req) => {
            let mut resp = json_error(StatusCode::UNAUTHORIZED, "unauthorized: this route needs the admin token");
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
        _ => {
            let req = match read_body(req).await {
                Ok(req) => req,
                Err(resp) => return resp,
            };
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            match ctx.routes.handle(req).await {
                Some(resp) => resp,
                None => {
                    tracing::debug!(%method, path, "no admin route");
                    json_error(StatusCode::NOT_FOUND, "not found")
                }
            }
        }
    }
}

/// Reads the body (at most [`MAX_BODY_BYTES`], within [`BODY_READ_TIMEOUT`]).
async fn read_body(req: Request<Incoming>) -> Result<Request<Bytes>, Response<Bytes>> {
    let too_large =
        || json_error(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body larger than {MAX_BODY_BYTES} bytes"));
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect());
    match collected.await {
        Ok(Ok(body)) => Ok(Request::from_parts(parts, body.to_bytes())),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read admin request body");
            Err(json_error(StatusCode::BAD_REQUEST, "cannot read request body"))
        }
        Err(_) => Err(json_error(StatusCode::REQUEST_TIMEOUT, "request body timed out")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;

    /// `POST /echo` returns the body; `GET /slow` answers once `release` is notified.
    struct TestRoutes {
        entered: Notify,
        release: Notify,
    }

    impl AdminRoutes for TestRoutes {
        fn handle(&self, req: Request<Bytes>) -> RouteFuture<'_> {
            Box::pin(async move {
                match (req.method(), req.uri().path()) {
                    (&Method::POST, "/echo") => {
                        Some(response(StatusCode::OK, "application/octet-stream", req.into_body()))
                    }
                    (&Method::GET, "/slow") => {
                        self.entered.notify_one();
                        self.release.notified().await;
                        Some(json_response(StatusCode::OK, &serde_json::json!({"slow": true})))
                    }
                    _ => None,
                }
            })
        }
    }

    struct Server {
        addr: SocketAddr,
        routes: Arc<TestRoutes>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(handle: PrometheusHandle) -> Server {
        start_with(handle, AdminOptions::default()).await
    }

    async fn start_with(handle: PrometheusHandle, options: AdminOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(TestRoutes { entered: Notify::new(), release: Notify::new() });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, handle, routes.clone(), options, shutdown.clone()));
        Server { addr, routes, shutdown, task }
    }

    fn test_handle() -> PrometheusHandle {
        crate::metrics::builder().unwrap().build_recorder().handle()
    }

    /// Sends `raw` and reads until the server closes; returns (status, headers, body).
    async fn request(addr: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await.unwrap().unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(buf[..split].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head, buf[split + 4..].to_vec())
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").into_bytes()
    }

    #[tokio::test]
    async fn healthz_ok() {
        let s = start(test_handle()).await;
        let (status, head, body) = request(s.addr, &get("/healthz")).await;
        assert_eq!(status, 200);
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
        assert_eq!(body, b"ok");
        s.shutdown.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn metrics_renders_described_metric() {
        let recorder = crate::metrics::builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            crate::metrics::describe();
            metrics::counter!(crate::metrics::ENGINE_UPGRADES).increment(3);
        });
        let s = start(handle).await;
        let (status, head, body) = request(s.addr, &get("/metrics")).await;
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, 200);
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert!(body.contains("# TYPE ioswarm_engine_upgrades_total counter"), "{body}");
        assert!(body.contains("ioswarm_engine_upgrades_total 3"), "{body}");
        s.shutdown.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn every_metrics_read_samples_the_gauges_first() {
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = reads.clone();
        let sample: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let s = start_with(test_handle(), AdminOptions { sample: Some(sample), ..AdminOptions::default() }).await;
        for expected in [1, 2] {
            assert_eq!(request(s.addr, &get("/metrics")).await.0, 200);
            assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), expected);
        }
        assert_eq!(request(s.addr, &get("/healthz")).await.0, 200);
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 2, "only /metrics samples");
        s.shutdown.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn unknown_path_is_json_404() {
        let s = start(test_handle()).await;
        let (status, head, body) = request(s.addr, &get("/nope")).await;
        assert_eq!(status, 404);
        assert!(head.contains("application/json"), "{head}");
        assert_eq!(body, br#"{"error":"not found"}"#);
        let (status, _, _) =
            request(s.addr, b"POST /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .await;
        assert_eq!(status, 405);
        s.shutdown.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn body_reaches_routes_and_oversize_is_413() {
        let s = start(test_handle()).await;
        let (status, _, body) =
            request(s.addr, b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
                .await;
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));

        let raw = format!(
            "POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let (status, _, body) = request(s.addr, raw.as_bytes()).await;
        assert_eq!(status, 413);
        assert!(String::from_utf8(body).unwrap().contains("larger than"));
        s.shutdown.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_finishes_in_flight_request_then_stops() {
        let s = start(test_handle()).await;
        let addr = s.addr;
        let slow = tokio::spawn(async move { request(addr, &get("/slow")).await });
        s.routes.entered.notified().await;

        s.shutdown.cancel();
        // The server waits for the request in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!s.task.is_finished());

        s.routes.release.notify_one();
        let (status, _, body) = slow.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, br#"{"slow":true}"#);
        tokio::time::timeout(Duration::from_secs(5), s.task).await.unwrap().unwrap();
        // No longer accepting.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn idle_keep_alive_connection_does_not_block_shutdown() {
        let s = start(test_handle()).await;
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        s.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), s.task).await.unwrap().unwrap();
        // The server closed the idle connection.
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }

    fn post_echo(auth: Option<&str>) -> Vec<u8> {
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        format!("POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}Content-Length: 2\r\n\r\nhi").into_bytes()
    }

    #[tokio::test]
    async fn token_guards_routes_but_not_health_and_metrics() {
        let options = AdminOptions { token: Some("s3cret".to_owned()), ..AdminOptions::default() };
        let s = start_with(test_handle(), options).await;
        for auth in [None, Some("Bearer wrong"), Some("Bearer s3cre"), Some("Basic s3cret"), Some("s3cret")] {
            let (status, head, body) = request(s.addr, &post_echo(auth)).await;
            assert_eq!(status, 401, "{auth:?}");
            assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
            assert!(String::from_utf8(body).unwrap().contains("unauthorized"));
        }
        let (status, _, body) = request(s.addr, &post_echo(Some("Bearer s3cret"))).await;
        assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));
        // Unknown paths are not revealed without the token either.
        assert_eq!(request(s.addr, &get("/nope")).await.0, 401);
        assert_eq!(request(s.addr, &get("/healthz")).await.0, 200);
        assert_eq!(request(s.addr, &get("/metrics")).await.0, 200);
        s.shutdown.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn draining_fails_health_but_keeps_serving() {
        let options = AdminOptions::default();
        let draining = options.draining.clone();
        let s = start_with(test_handle(), options).await;
        assert_eq!(request(s.addr, &get("/healthz")).await.0, 200);
        draining.cancel();
        let (status, _, body) = request(s.addr, &get("/healthz")).await;
        assert_eq!((status, body.as_slice()), (503, &b"shutting down"[..]));
        let (status, _, body) = request(s.addr, &post_echo(None)).await;
        assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));
        assert_eq!(request(s.addr, &get("/metrics")).await.0, 200);
        s.shutdown.cancel();
        s.task.await.unwrap();
    }
}
