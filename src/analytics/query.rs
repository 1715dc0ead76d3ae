//! Reading analytics: summaries, endpoints and hourly/daily series come from the rollups
//! (never a scan of raw rows); per-minute series and the request list read raw rows.

use std::collections::BTreeMap;

use alloy_primitives::U256;
use serde_json::{Value, json};
use sqlx::Row;

use super::record::{BUCKETS, BUCKETS_US, CacheOutcome, Histogram, Money, Paid, PaymentOutcome};
use super::{Record, quantile, sql};
use crate::store::{Db, StoreError};

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

pub const HOUR_MS: i64 = 3_600_000;
pub const MINUTE_MS: i64 = 60_000;

/// One rollup row as read back.
#[derive(Debug, Clone, Default)]
pub struct RollupRow {
    pub hour_ms: i64,
    pub project: String,
    pub endpoint: String,
    pub status_class: String,
    pub cache: String,
    pub payment: String,
    pub symbol: String,
    pub error: String,
    pub calls: i64,
    pub latency_sum_us: i64,
    pub upstream_latency_sum_us: i64,
    pub upstream_calls: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub spend: U256,
    pub saved: U256,
    pub histogram: Histogram,
}

/// Rollup rows of the hours starting in `[from_ms, to_ms)`, of one project or all.
pub async fn rollups(
    db: &Db,
    project: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RollupRow>, StoreError> {
    let buckets: Vec<String> = sql::bucket_columns().collect();
    let mut text = format!(
        "SELECT hour_ms, project, endpoint, status_class, cache, payment, symbol, error, calls, latency_sum_us, upstream_latency_sum_us, upstream_calls, request_bytes, response_bytes, CAST(spend AS TEXT) AS spend, CAST(saved AS TEXT) AS saved, {} FROM analytics_hourly WHERE hour_ms >= $1 AND hour_ms < $2",
        buckets.join(", ")
    );
    if project.is_some() {
        text.push_str(" AND project = $3");
    }
    macro_rules! fetch {
        ($p:expr) => {{
            let mut q = sqlx::query(&text).bind(from_ms).bind(to_ms);
            if let Some(project) = project {
                q = q.bind(project);
            }
            let rows = q
                .fetch_all($p)
                .await
                .map_err(|e| err("analytics query", e))?;
            rows.iter().map(|row| rollup_row(row, &buckets)).collect()
        }};
    }
    match db {
        Db::Postgres(p) => fetch!(p),
        Db::Sqlite(p) => fetch!(p),
    }
}

fn rollup_row<R: Row>(row: &R, buckets: &[String]) -> Result<RollupRow, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let e = |e: sqlx::Error| err("analytics row", e);
    let mut histogram = [0i64; BUCKETS];
    for (i, name) in buckets.iter().enumerate() {
        histogram[i] = row.try_get::<i64, _>(name.as_str()).map_err(e)?;
    }
    Ok(RollupRow {
        hour_ms: row.try_get("hour_ms").map_err(e)?,
        project: row.try_get("project").map_err(e)?,
        endpoint: row.try_get("endpoint").map_err(e)?,
        status_class: row.try_get("status_class").map_err(e)?,
        cache: row.try_get("cache").map_err(e)?,
        payment: row.try_get("payment").map_err(e)?,
        symbol: row.try_get("symbol").map_err(e)?,
        error: row.try_get("error").map_err(e)?,
        calls: row.try_get("calls").map_err(e)?,
        latency_sum_us: row.try_get("latency_sum_us").map_err(e)?,
        upstream_latency_sum_us: row.try_get("upstream_latency_sum_us").map_err(e)?,
        upstream_calls: row.try_get("upstream_calls").map_err(e)?,
        request_bytes: row.try_get("request_bytes").map_err(e)?,
        response_bytes: row.try_get("response_bytes").map_err(e)?,
        spend: sql::parse_amount(row.try_get("spend").ok()),
        saved: sql::parse_amount(row.try_get("saved").ok()),
        histogram,
    })
}

/// Counts merged over any set of rollup rows (or raw records).
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub calls: i64,
    pub by_class: BTreeMap<String, i64>,
    pub latency_sum_us: i64,
    pub histogram: Histogram,
    /// Calls pag0 paid for (payment `paid`).
    pub paid_calls: i64,
    pub spend: BTreeMap<String, U256>,
    /// Calls that spent, per asset (paid, or relayed and settled): what spend is spread over.
    pub spending_calls: BTreeMap<String, i64>,
    pub saved: BTreeMap<String, U256>,
    /// Calls by cache outcome (`HIT`, `MISS`, ...).
    pub cache: BTreeMap<String, i64>,
    pub errors: BTreeMap<String, i64>,
    pub request_bytes: i64,
    pub response_bytes: i64,
}

impl Totals {
    pub fn add(&mut self, r: &RollupRow) {
        self.calls += r.calls;
        *self.by_class.entry(r.status_class.clone()).or_default() += r.calls;
        self.latency_sum_us = self.latency_sum_us.saturating_add(r.latency_sum_us);
        for (sum, n) in self.histogram.iter_mut().zip(r.histogram) {
            *sum += n;
        }
        if r.payment == PaymentOutcome::Paid.as_str() {
            self.paid_calls += r.calls;
        }
        if !r.spend.is_zero() {
            let spend = self.spend.entry(r.symbol.clone()).or_default();
            *spend = spend.saturating_add(r.spend);
            *self.spending_calls.entry(r.symbol.clone()).or_default() += r.calls;
        }
        if !r.saved.is_zero() {
            let saved = self.saved.entry(r.symbol.clone()).or_default();
            *saved = saved.saturating_add(r.saved);
        }
        *self.cache.entry(r.cache.clone()).or_default() += r.calls;
        if !r.error.is_empty() {
            *self.errors.entry(r.error.clone()).or_default() += r.calls;
        }
        self.request_bytes = self.request_bytes.saturating_add(r.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(r.response_bytes);
    }

    fn class(&self, c: &str) -> i64 {
        self.by_class.get(c).copied().unwrap_or(0)
    }

    /// 2xx and 3xx over all calls.
    pub fn success_rate(&self) -> Option<f64> {
        ratio(self.class("2xx") + self.class("3xx"), self.calls)
    }

    /// Errors: 4xx, 5xx and calls the agent left before an answer.
    pub fn failures(&self) -> i64 {
        self.class("4xx") + self.class("5xx") + self.class("none")
    }

    fn cache_count(&self, c: CacheOutcome) -> i64 {
        self.cache.get(c.as_str()).copied().unwrap_or(0)
    }

    /// Served from the cache (fresh or stale) over the calls that looked it up.
    pub fn cache_hit_rate(&self) -> Option<f64> {
        let served = self.cache_count(CacheOutcome::Hit) + self.cache_count(CacheOutcome::Stale);
        ratio(served, served + self.cache_count(CacheOutcome::Miss))
    }

    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        quantile(&self.histogram, q)
    }

    pub fn mean_us(&self) -> Option<u64> {
        (self.calls > 0).then(|| (self.latency_sum_us / self.calls) as u64)
    }
}

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// Base units as a decimal number of tokens (`10000` with 6 decimals: `0.01`).
pub fn display_units(amount: U256, decimals: u8) -> String {
    let digits = amount.to_string();
    let d = decimals as usize;
    if d == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = d + 1);
    let (int, frac) = padded.split_at(padded.len() - d);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    }
}

/// `[{symbol, base_units, display}]` for amounts per symbol.
pub fn amounts_json(
    amounts: &BTreeMap<String, U256>,
    decimals: &dyn Fn(&str) -> Option<u8>,
) -> Value {
    Value::Array(
        amounts
            .iter()
            .map(|(symbol, amount)| {
                json!({
                    "symbol": symbol,
                    "base_units": amount.to_string(),
                    "display": decimals(symbol).map(|d| format!("{} {symbol}", display_units(*amount, d))),
                })
            })
            .collect(),
    )
}

/// The summary of a set of rollup rows.
pub fn summary(rows: &[RollupRow], decimals: &dyn Fn(&str) -> Option<u8>) -> Value {
    let mut t = Totals::default();
    rows.iter().for_each(|r| t.add(r));
    json!({
        "requests": t.calls,
        "by_status_class": t.by_class,
        "success_rate": t.success_rate(),
        "failures": t.failures(),
        "paid_calls": t.paid_calls,
        "spend": amounts_json(&t.spend, decimals),
        "cache": {
            "hits": t.cache_count(CacheOutcome::Hit),
            "stale": t.cache_count(CacheOutcome::Stale),
            "misses": t.cache_count(CacheOutcome::Miss),
            "bypass": t.cache_count(CacheOutcome::Bypass),
            "hit_rate": t.cache_hit_rate(),
            "saved": amounts_json(&t.saved, decimals),
        },
        "errors": t.errors,
        "latency_us": latency_json(&t),
        "bytes": {"request": t.request_bytes, "response": t.response_bytes},
    })
}

fn latency_json(t: &Totals) -> Value {
    json!({
        "p50": t.quantile_us(0.50),
        "p95": t.quantile_us(0.95),
        "p99": t.quantile_us(0.99),
        "mean": t.mean_us(),
    })
}

/// How the endpoint list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSort {
    Calls,
    SuccessRate,
    P50,
    P95,
    Spend,
    CacheHitRate,
    Endpoint,
}

impl EndpointSort {
    pub const NAMES: &'static str =
        "calls, success_rate, p50, p95, spend, cache_hit_rate, endpoint";

    pub fn parse(s: &str) -> Option<EndpointSort> {
        Some(match s {
            "calls" => EndpointSort::Calls,
            "success_rate" => EndpointSort::SuccessRate,
            "p50" => EndpointSort::P50,
            "p95" => EndpointSort::P95,
            "spend" => EndpointSort::Spend,
            "cache_hit_rate" => EndpointSort::CacheHitRate,
            "endpoint" => EndpointSort::Endpoint,
            _ => return None,
        })
    }
}

/// Totals per endpoint key, sorted (`descending`: largest first) and paged.
pub fn endpoints(
    rows: &[RollupRow],
    sort: EndpointSort,
    descending: bool,
    offset: usize,
    limit: usize,
    decimals: &dyn Fn(&str) -> Option<u8>,
) -> (usize, Vec<Value>) {
    let mut by: BTreeMap<&str, Totals> = BTreeMap::new();
    for r in rows {
        by.entry(&r.endpoint).or_default().add(r);
    }
    let mut list: Vec<(&str, Totals)> = by.into_iter().collect();
    let total_units = |t: &Totals| t.spend.values().fold(U256::ZERO, |a, b| a + b);
    let f = |v: Option<f64>| v.unwrap_or(-1.0);
    list.sort_by(|(ea, a), (eb, b)| {
        let order = match sort {
            EndpointSort::Calls => a.calls.cmp(&b.calls),
            EndpointSort::SuccessRate => f(a.success_rate()).total_cmp(&f(b.success_rate())),
            EndpointSort::P50 => a.quantile_us(0.5).cmp(&b.quantile_us(0.5)),
            EndpointSort::P95 => a.quantile_us(0.95).cmp(&b.quantile_us(0.95)),
            EndpointSort::Spend => total_units(a).cmp(&total_units(b)),
            EndpointSort::CacheHitRate => f(a.cache_hit_rate()).total_cmp(&f(b.cache_hit_rate())),
            EndpointSort::Endpoint => ea.cmp(eb),
        };
        let order = if descending { order.reverse() } else { order };
        order.then_with(|| ea.cmp(eb))
    });
    let count = list.len();
    let page = list
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(endpoint, t)| {
            let per_paid: BTreeMap<String, U256> = t
                .spend
                .iter()
                .filter_map(|(s, a)| {
                    let calls = *t.spending_calls.get(s)?;
                    (calls > 0).then(|| (s.clone(), *a / U256::from(calls as u64)))
                })
                .collect();
            json!({
                "endpoint": endpoint,
                "calls": t.calls,
                "success_rate": t.success_rate(),
                "failures": t.failures(),
                "latency_us": latency_json(&t),
                "paid_calls": t.paid_calls,
                "spend": amounts_json(&t.spend, decimals),
                "avg_cost_per_paid_call": amounts_json(&per_paid, decimals),
                "cache_hit_rate": t.cache_hit_rate(),
                "saved": amounts_json(&t.saved, decimals),
                "errors": t.errors,
            })
        })
        .collect();
    (count, page)
}

/// What a time series shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Requests,
    /// Requests over the point's interval, per second.
    RequestsPerSecond,
    Failures,
    SuccessRate,
    LatencyP50,
    LatencyP95,
    LatencyP99,
    LatencyMean,
    PaidCalls,
    Spend,
    CacheHitRate,
    ResponseBytes,
}

impl Metric {
    pub const NAMES: &'static str = "requests, requests_per_second, failures, success_rate, latency_p50, latency_p95, latency_p99, latency_mean, paid_calls, spend, cache_hit_rate, response_bytes";

    pub fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "requests" => Metric::Requests,
            "requests_per_second" => Metric::RequestsPerSecond,
            "failures" => Metric::Failures,
            "success_rate" => Metric::SuccessRate,
            "latency_p50" => Metric::LatencyP50,
            "latency_p95" => Metric::LatencyP95,
            "latency_p99" => Metric::LatencyP99,
            "latency_mean" => Metric::LatencyMean,
            "paid_calls" => Metric::PaidCalls,
            "spend" => Metric::Spend,
            "cache_hit_rate" => Metric::CacheHitRate,
            "response_bytes" => Metric::ResponseBytes,
            _ => return None,
        })
    }

    /// The metric of one point covering `step_ms`.
    fn value(self, t: &Totals, step_ms: i64) -> Value {
        match self {
            Metric::Requests => json!(t.calls),
            Metric::RequestsPerSecond => json!(t.calls as f64 * 1000.0 / step_ms as f64),
            Metric::Failures => json!(t.failures()),
            Metric::SuccessRate => json!(t.success_rate()),
            Metric::LatencyP50 => json!(t.quantile_us(0.50)),
            Metric::LatencyP95 => json!(t.quantile_us(0.95)),
            Metric::LatencyP99 => json!(t.quantile_us(0.99)),
            Metric::LatencyMean => json!(t.mean_us()),
            Metric::PaidCalls => json!(t.paid_calls),
            Metric::Spend => Value::Object(
                t.spend
                    .iter()
                    .map(|(s, a)| (s.clone(), Value::String(a.to_string())))
                    .collect(),
            ),
            Metric::CacheHitRate => json!(t.cache_hit_rate()),
            Metric::ResponseBytes => json!(t.response_bytes),
        }
    }
}

/// One point per `step_ms` from `from_ms` (aligned) to `to_ms`, empty steps included.
pub fn series(
    rows: &[RollupRow],
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    metric: Metric,
) -> Vec<Value> {
    let mut by: BTreeMap<i64, Totals> = BTreeMap::new();
    for r in rows {
        by.entry(r.hour_ms.div_euclid(step_ms) * step_ms)
            .or_default()
            .add(r);
    }
    let mut points = Vec::new();
    let mut t = from_ms.div_euclid(step_ms) * step_ms;
    let empty = Totals::default();
    while t < to_ms {
        points.push(json!({"t": t, "value": metric.value(by.get(&t).unwrap_or(&empty), step_ms)}));
        t += step_ms;
    }
    points
}

/// Per-minute rollup rows computed from raw rows (grouped in SQL; amounts added here).
pub async fn minute_rows(
    db: &Db,
    project: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RollupRow>, StoreError> {
    let mut case = String::from("CASE");
    for (i, upper) in BUCKETS_US.iter().enumerate() {
        case.push_str(&format!(" WHEN latency_us <= {upper} THEN {i}"));
    }
    case.push_str(&format!(" ELSE {} END", BUCKETS - 1));
    let filter = if project.is_some() {
        " AND project = $3"
    } else {
        ""
    };
    let grouped = format!(
        "SELECT (at_ms / {MINUTE_MS}) * {MINUTE_MS} AS minute, status, cache, payment, COALESCE(error, '') AS error, {case} AS bucket, COUNT(*) AS calls, CAST(SUM(latency_us) AS BIGINT) AS latency, CAST(SUM(response_bytes) AS BIGINT) AS response_bytes, CAST(SUM(request_bytes) AS BIGINT) AS request_bytes FROM analytics_requests WHERE at_ms >= $1 AND at_ms < $2{filter} GROUP BY 1, 2, 3, 4, 5, 6"
    );
    let money = format!(
        "SELECT at_ms, payment, symbol, CAST(amount AS TEXT) AS amount, saved_symbol, CAST(saved AS TEXT) AS saved FROM analytics_requests WHERE at_ms >= $1 AND at_ms < $2{filter} AND (amount IS NOT NULL OR saved IS NOT NULL)"
    );
    let mut out: BTreeMap<(i64, String, String, String, String), RollupRow> = BTreeMap::new();
    macro_rules! run {
        ($p:expr) => {{
            let mut q = sqlx::query(&grouped).bind(from_ms).bind(to_ms);
            if let Some(project) = project {
                q = q.bind(project);
            }
            for row in q
                .fetch_all($p)
                .await
                .map_err(|e| err("analytics query", e))?
            {
                let e = |e: sqlx::Error| err("analytics row", e);
                let minute: i64 = row.try_get("minute").map_err(e)?;
                let status: i32 = row.try_get("status").map_err(e)?;
                let cache: String = row.try_get("cache").map_err(e)?;
                let payment: String = row.try_get("payment").map_err(e)?;
                let error: String = row.try_get("error").map_err(e)?;
                let bucket: i32 = row.try_get("bucket").map_err(e)?;
                let calls: i64 = row.try_get("calls").map_err(e)?;
                let latency: i64 = row
                    .try_get::<Option<i64>, _>("latency")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let response: i64 = row
                    .try_get::<Option<i64>, _>("response_bytes")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let request: i64 = row
                    .try_get::<Option<i64>, _>("request_bytes")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let class = crate::metrics::status_class(status as u16).to_string();
                let r = out
                    .entry((
                        minute,
                        class.clone(),
                        cache.clone(),
                        payment.clone(),
                        error.clone(),
                    ))
                    .or_insert_with(|| RollupRow {
                        hour_ms: minute,
                        status_class: class,
                        cache,
                        payment,
                        error,
                        ..RollupRow::default()
                    });
                r.calls += calls;
                r.latency_sum_us += latency;
                r.request_bytes += request;
                r.response_bytes += response;
                r.histogram[(bucket.max(0) as usize).min(BUCKETS - 1)] += calls;
            }
            let mut q = sqlx::query(&money).bind(from_ms).bind(to_ms);
            if let Some(project) = project {
                q = q.bind(project);
            }
            let mut money_rows = Vec::new();
            for row in q
                .fetch_all($p)
                .await
                .map_err(|e| err("analytics query", e))?
            {
                let at: i64 = row.try_get("at_ms").map_err(|e| err("analytics row", e))?;
                let payment: String = row.try_get("payment").unwrap_or_default();
                let spent = matches!(payment.as_str(), "paid" | "relay");
                let symbol: Option<String> = row.try_get("symbol").ok().flatten();
                let amount: Option<String> = row.try_get("amount").ok().flatten();
                let saved_symbol: Option<String> = row.try_get("saved_symbol").ok().flatten();
                let saved: Option<String> = row.try_get("saved").ok().flatten();
                money_rows.push((at, spent, symbol, amount, saved_symbol, saved));
            }
            money_rows
        }};
    }
    let money_rows = match db {
        Db::Postgres(p) => run!(p),
        Db::Sqlite(p) => run!(p),
    };
    let mut rows: Vec<RollupRow> = out.into_values().collect();
    // Amounts as rows of their own (one per minute and symbol): they add up like the rest.
    let mut amounts: BTreeMap<(i64, String), (U256, U256)> = BTreeMap::new();
    for (at, spent, symbol, amount, saved_symbol, saved) in money_rows {
        let minute = at.div_euclid(MINUTE_MS) * MINUTE_MS;
        if let (true, Some(s), Some(a)) = (spent, symbol, amount) {
            amounts.entry((minute, s)).or_default().0 += sql::parse_amount(Some(a));
        }
        if let (Some(s), Some(a)) = (saved_symbol, saved) {
            amounts.entry((minute, s)).or_default().1 += sql::parse_amount(Some(a));
        }
    }
    for ((minute, symbol), (spend, saved)) in amounts {
        rows.push(RollupRow {
            hour_ms: minute,
            project: String::new(),
            endpoint: String::new(),
            status_class: String::new(),
            cache: String::new(),
            payment: String::new(),
            symbol,
            error: String::new(),
            calls: 0,
            latency_sum_us: 0,
            upstream_latency_sum_us: 0,
            upstream_calls: 0,
            request_bytes: 0,
            response_bytes: 0,
            spend,
            saved,
            histogram: [0; BUCKETS],
        });
    }
    Ok(rows)
}

/// Filters of the raw request list.
#[derive(Debug, Default, Clone)]
pub struct RequestFilter {
    pub project: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// An exact status (`402`) or a class (`4xx`).
    pub status: Option<StatusFilter>,
    pub host: Option<String>,
    pub payment: Option<PaymentOutcome>,
    /// Rows strictly older than this (at_ms, id): the next page.
    pub before: Option<(i64, String)>,
}

#[derive(Debug, Clone, Copy)]
pub enum StatusFilter {
    Exact(u16),
    /// `4xx` → 400..=499.
    Class(u16),
}

const REQUEST_COLUMNS: &str = "id, at_ms, project, route, method, scheme, host, port, path, endpoint, status, upstream_status, attempts, latency_us, upstream_latency_us, request_bytes, response_bytes, cache, payment, payment_reason, CAST(amount AS TEXT) AS amount, symbol, asset, network, pay_to, CAST(saved AS TEXT) AS saved, saved_symbol, error, tx_hash, x402_version";

/// Raw records, newest first, at most `limit`.
pub async fn requests(db: &Db, f: &RequestFilter, limit: i64) -> Result<Vec<Record>, StoreError> {
    let mut text = format!(
        "SELECT {REQUEST_COLUMNS} FROM analytics_requests WHERE at_ms >= $1 AND at_ms < $2"
    );
    let mut n = 2;
    let mut next = || {
        n += 1;
        n
    };
    if f.project.is_some() {
        text.push_str(&format!(" AND project = ${}", next()));
    }
    match f.status {
        Some(StatusFilter::Exact(_)) => text.push_str(&format!(" AND status = ${}", next())),
        Some(StatusFilter::Class(_)) => {
            let (a, b) = (next(), next());
            text.push_str(&format!(" AND status >= ${a} AND status <= ${b}"))
        }
        None => {}
    }
    if f.host.is_some() {
        text.push_str(&format!(" AND host = ${}", next()));
    }
    if f.payment.is_some() {
        text.push_str(&format!(" AND payment = ${}", next()));
    }
    if f.before.is_some() {
        let (a, b) = (next(), next());
        text.push_str(&format!(
            " AND (at_ms < ${a} OR (at_ms = ${a} AND id < ${b}))"
        ));
    }
    text.push_str(&format!(" ORDER BY at_ms DESC, id DESC LIMIT ${}", next()));
    macro_rules! fetch {
        ($p:expr) => {{
            let mut q = sqlx::query(&text).bind(f.from_ms).bind(f.to_ms);
            if let Some(p) = &f.project {
                q = q.bind(p);
            }
            match f.status {
                Some(StatusFilter::Exact(s)) => q = q.bind(i32::from(s)),
                Some(StatusFilter::Class(c)) => {
                    q = q.bind(i32::from(c) * 100).bind(i32::from(c) * 100 + 99)
                }
                None => {}
            }
            if let Some(h) = &f.host {
                q = q.bind(h);
            }
            if let Some(p) = f.payment {
                q = q.bind(p.as_str());
            }
            if let Some((at, id)) = &f.before {
                q = q.bind(*at).bind(id);
            }
            q = q.bind(limit);
            let rows = q
                .fetch_all($p)
                .await
                .map_err(|e| err("analytics query", e))?;
            rows.iter().map(record_row).collect()
        }};
    }
    match db {
        Db::Postgres(p) => fetch!(p),
        Db::Sqlite(p) => fetch!(p),
    }
}

fn record_row<R: Row>(row: &R) -> Result<Record, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i32>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let e = |e: sqlx::Error| err("analytics row", e);
    let text = |name: &str| row.try_get::<Option<String>, _>(name).ok().flatten();
    let small = |v: i32| u16::try_from(v).unwrap_or(0);
    let paid = match (text("amount"), text("symbol")) {
        (Some(amount), Some(symbol)) => Some(Paid {
            money: Money {
                symbol,
                amount: sql::parse_amount(Some(amount)),
            },
            asset: text("asset").unwrap_or_default(),
            network: text("network").unwrap_or_default(),
            pay_to: text("pay_to").unwrap_or_default(),
        }),
        _ => None,
    };
    let saved = match (text("saved"), text("saved_symbol")) {
        (Some(amount), Some(symbol)) => Some(Money {
            symbol,
            amount: sql::parse_amount(Some(amount)),
        }),
        _ => None,
    };
    let cache: String = row.try_get("cache").map_err(e)?;
    let payment: String = row.try_get("payment").map_err(e)?;
    Ok(Record {
        id: row.try_get("id").map_err(e)?,
        at_ms: row.try_get("at_ms").map_err(e)?,
        project: row.try_get("project").map_err(e)?,
        route: row.try_get("route").map_err(e)?,
        method: row.try_get("method").map_err(e)?,
        scheme: row.try_get::<String, _>("scheme").map_err(e)?.into(),
        host: row.try_get("host").map_err(e)?,
        port: small(row.try_get("port").map_err(e)?),
        path: row.try_get("path").map_err(e)?,
        endpoint: row.try_get("endpoint").map_err(e)?,
        status: small(row.try_get("status").map_err(e)?),
        upstream_status: row
            .try_get::<Option<i32>, _>("upstream_status")
            .map_err(e)?
            .map(small),
        attempts: u8::try_from(row.try_get::<i32, _>("attempts").map_err(e)?).unwrap_or(u8::MAX),
        latency_us: row.try_get::<i64, _>("latency_us").map_err(e)?.max(0) as u64,
        upstream_latency_us: row
            .try_get::<Option<i64>, _>("upstream_latency_us")
            .map_err(e)?
            .map(|v| v.max(0) as u64),
        request_bytes: row.try_get::<i64, _>("request_bytes").map_err(e)?.max(0) as u64,
        response_bytes: row.try_get::<i64, _>("response_bytes").map_err(e)?.max(0) as u64,
        cache: CacheOutcome::parse(&cache).unwrap_or(CacheOutcome::None),
        payment: PaymentOutcome::parse(&payment).unwrap_or(PaymentOutcome::None),
        payment_reason: text("payment_reason"),
        paid,
        saved,
        error: text("error").map(Into::into),
        tx_hash: text("tx_hash"),
        x402_version: row
            .try_get::<Option<i32>, _>("x402_version")
            .map_err(e)?
            .and_then(|v| u8::try_from(v).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_displayed_exactly() {
        assert_eq!(display_units(U256::from(10_000u64), 6), "0.01");
        assert_eq!(display_units(U256::from(1_500_000u64), 6), "1.5");
        assert_eq!(display_units(U256::from(7u64), 6), "0.000007");
        assert_eq!(display_units(U256::from(42u64), 0), "42");
        assert_eq!(display_units(U256::ZERO, 6), "0");
    }

    fn row(hour_ms: i64, calls: i64) -> RollupRow {
        RollupRow {
            hour_ms,
            project: "p".into(),
            endpoint: "e".into(),
            status_class: "2xx".into(),
            calls,
            ..RollupRow::default()
        }
    }

    #[test]
    fn requests_per_second_divide_each_point_by_its_interval() {
        // Two rows in the first minute (90 + 30 calls), none in the second.
        let rows = [row(60_000, 90), row(60_000, 30)];
        let points = series(&rows, 60_000, 180_000, 60_000, Metric::RequestsPerSecond);
        let values: Vec<f64> = points
            .iter()
            .map(|p| p["value"].as_f64().unwrap())
            .collect();
        assert_eq!(values, vec![2.0, 0.0]);
        // The same calls over an hour.
        let rows = [row(3_600_000, 7_200)];
        let points = series(
            &rows,
            3_600_000,
            7_200_000,
            3_600_000,
            Metric::RequestsPerSecond,
        );
        assert_eq!(points[0]["value"].as_f64(), Some(2.0));
    }
}
