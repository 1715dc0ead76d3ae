//! Who is asking (JSON): the dashboard reads it once after signing in, so that it asks a
//! project key only for what that key may read.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/session` | `{"role": "admin"}` for the admin token, `{"role": "project", "project": id}` for a project's key |

use axum::Json;
use axum::response::IntoResponse;
use serde_json::json;

use super::api::ApiResult;
use super::params::Access;

pub async fn session(access: Access) -> ApiResult {
    let body = match access {
        Access::Admin => json!({"role": "admin"}),
        Access::Project(id) => json!({"role": "project", "project": id}),
    };
    Ok(Json(body).into_response())
}
