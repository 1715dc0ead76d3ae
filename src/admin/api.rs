//! Spend-firewall admin API (JSON, behind the admin token):
//!
//! | route | what |
//! |---|---|
//! | `GET /api/policies` | every project: where its policy comes from (`database`, `yaml`, `none`) |
//! | `GET /api/policies/{project}` | the current database policy and its version history |
//! | `POST /api/policies` | `{"project": …, "policy": {…}}`: create (409 if one is active) |
//! | `PUT /api/policies/{project}` | `{"policy": {…}}`: a new version |
//! | `DELETE /api/policies/{project}` | deactivate (a new, inactive version; the YAML policy applies again) |
//! | `GET /api/budgets/{project}` | spent, held and remaining per pool, day and month |
//! | `GET /api/spend?project=&from=&to=&limit=` | the spend journal (`from`/`to`: unix seconds, RFC 3339 or `YYYY-MM-DD`) |
//!
//! A policy document has the shape of `projects[].policy` in the YAML (amounts like
//! `"2.50 USDC"`). Changes apply on every instance within a second (see
//! [`crate::live::sync_policies`]).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AdminState;
use crate::budget::Usage;
use crate::store::PolicyWriteError;

/// An API error: status, code and message, with optional details, as the JSON error body.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub(super) fn details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            e["details"] = d;
        }
        (self.status, Json(json!({ "error": e }))).into_response()
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn body(payload: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    payload.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                "the request body is over the admin API's limit",
            );
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            format!("the request body must be a JSON object: {}", e.body_text()),
        )
    })
}

fn project_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PATH", e.body_text()))
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    log::warn!("admin API: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "the database is unavailable",
    )
}

pub(super) fn known_project(state: &AdminState, project: &str) -> Result<(), ApiError> {
    let live = state.reloader.live.load();
    if live.config.projects.iter().any(|p| p.id == project) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "PROJECT_NOT_FOUND",
            format!("no project {project:?} in the configuration"),
        ))
    }
}

/// Validates a policy document against the current config; 422 with every problem.
fn validated(state: &AdminState, doc: Option<&Value>) -> Result<String, ApiError> {
    let Some(doc) = doc.filter(|d| d.is_object()) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_POLICY",
            "missing \"policy\" object",
        ));
    };
    let live = state.reloader.live.load();
    crate::config::parse_policy(doc, &live.config.payments, &live.config.budgets).map_err(
        |problems| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_POLICY",
                "the policy is invalid",
            )
            .details(json!(problems))
        },
    )?;
    Ok(doc.to_string())
}

fn version_json(v: &crate::store::PolicyVersion) -> Value {
    json!({
        "version": v.version,
        "active": v.active,
        "changed_at": v.changed_at,
        "policy": serde_json::from_str::<Value>(&v.document).unwrap_or(Value::Null),
    })
}

pub async fn list_policies(State(state): State<AdminState>) -> ApiResult {
    let current = state
        .reloader
        .shared
        .store
        .current_policies()
        .await
        .map_err(store_error)?;
    let live = state.reloader.live.load();
    let applied = state.reloader.shared.policies.overrides();
    let policies: Vec<Value> = live
        .config
        .projects
        .iter()
        .map(|p| {
            let db = current.iter().find(|c| c.project == p.id && c.active);
            let source = match (db, &p.policy) {
                (Some(_), _) => "database",
                (None, Some(_)) => "yaml",
                (None, None) => "none",
            };
            let mut entry = json!({"project": p.id, "source": source});
            if let Some(v) = db {
                entry["database"] = version_json(v);
                entry["applied"] = json!(applied.contains_key(&p.id));
            }
            entry
        })
        .collect();
    Ok(Json(json!({ "policies": policies })).into_response())
}

pub async fn get_policy(
    State(state): State<AdminState>,
    project: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let project = project_name(project)?;
    known_project(&state, &project)?;
    let history = state
        .reloader
        .shared
        .store
        .policy_history(&project)
        .await
        .map_err(store_error)?;
    let live = state.reloader.live.load();
    let yaml = live
        .config
        .projects
        .iter()
        .any(|p| p.id == project && p.policy.is_some());
    let current = history.first().filter(|v| v.active);
    let source = match (current, yaml) {
        (Some(_), _) => "database",
        (None, true) => "yaml",
        (None, false) => "none",
    };
    Ok(Json(json!({
        "project": project,
        "source": source,
        "current": current.map(version_json),
        "history": history.iter().map(version_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn write(state: &AdminState, project: &str, doc: Option<&Value>, create: bool) -> ApiResult {
    known_project(state, project)?;
    let document = validated(state, doc)?;
    let store = &state.reloader.shared.store;
    match store.put_policy(project, &document, create).await {
        Ok(version) => {
            applied(state).await;
            let status = if create {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({"project": project, "version": version, "active": true});
            Ok((status, Json(body)).into_response())
        }
        Err(PolicyWriteError::Exists(p)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "POLICY_EXISTS",
            format!("project {p} already has an active policy (use PUT)"),
        )),
        Err(PolicyWriteError::NotFound(p)) => Err(not_found_policy(&p)),
        Err(PolicyWriteError::Store(e)) => Err(store_error(e)),
    }
}

/// After a policy write: waits until the proxy applies it, so the next request sees it (at most
/// a poll interval; a slow database only delays the answer).
async fn applied(state: &AdminState) {
    let book = &state.reloader.shared.policies;
    book.applied(book.changed(), crate::live::POLICY_POLL_INTERVAL)
        .await;
}

fn not_found_policy(project: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "POLICY_NOT_FOUND",
        format!("project {project} has no active policy"),
    )
}

pub async fn create_policy(
    State(state): State<AdminState>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let v = body(payload)?;
    let project = v.get("project").and_then(Value::as_str).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_POLICY",
            "missing \"project\" string",
        )
    })?;
    write(&state, project, v.get("policy"), true).await
}

pub async fn update_policy(
    State(state): State<AdminState>,
    project: Result<Path<String>, PathRejection>,
    payload: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let project = project_name(project)?;
    let v = body(payload)?;
    write(&state, &project, v.get("policy"), false).await
}

pub async fn delete_policy(
    State(state): State<AdminState>,
    project: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let project = project_name(project)?;
    known_project(&state, &project)?;
    match state
        .reloader
        .shared
        .store
        .deactivate_policy(&project)
        .await
    {
        Ok(version) => {
            applied(&state).await;
            Ok(
                Json(json!({"project": project, "version": version, "active": false}))
                    .into_response(),
            )
        }
        Err(PolicyWriteError::NotFound(p) | PolicyWriteError::Exists(p)) => {
            Err(not_found_policy(&p))
        }
        Err(PolicyWriteError::Store(e)) => Err(store_error(e)),
    }
}

fn window_json(
    label: &str,
    usage: &crate::budget::WindowUsage,
    limit: Option<alloy_primitives::U256>,
) -> Value {
    json!({
        "window": label,
        "spent": usage.spent.to_string(),
        "held": usage.held.to_string(),
        "limit": limit.map(|l| l.to_string()),
        "remaining": limit.map(|l| usage.remaining(l).to_string()),
    })
}

pub async fn budgets(
    State(state): State<AdminState>,
    project: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let project = project_name(project)?;
    known_project(&state, &project)?;
    let live = state.reloader.live.load();
    let shared = &state.reloader.shared;
    let policy = live
        .config
        .projects
        .iter()
        .find(|p| p.id == project)
        .and_then(|p| shared.policies.effective(p));
    let now = crate::clock::unix_now();
    let mut pools = Vec::new();
    for rule in policy.iter().flat_map(|p| p.budgets.iter()) {
        let key = crate::budget::BudgetKey::new(project.clone(), rule.pool.clone());
        let usage: Usage = shared.ledger.usage(&key, now).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "BUDGET_UNAVAILABLE",
                e.to_string(),
            )
        })?;
        // Payments in doubt hold budget (included in `held`); shown apart as well.
        let filter = crate::store::IntentFilter {
            project: Some(&project),
            pool: Some(&rule.pool),
            month: Some(&usage.windows.month),
            ..crate::store::IntentFilter::states(&[crate::store::IntentState::InDoubt])
        };
        let in_doubt = shared
            .store
            .intents(&filter, MAX_SPEND_ROWS)
            .await
            .map_err(store_error)?;
        let sum = |day: bool| {
            in_doubt
                .iter()
                .filter(|r| !day || r.intent.window_day == usage.windows.day)
                .fold(alloy_primitives::U256::ZERO, |a, r| {
                    a.saturating_add(r.intent.amount)
                })
                .to_string()
        };
        pools.push(json!({
            "pool": rule.pool,
            "per_request": rule.per_request.map(|v| v.to_string()),
            "daily": window_json(&usage.windows.day, &usage.day, rule.daily),
            "monthly": window_json(&usage.windows.month, &usage.month, rule.monthly),
            "in_doubt": {"count": in_doubt.len(), "daily": sum(true), "monthly": sum(false)},
        }));
    }
    Ok(Json(json!({
        "project": project,
        "ledger": shared.ledger.kind(),
        "enforce": policy.as_ref().map(|p| p.enforce),
        "budgets": pools,
    }))
    .into_response())
}

/// Unix seconds, RFC 3339, or a UTC date (`YYYY-MM-DD` = its midnight).
pub(super) fn parse_time(raw: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(n) = raw.parse::<i64>() {
        return Some(n);
    }
    if let Ok(t) = time::OffsetDateTime::parse(raw, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(raw, &format)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

pub use crate::store::MAX_SPEND_ROWS;

fn time_bound(raw: Option<&str>, default: i64, name: &str) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(r) => parse_time(r).ok_or_else(|| {
            super::params::bad(
                name,
                format!("expected unix seconds, RFC 3339 or YYYY-MM-DD, got {r:?}"),
            )
        }),
    }
}

pub async fn spend(
    State(state): State<AdminState>,
    query: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult {
    let q = super::params::Params::parse(query, &["project", "from", "to", "limit"])?;
    let project = q
        .get("project")
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .ok_or_else(|| super::params::bad("project", "is required"))?;
    known_project(&state, &project)?;
    let from = time_bound(q.get("from"), 0, "from")?;
    let to = time_bound(q.get("to"), i64::MAX, "to")?;
    if from > to {
        return Err(super::params::bad("from", "is after to"));
    }
    let limit = q.number("limit", 1000, 1..=MAX_SPEND_ROWS)?;
    let rows = state
        .reloader
        .shared
        .store
        .spend(&project, from, to, limit)
        .await
        .map_err(store_error)?;
    // Payments sent whose outcome is unknown, listed apart from the journal (they are not
    // known to be spent): in doubt (holding budget) and unresolved (expired in doubt).
    let store = &state.reloader.shared.store;
    let open = |state| crate::store::IntentFilter {
        project: Some(&project),
        created: Some((from.saturating_mul(1000), to.saturating_mul(1000))),
        ..crate::store::IntentFilter::states(state)
    };
    let in_doubt = store
        .intents(&open(&[crate::store::IntentState::InDoubt]), limit)
        .await
        .map_err(store_error)?;
    let unresolved = store
        .intents(&open(&[crate::store::IntentState::Unresolved]), limit)
        .await
        .map_err(store_error)?;
    // Base units per asset (`network/asset`): amounts of different tokens never add up.
    let total = |rows: &[crate::store::IntentRow]| {
        let mut by_asset = std::collections::BTreeMap::<String, alloy_primitives::U256>::new();
        for r in rows {
            let sum = by_asset
                .entry(format!("{}/{}", r.intent.network, r.intent.asset))
                .or_default();
            *sum = sum.saturating_add(r.intent.amount);
        }
        by_asset
            .into_iter()
            .map(|(k, v)| (k, Value::String(v.to_string())))
            .collect::<serde_json::Map<_, _>>()
    };
    Ok(Json(json!({
        "project": project, "from": from, "to": to, "count": rows.len(), "spend": rows,
        "in_doubt": {"count": in_doubt.len(), "amounts": total(&in_doubt), "payments": in_doubt},
        "unresolved": {"count": unresolved.len(), "amounts": total(&unresolved), "payments": unresolved},
    }))
    .into_response())
}
