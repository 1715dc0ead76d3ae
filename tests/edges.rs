//! Hardening, second round (issue 33): what a hostile client can reach before it is
//! authenticated — the admin listener's deadlines, the connection caps of both listeners
//! under a descriptor limit, the request header size.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::Process;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Auth and an SSRF guard allowing loopback (the test upstreams); CONNECT to any port.
fn body() -> String {
    format!(
        "stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n{}connect:\n  ports: [\"*\"]\n",
        demo_project()
    )
}

/// How a connection that never finishes a request behaves.
#[derive(Debug, Clone, Copy)]
enum Lingerer {
    /// Connects and sends nothing.
    Idle,
    /// Sends part of a request header, then nothing.
    HalfSent,
    /// Sends part of a request header, then a byte every 100 ms.
    Trickling,
}

/// Opens a connection to `addr` that behaves as `kind`; returns how long it stayed open
/// (`None`: still open after `give_up`).
async fn held_open(addr: SocketAddr, kind: Lingerer, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let send = async move {
        match kind {
            Lingerer::Idle => std::future::pending::<()>().await,
            Lingerer::HalfSent => {
                let _ = wr.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
                std::future::pending::<()>().await
            }
            Lingerer::Trickling => {
                let _ = wr.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ").await;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if wr.write_all(b"a").await.is_err() {
                        return std::future::pending::<()>().await;
                    }
                }
            }
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        // Whatever is answered (a 408, nothing), the connection ends with an EOF or a reset.
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = closed => Some(start.elapsed()),
        _ = send => unreachable!(),
        _ = tokio::time::sleep(give_up) => None,
    }
}

/// Twenty plain GETs through the proxy, each answered 200 by the upstream.
async fn agents_are_served(pag0: &Process, up: &Upstream) {
    let client = pag0.client();
    for i in 0..20 {
        let resp = client
            .get(up.url(&format!("/agent/{i}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("agent call {i}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "agent call {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_half_sent_and_trickling_admin_connections_are_closed_while_agents_are_served() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = Process::start_server(
        &dir,
        &body(),
        "admin:\n  header_timeout_ms: 1000\n  max_connections: 400\n",
        &[],
    );
    let kinds = [Lingerer::Idle, Lingerer::HalfSent, Lingerer::Trickling];
    let admin = pag0.admin;
    let lingerers: Vec<_> = (0..300)
        .map(|i| {
            let kind = kinds[i % 3];
            tokio::spawn(async move {
                let open = held_open(admin, kind, Duration::from_secs(8)).await;
                (kind, open)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    agents_are_served(&pag0, &up).await;
    for task in lingerers {
        let (kind, open) = task.await.unwrap();
        let open = open.unwrap_or_else(|| panic!("a {kind:?} admin connection was never closed"));
        assert!(
            open >= Duration::from_millis(900) && open < Duration::from_secs(3),
            "a {kind:?} admin connection closed after {open:?} (admin.header_timeout_ms: 1000)"
        );
    }
    assert_eq!(
        pag0.admin_get("/health").await["dependencies"]["config"]["status"],
        "up"
    );
}

/// Connects `n` times to `addr` at once; each connection either gets an answer within
/// `wait` (its first bytes) or is still held open without one (`None`).
async fn flood(addr: SocketAddr, n: usize, wait: Duration) -> (Vec<TcpStream>, Vec<String>) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut buf = vec![0u8; 4096];
                match tokio::time::timeout(wait, s.read(&mut buf)).await {
                    Ok(Ok(k)) => Err(String::from_utf8_lossy(&buf[..k]).to_string()),
                    Ok(Err(e)) => Err(format!("error: {e}")),
                    Err(_) => Ok(s),
                }
            })
        })
        .collect();
    let (mut held, mut answered) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => held.push(s),
            Err(answer) => answered.push(answer),
        }
    }
    (held, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_caps_connections_are_refused_and_the_other_listener_keeps_serving() {
    // pag0 may open 512 descriptors: the defaults derived from that are 16 admin connections
    // and 160 agent connections (the rest: upstream connections, files, the database).
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = Process::start_limited(&dir, &body(), "", &[], Some(512));

    // 600 admin connections, more than pag0 has descriptors: 16 are held, the rest are told
    // 503 and closed at once, and agents are served all along.
    let (held, refused) = flood(pag0.admin, 600, Duration::from_secs(2)).await;
    assert_eq!(held.len(), 16, "admin connections held");
    assert_eq!(refused.len(), 584);
    for answer in &refused {
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("TOO_MANY_CONNECTIONS"),
            "{answer}"
        );
    }
    agents_are_served(&pag0, &up).await;
    drop(held);

    // 200 idle agent connections: 160 are held, 40 are told 503; the admin side still answers.
    let (held, refused) = flood(pag0.proxy, 200, Duration::from_secs(2)).await;
    assert_eq!(held.len(), 160, "agent connections held");
    assert_eq!(refused.len(), 40);
    for answer in &refused {
        assert!(
            answer.starts_with("HTTP/1.1 503")
                && answer.contains("TOO_MANY_CONNECTIONS")
                && answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
    }
    let metrics = pag0
        .metrics_until(|m| m.contains(r#"pag0_connections_open{listener="proxy"} 160"#))
        .await;
    for line in [
        r#"pag0_connections_open{listener="proxy"} 160"#,
        r#"pag0_connections_refused_total{listener="admin"} 584"#,
        r#"pag0_connections_refused_total{listener="proxy"} 40"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    drop(held);
    // Once they are gone, agents are served again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    agents_are_served(&pag0, &up).await;
}

#[tokio::test]
async fn caps_that_do_not_fit_the_descriptor_limit_stop_pag0_with_their_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("pag0.yaml");
    let text = Pag0::config_text_with(&dir, proxy, admin, &body(), "  max_connections: 100000\n");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pag0"))
        .args(["-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.max_connections: 100000 proxy connections"),
        "{err}"
    );
    assert!(err.contains("RLIMIT_NOFILE"), "{err}");
}

/// Sends a request to the proxy whose header carries `size` bytes of `X-Big`; returns the
/// status and JSON body of the answer.
async fn big_header(
    proxy: SocketAddr,
    request_line: &str,
    auth: bool,
    size: usize,
) -> (u16, Value) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    big_header_on(stream, request_line, auth, size).await
}

async fn big_header_on(
    stream: TcpStream,
    request_line: &str,
    auth: bool,
    size: usize,
) -> (u16, Value) {
    let (mut rd, mut wr) = stream.into_split();
    let auth = if auth {
        format!("Proxy-Authorization: {}\r\n", basic("demo", DEMO_KEY))
    } else {
        String::new()
    };
    // The Host of an absolute-form target's authority (Pingora refuses a mismatch).
    let host = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.strip_prefix("http://"))
        .and_then(|t| t.split('/').next())
        .unwrap_or("127.0.0.1");
    let mut request = format!("{request_line}\r\nHost: {host}\r\n{auth}X-Big: ").into_bytes();
    request.extend(std::iter::repeat_n(b'a', size));
    request.extend_from_slice(b"\r\n\r\n");
    // pag0 answers before it has read it all: the rest of the write may fail.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let answer = loop {
        if let Some(((status, _, json), _)) = parse_response(&got) {
            break (status, json);
        }
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no answer to a {size}-byte header ({other:?}): {}",
                String::from_utf8_lossy(&got)
            ),
        }
    };
    writer.abort();
    answer
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_headers_get_431_cheaply_and_never_reach_an_upstream() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = Process::start_server(&dir, &body(), "", &[]);
    let pid = pag0.child.id();
    let target = format!("GET {} HTTP/1.1", up.url("/big"));
    // Warm up (allocator arenas, the upstream pool), then measure the peak around the flood.
    agents_are_served(&pag0, &up).await;
    let before = rss_kib(pid);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    // 300 connections at once, each with a 1 MB header, none authenticated.
    let proxy = pag0.proxy;
    let flood: Vec<_> = (0..300)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move { big_header(proxy, &target, false, 1 << 20).await })
        })
        .collect();
    for task in flood {
        let (status, json) = task.await.unwrap();
        assert_eq!(status, 431, "{json}");
        assert_eq!(json["error"]["code"], "REQUEST_HEADER_TOO_LARGE");
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let grew_mib = peak.saturating_sub(before) / 1024;
    // Before the bound, Pingora buffered up to 1 MiB per connection: over 300 MiB here.
    assert!(
        grew_mib < 64,
        "300 oversized headers took pag0 from {before} KiB to {peak} KiB"
    );

    // An authenticated agent's 100 KB header: refused the same way, not forwarded.
    let (status, json) = big_header(pag0.proxy, &target, true, 100_000).await;
    assert_eq!(status, 431, "{json}");
    // Inside a CONNECT tunnel (plain HTTP inside, as Node's proxy agents send): the same.
    let mut tunnel = TcpStream::connect(pag0.proxy).await.unwrap();
    let authority = up.addr.to_string();
    let connect = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
        basic("demo", DEMO_KEY)
    );
    tunnel.write_all(connect.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tunnel.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let (status, json) = big_header_on(tunnel, "GET /big HTTP/1.1", false, 100_000).await;
    assert_eq!(status, 431, "{json}");
    assert_eq!(
        up.seen().requests,
        20,
        "no oversized header reached the upstream"
    );

    // Under the limit (64 KiB): forwarded whole.
    let (status, json) = big_header(pag0.proxy, &target, true, 60_000).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json["headers"]["x-big"].as_str().map(str::len),
        Some(60_000)
    );
    let metrics = pag0
        .metrics_until(|m| m.contains("pag0_header_too_large_total 302"))
        .await;
    assert!(metrics.contains("pag0_header_too_large_total 302"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_whose_transaction_is_not_a_hash_is_never_journaled_nor_shown() {
    let wall = common::paywall::Paywall::start().await;
    let body = format!(
        "{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n",
        common::paywall::payments_yaml(),
        common::paywall::WALLET_KEY,
    );
    let pag0 = Pag0::start(&body);
    let client = pag0.client("demo", DEMO_KEY);
    for path in ["/paid-bad-tx", "/v1/paid-bad-tx", "/paid"] {
        let resp = client.get(wall.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let tx = resp
            .headers()
            .get("x-pag0-tx")
            .map(|v| v.to_str().unwrap().to_string());
        if path == "/paid" {
            let tx = tx.expect("a real hash is passed on");
            assert!(tx.len() == 66 && tx.starts_with("0x"), "{tx}");
        } else {
            assert_eq!(tx, None, "{path}: an invalid transaction is not passed on");
        }
    }
    // Spent (commit_without_receipt), but only the real hash is journaled.
    let journal = eventually(
        || async {
            pag0.admin_json(reqwest::Method::GET, "/api/spend?project=demo", None)
                .await
                .1
        },
        |j| j["count"] == 3,
    )
    .await;
    assert_eq!(journal["count"], 3, "{journal}");
    let hashes: Vec<&Value> = journal["spend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["tx_hash"])
        .filter(|h| !h.is_null())
        .collect();
    assert_eq!(hashes.len(), 1, "{journal}");
    assert!(!journal.to_string().contains("javascript"), "{journal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_gives_no_route_oracle_takes_any_bearer_case_and_protects_its_answers() {
    let pag0 = Pag0::start(&body());
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", pag0.admin);
    // Without credentials, unknown and known API paths look the same.
    for path in [
        "/api/analytics/summary",
        "/api/analytics/nope",
        "/api/curation/nope",
        "/api/nope",
        "/api/spend",
    ] {
        let resp = http.get(url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // With the admin token, an unknown one is 404.
    let resp = http
        .get(url("/api/analytics/nope"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let resp = http
            .get(url("/api/spend?project=demo"))
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
        let h = resp.headers();
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    // Errors are JSON answers too.
    let resp = http.get(url("/api/nope")).send().await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // A body over the admin limit is 413, not a JSON error.
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(1_500_000));
    let resp = http
        .post(url("/api/policies"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let json: Value = resp.json().await.unwrap();
    assert_eq!(json["error"]["code"], "BODY_TOO_LARGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_targets_with_an_empty_zero_or_too_large_port_are_invalid() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&body());
    let auth = basic("demo", DEMO_KEY);
    for target in [
        "http://127.0.0.1:65536/x",
        "http://127.0.0.1:/x",
        "http://127.0.0.1:0/x",
    ] {
        let host = target.trim_start_matches("http://").trim_end_matches("/x");
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n\r\n");
        let (status, _, json) = raw_exchange(pag0.proxy, request.as_bytes());
        assert_eq!(status, 400, "{target}: {json}");
        assert_eq!(json["error"]["code"], "INVALID_TARGET", "{target}");
    }
    assert_eq!(up.seen().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_and_unparsable_headers_get_a_json_400_and_an_analytics_record() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&body());
    let auth = basic("demo", DEMO_KEY);
    let target = up.url("/framed");
    let host = up.addr;
    // Framing with more than one reading (RFC 9112 §6): refused, never forwarded.
    for (framing, body) in [
        ("Content-Length: 5, 5", "hello"),
        ("Content-Length: 5\r\nContent-Length: 5", "hello"),
        (
            "Transfer-Encoding: gzip, chunked",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n{framing}\r\n\r\n{body}"
        );
        let (status, _, json) = raw_exchange(pag0.proxy, request.as_bytes());
        assert_eq!(status, 400, "{framing}: {json}");
        assert_eq!(json["error"]["code"], "BAD_REQUEST", "{framing}");
    }
    // What Pingora refuses itself, before any hook: bad header bytes, a Host that is not the
    // target's. pag0's JSON answer replaces its bare 400.
    for bad in [
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nBad Header: x\r\n\r\n"),
        format!(
            "GET {target} HTTP/1.1\r\nHost: elsewhere.example\r\nProxy-Authorization: {auth}\r\n\r\n"
        ),
    ] {
        let (status, head, json) = raw_exchange(pag0.proxy, bad.as_bytes());
        assert_eq!(status, 400, "{bad}: {head}");
        assert_eq!(json["error"]["code"], "BAD_REQUEST", "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-pag0-error: bad_request"),
            "{head}"
        );
    }
    assert_eq!(
        up.seen().requests,
        0,
        "nothing ambiguous reached the upstream"
    );
    // Every one of them is in the analytics, with its code.
    let records = eventually(
        || async {
            pag0.admin_json(
                reqwest::Method::GET,
                "/api/analytics/requests?status=400&limit=50",
                None,
            )
            .await
            .1
        },
        |j| j["count"] == 5,
    )
    .await;
    assert_eq!(records["count"], 5, "{records}");
    for r in records["records"].as_array().unwrap() {
        assert_eq!(r["error"], "BAD_REQUEST", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_key_sees_other_projects_calls_only_in_aggregate_where_enough_share() {
    let up = Upstream::start().await;
    let names = ["a", "b", "c", "d", "e"];
    let key = |p: &str| format!("{p}-project-key-0123456789");
    let mut body = String::from(
        "stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\ncuration:\n  refresh_seconds: 1\nprojects:\n",
    );
    for p in names {
        body.push_str(&format!(
            "  - id: {p}\n    keys: [\"sha256:{}\"]\n",
            sha256_hex(key(p).as_bytes())
        ));
    }
    let pag0 = Pag0::start(&body);
    // `/only-a`: a alone; `/a-and-b`: a (3 calls) and b (2); `/shared`: a, b, c and d.
    for (path, callers) in [
        ("/only-a", vec!["a"]),
        ("/a-and-b", vec!["a", "a", "a", "b", "b"]),
        ("/shared", vec!["a", "b", "c", "d"]),
    ] {
        for p in callers {
            let resp = pag0
                .client(p, &key(p))
                .get(up.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
    let endpoint = |path: &str| format!("{}{path}", up.addr);
    let rankings = |bearer: String| {
        let admin = pag0.admin;
        async move {
            let v: Value = reqwest::Client::new()
                .get(format!("http://{admin}/api/curation/rankings?limit=100"))
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["rankings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["endpoint"].as_str().unwrap().to_string(), e.clone()))
                .collect::<std::collections::BTreeMap<String, Value>>()
        }
    };
    // The admin token sees everything, in aggregate, with spend.
    let all = eventually(
        || rankings(ADMIN_TOKEN.to_string()),
        |r| r.get(&endpoint("/shared")).is_some_and(|e| e["calls"] == 4) && r.len() == 3,
    )
    .await;
    assert_eq!(all[&endpoint("/a-and-b")]["calls"], 5);
    assert!(all[&endpoint("/shared")].get("spend").is_some());

    // e called nothing: it sees only what four others share.
    let seen_by_e = rankings(key("e")).await;
    assert_eq!(
        seen_by_e.keys().collect::<Vec<_>>(),
        vec![&endpoint("/shared")],
        "{seen_by_e:?}"
    );
    assert_eq!(seen_by_e[&endpoint("/shared")]["calls"], 4);
    assert!(seen_by_e[&endpoint("/shared")].get("spend").is_none());
    // a sees its own endpoints from its own calls, and the shared one in aggregate.
    let seen_by_a = rankings(key("a")).await;
    assert_eq!(seen_by_a.len(), 3, "{seen_by_a:?}");
    assert_eq!(
        seen_by_a[&endpoint("/a-and-b")]["calls"],
        3,
        "b's calls are not a's to see"
    );
    assert_eq!(seen_by_a[&endpoint("/a-and-b")]["projects"], 1);
    assert_eq!(seen_by_a[&endpoint("/shared")]["calls"], 4);
    // b sees `/a-and-b` from its own 2 calls, never `/only-a`.
    let seen_by_b = rankings(key("b")).await;
    assert_eq!(seen_by_b[&endpoint("/a-and-b")]["calls"], 2);
    assert!(!seen_by_b.contains_key(&endpoint("/only-a")));
    // The same view behind compare: another project's private endpoint is not there.
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/api/curation/compare?endpoints={},{}",
            pag0.admin,
            endpoint("/only-a"),
            endpoint("/shared")
        ))
        .bearer_auth(key("e"))
        .send()
        .await
        .unwrap();
    // Not in e's view: the same answer as for an endpoint nobody ever called.
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let compared: Value = resp.json().await.unwrap();
    assert_eq!(compared["error"]["code"], "UNKNOWN_ENDPOINT", "{compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_flooding_the_read_api_is_told_429_while_health_and_others_are_served() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start_with(&body(), "admin:\n  max_connections: 2000\n");
    let client = pag0.client("demo", DEMO_KEY);
    for i in 0..5 {
        client.get(up.url(&format!("/x/{i}"))).send().await.unwrap();
    }
    let admin = pag0.admin;
    // 400 analytics queries at once with one project key (one client: 400 connections).
    let flooder = reqwest::Client::new();
    let flood: Vec<_> = (0..400)
        .map(|_| {
            let flooder = flooder.clone();
            tokio::spawn(async move {
                let resp = flooder
                    .get(format!("http://{admin}/api/analytics/requests?limit=1000"))
                    .header("x-pag0-api-key", DEMO_KEY)
                    .send()
                    .await;
                match resp {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.headers()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap().to_string()),
                    ),
                    Err(_) => (0, None),
                }
            })
        })
        .collect();
    // Meanwhile /health and the admin token's own reads are answered.
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let health = patient
        .get(format!("http://{admin}/health"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let summary = patient
        .get(format!("http://{admin}/api/analytics/summary"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(summary.status(), StatusCode::OK);
    let mut by_status = std::collections::BTreeMap::new();
    for task in flood {
        let (status, retry_after) = task.await.unwrap();
        if status == 429 {
            assert_eq!(retry_after.as_deref(), Some("1"));
        }
        *by_status.entry(status).or_insert(0) += 1;
    }
    // At most a burst of 40 is started; the rest is told to come back, nothing fails.
    assert!(
        by_status.get(&200).is_some_and(|n| (1..=40).contains(n)),
        "{by_status:?}"
    );
    assert_eq!(
        by_status.get(&200).unwrap() + by_status.get(&429).unwrap_or(&0),
        400,
        "{by_status:?}"
    );
    // A moment later the key is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = patient
        .get(format!("http://{admin}/api/analytics/summary"))
        .header("x-pag0-api-key", DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}
