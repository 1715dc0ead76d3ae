//! What every admin API resource that projects may read shares: who is asking ([`Access`]:
//! the admin token or a project's API key) and strict query parameters ([`Params`]: unknown
//! or repeated names and bad values are a 400 naming the parameter).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AdminState;
use super::api::ApiError;

/// Who is asking.
pub enum Access {
    /// The admin token: every project.
    Admin,
    /// A project's API key: that project only.
    Project(String),
}

impl FromRequestParts<AdminState> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Access, ApiError> {
        let bearer = bearer_token(&parts.headers);
        let api_key = parts
            .headers
            .get(crate::stages::API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let live = state.reloader.live.load();
        if let Some(token) = bearer
            && bool::from(
                token
                    .as_bytes()
                    .ct_eq(live.config.admin.token.expose().as_bytes()),
            )
        {
            return Ok(Access::Admin);
        }
        let Some(key) = api_key.or(bearer) else {
            return Err(unauthorized(
                "send Authorization: Bearer <admin token or project key>, or X-Pag0-API-Key",
            ));
        };
        match live.projects_by_key.get(&crate::stages::key_digest(key)) {
            Some(project) => Ok(Access::Project(project.id.clone())),
            None => Err(unauthorized("invalid admin token or project key")),
        }
    }
}

/// The credentials of `Authorization: Bearer <token>` (the scheme in any case, RFC 9110
/// §11.1).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}

pub fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_PARAMETER",
        format!("{param}: {message}"),
    )
    .details(json!({ "parameter": param }))
}

/// The query string: known names only, each at most once.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Params, ApiError> {
        let Query(pairs) = query.map_err(|e| bad("query", e.body_text()))?;
        let mut map = HashMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(bad(
                    &name,
                    format!(
                        "unknown parameter (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(bad(&name, "given more than once"));
            }
        }
        Ok(Params(map))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A free-text value (host, project): printable and at most 255 bytes.
    pub fn text(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            Some(v) if v.len() > 255 || v.chars().any(char::is_control) => {
                Err(bad(name, "at most 255 printable characters"))
            }
            other => Ok(other),
        }
    }

    pub fn number(
        &self,
        name: &str,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    bad(
                        name,
                        format!("expected an integer in {}..={}", range.start(), range.end()),
                    )
                }),
        }
    }
}
