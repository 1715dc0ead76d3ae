//! One lazily opened, multiplexed Redis connection with pag0's timeouts (it reconnects by
//! itself once open), to one server or to a Redis Cluster (MOVED/ASK handled by the `redis`
//! crate's cluster client). Shared by the budget ledger, the rate limiter, the cache tier, the
//! idempotency records and the price memory; each keeps its own policy for outages. Every
//! multi-key script of theirs keeps its keys in one hash slot.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

/// A connection to one server or to a cluster; cheap to clone (multiplexed).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

pub struct LazyRedis {
    target: Target,
    /// A client of the server, or of the cluster's first seed node (for pub/sub: a cluster
    /// delivers every message on every node).
    first: redis::Client,
    timeout: Duration,
    connection: OnceCell<RedisConn>,
    /// When the last attempt to open the connection failed (see [`LazyRedis::connection`]).
    last_failure: Mutex<Option<Instant>>,
}

/// After a failed connection attempt, [`LazyRedis::connection`] fails fast for this long.
pub const RECONNECT_COOLDOWN: Duration = Duration::from_millis(500);

impl LazyRedis {
    /// `endpoint` is `redis://…`, or `cluster` followed by a cluster's seed node URLs,
    /// separated by spaces (see `RedisSettings::url`); nothing is connected until
    /// [`get`](Self::get).
    pub fn open(endpoint: &str, timeout: Duration) -> Result<LazyRedis, String> {
        let mut urls: Vec<&str> = endpoint.split_whitespace().collect();
        let cluster = urls.first() == Some(&"cluster");
        if cluster {
            urls.remove(0);
        }
        let invalid = |e: redis::RedisError| format!("invalid Redis URL: {e}");
        let first = redis::Client::open(*urls.first().ok_or("no Redis URL")?).map_err(invalid)?;
        let target = if cluster {
            let cluster = ClusterClient::builder(urls)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(invalid)?;
            Target::Cluster(cluster)
        } else {
            Target::Single(first.clone())
        };
        Ok(LazyRedis {
            target,
            first,
            timeout,
            connection: OnceCell::new(),
            last_failure: Mutex::new(None),
        })
    }

    /// A client of the server (or of the cluster's first seed node), for pub/sub.
    pub fn client(&self) -> &redis::Client {
        &self.first
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The connection if it was opened already (it reconnects by itself from then on).
    pub fn connected(&self) -> Option<RedisConn> {
        self.connection.get().cloned()
    }

    /// The timeout of one call (also the connect and response timeout of the connection).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection, opened on first use (a failed attempt is retried by the next call).
    pub async fn get(&self) -> redis::RedisResult<RedisConn> {
        if let Some(c) = self.connection.get() {
            return Ok(c.clone());
        }
        self.connection
            .get_or_try_init(|| async {
                match &self.target {
                    Target::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(self.timeout)
                            .set_response_timeout(self.timeout)
                            .set_number_of_retries(1);
                        ConnectionManager::new_with_config(client.clone(), config)
                            .await
                            .map(RedisConn::Single)
                    }
                    Target::Cluster(cluster) => {
                        cluster.get_async_connection().await.map(RedisConn::Cluster)
                    }
                }
            })
            .await
            .cloned()
    }

    /// The connection (opened on first use); within [`RECONNECT_COOLDOWN`] of a failed
    /// attempt to open it, an error at once instead of another attempt.
    pub async fn connection(&self) -> Result<RedisConn, String> {
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

    /// `host:port` of every primary of the cluster (for commands that walk the keyspace
    /// node by node, like SCAN); empty for a single server.
    pub async fn primaries(&self) -> redis::RedisResult<Vec<(String, u16)>> {
        let Some(RedisConn::Cluster(mut c)) = Some(self.get().await?) else {
            return Ok(Vec::new());
        };
        // CLUSTER SLOTS: [[start, end, [host, port, id, …], replicas…], …]
        let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await?;
        let mut primaries: Vec<(String, u16)> = Vec::new();
        for range in slots {
            let Some(Value::Array(node)) = range.get(2) else {
                continue;
            };
            let host: Option<String> = node.first().and_then(|v| redis::from_redis_value(v).ok());
            let port: Option<u16> = node.get(1).and_then(|v| redis::from_redis_value(v).ok());
            if let (Some(host), Some(port)) = (host, port)
                && !primaries.contains(&(host.clone(), port))
            {
                primaries.push((host, port));
            }
        }
        Ok(primaries)
    }
}
