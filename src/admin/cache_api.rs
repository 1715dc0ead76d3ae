//! Cache admin API (JSON, behind the admin token):
//!
//! | route | what |
//! |---|---|
//! | `POST /api/cache/purge` | `{"url": …}` (exact, normalized) or `{"pattern": …}` (glob on the URL), optionally `"project": …` or `"shared": true`; removes the entries from every tier and every instance |
//! | `GET /api/cache/stats` | this instance's hits, misses, hit rate, bytes served and savings per project, and the tiers' size |

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::api::{ApiError, ApiResult, body, known_project};
use crate::cache::PurgeFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    pattern: Option<String>,
    project: Option<String>,
    #[serde(default)]
    shared: bool,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_PURGE", message)
}

pub async fn purge(
    State(state): State<AdminState>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let req: PurgeRequest = serde_json::from_value(body(payload)?)
        .map_err(|e| invalid(format!("invalid purge request: {e}")))?;
    let scope = match (&req.project, req.shared) {
        (Some(_), true) => return Err(invalid("give \"project\" or \"shared\", not both")),
        (Some(project), false) => {
            known_project(&state, project)?;
            Some(crate::stages::cache_scope(project, false))
        }
        (None, true) => Some(crate::stages::cache_scope("", true)),
        (None, false) => None,
    };
    let filter = match (req.url, req.pattern) {
        (Some(url), None) => PurgeFilter {
            scope,
            url: Some(crate::stages::normalize_url(&url).map_err(invalid)?),
            pattern: None,
        },
        (None, Some(pattern)) if !pattern.is_empty() => PurgeFilter {
            scope,
            url: None,
            pattern: Some(pattern),
        },
        _ => {
            return Err(invalid(
                "give exactly one of \"url\" or a non-empty \"pattern\"",
            ));
        }
    };
    let store = state.reloader.shared.cache;
    match store.purge_matching(&filter).await {
        Ok(count) => Ok(Json(json!({ "purged": count })).into_response()),
        Err(e) => {
            log::warn!("cache purge: {e}");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "CACHE_UNAVAILABLE",
                format!("the purge did not reach every tier: {e}"),
            ))
        }
    }
}

pub async fn stats(State(state): State<AdminState>) -> Response {
    let shared = &state.reloader.shared;
    let live = state.reloader.live.load();
    let projects: serde_json::Map<String, Value> = shared
        .cache_stats
        .snapshot()
        .into_iter()
        .map(|(project, c)| {
            let mut v = serde_json::to_value(&c).expect("serializable");
            v["hit_rate"] = json!(c.hit_rate());
            (project, v)
        })
        .collect();
    let usage = shared.cache.usage();
    Json(json!({
        "enabled": live.pipeline.cache().is_some(),
        "projects": projects,
        "storage": usage,
    }))
    .into_response()
}
