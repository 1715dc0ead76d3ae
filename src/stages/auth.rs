//! `auth`: identifies the project from `Proxy-Authorization: Basic base64(project:key)` or
//! `X-Pag0-API-Key: key`. Keys are compared by SHA-256 digest; the key itself is never stored.

use async_trait::async_trait;
use base64::Engine;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use sha2::{Digest, Sha256};

use super::{Flow, Stage};
use crate::config::file::AUTH_REALM;
use crate::proxy::respond::{ErrorCode, Reply};
use crate::proxy::{RequestCtx, TargetKind};

/// Header carrying an API key on reverse-proxy routes (or instead of proxy credentials).
pub const API_KEY_HEADER: &str = "x-pag0-api-key";

pub struct AuthStage;

/// Credentials as presented: `(claimed project id, key)`.
fn credentials(req: &RequestHeader) -> Option<(Option<String>, String)> {
    if let Some(value) = req.headers.get(http::header::PROXY_AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, key) = decoded.split_once(':')?;
        return Some((Some(user.to_string()), key.to_string()));
    }
    let key = req.headers.get(API_KEY_HEADER)?.to_str().ok()?;
    Some((None, key.trim().to_string()))
}

/// The SHA-256 digest that project configs store for `key`.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[async_trait]
impl Stage for AuthStage {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn sees_connect(&self) -> bool {
        true
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let found = credentials(session.req_header());
        let project = found.as_ref().and_then(|(user, key)| {
            let project = ctx.live.projects_by_key.get(&key_digest(key))?;
            match user {
                Some(user) if user != &project.id => None,
                _ => Some(project.clone()),
            }
        });
        if let Some(project) = project {
            ctx.project = Some(project);
            return Flow::Continue;
        }
        let message = if found.is_some() {
            "invalid credentials"
        } else {
            "credentials required"
        };
        let forward = matches!(
            ctx.target.as_ref().map(|t| &t.kind),
            Some(TargetKind::Forward | TargetKind::Connect) | None
        );
        let challenge = format!("Basic realm=\"{AUTH_REALM}\"");
        Flow::Respond(if forward {
            Reply::new(
                ErrorCode::ProxyAuthRequired,
                format!("{message}: use http://PROJECT:KEY@ as proxy URL"),
            )
            .header("proxy-authenticate", challenge)
        } else {
            Reply::new(
                ErrorCode::Unauthorized,
                format!("{message}: send X-Pag0-API-Key"),
            )
            .header("www-authenticate", challenge)
        })
    }
}
