//! `rooms_on_connect`: room templates over the socket data (JWT claims, connect-hook data), joined
//! when a socket connects.

use serde_json::Value;

use super::{Context, RuleError, Template, valid_room};

/// Most templates in one `rooms_on_connect` list.
pub const MAX_CONNECT_ROOMS: usize = 64;

/// Parsed `rooms_on_connect` templates (`["user:{sub}", "org:{org_id}"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRooms {
    templates: Vec<Template>,
}

impl ConnectRooms {
    /// Parses `texts`, the list configured under the TOML key `setting` (e.g.
    /// `auth.rooms_on_connect`); an error names the entry (`auth.rooms_on_connect[1]`). Templates
    /// may name socket data fields only: `{argN}` is an error, there is no event on connect.
    pub fn parse(setting: &str, texts: &[String]) -> Result<Self, RuleError> {
        if texts.len() > MAX_CONNECT_ROOMS {
            return Err(RuleError::new(setting, format!("{} rooms; at most {MAX_CONNECT_ROOMS}", texts.len())));
        }
        let templates = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Template::parse(t, Context::Connect).map_err(|e| RuleError::new(format!("{setting}[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { templates })
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The rooms for a socket with `data`, in configured order without repeats. A template with a
    /// missing field (or a value that is not a non-empty string or an integer) is skipped, and so
    /// is a room over the room-name limit or shaped like a socket id.
    pub fn render(&self, data: &Value) -> Vec<String> {
        let mut rooms: Vec<String> = Vec::with_capacity(self.templates.len());
        for template in &self.templates {
            if let Some(room) = template.render(&[], data)
                && valid_room(&room)
                && !rooms.contains(&room)
            {
                rooms.push(room);
            }
        }
        rooms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn renders_and_skips_missing_fields() {
        let rooms =
            ConnectRooms::parse("auth.rooms_on_connect", &list(&["user:{sub}", "org:{org_id}", "all", "user:{sub}"]))
                .unwrap();
        assert_eq!(rooms.render(&json!({"sub": "u1", "org_id": 7})), ["user:u1", "org:7", "all"]);
        assert_eq!(rooms.render(&json!({"sub": "u1"})), ["user:u1", "all"]);
        assert_eq!(rooms.render(&Value::Null), ["all"]);
        assert_eq!(rooms.render(&json!({"sub": ""})), ["all"], "an empty field makes no room");
        let long = json!({"sub": "x".repeat(300)});
        assert_eq!(rooms.render(&long), ["all"], "a room over the limit is skipped");
        let sid_shaped = ConnectRooms::parse("r", &list(&["{sub}"])).unwrap();
        assert!(sid_shaped.render(&json!({"sub": "abcdefghij0123456789"})).is_empty());
    }

    #[test]
    fn errors_name_the_entry() {
        let err = ConnectRooms::parse("auth.rooms_on_connect", &list(&["user:{sub}", "x:{arg0}"])).unwrap_err();
        assert_eq!(err.setting, "auth.rooms_on_connect[1]");
        assert!(err.to_string().starts_with("invalid setting `auth.rooms_on_connect[1]`: "), "{err}");
        let err = ConnectRooms::parse("auth.rooms_on_connect", &list(&["user:{a b}"])).unwrap_err();
        assert_eq!(err.setting, "auth.rooms_on_connect[0]");
        let many: Vec<String> = (0..=MAX_CONNECT_ROOMS).map(|i| format!("r{i}")).collect();
        assert_eq!(ConnectRooms::parse("auth.rooms_on_connect", &many).unwrap_err().setting, "auth.rooms_on_connect");
        assert!(ConnectRooms::parse("x", &[]).unwrap().is_empty());
    }
}
