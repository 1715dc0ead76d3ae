//! SQL storage (sqlx): the durable spend journal, on PostgreSQL or the embedded SQLite file.
//!
//! Writes never get lost: a row the database cannot take right now (PostgreSQL down, disk
//! full) is appended to a local spool file (fsynced JSON lines) and written later by
//! [`Store::replay_spool`]; rows are keyed by the reservation id, so a replay never duplicates.
//! Reads that rebuild budgets add what still waits in the spool.

/// Runs `$body` with `$p` bound to whichever pool the store has (the SQL is the same on both:
/// `$N` parameters work on SQLite as well).
macro_rules! with_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use with_pool;

/// `sql` with its amount parameter `$n` cast for the database: PostgreSQL keeps amounts as
/// `NUMERIC` (bound as text), SQLite as text.
pub(crate) fn with_amount_param(db: &Db, sql: &str, n: usize) -> String {
    match db {
        Db::Sqlite(_) => sql.to_string(),
        Db::Postgres(_) => sql.replace(&format!("${n},"), &format!("${n}::numeric,")),
    }
}

/// Inserts journal rows (`&[&SpendRecord]`) through `$exec` in multi-row `INSERT`s; `$cast`
/// turns the amount text into the column's type (`""` on SQLite, `"::numeric"` on PostgreSQL).
macro_rules! insert_journal {
    ($db:ty, $exec:expr, $recs:expr, $cast:expr) => {{
        for chunk in $recs.chunks($crate::store::INSERT_CHUNK) {
            let mut q = sqlx::QueryBuilder::<$db>::new($crate::store::INSERT_COLUMNS);
            q.push_values(chunk, |mut row, r| {
                row.push_bind(&r.id)
                    .push_bind(&r.project)
                    .push_bind(&r.pool)
                    .push_bind(&r.network)
                    .push_bind(&r.asset)
                    .push_bind(&r.pay_to)
                    .push_bind(&r.payer)
                    .push_bind(r.amount.to_string())
                    .push_unseparated($cast)
                    .push_bind(&r.nonce)
                    .push_bind(&r.tx_hash)
                    .push_bind(&r.url)
                    .push_bind(&r.window_day)
                    .push_bind(&r.window_month)
                    .push_bind(r.reserved_at)
                    .push_bind(r.committed_at)
                    .push_bind(r.valid_before);
            });
            q.push(" ON CONFLICT (id) DO NOTHING");
            q.build()
                .execute(&mut *$exec)
                .await
                .map_err(|e| err("journal insert", e))?;
        }
    }};
}

mod intents;
mod policies;
mod spool;
pub mod wal;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use alloy_primitives::U256;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::ConnectOptions;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::budget::{BudgetKey, SpendHistory, Windows};
pub use intents::{
    HOLDING, IN_DOUBT_MARGIN_SECONDS, InDoubtHold, Intent, IntentEvent, IntentFilter, IntentRow,
    IntentState, KeyPayment, Outcome,
};
pub use policies::{PolicyVersion, PolicyWriteError};
pub use spool::Spool;
pub use spool::{hex_into, line as spool_line, records as spool_records};
pub use wal::Wal;

pub(crate) const INSERT_COLUMNS: &str = "INSERT INTO spend_journal (id, project, pool, network, asset, pay_to, payer, amount, nonce, tx_hash, url, window_day, window_month, reserved_at, committed_at, valid_before) ";
/// Rows per `INSERT` (16 parameters each: within SQLite's and PostgreSQL's limits).
pub(crate) const INSERT_CHUNK: usize = 512;

/// Most journal rows one query returns.
pub const MAX_SPEND_ROWS: i64 = 10_000;

/// A journaled payment's amount given back to its budget windows (it never settled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// The journal row it corrects.
    pub id: String,
    pub project: String,
    pub pool: String,
    pub window_day: String,
    pub window_month: String,
    pub amount: U256,
    pub reason: String,
}

/// Where the journal lives.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite:<file>` or `postgres://…` (the secret part never printed: see [`Self::redacted`]).
    pub url: crate::config::Secret,
    pub kind: DatabaseKind,
    /// Rows waiting for the database.
    pub spool_file: PathBuf,
    /// Connect / acquire timeout.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

/// One committed payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    pub id: String,
    pub project: String,
    /// Budget pool it counted in (`""` when the project has no budget for the asset).
    pub pool: String,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    pub payer: String,
    /// Base units, decimal.
    #[serde(with = "u256_decimal")]
    pub amount: U256,
    pub nonce: String,
    pub tx_hash: Option<String>,
    pub url: String,
    pub window_day: String,
    pub window_month: String,
    pub reserved_at: i64,
    pub committed_at: i64,
    /// The authorization's `validBefore` (unix seconds; absent in rows of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<i64>,
}

mod u256_decimal {
    use alloy_primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s = String::deserialize(d)?;
        U256::from_str_radix(&s, 10).map_err(serde::de::Error::custom)
    }
}

/// A connection pool on the configured database (shared with the analytics writer).
#[derive(Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The spend journal and the payment intents.
pub struct Store {
    db: Db,
    spool: Spool<SpendRecord>,
    intent_spool: Spool<IntentEvent>,
    /// The intent spool may hold events (set on append, cleared by a replay).
    intents_spooled: std::sync::atomic::AtomicBool,
}

/// Why the store could not be opened or queried (never contains the database password).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

impl Store {
    /// Opens the database (creating the SQLite file) and applies the migrations. PostgreSQL is
    /// connected lazily: if it is down now, pag0 still starts, spools journal rows and applies
    /// the migrations once it is back ([`Store::maintain`]).
    pub async fn open(config: &DatabaseConfig) -> Result<Store, StoreError> {
        let db = match config.kind {
            DatabaseKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(config.url.expose())
                    .map_err(|e| err("database.url", e))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(config.timeout)
                    // Pages read through a mapping, not a `pread` each: the pool's connections
                    // take turns, and each one's page cache is stale after another one wrote.
                    .pragma("mmap_size", "268435456")
                    // Large batches are slow by design; their SQL text is no log line.
                    .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    // A connection to a local file does not go stale: no ping round trip to
                    // the connection's thread before every transaction.
                    .test_before_acquire(false)
                    .acquire_timeout(config.timeout)
                    .connect_with(options)
                    .await
                    .map_err(|e| err("cannot open the SQLite database", e))?;
                Db::Sqlite(pool)
            }
            DatabaseKind::Postgres => {
                let options = PgConnectOptions::from_str(config.url.expose())
                    .map_err(|e| err("database.url", redact(e, config)))?
                    .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(config.timeout)
                    .connect_lazy_with(options);
                Db::Postgres(pool)
            }
        };
        let store = Store {
            db,
            spool: Spool::new(config.spool_file.clone()),
            intent_spool: Spool::new(intent_spool_path(&config.spool_file)),
            // A spool left by an earlier run is replayed at recovery; checking once is cheap.
            intents_spooled: std::sync::atomic::AtomicBool::new(true),
        };
        match store.migrate().await {
            Ok(()) => {}
            // The embedded file is ours: failing to migrate it is a startup error.
            Err(e) if config.kind == DatabaseKind::Sqlite => {
                return Err(err("cannot apply the SQLite migrations", e));
            }
            Err(e) => log::warn!("database not ready, journal rows are spooled until it is: {e}"),
        }
        Ok(store)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await,
            Db::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await,
        }
        .map_err(|e| err("migrations", e))
    }

    /// The connection pool (the analytics writer and its queries share it).
    pub fn db(&self) -> Db {
        self.db.clone()
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
            Db::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
        }
        .map_err(|e| err("database", e))
    }

    /// Rows waiting in the spools (journal rows and intent events).
    pub async fn spooled(&self) -> usize {
        self.spool.read().await.map_or(0, |rows| rows.len())
            + self.intent_spool.read().await.map_or(0, |rows| rows.len())
    }

    /// Records a committed payment: in the database, or in the spool when the database
    /// cannot take it. Only fails if both fail (then the error is logged loudly by the caller).
    pub async fn record_spend(&self, rec: &SpendRecord) -> Result<(), StoreError> {
        self.record_spends(&[rec]).await
    }

    /// Records committed payments in one transaction (one fsync for the batch); rows the
    /// database cannot take go to the spool. Only fails if both fail.
    pub async fn record_spends(&self, recs: &[&SpendRecord]) -> Result<(), StoreError> {
        match self.insert_all(recs).await {
            Ok(()) => Ok(()),
            Err(e) => {
                log::warn!(rows = recs.len(); "journal write failed, spooling the rows: {e}");
                for r in recs {
                    self.spool.append(r).await?;
                }
                Ok(())
            }
        }
    }

    /// One multi-row `INSERT` per chunk (one round trip to the database, one transaction).
    async fn insert_all(&self, recs: &[&SpendRecord]) -> Result<(), StoreError> {
        match &self.db {
            // Text on SQLite: its integers are 64-bit.
            Db::Sqlite(p) => {
                let mut conn = p.acquire().await.map_err(|e| err("journal", e))?;
                insert_journal!(sqlx::Sqlite, conn, recs, "");
            }
            Db::Postgres(p) => {
                let mut conn = p.acquire().await.map_err(|e| err("journal", e))?;
                insert_journal!(sqlx::Postgres, conn, recs, "::numeric");
            }
        }
        Ok(())
    }

    /// Writes spooled rows to the database; keeps the spool if the database is still away.
    /// Returns how many rows were moved.
    /// Records a correction (idempotent: one per journal row).
    pub async fn record_correction(&self, c: &Correction) -> Result<(), StoreError> {
        let sql = "INSERT INTO spend_corrections (id, project, pool, window_day, window_month, amount, reason, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";
        let sql = with_amount_param(&self.db, sql, 6);
        with_pool!(&self.db, p => sqlx::query(&sql)
            .bind(&c.id)
            .bind(&c.project)
            .bind(&c.pool)
            .bind(&c.window_day)
            .bind(&c.window_month)
            .bind(c.amount.to_string())
            .bind(&c.reason)
            .bind(crate::clock::unix_now() as i64)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(|e| err("correction", e))
    }

    /// Corrections of a budget pool's month: (id, amount, day).
    async fn corrections(
        &self,
        key: &BudgetKey,
        month: &str,
    ) -> Result<Vec<(String, U256, String)>, StoreError> {
        let sql = "SELECT id, CAST(amount AS TEXT), window_day FROM spend_corrections WHERE project = $1 AND pool = $2 AND window_month = $3";
        let rows: Vec<(String, String, String)> = with_pool!(&self.db, p => sqlx::query_as(sql)
            .bind(&key.project)
            .bind(&key.pool)
            .bind(month)
            .fetch_all(p)
            .await)
        .map_err(|e| err("corrections", e))?;
        Ok(rows
            .into_iter()
            .map(|(id, a, d)| (id, U256::from_str_radix(&a, 10).unwrap_or_default(), d))
            .collect())
    }

    pub async fn replay_spool(&self) -> Result<usize, StoreError> {
        let mut guard = self.spool.lock().await;
        let rows = guard.read()?;
        if rows.is_empty() {
            return Ok(0);
        }
        self.migrate().await?;
        self.insert_all(&rows.iter().collect::<Vec<_>>()).await?;
        guard.clear()?;
        Ok(rows.len())
    }

    /// Applies migrations and drains the spools every `every`, forever (run it in a task).
    pub async fn maintain(&self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.replay_intent_spool().await {
                Ok(0) => {}
                Ok(n) => log::info!("wrote {n} spooled payment intent events to the database"),
                Err(e) => log::debug!("spooled payment intents wait for the database: {e}"),
            }
            match self.replay_spool().await {
                Ok(0) => {}
                Ok(n) => log::info!("wrote {n} spooled journal rows to the database"),
                Err(e) => log::debug!("spooled journal rows wait for the database: {e}"),
            }
        }
    }

    /// Journal rows of `project` committed in `[from, to)` (unix seconds), oldest first,
    /// spooled rows included.
    pub async fn spend(
        &self,
        project: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<SpendRecord>, StoreError> {
        // Held across both reads: a spool replay cannot move rows between them.
        let spool = self.spool.lock().await;
        let spooled = spool.read()?;
        let rows = with_pool!(&self.db, p => {
            sqlx::query(
                "SELECT id, project, pool, network, asset, pay_to, payer, CAST(amount AS TEXT) AS amount, nonce, tx_hash, url, window_day, window_month, reserved_at, committed_at, valid_before
                 FROM spend_journal WHERE project = $1 AND committed_at >= $2 AND committed_at < $3 ORDER BY committed_at, id LIMIT $4",
            )
            .bind(project).bind(from).bind(to).bind(limit)
            .fetch_all(p)
            .await
            .map_err(|e| err("journal query", e))?
            .iter()
            .map(|row| record(row, row.try_get::<String, _>("amount")))
            .collect::<Result<Vec<_>, _>>()?
        });
        let mut rows = rows;
        let known: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        for r in spooled {
            if r.project == project
                && r.committed_at >= from
                && r.committed_at < to
                && !known.contains(&r.id)
            {
                rows.push(r);
            }
        }
        rows.sort_by(|a, b| (a.committed_at, &a.id).cmp(&(b.committed_at, &b.id)));
        rows.truncate(limit.max(0) as usize);
        Ok(rows)
    }
}

fn record<R: Row>(row: &R, amount: Result<String, sqlx::Error>) -> Result<SpendRecord, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |c: &str| row.try_get::<String, _>(c).map_err(|e| err(c, e));
    let amount = amount.map_err(|e| err("amount", e))?;
    Ok(SpendRecord {
        id: text("id")?,
        project: text("project")?,
        pool: text("pool")?,
        network: text("network")?,
        asset: text("asset")?,
        pay_to: text("pay_to")?,
        payer: text("payer")?,
        amount: U256::from_str_radix(&amount, 10).map_err(|e| err("amount", e))?,
        nonce: text("nonce")?,
        tx_hash: row.try_get("tx_hash").map_err(|e| err("tx_hash", e))?,
        url: text("url")?,
        window_day: text("window_day")?,
        window_month: text("window_month")?,
        reserved_at: row
            .try_get("reserved_at")
            .map_err(|e| err("reserved_at", e))?,
        committed_at: row
            .try_get("committed_at")
            .map_err(|e| err("committed_at", e))?,
        valid_before: row
            .try_get("valid_before")
            .map_err(|e| err("valid_before", e))?,
    })
}

/// The intent spool sits beside the journal spool: `<spool_file>.intents`.
fn intent_spool_path(spool_file: &std::path::Path) -> PathBuf {
    beside(spool_file, ".intents")
}

/// The path of a file kept next to `file`: its name with `suffix` added (`x.jsonl.wal`).
pub fn beside(file: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// sqlx errors can quote the URL; never let the password through.
fn redact(e: impl std::fmt::Display, config: &DatabaseConfig) -> String {
    e.to_string().replace(config.url.expose(), "<database.url>")
}

#[async_trait]
impl SpendHistory for Store {
    async fn corrected(
        &self,
        key: &BudgetKey,
        w: &Windows,
    ) -> Result<Vec<(String, String)>, String> {
        Ok(self
            .corrections(key, &w.month)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(id, _, day)| (id, day))
            .collect())
    }

    async fn pending_holds(
        &self,
        key: &BudgetKey,
        w: &Windows,
    ) -> Result<Vec<crate::budget::PendingHold>, String> {
        let rows = self
            .holding_intents(&key.project, &key.pool, &w.month)
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|h| crate::budget::PendingHold {
                id: h.id,
                amount: h.amount,
                day: h.day,
                month: h.month,
                expires_at: h
                    .valid_before
                    .saturating_add(intents::IN_DOUBT_MARGIN_SECONDS),
            })
            .collect())
    }

    async fn window_totals(&self, key: &BudgetKey, w: &Windows) -> Result<(U256, U256), String> {
        // Held across both reads: a spool replay cannot move rows between them.
        let spool = self.spool.lock().await;
        let spooled = spool.read().map_err(|e| e.to_string())?;
        let mut day = U256::ZERO;
        let mut month = U256::ZERO;
        let mut seen = std::collections::HashSet::new();
        let add = |sum: &mut U256, text: &str| -> Result<(), String> {
            *sum = sum.saturating_add(U256::from_str_radix(text, 10).map_err(|e| e.to_string())?);
            Ok(())
        };
        match &self.db {
            Db::Sqlite(p) => {
                let rows = sqlx::query(
                    "SELECT id, amount, window_day FROM spend_journal WHERE project = ? AND pool = ? AND window_month = ?",
                )
                .bind(&key.project).bind(&key.pool).bind(&w.month)
                .fetch_all(p)
                .await
                .map_err(|e| e.to_string())?;
                for row in rows {
                    let amount: String = row.try_get("amount").map_err(|e| e.to_string())?;
                    let window_day: String =
                        row.try_get("window_day").map_err(|e| e.to_string())?;
                    add(&mut month, &amount)?;
                    if window_day == w.day {
                        add(&mut day, &amount)?;
                    }
                    seen.insert(row.try_get::<String, _>("id").map_err(|e| e.to_string())?);
                }
            }
            Db::Postgres(p) => {
                let row = sqlx::query(
                    "SELECT COALESCE(SUM(amount) FILTER (WHERE window_day = $4), 0)::text AS day,
                            COALESCE(SUM(amount), 0)::text AS month
                     FROM spend_journal WHERE project = $1 AND pool = $2 AND window_month = $3",
                )
                .bind(&key.project)
                .bind(&key.pool)
                .bind(&w.month)
                .bind(&w.day)
                .fetch_one(p)
                .await
                .map_err(|e| e.to_string())?;
                add(
                    &mut day,
                    &row.try_get::<String, _>("day").map_err(|e| e.to_string())?,
                )?;
                add(
                    &mut month,
                    &row.try_get::<String, _>("month")
                        .map_err(|e| e.to_string())?,
                )?;
                // Spooled rows that also reached the database must not count twice.
                let ids: Vec<String> = spooled.iter().map(|r| r.id.clone()).collect();
                if !ids.is_empty() {
                    let present = sqlx::query("SELECT id FROM spend_journal WHERE id = ANY($1)")
                        .bind(&ids)
                        .fetch_all(p)
                        .await
                        .map_err(|e| e.to_string())?;
                    for row in present {
                        seen.insert(row.try_get::<String, _>("id").map_err(|e| e.to_string())?);
                    }
                }
            }
        }
        for r in spooled {
            if r.project == key.project
                && r.pool == key.pool
                && r.window_month == w.month
                && !seen.contains(&r.id)
            {
                month = month.saturating_add(r.amount);
                if r.window_day == w.day {
                    day = day.saturating_add(r.amount);
                }
            }
        }
        // Payments proved never settled gave their amount back.
        for (_, amount, window_day) in self
            .corrections(key, &w.month)
            .await
            .map_err(|e| e.to_string())?
        {
            month = month.saturating_sub(amount);
            if window_day == w.day {
                day = day.saturating_sub(amount);
            }
        }
        Ok((day, month))
    }
}
