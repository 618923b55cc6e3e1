//! The rule table: validation errors naming the setting, and decisions.

use serde_json::{Value, json};

use super::*;

fn rules(toml: &str) -> Result<RoomRules, RuleError> {
    #[derive(serde::Deserialize)]
    struct File {
        rooms: RoomsConfig,
    }
    let file: File = toml::from_str(toml).unwrap();
    RoomRules::new(&file.rooms, false)
}

const CLASSIC: &str = r#"
[[rooms.rule]]
event = "AlertToggle::join"
join = "ROOM::ExtraImportantUpdates"
[[rooms.rule]]
event = "AlertToggle::leave"
leave = "ROOM::ExtraImportantUpdates"
[[rooms.rule]]
event = "chat:join"
join = "{arg0}"
allow = ["chat:*"]
[[rooms.rule]]
event = "follow"
join = "user:{arg0}:public"
when = "claims.role == 'staff'"
[[rooms.rule]]
event = "me"
join = "user:{sub}"
"#;

fn decide(table: &RoomRules, event: &str, args: &[Value], data: &Value) -> Result<Change, Refusal> {
    table.get(event).unwrap().decide(args, data)
}

fn join(rooms: &[&str]) -> Result<Change, Refusal> {
    Ok(Change { op: Op::Join, rooms: rooms.iter().map(|r| (*r).to_owned()).collect() })
}

#[test]
fn fixed_rooms_join_and_leave() {
    let t = rules(CLASSIC).unwrap();
    assert_eq!(decide(&t, "AlertToggle::join", &[], &Value::Null), join(&["ROOM::ExtraImportantUpdates"]));
    assert_eq!(
        decide(&t, "AlertToggle::leave", &[json!("ignored")], &Value::Null),
        Ok(Change { op: Op::Leave, rooms: vec!["ROOM::ExtraImportantUpdates".into()] })
    );
    assert_eq!(t.get("AlertToggle::join").unwrap().setting(), "rooms.rule[0]");
    assert!(t.get("unknown").is_none());
}

#[test]
fn argument_rooms_must_match_allow() {
    let t = rules(CLASSIC).unwrap();
    assert_eq!(decide(&t, "chat:join", &[json!("chat:lobby")], &Value::Null), join(&["chat:lobby"]));
    assert_eq!(decide(&t, "chat:join", &[json!("admin:secrets")], &Value::Null), Err(Refusal::NotAllowed));
    assert_eq!(decide(&t, "chat:join", &[], &Value::Null), Err(Refusal::NoValue));
    assert_eq!(decide(&t, "chat:join", &[json!(["chat:a"])], &Value::Null), Err(Refusal::NoValue));
    assert_eq!(decide(&t, "chat:join", &[json!({"room": "chat:a"})], &Value::Null), Err(Refusal::NoValue));
    let long = format!("chat:{}", "x".repeat(MAX_ROOM_NAME));
    assert_eq!(decide(&t, "chat:join", &[json!(long)], &Value::Null), Err(Refusal::BadRoom));
    // A socket id matches no sane glob, and is refused before `allow` even for `*`.
    let star = rules("[[rooms.rule]]\nevent = \"j\"\njoin = \"{arg0}\"\nallow = [\"*\"]\n").unwrap();
    assert_eq!(decide(&star, "j", &[json!("abcdefghij0123456789")], &Value::Null), Err(Refusal::BadRoom));
    assert_eq!(decide(&star, "j", &[json!("anything")], &Value::Null), join(&["anything"]));
    assert_eq!(decide(&star, "j", &[json!(12)], &Value::Null), join(&["12"]), "integers are accepted");
    assert_eq!(decide(&star, "j", &[json!(true)], &Value::Null), Err(Refusal::NoValue));
}

#[test]
fn when_and_data_fields() {
    let t = rules(CLASSIC).unwrap();
    let staff = json!({"role": "staff", "sub": "u1"});
    let user = json!({"role": "user", "sub": "u2"});
    assert_eq!(decide(&t, "follow", &[json!("bob")], &staff), join(&["user:bob:public"]));
    assert_eq!(decide(&t, "follow", &[json!("bob")], &user), Err(Refusal::Condition));
    assert_eq!(decide(&t, "follow", &[json!("bob")], &Value::Null), Err(Refusal::Condition));
    assert_eq!(decide(&t, "me", &[], &staff), join(&["user:u1"]));
    assert_eq!(decide(&t, "me", &[], &Value::Null), Err(Refusal::NoValue), "no data, no room");
}

#[test]
fn builtin_set() {
    let off = rules(CLASSIC).unwrap();
    assert_eq!(decide(&off, BUILTIN_JOIN, &[json!("a")], &Value::Null), Err(Refusal::Disabled));
    assert_eq!(Refusal::Disabled.message(), "forbidden");
    let on = RoomRules::new(&RoomsConfig::default(), true).unwrap();
    assert_eq!(decide(&on, BUILTIN_JOIN, &[json!("a")], &Value::Null), join(&["a"]));
    assert_eq!(decide(&on, BUILTIN_JOIN, &[json!(["b", "a"])], &Value::Null), join(&["b", "a"]));
    assert_eq!(
        decide(&on, BUILTIN_LEAVE, &[json!("a")], &Value::Null),
        Ok(Change { op: Op::Leave, rooms: vec!["a".into()] })
    );
    for bad in [json!(""), json!(1), json!(["a", 2]), json!("abcdefghij0123456789"), json!("x".repeat(257))] {
        assert_eq!(
            decide(&on, BUILTIN_JOIN, std::slice::from_ref(&bad), &Value::Null),
            Err(Refusal::BadArguments),
            "{bad}"
        );
    }
    assert_eq!(decide(&on, BUILTIN_JOIN, &[], &Value::Null), Err(Refusal::BadArguments));
    assert_eq!(Refusal::BadArguments.message(), "expected a room name or an array of room names");
    assert_eq!(on.rules().count(), 2);
    let default = RoomRules::default();
    assert_eq!(decide(&default, BUILTIN_LEAVE, &[json!("a")], &Value::Null), Err(Refusal::Disabled));
    assert_eq!(default.rules().count(), 2);
}

#[track_caller]
fn error(toml: &str) -> (String, String) {
    let err = rules(toml).unwrap_err();
    assert!(err.to_string().starts_with(&format!("invalid setting `{}`: ", err.setting)), "{err}");
    (err.setting, err.message)
}

#[test]
fn validation_errors_name_the_setting() {
    let ok = "[[rooms.rule]]\nevent = \"a\"\njoin = \"r\"\n";
    for (rule, setting, needle) in [
        ("event = \"b\"\njoin = \"r\"\nleave = \"r\"", "rooms.rule[1]", "both `join` and `leave`"),
        ("event = \"b\"", "rooms.rule[1]", "needs `join` or `leave`"),
        ("event = \"\"\njoin = \"r\"", "rooms.rule[1].event", "empty"),
        ("event = \"a\"\njoin = \"r2\"", "rooms.rule[1].event", "rooms.rule[0]"),
        ("event = \"disconnect\"\njoin = \"r\"", "rooms.rule[1].event", "reserved"),
        ("event = \"ioswarm:join\"\njoin = \"r\"", "rooms.rule[1].event", "built-in"),
        ("event = \"b\"\njoin = \"user:{arg0\"", "rooms.rule[1].join", "never closed"),
        ("event = \"b\"\nleave = \"user:{who am i}\"", "rooms.rule[1].leave", "unknown placeholder"),
        ("event = \"b\"\njoin = \"{arg0}\"", "rooms.rule[1].allow", "chosen by the client"),
        ("event = \"b\"\njoin = \"{arg0}\"\nallow = []", "rooms.rule[1].allow", "between 1"),
        ("event = \"b\"\njoin = \"fixed\"\nallow = [\"*\"]", "rooms.rule[1].allow", "no effect"),
        ("event = \"b\"\njoin = \"user:{sub}\"\nallow = [\"*\"]", "rooms.rule[1].allow", "no effect"),
        ("event = \"b\"\njoin = \"{arg0}\"\nallow = [\"ok:*\", \"bad[\"]", "rooms.rule[1].allow[1]", "reserved"),
        ("event = \"b\"\njoin = \"r\"\nwhen = \"claims.role = 'x'\"", "rooms.rule[1].when", "column 13"),
        ("event = \"b\"\njoin = \"abcdefghij0123456789\"", "rooms.rule[1].join", "socket id"),
    ] {
        let (got, message) = error(&format!("{ok}[[rooms.rule]]\n{rule}\n"));
        assert_eq!(got, setting, "{rule}: {message}");
        assert!(message.contains(needle), "{rule}: {message}");
    }
}

#[test]
fn unknown_keys_and_too_many_rules() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        rooms: RoomsConfig,
    }
    let err = toml::from_str::<File>("[[rooms.rule]]\nevent = \"a\"\njoin = \"r\"\njion = \"x\"\n").unwrap_err();
    assert!(err.to_string().contains("jion"), "{err}");
    let err = toml::from_str::<File>("[rooms]\nrules = []\n").unwrap_err();
    assert!(err.to_string().contains("rules"), "{err}");
    let many = RoomsConfig {
        rules: (0..=MAX_RULES)
            .map(|i| RuleConfig { event: format!("e{i}"), join: Some("r".into()), ..RuleConfig::default() })
            .collect(),
    };
    assert_eq!(many.validate().unwrap_err().setting, "rooms.rule");
    RoomsConfig::default().validate().unwrap();
}

#[test]
fn fixed_text_around_an_argument_bounds_the_room_without_allow() {
    let t = rules("[[rooms.rule]]\nevent = \"f\"\njoin = \"user:{arg0}:public\"\n").unwrap();
    assert_eq!(decide(&t, "f", &[json!("bob")], &Value::Null), join(&["user:bob:public"]));
    // Whatever the argument, the room keeps the template's shape.
    assert_eq!(decide(&t, "f", &[json!("x:private:y")], &Value::Null), join(&["user:x:private:y:public"]));
    let t = rules("[[rooms.rule]]\nevent = \"g\"\njoin = \"a*[{arg0}]\"\n").unwrap();
    assert_eq!(
        decide(&t, "g", &[json!("1")], &Value::Null),
        join(&["a*[1]"]),
        "glob characters in the text are literal"
    );
    assert_eq!(
        crate::rules::Template::parse("{arg0}", crate::rules::template::Context::Rule).unwrap().own_glob(),
        None,
        "a bare argument bounds nothing"
    );
}
