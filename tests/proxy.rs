//! Forward and reverse proxying through an in-process pag0 against real local upstreams.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// Stages with loopback allowed (the test upstreams live on 127.0.0.1).
fn local_stages() -> String {
    "stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n".to_string()
}

fn forward_config() -> String {
    format!("{}{}", local_stages(), demo_project())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_get_and_post_reach_the_upstream_without_pag0_headers() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&forward_config());
    let client = pag0.client("demo", DEMO_KEY);

    let resp = client
        .get(up.url("/hello?x=1"))
        .header("x-pag0-debug", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/hello?x=1", "origin-form upstream target");
    let headers = echo["headers"].as_object().unwrap();
    assert_eq!(headers["host"], up.addr.to_string());
    for name in headers.keys() {
        assert!(
            !name.starts_with("x-pag0-") && name != "proxy-authorization",
            "{name} leaked upstream"
        );
    }

    let body = vec![7u8; 40_000];
    let resp = client
        .post(up.url("/submit"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 40_000);
    assert_eq!(echo["body_sha256"], sha256_hex(&body));

    // The API-key header also identifies the project, and is not forwarded either.
    let plain = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", pag0.proxy)).unwrap())
        .build()
        .unwrap();
    let resp = plain
        .get(up.url("/k"))
        .header("x-pag0-api-key", DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert!(echo["headers"].get("x-pag0-api-key").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_and_keep_alive_reuse() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&forward_config());
    let auth = basic("demo", DEMO_KEY);
    let target = up.url("/chunked");
    let chunks = ["hello ", "chunked ", "world"];
    let mut encoded = String::new();
    for c in chunks {
        encoded.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    encoded.push_str("0\r\n\r\n");
    let one = format!(
        "POST {target} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n{encoded}",
        up.addr
    );
    let two = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\n\r\n",
        up.url("/second"),
        up.addr
    );
    let three = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\n\r\n",
        up.url("/third"),
        up.addr
    );
    // Three requests, one after another, on ONE client connection (keep-alive).
    let responses = raw_sequence(
        pag0.proxy,
        &[one.as_bytes(), two.as_bytes(), three.as_bytes()],
    );
    assert_eq!(
        responses.iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 200, 200]
    );
    assert_eq!(responses[0].2["body_len"], 19);
    assert_eq!(
        responses[0].2["body_sha256"],
        sha256_hex(b"hello chunked world")
    );
    assert_eq!(responses[1].2["path"], "/second");
    assert_eq!(responses[2].2["path"], "/third");
    assert_eq!(responses[2].2["headers"]["host"], up.addr.to_string());
    // ...and pag0 reused its pooled upstream connection.
    let seen = up.seen();
    assert_eq!(seen.requests, 3);
    assert_eq!(
        seen.connections, 1,
        "upstream connection reused across requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_get_407() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&forward_config());
    let cases = [
        (None, "no credentials"),
        (Some(basic("demo", "wrong-key")), "wrong key"),
        (
            Some(basic("other-project", DEMO_KEY)),
            "key of another project",
        ),
        (Some("Bearer abc".to_string()), "unsupported scheme"),
    ];
    for (auth, why) in cases {
        let mut req = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", up.url("/"), up.addr);
        if let Some(a) = auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        let (status, head, body) = raw_exchange(pag0.proxy, req.as_bytes());
        assert_eq!(status, 407, "{why}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authenticate: basic realm=\"pag0\""),
            "{why}: {head}"
        );
        assert_eq!(body["error"]["code"], "PROXY_AUTH_REQUIRED", "{why}");
    }
    assert_eq!(up.seen().requests, 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_refuses_private_and_metadata_targets_before_connecting() {
    let up = Upstream::start().await;
    // Default stages: no loopback allowance.
    let pag0 = Pag0::start(&demo_project());
    let client = pag0.client("demo", DEMO_KEY);
    for (url, reason) in [
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
        (&up.url("/"), "loopback"),
        (&format!("http://localhost:{}/", up.addr.port()), "loopback"),
        ("http://[::ffff:10.0.0.1]/", "private"),
    ] {
        let resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{url}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "TARGET_FORBIDDEN", "{url}");
        assert_eq!(body["error"]["details"]["reason"], reason, "{url}");
    }
    // IPv6 forms that embed a restricted IPv4 address, and the numeric IPv4 host forms curl
    // and browsers accept, are judged as the addresses they are (no DNS query, no connection).
    let port = up.addr.port();
    let forms = [
        ("[::127.0.0.1]", "loopback"),
        ("[::7f00:1]", "loopback"),
        ("[::169.254.169.254]", "cloud-metadata"),
        ("[::10.0.0.1]", "private"),
        ("[::ffff:0:127.0.0.1]", "loopback"),
        ("[64:ff9b:1::7f00:1]", "private"),
        ("[2001:0:101:101::80ff:fffe]", "loopback"),
        ("[2002:7f00:1::1]", "loopback"),
        ("[fec0::1]", "private"),
        ("2130706433", "loopback"),
        ("0x7f000001", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("169.254.43518", "cloud-metadata"),
    ];
    for (host, reason) in forms {
        let url = format!("http://{host}:{port}/");
        let req = format!(
            "GET {url} HTTP/1.1\r\nHost: {host}:{port}\r\nX-Pag0-API-Key: {DEMO_KEY}\r\n\r\n"
        );
        let (status, head, body) = raw_exchange(pag0.proxy, req.as_bytes());
        assert_eq!(status, 403, "{url}: {head}");
        assert_eq!(body["error"]["code"], "TARGET_FORBIDDEN", "{url}");
        assert_eq!(body["error"]["details"]["reason"], reason, "{url}");
    }
    // A host that ends in a number but is no IPv4 address is not a name either.
    let req = format!(
        "GET http://1.2.3.256:{port}/ HTTP/1.1\r\nHost: 1.2.3.256:{port}\r\nX-Pag0-API-Key: {DEMO_KEY}\r\n\r\n"
    );
    let (status, _, body) = raw_exchange(pag0.proxy, req.as_bytes());
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "INVALID_TARGET");
    assert_eq!(up.seen().connections, 0, "no connection was attempted");
    let (_, metrics) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    let refused = 5 + forms.len();
    assert!(
        metrics.contains(&format!(
            r#"pag0_stage_rejections_total{{code="TARGET_FORBIDDEN",stage="ssrf_guard"}} {refused}"#
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains("pag0_upstream_errors_total{"),
        "no upstream attempt: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_route_to_https_upstream_with_test_ca_uses_sni() {
    let pki = test_pki();
    let up = Upstream::start_tls(pki.server_config.clone()).await;
    let pag0_dir = tempfile::tempdir().unwrap();
    let ca_file = pag0_dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let port = up.addr.port();
    let config = format!(
        "{}routes:\n  - name: secure\n    host: api.test\n    path_prefix: /v1\n    upstream: https://localhost:{port}/base\n    ca_file: {}\n  - name: untrusted\n    path_prefix: /untrusted\n    upstream: https://localhost:{port}\n",
        demo_project(),
        ca_file.display()
    );
    let pag0 = Pag0::start(&config);
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{}/v1/items?id=3", pag0.proxy))
        .header("host", "api.test")
        .header("x-pag0-api-key", DEMO_KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{echo} {:?}", up.seen());
    assert_eq!(echo["path"], "/base/items?id=3");
    assert_eq!(echo["headers"]["host"], format!("localhost:{port}"));
    assert!(echo["headers"].get("x-pag0-api-key").is_none());
    assert_eq!(
        up.seen().sni,
        vec![Some("localhost".to_string())],
        "SNI sent"
    );

    // Without the route's CA the certificate does not verify against the system roots.
    let resp = client
        .get(format!("http://{}/untrusted/x", pag0.proxy))
        .header("x-pag0-api-key", DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_TLS_FAILED");

    // Routes need credentials too: 401 (not 407, this is not the forward proxy).
    let resp = client
        .get(format!("http://{}/v1/items", pag0.proxy))
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    // No matching route: 404 NO_ROUTE.
    let resp = client
        .get(format!("http://{}/nowhere", pag0.proxy))
        .header("x-pag0-api-key", DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NO_ROUTE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let up = Upstream::start().await;
    let config = format!(
        "stages:\n  - kind: auth\n  - kind: rate_limit\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    rate_limit: {{requests_per_second: 1, burst: 2}}\n"
    );
    let pag0 = Pag0::start(&config);
    let client = pag0.client("demo", DEMO_KEY);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let mut remaining = Vec::new();
    for _ in 0..6 {
        let resp = client.get(up.url("/")).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        let h = |name: &str| resp.headers()[name].to_str().unwrap().to_string();
        assert_eq!(h("x-ratelimit-limit"), "2", "the burst");
        assert!(h("x-ratelimit-reset").parse::<u64>().unwrap() <= 2);
        remaining.push(h("x-ratelimit-remaining"));
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
        }
    }
    assert_eq!(&statuses[..2], [200, 200], "the burst passes: {statuses:?}");
    assert_eq!(&remaining[..3], ["1", "0", "0"], "{remaining:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After in whole seconds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_502_and_upstream_timeout_504() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&format!(
        "upstream:\n  read_timeout_ms: 300\n{}",
        forward_config()
    ));
    let client = pag0.client("demo", DEMO_KEY);

    let resp = client
        .get("http://no-such-host.invalid/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "DNS_RESOLUTION_FAILED");

    let resp = client.get(up.url("/delay/3000")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_TIMEOUT");

    // A closed port: connection refused.
    let resp = client
        .get(format!("http://127.0.0.1:{}/", free_port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    // After a failed proxy attempt pag0 closes the connection and says so, so that pooled
    // clients do not race the close (a stage's own answer keeps the connection alive).
    let connection = resp
        .headers()
        .get("connection")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(connection.as_deref(), Some("close"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_CONNECT_FAILED");

    // Upstream error statuses are passed through untouched.
    let resp = client.get(up.url("/status/503")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("x-pag0-error").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_http_proxy_env() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&forward_config());
    let url = up.url("/from-curl");
    let proxy = format!("http://demo:{DEMO_KEY}@{}", pag0.proxy);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--noproxy", "", "-d", "curl-body", &url])
        .env("http_proxy", &proxy)
        .env("HTTP_PROXY", &proxy)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .await
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["path"], "/from-curl");
    assert_eq!(echo["body_sha256"], sha256_hex(b"curl-body"));
    assert!(echo["headers"].get("proxy-authorization").is_none());
    assert_eq!(up.seen().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_config_without_failing_in_flight_requests() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&forward_config());
    let client = pag0.client("demo", DEMO_KEY);

    // A slow request is in flight while the config changes.
    let slow = tokio::spawn({
        let client = client.clone();
        let url = up.url("/delay/1500");
        async move { client.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let route = format!(
        "routes:\n  - name: added\n    path_prefix: /added\n    upstream: http://{}/up\n",
        up.addr
    );
    pag0.rewrite(&format!("{}{route}", forward_config()));
    let (status, body) = pag0.admin(reqwest::Method::POST, "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"generation\":2"), "{body}");

    let resp = reqwest::Client::new()
        .get(format!("http://{}/added/x", pag0.proxy))
        .header("x-pag0-api-key", DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/up/x");
    assert_eq!(
        slow.await.unwrap(),
        StatusCode::OK,
        "in-flight request survived the reload"
    );

    // An invalid file is refused with its problems listed, and the running config stays.
    pag0.rewrite("routes:\n  - name: broken\n    path_prefix: /b\n    upstream: htp:/x\n");
    let (status, body) = pag0.admin(reqwest::Method::POST, "/reload").await;
    assert_eq!(status, 422);
    assert!(body.contains("routes[0].upstream: invalid URL"), "{body}");
    let resp = client.get(up.url("/still-works")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
