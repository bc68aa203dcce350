//! `CONSOLE_*` settings (docs/CONSOLE.md, "Configuration").

use actix_web::cookie::Key;
use common::settings::{optional, parsed, ConfigError, Secret, Source};
use std::fmt;
use std::time::Duration;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every read view; no replay.
    Viewer,
    /// Everything, including replays (each one audited).
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// One login of `CONSOLE_USERS`.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub token: Secret,
}

/// The shortest token accepted: a token is a password that cannot be rate limited by a
/// human, so it must be long and random (`openssl rand -hex 16`).
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone)]
pub struct ConsoleSettings {
    /// `CONSOLE_USERS`: `name:role:token` entries separated by commas (role `viewer` or
    /// `operator`; token at least [`MIN_TOKEN_LEN`] characters, no `,`).
    pub users: Vec<User>,
    /// `CONSOLE_SESSION_KEY` (at least 32 characters): signs session cookies, so every
    /// replica accepts the others' sessions. Unset: a random key per process (sessions
    /// end at a restart and do not move between replicas).
    pub key: Key,
    /// `CONSOLE_SESSION_HOURS` (default 12): how long a login lasts.
    pub session: Duration,
    /// `CONSOLE_COOKIE_SECURE` (default false): the session cookie only over HTTPS (set
    /// it when the console is served through TLS).
    pub cookie_secure: bool,
    /// `CONSOLE_PROXY_USER_HEADER` (e.g. `X-Forwarded-Email`): behind an SSO proxy, the
    /// header the proxy sets to the signed-in user; trusted as is, so only when nothing
    /// but the proxy can reach the processor's port.
    pub proxy_user_header: Option<String>,
    /// `CONSOLE_PROXY_OPERATORS`: users of the proxy header who are operators (commas);
    /// every other proxy user is a viewer.
    pub proxy_operators: Vec<String>,
    /// `CONSOLE_INGRESS_METRICS`: ingress `/metrics` URLs (commas), read by the overview
    /// for the WebSockets' state per location.
    pub ingress_metrics: Vec<String>,
}

impl fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("users", &self.users)
            .field("key", &"***")
            .field("session", &self.session)
            .field("cookie_secure", &self.cookie_secure)
            .field("proxy_user_header", &self.proxy_user_header)
            .field("proxy_operators", &self.proxy_operators)
            .field("ingress_metrics", &self.ingress_metrics)
            .finish()
    }
}

/// The longest console session, `CONSOLE_SESSION_HOURS` at most: 30 days.
pub const MAX_SESSION_HOURS: u64 = 720;

fn list(src: &dyn Source, name: &str) -> Vec<String> {
    optional(src, name)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

impl ConsoleSettings {
    /// Whether anyone can sign in (users, or an SSO proxy header).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty() || self.proxy_user_header.is_some()
    }

    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let mut users: Vec<User> = Vec::new();
        for entry in list(src, "CONSOLE_USERS") {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ConfigError(
                    "CONSOLE_USERS: each entry is name:role:token".into(),
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                ConfigError(format!(
                    "CONSOLE_USERS: user {name:?}: role must be viewer or operator"
                ))
            })?;
            // A name travels in the session cookie: letters, digits and `.-_@+` only.
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_@+".contains(c))
            {
                return Err(ConfigError(format!(
                    "CONSOLE_USERS: user {name:?}: a name of letters, digits and .-_@+ only"
                )));
            }
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(ConfigError(format!(
                    "CONSOLE_USERS: user {name:?}: the token must be at least {MIN_TOKEN_LEN} characters"
                )));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(ConfigError(format!(
                    "CONSOLE_USERS: user {name:?} appears twice"
                )));
            }
            // A token names one user: the audit log records who did what.
            if let Some(other) = users.iter().find(|u| u.token.expose() == token) {
                return Err(ConfigError(format!(
                    "CONSOLE_USERS: user {name:?} has the token of user {:?}: each user needs their own",
                    other.name
                )));
            }
            users.push(User {
                name: name.to_owned(),
                role,
                token: Secret::new(token),
            });
        }
        let key = match optional(src, "CONSOLE_SESSION_KEY") {
            None => Key::generate(),
            Some(k) if k.len() >= 32 => {
                use sha2::{Digest, Sha512};
                Key::from(Sha512::digest(k.as_bytes()).as_slice())
            }
            Some(_) => {
                return Err(ConfigError(
                    "CONSOLE_SESSION_KEY must be at least 32 characters".into(),
                ))
            }
        };
        let hours = parsed(src, "CONSOLE_SESSION_HOURS", 12u64)?;
        if !(1..=MAX_SESSION_HOURS).contains(&hours) {
            return Err(ConfigError(format!(
                "CONSOLE_SESSION_HOURS must be from 1 to {MAX_SESSION_HOURS} (30 days)"
            )));
        }
        Ok(Self {
            users,
            key,
            session: Duration::from_secs(hours * 3600),
            cookie_secure: parsed(src, "CONSOLE_COOKIE_SECURE", false)?,
            proxy_user_header: optional(src, "CONSOLE_PROXY_USER_HEADER"),
            proxy_operators: list(src, "CONSOLE_PROXY_OPERATORS"),
            ingress_metrics: list(src, "CONSOLE_INGRESS_METRICS"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<ConsoleSettings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConsoleSettings::from_source(&map)
    }

    #[test]
    fn users_parse_and_bad_entries_are_refused_without_their_token() {
        let s = from(&[(
            "CONSOLE_USERS",
            "alice:operator:0123456789abcdef, bob:viewer:fedcba9876543210:with:colons",
        )])
        .unwrap();
        assert_eq!(s.users.len(), 2);
        assert_eq!(s.users[1].token.expose(), "fedcba9876543210:with:colons");
        assert!(s.enabled());
        let short = from(&[("CONSOLE_USERS", "alice:operator:short")]).unwrap_err();
        assert!(short.0.contains("at least 16"), "{}", short.0);
        assert!(!short.0.contains("short\""));
        let role = from(&[("CONSOLE_USERS", "alice:admin:0123456789abcdef")]).unwrap_err();
        assert!(role.0.contains("viewer or operator"));
        let shared = from(&[(
            "CONSOLE_USERS",
            "alice:operator:0123456789abcdef,bob:viewer:0123456789abcdef",
        )])
        .unwrap_err();
        assert!(
            shared.0.contains("\"bob\" has the token of user \"alice\""),
            "{}",
            shared.0
        );
        assert!(!shared.0.contains("0123456789abcdef"));
        for hours in ["0", "721", "99999999999"] {
            let err = from(&[("CONSOLE_SESSION_HOURS", hours)]).unwrap_err();
            assert!(err.0.contains("from 1 to 720"), "{hours}: {}", err.0);
        }
        assert!(from(&[("CONSOLE_SESSION_HOURS", "720")]).is_ok());
        assert!(!from(&[]).unwrap().enabled());
        assert!(format!("{s:?}").contains("Secret(***)"));
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
    }
}
