//! One lazily opened, multiplexed Redis connection with pag0's timeouts (it reconnects by
//! itself once open). Shared by the budget ledger and the cache tier; each keeps its own
//! policy for outages.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

pub struct LazyRedis {
    client: redis::Client,
    timeout: Duration,
    connection: OnceCell<ConnectionManager>,
    /// When the last attempt to open the connection failed (see [`LazyRedis::connection`]).
    last_failure: Mutex<Option<Instant>>,
}

/// After a failed connection attempt, [`LazyRedis::connection`] fails fast for this long.
pub const RECONNECT_COOLDOWN: Duration = Duration::from_millis(500);

impl LazyRedis {
    /// `url` is `redis://…`; nothing is connected until [`get`](Self::get).
    pub fn open(url: &str, timeout: Duration) -> Result<LazyRedis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(LazyRedis {
            client,
            timeout,
            connection: OnceCell::new(),
            last_failure: Mutex::new(None),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection if it was opened already (it reconnects by itself from then on).
    pub fn connected(&self) -> Option<ConnectionManager> {
        self.connection.get().cloned()
    }

    /// The timeout of one call (also the connect and response timeout of the connection).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection, opened on first use (a failed attempt is retried by the next call).
    pub async fn get(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(c) = self.connection.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
    }

    /// The connection (opened on first use); within [`RECONNECT_COOLDOWN`] of a failed
    /// attempt to open it, an error at once instead of another attempt.
    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self.connection.get() {
            return Ok(c.clone());
        }
        let cooling = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < RECONNECT_COOLDOWN);
        if cooling {
            return Err("Redis is unreachable".into());
        }
        self.get().await.map_err(|e| {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            format!("cannot connect to Redis: {e}")
        })
    }
}
