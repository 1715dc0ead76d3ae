//! Endpoint curation API (JSON), read from the in-memory snapshot (no SQL). The admin token
//! reads every endpoint; a project's key its own endpoints (from its own calls) and the
//! endpoints at least `curation.min_shared_projects` other projects called (in aggregate);
//! what was spent on an endpoint is shown to the admin token only.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/curation/endpoints` | the catalog, scored (`category`, `sort=score\|price\|p95\|success`, `order`, `limit`, `offset`) |
//! | `GET /api/curation/rankings` | scored endpoints, best first, ranked (`category`, `limit`) |
//! | `GET /api/curation/compare` | `endpoints=a,b,c` (2 to 10) side by side, component by component, and the best in each |
//! | `GET /api/curation/recommend` | the best endpoint meeting `max_price` (base units), `max_p95_ms`, `min_success` (0..1), in `category`; 404 with the reasons when none does |
//! | `GET /api/curation/categories` | the categories, their endpoints and means |

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AdminState;
use super::analytics_api::decimals;
use super::api::{ApiError, ApiResult};
use super::params::{Access, Params, bad};
use crate::analytics::query::{amounts_json, display_units};
use crate::curation::{Entry, Snapshot};

fn ms(us: Option<u64>) -> Value {
    json!(us.map(|v| v as f64 / 1000.0))
}

/// One entry as JSON (`spend` only for the admin token).
fn entry_json(
    e: &Entry,
    access: &Access,
    decimals: &dyn Fn(&str) -> Option<u8>,
) -> serde_json::Map<String, Value> {
    let price = e.price().map(|(units, symbol)| {
        json!({
            "symbol": symbol,
            "base_units": units.to_string(),
            "display": decimals(symbol).map(|d| format!("{} {symbol}", display_units(units, d))),
        })
    });
    let mut v = json!({
        "endpoint": e.endpoint,
        "category": e.category,
        "description": e.description,
        "score": e.score.map(|s| s.score),
        "components": e.score.map(|s| s.components),
        "calls": e.observed.calls,
        "successes": e.observed.successes,
        "success_rate": e.success_rate(),
        "latency_ms": {"p50": ms(e.observed.p50_us), "p95": ms(e.observed.p95_us)},
        "price_per_success": price,
        "projects": e.observed.projects,
        "offer": e.offer,
        "first_seen_ms": e.first_seen_ms,
        "last_seen_ms": e.last_seen_ms,
    });
    let map = v.as_object_mut().expect("an object");
    if matches!(access, Access::Admin) {
        map.insert("spend".into(), amounts_json(&e.totals.spend, decimals));
    }
    std::mem::take(map)
}

/// The scores `access` may read: all of them for the admin token; for a project's key, its
/// own endpoints and those enough other projects share, in aggregate (see
/// [`Snapshot::for_project`]).
fn view(state: &AdminState, access: &Access) -> std::sync::Arc<Snapshot> {
    let snap = state.reloader.shared.curation.snapshot();
    match access {
        Access::Admin => snap,
        Access::Project(project) => std::sync::Arc::new(snap.for_project(project)),
    }
}

fn category_param<'a>(params: &'a Params, snap: &Snapshot) -> Result<Option<&'a str>, ApiError> {
    match params.text("category")? {
        None | Some("") => Ok(None),
        Some(c) if snap.categories.iter().any(|k| k.name == c) => Ok(Some(c)),
        Some(c) => Err(bad(
            "category",
            format!(
                "no category {c:?} in the catalog (known: {})",
                snap.categories
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn envelope(snap: &Snapshot) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("computed_at_ms".into(), json!(snap.at_ms));
    m.insert("window_hours".into(), json!(snap.window_hours));
    m.insert("weights".into(), json!(snap.weights));
    m
}

pub async fn endpoints(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(query, &["category", "sort", "order", "limit", "offset"])?;
    let snap = view(&state, &access);
    let category = category_param(&params, &snap)?;
    let sort = params.get("sort").unwrap_or("score");
    // Each sort's natural order: best first.
    let natural_desc = match sort {
        "score" | "success" => true,
        "price" | "p95" => false,
        _ => return Err(bad("sort", "expected one of: score, price, p95, success")),
    };
    let descending = match params.get("order") {
        None => natural_desc,
        Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(bad("order", "expected asc or desc")),
    };
    let limit = params.number("limit", 100, 1..=1000)? as usize;
    let offset = params.number("offset", 0, 0..=i64::from(u32::MAX))? as usize;
    let mut list = snap.ranked(category);
    // Endpoints without the sorted value go last whatever the order.
    let key = |e: &Entry| -> Option<f64> {
        match sort {
            "score" => e.score.map(|s| s.score),
            "success" => e.success_rate(),
            // A free endpoint costs 0; one without calls has no price yet.
            "price" => (e.observed.calls > 0).then(|| e.price().map_or(0.0, |(u, _)| f64::from(u))),
            _ => e.observed.p95_us.map(|v| v as f64),
        }
    };
    list.sort_by(|a, b| match (key(a), key(b)) {
        (Some(x), Some(y)) => {
            let o = x.total_cmp(&y);
            let o = if descending { o.reverse() } else { o };
            o.then_with(|| a.endpoint.cmp(&b.endpoint))
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.endpoint.cmp(&b.endpoint),
    });
    let count = list.len();
    let decimals = decimals(&state);
    let page: Vec<Value> = list
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|e| Value::Object(entry_json(e, &access, &decimals)))
        .collect();
    let next = (offset + page.len() < count).then_some(offset + page.len());
    let mut body = envelope(&snap);
    body.insert("category".into(), json!(category));
    body.insert("count".into(), json!(count));
    body.insert("endpoints".into(), json!(page));
    body.insert("next_offset".into(), json!(next));
    Ok(Json(Value::Object(body)).into_response())
}

pub async fn rankings(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(query, &["category", "limit"])?;
    let snap = view(&state, &access);
    let category = category_param(&params, &snap)?;
    let limit = params.number("limit", 20, 1..=1000)? as usize;
    let decimals = decimals(&state);
    let scored: Vec<&Entry> = snap
        .ranked(category)
        .into_iter()
        .filter(|e| e.score.is_some())
        .collect();
    let total = scored.len();
    let rankings: Vec<Value> = scored
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, e)| {
            let mut m = entry_json(e, &access, &decimals);
            m.insert("rank".into(), json!(i + 1));
            Value::Object(m)
        })
        .collect();
    let mut body = envelope(&snap);
    body.insert("category".into(), json!(category));
    body.insert("total".into(), json!(total));
    body.insert("rankings".into(), json!(rankings));
    Ok(Json(Value::Object(body)).into_response())
}

/// Most endpoints one comparison takes.
const MAX_COMPARED: usize = 10;

pub async fn compare(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(query, &["endpoints"])?;
    let snap = view(&state, &access);
    let raw = params.get("endpoints").ok_or_else(|| {
        bad(
            "endpoints",
            "required: 2 to 10 endpoint keys, comma-separated",
        )
    })?;
    let names: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !(2..=MAX_COMPARED).contains(&names.len()) {
        return Err(bad(
            "endpoints",
            format!("expected 2 to {MAX_COMPARED} endpoint keys, comma-separated"),
        ));
    }
    let mut entries = Vec::new();
    for name in &names {
        if entries.iter().any(|e: &&Entry| e.endpoint == *name) {
            return Err(bad("endpoints", format!("{name:?} is listed twice")));
        }
        match snap.entries.get(*name) {
            Some(e) => entries.push(e),
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "UNKNOWN_ENDPOINT",
                    format!("{name:?} is not in the catalog"),
                )
                .details(json!({"parameter": "endpoints", "endpoint": name})));
            }
        }
    }
    // The best in each component (and overall): the highest, the first listed on a tie.
    let best = |f: &dyn Fn(&Entry) -> Option<f64>| -> Value {
        let mut top: Option<(&str, f64)> = None;
        for e in &entries {
            if let Some(v) = f(e)
                && top.is_none_or(|(_, t)| v > t)
            {
                top = Some((&e.endpoint, v));
            }
        }
        json!(top.map(|(name, _)| name))
    };
    let c = |pick: fn(&crate::curation::Components) -> f64| {
        move |e: &Entry| e.score.map(|s| pick(&s.components))
    };
    let decimals = decimals(&state);
    let mut body = envelope(&snap);
    body.insert(
        "endpoints".into(),
        json!(
            entries
                .iter()
                .map(|e| Value::Object(entry_json(e, &access, &decimals)))
                .collect::<Vec<_>>()
        ),
    );
    body.insert(
        "best".into(),
        json!({
            "score": best(&|e: &Entry| e.score.map(|s| s.score)),
            "reliability": best(&c(|c| c.reliability)),
            "latency": best(&c(|c| c.latency)),
            "cost": best(&c(|c| c.cost)),
            "volume": best(&c(|c| c.volume)),
            "reputation": best(&c(|c| c.reputation)),
        }),
    );
    Ok(Json(Value::Object(body)).into_response())
}

pub async fn recommend(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::parse(
        query,
        &["category", "max_price", "max_p95_ms", "min_success"],
    )?;
    let snap = view(&state, &access);
    let category = category_param(&params, &snap)?;
    let max_price = match params.get("max_price") {
        None => None,
        Some(raw) => Some(
            alloy_primitives::U256::from_str_radix(raw, 10)
                .map_err(|_| bad("max_price", "expected an integer amount in base units"))?,
        ),
    };
    let max_p95_ms = match params.get("max_p95_ms") {
        None => None,
        Some(_) => Some(params.number("max_p95_ms", 0, 1..=3_600_000)? as u64),
    };
    let min_success = match params.get("min_success") {
        None => None,
        Some(raw) => Some(
            raw.parse::<f64>()
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| bad("min_success", "expected a number from 0 to 1"))?,
        ),
    };
    let mut excluded = Vec::new();
    let mut chosen = None;
    for e in snap.ranked(category) {
        let why = if e.score.is_none() {
            Some("no calls in the window yet".to_string())
        } else if max_price.is_some() && e.paid_without_success() {
            Some("paid calls and no success: no price per success".to_string())
        } else if let (Some(max), Some((price, symbol))) = (max_price, e.price())
            && price > max
        {
            Some(format!(
                "price {price} {symbol} per success is above max_price {max}"
            ))
        } else if let Some(max) = max_p95_ms
            && e.observed.p95_us.is_none_or(|p| p > max * 1000)
        {
            Some(format!(
                "p95 {} ms is above max_p95_ms {max}",
                ms(e.observed.p95_us)
            ))
        } else if let Some(min) = min_success
            && e.success_rate().is_none_or(|s| s < min)
        {
            Some(format!(
                "success rate {:.4} is below min_success {min}",
                e.success_rate().unwrap_or(0.0)
            ))
        } else {
            None
        };
        match why {
            Some(reason) => excluded.push(json!({"endpoint": e.endpoint, "reason": reason})),
            None => {
                chosen = Some(e);
                break;
            }
        }
    }
    let Some(e) = chosen else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NO_ENDPOINT_MEETS_CONSTRAINTS",
            if excluded.is_empty() {
                "no endpoint in the catalog for this category".to_string()
            } else {
                format!(
                    "none of the {} endpoints meets the constraints",
                    excluded.len()
                )
            },
        )
        .details(json!({"category": category, "excluded": excluded})));
    };
    let score = e.score.map(|s| s.score).unwrap_or_default();
    let reason = if excluded.is_empty() {
        format!(
            "the highest score ({score}) in {}",
            category.unwrap_or("the catalog")
        )
    } else {
        format!(
            "the highest score ({score}) among the endpoints meeting the constraints; {} better-scored ones did not",
            excluded.len()
        )
    };
    let decimals = decimals(&state);
    let mut body = envelope(&snap);
    body.insert("category".into(), json!(category));
    body.insert(
        "recommendation".into(),
        Value::Object(entry_json(e, &access, &decimals)),
    );
    body.insert("reason".into(), json!(reason));
    body.insert("excluded".into(), json!(excluded));
    Ok(Json(Value::Object(body)).into_response())
}

pub async fn categories(
    State(state): State<AdminState>,
    access: Access,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    Params::parse(query, &[])?;
    let snap = view(&state, &access);
    let list: Vec<Value> = snap
        .categories
        .iter()
        .map(|c| {
            let members = snap.ranked(Some(&c.name));
            let scores: Vec<f64> = members.iter().filter_map(|e| e.score.map(|s| s.score)).collect();
            let mean = (!scores.is_empty())
                .then(|| (scores.iter().sum::<f64>() / scores.len() as f64 * 10.0).round() / 10.0);
            json!({
                "name": c.name,
                "description": c.description,
                "endpoints": members.len(),
                "scored": scores.len(),
                "mean_score": mean,
                "best": members.first().filter(|e| e.score.is_some()).map(|e| &e.endpoint),
                "benchmark": {
                    "p50_ms": c.benchmark.p50_us.map(|v| v / 1000.0),
                    "p95_ms": c.benchmark.p95_us.map(|v| v / 1000.0),
                    "price_per_success": c.price_units.iter().map(|(s, p)| (s.clone(), json!(p.to_string()))).collect::<serde_json::Map<_, _>>(),
                },
            })
        })
        .collect();
    let mut body = envelope(&snap);
    body.insert("categories".into(), json!(list));
    Ok(Json(Value::Object(body)).into_response())
}
