//! Room-name templates: `ROOM::Updates` (fixed), `{arg0}`, `user:{arg0}:public`, `user:{sub}`,
//! `org:{org.id}`.
//!
//! Placeholders: `{argN}` is the event's N-th argument (N from 0 to [`MAX_ARG`]); any other name
//! is a dotted path into the socket data (`{sub}`, `{org.id}`; a leading `claims.` or `data.` is
//! allowed and means the same). `{{` and `}}` are literal braces. A value renders as its text
//! when it is a non-empty string or an integer; anything else (missing, empty, float, bool, null,
//! array, object) renders nothing, and the room is not made.

use std::fmt;

use serde_json::Value;

use super::path::{DataPath, room_text};

/// Highest argument index a template may name (`{arg15}`).
pub const MAX_ARG: usize = 15;

/// Where a template is used, which says what it may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A room rule: the event's arguments and the socket data.
    Rule,
    /// `rooms_on_connect`: the socket data only (there is no event yet).
    Connect,
}

/// One piece of a parsed template.
#[derive(Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Arg(usize),
    Data(DataPath),
}

/// A parsed room-name template.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.text)
    }
}

impl Template {
    /// Parses `text` for use in `context`; the error says what is wrong (the caller names the
    /// setting).
    pub fn parse(text: &str, context: Context) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if text.chars().any(char::is_control) {
            return Err(format!("{text:?} contains a control character"));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err(format!("{text:?} has a '}}' without its '{{' (write '}}}}' for the character)"));
            } else {
                let Some(end) = tail.find('}') else {
                    return Err(format!("{text:?} has a '{{' that is never closed (write '{{{{' for the character)"));
                };
                let name = tail[1..end].trim();
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(placeholder(text, name, context)?);
                rest = &tail[end + 1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let fixed: usize = parts.iter().map(|p| if let Part::Text(t) = p { t.len() } else { 0 }).sum();
        if fixed > super::MAX_ROOM_NAME {
            return Err(format!("{text:?} is longer than a room name may be ({} bytes)", super::MAX_ROOM_NAME));
        }
        let template = Self { text: text.to_owned(), parts };
        if let Some(room) = template.fixed_room()
            && !super::valid_room(&room)
        {
            return Err(format!("{text:?} is shaped like a socket id; a socket's own room cannot be shared"));
        }
        Ok(template)
    }

    /// The template as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template names an event argument (`{argN}`), so the client picks the room.
    pub fn uses_args(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Arg(_)))
    }

    /// The glob of every room this template can render when its fixed text bounds what the
    /// client chooses (`user:{arg0}:public` → `user:*:public`); `None` for a template that is
    /// nothing but placeholders (`{arg0}`), which bounds nothing.
    pub fn own_glob(&self) -> Option<String> {
        if !self.parts.iter().any(|p| matches!(p, Part::Text(t) if !t.is_empty())) {
            return None;
        }
        let mut glob = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => {
                    for c in t.chars() {
                        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                            glob.push('\\');
                        }
                        glob.push(c);
                    }
                }
                Part::Arg(_) | Part::Data(_) => glob.push('*'),
            }
        }
        Some(glob)
    }

    /// The room, when the template has no placeholder at all.
    pub fn fixed_room(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Arg(_) | Part::Data(_) => return None,
            }
        }
        Some(out)
    }

    /// The room name for these event arguments and socket data; `None` when a placeholder has
    /// no value (missing argument or field, or one that is not a non-empty string or integer).
    /// The result is not checked against the room-name limits (see [`super::valid_room`]).
    pub fn render(&self, args: &[Value], data: &Value) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Arg(i) => out.push_str(&room_text(args.get(*i)?)?),
                Part::Data(path) => out.push_str(&room_text(path.lookup(data)?)?),
            }
        }
        Some(out)
    }
}

fn placeholder(text: &str, name: &str, context: Context) -> Result<Part, String> {
    if name.is_empty() {
        return Err(format!("{text:?} has an empty placeholder '{{}}'"));
    }
    if let Some(digits) = name.strip_prefix("arg")
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        let index =
            digits.parse::<usize>().ok().filter(|i| *i <= MAX_ARG && (digits == "0" || !digits.starts_with('0')));
        let Some(index) = index else {
            return Err(format!("{text:?}: {{{name}}} is not an argument; use {{arg0}} to {{arg{MAX_ARG}}}"));
        };
        return match context {
            Context::Rule => Ok(Part::Arg(index)),
            Context::Connect => Err(format!(
                "{text:?}: {{{name}}} names an event argument, and there is no event on connect; use socket \
                 data fields such as {{sub}}"
            )),
        };
    }
    DataPath::parse(name, true).map(Part::Data).map_err(|e| {
        format!("{text:?} names an unknown placeholder {{{name}}}: {e}; use {{argN}} or a data field such as {{sub}}")
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(text: &str) -> Template {
        Template::parse(text, Context::Rule).unwrap()
    }

    #[test]
    fn fixed_rooms() {
        let t = rule("ROOM::ExtraImportantUpdates");
        assert_eq!(t.fixed_room().as_deref(), Some("ROOM::ExtraImportantUpdates"));
        assert!(!t.uses_args());
        assert_eq!(t.render(&[], &Value::Null).as_deref(), Some("ROOM::ExtraImportantUpdates"));
        assert_eq!(rule("a{{b}}c").fixed_room().as_deref(), Some("a{b}c"));
    }

    #[test]
    fn arguments() {
        let t = rule("user:{arg0}:public");
        assert!(t.uses_args());
        assert_eq!(t.fixed_room(), None);
        assert_eq!(t.render(&[json!("bob")], &Value::Null).as_deref(), Some("user:bob:public"));
        assert_eq!(t.render(&[json!(42)], &Value::Null).as_deref(), Some("user:42:public"));
        for bad in [json!(""), json!(1.5), json!(true), json!(null), json!(["x"]), json!({"a": 1})] {
            assert_eq!(t.render(std::slice::from_ref(&bad), &Value::Null), None, "{bad}");
        }
        assert_eq!(t.render(&[], &Value::Null), None, "missing argument");
        let two = rule("{arg1}/{ arg0 }");
        assert_eq!(two.render(&[json!("a"), json!("b")], &Value::Null).as_deref(), Some("b/a"));
        assert_eq!(rule("{arg15}").render(&[], &Value::Null), None);
    }

    #[test]
    fn data_fields() {
        let data = json!({"sub": "u1", "org": {"id": 9}, "tags": ["x"]});
        assert_eq!(rule("user:{sub}").render(&[], &data).as_deref(), Some("user:u1"));
        assert_eq!(rule("org:{org.id}").render(&[], &data).as_deref(), Some("org:9"));
        assert_eq!(rule("org:{claims.org.id}").render(&[], &data).as_deref(), Some("org:9"));
        assert_eq!(rule("org:{data.org.id}").render(&[], &data).as_deref(), Some("org:9"));
        assert_eq!(rule("t:{tags.0}").render(&[], &data).as_deref(), Some("t:x"));
        assert_eq!(rule("user:{missing}").render(&[], &data), None);
        assert_eq!(rule("org:{org}").render(&[], &data), None, "an object has no room text");
        assert_eq!(rule("user:{sub}").render(&[], &Value::Null), None, "no data at all");
        let connect = Template::parse("user:{sub}:{org.id}", Context::Connect).unwrap();
        assert_eq!(connect.render(&[], &data).as_deref(), Some("user:u1:9"));
    }

    #[test]
    fn parse_errors() {
        for (text, context, needle) in [
            ("", Context::Rule, "empty"),
            ("a{", Context::Rule, "never closed"),
            ("a}", Context::Rule, "without its"),
            ("{}", Context::Rule, "empty placeholder"),
            ("{a b}", Context::Rule, "unknown placeholder"),
            ("{a..b}", Context::Rule, "unknown placeholder"),
            ("{arg16}", Context::Rule, "not an argument"),
            ("{arg01}", Context::Rule, "not an argument"),
            ("{arg0}", Context::Connect, "no event on connect"),
            ("a\nb", Context::Rule, "control"),
            ("abcdefghij0123456789", Context::Rule, "socket id"),
        ] {
            let err = Template::parse(text, context).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let long = "x".repeat(super::super::MAX_ROOM_NAME + 1);
        assert!(Template::parse(&long, Context::Rule).unwrap_err().contains("longer"));
        // `{arg}` without a number is a data field named `arg`, like any other name.
        assert!(Template::parse("{arg}", Context::Connect).is_ok());
    }
}
