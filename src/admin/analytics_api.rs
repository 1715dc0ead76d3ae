//! Analytics admin API (JSON). The admin token sees every project; a project's own API key
//! (`X-Pag0-API-Key: KEY` or `Authorization: Bearer KEY`) sees that project only (another
//! project: 403).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/analytics/summary` | requests by status class, paid calls, spend per asset, cache hit rate and savings, errors by code, p50/p95/p99 latency |
//! | `GET /api/analytics/endpoints` | per endpoint key: calls, success rate, latency, spend, average cost per paid call, cache hit rate (`sort`, `order`, `limit`, `offset`) |
//! | `GET /api/analytics/timeseries` | one metric per `interval` (`1m` from raw rows, `1h`/`1d` from rollups) |
//! | `GET /api/analytics/requests` | raw records, newest first (`status`, `host`, `payment`, `limit`, `cursor`) |
//!
//! Every route takes `project`, `from` and `to` (unix seconds, RFC 3339 or `YYYY-MM-DD`;
//! default: the last 24 hours). Summaries, endpoints and hourly/daily series read the hourly
//! rollups, so their range is widened to whole hours (the answer says which). Unknown or
//! repeated parameters and bad values are a 400 naming the parameter.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AdminState;
use super::api::{ApiError, ApiResult, parse_time};
use super::params::{Access, Params, bad};
use crate::analytics::query::{
    self, EndpointSort, HOUR_MS, MINUTE_MS, Metric, RequestFilter, StatusFilter,
};
use crate::analytics::{PaymentOutcome, sql::DAY_MS};

/// The project the caller may see: the admin picks any (or all), a project key its own.
fn scope(access: &Access, params: &Params) -> Result<Option<String>, ApiError> {
    let asked = params.text("project")?.filter(|p| !p.is_empty());
    match (access, asked) {
        (Access::Admin, asked) => Ok(asked.map(str::to_string)),
        (Access::Project(own), None) => Ok(Some(own.clone())),
        (Access::Project(own), Some(p)) if p == own => Ok(Some(own.clone())),
        (Access::Project(_), Some(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "a project key only sees its own project's analytics",
        )
        .details(json!({"parameter": "project"}))),
    }
}

/// `[from, to)` in unix ms: parsed, ordered, within `retention_days` and at most a day ahead.
fn range(params: &Params, retention_days: u32) -> Result<(i64, i64), ApiError> {
    let now = crate::clock::unix_millis() as i64;
    let oldest = now - i64::from(retention_days) * DAY_MS;
    let latest = now + DAY_MS;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        let Some(raw) = params.get(name) else {
            return Ok(None);
        };
        let ms = parse_time(raw)
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| {
                bad(
                    name,
                    format!("expected unix seconds, RFC 3339 or YYYY-MM-DD, got {raw:?}"),
                )
            })?;
        if ms < oldest {
            return Err(bad(
                name,
                format!("older than the retention ({retention_days} days) of this data"),
            ));
        }
        if ms > latest {
            return Err(bad(name, "more than a day in the future"));
        }
        Ok(Some(ms))
    };
    let to = time("to")?.unwrap_or(now);
    // Without `from`: the day before `to`, as far back as the data goes.
    let from = time("from")?.unwrap_or((to - DAY_MS).max(oldest));
    if from > to {
        return Err(bad("from", "must not be after to"));
    }
    Ok((from, to))
}

/// A rollup range widened to whole hours.
fn hours((from, to): (i64, i64)) -> (i64, i64) {
    let ceil = |t: i64| (t + HOUR_MS - 1).div_euclid(HOUR_MS) * HOUR_MS;
    (from.div_euclid(HOUR_MS) * HOUR_MS, ceil(to.max(from + 1)))
}

fn query_error(e: crate::store::StoreError) -> ApiError {
    log::warn!("analytics API: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "the analytics database is unavailable",
    )
}

pub(super) fn decimals(state: &AdminState) -> impl Fn(&str) -> Option<u8> {
    let live = state.reloader.live.load_full();
    move |symbol: &str| {
        live.config
            .payments
            .assets
            .iter()
            .find(|a| a.symbol == symbol)
            .map(|a| a.decimals)
    }
}

const COMMON: [&str; 3] = ["project", "from", "to"];

fn allowed(extra: &[&'static str]) -> Vec<&'static str> {
    COMMON.iter().chain(extra).copied().collect()
}

pub async fn summary(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(query, &allowed(&[]))?;
    let project = scope(&access, &params)?;
    let analytics = &state.reloader.shared.analytics;
    let (from, to) = hours(range(&params, analytics.settings().rollup_retention_days)?);
    let rows = query::rollups(analytics.db(), project.as_deref(), from, to)
        .await
        .map_err(query_error)?;
    let mut body = query::summary(&rows, &decimals(&state));
    body["project"] = json!(project);
    body["from"] = json!(from);
    body["to"] = json!(to);
    Ok(Json(body).into_response())
}

pub async fn endpoints(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(query, &allowed(&["sort", "order", "limit", "offset"]))?;
    let project = scope(&access, &params)?;
    let sort = match params.get("sort") {
        None => EndpointSort::Calls,
        Some(s) => EndpointSort::parse(s)
            .ok_or_else(|| bad("sort", format!("expected one of: {}", EndpointSort::NAMES)))?,
    };
    let descending = match params.get("order") {
        None => sort != EndpointSort::Endpoint,
        Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(bad("order", "expected asc or desc")),
    };
    let limit = params.number("limit", 100, 1..=1000)? as usize;
    let offset = params.number("offset", 0, 0..=i64::from(u32::MAX))? as usize;
    let analytics = &state.reloader.shared.analytics;
    let (from, to) = hours(range(&params, analytics.settings().rollup_retention_days)?);
    let rows = query::rollups(analytics.db(), project.as_deref(), from, to)
        .await
        .map_err(query_error)?;
    let (count, page) = query::endpoints(&rows, sort, descending, offset, limit, &decimals(&state));
    let next = (offset + page.len() < count).then_some(offset + page.len());
    Ok(Json(json!({
        "project": project, "from": from, "to": to, "count": count,
        "endpoints": page, "next_offset": next,
    }))
    .into_response())
}

/// Most points one series may have.
const MAX_POINTS: i64 = 5_000;

pub async fn timeseries(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(query, &allowed(&["interval", "metric"]))?;
    let project = scope(&access, &params)?;
    let step = match params.get("interval").unwrap_or("1h") {
        "1m" => MINUTE_MS,
        "1h" => HOUR_MS,
        "1d" => DAY_MS,
        _ => return Err(bad("interval", "expected 1m, 1h or 1d")),
    };
    let metric = match params.get("metric") {
        None => Metric::Requests,
        Some(m) => Metric::parse(m)
            .ok_or_else(|| bad("metric", format!("expected one of: {}", Metric::NAMES)))?,
    };
    let analytics = &state.reloader.shared.analytics;
    let settings = analytics.settings();
    let retention = if step == MINUTE_MS {
        settings.retention_days
    } else {
        settings.rollup_retention_days
    };
    let (from, to) = range(&params, retention)?;
    let (from, to) = if step == MINUTE_MS {
        let ceil = (to + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS;
        (from.div_euclid(MINUTE_MS) * MINUTE_MS, ceil.max(from + 1))
    } else {
        let (f, t) = hours((from, to));
        (f.div_euclid(step) * step, t)
    };
    if (to - from + step - 1) / step > MAX_POINTS {
        return Err(bad(
            "interval",
            format!(
                "more than {MAX_POINTS} points for this range: use a coarser interval or a shorter range"
            ),
        ));
    }
    let rows = if step == MINUTE_MS {
        query::minute_rows(analytics.db(), project.as_deref(), from, to).await
    } else {
        query::rollups(analytics.db(), project.as_deref(), from, to).await
    }
    .map_err(query_error)?;
    let points = query::series(&rows, from, to, step, metric);
    Ok(Json(json!({
        "project": project, "from": from, "to": to,
        "interval": params.get("interval").unwrap_or("1h"),
        "metric": params.get("metric").unwrap_or("requests"),
        "points": points,
    }))
    .into_response())
}

pub async fn requests(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(
        query,
        &allowed(&["status", "host", "payment", "limit", "cursor"]),
    )?;
    let project = scope(&access, &params)?;
    let analytics = &state.reloader.shared.analytics;
    let (from, to) = range(&params, analytics.settings().retention_days)?;
    let status = match params.get("status") {
        None => None,
        Some(raw) => Some(
            parse_status(raw)
                .ok_or_else(|| bad("status", "expected a status (404) or a class (4xx)"))?,
        ),
    };
    let payment = match params.get("payment") {
        None => None,
        Some(raw) => Some(PaymentOutcome::parse(raw).ok_or_else(|| {
            let names: Vec<&str> = PaymentOutcome::ALL.iter().map(|p| p.as_str()).collect();
            bad("payment", format!("expected one of: {}", names.join(", ")))
        })?),
    };
    let before = match params.get("cursor") {
        None => None,
        Some(raw) => {
            Some(parse_cursor(raw).ok_or_else(|| bad("cursor", "not a cursor this API returned"))?)
        }
    };
    let limit = params.number("limit", 100, 1..=1000)?;
    let filter = RequestFilter {
        project: project.clone(),
        from_ms: from,
        // `to` is inclusive for the request list: a record at `to` is listed.
        to_ms: to.saturating_add(1),
        status,
        host: params.text("host")?.map(str::to_string),
        payment,
        before,
    };
    let records = query::requests(analytics.db(), &filter, limit + 1)
        .await
        .map_err(query_error)?;
    let more = records.len() as i64 > limit;
    let records = &records[..records.len().min(limit as usize)];
    let next_cursor = more
        .then(|| records.last().map(|r| format!("{}-{}", r.at_ms, r.id)))
        .flatten();
    Ok(Json(json!({
        "project": project, "from": from, "to": to, "count": records.len(),
        "records": records, "next_cursor": next_cursor,
    }))
    .into_response())
}

fn parse_status(raw: &str) -> Option<StatusFilter> {
    if let Some(class) = raw.strip_suffix("xx") {
        let c: u16 = class.parse().ok()?;
        return (1..=5).contains(&c).then_some(StatusFilter::Class(c));
    }
    let s: u16 = raw.parse().ok()?;
    (100..=599).contains(&s).then_some(StatusFilter::Exact(s))
}

fn parse_cursor(raw: &str) -> Option<(i64, String)> {
    let (at, id) = raw.split_once('-')?;
    let id_ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    id_ok.then_some((at.parse().ok()?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_cursors_parse() {
        assert!(matches!(parse_status("4xx"), Some(StatusFilter::Class(4))));
        assert!(matches!(
            parse_status("402"),
            Some(StatusFilter::Exact(402))
        ));
        assert!(parse_status("9xx").is_none());
        assert!(parse_status("42").is_none());
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_cursor(&format!("17-{id}")),
            Some((17, id.to_string()))
        );
        assert!(parse_cursor("17-x").is_none());
        assert_eq!(hours((1, 2)), (0, HOUR_MS));
        assert_eq!(hours((HOUR_MS, HOUR_MS)), (HOUR_MS, 2 * HOUR_MS));
    }
}
