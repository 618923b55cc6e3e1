//! The module graph runs one way: transport (`engineio`) → protocol (`socketio`, `rooms`) →
//! services (`resp`, the `emitter` bridge, `cluster`, `admin`, the binary's `app`). A lower layer
//! exposes a trait the upper one implements (`socketio::Adapter`, `resp::PublishHook`,
//! `resp::kv::KvBackend`); it never names the upper one.
//!
//! This test reads every `.rs` file under the folders in [`RULES`] and fails, naming file and
//! line, when one of them refers to a module it must not use: in code, in an inline test or in a
//! doc link. It understands `crate::m`, `crate::{m, n::x}` and `super::` chains that climb to
//! the crate root.

use std::fs;
use std::path::{Path, PathBuf};

/// Per folder (or single-file module) of `src/`: the top-level modules its files must not
/// refer to.
const RULES: &[(&str, &[&str])] = &[
    // The Redis-protocol broker: below the emitter bridge and the cluster.
    ("resp", &["socketio", "engineio", "rooms", "cluster", "emitter", "app", "admin", "http", "node", "presence"]),
    // Transport and protocol layers: below every service and below the HTTP listener that
    // routes to them.
    ("engineio", &["socketio", "rooms", "resp", "cluster", "emitter", "app", "admin", "http", "node", "presence"]),
    ("rooms", &["resp", "cluster", "emitter", "app", "admin", "http", "node", "presence"]),
    ("socketio", &["resp", "cluster", "emitter", "app", "admin", "http", "node", "presence"]),
    // The emitter bridge sits above resp and socketio, beside the cluster.
    ("emitter", &["cluster", "app", "admin", "node", "presence"]),
    // The cluster is a service the node wires; it never reaches back into the wiring.
    ("cluster", &["app", "admin", "node", "emitter"]),
    // Room rules are pure data and decisions: no layer, no I/O.
    (
        "rules",
        &[
            "socketio", "engineio", "rooms", "resp", "cluster", "emitter", "app", "admin", "http", "node", "config",
            "presence",
        ],
    ),
    // CONNECT authentication: a service beside the app, which installs it.
    ("auth", &["resp", "cluster", "emitter", "app", "admin", "node"]),
    // Forwarding rules: a service beside the app, which installs it.
    ("forward", &["cluster", "emitter", "app", "admin", "node", "presence", "auth"]),
    // Pages on the Socket.IO listener: files and the HTTP answer, no service.
    (
        "statics.rs",
        &["socketio", "rooms", "resp", "cluster", "emitter", "app", "admin", "node", "presence", "auth", "forward"],
    ),
    // The plumbing every layer uses.
    (
        "net.rs",
        &["socketio", "engineio", "rooms", "resp", "cluster", "emitter", "app", "admin", "http", "node", "presence"],
    ),
];

/// One use of a top-level module: the module's name and the 1-based line it is on.
#[derive(Debug, PartialEq, Eq)]
struct Use {
    module: String,
    line: usize,
}

/// The module path of a file relative to `src/` (`resp/kv/mod.rs` → `["resp", "kv"]`).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" && stem != "main" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn line_of(text: &[u8], at: usize) -> usize {
    text[..at].iter().filter(|b| **b == b'\n').count() + 1
}

/// Reads an identifier at `at` (after whitespace); returns it and where it ends.
fn ident_at(text: &[u8], mut at: usize) -> Option<(usize, String, usize)> {
    while at < text.len() && text[at].is_ascii_whitespace() {
        at += 1;
    }
    let start = at;
    while at < text.len() && is_ident(text[at]) {
        at += 1;
    }
    (at > start).then(|| (start, String::from_utf8_lossy(&text[start..at]).into_owned(), at))
}

/// The first path segment of every element of the group `{ … }` opening at `open`.
fn group_heads(text: &[u8], open: usize, out: &mut Vec<Use>) {
    let mut depth = 0usize;
    let mut expect_head = true;
    let mut at = open;
    while at < text.len() {
        match text[at] {
            b'{' => {
                depth += 1;
                expect_head = depth == 1;
                at += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
                at += 1;
            }
            b',' => {
                expect_head = depth == 1;
                at += 1;
            }
            b if b.is_ascii_whitespace() => at += 1,
            _ if expect_head => {
                expect_head = false;
                match ident_at(text, at) {
                    Some((start, name, end)) => {
                        out.push(Use { module: name, line: line_of(text, start) });
                        at = end;
                    }
                    None => at += 1,
                }
            }
            _ => at += 1,
        }
    }
}

/// Every top-level module `text` (the source of the file at `module`) refers to.
fn top_level_uses(module: &[String], text: &str) -> Vec<Use> {
    let text = text.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let starts_path = at == 0 || !(is_ident(text[at - 1]) || text[at - 1] == b':');
        let rest = &text[at..];
        let after_root = if starts_path && rest.starts_with(b"crate::") {
            Some(at + "crate::".len())
        } else if starts_path && rest.starts_with(b"super::") {
            // `super::` climbs one module per use; enough of them reach the crate root. (Inside an
            // inline `mod tests` one more is needed, so this may see the root one step early;
            // the next segment then names a child of the file's parent, never a forbidden
            // top-level module.)
            let mut end = at;
            let mut climbs = 0;
            while text[end..].starts_with(b"super::") {
                end += "super::".len();
                climbs += 1;
            }
            if climbs >= module.len() { Some(end) } else { None }
        } else {
            None
        };
        let Some(root) = after_root else {
            at += 1;
            continue;
        };
        if text.get(root) == Some(&b'{') {
            group_heads(text, root, &mut out);
        } else if let Some((start, name, _)) = ident_at(text, root) {
            out.push(Use { module: name, line: line_of(text, start) });
        }
        at = root;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn lower_layers_never_import_upper_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (folder, forbidden) in RULES {
        let mut files = Vec::new();
        let root = src.join(folder);
        if root.is_file() {
            files.push(root);
        } else {
            rust_files(&root, &mut files);
        }
        assert!(!files.is_empty(), "src/{folder} holds no .rs file: update RULES");
        files.sort();
        for file in files {
            let relative = file.strip_prefix(&src).expect("under src/");
            let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let lines: Vec<&str> = text.lines().collect();
            for used in top_level_uses(&module_path(relative), &text) {
                if forbidden.contains(&used.module.as_str()) {
                    violations.push(format!(
                        "src/{}:{}: src/{folder}/ must not use crate::{}: {}",
                        relative.display(),
                        used.line,
                        used.module,
                        lines.get(used.line - 1).map_or("", |l| l.trim())
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the module graph must run one way (see src/lib.rs); {} violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// The scanner itself: every spelling of a path to a top-level module is seen.
#[test]
fn every_spelling_of_a_module_path_is_seen() {
    let module = module_path(Path::new("resp/kv/store.rs"));
    assert_eq!(module, ["resp", "kv", "store"]);
    let text = "use crate::cluster::message::NodeId;\n\
                /// See [`Server`](crate::socketio::Server).\n\
                use crate::{\n    rooms::Broadcast,\n    admin, self_made::{a, b},\n};\n\
                use super::super::super::emitter;\n\
                use super::super::frame;\n\
                let x = mycrate::app::run(); let y = ::crate::nope;\n";
    let seen: Vec<(String, usize)> = top_level_uses(&module, text).into_iter().map(|u| (u.module, u.line)).collect();
    let expected = [("cluster", 1), ("socketio", 2), ("rooms", 4), ("admin", 5), ("self_made", 5), ("emitter", 7)];
    assert_eq!(seen, expected.map(|(m, l)| (m.to_owned(), l)));
    assert_eq!(module_path(Path::new("resp/kv/mod.rs")), ["resp", "kv"]);
    let in_mod_rs = top_level_uses(&module_path(Path::new("resp/kv/mod.rs")), "use super::super::cluster;");
    assert_eq!(in_mod_rs, [Use { module: "cluster".to_owned(), line: 1 }]);
}
