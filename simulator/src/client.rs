//! Delivering events to an ingress the way Dojo does: signed webhooks and
//! Basic-authenticated REST calls.

use base64::Engine;

/// Delivers events to an ingress as Dojo does.
#[derive(Clone)]
pub struct Dojo {
    pub http: reqwest::Client,
    pub base_url: String,
    pub webhook_secret: String,
    pub rest_username: String,
    pub rest_password: String,
}

impl Dojo {
    pub fn new(
        base_url: &str,
        webhook_secret: &str,
        rest_username: &str,
        rest_password: &str,
    ) -> Self {
        Self {
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').into(),
            webhook_secret: webhook_secret.into(),
            rest_username: rest_username.into(),
            rest_password: rest_password.into(),
        }
    }

    /// `POST /v1/webhooks/dojo`, signed with the webhook secret.
    pub async fn webhook(&self, body: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}/v1/webhooks/dojo", self.base_url))
            .header("content-type", "application/json")
            .header(
                "dojo-signature",
                common::signature::sign(&self.webhook_secret, body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await
    }

    /// `POST /v1/events` with RFC 7617 Basic credentials.
    pub async fn rest(&self, body: &str) -> reqwest::Result<reqwest::Response> {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.rest_username, self.rest_password));
        self.http
            .post(format!("{}/v1/events", self.base_url))
            .header("content-type", "application/json")
            .header("authorization", format!("Basic {token}"))
            .body(body.to_owned())
            .send()
            .await
    }
}
