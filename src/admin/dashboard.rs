//! The operator dashboard: static assets embedded in the binary (no build step, nothing
//! fetched from elsewhere), served on the admin listener under `/dashboard`. The page signs in
//! with the admin token or a project's key and reads the same JSON API as everyone else; these
//! routes themselves hold no data, so they need no token. Every answer carries headers that
//! keep the page to its own origin: a strict Content-Security-Policy (scripts and styles from
//! this origin only, no inline code, API calls to this origin only), no framing, no MIME
//! sniffing, no referrer.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Where the dashboard lives (the admin token check lets these paths through).
pub(super) const PREFIX: &str = "/dashboard";

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Content-Security-Policy of every dashboard answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The headers every dashboard answer carries.
pub fn security_headers() -> [(HeaderName, HeaderValue); 6] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ]
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut().extend(security_headers());
    resp
}

/// `GET /dashboard`: the page.
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/app.js`
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/app.css`
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /dashboard/config.json`: the page's settings from the YAML (nothing secret).
pub(super) async fn settings(
    axum::extract::State(state): axum::extract::State<super::AdminState>,
) -> Response {
    let live = state.reloader.live.load();
    let mut resp = axum::Json(serde_json::json!({
        "explorer_tx_url": live.config.admin.explorer_tx_url,
    }))
    .into_response();
    resp.headers_mut().extend(security_headers());
    resp
}

/// Anything else under `/dashboard/`: a 404 with the same headers.
pub(super) async fn missing() -> Response {
    let mut resp = (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": {"code": "NOT_FOUND", "message": "no such dashboard asset"}})),
    )
        .into_response();
    resp.headers_mut().extend(security_headers());
    resp
}
