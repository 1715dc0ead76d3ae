//! The admin listener: `GET /health`, `GET /metrics`, `POST /reload` and the admin API, behind
//! the bearer token from `admin.token` (the analytics routes also take a project's key). Served
//! by axum on hyper connections (see [`listener`]: deadlines and a connection cap) inside a
//! Pingora background service so it starts and stops with the server.

use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::live::{ReloadError, Reloader};

mod analytics_api;
mod api;
mod audit_api;
mod cache_api;
mod curation_api;
mod dashboard;
mod fairness;
mod listener;
mod params;
mod session_api;

#[derive(Clone)]
struct AdminState {
    reloader: Arc<Reloader>,
    started: Instant,
    /// The shares of the API's reads (see [`fairness`]).
    fairness: Arc<fairness::Fairness>,
}

/// The admin HTTP service. The socket is bound when the server is built so a taken port is a
/// startup error, not a log line. It is bound with `SO_REUSEPORT` so that a graceful upgrade
/// (`pag0 --upgrade`) can bind it while the old process is still draining (Pingora hands over
/// the proxy listeners itself, but not this one).
pub struct AdminService {
    listener: std::sync::Mutex<Option<StdTcpListener>>,
    state: AdminState,
}

impl AdminService {
    pub fn bind(reloader: Arc<Reloader>) -> std::io::Result<AdminService> {
        let addr = reloader.live.load().config.admin.listen;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        let listener: StdTcpListener = socket.into();
        Ok(AdminService {
            listener: std::sync::Mutex::new(Some(listener)),
            state: AdminState {
                reloader,
                started: Instant::now(),
                fairness: Arc::new(fairness::Fairness::new()?),
            },
        })
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Every admin route requires `Authorization: Bearer <admin.token>`, except the analytics and
/// curation routes, which also take a project's key (see [`params::Access`]).
async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if PROJECT_READABLE.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    // The dashboard's assets hold no data: the page signs in against the API itself.
    let path = req.uri().path();
    if path == dashboard::PREFIX || path.starts_with("/dashboard/") {
        return next.run(req).await;
    }
    // Anyone may check a feedback's hash against its record, when the operator says so.
    if req.uri().path().starts_with(audit_api::RECORD_PREFIX)
        && req.method() == axum::http::Method::GET
        && state
            .reloader
            .shared
            .audit
            .as_ref()
            .is_some_and(|a| a.settings().public_records)
    {
        return next.run(req).await;
    }
    let presented = params::bearer_token(req.headers());
    let live = state.reloader.live.load();
    let expected = live.config.admin.token.expose().as_bytes();
    match presented {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected)) => next.run(req).await,
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid admin token",
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "send Authorization: Bearer <admin token>",
        ),
    }
}

/// Every admin answer: never sniffed as another type; JSON answers (data, errors) never stored
/// by a browser or a shared cache.
async fn protective_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if json {
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    resp
}

/// Health JSON: overall status and each dependency's state (200 when all are up, else 503).
/// The embedded default has no external dependency; the database is reported (not required:
/// journal rows spool while it is down) and Redis is required when budgets fail closed on it.
async fn health(State(state): State<AdminState>) -> Response {
    use crate::x402::facilitator::Supported;
    let live = state.reloader.live.load();
    let mut dependencies = json!({
        "config": {"status": "up", "required": true, "generation": live.generation},
        "dns": {"status": "up", "required": true},
    });
    if let Some(f) = &state.reloader.shared.facilitator {
        // Only required when payments wait for its verdict (verify_before_pay).
        let entry = match f.supported() {
            Supported::Unknown => json!({"status": "unknown"}),
            Supported::Up { kinds, checked_at } => {
                json!({"status": "up", "kinds": kinds, "checked_at": checked_at})
            }
            Supported::Down { error, checked_at } => {
                json!({"status": "down", "error": error, "checked_at": checked_at})
            }
        };
        dependencies["facilitator"] = entry;
        dependencies["facilitator"]["required"] = json!(f.verify_before_pay);
    }
    let shared = &state.reloader.shared;
    let timeout = std::time::Duration::from_secs(1);
    let db = tokio::time::timeout(timeout, shared.store.ping()).await;
    // Not required: while the database is down, journal rows wait in the spool.
    dependencies["database"] = json!({
        "status": if matches!(db, Ok(Ok(()))) { "up" } else { "down" },
        "kind": shared.store.kind(),
        "spooled_rows": shared.store.spooled().await,
        "required": false,
    });
    // Not required: while the database cannot take them, records wait in the spool.
    if shared.analytics.enabled() {
        dependencies["analytics"] = json!({
            "status": if matches!(db, Ok(Ok(()))) { "up" } else { "down" },
            "spooled_records": shared.analytics.spooled(),
            "required": false,
        });
    }
    // Not required: feedback waits in the outbox while the chain cannot take it.
    if let Some(audit) = &shared.audit {
        let s = audit.status();
        dependencies["audit"] = json!({
            "status": if s.error.is_none() { "up" } else { "degraded" },
            "backlog": s.backlog,
            "oldest_pending_ms": s.oldest_ms,
            "error": s.error,
            "signer": audit.settings().signer.address(),
            "required": false,
        });
    }
    if let Some(redis) = &shared.redis_ledger {
        let up = matches!(
            tokio::time::timeout(timeout, redis.ping()).await,
            Ok(Ok(()))
        );
        // Required when paid requests fail closed without it.
        dependencies["redis"] = json!({
            "status": if up { "up" } else { "down" },
            "role": "budget ledger",
            "pending_commits": redis.pending_commits(),
            "required": live.config.budgets.redis_down == crate::config::RedisDown::FailClosed,
        });
    }
    // Never required: without it the cache misses (or serves from memory).
    if let Some(tier) = shared.cache.redis()
        && live.pipeline.cache().is_some()
    {
        dependencies["cache_redis"] = json!({
            "status": if tier.healthy() { "up" } else { "down" },
            "role": "shared cache tier",
            "required": false,
        });
    }
    // Required in intercept mode: without the CA, HTTPS through CONNECT fails.
    if live.config.connect.mode == crate::config::ConnectMode::Intercept {
        let ca = shared.interceptor.as_ref();
        dependencies["local_ca"] = json!({
            "status": if ca.is_some() { "up" } else { "down" },
            "role": "CONNECT interception",
            "certificate": ca.map(|i| i.ca().cert_path().display().to_string()),
            "cached_leaves": ca.map(|i| i.cached_leaves()),
            "required": true,
        });
    }
    let healthy = dependencies.as_object().is_some_and(|d| {
        d.values()
            .all(|v| v["required"] != true || v["status"] == "up")
    });
    // A graceful stop began: load balancers stop sending while requests in flight finish.
    let draining = shared.draining.load(std::sync::atomic::Ordering::Acquire);
    let healthy = healthy && !draining;
    let body = json!({
        "status": if draining { "draining" } else if healthy { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "stages": live.pipeline.names(),
        "dependencies": dependencies,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let shared = &state.reloader.shared;
    for (listener, cap) in [
        ("proxy", &shared.proxy_connections),
        ("admin", &shared.admin_connections),
    ] {
        shared
            .metrics
            .connections_open
            .with_label_values(&[listener])
            .set(cap.open() as i64);
    }
    let text = shared.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn reload(State(state): State<AdminState>) -> Response {
    let reloader = state.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok((generation, kept))) => {
            (StatusCode::OK, axum::Json(json!({"status": "reloaded", "generation": generation, "not_applied": kept}))).into_response()
        }
        Ok(Err(ReloadError::Invalid(errors))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": {
                "code": "INVALID_CONFIG",
                "message": "the new configuration is invalid; the current one stays in use",
                "details": errors.0.iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>(),
            }})),
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, "RELOAD_UNAVAILABLE", &e.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "reload task failed"),
    }
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this admin endpoint does not take that method",
    )
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown admin endpoint")
}

/// The largest request body the admin API reads (policies, purges, approvals): larger ones
/// get `413 BODY_TOO_LARGE`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Routes a project's own key may read (they check who asks themselves). Exact paths: any
/// other path needs the admin token first, so an unknown one is 401 without it, like a known
/// one (no route-existence oracle).
const PROJECT_READABLE: [&str; 10] = [
    "/api/analytics/summary",
    "/api/analytics/endpoints",
    "/api/analytics/timeseries",
    "/api/analytics/requests",
    "/api/curation/endpoints",
    "/api/curation/rankings",
    "/api/curation/compare",
    "/api/curation/recommend",
    "/api/curation/categories",
    "/api/session",
];

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .route(
            "/api/policies",
            get(api::list_policies).post(api::create_policy),
        )
        .route(
            "/api/policies/{project}",
            get(api::get_policy)
                .put(api::update_policy)
                .delete(api::delete_policy),
        )
        .route("/api/budgets/{project}", get(api::budgets))
        .route("/api/spend", get(api::spend))
        .route("/api/cache/purge", post(cache_api::purge))
        .route("/api/cache/stats", get(cache_api::stats))
        .route("/api/analytics/summary", get(analytics_api::summary))
        .route("/api/analytics/endpoints", get(analytics_api::endpoints))
        .route("/api/analytics/timeseries", get(analytics_api::timeseries))
        .route("/api/analytics/requests", get(analytics_api::requests))
        .route("/api/curation/endpoints", get(curation_api::endpoints))
        .route("/api/curation/rankings", get(curation_api::rankings))
        .route("/api/curation/compare", get(curation_api::compare))
        .route("/api/curation/recommend", get(curation_api::recommend))
        .route("/api/curation/categories", get(curation_api::categories))
        .route("/api/session", get(session_api::session))
        .route("/api/audit/feedback", get(audit_api::list))
        .route("/api/audit/feedback/{id}", get(audit_api::record))
        .route("/api/audit/reconciliation", get(audit_api::reconciliation))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
        .route("/dashboard/config.json", get(dashboard::settings))
        .route("/dashboard/{*rest}", get(dashboard::missing))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            fairness::limit,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(protective_headers))
        .with_state(state)
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let tcp = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("admin listener unusable: {e}");
                return;
            }
        };
        let app = router(self.state.clone());
        let reloader = self.state.reloader.clone();
        // On a graceful stop `/health` says `draining` (503) for the grace period, while the
        // proxy still serves, so load balancers stop sending first; then the listener closes.
        let stop = async move {
            let _ = shutdown.changed().await;
            reloader
                .shared
                .draining
                .store(true, std::sync::atomic::Ordering::Release);
            let grace = reloader.live.load().config.server.grace_period;
            tokio::time::sleep(grace).await;
        };
        let shared = &self.state.reloader.shared;
        let settings = &self.state.reloader.live.load().config.admin;
        let limits = listener::Limits {
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            cap: shared.admin_connections.clone(),
            refused: shared
                .metrics
                .connections_refused
                .with_label_values(&["admin"]),
        };
        listener::serve(tcp, app, limits, stop).await;
    }
}

/// Probes the facilitator's `GET /supported` at startup and then every few minutes.
pub struct FacilitatorProbe(pub Arc<crate::x402::facilitator::Facilitator>);

/// Seconds between facilitator probes.
pub const FACILITATOR_PROBE_INTERVAL_SECONDS: u64 = 300;

#[async_trait]
impl BackgroundService for FacilitatorProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use crate::x402::facilitator::Supported;
        loop {
            match self.0.probe().await {
                Supported::Up { kinds, .. } => {
                    log::info!(kinds:? = kinds; "x402 facilitator is up")
                }
                Supported::Down { error, .. } => log::warn!("x402 facilitator is down: {error}"),
                Supported::Unknown => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(FACILITATOR_PROBE_INTERVAL_SECONDS)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Reloads the config on SIGHUP.
pub struct SighupReloader(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for SighupReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let reloader = self.0.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
