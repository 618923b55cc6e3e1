//! The `[[forward]]` tables as written, their defaults and the error that names the setting at
//! fault (`forward[1].url`).

use serde::{Deserialize, Serialize};

use super::matcher::ForwardRule;

/// Most `[[forward]]` tables.
pub const MAX_FORWARD_RULES: usize = 64;
/// Most globs in one rule's `events`.
pub const MAX_EVENT_GLOBS: usize = 256;
/// Largest `timeout_ms`.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// Largest `retry_ms` (how long a lifecycle event is retried).
pub const MAX_RETRY_MS: u64 = 3_600_000;
/// Largest `concurrency`.
pub const MAX_CONCURRENCY: usize = 4096;
/// Largest `queue`.
pub const MAX_QUEUE: usize = 1 << 20;
/// Largest `max_events_per_s` and `burst`.
pub const MAX_RATE: u32 = 1_000_000;

/// One `[[forward]]` table: the events of a namespace that go to the application, by webhook
/// (`url`) or on a Redis channel (`channel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// The namespace whose events this rule forwards.
    pub nsp: String,
    /// Event-name globs (`*`, `?`, `\x`); `$connect` and `$disconnect` name the lifecycle events.
    pub events: Vec<String>,
    /// The webhook: POST each event here and carry out the reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The Redis channel prefix: PUBLISH each event on `<channel>#<nsp>#<event>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// How long one webhook request may take, waiting for a slot included.
    pub timeout_ms: u64,
    /// Webhook requests in flight at once (per node).
    pub concurrency: usize,
    /// Webhook requests waiting for a slot; what overflows is refused with `busy`.
    pub queue: usize,
    /// How long a `$connect` / `$disconnect` whose POST fails is retried (with backoff); 0 tries
    /// once.
    pub retry_ms: u64,
    /// Per client: forwarded events allowed per second, on average.
    pub max_events_per_s: u32,
    /// Per client: events allowed in a burst above the rate.
    pub burst: u32,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            nsp: "/".to_owned(),
            events: Vec::new(),
            url: None,
            channel: None,
            timeout_ms: 5_000,
            concurrency: 64,
            queue: 1024,
            retry_ms: 30_000,
            max_events_per_s: 20,
            burst: 40,
        }
    }
}

/// A `[[forward]]` table is invalid: the node must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {message}")]
pub struct ForwardError {
    /// The setting at fault, as a TOML path (`forward[0].url`).
    pub setting: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ForwardError {
    pub(crate) fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self { setting: setting.into(), message: message.into() }
    }
}

/// Checks every table (what [`super::Forwarder::new`] would refuse); the first problem found is
/// returned, naming the setting.
pub fn validate(rules: &[ForwardConfig]) -> Result<(), ForwardError> {
    if rules.len() > MAX_FORWARD_RULES {
        return Err(ForwardError::new("forward", format!("at most {MAX_FORWARD_RULES} tables")));
    }
    for (i, rule) in rules.iter().enumerate() {
        ForwardRule::new(i, rule)?;
    }
    Ok(())
}
