//! The small HTTP client the node uses to call the application: `POST` a JSON body, read a
//! bounded reply. Shared by the connect hook (`auth::hook`) and the forwarding webhooks
//! (`forward`): hyper-util's legacy client over rustls, HTTP/1.1, pooled connections.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long an idle connection to the app is kept for the next request: under the keep-alive
/// of common app servers (Node, Apache and uvicorn close idle connections after 5 s), so that
/// the pool rarely offers a connection the app is closing (see [`JsonClient::post`]).
const POOL_IDLE: Duration = Duration::from_secs(4);

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Checks an application URL: absolute, `http` or `https`, with a host.
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        _ => Err(format!("{url:?} must be an http:// or https:// URL with a host")),
    }
}

/// Why a POST got no reply to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PostError {
    /// The app could not be reached (connection refused, reset, TLS).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The reply's body could not be read, or is larger than allowed.
    #[error("reading the body: {0}")]
    Body(String),
}

/// A pooled JSON-over-HTTP client for one URL scheme. Cheap to clone.
#[derive(Clone)]
pub(crate) struct JsonClient {
    client: Client<HttpsConnector, Full<Bytes>>,
}

impl std::fmt::Debug for JsonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonClient").finish_non_exhaustive()
    }
}

impl JsonClient {
    /// A client for `url`'s scheme: the system's root certificates for `https`, none needed for
    /// plain `http`.
    pub(crate) fn for_url(url: &Uri) -> Result<Self, String> {
        let connector = if url.scheme_str() == Some("https") {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("loading the system's root certificates for {url}: {e}"))?
                .https_or_http()
                .enable_http1()
                .build()
        } else {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build()
        };
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector);
        Ok(Self { client })
    }

    /// POSTs `body` (JSON) to `url`; returns the status and at most `max_reply` bytes of body.
    /// No timeout of its own: the caller bounds the whole call.
    ///
    /// A request whose connection closes before the reply is sent once more, on a new
    /// connection: an app closes an idle kept-alive connection when its own keep-alive ends,
    /// and one of ours can be on its way on it just then. Callers already treat a failed call
    /// as one to try again (the connect hook asks a question, webhooks are retried).
    pub(crate) async fn post(
        &self,
        url: &Uri,
        body: Bytes,
        max_reply: usize,
    ) -> Result<(StatusCode, Bytes), PostError> {
        let request = || {
            Request::post(url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::USER_AGENT, concat!("ioswarm/", env!("CARGO_PKG_VERSION")))
                .body(Full::new(body.clone()))
                .map_err(|e| PostError::Unreachable(e.to_string()))
        };
        let res = match self.client.request(request()?).await {
            Err(err) if !err.is_connect() => {
                tracing::debug!(%url, error = %error_chain(&err), "the app closed the connection; sending again");
                self.client.request(request()?).await
            }
            other => other,
        }
        .map_err(|e| PostError::Unreachable(error_chain(&e)))?;
        let status = res.status();
        let body = Limited::new(res.into_body(), max_reply)
            .collect()
            .await
            .map_err(|e| PostError::Body(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

/// An error with its causes, `a: b: c`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An app whose keep-alive ends as a connection's second request arrives: it answers each
    /// connection's first request and closes the connection on the second without a reply.
    /// Counts the requests it read.
    async fn app_closing_kept_alive_connections(
        listener: tokio::net::TcpListener,
        requests: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                for n in 0..2 {
                    if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n == 0 {
                        sock.write_all(REPLY).await.unwrap();
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn a_request_on_a_connection_the_app_closes_is_sent_again_on_a_new_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = parse_url(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = tokio::spawn(app_closing_kept_alive_connections(listener, requests.clone()));
        let client = JsonClient::for_url(&url).unwrap();
        let calls = async {
            for _ in 0..2 {
                let (status, body) = client.post(&url, Bytes::from_static(b"{}"), 64).await.unwrap();
                assert_eq!((status, &body[..]), (StatusCode::OK, &b"{}"[..]));
                // The first connection goes back to the pool (a task of the client's), so that
                // the second request is sent on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), calls).await.expect("both calls answered");
        app.abort();
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3, "the second request was sent twice");
    }

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        parse_url("http://127.0.0.1:8080/socket-auth").unwrap();
        parse_url("https://app.example/auth").unwrap();
        for bad in ["ftp://x/", "127.0.0.1:8080/x", "/socket-auth", "http://", "not a url", ""] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
