//! The `[rooms]` section of the configuration file, as written (`[[rooms.rule]]` tables), and the
//! error that names the setting at fault.

use serde::{Deserialize, Serialize};

/// `[rooms]`: the room rules, in the order written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// `[[rooms.rule]]`: one table per rule.
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

/// One `[[rooms.rule]]` table: when a client emits `event`, join or leave one room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The client's event name (the page's own, e.g. `AlertToggle::join`).
    pub event: String,
    /// The room to join: fixed, or a template over `{argN}` and socket data fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// The room to leave (same forms as `join`); a rule has exactly one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave: Option<String>,
    /// Globs the rendered room must match; required when the room uses `{argN}`, refused
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// A condition over the socket data (see [`super::Expr`]); the rule applies only where it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

impl RoomsConfig {
    /// Checks every rule (what [`super::RoomRules::new`] would refuse); the first problem found is
    /// returned, naming the setting (`rooms.rule[2].join`).
    pub fn validate(&self) -> Result<(), RuleError> {
        super::RoomRules::new(self, false).map(drop)
    }
}

/// A room rule or room template in the configuration is invalid: the node must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {message}")]
pub struct RuleError {
    /// The setting at fault, as a TOML path (`rooms.rule[2].join`, `auth.rooms_on_connect[0]`).
    pub setting: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl RuleError {
    pub(crate) fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self { setting: setting.into(), message: message.into() }
    }
}
