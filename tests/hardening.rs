//! Hardening (issue 16): slow clients and slow upstreams, pipelined requests, odd 402s, and
//! what pag0 logs (no secrets at any level; no per-request noise at the default level). The
//! SSRF bypass forms are tested in tests/proxy.rs and tests/connect.rs.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::paywall::{self, Paywall};
use common::process::Process;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Auth, SSRF guard allowing loopback (the test servers), payment; the demo project pays.
fn body() -> String {
    format!(
        "{}  offer_timeout_ms: 1000\nstages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n",
        paywall::payments_yaml(),
        paywall::WALLET_KEY,
    )
}

/// An upstream that answers every request with `head`, then `body` one byte every `pause`,
/// then closes.
async fn canned_upstream(head: String, body: Vec<u8>, pause: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (head, body) = (head.clone(), body.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if pause.is_zero() {
                    let _ = stream.write_all(&body).await;
                    return;
                }
                for byte in body {
                    tokio::time::sleep(pause).await;
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a connection that sends the start of a request header and then one more byte every
/// 100 ms; returns how long pag0 kept it open (`None`: still open after `give_up`).
async fn slowloris(proxy: SocketAddr, target: String, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    wr.write_all(head.as_bytes()).await.unwrap();
    let dribble = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    let mut buf = [0u8; 1024];
    tokio::select! {
        _ = rd.read(&mut buf) => Some(start.elapsed()),
        () = dribble => Some(start.elapsed()),
        () = tokio::time::sleep(give_up) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_request_headers_are_cut_off_and_do_not_delay_other_agents() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start_with(&body(), "  header_timeout_ms: 1500\n");
    let target = up.url("/slow");
    let slow: Vec<_> = (0..300)
        .map(|_| {
            tokio::spawn(slowloris(
                pag0.proxy,
                target.clone(),
                Duration::from_secs(8),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile a normal agent is served as usual, each call far quicker than the deadline.
    let client = pag0.client("demo", DEMO_KEY);
    for i in 0..10 {
        let started = Instant::now();
        let resp = client
            .get(up.url(&format!("/fast/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(750),
            "call {i} took {took:?} beside 300 slow headers"
        );
    }
    for task in slow {
        let open = task
            .await
            .unwrap()
            .expect("a slow header was never cut off");
        assert!(
            open >= Duration::from_millis(1400) && open < Duration::from_secs(5),
            "closed after {open:?} (header_timeout_ms: 1500)"
        );
    }
    let (_, metrics) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert!(
        metrics.contains("pag0_header_timeouts_total 300"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("header_timeouts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        up.seen().requests,
        10,
        "no slow request reached the upstream"
    );
}

/// Reads one Content-Length framed response from `s`; its head, lowercase.
fn read_one(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(((_, head, _), _)) = parse_response(&buf) {
            return head.to_ascii_lowercase();
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_after_a_refusal_is_not_cut_as_slow() {
    // pag0 answers a 407 itself, reading nothing more; the connection then idles longer than
    // the header deadline before its next request, which must be served.
    use std::io::Write;
    let up = Upstream::start().await;
    let pag0 = Pag0::start_with(&body(), "  header_timeout_ms: 500\n");
    let url = up.url("/again");
    let host = up.addr;
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(pag0.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        assert!(read_one(&mut s).starts_with("http/1.1 407"));
        std::thread::sleep(Duration::from_millis(1200));
        let auth = basic("demo", DEMO_KEY);
        write!(
            s,
            "GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n\r\n"
        )
        .unwrap();
        assert!(read_one(&mut s).starts_with("http/1.1 200"));
    })
    .join()
    .unwrap();
}

/// Between requests pag0 waits for the next one itself (reading ahead what has arrived, so
/// that idle connections hold little memory): a request that arrives in pieces, one byte first,
/// and one whose header is larger than what is read ahead, are both served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_in_pieces_after_an_idle_wait_are_served_whole() {
    use std::io::{Read, Write};
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&body());
    let auth = basic("demo", DEMO_KEY);
    let (proxy, host) = (pag0.proxy, up.addr);
    let url = |p: &str| up.url(p);
    let (one, two, three) = (url("/one"), url("/two"), url("/three"));
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let answer = |s: &mut std::net::TcpStream| -> (u16, Value) {
            let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
            loop {
                if let Some(((status, _, body), _)) = parse_response(&buf) {
                    return (status, body);
                }
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        let head = |u: &str, extra: &str| {
            format!(
                "GET {u} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n{extra}\r\n"
            )
        };
        s.write_all(head(&one, "").as_bytes()).unwrap();
        let (status, body) = answer(&mut s);
        assert_eq!((status, body["path"].as_str()), (200, Some("/one")));
        // Idle, then the next request one byte first, the rest of it later in two parts.
        std::thread::sleep(Duration::from_millis(300));
        let second = head(&two, "");
        let (first_byte, rest) = second.as_bytes().split_at(1);
        let (middle, last) = rest.split_at(rest.len() / 2);
        for part in [first_byte, middle, last] {
            s.write_all(part).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
        let (status, body) = answer(&mut s);
        assert_eq!((status, body["path"].as_str()), (200, Some("/two")));
        // A header larger than the read-ahead (4 KiB), in one write.
        let pad = format!("X-Pad: {}\r\n", "p".repeat(6000));
        s.write_all(head(&three, &pad).as_bytes()).unwrap();
        let (status, body) = answer(&mut s);
        assert_eq!((status, body["path"].as_str()), (200, Some("/three")));
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&body());
    let auth = basic("demo", DEMO_KEY);
    let requests: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|p| {
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\n\r\n",
                up.url(&format!("/{p}")),
                up.addr
            )
        })
        .collect();
    let raw: Vec<&[u8]> = requests.iter().map(|r| r.as_bytes()).collect();
    let answers = raw_pipelined(pag0.proxy, &raw);
    let paths: Vec<&str> = answers
        .iter()
        .map(|(status, head, body)| {
            assert_eq!(*status, 200, "{head}");
            body["path"].as_str().unwrap()
        })
        .collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_offer_trickled_by_the_upstream_is_declined_in_time() {
    let offer = serde_json::json!({"x402Version": 1, "accepts": [], "error": "pay"}).to_string();
    let head = format!(
        "HTTP/1.1 402 Payment Required\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        offer.len()
    );
    // One byte every 200 ms: the offer would take about ten seconds.
    let up = canned_upstream(head, offer.into_bytes(), Duration::from_millis(200)).await;
    let pag0 = Pag0::start(&body());
    let started = Instant::now();
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(format!("http://{up}/v1/thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(resp.headers()["x-pag0-payment"], "declined");
    let body: Value = resp.json().await.unwrap();
    let took = started.elapsed();
    assert_eq!(body["error"]["code"], "PAYMENT_DECLINED");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("payments.offer_timeout_ms"), "{message}");
    assert!(took < Duration::from_secs(4), "the agent waited {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_402s_get_a_json_reason() {
    let pag0 = Pag0::start(&body());
    let client = pag0.client("demo", DEMO_KEY);

    // An empty chunked body: no offer anywhere.
    let head = "HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n";
    let up = canned_upstream(head.into(), Vec::new(), Duration::ZERO).await;
    let resp = client.get(format!("http://{up}/x")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(resp.headers()["x-pag0-payment"], "declined");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYMENT_DECLINED", "{body}");

    // A PAYMENT-REQUIRED header over 64 KiB is dropped (clients fail on it) and explained.
    let huge = "A".repeat(70 * 1024);
    let head = format!(
        "HTTP/1.1 402 Payment Required\r\nPAYMENT-REQUIRED: {huge}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let up = canned_upstream(head, Vec::new(), Duration::ZERO).await;
    let resp = client.get(format!("http://{up}/x")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(resp.headers().get("payment-required").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYMENT_DECLINED", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("dropped"), "{message}");
}

/// Runs a paid call, a declined offer, a malformed request and a CONNECT with credentials
/// through a pag0 process logging at `level`; returns what it logged meanwhile and the
/// secrets it saw.
async fn exercise(level: &str) -> (String, Vec<String>) {
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = Process::start_env(&dir, &body(), &[("RUST_LOG", level)]);
    let log_file = dir.path().join("pag0.log");
    // What pag0 logs from here on is about requests (startup, e.g. creating the local CA, is
    // before).
    let started = std::fs::read_to_string(&log_file).unwrap().len();
    let client = pag0.client();
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .get(wall.url("/expensive-empty"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let resp = client.get(wall.url("/expensive")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    // An upstream that is not there.
    let resp = client
        .get(format!("http://127.0.0.1:{}/", free_port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    // A header with an invalid byte, beside both kinds of credentials.
    let auth = basic("demo", DEMO_KEY);
    let malformed = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {auth}\r\nX-Pag0-API-Key: {DEMO_KEY}\r\nBad\x01Header: y\r\n\r\n",
        wall.url("/paid")
    );
    let (status, _, _) = raw_exchange(pag0.proxy, malformed.as_bytes());
    assert_eq!(status, 400);
    let connect = format!(
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    let _ = raw_exchange(pag0.proxy, connect.as_bytes());
    tokio::time::sleep(Duration::from_millis(300)).await;
    pag0.kill();
    let log = std::fs::read_to_string(&log_file).unwrap()[started..].to_string();
    let mut secrets = vec![DEMO_KEY.to_string(), auth["Basic ".len()..].to_string()];
    let sent = wall.stats().payment_headers;
    assert_eq!(sent.len(), 1, "one payment was sent");
    secrets.extend(sent);
    (log, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_even_at_trace() {
    let (log, secrets) = exercise("trace").await;
    assert!(
        log.contains("InvalidHTTPHeader"),
        "Pingora's record of the malformed request is there (redacted)"
    );
    assert!(log.contains("[redacted]"));
    for secret in secrets {
        // Also a prefix, should a record cut the value short.
        let prefix = &secret[..secret.len().min(16)];
        assert!(!log.contains(prefix), "a secret reached the log: {prefix}…");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_not_warnings_at_the_default_level() {
    let (log, _) = exercise("info").await;
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        loud.is_empty(),
        "per-request warnings or errors:\n{}",
        loud.join("\n")
    );
}
