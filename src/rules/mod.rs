//! Room rules: which rooms a client may join or leave by emitting its own events, as data
//! validated once at start (like the command table in `resp/cmd`), plus the room-name templates
//! `rooms_on_connect` uses.
//!
//! ```toml
//! [[rooms.rule]]
//! event = "AlertToggle::join"          # the page's own event name
//! join = "ROOM::ExtraImportantUpdates" # a fixed room …
//! [[rooms.rule]]
//! event = "chat:join"
//! join = "{arg0}"                      # … or the event's first argument
//! allow = ["chat:*"]                   # globs the room must match (required for a bare {argN})
//! [[rooms.rule]]
//! event = "follow"
//! join = "user:{arg0}:public"          # fixed text around {argN} bounds it: user:*:public
//! when = "claims.role == 'staff'"      # only sockets whose data match
//! ```
//!
//! Pure: [`RoomRules`] is built from a [`RoomsConfig`] once ([`RoomRules::new`]), and
//! [`Rule::decide`] takes the event's arguments and the socket data and returns the rooms to join
//! or leave, or why not. The binary's app (`app.rs`) registers one handler per rule event and
//! applies the decision to the socket. `ioswarm:join` / `ioswarm:leave` are one built-in rule set
//! in the same table, enabled by `--client-rooms`.
//!
//! - `template.rs`: [`Template`] (`{argN}`, `{sub}`, `{a.b}`, `{{`/`}}`).
//! - `expr.rs`: [`Expr`], the `when` language.
//! - `glob.rs`: [`Glob`], the `allow` patterns.
//! - `path.rs`: [`DataPath`], a field of the socket data.
//! - `config.rs`: [`RoomsConfig`] as written in TOML, [`RuleError`] naming the setting.
//! - `connect.rs`: [`ConnectRooms`], the rooms a socket joins on connect (`rooms_on_connect`).

mod config;
mod connect;
mod expr;
mod glob;
mod path;
mod template;

use std::collections::HashMap;

use serde_json::Value;

pub use config::{RoomsConfig, RuleConfig, RuleError};
pub use connect::{ConnectRooms, MAX_CONNECT_ROOMS};
pub use expr::Expr;
pub use glob::Glob;
pub use path::DataPath;
pub use template::{Context, MAX_ARG, Template};

/// Longest room name a client may make (in bytes).
pub const MAX_ROOM_NAME: usize = 256;
/// Most `[[rooms.rule]]` tables.
pub const MAX_RULES: usize = 1024;
/// Longest rule event name (in bytes).
pub const MAX_EVENT_NAME: usize = 256;
/// Most globs in one rule's `allow`.
pub const MAX_ALLOW: usize = 64;

/// Event names Socket.IO reserves; no rule may use them.
pub const RESERVED_EVENTS: [&str; 6] =
    ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];
/// The prefix of the binary's own events (`ioswarm:join`, `ioswarm:echo`, ...); no rule may use it.
pub const BUILTIN_PREFIX: &str = "ioswarm:";
/// The built-in rule set `--client-rooms` enables.
pub const BUILTIN_JOIN: &str = "ioswarm:join";
/// See [`BUILTIN_JOIN`].
pub const BUILTIN_LEAVE: &str = "ioswarm:leave";

/// Whether a client may name `room`: not empty, at most [`MAX_ROOM_NAME`] bytes, and not shaped
/// like a socket id (that would capture the socket's private room).
pub fn valid_room(room: &str) -> bool {
    !room.is_empty() && room.len() <= MAX_ROOM_NAME && crate::Sid::parse(room).is_none()
}

/// What a rule does with its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Join the room.
    Join,
    /// Leave the room.
    Leave,
}

/// A decision to carry out: join or leave these rooms, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Join or leave.
    pub op: Op,
    /// The rooms, each already checked against the rule.
    pub rooms: Vec<String>,
}

/// Why a rule refused an event; a refusal changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The rule set is off (`ioswarm:join` / `ioswarm:leave` without `--client-rooms`).
    Disabled,
    /// The rule's `when` does not hold for this socket's data.
    Condition,
    /// A placeholder has no value: a missing argument or data field, or a value that is not a
    /// non-empty string or an integer.
    NoValue,
    /// The room is empty, longer than [`MAX_ROOM_NAME`] or shaped like a socket id.
    BadRoom,
    /// The room matches none of the rule's `allow` globs.
    NotAllowed,
    /// The built-in rule set's argument is not a valid room name or a list of them.
    BadArguments,
}

impl Refusal {
    /// The `error` the client's ack carries.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadArguments => "expected a room name or an array of room names",
            _ => "forbidden",
        }
    }
}

/// Where a rule's rooms come from.
#[derive(Debug, Clone)]
enum Target {
    /// A configured room template, and the globs a room made from arguments must match.
    Template { room: Template, allow: Vec<Glob> },
    /// The built-in set: the first argument is a room or a list of rooms, any valid name.
    ClientList { enabled: bool },
}

/// One rule of the table, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    setting: String,
    event: String,
    op: Op,
    target: Target,
    when: Option<Expr>,
}

impl Rule {
    /// The event the rule answers.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// Where the rule was configured (`rooms.rule[2]`, or `client_rooms` for the built-in set),
    /// for logs.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// Join or leave.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The rooms to join or leave for an event with `args` from a socket with `data`, or why
    /// not. Checks, in order: the rule set is on, `when`, the template renders, the room is a
    /// valid name, and (when the client chose it through `{argN}`) it matches `allow`.
    pub fn decide(&self, args: &[Value], data: &Value) -> Result<Change, Refusal> {
        let rooms = match &self.target {
            Target::ClientList { enabled: false } => return Err(Refusal::Disabled),
            Target::ClientList { enabled: true } => client_list(args.first()).ok_or(Refusal::BadArguments)?,
            Target::Template { room, allow } => {
                if self.when.as_ref().is_some_and(|when| !when.holds(data)) {
                    return Err(Refusal::Condition);
                }
                let name = room.render(args, data).ok_or(Refusal::NoValue)?;
                if !valid_room(&name) {
                    return Err(Refusal::BadRoom);
                }
                if room.uses_args() && !allow.iter().any(|glob| glob.matches(&name)) {
                    return Err(Refusal::NotAllowed);
                }
                vec![name]
            }
        };
        Ok(Change { op: self.op, rooms })
    }
}

/// `room` or `[rooms]`, every one a valid name.
fn client_list(arg: Option<&Value>) -> Option<Vec<String>> {
    let names: Vec<String> = match arg? {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<_>>()?,
        _ => return None,
    };
    names.iter().all(|n| valid_room(n)).then_some(names)
}

/// The validated rule table: at most one rule per event name.
#[derive(Debug, Clone)]
pub struct RoomRules {
    by_event: HashMap<String, Rule>,
}

/// No configured rules, and the built-in set off (as without `--client-rooms`).
impl Default for RoomRules {
    fn default() -> Self {
        Self { by_event: builtin(false).collect() }
    }
}

/// The built-in `ioswarm:join` / `ioswarm:leave` rules, answering `forbidden` unless `enabled`.
fn builtin(enabled: bool) -> impl Iterator<Item = (String, Rule)> {
    [(BUILTIN_JOIN, Op::Join), (BUILTIN_LEAVE, Op::Leave)].into_iter().map(move |(event, op)| {
        let rule = Rule {
            setting: "client_rooms".to_owned(),
            event: event.to_owned(),
            op,
            target: Target::ClientList { enabled },
            when: None,
        };
        (event.to_owned(), rule)
    })
}

impl RoomRules {
    /// Builds the table from the configured rules, plus the built-in `ioswarm:join` /
    /// `ioswarm:leave` set (answering `forbidden` unless `client_rooms`). The error names the
    /// first setting at fault.
    pub fn new(config: &RoomsConfig, client_rooms: bool) -> Result<Self, RuleError> {
        if config.rules.len() > MAX_RULES {
            return Err(RuleError::new("rooms.rule", format!("{} rules; at most {MAX_RULES}", config.rules.len())));
        }
        let mut by_event = HashMap::new();
        let mut first_index: HashMap<&str, usize> = HashMap::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let compiled = compile(i, rule)?;
            if let Some(j) = first_index.insert(&rule.event, i) {
                return Err(RuleError::new(
                    format!("rooms.rule[{i}].event"),
                    format!("{:?} is already the event of rooms.rule[{j}]; one rule per event", rule.event),
                ));
            }
            by_event.insert(rule.event.clone(), compiled);
        }
        by_event.extend(builtin(client_rooms));
        Ok(Self { by_event })
    }

    /// The rule for `event`, if any.
    pub fn get(&self, event: &str) -> Option<&Rule> {
        self.by_event.get(event)
    }

    /// Every rule, the built-in set included (in no particular order).
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.by_event.values()
    }
}

fn compile(i: usize, rule: &RuleConfig) -> Result<Rule, RuleError> {
    let at = |key: &str| format!("rooms.rule[{i}].{key}");
    let event = &rule.event;
    let bad_event = if event.is_empty() {
        Some("must not be empty".to_owned())
    } else if event.len() > MAX_EVENT_NAME {
        Some(format!("longer than {MAX_EVENT_NAME} bytes"))
    } else if event.chars().any(char::is_control) {
        Some(format!("{event:?} contains a control character"))
    } else if RESERVED_EVENTS.contains(&event.as_str()) {
        Some(format!("{event:?} is reserved by Socket.IO ({})", RESERVED_EVENTS.join(", ")))
    } else if event.starts_with(BUILTIN_PREFIX) {
        Some(format!("{event:?}: names starting with {BUILTIN_PREFIX:?} belong to the server's built-in events"))
    } else {
        None
    };
    if let Some(message) = bad_event {
        return Err(RuleError::new(at("event"), message));
    }
    let (op, key, text) = match (&rule.join, &rule.leave) {
        (Some(room), None) => (Op::Join, "join", room),
        (None, Some(room)) => (Op::Leave, "leave", room),
        (Some(_), Some(_)) => {
            return Err(RuleError::new(
                format!("rooms.rule[{i}]"),
                format!("has both `join` and `leave`; write one rule per event ({event:?})"),
            ));
        }
        (None, None) => {
            return Err(RuleError::new(format!("rooms.rule[{i}]"), format!("needs `join` or `leave` ({event:?})")));
        }
    };
    let room = Template::parse(text, Context::Rule).map_err(|e| RuleError::new(at(key), e))?;
    let allow = match (&rule.allow, room.uses_args()) {
        (None, false) => Vec::new(),
        // Fixed text around the arguments bounds the room by itself (`user:{arg0}:public` can
        // only be `user:*:public`); a bare `{argN}` bounds nothing and needs `allow`.
        (None, true) if room.own_glob().is_some() => {
            let own = room.own_glob().unwrap_or_default();
            vec![Glob::parse(&own).map_err(|e| RuleError::new(at(key), format!("{text:?}: {e}")))?]
        }
        (None, true) => {
            return Err(RuleError::new(
                at("allow"),
                format!(
                    "the room {text:?} is chosen by the client ({{argN}}), so list the globs it must match \
                     (e.g. allow = [\"chat:*\"]); without them every {key} would be refused"
                ),
            ));
        }
        (Some(_), false) => {
            return Err(RuleError::new(
                at("allow"),
                format!("has no effect: the room {text:?} does not use {{argN}}, so the client cannot choose it"),
            ));
        }
        (Some(globs), true) => {
            if globs.is_empty() || globs.len() > MAX_ALLOW {
                return Err(RuleError::new(at("allow"), format!("must list between 1 and {MAX_ALLOW} globs")));
            }
            globs
                .iter()
                .enumerate()
                .map(|(k, g)| Glob::parse(g).map_err(|e| RuleError::new(format!("rooms.rule[{i}].allow[{k}]"), e)))
                .collect::<Result<_, _>>()?
        }
    };
    let when = match &rule.when {
        None => None,
        Some(text) => Some(Expr::parse(text).map_err(|e| RuleError::new(at("when"), format!("{text:?}: {e}")))?),
    };
    Ok(Rule {
        setting: format!("rooms.rule[{i}]"),
        event: event.clone(),
        op,
        target: Target::Template { room, allow },
        when,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
