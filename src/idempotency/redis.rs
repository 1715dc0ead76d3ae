//! Records in Redis: shared by every process on the same Redis, one hash per key with the
//! record's expiry as its TTL; heartbeats are keys that expire after [`DEAD_AFTER`]. Every
//! script touches one key (no cross-slot calls on a Redis Cluster).
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:idem:<project>|<key>` | hash | `fp`, `owner`, `state`, `payment`, `nonce`, `response` |
//! | `<prefix>:instance:<owner>` | string | present while the process `owner` is alive |
//! | `<prefix>:relayed:<payer>:<nonce>` | string | a relayed authorization, until it expires |

use std::time::Duration;

use crate::redis_client::RedisConn;
use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use once_cell::sync::Lazy;
use redis::Script;

use super::{Change, DEAD_AFTER, Record, RecordState, RecordStore, Scope, Unavailable};
use crate::redis_client::LazyRedis;
use crate::x402::NonceGuard;

/// Creates the record unless it exists; returns the existing one's fields (empty: created).
static CLAIM: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 1 then
            return redis.call('HMGET', KEYS[1], 'fp', 'owner', 'state', 'payment', 'nonce', 'response')
          end
          redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'state', 'running')
          redis.call('PEXPIRE', KEYS[1], ARGV[3])
          return {}",
    )
});

/// Replaces the record if owner, state and payment are still those seen.
static TAKE_OVER: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"local r = redis.call('HMGET', KEYS[1], 'owner', 'state', 'payment')
          if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] or (r[3] or '') ~= ARGV[3] then return 0 end
          local fp = redis.call('HGET', KEYS[1], 'fp')
          redis.call('DEL', KEYS[1])
          redis.call('HSET', KEYS[1], 'fp', fp, 'owner', ARGV[4], 'state', 'running')
          redis.call('PEXPIRE', KEYS[1], ARGV[5])
          return 1",
    )
});

/// Changes the record if it exists and (ARGV[1] not empty) is that owner's.
static UPDATE: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
          if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
          redis.call('HSET', KEYS[1], 'state', ARGV[2])
          if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'payment', ARGV[3]) end
          if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'nonce', ARGV[4]) end
          if ARGV[5] == '1' then
            redis.call('HSET', KEYS[1], 'response', ARGV[6])
          else
            redis.call('HDEL', KEYS[1], 'response')
          end
          redis.call('PEXPIRE', KEYS[1], ARGV[7])
          return 1",
    )
});

/// Deletes the record if it is the owner's and no payment was signed for it (or, with
/// ARGV[2] = 1, the one signed is proved not made).
static REMOVE: Lazy<Script> = Lazy::new(|| {
    Script::new(
        r"local r = redis.call('HMGET', KEYS[1], 'owner', 'state')
          if r[1] == ARGV[1] and (r[2] == 'running' or (r[2] == 'paying' and ARGV[2] == '1')) then
            redis.call('DEL', KEYS[1])
          end
          return 1",
    )
});

pub struct RedisRecords {
    redis: LazyRedis,
    prefix: String,
}

impl RedisRecords {
    /// `url` is `redis://…`; nothing is connected until first use.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisRecords, String> {
        Ok(RedisRecords {
            redis: LazyRedis::open(url, timeout)?,
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, scope: &Scope) -> String {
        format!("{}:idem:{}|{}", self.prefix, scope.project, scope.key)
    }

    fn instance(&self, owner: &str) -> String {
        format!("{}:instance:{owner}", self.prefix)
    }

    async fn connection(&self) -> Result<RedisConn, Unavailable> {
        self.redis.connection().await.map_err(Unavailable)
    }
}

fn unavailable(e: redis::RedisError) -> Unavailable {
    Unavailable(format!("Redis: {e}"))
}

fn ttl(expires_at: i64) -> i64 {
    (expires_at - crate::clock::unix_millis() as i64).max(1)
}

fn text(v: Option<Vec<u8>>) -> Option<String> {
    v.and_then(|b| String::from_utf8(b).ok())
}

#[async_trait]
impl RecordStore for RedisRecords {
    async fn claim(
        &self,
        scope: &Scope,
        fingerprint: &str,
        owner: &str,
        expires_at: i64,
    ) -> Result<Option<Record>, Unavailable> {
        let mut c = self.connection().await?;
        let fields: Vec<Option<Vec<u8>>> = CLAIM
            .key(self.key(scope))
            .arg(fingerprint)
            .arg(owner)
            .arg(ttl(expires_at))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut f = fields.into_iter();
        let (Some(fp), Some(owner), Some(state)) = (f.next(), f.next(), f.next()) else {
            return Ok(None);
        };
        let state = text(state).unwrap_or_default();
        Ok(Some(Record {
            fingerprint: text(fp).unwrap_or_default(),
            owner: text(owner).unwrap_or_default(),
            state: RecordState::parse(&state)
                .ok_or_else(|| Unavailable(format!("unknown record state {state:?}")))?,
            payment: text(f.next().flatten()),
            nonce: text(f.next().flatten()),
            response: f.next().flatten(),
        }))
    }

    async fn take_over(
        &self,
        scope: &Scope,
        seen: &Record,
        owner: &str,
        expires_at: i64,
    ) -> Result<bool, Unavailable> {
        let mut c = self.connection().await?;
        let done: i64 = TAKE_OVER
            .key(self.key(scope))
            .arg(&seen.owner)
            .arg(seen.state.as_str())
            .arg(seen.payment.as_deref().unwrap_or(""))
            .arg(owner)
            .arg(ttl(expires_at))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn update(
        &self,
        scope: &Scope,
        owner: Option<&str>,
        change: Change<'_>,
    ) -> Result<bool, Unavailable> {
        let mut c = self.connection().await?;
        let done: i64 = UPDATE
            .key(self.key(scope))
            .arg(owner.unwrap_or(""))
            .arg(change.state.as_str())
            .arg(change.payment.unwrap_or(""))
            .arg(change.nonce.unwrap_or(""))
            .arg(if change.response.is_some() { "1" } else { "0" })
            .arg(change.response.unwrap_or(b""))
            .arg(ttl(change.expires_at))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn remove(&self, scope: &Scope, owner: &str, released: bool) -> Result<(), Unavailable> {
        let mut c = self.connection().await?;
        let _: i64 = REMOVE
            .key(self.key(scope))
            .arg(owner)
            .arg(if released { "1" } else { "0" })
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn heartbeat(&self, owner: &str, _now: i64) -> Result<(), Unavailable> {
        let mut c = self.connection().await?;
        redis::cmd("SET")
            .arg(self.instance(owner))
            .arg("1")
            .arg("PX")
            .arg(DEAD_AFTER.as_millis() as u64)
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn alive(&self, owner: &str, _now: i64) -> Result<bool, Unavailable> {
        let mut c = self.connection().await?;
        redis::cmd("EXISTS")
            .arg(self.instance(owner))
            .query_async::<bool>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn retire(&self, owner: &str) {
        if let Ok(mut c) = self.connection().await
            && let Err(e) = redis::cmd("DEL")
                .arg(self.instance(owner))
                .query_async::<()>(&mut c)
                .await
        {
            log::debug!("idempotency: cannot retire this process's heartbeat: {e}");
        }
    }

    /// Records expire by themselves (their TTL).
    async fn purge(&self, _now: i64) {}
}

#[async_trait]
impl NonceGuard for RedisRecords {
    async fn claim(
        &self,
        payer: Address,
        nonce: B256,
        until: u64,
        now: u64,
    ) -> Result<bool, String> {
        let mut c = self.connection().await.map_err(|e| e.to_string())?;
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:relayed:{payer:#x}:{nonce:#x}", self.prefix))
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(until.saturating_sub(now).max(1))
            .query_async(&mut c)
            .await
            .map_err(|e| format!("Redis: {e}"))?;
        Ok(set.is_some())
    }
}
