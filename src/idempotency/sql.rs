//! Records in the database (table `idempotency_records`, heartbeats in `pag0_instances`, the
//! relay replay guard in `relayed_nonces`): durable, shared by every process on the same
//! database; the embedded default on SQLite.

use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use sqlx::Row;

use super::{Change, DEAD_AFTER, Record, RecordState, RecordStore, Scope, Unavailable};
use crate::store::{Db, with_pool};
use crate::x402::NonceGuard;

pub struct SqlRecords {
    db: Db,
}

impl SqlRecords {
    pub fn new(db: Db) -> SqlRecords {
        SqlRecords { db }
    }
}

fn unavailable(e: sqlx::Error) -> Unavailable {
    Unavailable(format!("database: {e}"))
}

const SELECT: &str = "SELECT fingerprint, owner, state, payment, nonce, response FROM idempotency_records WHERE project = $1 AND idem_key = $2 AND expires_at > $3";

#[async_trait]
impl RecordStore for SqlRecords {
    async fn claim(
        &self,
        scope: &Scope,
        fingerprint: &str,
        owner: &str,
        expires_at: i64,
    ) -> Result<Option<Record>, Unavailable> {
        // A record removed between the two statements is claimed on the next turn.
        loop {
            let now = crate::clock::unix_millis() as i64;
            // A new key, or one whose record expired, is claimed in one statement.
            let claimed = with_pool!(&self.db, p => {
                sqlx::query(
                    "INSERT INTO idempotency_records (project, idem_key, fingerprint, owner, state, expires_at, updated_at)
                     VALUES ($1, $2, $3, $4, 'running', $5, $6)
                     ON CONFLICT (project, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint,
                         owner = excluded.owner, state = 'running', payment = NULL, nonce = NULL,
                         response = NULL, expires_at = excluded.expires_at, updated_at = excluded.updated_at
                     WHERE idempotency_records.expires_at <= excluded.updated_at",
                )
                .bind(&scope.project)
                .bind(&scope.key)
                .bind(fingerprint)
                .bind(owner)
                .bind(expires_at)
                .bind(now)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
            })
            .map_err(unavailable)?;
            if claimed == 1 {
                return Ok(None);
            }
            let row = with_pool!(&self.db, p => {
                sqlx::query(SELECT)
                    .bind(&scope.project)
                    .bind(&scope.key)
                    .bind(now)
                    .fetch_optional(p)
                    .await
                    .map(|row| row.map(|r| record(&r)))
            })
            .map_err(unavailable)?;
            if let Some(r) = row {
                return r.map(Some);
            }
        }
    }

    async fn take_over(
        &self,
        scope: &Scope,
        seen: &Record,
        owner: &str,
        expires_at: i64,
    ) -> Result<bool, Unavailable> {
        let now = crate::clock::unix_millis() as i64;
        let n = with_pool!(&self.db, p => {
            sqlx::query(
                "UPDATE idempotency_records SET owner = $3, state = 'running', payment = NULL,
                     nonce = NULL, response = NULL, expires_at = $4, updated_at = $5
                 WHERE project = $1 AND idem_key = $2 AND owner = $6 AND state = $7
                   AND COALESCE(payment, '') = $8",
            )
            .bind(&scope.project)
            .bind(&scope.key)
            .bind(owner)
            .bind(expires_at)
            .bind(now)
            .bind(&seen.owner)
            .bind(seen.state.as_str())
            .bind(seen.payment.as_deref().unwrap_or(""))
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn update(
        &self,
        scope: &Scope,
        owner: Option<&str>,
        change: Change<'_>,
    ) -> Result<bool, Unavailable> {
        let now = crate::clock::unix_millis() as i64;
        let n = with_pool!(&self.db, p => {
            sqlx::query(
                "UPDATE idempotency_records SET state = $3, payment = COALESCE($4, payment),
                     nonce = COALESCE($5, nonce), response = $6, expires_at = $7, updated_at = $8
                 WHERE project = $1 AND idem_key = $2 AND owner = COALESCE($9, owner)",
            )
            .bind(&scope.project)
            .bind(&scope.key)
            .bind(change.state.as_str())
            .bind(change.payment)
            .bind(change.nonce)
            .bind(change.response)
            .bind(change.expires_at)
            .bind(now)
            .bind(owner)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn remove(&self, scope: &Scope, owner: &str, released: bool) -> Result<(), Unavailable> {
        with_pool!(&self.db, p => {
            sqlx::query(
                "DELETE FROM idempotency_records WHERE project = $1 AND idem_key = $2
                   AND owner = $3 AND (state = 'running' OR (state = 'paying' AND $4))",
            )
            .bind(&scope.project)
            .bind(&scope.key)
            .bind(owner)
            .bind(released)
            .execute(p)
            .await
            .map(|_| ())
        })
        .map_err(unavailable)
    }

    async fn heartbeat(&self, owner: &str, now: i64) -> Result<(), Unavailable> {
        with_pool!(&self.db, p => {
            sqlx::query(
                "INSERT INTO pag0_instances (id, seen_at) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(owner)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ())
        })
        .map_err(unavailable)
    }

    async fn alive(&self, owner: &str, now: i64) -> Result<bool, Unavailable> {
        let seen: Option<i64> = with_pool!(&self.db, p => {
            sqlx::query_scalar("SELECT seen_at FROM pag0_instances WHERE id = $1")
                .bind(owner)
                .fetch_optional(p)
                .await
        })
        .map_err(unavailable)?;
        Ok(seen.is_some_and(|s| s > now - DEAD_AFTER.as_millis() as i64))
    }

    async fn retire(&self, owner: &str) {
        let done = with_pool!(&self.db, p => {
            sqlx::query("DELETE FROM pag0_instances WHERE id = $1")
                .bind(owner)
                .execute(p)
                .await
                .map(|_| ())
        });
        if let Err(e) = done {
            log::debug!("idempotency: cannot retire this process's heartbeat: {e}");
        }
    }

    async fn purge(&self, now: i64) {
        let done = with_pool!(&self.db, p => {
            let records = sqlx::query("DELETE FROM idempotency_records WHERE expires_at <= $1")
                .bind(now)
                .execute(p)
                .await;
            let gone = sqlx::query("DELETE FROM pag0_instances WHERE seen_at < $1")
                .bind(now - 86_400_000)
                .execute(p)
                .await;
            let nonces = sqlx::query("DELETE FROM relayed_nonces WHERE expires_at <= $1")
                .bind(now / 1000)
                .execute(p)
                .await;
            records.and(gone).and(nonces).map(|_| ())
        });
        if let Err(e) = done {
            log::debug!("idempotency: cannot purge expired records: {e}");
        }
    }
}

#[async_trait]
impl NonceGuard for SqlRecords {
    async fn claim(
        &self,
        payer: Address,
        nonce: B256,
        until: u64,
        now: u64,
    ) -> Result<bool, String> {
        let n = with_pool!(&self.db, p => {
            sqlx::query(
                "INSERT INTO relayed_nonces (payer, nonce, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (payer, nonce) DO UPDATE SET expires_at = excluded.expires_at
                 WHERE relayed_nonces.expires_at <= $4",
            )
            .bind(format!("{payer:#x}"))
            .bind(format!("{nonce:#x}"))
            .bind(until.min(i64::MAX as u64) as i64)
            .bind(now.min(i64::MAX as u64) as i64)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| format!("database: {e}"))?;
        Ok(n == 1)
    }
}

fn record<R: Row>(r: &R) -> Result<Record, Unavailable>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let get = |c: &str| r.try_get::<String, _>(c).map_err(unavailable);
    let state = get("state")?;
    Ok(Record {
        fingerprint: get("fingerprint")?,
        owner: get("owner")?,
        state: RecordState::parse(&state)
            .ok_or_else(|| Unavailable(format!("unknown record state {state:?}")))?,
        payment: r.try_get("payment").map_err(unavailable)?,
        nonce: r.try_get("nonce").map_err(unavailable)?,
        response: r.try_get("response").map_err(unavailable)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DatabaseConfig, DatabaseKind, Store};

    #[tokio::test]
    async fn a_relayed_nonce_is_accepted_once_per_payer_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseConfig {
            url: crate::config::Secret::plain(format!("sqlite:{}/t.db", dir.path().display())),
            kind: DatabaseKind::Sqlite,
            spool_file: dir.path().join("spool"),
            timeout: std::time::Duration::from_secs(5),
        })
        .await
        .unwrap();
        let records = SqlRecords::new(store.db());
        let g: &dyn NonceGuard = &records;
        let (a, b) = (Address::with_last_byte(1), Address::with_last_byte(2));
        let n = B256::with_last_byte(7);
        assert_eq!(g.claim(a, n, 100, 10).await, Ok(true));
        assert_eq!(g.claim(a, n, 100, 50).await, Ok(false), "replayed");
        assert_eq!(g.claim(b, n, 100, 50).await, Ok(true), "another payer");
        assert_eq!(
            g.claim(a, n, 200, 100).await,
            Ok(true),
            "an expired claim can be reused (the chain refuses it anyway)"
        );
        assert_eq!(g.claim(a, n, 300, 150).await, Ok(false));
    }
}
