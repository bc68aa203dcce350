//! `ingress register ws|rest`: tells Dojo which HandleEvent capabilities this POS serves
//! (`PUT {DOJO_API_URL}/epos/integrations/ws|rest`). Every PUT replaces the whole set,
//! so both event capabilities are always sent together.
//!
//! With locations (`--location ID` or `--all`), each location registers with its own
//! API key (docs/LOCATIONS.md); its REST URL is `{--url}/locations/{id}` and its
//! credentials are the location's own.

use common::locations::{Location, Locations};
use common::settings::{optional, ConfigError, Secret, Source};
use serde_json::{json, Value};

/// Dojo's API version header value by default (`DOJO_API_VERSION` overrides): the one
/// of the shared client, [`common::dojo_api`].
pub const API_VERSION: &str = common::dojo_api::DEFAULT_API_VERSION;
const CAPABILITIES: [&str; 2] = [
    "HandleEvent:payment_intent.created",
    "HandleEvent:payment_intent.status_updated",
];

/// Which channel to register.
#[derive(Debug, Clone)]
pub enum Target {
    Ws,
    Rest {
        url: String,
        username: String,
        password: Secret,
    },
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub api_url: String,
    /// The `version` header (`DOJO_API_VERSION`).
    pub api_version: String,
    pub api_key: Secret,
    pub software_house_id: String,
    pub reseller_id: Option<String>,
    pub target: Target,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Its cause (refused connection, DNS, TLS, timeout) is in the source chain:
    /// print it with `common::error_chain`.
    #[error("cannot reach Dojo at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Dojo refused the registration ({status}){problem}")]
    Refused {
        status: reqwest::StatusCode,
        problem: String,
    },
}

impl Registration {
    /// Reads `DOJO_API_URL`, `DOJO_API_KEY`, `DOJO_SOFTWARE_HOUSE_ID`, `DOJO_RESELLER_ID`.
    pub fn from_source(src: &dyn Source, target: Target) -> Result<Self, ConfigError> {
        let key = optional(src, "DOJO_API_KEY")
            .ok_or_else(|| ConfigError("DOJO_API_KEY is required to register".into()))?;
        Self::with_key(src, Secret::new(key), target)
    }

    /// One location's registration: its first API key; for REST, its own route under
    /// `base_url` and its own credentials. `Err` says what the location lacks.
    pub fn for_location(
        src: &dyn Source,
        location: &Location,
        rest_base_url: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let key = location
            .api_key()
            .cloned()
            .ok_or_else(|| ConfigError(format!("location {:?} has no api_keys", location.id)))?;
        let target = match rest_base_url {
            None => Target::Ws,
            Some(base) => {
                let rest = location.rest.as_ref().ok_or_else(|| {
                    ConfigError(format!(
                        "location {:?} has no rest_username/rest_password",
                        location.id
                    ))
                })?;
                Target::Rest {
                    url: format!("{}/locations/{}", base.trim_end_matches('/'), location.id),
                    username: rest.username.clone(),
                    password: rest.password.clone(),
                }
            }
        };
        Self::with_key(src, key, target)
    }

    /// The locations `--location ID` or `--all` name. With `--all`, the file's locations
    /// that have the channel: `websocket = true` for WebSocket, `rest_username` and
    /// `rest_password` for REST (a webhooks-only location is not registered). Empty when
    /// none has it; an unknown `ID` is an error.
    pub fn chosen<'a>(
        locations: &'a Locations,
        only: Option<&str>,
        websocket: bool,
    ) -> Result<Vec<&'a Location>, ConfigError> {
        match only {
            Some(id) => locations
                .get(id)
                .map(|l| vec![&**l])
                .ok_or_else(|| ConfigError(format!("no location {id:?} in the locations"))),
            None => Ok(locations
                .iter()
                .filter(|l| {
                    if websocket {
                        l.websocket
                    } else {
                        l.rest.is_some()
                    }
                })
                .map(|l| &**l)
                .collect()),
        }
    }

    fn with_key(src: &dyn Source, api_key: Secret, target: Target) -> Result<Self, ConfigError> {
        if let Target::Rest { url, .. } = &target {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError(format!("--url {url:?} must be an http(s) URL")));
            }
        }
        let api = common::dojo_api::ApiConfig::from_source(src)?;
        Ok(Self {
            api_url: api.url,
            api_version: api.version,
            api_key,
            software_house_id: optional(src, "DOJO_SOFTWARE_HOUSE_ID").ok_or_else(|| {
                ConfigError("DOJO_SOFTWARE_HOUSE_ID is required to register".into())
            })?,
            reseller_id: optional(src, "DOJO_RESELLER_ID"),
            target,
        })
    }

    pub fn url(&self) -> String {
        let kind = match self.target {
            Target::Ws => "ws",
            Target::Rest { .. } => "rest",
        };
        format!("{}/epos/integrations/{kind}", self.api_url)
    }

    /// The JSON body; `reveal` false masks the REST password.
    pub fn body(&self, reveal: bool) -> Value {
        let capabilities: Vec<Value> = CAPABILITIES
            .iter()
            .map(|name| json!({"name": name, "version": "v1"}))
            .collect();
        match &self.target {
            Target::Ws => json!({"capabilities": capabilities}),
            Target::Rest {
                url,
                username,
                password,
            } => json!({
                "url": url,
                "capabilities": capabilities,
                "auth": {
                    "authType": "basic",
                    "basic": {"username": username, "password": if reveal { password.expose() } else { "***" }},
                },
            }),
        }
    }

    /// Request headers; `reveal` false masks the API key.
    pub fn headers(&self, reveal: bool) -> Vec<(&'static str, String)> {
        let key = if reveal {
            self.api_key.expose().to_owned()
        } else {
            // Enough of the key to tell sandbox from production, never the secret part.
            let k = self.api_key.expose();
            let shown = (k.chars().count() / 2).min(11);
            format!("{}***", k.chars().take(shown).collect::<String>())
        };
        let mut headers = vec![
            ("authorization", format!("Basic {key}")),
            ("software-house-id", self.software_house_id.clone()),
            ("version", self.api_version.clone()),
            ("content-type", "application/json".to_owned()),
        ];
        if let Some(r) = &self.reseller_id {
            headers.push(("reseller-id", r.clone()));
        }
        headers
    }

    /// What `--dry-run` prints: the request, secrets masked.
    pub fn describe(&self) -> String {
        let mut out = format!("PUT {}\n", self.url());
        for (name, value) in self.headers(false) {
            out += &format!("{name}: {value}\n");
        }
        out + "\n" + &serde_json::to_string_pretty(&self.body(false)).expect("JSON")
    }

    /// Sends the registration. `Ok` carries a one-line summary.
    pub async fn send(&self, http: &reqwest::Client) -> Result<String, RegisterError> {
        let mut request = http.put(self.url()).json(&self.body(true));
        for (name, value) in self.headers(true) {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|source| RegisterError::Unreachable {
                url: self.url(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(format!(
                "registered with Dojo ({} {}): {}",
                status.as_u16(),
                self.url(),
                CAPABILITIES.map(|c| format!("{c} v1")).join(", ")
            ));
        }
        let text = response.text().await.unwrap_or_default();
        Err(RegisterError::Refused {
            status,
            problem: describe_problem(&text),
        })
    }
}

/// Renders an RFC 7807 problem-details body (or the raw text) for the terminal.
pub fn describe_problem(body: &str) -> String {
    let Ok(problem) = serde_json::from_str::<Value>(body) else {
        let text: String = body.trim().chars().take(2000).collect();
        return if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        };
    };
    let field = |name: &str| problem.get(name).and_then(Value::as_str).map(str::to_owned);
    let mut out = String::new();
    for part in [field("title"), field("detail")].into_iter().flatten() {
        out += &format!(": {part}");
    }
    if let Some(errors) = problem.get("errors").and_then(Value::as_object) {
        for (name, messages) in errors {
            let messages = match messages {
                Value::Array(items) => items
                    .iter()
                    .map(|m| {
                        m.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| m.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.to_string(),
            };
            out += &format!("\n  {name}: {messages}");
        }
    }
    if let Some(trace) = field("traceId") {
        out += &format!("\n  traceId: {trace}");
    }
    if out.is_empty() {
        out = format!(": {problem}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<String, String> {
        [
            ("DOJO_API_KEY", "sk_sandbox_abcdefghijkl"),
            ("DOJO_SOFTWARE_HOUSE_ID", "shid"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn dry_run_shows_the_request_with_secrets_masked() {
        let target = Target::Rest {
            url: "https://pos.example/dojo".into(),
            username: "u".into(),
            password: Secret::new("pw-secret"),
        };
        let text = Registration::from_source(&env(), target)
            .unwrap()
            .describe();
        assert!(
            text.starts_with("PUT https://api.dojo.tech/epos/integrations/rest\n"),
            "{text}"
        );
        assert!(text.contains("HandleEvent:payment_intent.status_updated"));
        assert!(
            !text.contains("pw-secret") && !text.contains("abcdefghijkl"),
            "{text}"
        );
    }

    #[test]
    fn missing_key_or_software_house_is_a_clear_error() {
        let err =
            Registration::from_source(&HashMap::<String, String>::new(), Target::Ws).unwrap_err();
        assert!(err.to_string().contains("DOJO_API_KEY"));
    }

    #[test]
    fn all_chooses_the_locations_that_have_the_channel() {
        let locations = Locations::from_toml(
            r#"
            [[location]]
            id = "soho"
            account_id = "acc_1"
            api_keys = ["sk_1"]
            rest_username = "dojo-soho"
            rest_password = "p"
            websocket = true
            [[location]]
            id = "camden"
            account_id = "acc_2"
            webhook_secrets = ["ws_2"]
            [[location]]
            id = "leeds"
            account_id = "acc_3"
            api_keys = ["sk_3"]
            rest_username = "dojo-leeds"
            rest_password = "p"
            "#,
        )
        .unwrap();
        let ids = |websocket| -> Vec<String> {
            Registration::chosen(&locations, None, websocket)
                .unwrap()
                .iter()
                .map(|l| l.id.clone())
                .collect()
        };
        assert_eq!(ids(true), ["soho"]);
        assert_eq!(ids(false), ["soho", "leeds"]);
        // `--location` names one, whatever it has (its registration then says what is missing).
        let one = Registration::chosen(&locations, Some("camden"), false).unwrap();
        assert_eq!(one[0].id, "camden");
        assert!(Registration::chosen(&locations, Some("nope"), true).is_err());
    }

    #[test]
    fn problem_details_are_readable() {
        let text = describe_problem(
            r#"{"type":"x","title":"One or more validation errors occurred.","status":400,"errors":{"url":["must be https"]},"traceId":"00-abc"}"#,
        );
        assert_eq!(
            text,
            ": One or more validation errors occurred.\n  url: must be https\n  traceId: 00-abc"
        );
        assert_eq!(describe_problem("oops"), ": oops");
    }
}
