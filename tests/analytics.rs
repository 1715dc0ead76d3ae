//! Request analytics: one record per request of every kind, nothing secret stored, nothing lost
//! while PostgreSQL is away (or across a graceful restart), rollups that agree with the raw
//! rows, and the analytics API with its access rules.

mod common;

use std::time::Duration;

use common::paywall::{self, Paywall};
use common::services::{Relay, TempDatabase};
use common::{ADMIN_TOKEN, DEMO_HASH, DEMO_KEY, Pag0, Upstream, eventually, sha256_hex};
use futures::StreamExt;
use serde_json::Value;
use sqlx::Row;

const SLOW_KEY: &str = "slow-project-key-0123456789";
const OTHER_KEY: &str = "other-project-key-0123456789";

/// Auth, rate limit, SSRF guard (loopback allowed), cache and payment; three projects (demo
/// pays; `slow` has a tiny rate limit; `other` is another tenant); a route to `upstream`.
fn config(upstream: &Upstream, extra: &str) -> String {
    format!(
        "{payments}stages:\n  - kind: auth\n  - kind: rate_limit\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: cache\n  - kind: payment\nconnect:\n  ports: [\"*\"]\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    rate_limit: {{requests_per_second: 10000, burst: 10000}}\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{key}}}\n  - id: slow\n    keys: [\"sha256:{slow}\"]\n    rate_limit: {{requests_per_second: 1, burst: 1}}\n  - id: other\n    keys: [\"sha256:{other}\"]\n    rate_limit: {{requests_per_second: 10000, burst: 10000}}\nroutes:\n  - name: echo\n    path_prefix: /echo\n    upstream: http://{addr}\n{extra}",
        payments = paywall::payments_yaml(),
        key = paywall::WALLET_KEY,
        slow = sha256_hex(SLOW_KEY.as_bytes()),
        other = sha256_hex(OTHER_KEY.as_bytes()),
        addr = upstream.addr,
    )
}

/// GET an analytics route with a bearer credential (the admin token or a project key).
async fn api(pag0: &Pag0, path: &str, bearer: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("http://{}{path}", pag0.admin))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The newest records (admin view), once there are at least `n`.
async fn records(pag0: &Pag0, n: usize) -> Vec<Value> {
    let list = eventually(
        || async {
            api(pag0, "/api/analytics/requests?limit=1000", ADMIN_TOKEN)
                .await
                .1
        },
        |v| v["records"].as_array().is_some_and(|r| r.len() >= n),
    )
    .await;
    let records = list["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), n, "{list:#}");
    records
}

/// The only record pag0 has, once it is written.
async fn only_record(pag0: &Pag0) -> Value {
    records(pag0, 1).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_request_is_recorded_without_its_query() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client
        .post(up.url("/v1/items?api_key=secret"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let r = only_record(&pag0).await;
    let port = up.addr.port();
    assert_eq!(r["project"], "demo");
    assert_eq!(r["route"], "forward");
    assert_eq!(r["method"], "POST");
    assert_eq!(r["scheme"], "http");
    assert_eq!(r["host"], "127.0.0.1");
    assert_eq!(r["port"], port);
    assert_eq!(r["path"], "/v1/items", "never the query");
    assert_eq!(r["endpoint"], format!("127.0.0.1:{port}/v1/items"));
    assert_eq!(r["status"], 200);
    assert_eq!(r["upstream_status"], 200);
    assert_eq!(r["attempts"], 1);
    assert_eq!(r["request_bytes"], 10);
    assert_eq!(r["response_bytes"], body.len());
    assert_eq!(r["cache"], "BYPASS", "a POST does not use the cache");
    assert_eq!(r["payment"], "none");
    assert!(r["error"].is_null() && r["paid"].is_null() && r["tx_hash"].is_null());
    let (total, upstream) = (
        r["latency_us"].as_u64().unwrap(),
        r["upstream_latency_us"].as_u64().unwrap(),
    );
    assert!(upstream > 0 && upstream <= total, "{r}");
    assert_eq!(r["id"].as_str().unwrap().len(), 32);
    let now = pag0::clock::unix_millis() as i64;
    assert!((now - r["at_ms"].as_i64().unwrap()).abs() < 60_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_request_and_its_cache_hit_are_recorded() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    let client = reqwest::Client::new();
    for expected in ["MISS", "HIT"] {
        let resp = client
            .get(format!("http://{}/echo/today?city=paris", pag0.proxy))
            .header("x-pag0-api-key", DEMO_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-pag0-cache"], expected);
    }
    let list = records(&pag0, 2).await;
    let (hit, miss) = (&list[0], &list[1]);
    let endpoint = format!("127.0.0.1:{}/*", up.addr.port());
    for r in [hit, miss] {
        assert_eq!(r["route"], "echo");
        assert_eq!(r["endpoint"], endpoint, "a route's pattern");
        assert_eq!(r["path"], "/today");
        assert_eq!(r["status"], 200);
        assert_eq!(r["project"], "demo");
    }
    assert_eq!(miss["cache"], "MISS");
    assert_eq!(
        (miss["attempts"].as_u64(), miss["upstream_status"].as_u64()),
        (Some(1), Some(200))
    );
    assert_eq!(hit["cache"], "HIT");
    assert_eq!(hit["attempts"], 0, "a hit does not go upstream");
    assert!(hit["upstream_status"].is_null() && hit["upstream_latency_us"].is_null());
    assert_eq!(hit["response_bytes"], miss["response_bytes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_call_and_a_paid_cache_hit_are_recorded_with_amounts() {
    let up = Upstream::start().await;
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    let client = pag0.client("demo", DEMO_KEY);
    for _ in 0..2 {
        let resp = client.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let list = records(&pag0, 2).await;
    let (hit, paid) = (&list[0], &list[1]);
    assert_eq!(paid["payment"], "paid");
    assert_eq!(paid["attempts"], 2, "the 402 and the paid replay");
    assert_eq!(paid["upstream_status"], 200);
    assert_eq!(paid["x402_version"], 2);
    assert_eq!(paid["paid"]["amount"], "10000");
    assert_eq!(paid["paid"]["symbol"], "USDC");
    assert_eq!(paid["paid"]["network"], paywall::NETWORK);
    assert_eq!(
        paid["paid"]["asset"].as_str().unwrap().to_lowercase(),
        paywall::ASSET.to_lowercase()
    );
    assert_eq!(
        paid["paid"]["pay_to"].as_str().unwrap().to_lowercase(),
        paywall::PAY_TO.to_lowercase()
    );
    assert!(
        paid["tx_hash"]
            .as_str()
            .is_some_and(|t| t.starts_with("0x")),
        "{paid}"
    );
    assert_eq!(paid["cache"], "MISS");
    assert_eq!(hit["cache"], "HIT");
    assert_eq!(hit["payment"], "none");
    assert!(hit["paid"].is_null());
    assert_eq!(hit["saved"]["amount"], "10000");
    assert_eq!(hit["saved"]["symbol"], "USDC");

    // A declined 402 (over the ceiling) says why.
    let resp = client.get(wall.url("/expensive")).send().await.unwrap();
    assert_eq!(resp.status(), 402);
    let r = records(&pag0, 3).await.remove(0);
    assert_eq!(r["payment"], "declined");
    assert!(
        r["payment_reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{r}"
    );
    assert_eq!(r["status"], 402);
    assert!(r["paid"].is_null());

    // The summary adds it up: one paid call, 0.01 USDC spent, 0.01 USDC saved.
    let (status, s) = api(&pag0, "/api/analytics/summary", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["requests"], 3);
    assert_eq!(s["paid_calls"], 1);
    assert_eq!(s["spend"][0]["base_units"], "10000");
    assert_eq!(s["spend"][0]["display"], "0.01 USDC");
    assert_eq!(s["cache"]["saved"][0]["base_units"], "10000");
    assert_eq!(s["cache"]["hits"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_recorded_with_their_codes() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    // 407: forward proxy without credentials.
    let anonymous = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", pag0.proxy)).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        anonymous.get(up.url("/a")).send().await.unwrap().status(),
        407
    );
    // 401: a route without a key.
    let plain = reqwest::Client::new();
    let url = format!("http://{}/echo/b", pag0.proxy);
    assert_eq!(plain.get(&url).send().await.unwrap().status(), 401);
    // 403: the SSRF guard refuses a private address.
    let client = pag0.client("demo", DEMO_KEY);
    assert_eq!(
        client
            .get("http://10.1.2.3/c")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // 429: over the project's rate.
    let slow = pag0.client("slow", SLOW_KEY);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            slow.get(up.url("/d"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // 502: nothing listens upstream.
    let closed = common::free_port();
    let resp = client
        .get(format!("http://127.0.0.1:{closed}/e"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);

    let list = records(&pag0, 7).await;
    let find = |path: &str, status: u16| {
        list.iter()
            .find(|r| r["path"] == path && r["status"] == status)
            .unwrap_or_else(|| panic!("no {status} record for {path}: {list:#?}"))
            .clone()
    };
    let r = find("/a", 407);
    assert_eq!(
        (r["project"].as_str(), r["error"].as_str()),
        (Some(""), Some("PROXY_AUTH_REQUIRED"))
    );
    let r = find("/b", 401);
    assert_eq!(
        (r["route"].as_str(), r["error"].as_str()),
        (Some("echo"), Some("UNAUTHORIZED"))
    );
    let r = find("/c", 403);
    assert_eq!(r["project"], "demo");
    assert_eq!(r["host"], "10.1.2.3");
    assert_eq!(r["attempts"], 0);
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    let r = find("/d", 429);
    assert_eq!(
        (r["project"].as_str(), r["error"].as_str()),
        (Some("slow"), Some("RATE_LIMIT_EXCEEDED"))
    );
    let r = find("/e", 502);
    assert_eq!(r["error"], "UPSTREAM_CONNECT_FAILED");
    assert!(r["upstream_status"].is_null());
    // Refusals count by code in the summary.
    let (_, s) = api(&pag0, "/api/analytics/summary", ADMIN_TOKEN).await;
    assert_eq!(s["errors"]["UPSTREAM_CONNECT_FAILED"], 1, "{s}");
    assert_eq!(s["by_status_class"]["4xx"], 5, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_and_the_request_inside_its_tunnel_are_two_records() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    let mut s = tokio::net::TcpStream::connect(pag0.proxy).await.unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("demo:{DEMO_KEY}"),
    );
    let authority = format!("127.0.0.1:{}", up.addr.port());
    s.write_all(
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Plain HTTP inside the tunnel goes through the whole pipeline.
    s.write_all(
        format!("GET /inside?token=abc HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));

    let list = records(&pag0, 2).await;
    let connect = list
        .iter()
        .find(|r| r["method"] == "CONNECT")
        .expect("CONNECT record");
    assert_eq!(connect["route"], "connect");
    assert_eq!(connect["status"], 200);
    assert_eq!(connect["endpoint"], authority);
    assert_eq!(connect["project"], "demo");
    let inside = list
        .iter()
        .find(|r| r["method"] == "GET")
        .expect("inner record");
    assert_eq!(inside["path"], "/inside");
    assert_eq!(inside["route"], "forward");
    assert_eq!(inside["project"], "demo", "the CONNECT's credentials");
    assert_eq!(inside["status"], 200);
    assert_eq!(inside["endpoint"], format!("{authority}/inside"));
}

/// Every text column of both analytics tables in the SQLite file.
async fn all_text(db: &std::path::Path) -> String {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=ro", db.display()))
        .await
        .unwrap();
    let mut text = String::new();
    for table in ["analytics_requests", "analytics_hourly"] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&pool)
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                if let Ok(Some(v)) = row.try_get::<Option<String>, _>(i) {
                    text.push_str(&v);
                    text.push('\n');
                }
            }
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_query_string_credential_or_payment_header_is_stored() {
    let up = Upstream::start().await;
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client
        .get(up.url("/search?api_key=query-secret-4242&q=x"))
        .header("payment-signature", "agent-signature-secret-9191")
        .header("authorization", "Bearer upstream-token-secret-7373")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A paid call (pag0's own payment signature goes upstream) with a query too.
    let resp = client
        .get(wall.url("/paid?session=paid-query-secret-5151"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let signature = hex::encode(&wall.accepted()[0].signature);
    records(&pag0, 2).await;
    let stored = all_text(&pag0.dir.path().join("pag0.db")).await;
    assert!(
        stored.contains("/search"),
        "the records are there: {stored}"
    );
    for secret in [
        "query-secret-4242",
        "api_key",
        "agent-signature-secret-9191",
        "upstream-token-secret-7373",
        "paid-query-secret-5151",
        DEMO_KEY,
        paywall::WALLET_KEY.trim_start_matches("0x"),
        signature.as_str(),
    ] {
        assert!(!stored.contains(secret), "{secret:?} is stored:\n{stored}");
    }
}

/// Runs `n` GETs through pag0 to `up`, 32 at a time; every one must succeed.
async fn load(pag0: &Pag0, up: &Upstream, n: usize) {
    let client = pag0.client("demo", DEMO_KEY);
    let url = up.url("/load");
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|&s| s == 200),
        "{:?}",
        statuses.iter().filter(|&&s| s != 200).count()
    );
}

/// (rows, distinct ids, rollup calls) in the analytics tables of `url`.
async fn pg_counts(url: &str) -> (i64, i64, i64) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let (rows, ids): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT id) FROM analytics_requests")
            .fetch_one(&pool)
            .await
            .unwrap();
    let calls: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(calls), 0)::bigint FROM analytics_hourly")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    (rows, ids, calls)
}

/// The counts once there are `n` rows (at most 60 s: the spool is replayed every second).
async fn wait_rows(url: &str, n: i64) -> (i64, i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = pg_counts(url).await;
        if counts.0 >= n || std::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn postgres_body(
    up: &Upstream,
    relay: &Relay,
    db: &TempDatabase,
    spool: &std::path::Path,
) -> String {
    let name = db.url().rsplit('/').next().unwrap().to_string();
    config(
        up,
        &format!(
            "database:\n  url: postgres://postgres@127.0.0.1:{}/{name}\n  timeout_ms: 1000\nanalytics:\n  spool_file: {}\n",
            relay.port,
            spool.display()
        ),
    )
}

async fn metric(pag0: &Pag0, name: &str) -> u64 {
    let text = pag0.admin(reqwest::Method::GET, "/metrics").await.1;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_away_during_10000_requests_loses_and_duplicates_nothing() {
    let db = TempDatabase::create().await;
    let relay = Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let up = Upstream::start().await;
    let spool = tempfile::tempdir().unwrap();
    let pag0 = Pag0::start(&postgres_body(
        &up,
        &relay,
        &db,
        &spool.path().join("a.spool"),
    ));
    load(&pag0, &up, 2_000).await;
    relay.cut();
    load(&pag0, &up, 6_000).await;
    let spooled = metric(&pag0, "pag0_analytics_records_spooled_total").await;
    assert!(spooled > 0, "the outage sent records to the spool");
    relay.restore();
    load(&pag0, &up, 2_000).await;
    let counts = wait_rows(&db.url(), 10_000).await;
    // A moment more: nothing else arrives, nothing is written twice.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        pg_counts(&db.url()).await,
        (10_000, 10_000, 10_000),
        "{counts:?}"
    );
    assert!(metric(&pag0, "pag0_analytics_records_replayed_total").await >= spooled);
    drop(pag0);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_away_across_a_graceful_restart_loses_nothing() {
    let db = TempDatabase::create().await;
    let relay = Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let up = Upstream::start().await;
    let spool = tempfile::tempdir().unwrap();
    let body = postgres_body(&up, &relay, &db, &spool.path().join("a.spool"));
    let first = Pag0::start(&body);
    load(&first, &up, 2_000).await;
    relay.cut();
    load(&first, &up, 3_000).await;
    // Graceful stop while the database is away: the queue drains into the spool.
    drop(first);
    assert!(spool.path().join("a.spool").exists());
    // pag0 starts only with its database (payment intents are recovered first); the new
    // process replays the old one's spool, and the database goes away once more.
    relay.restore();
    let second = Pag0::start(&body);
    load(&second, &up, 2_000).await;
    relay.cut();
    load(&second, &up, 2_000).await;
    relay.restore();
    load(&second, &up, 1_000).await;
    wait_rows(&db.url(), 10_000).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(pg_counts(&db.url()).await, (10_000, 10_000, 10_000));
    drop(second);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_agree_with_the_raw_rows() {
    let up = Upstream::start().await;
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    let client = pag0.client("demo", DEMO_KEY);
    // Latencies spread over several buckets, statuses of every class, paid calls.
    let mut n = 0;
    for (path, times) in [
        ("/delay/1", 20),
        ("/delay/12", 15),
        ("/delay/40", 10),
        ("/delay/120", 5),
        ("/status/404", 7),
        ("/status/503", 3),
    ] {
        for _ in 0..times {
            let _ = client.post(up.url(path)).send().await.unwrap();
            n += 1;
        }
    }
    for _ in 0..3 {
        let resp = client.post(wall.url("/paid")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        n += 1;
    }
    records(&pag0, n).await;
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}?mode=ro",
        pag0.dir.path().join("pag0.db").display()
    ))
    .await
    .unwrap();
    // Counts per endpoint and status class.
    let raw: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT endpoint, status / 100, COUNT(*) FROM analytics_requests GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let rolled: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT endpoint, CAST(substr(status_class, 1, 1) AS INTEGER), SUM(calls) FROM analytics_hourly GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(raw, rolled);
    assert_eq!(raw.iter().map(|r| r.2).sum::<i64>(), n as i64);
    // Spend: the raw amounts add up to the rollups' and to the summary's.
    let amounts: Vec<String> =
        sqlx::query_scalar("SELECT amount FROM analytics_requests WHERE payment = 'paid'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let raw_spend: u64 = amounts.iter().map(|a| a.parse::<u64>().unwrap()).sum();
    assert_eq!(raw_spend, 30_000);
    let (_, s) = api(&pag0, "/api/analytics/summary", ADMIN_TOKEN).await;
    assert_eq!(s["spend"][0]["base_units"], "30000", "{s}");
    assert_eq!(s["requests"], n);
    // Percentiles: the rollups' (from the histogram) fall in the bucket of the exact ones.
    let mut latencies: Vec<i64> = sqlx::query_scalar("SELECT latency_us FROM analytics_requests")
        .fetch_all(&pool)
        .await
        .unwrap();
    latencies.sort();
    for (q, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        let rank = ((q * latencies.len() as f64).ceil() as usize).max(1);
        let exact = latencies[rank - 1] as u64;
        let derived = s["latency_us"][name].as_u64().unwrap();
        assert_eq!(
            pag0::analytics::bucket(derived),
            pag0::analytics::bucket(exact),
            "{name}: exact {exact} µs, from the histogram {derived} µs"
        );
    }
    // The per-endpoint view agrees with the raw rows too.
    let (_, e) = api(&pag0, "/api/analytics/endpoints?sort=calls", ADMIN_TOKEN).await;
    let first = &e["endpoints"][0];
    assert_eq!(
        first["endpoint"],
        format!("127.0.0.1:{}/delay/1", up.addr.port())
    );
    assert_eq!(first["calls"], 20);
    let paid = e["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["paid_calls"] == 3)
        .expect("the paid endpoint");
    assert_eq!(paid["avg_cost_per_paid_call"][0]["base_units"], "10000");
    assert_eq!(paid["success_rate"], 1.0);
    let failing = e["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["endpoint"].as_str().unwrap().ends_with("/status/503"))
        .unwrap();
    assert_eq!(failing["success_rate"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_filters_pages_and_keeps_projects_apart() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&up, ""));
    let demo = pag0.client("demo", DEMO_KEY);
    let other = pag0.client("other", OTHER_KEY);
    for i in 0..5 {
        demo.get(up.url(&format!("/status/{}", if i < 3 { 200 } else { 404 })))
            .send()
            .await
            .unwrap();
    }
    other.get(up.url("/theirs")).send().await.unwrap();
    records(&pag0, 6).await;

    // A project's key sees its own project (by default and by name), never another's.
    let (status, list) = api(&pag0, "/api/analytics/requests", DEMO_KEY).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["count"], 5);
    assert!(
        list["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["project"] == "demo")
    );
    let (status, _) = api(&pag0, "/api/analytics/requests?project=demo", DEMO_KEY).await;
    assert_eq!(status, 200);
    for path in ["requests", "summary", "endpoints", "timeseries"] {
        let (status, body) = api(
            &pag0,
            &format!("/api/analytics/{path}?project=other"),
            DEMO_KEY,
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "FORBIDDEN");
    }
    // X-Pag0-API-Key works as well; a wrong key or none is a 401.
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/analytics/summary", pag0.admin))
        .header("x-pag0-api-key", OTHER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let s: Value = resp.json().await.unwrap();
    assert_eq!(
        (s["project"].as_str(), s["requests"].as_i64()),
        (Some("other"), Some(1))
    );
    assert_eq!(api(&pag0, "/api/analytics/summary", "wrong").await.0, 401);
    let none = reqwest::Client::new()
        .get(format!("http://{}/api/analytics/summary", pag0.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    // A project key opens nothing else on the admin listener.
    assert_eq!(api(&pag0, "/api/spend?project=demo", DEMO_KEY).await.0, 401);

    // Filters: status (exact and class), host, payment.
    let (_, l) = api(&pag0, "/api/analytics/requests?status=404", ADMIN_TOKEN).await;
    assert_eq!(l["count"], 2);
    let (_, l) = api(
        &pag0,
        "/api/analytics/requests?status=2xx&project=demo",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(l["count"], 3);
    let (_, l) = api(
        &pag0,
        "/api/analytics/requests?host=127.0.0.1&payment=none",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(l["count"], 6);
    let (_, l) = api(
        &pag0,
        "/api/analytics/requests?host=example.com",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(l["count"], 0);
    // Cursor paging: 6 records in pages of 4 and 2, newest first, no overlap.
    let (_, p1) = api(&pag0, "/api/analytics/requests?limit=4", ADMIN_TOKEN).await;
    assert_eq!(p1["count"], 4);
    let cursor = p1["next_cursor"].as_str().expect("a next page").to_string();
    let (_, p2) = api(
        &pag0,
        &format!("/api/analytics/requests?limit=4&cursor={cursor}"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(p2["count"], 2);
    assert!(p2["next_cursor"].is_null());
    let ids: std::collections::HashSet<String> = p1["records"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["records"].as_array().unwrap())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 6);
    let times: Vec<i64> = p1["records"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["records"].as_array().unwrap())
        .map(|r| r["at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // Endpoints: sorted, paged.
    let (_, e) = api(
        &pag0,
        "/api/analytics/endpoints?project=demo&sort=success_rate&order=asc&limit=1",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(e["count"], 2);
    assert!(
        e["endpoints"][0]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/status/404")
    );
    assert_eq!(e["next_offset"], 1);
    let (_, e) = api(
        &pag0,
        "/api/analytics/endpoints?project=demo&offset=1",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(e["endpoints"].as_array().unwrap().len(), 1);

    // Time series: per minute from raw rows, per hour from rollups; the same totals.
    for interval in ["1m", "1h", "1d"] {
        let (status, t) = api(
            &pag0,
            &format!("/api/analytics/timeseries?interval={interval}&metric=requests"),
            ADMIN_TOKEN,
        )
        .await;
        assert_eq!(status, 200, "{t}");
        let sum: i64 = t["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_i64().unwrap())
            .sum();
        assert_eq!(sum, 6, "{interval}: {t}");
    }
    let (_, t) = api(
        &pag0,
        "/api/analytics/timeseries?interval=1h&metric=failures&project=demo",
        DEMO_KEY,
    )
    .await;
    let failures: i64 = t["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_i64().unwrap())
        .sum();
    assert_eq!(failures, 2);

    // Bad input: 400 naming the parameter, never a 500.
    let now_s = pag0::clock::unix_now();
    for (path, param) in [
        ("requests?colour=red", "colour"),
        ("requests?limit=0", "limit"),
        ("requests?limit=x", "limit"),
        ("requests?status=abc", "status"),
        ("requests?payment=free", "payment"),
        ("requests?cursor=nonsense", "cursor"),
        ("requests?from=yesterday", "from"),
        ("requests?from=2000-01-01", "from"),
        (
            &*format!("summary?from={}&to={}", now_s - 600, now_s - 1200),
            "from",
        ),
        ("summary?to=2099-01-01", "to"),
        ("requests?to=9223372036854775807", "to"),
        ("requests?host=a%00b", "host"),
        ("summary?project=demo&project=other", "project"),
        ("endpoints?sort=size", "sort"),
        ("endpoints?order=up", "order"),
        ("timeseries?interval=5m", "interval"),
        ("timeseries?metric=joy", "metric"),
        ("timeseries?interval=1m&from=2026-01-01", "from"),
    ] {
        let (status, body) = api(&pag0, &format!("/api/analytics/{path}"), ADMIN_TOKEN).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            body["error"]["details"]["parameter"], param,
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn postgres_partitions_by_day_and_retention_drops_whole_days() {
    use pag0::analytics::sql;
    use pag0::config::Secret;
    use pag0::store::{DatabaseConfig, DatabaseKind, Store};
    let db = TempDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DatabaseConfig {
        url: Secret::plain(db.url()),
        kind: DatabaseKind::Postgres,
        spool_file: dir.path().join("spool.jsonl"),
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    async fn rollup_calls(pool: &sqlx::PgPool) -> i64 {
        sqlx::query_scalar("SELECT SUM(calls)::bigint FROM analytics_hourly")
            .fetch_one(pool)
            .await
            .unwrap()
    }
    let day = sql::DAY_MS;
    let today = (pag0::clock::unix_millis() as i64).div_euclid(day) * day;
    sql::ensure_partitions(&store.db(), today - 40 * day, today)
        .await
        .unwrap();
    let partitions = || async {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'analytics_requests'::regclass ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        names
    };
    assert_eq!(partitions().await.len(), 42, "41 days and the default");
    // One row on a day 35 days ago, one today.
    let record = |at_ms: i64, id: &str| pag0::analytics::Record {
        id: id.to_string(),
        at_ms,
        project: "p".into(),
        route: "forward".into(),
        method: "GET".into(),
        scheme: "http".into(),
        host: "h".into(),
        port: 80,
        path: "/".into(),
        endpoint: "h/".into(),
        status: 200,
        upstream_status: Some(200),
        attempts: 1,
        latency_us: 10,
        upstream_latency_us: Some(5),
        request_bytes: 0,
        response_bytes: 0,
        cache: pag0::analytics::CacheOutcome::None,
        payment: pag0::analytics::PaymentOutcome::None,
        payment_reason: None,
        paid: None,
        saved: None,
        error: None,
        tx_hash: None,
        x402_version: None,
    };
    let old = record(today - 35 * day + 1000, "00000000000000000000000000000001");
    let new = record(today + 1000, "00000000000000000000000000000002");
    // The same record twice in a batch (an early copy and its final record, or a spool
    // replayed after a crash): one row, counted once, the last copy's values.
    let mut early = new.clone();
    early.latency_us = 1;
    let batch = [early, old.clone(), new.clone()];
    assert_eq!(sql::insert(&store.db(), &batch).await.unwrap(), 2);
    let latency: i64 =
        sqlx::query_scalar("SELECT latency_us FROM analytics_requests WHERE id = $1")
            .bind(&new.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(latency, 10, "the last copy wins");
    // Writing the same rows again changes nothing (rows or rollups).
    assert_eq!(
        sql::insert(&store.db(), &[old.clone(), new.clone()])
            .await
            .unwrap(),
        0
    );
    let calls = rollup_calls(&pool).await;
    assert_eq!(calls, 2);
    // A batch partly written before (a spool replayed after a write that did land): only
    // its new row is added, to the rows and to the rollups.
    let newer = record(today + 1500, "00000000000000000000000000000004");
    assert_eq!(
        sql::insert(&store.db(), &[old.clone(), newer, new.clone()])
            .await
            .unwrap(),
        1
    );
    let calls = rollup_calls(&pool).await;
    assert_eq!(calls, 3);
    // A row the database refuses (a NUL in a text column) is told apart from an outage.
    let mut bad = record(today + 2000, "00000000000000000000000000000003");
    bad.payment_reason = Some("nul \u{0} inside".into());
    assert!(matches!(
        sql::insert(&store.db(), &[bad]).await,
        Err(sql::InsertError::Rejected(_))
    ));
    let in_old_partition: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM analytics_requests_p{}",
        time::OffsetDateTime::from_unix_timestamp((today - 35 * day) / 1000)
            .unwrap()
            .date()
            .to_string()
            .replace('-', "")
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_old_partition, 1, "rows land in their day's partition");
    // Retention 30 days for raw rows, 400 for rollups: the old day's table is dropped.
    let dropped = sql::expire(&store.db(), today - 30 * day, today - 400 * day)
        .await
        .unwrap();
    assert_eq!(dropped, 10, "days 40..31 ago");
    assert_eq!(partitions().await.len(), 32);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM analytics_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 2);
    let calls = rollup_calls(&pool).await;
    assert_eq!(calls, 3, "rollups are kept longer");
    pool.close().await;
    drop(store);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_record_of_an_answered_request() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let body = config(&up, "");
    let answered = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut sent = 0usize;
    // Killed at several instants while 16 agents keep calling.
    for (run, kill_after) in [40u64, 250, 600, 1_100].into_iter().enumerate() {
        let pag0 = common::process::Process::start_env(&dir, &body, &[("RUST_LOG", "warn")]);
        let client = pag0.client();
        let mut tasks = Vec::new();
        for agent in 0..16 {
            let (client, up_url, answered) = (client.clone(), up.url(""), answered.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                loop {
                    let path = format!("/k{run}/a{agent}/{n}");
                    n += 1;
                    match client.get(format!("{up_url}{path}")).send().await {
                        Ok(resp) => {
                            // The answer's header arrived: its record must survive the kill.
                            assert_eq!(resp.status(), 200);
                            answered.lock().unwrap().insert(path);
                        }
                        Err(_) => return n,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        pag0.kill();
        for t in tasks {
            sent += t.await.unwrap();
        }
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 200, "the load ran: {}", answered.len());
    // The next start moves what the killed processes wrote ahead into the database.
    let pag0 = common::process::Process::start_env(&dir, &body, &[("RUST_LOG", "warn")]);
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}?mode=ro",
        dir.path().join("pag0.db").display()
    ))
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (paths, ids) = loop {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT path, id FROM analytics_requests")
            .fetch_all(&pool)
            .await
            .unwrap();
        let paths: HashSet<String> = rows.iter().map(|r| r.0.clone()).collect();
        let ids: HashSet<String> = rows.iter().map(|r| r.1.clone()).collect();
        assert_eq!(ids.len(), rows.len(), "no record twice");
        assert_eq!(paths.len(), rows.len(), "no request recorded twice");
        if answered.is_subset(&paths) || std::time::Instant::now() > deadline {
            break (paths, ids);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let lost: Vec<&String> = answered.difference(&paths).collect();
    assert!(
        lost.is_empty(),
        "{} answered requests without a record, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        ids.len() <= sent,
        "{} records for {sent} requests sent",
        ids.len()
    );
    // The rollups count every row once, recovered ones included.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rows, calls): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM analytics_requests), (SELECT COALESCE(SUM(calls), 0) FROM analytics_hourly)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, calls);
    println!(
        "answered {}, recorded {}, sent {sent}",
        answered.len(),
        ids.len()
    );
    drop(pag0);
}
