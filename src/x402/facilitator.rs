//! x402 facilitator client (§7): `GET /supported` for health and `POST /verify` to check pag0's
//! own payment before sending it (`verify_before_pay`). Settlement stays the resource server's.

use std::sync::RwLock;
use std::time::Duration;

use crate::clock::unix_now as now;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Offer;
use crate::config::Secret;

/// Why the facilitator could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FacilitatorError {
    #[error("facilitator unreachable or timed out")]
    Unavailable,
    #[error("facilitator answered HTTP {0}")]
    Status(u16),
    #[error("facilitator answered something that is not x402 JSON")]
    Malformed,
}

/// Outcome of `/verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid(String),
}

/// Last `/supported` probe, for `/health`.
#[derive(Debug, Clone)]
pub enum Supported {
    Unknown,
    Up { kinds: Vec<String>, checked_at: u64 },
    Down { error: String, checked_at: u64 },
}

pub struct Facilitator {
    base: String,
    token: Option<Secret>,
    pub verify_before_pay: bool,
    http: reqwest::Client,
    supported: RwLock<Supported>,
}

impl std::fmt::Debug for Facilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facilitator")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyResponse {
    is_valid: Option<bool>,
    #[serde(default)]
    invalid_reason: Option<String>,
}

impl Facilitator {
    pub fn new(
        url: &str,
        token: Option<Secret>,
        verify_before_pay: bool,
        timeout: Duration,
    ) -> Facilitator {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("reqwest client with rustls builds");
        Facilitator {
            base: url.trim_end_matches('/').to_string(),
            token,
            verify_before_pay,
            http,
            supported: RwLock::new(Supported::Unknown),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        }
    }

    /// `GET /supported`; remembers the outcome for [`Facilitator::supported`].
    pub async fn probe(&self) -> Supported {
        let outcome = match self
            .request(reqwest::Method::GET, "/supported")
            .send()
            .await
        {
            Err(_) => Err(FacilitatorError::Unavailable),
            Ok(r) if !r.status().is_success() => Err(FacilitatorError::Status(r.status().as_u16())),
            Ok(r) => r
                .json::<Value>()
                .await
                .map_err(|_| FacilitatorError::Malformed),
        };
        let state = match outcome {
            Ok(body) => {
                let kinds = body["kinds"]
                    .as_array()
                    .map(|k| {
                        k.iter()
                            .map(|k| {
                                format!(
                                    "v{}-{}-{}",
                                    k["x402Version"],
                                    k["scheme"].as_str().unwrap_or("?"),
                                    k["network"].as_str().unwrap_or("?")
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Supported::Up {
                    kinds,
                    checked_at: now(),
                }
            }
            Err(e) => Supported::Down {
                error: e.to_string(),
                checked_at: now(),
            },
        };
        *self.supported.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
        state
    }

    pub fn supported(&self) -> Supported {
        self.supported
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `POST /verify` of a payment pag0 signed, against the offer it answers.
    pub async fn verify(
        &self,
        payment_header: &str,
        offer: &Offer,
    ) -> Result<Verdict, FacilitatorError> {
        let payload: Value = base64::engine::general_purpose::STANDARD
            .decode(payment_header)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(FacilitatorError::Malformed)?;
        let requirements: Value =
            serde_json::from_str(offer.raw.get()).map_err(|_| FacilitatorError::Malformed)?;
        let body = json!({"x402Version": offer.version.number(), "paymentPayload": payload, "paymentRequirements": requirements});
        let resp = self
            .request(reqwest::Method::POST, "/verify")
            .json(&body)
            .send()
            .await
            .map_err(|_| FacilitatorError::Unavailable)?;
        let status = resp.status().as_u16();
        // Facilitators answer an invalid payment with 200 or 400 and a JSON body (§7.1).
        let parsed: Option<VerifyResponse> = resp.json().await.ok();
        match parsed {
            Some(VerifyResponse {
                is_valid: Some(true),
                ..
            }) => Ok(Verdict::Valid),
            Some(VerifyResponse {
                is_valid: Some(false),
                invalid_reason,
            }) => Ok(Verdict::Invalid(
                invalid_reason.unwrap_or_else(|| "invalid".into()),
            )),
            _ if (200..300).contains(&status) => Err(FacilitatorError::Malformed),
            _ => Err(FacilitatorError::Status(status)),
        }
    }
}
