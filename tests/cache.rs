//! The response cache end to end: agent → pag0 → a real origin (or the test paywall), with the
//! memory tier and real Redis (a private redis-server where a test stops it).

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::paywall::{self, Paywall};
use common::services::PrivateRedis;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::{Value, json};

const OTHER_KEY: &str = "other-project-key-0123456789";

/// An origin whose answers are steered by the query string: `cc=` (Cache-Control), `size=`
/// (body of that many bytes), `status=`, `cookie=1` (Set-Cookie), `vary=<header>` (Vary, and
/// the body shows that request header), `delay=<ms>`, `etag=1` (ETag "v1"; 304 to a matching
/// If-None-Match). Other bodies are `{"n": <request
/// number>}`, so a test can tell a cached answer from a fresh one.
struct Origin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    by_path: Arc<Mutex<HashMap<String, usize>>>,
    /// The accept loop, which owns every connection: aborting it takes the origin down.
    server: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let by_path = Arc::new(Mutex::new(HashMap::new()));
        let (r, p) = (requests.clone(), by_path.clone());
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, p) = (r.clone(), p.clone());
                connections.spawn(async move {
                    let svc = service_fn(move |req| answer(req, r.clone(), p.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            requests,
            by_path,
            server,
        }
    }

    /// Closes the listener and every open connection.
    async fn stop(&self) {
        self.server.abort();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "origin still listening"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests that reached `path` (without the query).
    fn hits(&self, path: &str) -> usize {
        self.by_path.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    requests: Arc<AtomicUsize>,
    by_path: Arc<Mutex<HashMap<String, usize>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
    *by_path
        .lock()
        .unwrap()
        .entry(req.uri().path().to_string())
        .or_default() += 1;
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%20", " ").replace("%2C", ",")))
        .collect();
    if let Some(ms) = query.get("delay") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if query.contains_key("etag")
        && req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == b"\"v1\"")
    {
        *by_path
            .lock()
            .unwrap()
            .entry(format!("{} 304", req.uri().path()))
            .or_default() += 1;
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::NOT_MODIFIED;
        resp.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
        if let Some(cc) = query.get("cc") {
            resp.headers_mut()
                .insert("cache-control", cc.parse().unwrap());
        }
        return Ok(resp);
    }
    let vary_value = query.get("vary").map(|h| {
        req.headers()
            .get(h.as_str())
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    });
    let body = match query.get("size") {
        Some(size) => "x".repeat(size.parse().unwrap()),
        None => json!({"n": n, "method": req.method().as_str(), "vary": vary_value}).to_string(),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(query.get("status").map_or(200, |s| s.parse().unwrap()))
            .unwrap();
    let h = resp.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    if let Some(cc) = query.get("cc") {
        h.insert("cache-control", cc.parse().unwrap());
    }
    if query.contains_key("cookie") {
        h.insert("set-cookie", "session=abc".parse().unwrap());
    }
    if let Some(v) = query.get("vary") {
        h.insert("vary", v.parse().unwrap());
    }
    if query.contains_key("etag") {
        h.insert("etag", "\"v1\"".parse().unwrap());
    }
    Ok(resp)
}

/// Stages with the cache (rules given by the caller), two projects (demo has a wallet),
/// a `shared` and a `private` route to `origin`, then `extra` sections.
fn config(origin: &Origin, rules: &str, extra: &str) -> String {
    format!(
        "{payments}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: cache\n{rules}  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{key}}}\n  - id: other\n    keys: [\"sha256:{other}\"]\nroutes:\n  - name: shared\n    path_prefix: /shared\n    upstream: http://{addr}\n    cache: {{ shared: true, post: true }}\n  - name: private\n    path_prefix: /private\n    upstream: http://{addr}\n  - name: nocache\n    path_prefix: /nocache\n    upstream: http://{addr}\n    cache: {{ enabled: false }}\n{extra}",
        payments = paywall::payments_yaml(),
        key = paywall::WALLET_KEY,
        other = sha256_hex(OTHER_KEY.as_bytes()),
        addr = origin.addr,
    )
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// (status, X-Pag0-Cache, body) of one call.
async fn call(req: reqwest::RequestBuilder) -> (u16, String, String) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let cache = header(&resp, "x-pag0-cache");
    (status, cache, resp.text().await.unwrap())
}

/// A client for reverse routes (`http://pag0/shared/...`) with a project key.
fn route_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn route_url(pag0: &Pag0, path: &str) -> String {
    format!("http://{}{path}", pag0.proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_miss_bypass_and_refresh() {
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let client = pag0.client("demo", DEMO_KEY);
    let url = origin.url("/a?x=1&y=2");

    let (s, c, first) = call(client.get(&url)).await;
    assert_eq!((s, c.as_str()), (200, "MISS"));
    let (s, c, again) = call(client.get(&url)).await;
    assert_eq!((s, c.as_str()), (200, "HIT"));
    assert_eq!(again, first, "a hit is the stored answer");
    // The key normalizes the query order.
    let (_, c, _) = call(client.get(origin.url("/a?y=2&x=1"))).await;
    assert_eq!(c, "HIT");
    assert_eq!(origin.requests(), 1);

    // X-Pag0-Cache: bypass skips the cache entirely (the stored entry stays).
    let (s, c, bypassed) = call(client.get(&url).header("x-pag0-cache", "bypass")).await;
    assert_eq!((s, c.as_str()), (200, "BYPASS"));
    assert_ne!(bypassed, first);
    assert_eq!(origin.requests(), 2);
    let (_, c, body) = call(client.get(&url)).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", first.as_str()));

    // Cache-Control: no-cache refreshes: the origin answers and the answer is stored.
    let (_, c, refreshed) = call(client.get(&url).header("cache-control", "no-cache")).await;
    assert_eq!(c, "BYPASS");
    assert_eq!(origin.requests(), 3);
    let (_, c, body) = call(client.get(&url)).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", refreshed.as_str()));

    // A route with the cache disabled, and HEAD/GET kept apart.
    let rc = route_client();
    for _ in 0..2 {
        let (_, c, _) = call(
            rc.get(route_url(&pag0, "/nocache/n"))
                .header("x-pag0-api-key", DEMO_KEY),
        )
        .await;
        assert_eq!(c, "BYPASS");
    }
    assert_eq!(origin.hits("/n"), 2);

    let metrics = pag0.admin(reqwest::Method::GET, "/metrics").await.1;
    for line in [
        r#"pag0_cache_requests_total{project="demo",result="hit",tier="memory"} 4"#,
        r#"pag0_cache_requests_total{project="demo",result="miss",tier="none"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
}

/// A fresh hit is answered before pingora-cache runs; requests that need pingora-cache's hit
/// logic (conditional, range) still get it. Both send the same response, from the memory tier
/// and from Redis alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_hits_answer_like_pingora_cache_hits() {
    let origin = Origin::start().await;
    let memory = Pag0::start(&config(&origin, "", ""));
    fresh_and_pingora_hits_agree(&memory, &origin, "/mem", "memory").await;
    let redis = PrivateRedis::start();
    let extra = format!(
        "redis:\n  url: {}\ncache:\n  memory_bytes: 0\n",
        redis.url()
    );
    let redis_only = Pag0::start(&config(&origin, "", &extra));
    fresh_and_pingora_hits_agree(&redis_only, &origin, "/redis", "redis").await;
}

async fn fresh_and_pingora_hits_agree(pag0: &Pag0, origin: &Origin, path: &str, tier: &str) {
    let client = pag0.client("demo", DEMO_KEY);
    let url = origin.url(&format!("{path}?etag=1&size=40&cc=max-age=60"));
    let (s, c, stored) = call(client.get(&url)).await;
    assert_eq!((s, c.as_str()), (200, "MISS"));

    let headers = |resp: &reqwest::Response| {
        let mut h: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "date" | "age"))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        h.sort();
        h
    };
    let fast = client.get(&url).send().await.unwrap();
    assert!(
        fast.headers().contains_key("age"),
        "a stored answer has an Age"
    );
    let fast_headers = headers(&fast);
    assert_eq!(fast.text().await.unwrap(), stored);
    // If-Modified-Since (the stored answer has no Last-Modified: a full 200) goes through
    // pingora-cache's own hit path.
    let get_with =
        |name: &'static str, value: &'static str| client.get(&url).header(name, value).send();
    let slow = get_with("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    assert!(slow.headers().contains_key("age"));
    assert_eq!(headers(&slow), fast_headers);
    assert!(
        fast_headers.contains(&("x-pag0-cache".into(), "HIT".into())),
        "{fast_headers:?}"
    );
    assert_eq!(slow.text().await.unwrap(), stored);

    // Conditional and range requests on a stored entry.
    let resp = get_with("if-none-match", "\"v1\"").await.unwrap();
    assert_eq!(resp.status(), 304);
    let resp = get_with("range", "bytes=0-3").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.text().await.unwrap(), stored[..4]);

    // HEAD has its own entry; a hit sends the stored length and no body.
    for expected in ["MISS", "HIT"] {
        let resp = client.head(&url).send().await.unwrap();
        assert_eq!(header(&resp, "x-pag0-cache"), expected);
        assert_eq!(header(&resp, "content-length"), stored.len().to_string());
        assert_eq!(resp.bytes().await.unwrap().len(), 0);
    }
    assert_eq!(
        origin.hits(path),
        2,
        "one GET and one HEAD reached the origin"
    );
    assert_eq!(origin.hits(&format!("{path} 304")), 0);

    // Every hit above came from `tier`.
    let metrics = pag0.admin(reqwest::Method::GET, "/metrics").await.1;
    let line =
        format!(r#"pag0_cache_requests_total{{project="demo",result="hit",tier="{tier}"}} 5"#);
    assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_response_is_cached_and_served_without_paying() {
    let wall = Paywall::start().await;
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let client = pag0.client("demo", DEMO_KEY);

    let first = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-pag0-cache"), "MISS");
    assert_eq!(header(&first, "x-pag0-paid"), "true");
    let first_body = first.text().await.unwrap();
    for _ in 0..4 {
        let resp = client.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "x-pag0-cache"), "HIT");
        assert_eq!(header(&resp, "x-pag0-paid"), "false");
        assert_eq!(header(&resp, "x-pag0-saved"), "10000 USDC");
        assert!(
            resp.headers().get("payment-response").is_none(),
            "the receipt of the original payment is not replayed"
        );
        assert!(resp.headers().get("x-pag0-cache-price").is_none());
        assert_eq!(resp.text().await.unwrap(), first_body);
    }
    let stats = wall.stats();
    assert_eq!(
        (stats.requests, stats.paid),
        (2, 1),
        "one 402 + one paid call"
    );

    let (status, body) = pag0
        .admin_json(reqwest::Method::GET, "/api/cache/stats", None)
        .await;
    assert_eq!(status, 200);
    let demo = &body["projects"]["demo"];
    assert_eq!(demo["hits"], 4);
    assert_eq!(demo["misses"], 1);
    assert_eq!(demo["saved"]["USDC"], "40000");
    assert_eq!(demo["hit_rate"], 0.8);
    assert!(body["storage"]["memory_bytes"].as_u64().unwrap() > 0);
    let metrics = pag0.admin(reqwest::Method::GET, "/metrics").await.1;
    assert!(
        metrics.contains(r#"pag0_cache_saved_base_units_total{asset="USDC",project="demo"} 40000"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_collapsed_into_one_payment() {
    let wall = Paywall::start().await;
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let client = pag0.client("demo", DEMO_KEY);
    let calls = (0..12).map(|_| {
        let client = client.clone();
        let url = wall.url("/slow-paid");
        tokio::spawn(async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status().as_u16(), header(&resp, "x-pag0-cache"))
        })
    });
    let results: Vec<(u16, String)> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(
        results.iter().filter(|(_, c)| c == "MISS").count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        wall.stats().paid,
        1,
        "one payment for twelve concurrent calls"
    );

    // Free responses too.
    let url = origin.url("/slow?delay=300");
    let calls = (0..8).map(|_| {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap(), 200);
    }
    assert_eq!(origin.hits("/slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_isolated_unless_the_route_is_shared() {
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let demo = pag0.client("demo", DEMO_KEY);
    let other = pag0.client("other", OTHER_KEY);
    let url = origin.url("/tenant");

    let (_, c, demo_body) = call(demo.get(&url)).await;
    assert_eq!(c, "MISS");
    let (_, c, other_body) = call(other.get(&url)).await;
    assert_eq!(c, "MISS", "project B never gets project A's entry");
    assert_ne!(demo_body, other_body);
    let (_, c, _) = call(other.get(&url)).await;
    assert_eq!(c, "HIT", "B's own entry");
    assert_eq!(origin.hits("/tenant"), 2);

    // The private route: per project as well.
    let rc = route_client();
    let get = |key: &'static str, path: &str| {
        rc.get(route_url(&pag0, path)).header("x-pag0-api-key", key)
    };
    let (_, c, _) = call(get(DEMO_KEY, "/private/p")).await;
    assert_eq!(c, "MISS");
    let (_, c, _) = call(get(OTHER_KEY, "/private/p")).await;
    assert_eq!(c, "MISS");

    // The shared route: one entry for every project.
    let (_, c, a) = call(get(DEMO_KEY, "/shared/s")).await;
    assert_eq!(c, "MISS");
    let (_, c, b) = call(get(OTHER_KEY, "/shared/s")).await;
    assert_eq!((c.as_str(), b.as_str()), ("HIT", a.as_str()));
    assert_eq!(origin.hits("/s"), 1);

    // `private` responses stay within a project: cached on the private route, not on the
    // shared one.
    for _ in 0..2 {
        call(get(DEMO_KEY, "/private/priv?cc=private%2C%20max-age=60")).await;
        call(get(DEMO_KEY, "/shared/priv2?cc=private%2C%20max-age=60")).await;
    }
    assert_eq!(origin.hits("/priv"), 1);
    assert_eq!(origin.hits("/priv2"), 2);

    // On a shared route, a request with Authorization is not stored unless the origin says
    // it may be (public / s-maxage).
    for _ in 0..2 {
        call(get(DEMO_KEY, "/shared/authz").header("authorization", "Bearer secret")).await;
        call(
            get(DEMO_KEY, "/shared/authz-public?cc=public%2C%20max-age=60")
                .header("authorization", "Bearer secret"),
        )
        .await;
    }
    assert_eq!(origin.hits("/authz"), 2);
    assert_eq!(origin.hits("/authz-public"), 1);
    for _ in 0..2 {
        call(get(DEMO_KEY, "/shared/cookie").header("cookie", "session=a")).await;
    }
    assert_eq!(
        origin.hits("/cookie"),
        2,
        "requests with cookies are not shared"
    );

    // The key is the path the upstream gets: a dot-segment trick cannot plant an entry for
    // another path on a shared route.
    // (Sent raw: HTTP clients resolve dot segments themselves.)
    let raw = format!(
        "GET /shared/items/%2e%2e/report HTTP/1.1\r\nHost: pag0\r\nX-Pag0-API-Key: {DEMO_KEY}\r\n\r\n"
    );
    let addr = pag0.proxy;
    let (status, head, _) = tokio::task::spawn_blocking(move || raw_exchange(addr, raw.as_bytes()))
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-pag0-cache: miss"),
        "{head}"
    );
    let (_, c, _) = call(get(OTHER_KEY, "/shared/report")).await;
    assert_eq!(c, "MISS");
    assert_eq!(
        (origin.hits("/items/%2e%2e/report"), origin.hits("/report")),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_are_part_of_the_key_where_the_route_allows_post() {
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let rc = route_client();
    let post = |path: &str, body: &'static str| {
        rc.post(route_url(&pag0, path))
            .header("x-pag0-api-key", DEMO_KEY)
            .body(body)
    };
    let (_, c, a1) = call(post("/shared/q", "{\"q\":\"a\"}")).await;
    assert_eq!(c, "MISS");
    let (_, c, a2) = call(post("/shared/q", "{\"q\":\"a\"}")).await;
    assert_eq!((c.as_str(), a2.as_str()), ("HIT", a1.as_str()));
    let (_, c, b) = call(post("/shared/q", "{\"q\":\"b\"}")).await;
    assert_eq!(c, "MISS", "another body, another entry");
    assert_ne!(b, a1);
    assert!(b.contains("\"POST\""), "the body went upstream: {b}");
    assert_eq!(origin.hits("/q"), 2);

    // A route without `post: true` never caches POST.
    for _ in 0..2 {
        let (_, c, _) = call(post("/private/q", "{\"q\":\"a\"}")).await;
        assert_eq!(c, "BYPASS");
    }
    assert_eq!(origin.hits("/q"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_rules_and_cache_control_precedence() {
    let origin = Origin::start().await;
    let rules = "    default_ttl_seconds: 300\n    rules:\n      - { match: \"127.0.0.1/short/*\", ttl_seconds: 1 }\n      - { match: \"*/never/*\", exclude: true }\n";
    let pag0 = Pag0::start(&config(&origin, rules, ""));
    let client = pag0.client("demo", DEMO_KEY);
    let get = |path: &str| client.get(origin.url(path));

    // A rule's TTL applies when the origin says nothing.
    assert_eq!(call(get("/short/r")).await.1, "MISS");
    assert_eq!(call(get("/short/r")).await.1, "HIT");
    // Cache-Control wins over a rule: max-age=60 on a 1 s rule path.
    assert_eq!(call(get("/short/cc?cc=max-age=60")).await.1, "MISS");
    // ... and over the default: max-age=1 on a default (300 s) path.
    assert_eq!(call(get("/long?cc=max-age=1")).await.1, "MISS");
    assert_eq!(call(get("/long?cc=max-age=1")).await.1, "HIT");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        call(get("/short/r")).await.1,
        "MISS",
        "expired after the rule's 1 s"
    );
    assert_eq!(call(get("/short/cc?cc=max-age=60")).await.1, "HIT");
    assert_eq!(
        call(get("/long?cc=max-age=1")).await.1,
        "MISS",
        "max-age=1 expired"
    );
    assert_eq!(call(get("/default")).await.1, "MISS");
    assert_eq!(call(get("/default")).await.1, "HIT");

    // Excluded by a rule: never looked up nor stored.
    for _ in 0..2 {
        assert_eq!(call(get("/x/never/y")).await.1, "BYPASS");
    }
    // no-store, no-cache, Set-Cookie, Vary: *, max-age=0: never stored.
    for path in [
        "/ns?cc=no-store",
        "/nc?cc=no-cache",
        "/cookie?cookie=1",
        "/vary-star?vary=*",
        "/zero?cc=max-age=0",
    ] {
        for _ in 0..2 {
            assert_eq!(call(get(path)).await.1, "MISS", "{path}");
        }
    }
    for path in ["/ns", "/nc", "/cookie", "/vary-star", "/zero"] {
        assert_eq!(origin.hits(path), 2, "{path}");
    }
    assert_eq!(origin.hits("/x/never/y"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_sizes_and_vary() {
    let origin = Origin::start().await;
    let wall = Paywall::start().await;
    let rules = "    max_object_bytes: 1000\n";
    let pag0 = Pag0::start(&config(&origin, rules, ""));
    let other = pag0.client("other", OTHER_KEY); // no wallet: 402s pass through
    let client = pag0.client("demo", DEMO_KEY);

    // A 402 is never cached.
    for _ in 0..2 {
        let (s, c, _) = call(other.get(wall.url("/paid"))).await;
        assert_eq!((s, c.as_str()), (402, "MISS"));
    }
    assert_eq!(wall.stats().requests, 2);
    // Neither are 404 (without cache_404), 500 or 206.
    for path in ["/e404?status=404", "/e500?status=500", "/e206?status=206"] {
        for _ in 0..2 {
            call(client.get(origin.url(path))).await;
        }
    }
    assert_eq!(
        (
            origin.hits("/e404"),
            origin.hits("/e500"),
            origin.hits("/e206")
        ),
        (2, 2, 2)
    );

    // Bodies over max_object_bytes are not stored; smaller ones are.
    for _ in 0..2 {
        let (s, _, body) = call(client.get(origin.url("/big?size=2000"))).await;
        assert_eq!(
            (s, body.len()),
            (200, 2000),
            "a too-large answer still arrives whole"
        );
        call(client.get(origin.url("/small?size=500"))).await;
    }
    assert_eq!((origin.hits("/big"), origin.hits("/small")), (2, 1));

    // Vary: the named request header tells entries apart.
    let vary = |lang: &str| {
        client
            .get(origin.url("/vary?vary=accept-language"))
            .header("accept-language", lang)
    };
    let (_, c, en) = call(vary("en")).await;
    assert_eq!(c, "MISS");
    let (_, c, fr) = call(vary("fr")).await;
    assert_eq!(c, "MISS");
    assert!(fr.contains("\"fr\""), "{fr}");
    let (_, c, en2) = call(vary("en")).await;
    assert_eq!((c.as_str(), en2.as_str()), ("HIT", en.as_str()));
    let (_, c, fr2) = call(vary("fr")).await;
    assert_eq!((c.as_str(), fr2.as_str()), ("HIT", fr.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_stored_copy_while_the_origin_is_down() {
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let client = pag0.client("demo", DEMO_KEY);
    let soft = origin.url("/soft?cc=max-age=1%2C%20stale-if-error=60");
    let hard = origin.url("/hard?cc=max-age=1");
    let (_, c, stored) = call(client.get(&soft)).await;
    assert_eq!(c, "MISS");
    assert_eq!(call(client.get(&hard)).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.stop().await;

    let resp = client.get(&soft).send().await.unwrap();
    assert_eq!(
        header(&resp, "connection"),
        "close",
        "Pingora closes the connection after a stale-if-error answer"
    );
    let (s, c) = (resp.status().as_u16(), header(&resp, "x-pag0-cache"));
    let body = resp.text().await.unwrap();
    assert_eq!(
        (s, c.as_str(), body.as_str()),
        (200, "STALE", stored.as_str())
    );
    // Without stale-if-error an expired entry is not served: the agent gets the error.
    let (s, _, body) = call(client.get(&hard)).await;
    assert_eq!(s, 502, "{body}");
    let stats = pag0
        .admin_json(reqwest::Method::GET, "/api/cache/stats", None)
        .await
        .1;
    assert_eq!(stats["projects"]["demo"]["stale"], 1, "{stats}");
}

/// A paid attempt that fails (the paywall is down) and is answered by a stale copy is not a
/// payment: nothing is reported as paid, committed or journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_after_a_failed_paid_attempt_is_not_charged() {
    let wall = Paywall::start().await;
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let client = pag0.client("demo", DEMO_KEY);
    let url = wall.url("/paid-stale");
    let first = client.get(&url).send().await.unwrap();
    assert_eq!(header(&first, "x-pag0-paid"), "true");
    let stored = first.text().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    wall.stop().await;

    // The price is remembered, so this attempt is signed up front, then cannot connect.
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-pag0-cache"), "STALE");
    assert_eq!(header(&resp, "x-pag0-paid"), "false");
    assert_eq!(header(&resp, "x-pag0-cost"), "");
    assert_eq!(header(&resp, "x-pag0-saved"), "10000 USDC");
    assert_eq!(resp.text().await.unwrap(), stored);

    let metrics = pag0.admin(reqwest::Method::GET, "/metrics").await.1;
    // Two signatures (the second one never reached the paywall), one journaled payment.
    assert!(
        metrics.contains(r#"pag0_payments_total{outcome="signed",project="demo"} 2"#),
        "{metrics}"
    );
    let (_, spend) = eventually(
        || pag0.admin_json(reqwest::Method::GET, "/api/spend?project=demo", None),
        |(_, v)| v["count"] == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, spend_later) = pag0
        .admin_json(reqwest::Method::GET, "/api/spend?project=demo", None)
        .await;
    assert_eq!(
        (spend["count"].clone(), spend_later["count"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(wall.stats().paid, 1);
}

/// An upstream that dies halfway through a body: the miss handler is dropped unfinished, so
/// nothing is stored and the next call goes upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_never_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: max-age=60\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b'x'; 500]).await;
                // Dropped here: the connection closes 500 bytes short.
            });
        }
    });
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let client = pag0.client("demo", DEMO_KEY);
    let url = format!("http://{addr}/cut");
    for _ in 0..2 {
        let result = match client.get(&url).send().await {
            Ok(resp) => resp.bytes().await.map(|b| b.len()),
            Err(e) => Err(e),
        };
        assert!(
            result.is_err(),
            "a truncated body must not arrive as complete: {result:?}"
        );
    }
    assert_eq!(served.load(Ordering::SeqCst), 2, "nothing was stored");
    let stats = pag0
        .admin_json(reqwest::Method::GET, "/api/cache/stats", None)
        .await
        .1;
    assert_eq!(stats["storage"]["memory_entries"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_404_is_opt_in() {
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "    cache_404: true\n", ""));
    let client = pag0.client("demo", DEMO_KEY);
    for expected in ["MISS", "HIT"] {
        let (s, c, _) = call(client.get(origin.url("/gone?status=404"))).await;
        assert_eq!((s, c.as_str()), (404, expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_url_and_pattern() {
    let origin = Origin::start().await;
    let pag0 = Pag0::start(&config(&origin, "", ""));
    let client = pag0.client("demo", DEMO_KEY);
    for path in ["/p/a?k=1", "/p/b", "/q/c"] {
        call(client.get(origin.url(path))).await;
        assert_eq!(call(client.get(origin.url(path))).await.1, "HIT");
    }
    let purge =
        |body: Value| pag0.admin_json(reqwest::Method::POST, "/api/cache/purge", Some(body));

    // Exact URL (normalized: default port, case).
    let (status, body) = purge(json!({"url": format!("HTTP://{}/p/a?k=1", origin.addr)})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged"]["memory"], 1);
    assert_eq!(call(client.get(origin.url("/p/a?k=1"))).await.1, "MISS");
    assert_eq!(call(client.get(origin.url("/p/b"))).await.1, "HIT");

    // A pattern, limited to another project: nothing of demo's goes.
    let pattern = format!("http://{}/p/*", origin.addr);
    let (status, body) = purge(json!({"pattern": pattern, "project": "other"})).await;
    assert_eq!((status, &body["purged"]["memory"]), (200, &json!(0)));
    let (status, body) = purge(json!({"pattern": pattern})).await;
    assert_eq!(status, 200);
    assert_eq!(body["purged"]["memory"], 2, "{body}");
    assert_eq!(call(client.get(origin.url("/p/b"))).await.1, "MISS");
    assert_eq!(call(client.get(origin.url("/q/c"))).await.1, "HIT");

    // A purge while an answer is on its way wins: that answer is not stored.
    let slow = origin.url("/slow-fill?delay=600");
    let in_flight = tokio::spawn({
        let client = client.clone();
        let slow = slow.clone();
        async move { call(client.get(&slow)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = purge(json!({"pattern": "*/slow-fill*"})).await;
    assert_eq!(status, 200);
    assert_eq!(in_flight.await.unwrap().1, "MISS");
    assert_eq!(
        call(client.get(&slow)).await.1,
        "MISS",
        "the purged answer came back"
    );

    // Bad requests get JSON errors.
    for (bad, code) in [
        (json!({}), "INVALID_PURGE"),
        (json!({"url": "x", "pattern": "y"}), "INVALID_PURGE"),
        (json!({"url": "not a url"}), "INVALID_PURGE"),
        (
            json!({"pattern": "*", "project": "nope"}),
            "PROJECT_NOT_FOUND",
        ),
        (json!({"pattern": "*", "bogus": 1}), "INVALID_PURGE"),
    ] {
        let (status, body) = purge(bad.clone()).await;
        assert!(status == 422 || status == 404, "{bad}: {status} {body}");
        assert_eq!(body["error"]["code"], code, "{bad}: {body}");
    }
    let (status, _) = reqwest::Client::new()
        .post(format!("http://{}/api/cache/purge", pag0.admin))
        .json(&json!({"pattern": "*"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401, "the admin token is required");
}

/// Waits until the demo project has `n` entries in `redis`.
async fn wait_for_keys(redis: &PrivateRedis, n: usize) {
    let count = eventually(
        || async {
            redis
                .cmd(&["--scan", "--pattern", "pag0:cache:p.demo:*"])
                .lines()
                .count()
        },
        |c| *c == n,
    )
    .await;
    assert_eq!(count, n, "entries in Redis");
}

/// Two instances, one Redis: a miss on one is a hit on the other; a purge on one reaches the
/// other's memory tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_redis_tier() {
    let redis = PrivateRedis::start();
    let origin = Origin::start().await;
    let extra = format!("redis:\n  url: {}\n", redis.url());
    let a = Pag0::start(&config(&origin, "", &extra));
    let b = Pag0::start(&config(&origin, "", &extra));
    let (ca, cb) = (a.client("demo", DEMO_KEY), b.client("demo", DEMO_KEY));
    let url = origin.url("/both");

    let (_, c, first) = call(ca.get(&url)).await;
    assert_eq!(c, "MISS");
    // The Redis write happens in the background, just after the response.
    wait_for_keys(&redis, 1).await;
    let (_, c, body) = call(cb.get(&url)).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", first.as_str()));
    assert_eq!(origin.hits("/both"), 1);
    let stats = b
        .admin_json(reqwest::Method::GET, "/api/cache/stats", None)
        .await
        .1;
    assert_eq!(stats["projects"]["demo"]["hits_redis"], 1, "{stats}");
    // The second hit on b comes from its memory tier.
    assert_eq!(call(cb.get(&url)).await.1, "HIT");
    let stats = b
        .admin_json(reqwest::Method::GET, "/api/cache/stats", None)
        .await
        .1;
    assert_eq!(stats["projects"]["demo"]["hits_memory"], 1, "{stats}");
    assert_eq!(
        redis
            .cmd(&["--scan", "--pattern", "pag0:cache:p.demo:*"])
            .lines()
            .count(),
        1
    );

    // Purge on a: gone from Redis and from b's memory.
    let (status, body) = a
        .admin_json(
            reqwest::Method::POST,
            "/api/cache/purge",
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged"]["redis"], 1, "{body}");
    let (_, c, _) = eventually(|| call(cb.get(&url)), |(_, c, _)| c == "MISS").await;
    assert_eq!(c, "MISS");
}

/// An expired entry with a validator is revalidated (If-None-Match → 304): the stored body is
/// served and the entry lives on, in memory and in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_keeps_the_entry_in_every_tier() {
    let redis = PrivateRedis::start();
    let origin = Origin::start().await;
    let extra = format!("redis:\n  url: {}\n", redis.url());
    let a = Pag0::start(&config(&origin, "", &extra));
    let b = Pag0::start(&config(&origin, "", &extra));
    let url = origin.url("/etag?etag=1&cc=max-age=1%2C%20stale-if-error=2");
    let (_, c, stored) = call(a.client("demo", DEMO_KEY).get(&url)).await;
    assert_eq!(c, "MISS");
    wait_for_keys(&redis, 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, _, body) = call(a.client("demo", DEMO_KEY).get(&url)).await;
    assert_eq!((s, body.as_str()), (200, stored.as_str()));
    assert_eq!(origin.hits("/etag"), 2, "one revalidation");
    let (_, c, _) = call(a.client("demo", DEMO_KEY).get(&url)).await;
    assert_eq!(c, "HIT", "fresh again after the 304");
    assert_eq!(origin.hits("/etag 304"), 1);
    // After the original Redis expiry (1 s fresh + 2 s stale) the other instance still finds
    // the entry there (the revalidation extended it), so it revalidates too instead of
    // fetching it whole.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (_, _, body) = call(b.client("demo", DEMO_KEY).get(&url)).await;
    assert_eq!(body, stored);
    assert_eq!(origin.hits("/etag 304"), 2);
}

/// Redis stopped mid-run: requests still succeed (no Redis-only hits meanwhile); after a
/// restart the tier is used again without restarting pag0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_never_fails_a_request() {
    let mut redis = Some(PrivateRedis::start());
    let port = redis.as_ref().unwrap().port;
    let origin = Origin::start().await;
    // No memory tier: every hit must come from Redis.
    let extra = format!(
        "redis:\n  url: redis://127.0.0.1:{port}\n  timeout_ms: 200\ncache:\n  memory_bytes: 0\n"
    );
    let pag0 = Pag0::start(&config(&origin, "", &extra));
    let client = pag0.client("demo", DEMO_KEY);
    let url = origin.url("/r");

    assert_eq!(call(client.get(&url)).await.1, "MISS");
    wait_for_keys(redis.as_ref().unwrap(), 1).await;
    assert_eq!(call(client.get(&url)).await.1, "HIT");
    let before = origin.hits("/r");

    drop(redis.take()); // kill redis-server
    for _ in 0..5 {
        let (s, c, _) = call(client.get(&url)).await;
        assert_eq!((s, c.as_str()), (200, "MISS"));
    }
    assert_eq!(origin.hits("/r"), before + 5);
    let metrics = pag0.admin(reqwest::Method::GET, "/metrics").await.1;
    assert!(
        metrics.contains(r#"pag0_cache_tier_errors_total{kind="error",op="lookup",tier="redis"}"#),
        "{metrics}"
    );
    let stats = pag0
        .admin_json(reqwest::Method::GET, "/api/cache/stats", None)
        .await
        .1;
    assert_eq!(stats["storage"]["redis_up"], false, "{stats}");

    let _redis = PrivateRedis::start_on(port);
    let (_, c, _) = eventually(
        || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            call(client.get(&url)).await
        },
        |(_, c, _)| c == "HIT",
    )
    .await;
    assert_eq!(c, "HIT", "the Redis tier is back without a restart");
}
