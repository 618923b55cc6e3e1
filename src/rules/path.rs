//! A path into a socket's data (`sub`, `org.id`, `roles.0`), shared by templates and `when`.

use std::fmt;

use serde_json::Value;

/// The roots that name the socket data itself: `claims.role` and `data.role` are both the
/// field `role` of the socket's data (the JWT claims merged with what the connect hook returned).
pub(crate) const ROOTS: [&str; 2] = ["claims", "data"];

/// A dotted path into the socket data: each segment is an object key, or an array index.
#[derive(Clone, PartialEq, Eq)]
pub struct DataPath {
    segments: Vec<String>,
}

impl fmt::Debug for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data.{}", self.segments.join("."))
    }
}

impl DataPath {
    /// Parses `a.b.c`; a leading `claims.` or `data.` is dropped when `strip_root` (so
    /// `{claims.sub}` and `{sub}` name the same field). Segments are ASCII letters, digits, `_`
    /// and `-`.
    pub(crate) fn parse(text: &str, strip_root: bool) -> Result<Self, String> {
        let mut segments: Vec<&str> = text.split('.').collect();
        if strip_root && segments.len() > 1 && ROOTS.contains(&segments[0]) {
            segments.remove(0);
        }
        for seg in &segments {
            if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(format!(
                    "{text:?} is not a field path (dot-separated names of ASCII letters, digits, '_' and '-')"
                ));
            }
        }
        Ok(Self { segments: segments.into_iter().map(str::to_owned).collect() })
    }

    /// The path naming the whole data (`claims` / `data` alone in `when`).
    pub(crate) fn root() -> Self {
        Self { segments: Vec::new() }
    }

    /// The value at this path in `data`, if there is one.
    pub(crate) fn lookup<'a>(&self, data: &'a Value) -> Option<&'a Value> {
        let mut at = data;
        for seg in &self.segments {
            at = match at {
                Value::Object(map) => map.get(seg)?,
                Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    }
}

/// The text a value stands for in a room name: a non-empty string or an integer. Anything else
/// (empty string, float, bool, null, array, object) has none, so the room is not made.
pub(crate) fn room_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_objects_arrays_and_roots() {
        let data = json!({"sub": "u1", "org": {"id": 7}, "roles": ["a", "b"]});
        let get = |p: &str| DataPath::parse(p, true).unwrap().lookup(&data).cloned();
        assert_eq!(get("sub"), Some(json!("u1")));
        assert_eq!(get("claims.sub"), Some(json!("u1")));
        assert_eq!(get("data.org.id"), Some(json!(7)));
        assert_eq!(get("roles.1"), Some(json!("b")));
        assert_eq!(get("roles.2"), None);
        assert_eq!(get("nope"), None);
        assert_eq!(get("sub.x"), None);
        assert_eq!(DataPath::root().lookup(&data), Some(&data));
    }

    #[test]
    fn bad_paths() {
        for bad in ["", "a..b", ".a", "a.", "a b", "a{b"] {
            assert!(DataPath::parse(bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn room_text_of_values() {
        assert_eq!(room_text(&json!("x")), Some("x".to_owned()));
        assert_eq!(room_text(&json!(42)), Some("42".to_owned()));
        assert_eq!(room_text(&json!(-3)), Some("-3".to_owned()));
        for none in [json!(""), json!(1.5), json!(true), json!(null), json!([]), json!({})] {
            assert_eq!(room_text(&none), None, "{none}");
        }
    }
}
