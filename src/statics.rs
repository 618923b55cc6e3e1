//! Pages served next to Socket.IO on the same listener: `--static DIR` (index.html and assets
//! under `/`) and `--client-bundle FILE` (the socket.io-client browser bundle at
//! `<path>socket.io.js`, as the pages of the socket.io 1.x era load it).
//!
//! The checks are pure and come first: [`clean`] percent-decodes the request path and refuses
//! anything that could leave the root (`..`, `.` and dot files, backslashes, NUL and control
//! characters, `%2e%2e`, `%2f..`), [`content_type`] maps extensions, [`etag_matches`] reads
//! `If-None-Match`. Only then the filesystem is touched, on the blocking pool: the file is
//! canonicalized and must stay under the canonical root (a symlink out of the root is refused),
//! a directory serves its `index.html` (never a listing), and files larger than
//! [`MAX_FILE_BYTES`] are not read. GET and HEAD only; `ETag` from size and modification time,
//! `Cache-Control: no-cache` so browsers revalidate and get 304.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::engineio::Body;
use crate::http::Endpoint;

/// Largest file served; larger ones answer 500 and are logged (files are read whole).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Most files read at once (bounds the memory held by reads in flight).
const MAX_CONCURRENT_READS: usize = 32;
/// The file a directory request serves.
const INDEX: &str = "index.html";

/// Why a request path is refused before the filesystem is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded.
    #[error("malformed percent-encoding")]
    Malformed,
    /// A path that could leave the root or names a hidden file: a `.`/`..`/dot-file segment, a
    /// backslash, NUL or another control character, or no leading `/`.
    #[error("path not allowed")]
    Forbidden,
}

/// A request path checked and split into segments under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cleaned {
    /// Decoded segments, none empty, none starting with `.`, none holding `/` or `\`.
    segments: Vec<String>,
    /// The path ended with `/` (or was `/`): it names a directory.
    dir: bool,
}

/// Decodes `%XX` escapes; `None` on a malformed escape.
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Checks a request path (as sent, percent-encoded) and splits it; see [`PathError`].
pub(crate) fn clean(path: &str) -> Result<Cleaned, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::Forbidden);
    }
    // Reject `%2e%2e`, `%2f..` and friends on the decoded path: decode first, then split.
    let decoded = percent_decode(path).ok_or(PathError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::Malformed)?;
    if decoded.contains(|c: char| c == '\\' || c.is_control()) {
        return Err(PathError::Forbidden);
    }
    let mut segments = Vec::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') {
            return Err(PathError::Forbidden);
        }
        segments.push(segment.to_owned());
    }
    Ok(Cleaned { dir: decoded.ends_with('/'), segments })
}

/// The `Content-Type` of a file, by extension (ASCII case-insensitive).
pub(crate) fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "application/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The strong ETag of a file version: its size and modification time (ns since the epoch).
pub(crate) fn etag(len: u64, mtime_ns: u128) -> String {
    format!("\"{len:x}-{mtime_ns:x}\"")
}

/// Whether an `If-None-Match` value (a list, `*`, weak tags allowed) matches `etag`.
pub(crate) fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// What a lookup found (the blocking part of a request).
#[derive(Debug)]
enum Lookup {
    /// No such file, a directory without index, or a path leaving the root.
    NotFound,
    /// A directory named without its trailing slash: redirect so relative links resolve.
    Redirect(String),
    /// Larger than [`MAX_FILE_BYTES`].
    TooLarge(PathBuf),
    /// The client's copy is current.
    NotModified { etag: String },
    /// The file (the body left out for HEAD).
    File { etag: String, content_type: &'static str, len: u64, body: Option<Bytes> },
}

/// Opens `file`, checks it stays under `root` (canonical, when given) and reads it unless the
/// client's `If-None-Match` matches or `head`.
fn read(file: &Path, root: Option<&Path>, if_none_match: Option<&str>, head: bool) -> std::io::Result<Lookup> {
    use std::io::Read as _;
    let real = match std::fs::canonicalize(file) {
        Ok(real) => real,
        Err(e) if is_missing(&e) => return Ok(Lookup::NotFound),
        Err(e) => return Err(e),
    };
    if root.is_some_and(|root| !real.starts_with(root)) {
        return Ok(Lookup::NotFound);
    }
    let mut handle = std::fs::File::open(&real)?;
    let meta = handle.metadata()?;
    if !meta.is_file() {
        return Ok(Lookup::NotFound);
    }
    let len = meta.len();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let etag = etag(len, mtime);
    if if_none_match.is_some_and(|v| etag_matches(v, &etag)) {
        return Ok(Lookup::NotModified { etag });
    }
    if len > MAX_FILE_BYTES {
        return Ok(Lookup::TooLarge(real));
    }
    let body = if head {
        None
    } else {
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // The file may grow while it is read: never read more than the limit.
        (&mut handle).take(MAX_FILE_BYTES).read_to_end(&mut buf)?;
        Some(Bytes::from(buf))
    };
    let len = body.as_ref().map_or(len, |b| b.len() as u64);
    Ok(Lookup::File { etag, content_type: content_type(&real), len, body })
}

fn is_missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
}

/// Resolves a cleaned request path under the canonical `root` and reads it (blocking).
fn lookup(
    root: &Path,
    raw_path: &str,
    cleaned: &Cleaned,
    if_none_match: Option<&str>,
    head: bool,
) -> std::io::Result<Lookup> {
    let mut file = root.to_path_buf();
    file.extend(&cleaned.segments);
    let meta = match std::fs::metadata(&file) {
        Ok(meta) => meta,
        Err(e) if is_missing(&e) => return Ok(Lookup::NotFound),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        // A folder reached through a symlink out of the root does not exist here.
        if !std::fs::canonicalize(&file)?.starts_with(root) {
            return Ok(Lookup::NotFound);
        }
        if !cleaned.dir && !cleaned.segments.is_empty() {
            // Built from the raw segments joined by single slashes, so never `//host`.
            let raw: Vec<&str> = raw_path.split('/').filter(|s| !s.is_empty()).collect();
            return Ok(Lookup::Redirect(format!("/{}/", raw.join("/"))));
        }
        file.push(INDEX);
    } else if cleaned.dir {
        // `file.txt/` names a directory that is not one.
        return Ok(Lookup::NotFound);
    }
    read(&file, Some(root), if_none_match, head)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

fn method_not_allowed() -> Response<Body> {
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    res
}

/// The response to what a lookup found.
fn respond(lookup: std::io::Result<Lookup>) -> Response<Body> {
    let found = match lookup {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(%error, "serving a static file failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file");
        }
    };
    let cache_headers = |headers: &mut HeaderMap, etag: &str| {
        if let Ok(v) = HeaderValue::from_str(etag) {
            headers.insert(header::ETAG, v);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    };
    match found {
        Lookup::NotFound => text(StatusCode::NOT_FOUND, "not found"),
        Lookup::Redirect(location) => {
            let mut res = text(StatusCode::MOVED_PERMANENTLY, "moved");
            if let Ok(v) = HeaderValue::from_str(&location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
        Lookup::TooLarge(path) => {
            tracing::warn!(path = %path.display(), max = MAX_FILE_BYTES, "static file too large to serve");
            text(StatusCode::INTERNAL_SERVER_ERROR, "file too large")
        }
        Lookup::NotModified { etag } => {
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            cache_headers(res.headers_mut(), &etag);
            res
        }
        Lookup::File { etag, content_type, len, body } => {
            let mut res = Response::new(Full::new(body.unwrap_or_default()));
            let headers = res.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // For HEAD the body is empty and this says what GET would send.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            cache_headers(headers, &etag);
            res
        }
    }
}

/// The request parts a static answer depends on.
struct Ask {
    head: bool,
    if_none_match: Option<String>,
}

/// GET/HEAD and `If-None-Match` from a request; `None` for other methods.
fn ask(method: &Method, headers: &HeaderMap) -> Option<Ask> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Some(Ask { head: method == Method::HEAD, if_none_match })
}

/// Runs a blocking lookup under the read limit.
async fn blocking(
    permits: &Arc<Semaphore>,
    work: impl FnOnce() -> std::io::Result<Lookup> + Send + 'static,
) -> Response<Body> {
    let Ok(_permit) = permits.acquire().await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(found) => respond(found),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file"),
    }
}

/// Serves the files under one folder (`--static DIR`).
#[derive(Debug, Clone)]
pub struct StaticDir {
    root: Arc<Path>,
    permits: Arc<Semaphore>,
}

impl StaticDir {
    /// Serves `dir`; fails when it cannot be canonicalized or is not a directory.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(dir)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"));
        }
        Ok(Self { root: root.into(), permits: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)) })
    }

    /// Answers a request for `path` (as sent, percent-encoded).
    pub(crate) async fn serve(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Body> {
        let Some(ask) = ask(method, headers) else { return method_not_allowed() };
        let cleaned = match clean(path) {
            Ok(cleaned) => cleaned,
            Err(PathError::Malformed) => return text(StatusCode::BAD_REQUEST, "bad request"),
            Err(PathError::Forbidden) => return text(StatusCode::NOT_FOUND, "not found"),
        };
        let root = self.root.clone();
        let raw = path.to_owned();
        blocking(&self.permits, move || lookup(&root, &raw, &cleaned, ask.if_none_match.as_deref(), ask.head)).await
    }
}

impl Endpoint for StaticDir {
    fn call(
        &self,
        req: Request<Incoming>,
        _remote: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send + '_>> {
        Box::pin(async move { self.serve(req.method(), req.uri().path(), req.headers()).await })
    }
}

/// Serves one file at one path (`--client-bundle FILE` and the `.map` next to it); a missing
/// file answers 404, a changed one is served as it is now.
#[derive(Debug, Clone)]
pub struct StaticFile {
    file: Arc<Path>,
    permits: Arc<Semaphore>,
}

impl StaticFile {
    /// Serves `file` (not checked here: [`crate::config::Config::validate`] checks the bundle).
    pub fn new(file: &Path) -> Self {
        Self { file: file.into(), permits: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)) }
    }

    /// Answers a request for this file.
    pub(crate) async fn serve(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Body> {
        let Some(ask) = ask(method, headers) else { return method_not_allowed() };
        if path.ends_with('/') {
            return text(StatusCode::NOT_FOUND, "not found");
        }
        let file = self.file.clone();
        blocking(&self.permits, move || {
            let found = read(&file, None, ask.if_none_match.as_deref(), ask.head)?;
            // The bundle is JavaScript whatever its file is called.
            Ok(match found {
                Lookup::File { etag, len, body, .. } if file.extension().is_none_or(|e| e != "map") => {
                    Lookup::File { etag, content_type: "application/javascript; charset=utf-8", len, body }
                }
                other => other,
            })
        })
        .await
    }
}

impl Endpoint for StaticFile {
    fn call(
        &self,
        req: Request<Incoming>,
        _remote: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send + '_>> {
        Box::pin(async move { self.serve(req.method(), req.uri().path(), req.headers()).await })
    }
}

/// Checks `--static`: an existing, readable directory.
pub(crate) fn check_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            std::fs::read_dir(dir).map(|_| ()).map_err(|e| format!("{} cannot be read: {e}", dir.display()))
        }
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("{} cannot be used: {e}", dir.display())),
    }
}

/// Checks `--client-bundle`: a readable file of at most [`MAX_FILE_BYTES`].
pub(crate) fn check_file(file: &Path) -> Result<(), String> {
    let meta = std::fs::File::open(file)
        .and_then(|f| f.metadata())
        .map_err(|e| format!("{} cannot be read: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", file.display()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_FILE_BYTES} bytes", file.display()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
