//! Dojo location accounts (`docs/LOCATIONS.md`): one deployment serves many
//! restaurants, each with its own `accountId`, API keys, webhook secrets, REST
//! credentials and till tokens (Dojo's model of location accounts).
//!
//! Two sources, one shape:
//! - `DOJO_LOCATIONS_FILE`: a TOML file of `[[location]]` tables, keys fixed by the
//!   operating contract ("Round 2 names", "Locations file"); unknown keys are errors;
//! - otherwise the single-location variables of round 1 (`DOJO_WEBHOOK_SECRETS`,
//!   `DOJO_REST_USERNAME`/`_PASSWORD`, `DOJO_API_KEY` with `DOJO_WS_URL`) describe one
//!   implicit location, `default`, whose `accountId` is not checked.
//!
//! [`Locations`] is validated as a whole: a bad file is refused with a one-line reason
//! naming the location and the field, and nothing of it is used. Secrets are wrapped in
//! [`Secret`] and never printed.

pub mod directory;

pub use directory::Directory;

use crate::settings::{optional, ConfigError, Secret, Source};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The id of the implicit location described by the single-location variables.
pub const DEFAULT_LOCATION: &str = "default";
/// Longest location id (`[a-z0-9-]{1,40}`).
pub const MAX_ID: usize = 40;

/// The Basic credentials Dojo presents on a location's REST route (RFC 7617).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCredentials {
    pub username: String,
    pub password: Secret,
}

/// One Dojo location account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `[a-z0-9-]{1,40}`: in URLs (`/locations/{id}/...`), metric labels and logs.
    pub id: String,
    /// Dojo's `accountId` of this location's events; `None` only for the implicit
    /// `default` location of the single-location variables (any `accountId` accepted).
    pub account_id: Option<String>,
    /// The first one authenticates this location's WebSocket and Dojo API calls.
    pub api_keys: Vec<Secret>,
    /// Webhook signing secrets, all accepted (rotation).
    pub webhook_secrets: Vec<Secret>,
    /// Credentials of `POST .../v1/events`; `None`: that route answers 404.
    pub rest: Option<RestCredentials>,
    /// Bearer tokens of this location's tills (payment feed, read API).
    pub feed_tokens: Vec<Secret>,
    /// Whether ingress keeps a WebSocket to Dojo open for this location.
    pub websocket: bool,
}

impl Location {
    /// The key of this location's WebSocket and Dojo API calls.
    pub fn api_key(&self) -> Option<&Secret> {
        self.api_keys.first()
    }

    /// Whether an event for `account_id` belongs to this location (tenant binding).
    pub fn owns_account(&self, account_id: &str) -> bool {
        self.account_id.as_deref().is_none_or(|a| a == account_id)
    }
}

/// A validated set of locations, looked up by id, REST username or account.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    list: Vec<Arc<Location>>,
    by_id: HashMap<String, usize>,
    by_rest_user: HashMap<String, usize>,
    by_account: HashMap<String, usize>,
}

/// One `[[location]]` table as written; every key the contract names, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocation {
    id: String,
    account_id: String,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    webhook_secrets: Vec<String>,
    rest_username: Option<String>,
    rest_password: Option<String>,
    #[serde(default)]
    feed_tokens: Vec<String>,
    #[serde(default)]
    websocket: bool,
}

fn field_error(location: &str, field: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("location {location:?}: field `{field}`: {why}"))
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Secrets must be non-empty printable ASCII without spaces: they travel in HTTP headers.
fn secrets(location: &str, field: &str, values: Vec<String>) -> Result<Vec<Secret>, ConfigError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                Err(field_error(
                    location,
                    field,
                    format!(
                        "entry {} must be non-empty printable ASCII without spaces",
                        i + 1
                    ),
                ))
            } else {
                Ok(Secret::new(v))
            }
        })
        .collect()
}

fn rest(
    location: &str,
    username: Option<String>,
    password: Option<String>,
) -> Result<Option<RestCredentials>, ConfigError> {
    match (username, password) {
        (None, None) => Ok(None),
        (Some(u), Some(p)) => {
            if u.is_empty() || u.contains(':') || u.chars().any(char::is_control) {
                return Err(field_error(
                    location,
                    "rest_username",
                    "must be non-empty, without ':' (RFC 7617) or control characters",
                ));
            }
            if p.is_empty() {
                return Err(field_error(location, "rest_password", "must not be empty"));
            }
            Ok(Some(RestCredentials {
                username: u,
                password: Secret::new(p),
            }))
        }
        (Some(_), None) => Err(field_error(
            location,
            "rest_password",
            "missing (the REST username and password go together)",
        )),
        (None, Some(_)) => Err(field_error(
            location,
            "rest_username",
            "missing (the REST username and password go together)",
        )),
    }
}

impl RawLocation {
    fn validate(self) -> Result<Location, ConfigError> {
        let id = self.id;
        if !valid_id(&id) {
            return Err(field_error(&id, "id", "must match [a-z0-9-]{1,40}"));
        }
        if self.account_id.is_empty()
            || self.account_id.len() > 255
            || self.account_id.chars().any(char::is_control)
        {
            return Err(field_error(
                &id,
                "account_id",
                "must be 1 to 255 bytes without control characters",
            ));
        }
        let api_keys = secrets(&id, "api_keys", self.api_keys)?;
        if self.websocket && api_keys.is_empty() {
            return Err(field_error(
                &id,
                "api_keys",
                "websocket = true needs at least one API key",
            ));
        }
        Ok(Location {
            webhook_secrets: secrets(&id, "webhook_secrets", self.webhook_secrets)?,
            feed_tokens: secrets(&id, "feed_tokens", self.feed_tokens)?,
            rest: rest(&id, self.rest_username, self.rest_password)?,
            account_id: Some(self.account_id),
            api_keys,
            websocket: self.websocket,
            id,
        })
    }
}

/// Refuses a value of `field` (a list of secrets) that two locations both hold; the
/// error names the field and the location, never the value.
fn unshared(
    list: &[Location],
    field: &str,
    what: &str,
    values: impl Fn(&Location) -> &[Secret],
) -> Result<(), ConfigError> {
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for l in list {
        for value in values(l) {
            if let Some(other) = owners.insert(value.expose(), &l.id) {
                if other != l.id {
                    return Err(field_error(
                        &l.id,
                        field,
                        format!("{what} is also another location's"),
                    ));
                }
            }
        }
    }
    Ok(())
}

impl Locations {
    /// Builds the set, refusing duplicates of what must identify one location: its id,
    /// `account_id`, REST username, feed tokens, API keys and webhook secrets (each
    /// location account has its own keys and secrets, dojo-api.md §4a; a webhook secret of
    /// two locations would make the root route's signer ambiguous).
    pub fn new(list: Vec<Location>) -> Result<Self, ConfigError> {
        let mut set = Self::default();
        unshared(&list, "feed_tokens", "a token", |l| &l.feed_tokens)?;
        unshared(&list, "api_keys", "a key", |l| &l.api_keys)?;
        unshared(&list, "webhook_secrets", "a secret", |l| &l.webhook_secrets)?;
        for (i, l) in list.iter().enumerate() {
            if set.by_id.insert(l.id.clone(), i).is_some() {
                return Err(field_error(&l.id, "id", "used by two locations"));
            }
            if let Some(account) = &l.account_id {
                if set.by_account.insert(account.clone(), i).is_some() {
                    return Err(field_error(
                        &l.id,
                        "account_id",
                        "already the account of another location",
                    ));
                }
            }
            if let Some(rest) = &l.rest {
                if set.by_rest_user.insert(rest.username.clone(), i).is_some() {
                    return Err(field_error(
                        &l.id,
                        "rest_username",
                        "already used by another location",
                    ));
                }
            }
        }
        set.list = list.into_iter().map(Arc::new).collect();
        Ok(set)
    }

    /// Parses and validates a locations file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError(format!("not valid TOML: {}", one_line(e.message())))
        })?;
        let mut list = Vec::new();
        for (key, value) in doc {
            if key != "location" {
                return Err(ConfigError(format!(
                    "unknown top-level key `{key}` (only [[location]] tables)"
                )));
            }
            let toml::Value::Array(entries) = value else {
                return Err(ConfigError("`location` must be [[location]] tables".into()));
            };
            for (i, entry) in entries.into_iter().enumerate() {
                let name = entry
                    .get("id")
                    .and_then(toml::Value::as_str)
                    .map_or_else(|| format!("#{}", i + 1), str::to_owned);
                let raw: RawLocation = entry.try_into().map_err(|e: toml::de::Error| {
                    ConfigError(format!("location {name:?}: {}", one_line(e.message())))
                })?;
                list.push(raw.validate()?);
            }
        }
        if list.is_empty() {
            return Err(ConfigError(
                "no [[location]] in the file (an empty file is refused, not applied)".into(),
            ));
        }
        Self::new(list)
    }

    /// Reads and validates the file at `path`; the error names the file.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("DOJO_LOCATIONS_FILE={path:?}: {e}")))?;
        Self::from_toml(&text).map_err(|e| ConfigError(format!("{path}: {}", e.0)))
    }

    /// The implicit `default` location of the single-location variables. `websocket`
    /// says whether its socket is wanted (ingress: `DOJO_WS_URL` set too).
    pub fn from_single_location_vars(
        src: &dyn Source,
        websocket: bool,
    ) -> Result<Self, ConfigError> {
        let split = |name: &str| -> Vec<String> {
            optional(src, name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let rename = |e: ConfigError| {
            ConfigError(
                e.0.replace("field `rest_username`", "DOJO_REST_USERNAME")
                    .replace("field `rest_password`", "DOJO_REST_PASSWORD")
                    .replace("field `webhook_secrets`", "DOJO_WEBHOOK_SECRETS")
                    .replace("field `api_keys`", "DOJO_API_KEY"),
            )
        };
        let id = DEFAULT_LOCATION;
        let api_keys = optional(src, "DOJO_API_KEY").into_iter().collect();
        let location = Location {
            id: id.into(),
            account_id: None,
            api_keys: secrets(id, "api_keys", api_keys).map_err(rename)?,
            webhook_secrets: secrets(id, "webhook_secrets", split("DOJO_WEBHOOK_SECRETS"))
                .map_err(rename)?,
            rest: rest(
                id,
                optional(src, "DOJO_REST_USERNAME"),
                optional(src, "DOJO_REST_PASSWORD"),
            )
            .map_err(rename)?,
            feed_tokens: Vec::new(),
            websocket,
        };
        Self::new(vec![location])
    }

    /// `DOJO_LOCATIONS_FILE` if set, else the single-location variables.
    pub fn from_source(src: &dyn Source, single_websocket: bool) -> Result<Self, ConfigError> {
        match optional(src, "DOJO_LOCATIONS_FILE") {
            Some(path) => Self::load(&path),
            None => Self::from_single_location_vars(src, single_websocket),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Location>> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    /// The location whose REST username is `username`.
    pub fn by_rest_username(&self, username: &str) -> Option<&Arc<Location>> {
        self.by_rest_user.get(username).map(|&i| &self.list[i])
    }

    /// The location of Dojo account `account_id` (the implicit `default` location has
    /// no account and is never returned).
    pub fn by_account(&self, account_id: &str) -> Option<&Arc<Location>> {
        self.by_account.get(account_id).map(|&i| &self.list[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Location>> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = r#"
[[location]]
id = "soho"
account_id = "acc_8f3k2"
api_keys = ["sk_sandbox_soho"]
webhook_secrets = ["ws_new", "ws_old"]
rest_username = "dojo-soho"
rest_password = "pw-soho"
feed_tokens = ["till-soho-1"]
websocket = true

[[location]]
id = "camden-2"
account_id = "acc_camden"
webhook_secrets = ["ws_camden"]
"#;

    #[test]
    fn a_good_file_is_read_whole() {
        let l = Locations::from_toml(GOOD).unwrap();
        assert_eq!(l.len(), 2);
        let soho = l.get("soho").unwrap();
        assert_eq!(soho.account_id.as_deref(), Some("acc_8f3k2"));
        assert_eq!(soho.webhook_secrets.len(), 2);
        assert!(soho.websocket);
        assert_eq!(l.by_rest_username("dojo-soho").unwrap().id, "soho");
        assert_eq!(l.by_account("acc_camden").unwrap().id, "camden-2");
        let camden = l.get("camden-2").unwrap();
        assert!(camden.rest.is_none() && !camden.websocket && camden.api_keys.is_empty());
        assert!(soho.owns_account("acc_8f3k2") && !soho.owns_account("acc_camden"));
        let printed = format!("{l:?}");
        for secret in ["sk_sandbox_soho", "ws_new", "pw-soho", "till-soho-1"] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
    }

    #[test]
    fn the_documented_example_is_valid() {
        let l =
            Locations::from_toml(include_str!("../../../deploy/examples/locations.toml")).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.get("soho").unwrap().websocket);
        assert!(l.get("camden").unwrap().rest.is_none());
    }

    #[test]
    fn each_mistake_names_its_location_and_field() {
        let cases: &[(&str, &str)] = &[
            ("[[location]]\nid = \"Soho\"\naccount_id = \"a\"", "\"Soho\": field `id`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"\"", "\"x\": field `account_id`"),
            ("[[location]]\nid = \"x\"", "\"x\": missing field `account_id`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\nwebhook_secret = [\"s\"]", "\"x\": unknown field `webhook_secret`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\nwebsocket = true", "\"x\": field `api_keys`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\nrest_username = \"u\"", "\"x\": field `rest_password`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\nrest_username = \"u:v\"\nrest_password = \"p\"", "\"x\": field `rest_username`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\nwebhook_secrets = [\"\"]", "\"x\": field `webhook_secrets`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\napi_keys = \"k\"", "\"x\": invalid type"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\n[[location]]\nid = \"x\"\naccount_id = \"b\"", "\"x\": field `id`: used by two"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\n[[location]]\nid = \"y\"\naccount_id = \"a\"", "\"y\": field `account_id`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\nfeed_tokens=[\"t\"]\n[[location]]\nid = \"y\"\naccount_id = \"b\"\nfeed_tokens=[\"t\"]", "\"y\": field `feed_tokens`"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\nwebhook_secrets=[\"s1\", \"whsec_shared\"]\n[[location]]\nid = \"y\"\naccount_id = \"b\"\nwebhook_secrets=[\"whsec_shared\"]", "\"y\": field `webhook_secrets`: a secret is also another location's"),
            ("[[location]]\nid = \"x\"\naccount_id = \"a\"\napi_keys=[\"sk_shared\"]\n[[location]]\nid = \"y\"\naccount_id = \"b\"\napi_keys=[\"sk_shared\"]", "\"y\": field `api_keys`"),
            ("[[location]]\naccount_id = \"a\"", "\"#1\": missing field `id`"),
            ("locations = 1", "unknown top-level key `locations`"),
            ("", "no [[location]]"),
            ("[[location]\n", "not valid TOML"),
        ];
        for (text, want) in cases {
            let err = Locations::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
            assert!(!err.contains("_shared"), "never the value: {err:?}");
        }
    }

    #[test]
    fn the_single_location_variables_make_the_default_location() {
        let src: HashMap<String, String> = [
            ("DOJO_WEBHOOK_SECRETS", "a, b,,c"),
            ("DOJO_REST_USERNAME", "dojo"),
            ("DOJO_REST_PASSWORD", "pw"),
            ("DOJO_API_KEY", "sk_x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let l = Locations::from_source(&src, true).unwrap();
        let d = l.get(DEFAULT_LOCATION).unwrap();
        assert_eq!(d.webhook_secrets.len(), 3);
        assert!(d.websocket && d.account_id.is_none() && d.owns_account("anything"));
        assert_eq!(d.api_key().unwrap().expose(), "sk_x");
        let half: HashMap<String, String> =
            [("DOJO_REST_USERNAME".to_owned(), "u".to_owned())].into();
        let err = Locations::from_source(&half, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DOJO_REST_PASSWORD"), "{err}");
    }
}
