//! Writing analytics to SQL: raw rows and their hourly rollups in one transaction, retention.
//!
//! Exactly once: a batch keeps one copy of each id (the last: a request's final record comes
//! after its early copy), a raw row is inserted `ON CONFLICT DO NOTHING RETURNING id`, and only
//! the rows that came back (new ones) are added to the rollups, in the same transaction. A
//! batch written twice (a spool replay after a write that did land) changes nothing the second
//! time. (A row replayed after its day's raw rows expired is new again: keep spools younger
//! than `analytics.retention_days`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use alloy_primitives::U256;
use sqlx::Row;

use super::record::{BUCKETS, Histogram, PaymentOutcome, Record, bucket};
use crate::metrics::status_class;
use crate::store::{Db, StoreError};

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

/// Why a batch was not written.
#[derive(Debug)]
pub enum InsertError {
    /// The database cannot be reached or is too slow: try again later.
    Unavailable(StoreError),
    /// The database refused the data (a constraint, a value it cannot store): trying again
    /// will not help.
    Rejected(StoreError),
}

impl std::fmt::Display for InsertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InsertError::Unavailable(e) => write!(f, "{e}"),
            InsertError::Rejected(e) => write!(f, "refused: {e}"),
        }
    }
}

impl From<StoreError> for InsertError {
    fn from(e: StoreError) -> InsertError {
        InsertError::Unavailable(e)
    }
}

fn insert_err(context: &str, e: sqlx::Error) -> InsertError {
    match e {
        sqlx::Error::Database(_) => InsertError::Rejected(err(context, e)),
        e => InsertError::Unavailable(err(context, e)),
    }
}

const RAW_COLUMNS: &str = "INSERT INTO analytics_requests (id, at_ms, project, route, method, scheme, host, port, path, endpoint, status, upstream_status, attempts, latency_us, upstream_latency_us, request_bytes, response_bytes, cache, payment, payment_reason, amount, symbol, asset, network, pay_to, saved, saved_symbol, error, tx_hash, x402_version) ";
/// Raw rows per statement, largest first: a batch is cut into chunks of these sizes only, so
/// each connection prepares a handful of statements once and reuses them (a statement of any
/// other size would be parsed and planned again). 1000 raw rows (30 columns) are 30 000
/// parameters, within SQLite's (32 766) and PostgreSQL's (65 535) limits.
const CHUNKS: [usize; 6] = [1000, 250, 50, 10, 3, 1];
/// Rollup rows per statement: 500 rows of 42 columns are 21 000 parameters.
const ROLLUP_CHUNKS: [usize; 5] = [500, 100, 20, 5, 1];

/// `items` cut into chunks of the `sizes` (largest first, ending with 1).
fn fixed_chunks<'a, T>(
    mut items: &'a [T],
    sizes: &'static [usize],
) -> impl Iterator<Item = &'a [T]> {
    std::iter::from_fn(move || {
        let size = sizes.iter().copied().find(|&n| n <= items.len())?;
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}
const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// Names of the histogram columns (`h00`..`h25`).
pub fn bucket_columns() -> impl Iterator<Item = String> {
    (0..BUCKETS).map(|i| format!("h{i:02}"))
}

/// The text of a raw insert of `rows` rows, built once per (dialect, rows, returning) and then
/// shared: a 1000-row statement is 30 000 placeholders, too much text to format per batch.
fn raw_sql<DB: sqlx::Database>(rows: usize, cast: &str, returning: bool) -> Arc<str>
where
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    type Texts = Mutex<HashMap<(std::any::TypeId, usize, bool), Arc<str>>>;
    static TEXTS: OnceLock<Texts> = OnceLock::new();
    let key = (std::any::TypeId::of::<DB>(), rows, returning);
    let texts = TEXTS.get_or_init(Default::default);
    if let Some(text) = texts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return text.clone();
    }
    let mut q = sqlx::QueryBuilder::<DB>::new(RAW_COLUMNS);
    q.push_values(0..rows, |mut row, _| {
        for column in 0..RAW_COLUMN_COUNT {
            row.push_bind(0i64);
            if column == AMOUNT_COLUMN || column == SAVED_COLUMN {
                row.push_unseparated(cast);
            }
        }
    });
    q.push(" ON CONFLICT (at_ms, id) DO NOTHING");
    if returning {
        q.push(" RETURNING id");
    }
    let text: Arc<str> = q.sql().into();
    let mut texts = texts.lock().unwrap_or_else(|p| p.into_inner());
    texts.entry(key).or_insert(text).clone()
}

/// Columns of a raw row, and where the amounts are (they get `$cast`).
const RAW_COLUMN_COUNT: usize = 30;
const AMOUNT_COLUMN: usize = 20;
const SAVED_COLUMN: usize = 25;

/// Inserts raw rows through `$tx`; `$cast` turns amount text into the column type. Checked
/// (`$returning`): the ids of the rows that were new are added to `$inserted`. Not checked: a
/// chunk that was not wholly new fails with [`Written::Before`] (cheaper: no row comes back).
macro_rules! insert_raw {
    ($db:ty, $tx:expr, $records:expr, $cast:expr, $returning:expr, $inserted:expr) => {{
        for chunk in fixed_chunks(&$records, &CHUNKS) {
            let sql = raw_sql::<$db>(chunk.len(), $cast, $returning);
            let mut q = sqlx::query::<$db>(&sql);
            for r in chunk.iter() {
                let paid = r.paid.as_ref();
                // In RAW_COLUMNS' order (amount at AMOUNT_COLUMN, saved at SAVED_COLUMN).
                q = q
                    .bind(&r.id)
                    .bind(r.at_ms)
                    .bind(&r.project)
                    .bind(&r.route)
                    .bind(&r.method)
                    .bind(r.scheme.as_ref())
                    .bind(&r.host)
                    .bind(i32::from(r.port))
                    .bind(&r.path)
                    .bind(&r.endpoint)
                    .bind(i32::from(r.status))
                    .bind(r.upstream_status.map(i32::from))
                    .bind(i32::from(r.attempts))
                    .bind(clamp(r.latency_us))
                    .bind(r.upstream_latency_us.map(clamp))
                    .bind(clamp(r.request_bytes))
                    .bind(clamp(r.response_bytes))
                    .bind(r.cache.as_str())
                    .bind(r.payment.as_str())
                    .bind(&r.payment_reason)
                    .bind(paid.map(|p| p.money.amount.to_string()))
                    .bind(paid.map(|p| p.money.symbol.as_str()))
                    .bind(paid.map(|p| p.asset.as_str()))
                    .bind(paid.map(|p| p.network.as_str()))
                    .bind(paid.map(|p| p.pay_to.as_str()))
                    .bind(r.saved.as_ref().map(|s| s.amount.to_string()))
                    .bind(r.saved.as_ref().map(|s| s.symbol.as_str()))
                    .bind(r.error.as_deref())
                    .bind(&r.tx_hash)
                    .bind(r.x402_version.map(i32::from));
            }
            if $returning {
                let rows = q
                    .fetch_all(&mut *$tx)
                    .await
                    .map_err(|e| insert_err("analytics insert", e))?;
                for row in rows {
                    $inserted.insert(
                        row.try_get::<String, _>("id")
                            .map_err(|e| insert_err("analytics insert", e))?,
                    );
                }
            } else {
                let done = q
                    .execute(&mut *$tx)
                    .await
                    .map_err(|e| insert_err("analytics insert", e))?;
                if done.rows_affected() != chunk.len() as u64 {
                    return Ok(None);
                }
            }
        }
    }};
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One rollup row's key: hour, project, endpoint, status class, cache, payment, symbol, error.
type Key = (
    i64,
    String,
    String,
    &'static str,
    &'static str,
    &'static str,
    String,
    String,
);

/// What a batch adds to one rollup row.
#[derive(Default)]
struct Delta {
    calls: i64,
    latency_sum_us: i64,
    upstream_latency_sum_us: i64,
    upstream_calls: i64,
    request_bytes: i64,
    response_bytes: i64,
    spend: U256,
    saved: U256,
    histogram: Histogram,
}

/// Whether a record's amount counts as spend: paid by pag0, or relayed for the agent.
pub fn spends(r: &Record) -> bool {
    matches!(r.payment, PaymentOutcome::Paid | PaymentOutcome::Relay) && r.paid.is_some()
}

fn deltas<'a>(records: impl Iterator<Item = &'a Record>) -> BTreeMap<Key, Delta> {
    let mut out: BTreeMap<Key, Delta> = BTreeMap::new();
    for r in records {
        let symbol = match (&r.paid, &r.saved) {
            (Some(p), _) if spends(r) => p.money.symbol.clone(),
            (_, Some(s)) => s.symbol.clone(),
            _ => String::new(),
        };
        let key = (
            r.at_ms.div_euclid(HOUR_MS) * HOUR_MS,
            r.project.clone(),
            r.endpoint.clone(),
            status_class(r.status),
            r.cache.as_str(),
            r.payment.as_str(),
            symbol,
            r.error.as_deref().unwrap_or_default().to_string(),
        );
        let d = out.entry(key).or_default();
        d.calls += 1;
        d.latency_sum_us = d.latency_sum_us.saturating_add(clamp(r.latency_us));
        if let Some(up) = r.upstream_latency_us {
            d.upstream_latency_sum_us = d.upstream_latency_sum_us.saturating_add(clamp(up));
            d.upstream_calls += 1;
        }
        d.request_bytes = d.request_bytes.saturating_add(clamp(r.request_bytes));
        d.response_bytes = d.response_bytes.saturating_add(clamp(r.response_bytes));
        if spends(r) {
            let amount = r.paid.as_ref().map_or(U256::ZERO, |p| p.money.amount);
            d.spend = d.spend.saturating_add(amount);
        }
        if let Some(s) = &r.saved {
            d.saved = d.saved.saturating_add(s.amount);
        }
        d.histogram[bucket(r.latency_us)] += 1;
    }
    out
}

const ROLLUP_KEY: &str = "hour_ms, project, endpoint, status_class, cache, payment, symbol, error";

fn rollup_insert_head() -> String {
    let buckets: Vec<String> = bucket_columns().collect();
    format!(
        "INSERT INTO analytics_hourly ({ROLLUP_KEY}, calls, latency_sum_us, upstream_latency_sum_us, upstream_calls, request_bytes, response_bytes, spend, saved, {}) ",
        buckets.join(", ")
    )
}

/// `ON CONFLICT … DO UPDATE` adding the batch to the row; `money` is how spend/saved merge.
fn rollup_conflict(money: impl Fn(&str) -> String) -> String {
    let mut sets: Vec<String> = [
        "calls",
        "latency_sum_us",
        "upstream_latency_sum_us",
        "upstream_calls",
        "request_bytes",
        "response_bytes",
    ]
    .iter()
    .map(|c| format!("{c} = analytics_hourly.{c} + excluded.{c}"))
    .collect();
    sets.extend(bucket_columns().map(|c| format!("{c} = analytics_hourly.{c} + excluded.{c}")));
    sets.push(format!("spend = {}", money("spend")));
    sets.push(format!("saved = {}", money("saved")));
    format!(
        " ON CONFLICT ({ROLLUP_KEY}) DO UPDATE SET {}",
        sets.join(", ")
    )
}

macro_rules! upsert_rollups {
    ($db:ty, $tx:expr, $rows:expr, $cast:expr, $conflict:expr) => {{
        let head = rollup_insert_head();
        for chunk in fixed_chunks(&$rows, &ROLLUP_CHUNKS) {
            let mut q = sqlx::QueryBuilder::<$db>::new(&head);
            q.push_values(chunk, |mut row, (k, d, spend, saved)| {
                let k: &Key = k;
                let d: &Delta = d;
                row.push_bind(k.0)
                    .push_bind(&k.1)
                    .push_bind(&k.2)
                    .push_bind(k.3)
                    .push_bind(k.4)
                    .push_bind(k.5)
                    .push_bind(&k.6)
                    .push_bind(&k.7)
                    .push_bind(d.calls)
                    .push_bind(d.latency_sum_us)
                    .push_bind(d.upstream_latency_sum_us)
                    .push_bind(d.upstream_calls)
                    .push_bind(d.request_bytes)
                    .push_bind(d.response_bytes)
                    .push_bind(spend.to_string())
                    .push_unseparated($cast)
                    .push_bind(saved.to_string())
                    .push_unseparated($cast);
                for n in d.histogram {
                    row.push_bind(n);
                }
            });
            q.push(&$conflict);
            q.build()
                .execute(&mut *$tx)
                .await
                .map_err(|e| insert_err("analytics rollup", e))?;
        }
    }};
}

/// One copy of each id (the last one), in `(at_ms, id)` order: writers that meet the same rows
/// take their locks in the same order.
fn unique(records: &[Record]) -> Vec<&Record> {
    let mut last: std::collections::HashMap<&str, &Record> =
        std::collections::HashMap::with_capacity(records.len());
    for r in records {
        last.insert(&r.id, r);
    }
    let mut rows: Vec<&Record> = last.into_values().collect();
    rows.sort_unstable_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
    rows
}

/// Writes `records` (ids set) and adds the new ones to the rollups, in one transaction.
/// Returns how many were new. Batches are nearly always wholly new: they are written first
/// without asking which rows were (no row comes back from the database), and only when a row
/// turns out to be there already (a spool replay, a recovery) again, asking row by row.
pub async fn insert(db: &Db, records: &[Record]) -> Result<usize, InsertError> {
    let records = unique(records);
    match write(db, &records, false).await? {
        Some(n) => Ok(n),
        // A checked write always tells the new rows apart.
        None => Ok(write(db, &records, true).await?.unwrap_or_default()),
    }
}

/// One attempt at [`insert`]: `checked` asks the database which rows were new; not checked,
/// `None` when some were there already (nothing was written: the transaction rolled back).
async fn write(db: &Db, records: &[&Record], checked: bool) -> Result<Option<usize>, InsertError> {
    let mut inserted: HashSet<String> = HashSet::new();
    match db {
        Db::Postgres(p) => {
            let mut tx = p.begin().await.map_err(|e| insert_err("analytics", e))?;
            insert_raw!(sqlx::Postgres, tx, records, "::numeric", checked, inserted);
            let deltas =
                deltas((records.iter().copied()).filter(|r| !checked || inserted.contains(&r.id)));
            let rows: Vec<(Key, Delta, U256, U256)> = deltas
                .into_iter()
                .map(|(k, d)| {
                    let (spend, saved) = (d.spend, d.saved);
                    (k, d, spend, saved)
                })
                .collect();
            let conflict = rollup_conflict(|c| format!("analytics_hourly.{c} + excluded.{c}"));
            upsert_rollups!(sqlx::Postgres, tx, rows, "::numeric", conflict);
            tx.commit()
                .await
                .map_err(|e| insert_err("analytics commit", e))?;
        }
        Db::Sqlite(p) => {
            // The insert comes first: it makes this a write transaction before anything is
            // read, so the read-modify-write of amounts below cannot race another writer.
            let mut tx = p.begin().await.map_err(|e| insert_err("analytics", e))?;
            insert_raw!(sqlx::Sqlite, tx, records, "", checked, inserted);
            let deltas =
                deltas((records.iter().copied()).filter(|r| !checked || inserted.contains(&r.id)));
            let mut rows = Vec::with_capacity(deltas.len());
            for (k, d) in deltas {
                // SQLite keeps amounts as decimal text: add them here, exactly. A row whose
                // amounts do not change is written with 0 and keeps its own (see below).
                let (mut spend, mut saved) = (d.spend, d.saved);
                if !spend.is_zero() || !saved.is_zero() {
                    let current = sqlx::query(
                        "SELECT spend, saved FROM analytics_hourly WHERE hour_ms = $1 AND project = $2 AND endpoint = $3 AND status_class = $4 AND cache = $5 AND payment = $6 AND symbol = $7 AND error = $8",
                    )
                    .bind(k.0).bind(&k.1).bind(&k.2).bind(k.3).bind(k.4).bind(k.5).bind(&k.6).bind(&k.7)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| insert_err("analytics rollup", e))?;
                    if let Some(row) = current {
                        spend = spend
                            .saturating_add(parse_amount(row.try_get::<String, _>("spend").ok()));
                        saved = saved
                            .saturating_add(parse_amount(row.try_get::<String, _>("saved").ok()));
                    }
                }
                rows.push((k, d, spend, saved));
            }
            let conflict = rollup_conflict(|c| {
                format!(
                    "CASE WHEN excluded.{c} = '0' THEN analytics_hourly.{c} ELSE excluded.{c} END"
                )
            });
            upsert_rollups!(sqlx::Sqlite, tx, rows, "", conflict);
            tx.commit()
                .await
                .map_err(|e| insert_err("analytics commit", e))?;
        }
    }
    Ok(Some(if checked {
        inserted.len()
    } else {
        records.len()
    }))
}

/// A decimal amount read back from the database (0 if absent).
pub fn parse_amount(text: Option<String>) -> U256 {
    text.and_then(|t| U256::from_str_radix(t.trim(), 10).ok())
        .unwrap_or(U256::ZERO)
}

/// Name of the daily partition of raw rows starting at `day_ms` (PostgreSQL).
fn partition_name(day_ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(day_ms / 1000)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    format!(
        "analytics_requests_p{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Creates the daily partitions of the days from `from_ms` through `to_ms` that do not exist
/// (PostgreSQL; a no-op on SQLite).
pub async fn ensure_partitions(db: &Db, from_ms: i64, to_ms: i64) -> Result<(), StoreError> {
    let Db::Postgres(p) = db else {
        return Ok(());
    };
    let mut day = from_ms.div_euclid(DAY_MS) * DAY_MS;
    while day <= to_ms {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF analytics_requests FOR VALUES FROM ({day}) TO ({})",
            partition_name(day),
            day + DAY_MS
        );
        match sqlx::query(&sql).execute(p).await {
            Ok(_) => {}
            // Rows of that day already in the default partition keep it from being created;
            // they stay there (and expire from there).
            Err(sqlx::Error::Database(e)) => {
                log::debug!("analytics partition {}: {e}", partition_name(day))
            }
            Err(e) => return Err(err("analytics partitions", e)),
        }
        day += DAY_MS;
    }
    Ok(())
}

/// Drops raw rows older than `raw_before_ms` (PostgreSQL: whole daily partitions, with
/// `DROP TABLE`) and rollups of hours before `rollups_before_ms`. Returns the partitions
/// dropped (PostgreSQL) or rows deleted (SQLite).
pub async fn expire(
    db: &Db,
    raw_before_ms: i64,
    rollups_before_ms: i64,
) -> Result<u64, StoreError> {
    match db {
        Db::Postgres(p) => {
            let parts: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class parent ON parent.oid = i.inhparent WHERE parent.relname = 'analytics_requests' AND c.relname LIKE 'analytics_requests_p%'",
            )
            .fetch_all(p)
            .await
            .map_err(|e| err("analytics partitions", e))?;
            let mut dropped = 0;
            for name in parts {
                let Some(end) = partition_day(&name).map(|d| d + DAY_MS) else {
                    continue;
                };
                if end <= raw_before_ms {
                    sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                        .execute(p)
                        .await
                        .map_err(|e| err("analytics retention", e))?;
                    dropped += 1;
                }
            }
            sqlx::query("DELETE FROM analytics_requests_default WHERE at_ms < $1")
                .bind(raw_before_ms)
                .execute(p)
                .await
                .map_err(|e| err("analytics retention", e))?;
            sqlx::query("DELETE FROM analytics_hourly WHERE hour_ms < $1")
                .bind(rollups_before_ms)
                .execute(p)
                .await
                .map_err(|e| err("analytics retention", e))?;
            Ok(dropped)
        }
        Db::Sqlite(p) => {
            let raw = sqlx::query("DELETE FROM analytics_requests WHERE at_ms < $1")
                .bind(raw_before_ms)
                .execute(p)
                .await
                .map_err(|e| err("analytics retention", e))?;
            sqlx::query("DELETE FROM analytics_hourly WHERE hour_ms < $1")
                .bind(rollups_before_ms)
                .execute(p)
                .await
                .map_err(|e| err("analytics retention", e))?;
            Ok(raw.rows_affected())
        }
    }
}

/// The first millisecond of the day a partition name says (`analytics_requests_pYYYYMMDD`).
fn partition_day(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("analytics_requests_p")?;
    if digits.len() != 8 {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_few_statement_sizes() {
        let sizes = |n: usize| {
            let items = vec![0u8; n];
            fixed_chunks(&items, &CHUNKS)
                .map(<[u8]>::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(2345), [1000, 1000, 250, 50, 10, 10, 10, 10, 3, 1, 1]);
        assert_eq!(sizes(7), [3, 3, 1]);
        let rollups: Vec<usize> = fixed_chunks(&[0u8; 1234], &ROLLUP_CHUNKS)
            .map(<[u8]>::len)
            .collect();
        assert_eq!(rollups, [500, 500, 100, 100, 20, 5, 5, 1, 1, 1, 1]);
        // Within SQLite's 32 766 parameters.
        assert!(CHUNKS[0] * 30 <= 32_766 && ROLLUP_CHUNKS[0] * (16 + BUCKETS) <= 32_766);
    }

    #[test]
    fn partition_names_round_trip() {
        let day = 1_796_256_000_000; // 2026-12-03
        assert_eq!(partition_name(day), "analytics_requests_p20261203");
        assert_eq!(partition_day(&partition_name(day)), Some(day));
        assert_eq!(partition_day("analytics_requests_default"), None);
    }
}
