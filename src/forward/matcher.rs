//! One validated `[[forward]]` table and its pure decisions: does it forward this event of this
//! namespace, and where to.

use std::time::Duration;

use http::Uri;

use super::config::{
    ForwardConfig, ForwardError, MAX_CONCURRENCY, MAX_EVENT_GLOBS, MAX_QUEUE, MAX_RATE, MAX_RETRY_MS, MAX_TIMEOUT_MS,
};
use crate::rules::Glob;

/// The lifecycle event a client's connection raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// `$connect`: the socket joined the namespace (after the `[auth]` checks).
    Connect,
    /// `$disconnect`: the socket left, with the reason.
    Disconnect,
}

impl Lifecycle {
    /// The event name forwarded (`$connect`, `$disconnect`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "$connect",
            Self::Disconnect => "$disconnect",
        }
    }
}

/// Where a rule sends what it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// POST to this URL and carry out the reply.
    Webhook(Uri),
    /// PUBLISH on `<prefix>#<nsp>#<event>`.
    Channel(String),
}

/// A `[[forward]]` table, validated.
#[derive(Debug, Clone)]
pub struct ForwardRule {
    setting: String,
    nsp: String,
    events: Vec<Glob>,
    connect: bool,
    disconnect: bool,
    target: Target,
    timeout: Duration,
    retry: Duration,
    concurrency: usize,
    queue: usize,
    rate: u32,
    burst: u32,
}

impl ForwardRule {
    /// Validates table `index`; the error names the setting (`forward[2].events[0]`).
    pub fn new(index: usize, config: &ForwardConfig) -> Result<Self, ForwardError> {
        let setting = format!("forward[{index}]");
        let err = |field: &str, message: String| ForwardError::new(format!("{setting}.{field}"), message);
        if !config.nsp.starts_with('/') || config.nsp.contains(|c: char| c == ',' || c == '?' || c.is_whitespace()) {
            return Err(err("nsp", format!("{:?} must start with '/' and hold no ',', '?' or whitespace", config.nsp)));
        }
        if config.events.is_empty() {
            return Err(err("events", "must name at least one event (a glob, or $connect / $disconnect)".into()));
        }
        if config.events.len() > MAX_EVENT_GLOBS {
            return Err(err("events", format!("at most {MAX_EVENT_GLOBS} globs")));
        }
        let (mut events, mut connect, mut disconnect) = (Vec::new(), false, false);
        for (i, text) in config.events.iter().enumerate() {
            match text.as_str() {
                "$connect" => connect = true,
                "$disconnect" => disconnect = true,
                t if t.starts_with('$') => {
                    return Err(err(
                        &format!("events[{i}]"),
                        format!("{t:?}: the lifecycle events are \"$connect\" and \"$disconnect\""),
                    ));
                }
                t => events.push(Glob::parse(t).map_err(|e| err(&format!("events[{i}]"), e))?),
            }
        }
        let target = match (&config.url, &config.channel) {
            (Some(url), None) => Target::Webhook(crate::httpclient::parse_url(url).map_err(|e| err("url", e))?),
            (None, Some(channel)) => {
                if channel.is_empty() || channel.len() > 256 || channel.contains(|c: char| c.is_control()) {
                    return Err(err("channel", format!("{channel:?} must be 1 to 256 characters, no control ones")));
                }
                Target::Channel(channel.clone())
            }
            (Some(_), Some(_)) => return Err(err("url", "a rule has either `url` or `channel`, not both".into())),
            (None, None) => return Err(err("url", "a rule needs `url` (a webhook) or `channel` (Redis)".into())),
        };
        if config.timeout_ms == 0 || config.timeout_ms > MAX_TIMEOUT_MS {
            return Err(err("timeout_ms", format!("{} must be between 1 and {MAX_TIMEOUT_MS}", config.timeout_ms)));
        }
        if config.retry_ms > MAX_RETRY_MS {
            return Err(err("retry_ms", format!("{} must be at most {MAX_RETRY_MS}", config.retry_ms)));
        }
        if config.concurrency == 0 || config.concurrency > MAX_CONCURRENCY {
            return Err(err("concurrency", format!("{} must be between 1 and {MAX_CONCURRENCY}", config.concurrency)));
        }
        if config.queue > MAX_QUEUE {
            return Err(err("queue", format!("{} must be at most {MAX_QUEUE}", config.queue)));
        }
        if config.max_events_per_s == 0 || config.max_events_per_s > MAX_RATE {
            return Err(err(
                "max_events_per_s",
                format!("{} must be between 1 and {MAX_RATE}", config.max_events_per_s),
            ));
        }
        if config.burst == 0 || config.burst > MAX_RATE {
            return Err(err("burst", format!("{} must be between 1 and {MAX_RATE}", config.burst)));
        }
        Ok(Self {
            setting,
            nsp: config.nsp.clone(),
            events,
            connect,
            disconnect,
            target,
            timeout: Duration::from_millis(config.timeout_ms),
            retry: Duration::from_millis(config.retry_ms),
            concurrency: config.concurrency,
            queue: config.queue,
            rate: config.max_events_per_s,
            burst: config.burst,
        })
    }

    /// Whether a client's `event` in namespace `nsp` goes through this rule. Names starting with
    /// `$` are never client events here (they would pose as lifecycle events).
    pub fn matches(&self, nsp: &str, event: &str) -> bool {
        nsp == self.nsp && !event.starts_with('$') && self.events.iter().any(|g| g.matches(event))
    }

    /// Whether this rule forwards `kind` for sockets of namespace `nsp`.
    pub fn forwards(&self, nsp: &str, kind: Lifecycle) -> bool {
        nsp == self.nsp
            && match kind {
                Lifecycle::Connect => self.connect,
                Lifecycle::Disconnect => self.disconnect,
            }
    }

    /// Whether this rule forwards any event of namespace `nsp`.
    pub fn covers(&self, nsp: &str) -> bool {
        nsp == self.nsp
    }

    /// The table's path, `forward[i]`.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// Where it sends.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `timeout_ms`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `retry_ms`.
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// `concurrency` and `queue`.
    pub fn bounds(&self) -> (usize, usize) {
        (self.concurrency, self.queue)
    }

    /// `max_events_per_s` and `burst`.
    pub fn rate(&self) -> (u32, u32) {
        (self.rate, self.burst)
    }
}

/// The delay before retry number `attempt` (1-based) of a lifecycle event: 100 ms doubling, at
/// most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::forward::validate;

    fn webhook(events: &[&str]) -> ForwardConfig {
        ForwardConfig {
            events: events.iter().map(|s| (*s).to_owned()).collect(),
            url: Some("http://127.0.0.1:8080/socket-events".into()),
            ..ForwardConfig::default()
        }
    }

    #[test]
    fn globs_match_client_events_and_dollar_names_are_lifecycle() {
        let rule = ForwardRule::new(0, &webhook(&["document::clicked", "chat:*", "$connect"])).unwrap();
        assert!(rule.matches("/", "document::clicked"));
        assert!(rule.matches("/", "chat:message"));
        assert!(rule.matches("/", "chat:"));
        assert!(!rule.matches("/", "document::clicked2"));
        assert!(!rule.matches("/admin", "chat:message"));
        assert!(!rule.matches("/", "$connect"), "a client event named $connect is not forwarded");
        assert!(rule.forwards("/", Lifecycle::Connect));
        assert!(!rule.forwards("/", Lifecycle::Disconnect));
        assert!(!rule.forwards("/x", Lifecycle::Connect));
        let star = ForwardRule::new(0, &webhook(&["*"])).unwrap();
        assert!(star.matches("/", "anything"));
        assert!(!star.matches("/", "$disconnect"));
        assert!(!star.forwards("/", Lifecycle::Disconnect));
    }

    #[test]
    fn the_target_is_a_url_or_a_channel() {
        let rule = ForwardRule::new(0, &webhook(&["a"])).unwrap();
        assert!(matches!(rule.target(), Target::Webhook(u) if u.path() == "/socket-events"));
        let cfg = ForwardConfig { url: None, channel: Some("socket.io-events".into()), ..webhook(&["Thing::*"]) };
        assert_eq!(ForwardRule::new(0, &cfg).unwrap().target(), &Target::Channel("socket.io-events".into()));
    }

    #[test]
    fn config_errors_name_the_setting() {
        let fails = |cfgs: Vec<ForwardConfig>| validate(&cfgs).unwrap_err().setting;
        let ok = webhook(&["a"]);
        assert_eq!(validate(std::slice::from_ref(&ok)), Ok(()));
        assert_eq!(
            fails(vec![ok.clone(), ForwardConfig { channel: Some("c".into()), ..ok.clone() }]),
            "forward[1].url"
        );
        assert_eq!(fails(vec![ForwardConfig { url: None, ..ok.clone() }]), "forward[0].url");
        assert_eq!(fails(vec![ForwardConfig { url: Some("ftp://x/".into()), ..ok.clone() }]), "forward[0].url");
        assert_eq!(fails(vec![ForwardConfig { url: Some("not a url".into()), ..ok.clone() }]), "forward[0].url");
        assert_eq!(fails(vec![webhook(&[])]), "forward[0].events");
        assert_eq!(fails(vec![webhook(&["a", ""])]), "forward[0].events[1]");
        assert_eq!(fails(vec![webhook(&["a[b]"])]), "forward[0].events[0]");
        assert_eq!(fails(vec![webhook(&["$boot"])]), "forward[0].events[0]");
        assert_eq!(fails(vec![ForwardConfig { timeout_ms: 0, ..ok.clone() }]), "forward[0].timeout_ms");
        assert_eq!(fails(vec![ForwardConfig { timeout_ms: 3_600_000, ..ok.clone() }]), "forward[0].timeout_ms");
        assert_eq!(fails(vec![ForwardConfig { concurrency: 0, ..ok.clone() }]), "forward[0].concurrency");
        assert_eq!(fails(vec![ForwardConfig { max_events_per_s: 0, ..ok.clone() }]), "forward[0].max_events_per_s");
        assert_eq!(fails(vec![ForwardConfig { burst: 0, ..ok.clone() }]), "forward[0].burst");
        assert_eq!(fails(vec![ForwardConfig { nsp: "chat".into(), ..ok.clone() }]), "forward[0].nsp");
        assert_eq!(fails(vec![ForwardConfig { url: None, channel: Some(String::new()), ..ok }]), "forward[0].channel");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(10), Duration::from_millis(5_000));
        assert_eq!(backoff(u32::MAX), Duration::from_millis(5_000));
    }
}
