//! The feedback outbox in SQL (`audit_feedback`, `audit_cursors`), on SQLite or PostgreSQL.

use serde::Serialize;

use super::Feedback;
use crate::store::{Db, StoreError, with_pool};

/// Planned, nothing sent yet.
pub const PENDING: &str = "pending";
/// Signed and stored (nonce, hash, bytes); broadcast or about to be.
pub const SENT: &str = "sent";
/// Mined with `audit.confirmations` blocks.
pub const CONFIRMED: &str = "confirmed";
/// The registry refused it (terminal; `error` says why).
pub const REVERTED: &str = "reverted";

/// One feedback of the outbox.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub created_ms: i64,
    pub agent_id: String,
    pub endpoint: String,
    pub tag1: String,
    pub tag2: String,
    pub value: String,
    pub value_decimals: i64,
    /// The canonical JSON record (served as is; its keccak-256 is `feedback_hash`).
    #[serde(skip)]
    pub record: String,
    pub feedback_hash: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub nonce: Option<i64>,
    pub tx_hash: Option<String>,
    #[serde(skip)]
    pub raw_tx: Option<String>,
    /// When the current transaction was signed.
    pub sent_ms: Option<i64>,
    /// Transactions of the same nonce it replaced (underpriced), space separated.
    pub earlier_tx_hashes: Option<String>,
    pub block_number: Option<i64>,
    pub error: Option<String>,
    pub updated_ms: i64,
}

/// `GET /api/audit/feedback` filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<String>,
    pub limit: i64,
}

const COLUMNS: &str = "id, created_ms, agent_id, endpoint, tag1, tag2, value, value_decimals, record, feedback_hash, state, attempts, next_attempt_ms, nonce, tx_hash, raw_tx, sent_ms, earlier_tx_hashes, block_number, error, updated_ms";

impl Row {
    /// Every transaction of this feedback: the current one, then those it replaced.
    pub fn hashes(&self) -> Vec<alloy_primitives::B256> {
        self.tx_hash
            .iter()
            .map(String::as_str)
            .chain(self.earlier_tx_hashes.iter().flat_map(|h| h.split(' ')))
            .filter_map(|h| h.parse().ok())
            .collect()
    }
}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("audit outbox {context}: {e}"))
}

/// Adds planned feedback; ids already there are left alone (planning twice is harmless).
/// Returns how many were new.
pub async fn insert(db: &Db, items: &[Feedback], now_ms: i64) -> Result<u64, StoreError> {
    let sql = "INSERT INTO audit_feedback (id, created_ms, agent_id, endpoint, tag1, tag2, value, value_decimals, record, feedback_hash, state, updated_ms) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11) ON CONFLICT (id) DO NOTHING";
    let mut added = 0;
    for f in items {
        let done = with_pool!(db, p => sqlx::query(sql)
            .bind(&f.id)
            .bind(f.created_ms)
            .bind(f.agent_id.to_string())
            .bind(&f.endpoint)
            .bind(&f.tag1)
            .bind(&f.tag2)
            .bind(f.value.to_string())
            .bind(i64::from(f.value_decimals))
            .bind(&f.record)
            .bind(format!("{:#x}", f.hash))
            .bind(now_ms)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| err("insert", e))?;
        added += done;
    }
    Ok(added)
}

/// Feedback to work on now: sent ones (by nonce) first, then pending ones in plan order.
pub async fn open(db: &Db, now_ms: i64, limit: i64) -> Result<Vec<Row>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_feedback WHERE state IN ('pending', 'sent') AND next_attempt_ms <= $1 \
         ORDER BY CASE state WHEN 'sent' THEN 0 ELSE 1 END, nonce, created_ms, id LIMIT $2"
    );
    with_pool!(db, p => sqlx::query_as::<_, Row>(&sql).bind(now_ms).bind(limit).fetch_all(p).await)
        .map_err(|e| err("read", e))
}

/// Stores a signed transaction before it is broadcast. `false`: the row was not pending.
pub async fn mark_sent(
    db: &Db,
    id: &str,
    nonce: u64,
    tx_hash: &str,
    raw_tx: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let sql = "UPDATE audit_feedback SET state = 'sent', nonce = $2, tx_hash = $3, raw_tx = $4, attempts = attempts + 1, error = NULL, updated_ms = $5, sent_ms = $5 \
               WHERE id = $1 AND state = 'pending'";
    with_pool!(db, p => sqlx::query(sql)
        .bind(id)
        .bind(nonce as i64)
        .bind(tx_hash)
        .bind(raw_tx)
        .bind(now_ms)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
    .map_err(|e| err("mark sent", e))
}

/// Stores a replacement of the current transaction (same nonce, higher fees) before it is
/// broadcast; the replaced one is kept (either may be mined). `false`: it changed meanwhile.
pub async fn replace(
    db: &Db,
    id: &str,
    old_hash: &str,
    tx_hash: &str,
    raw_tx: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let sql = "UPDATE audit_feedback SET tx_hash = $3, raw_tx = $4, sent_ms = $5, updated_ms = $5, attempts = attempts + 1, \
               earlier_tx_hashes = CASE WHEN earlier_tx_hashes IS NULL THEN $2 ELSE earlier_tx_hashes || ' ' || $2 END \
               WHERE id = $1 AND state = 'sent' AND tx_hash = $2";
    with_pool!(db, p => sqlx::query(sql)
        .bind(id)
        .bind(old_hash)
        .bind(tx_hash)
        .bind(raw_tx)
        .bind(now_ms)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
    .map_err(|e| err("replace", e))
}

/// A terminal state: `confirmed` (with its block) or `reverted` (with the reason).
pub async fn finish(
    db: &Db,
    id: &str,
    state: &str,
    block: Option<u64>,
    error: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let sql = "UPDATE audit_feedback SET state = $2, block_number = $3, error = $4, updated_ms = $5 WHERE id = $1";
    with_pool!(db, p => sqlx::query(sql)
        .bind(id)
        .bind(state)
        .bind(block.map(|b| b as i64))
        .bind(error)
        .bind(now_ms)
        .execute(p)
        .await
        .map(|_| ()))
    .map_err(|e| err("finish", e))
}

/// Back to pending without its transaction (its nonce went to another one, so it can never
/// be mined): it is signed again with a new nonce.
pub async fn requeue(
    db: &Db,
    id: &str,
    tx_hash: &str,
    why: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let sql = "UPDATE audit_feedback SET state = 'pending', nonce = NULL, tx_hash = NULL, raw_tx = NULL, sent_ms = NULL, earlier_tx_hashes = NULL, error = $3, updated_ms = $4 \
               WHERE id = $1 AND state = 'sent' AND tx_hash = $2";
    with_pool!(db, p => sqlx::query(sql)
        .bind(id)
        .bind(tx_hash)
        .bind(why)
        .bind(now_ms)
        .execute(p)
        .await
        .map(|_| ()))
    .map_err(|e| err("requeue", e))
}

/// Not before `next_ms` (backoff after an error about this row).
pub async fn later(
    db: &Db,
    id: &str,
    next_ms: i64,
    error: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let sql =
        "UPDATE audit_feedback SET next_attempt_ms = $2, error = $3, updated_ms = $4 WHERE id = $1";
    with_pool!(db, p => sqlx::query(sql)
        .bind(id)
        .bind(next_ms)
        .bind(error)
        .bind(now_ms)
        .execute(p)
        .await
        .map(|_| ()))
    .map_err(|e| err("backoff", e))
}

/// The highest nonce of a stored transaction (the next one must be above it).
pub async fn max_nonce(db: &Db) -> Result<Option<u64>, StoreError> {
    let sql = "SELECT MAX(nonce) FROM audit_feedback";
    let max: Option<i64> = with_pool!(db, p => sqlx::query_scalar(sql).fetch_one(p).await)
        .map_err(|e| err("nonce", e))?;
    Ok(max.map(|n| n as u64))
}

/// Feedback not confirmed yet, and when the oldest was planned.
pub async fn backlog(db: &Db) -> Result<(u64, Option<i64>), StoreError> {
    let sql =
        "SELECT COUNT(*), MIN(created_ms) FROM audit_feedback WHERE state IN ('pending', 'sent')";
    let (count, oldest): (i64, Option<i64>) =
        with_pool!(db, p => sqlx::query_as(sql).fetch_one(p).await)
            .map_err(|e| err("backlog", e))?;
    Ok((count.max(0) as u64, oldest))
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Row>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM audit_feedback WHERE id = $1");
    with_pool!(db, p => sqlx::query_as::<_, Row>(&sql).bind(id).fetch_optional(p).await)
        .map_err(|e| err("read", e))
}

/// Newest first.
pub async fn list(db: &Db, filter: &Filter) -> Result<Vec<Row>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_feedback WHERE ($1 IS NULL OR state = $1) ORDER BY created_ms DESC, id DESC LIMIT $2"
    );
    with_pool!(db, p => sqlx::query_as::<_, Row>(&sql)
        .bind(&filter.state)
        .bind(filter.limit)
        .fetch_all(p)
        .await)
    .map_err(|e| err("list", e))
}

pub async fn cursor(db: &Db, name: &str) -> Result<Option<String>, StoreError> {
    let sql = "SELECT value FROM audit_cursors WHERE name = $1";
    with_pool!(db, p => sqlx::query_scalar(sql).bind(name).fetch_optional(p).await)
        .map_err(|e| err("cursor", e))
}

pub async fn set_cursor(db: &Db, name: &str, value: &str) -> Result<(), StoreError> {
    let sql = "INSERT INTO audit_cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value";
    with_pool!(db, p => sqlx::query(sql).bind(name).bind(value).execute(p).await.map(|_| ()))
        .map_err(|e| err("cursor", e))
}
