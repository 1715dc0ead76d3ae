//! Bare Pingora baseline for `benches/proxy.sh` and `benches/cache.sh` (run with
//! `cargo bench --bench pingora -- <command>`): what Pingora 0.9.1 itself costs per request,
//! so the scripts can show how much of pag0's gap to nginx is Pingora's and how much is pag0's.
//!
//! * `proxy <listen> <upstream> [threads]`: a `ProxyHttp` that sends every request to
//!   `upstream` (no stages, metrics, timeouts or header edits; pooled upstream keep-alive).
//! * `answer <listen> [threads]`: answers every request from `request_filter` with the same
//!   64-byte body as the bench upstream (the ceiling for anything pag0 serves itself, such as a
//!   cache hit).
//! * `answer-redis <listen> <redis-url> [threads]`: the same, but every answer's body is first
//!   read from Redis with one `GET` (the ceiling for a cache hit served from Redis alone).

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bench upstream's body (benches/proxy.sh: nginx `return 200`).
const BODY: &[u8] = b"0123456789012345678901234567890123456789012345678901234567890123";

struct Bare {
    /// `None`: answer every request itself.
    upstream: Option<SocketAddr>,
    /// Answer with the body read from Redis (connected on first use, on Pingora's runtime).
    redis: Option<RedisBody>,
}

struct RedisBody {
    client: redis::Client,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    /// The key read per request (set on connecting, expires by itself).
    key: String,
}

impl Bare {
    async fn body(&self) -> Result<Bytes> {
        let Some(RedisBody {
            client,
            connection,
            key,
        }) = &self.redis
        else {
            return Ok(Bytes::from_static(BODY));
        };
        let redis_error = |e: redis::RedisError| Error::explain(InternalError, e.to_string());
        let mut con = connection
            .get_or_try_init(|| async {
                let mut con = ConnectionManager::new(client.clone()).await?;
                let _: () = con.set_ex(key, BODY, 3600).await?;
                Ok(con)
            })
            .await
            .map_err(redis_error)?
            .clone();
        let body: Vec<u8> = con.get(key).await.map_err(redis_error)?;
        Ok(Bytes::from(body))
    }
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        if self.upstream.is_some() {
            return Ok(false);
        }
        let body = self.body().await?;
        let mut header = ResponseHeader::build(200, Some(1))?;
        header.insert_header("content-length", body.len())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self.upstream.expect("request_filter answers without one");
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let (listen, upstream, redis, threads) = match arg(0) {
        Some("proxy") => (
            arg(1),
            arg(2).map(|u| u.parse().expect("upstream ip:port")),
            None,
            arg(3),
        ),
        Some("answer") => (arg(1), None, None, arg(2)),
        Some("answer-redis") => {
            let client = redis::Client::open(arg(2).expect("a Redis URL")).expect("Redis URL");
            let redis = Some(RedisBody {
                client,
                connection: tokio::sync::OnceCell::new(),
                key: format!("pag0-bench:answer:{}", std::process::id()),
            });
            (arg(1), None, redis, arg(3))
        }
        _ => {
            eprintln!(
                "usage: pingora proxy <listen> <upstream> [threads] | answer <listen> [threads] | answer-redis <listen> <redis-url> [threads]"
            );
            std::process::exit(2);
        }
    };
    let listen = listen.expect("a listen address");
    // Stop at once on SIGTERM (the bench scripts' exit trap): no grace period, no wait for
    // open connections.
    let conf = ServerConf {
        threads: threads.map_or(1, |t| t.parse().expect("threads")),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut service = http_proxy_service(&server.configuration, Bare { upstream, redis });
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
