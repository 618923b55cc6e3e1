use std::path::Path;

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;

use super::*;

fn segments(path: &str) -> Vec<String> {
    clean(path).unwrap().segments
}

#[test]
fn clean_splits_and_decodes() {
    assert_eq!(clean("/").unwrap(), Cleaned { segments: vec![], dir: true });
    assert_eq!(segments("/app.js"), ["app.js"]);
    assert_eq!(segments("/a//b/c.css"), ["a", "b", "c.css"]);
    assert_eq!(segments("/my%20page.html"), ["my page.html"]);
    assert_eq!(segments("/caf%C3%A9.txt"), ["café.txt"]);
    assert!(clean("/sub/").unwrap().dir);
    assert!(!clean("/sub").unwrap().dir);
    // An encoded slash splits like a real one.
    assert_eq!(segments("/a%2fb"), ["a", "b"]);
}

#[test]
fn clean_refuses_every_escape() {
    for path in [
        "/..",
        "/../etc/passwd",
        "/a/../../b",
        "/%2e%2e/x",
        "/%2E%2E/x",
        "/.%2e/x",
        "/a%2f..%2fb",
        "/a%2f%2e%2e",
        "/..\\x",
        "/a\\b",
        "/%5c..%5cx",
        "/a%00.html",
        "/a\u{1}",
        "/.",
        "/./a",
        "/.git/config",
        "/.env",
        "relative",
        "",
        "*",
    ] {
        assert_eq!(clean(path), Err(PathError::Forbidden), "{path:?}");
    }
    for path in ["/%", "/%2", "/%zz", "/%ff%fe"] {
        assert_eq!(clean(path), Err(PathError::Malformed), "{path:?}");
    }
}

#[test]
fn content_types_by_extension() {
    for (name, ty) in [
        ("a.html", "text/html; charset=utf-8"),
        ("A.HTM", "text/html; charset=utf-8"),
        ("a.js", "application/javascript; charset=utf-8"),
        ("a.mjs", "application/javascript; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        ("a.js.map", "application/json; charset=utf-8"),
        ("a.svg", "image/svg+xml; charset=utf-8"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.gif", "image/gif"),
        ("a.webp", "image/webp"),
        ("a.ico", "image/x-icon"),
        ("a.wasm", "application/wasm"),
        ("a.woff", "font/woff"),
        ("a.woff2", "font/woff2"),
        ("a.bin", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ] {
        assert_eq!(content_type(Path::new(name)), ty, "{name}");
    }
}

#[test]
fn if_none_match_lists_weak_tags_and_star() {
    let tag = etag(10, 0xabc);
    assert_eq!(tag, "\"a-abc\"");
    assert!(etag_matches(&tag, &tag));
    assert!(etag_matches(&format!("W/{tag}"), &tag));
    assert!(etag_matches(&format!("\"x\", {tag}"), &tag));
    assert!(etag_matches("*", &tag));
    assert!(!etag_matches("\"a-abd\"", &tag));
    assert!(!etag_matches("", &tag));
}

/// A fresh folder: `root/` with files, `root/sub/index.html`, `root/empty/`, a symlink to a file
/// outside the root and one to a file inside.
fn tree(name: &str) -> std::path::PathBuf {
    let base = std::env::temp_dir().join(format!("ioswarm-statics-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(root.join("app.js"), "console.log(1)").unwrap();
    std::fs::write(root.join("sub/index.html"), "<h1>sub</h1>").unwrap();
    std::fs::write(base.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(base.join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(base.clone(), root.join("up")).unwrap();
    std::os::unix::fs::symlink(root.join("app.js"), root.join("alias.js")).unwrap();
    root
}

async fn get(dir: &StaticDir, method: Method, path: &str, headers: HeaderMap) -> (StatusCode, HeaderMap, Bytes) {
    let res = dir.serve(&method, path, &headers).await;
    let (parts, body) = res.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn serves_files_indexes_and_refuses_the_rest() {
    let root = tree("serve");
    let dir = StaticDir::new(&root).unwrap();
    let none = HeaderMap::new;

    let (status, headers, body) = get(&dir, Method::GET, "/", none()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"<h1>home</h1>"[..]));
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    let (status, headers, body) = get(&dir, Method::GET, "/app.js", none()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"console.log(1)"[..]));
    assert_eq!(headers[header::CONTENT_TYPE], "application/javascript; charset=utf-8");
    let (status, _, body) = get(&dir, Method::GET, "/sub/", none()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"<h1>sub</h1>"[..]));
    let (status, headers, _) = get(&dir, Method::GET, "/sub", none()).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers[header::LOCATION], "/sub/");
    // A symlink inside the root is fine, and so is a path out and back in: it is a file of the root.
    assert_eq!(get(&dir, Method::GET, "/up/root/app.js", none()).await.0, StatusCode::OK);
    assert_eq!(get(&dir, Method::GET, "/alias.js", none()).await.0, StatusCode::OK);

    for path in
        ["/empty/", "/missing.js", "/app.js/", "/leak.txt", "/up", "/up/", "/up/secret.txt", "/%2e%2e/secret.txt"]
    {
        let (status, _, body) = get(&dir, Method::GET, path, none()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(&body[..], b"not found", "{path}");
    }
    assert_eq!(get(&dir, Method::GET, "/%zz", none()).await.0, StatusCode::BAD_REQUEST);
    // `//host` never becomes a protocol-relative redirect.
    let (status, headers, _) = get(&dir, Method::GET, "//sub", none()).await;
    assert_eq!(
        (status, &headers[header::LOCATION]),
        (StatusCode::MOVED_PERMANENTLY, &HeaderValue::from_static("/sub/"))
    );

    let (status, headers, _) = get(&dir, Method::POST, "/app.js", none()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET, HEAD");

    let (status, headers, body) = get(&dir, Method::HEAD, "/app.js", none()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], "14");
    assert!(body.is_empty());

    let (_, headers, _) = get(&dir, Method::GET, "/app.js", none()).await;
    let tag = headers[header::ETAG].clone();
    let mut cond = HeaderMap::new();
    cond.insert(header::IF_NONE_MATCH, tag.clone());
    let (status, headers, body) = get(&dir, Method::GET, "/app.js", cond).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[header::ETAG], tag);
    assert!(body.is_empty());
    let mut stale = HeaderMap::new();
    stale.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0-0\""));
    assert_eq!(get(&dir, Method::GET, "/app.js", stale).await.0, StatusCode::OK);

    std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn one_file_is_served_as_javascript() {
    let root = tree("file");
    let bundle = StaticFile::new(&root.join("app.js"));
    let res = bundle.serve(&Method::GET, "/socket.io/socket.io.js", &HeaderMap::new()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/javascript; charset=utf-8");
    assert!(res.headers().contains_key(header::ETAG));
    let missing = StaticFile::new(&root.join("app.js.map"));
    let res = missing.serve(&Method::GET, "/socket.io/socket.io.js.map", &HeaderMap::new()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(StaticDir::new(&root.join("app.js")).is_err());
    assert!(check_dir(&root).is_ok());
    assert!(check_dir(&root.join("app.js")).unwrap_err().contains("not a directory"));
    assert!(check_dir(&root.join("nope")).is_err());
    assert!(check_file(&root.join("app.js")).is_ok());
    assert!(check_file(&root).is_err());
    assert!(check_file(&root.join("nope.js")).is_err());
    std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
}
