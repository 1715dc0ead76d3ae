//! On-chain audit API (JSON).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/audit/feedback/{id}` | the record a feedback rates, byte for byte what its `feedbackHash` hashes (no token needed when `audit.public_records: true`) |
//! | `GET /api/audit/feedback` | the outbox, newest first (`state=pending\|sent\|confirmed\|reverted`, `limit`) |
//! | `GET /api/audit/reconciliation` | journaled payments as the chain sees them, counts per class, and unknown spend (`state=settled\|not_settled\|mismatch\|pending`, `project`, `limit`) |

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AdminState;
use super::api::{ApiError, ApiResult};
use super::params::{Params, bad};
use crate::audit::{outbox, reconcile};

/// Where feedback records are served (public when `audit.public_records` is on).
pub(super) const RECORD_PREFIX: &str = "/api/audit/feedback/";

fn audit(state: &AdminState) -> Result<&std::sync::Arc<crate::audit::Audit>, ApiError> {
    state.reloader.shared.audit.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "AUDIT_DISABLED",
            "on-chain audit is not configured (no audit: section)",
        )
    })
}

fn unavailable(e: crate::store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        e.to_string(),
    )
}

/// `GET /api/audit/feedback/{id}`: the canonical JSON record, exactly as hashed.
pub(super) async fn record(State(state): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let audit = audit(&state)?;
    if id.len() > 200 || id.chars().any(|c| c.is_control()) {
        return Err(bad("id", "not a feedback id"));
    }
    match audit.feedback(&id).await.map_err(unavailable)? {
        Some(row) => Ok(([(header::CONTENT_TYPE, "application/json")], row.record).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no feedback {id:?}"),
        )),
    }
}

/// `GET /api/audit/feedback`: the outbox, newest first.
pub(super) async fn list(
    State(state): State<AdminState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let audit = audit(&state)?;
    let params = Params::parse(query, &["state", "limit"])?;
    let state_filter = match params.get("state") {
        None => None,
        Some(s @ (outbox::PENDING | outbox::SENT | outbox::CONFIRMED | outbox::REVERTED)) => {
            Some(s.to_string())
        }
        Some(_) => {
            return Err(bad(
                "state",
                "expected pending, sent, confirmed or reverted",
            ));
        }
    };
    let filter = outbox::Filter {
        state: state_filter,
        limit: params.number("limit", 100, 1..=1000)?,
    };
    let rows = audit.list(&filter).await.map_err(unavailable)?;
    let settings = audit.settings();
    let items: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut v = json!(r);
            v["feedback_uri"] = json!(settings.feedback_uri(&r.id));
            v
        })
        .collect();
    let status = audit.status();
    Ok(axum::Json(json!({
        "signer": settings.signer.address(),
        "chain_id": settings.chain_id,
        "registry": settings.reputation_registry,
        "backlog": status.backlog,
        "feedback": items,
    }))
    .into_response())
}

/// `GET /api/audit/reconciliation`: counts per class, the payments (newest checks first) and
/// the unknown spend found.
pub(super) async fn reconciliation(
    State(state): State<AdminState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(query, &["state", "project", "limit"])?;
    let state_filter = match params.get("state") {
        None => None,
        Some(s) if reconcile::STATES.contains(&s) => Some(s.to_string()),
        Some(_) => {
            return Err(bad(
                "state",
                "expected settled, not_settled, mismatch or pending",
            ));
        }
    };
    let filter = reconcile::Filter {
        state: state_filter,
        project: params.text("project")?.map(str::to_string),
        limit: params.number("limit", 100, 1..=1000)?,
    };
    let db = state.reloader.shared.store.db();
    let counts = reconcile::state_counts(&db).await.map_err(unavailable)?;
    let payments = reconcile::list(&db, &filter).await.map_err(unavailable)?;
    let unknown = reconcile::unknown_spend(&db, filter.limit)
        .await
        .map_err(unavailable)?;
    let counts: serde_json::Map<String, serde_json::Value> = reconcile::STATES
        .iter()
        .map(|s| (s.to_string(), json!(counts.get(*s).copied().unwrap_or(0))))
        .collect();
    Ok(axum::Json(json!({
        "counts": counts,
        "payments": payments,
        "unknown_spend": unknown,
    }))
    .into_response())
}
