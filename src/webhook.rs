//! Outgoing JSON webhooks: spend approvals (pag0 waits for the answer) and anomaly alerts
//! (fire and forget).

use std::time::Duration;

use serde_json::Value;

use crate::config::Secret;

/// A webhook endpoint from the YAML.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<Secret>,
    pub timeout: Duration,
}

/// Why a webhook call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable")]
    Unreachable,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answered something that is not JSON")]
    Malformed,
}

/// One shared HTTP client (connection pooling across calls).
fn client() -> &'static reqwest::Client {
    static CLIENT: once_cell::sync::Lazy<reqwest::Client> = once_cell::sync::Lazy::new(|| {
        reqwest::Client::builder()
            .user_agent(concat!("pag0/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static client config")
    });
    &CLIENT
}

impl Webhook {
    /// POSTs `body` and returns the JSON answer of a 2xx response.
    pub async fn post(&self, body: &Value) -> Result<Value, WebhookError> {
        let mut req = client().post(&self.url).json(body).timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                WebhookError::Timeout(self.timeout)
            } else {
                WebhookError::Unreachable
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(WebhookError::Status(status.as_u16()));
        }
        resp.json().await.map_err(|e| {
            if e.is_timeout() {
                WebhookError::Timeout(self.timeout)
            } else {
                WebhookError::Malformed
            }
        })
    }
}
