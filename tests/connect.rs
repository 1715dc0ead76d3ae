//! HTTPS through the forward proxy: `CONNECT` with TLS interception by pag0's local CA, blind
//! tunnels for `tunnel_only` hosts, and the refusals, with real clients (reqwest, curl, Python)
//! against local TLS upstreams that have their own test CA.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::paywall::{self, Paywall};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// The upstreams' own test CA, written where the YAML can point at it.
struct UpstreamCa {
    pki: TestPki,
    dir: tempfile::TempDir,
}

impl UpstreamCa {
    fn new() -> UpstreamCa {
        let pki = test_pki();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("upstream-ca.pem"), &pki.ca_pem).unwrap();
        UpstreamCa { pki, dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("upstream-ca.pem")
    }

    /// `upstream.trust` for `localhost` (the test leaf's name).
    fn trust_yaml(&self) -> String {
        format!(
            "upstream:\n  trust:\n    - hosts: [localhost]\n      ca_file: {}\n",
            self.file().display()
        )
    }
}

fn stages() -> &'static str {
    "stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n"
}

/// The `connect:` section with any port allowed (the test upstreams listen on random ports)
/// and `extra` keys (indented by two spaces).
fn connect_section(extra: &str) -> String {
    format!("connect:\n  ports: [\"*\"]\n{extra}")
}

fn config(ca: &UpstreamCa, connect: &str) -> String {
    format!(
        "{}{}{}{}",
        ca.trust_yaml(),
        stages(),
        connect_section(connect),
        demo_project()
    )
}

/// pag0's CA certificate (created at first start next to the test config).
fn pag0_ca(pag0: &Pag0) -> PathBuf {
    pag0.dir.path().join("pag0-ca/ca.crt")
}

fn proxy_url(pag0: &Pag0) -> String {
    format!("http://demo:{DEMO_KEY}@{}", pag0.proxy)
}

/// A reqwest client using pag0 for HTTPS too (CONNECT) and trusting only `ca`.
fn https_client(pag0: &Pag0, ca: &Path) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy_url(pag0)).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn metrics(pag0: &Pag0) -> String {
    pag0.admin(reqwest::Method::GET, "/metrics").await.1
}

/// Runs curl with `args` (HTTPS_PROXY and NO_PROXY from `env`); returns (exit ok, stdout,
/// stderr).
async fn curl(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env("NO_PROXY", "")
        .env("no_proxy", "");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("curl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_https_reaches_the_upstream_with_reqwest_and_curl() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    let pag0 = Pag0::start(&config(&ca, ""));
    assert!(pag0_ca(&pag0).exists(), "the CA is created on first start");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pag0.dir.path().join("pag0-ca/ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let url = format!("https://localhost:{}/hello?x=1", up.addr.port());

    // reqwest trusting pag0's CA only: two requests on one tunnel (keep-alive).
    let client = https_client(&pag0, &pag0_ca(&pag0));
    for i in 0..2 {
        let resp = client
            .get(&url)
            .header("x-pag0-debug", "secret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["path"], "/hello?x=1");
        let headers = echo["headers"].as_object().unwrap();
        assert_eq!(headers["host"], format!("localhost:{}", up.addr.port()));
        for name in headers.keys() {
            assert!(
                !name.starts_with("x-pag0-") && name != "proxy-authorization",
                "{name} leaked upstream"
            );
        }
    }
    // A POST with a body, inside the same tunnel.
    let body = vec![5u8; 100_000];
    let resp = client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_sha256"], sha256_hex(&body));
    let seen = up.seen();
    assert_eq!(seen.requests, 3);
    assert_eq!(
        seen.connections, 1,
        "pag0 reuses its upstream TLS connection"
    );
    assert!(
        seen.sni.iter().all(|s| s.as_deref() == Some("localhost")),
        "pag0 connects with SNI: {:?}",
        seen.sni
    );

    // curl, configured through the environment (HTTPS_PROXY + CURL_CA_BUNDLE).
    let (ok, out, err) = curl(
        &["-v", &url],
        &[
            ("HTTPS_PROXY", proxy_url(&pag0)),
            ("CURL_CA_BUNDLE", pag0_ca(&pag0).display().to_string()),
        ],
    )
    .await;
    assert!(ok, "curl failed: {err}");
    let echo: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(echo["path"], "/hello?x=1");
    assert!(
        err.contains("pag0 local CA"),
        "curl saw a leaf issued by pag0's CA: {err}"
    );
    assert!(
        err.contains("subjectAltName") || err.contains("localhost"),
        "{err}"
    );

    let m = metrics(&pag0).await;
    let value = |series: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    // Four requests (three from reqwest, one from curl): reqwest keeps its tunnel alive, so
    // fewer tunnels than requests (its pool may open a second one now and then), each
    // counted once as an accepted CONNECT.
    let opened = value(r#"pag0_tunnels_total{kind="intercept",outcome="opened"}"#);
    assert!((2..4).contains(&opened), "{m}");
    assert_eq!(
        value(r#"pag0_requests_total{project="demo",route="connect",status_class="2xx"}"#),
        opened,
        "{m}"
    );
    assert!(m.contains("pag0_tls_leaves_minted_total 1"), "{m}");
}

/// Opens a CONNECT to `authority` with the demo credentials and returns the raw tunnel after
/// pag0's `200`.
async fn open_tunnel(pag0: &Pag0, authority: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(pag0.proxy).await.unwrap();
    let connect = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
        basic("demo", DEMO_KEY)
    );
    stream.write_all(connect.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed before the 200"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// Reads one Content-Length framed response from `stream`: status, head, JSON body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, String, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((response, _)) = parse_response(&buf) {
            return response;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "the tunnel closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_before_the_200_close_the_connection() {
    // The agent must wait for the 200: what it sends in the same write as its CONNECT is
    // never relayed half-way (the connection is closed; it would be lost in Pingora's buffer).
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&UpstreamCa::new(), ""));
    let authority = up.addr.to_string();
    let mut stream = tokio::net::TcpStream::connect(pag0.proxy).await.unwrap();
    let early = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\nGET /early HTTP/1.1\r\nHost: {authority}\r\n\r\n",
        basic("demo", DEMO_KEY)
    );
    stream.write_all(early.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "pag0 closes the connection at once");
    assert!(
        !String::from_utf8_lossy(&got).contains("/early"),
        "the early request was not served: {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(up.seen().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_inside_a_connect_goes_through_the_whole_pipeline() {
    // What Node's undici ProxyAgent does for an http:// URL: CONNECT host:port, then plain
    // HTTP/1.1 in the tunnel.
    let wall = Paywall::start().await;
    let body = format!(
        "{}{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n",
        paywall::payments_yaml(),
        connect_section(""),
        paywall::WALLET_KEY,
    );
    let pag0 = Pag0::start(&body);
    let authority = wall.addr.to_string();
    let mut tunnel = open_tunnel(&pag0, &authority).await;
    // Two requests on the tunnel (keep-alive): a paid one and a free one.
    for (path, paid) in [("/paid", true), ("/free", false)] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        tunnel.write_all(req.as_bytes()).await.unwrap();
        let (status, head, echo) = read_response(&mut tunnel).await;
        assert_eq!(status, 200, "{path}: {head}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains(&format!("x-pag0-paid: {paid}")),
            "{path}: {head}"
        );
        assert_eq!(echo["path"], path);
    }
    // Another host inside the tunnel is misdirected.
    let req = "GET http://127.0.0.2:1/x HTTP/1.1\r\nHost: 127.0.0.2:1\r\n\r\n";
    tunnel.write_all(req.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut tunnel).await;
    assert_eq!(status, 421);
    assert_eq!(body["error"]["code"], "MISDIRECTED_REQUEST");
    let stats = wall.stats();
    assert_eq!(stats.paid, 1, "paid exactly once: {stats:?}");
    let (_, m) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert!(
        m.contains(r#"pag0_tunnels_total{kind="plain",outcome="opened"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_https_api_is_paid_inside_the_tunnel() {
    let ca = UpstreamCa::new();
    let wall = Paywall::start_tls(ca.pki.server_config.clone()).await;
    let body = format!(
        "{}{}{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n",
        ca.trust_yaml(),
        paywall::payments_yaml(),
        connect_section(""),
        paywall::WALLET_KEY,
    );
    let pag0 = Pag0::start(&body);
    let client = https_client(&pag0, &pag0_ca(&pag0));
    assert!(wall.url("/paid").starts_with("https://localhost:"));

    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", wall.stats());
    assert_eq!(
        resp.headers()["x-pag0-paid"].to_str().unwrap(),
        "true",
        "paid by pag0 inside the tunnel"
    );
    assert_eq!(
        resp.headers()["x-pag0-cost"].to_str().unwrap(),
        "10000 USDC"
    );
    let stats = wall.stats();
    assert_eq!((stats.paid, stats.requests), (1, 2), "{stats:?}");

    // POST with a JSON body: the replay carries the same body.
    let json = serde_json::json!({"prompt": "hello", "n": 3});
    let resp = client
        .post(wall.url("/paid"))
        .json(&json)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", wall.stats());
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["body_sha256"],
        sha256_hex(serde_json::to_string(&json).unwrap().as_bytes())
    );
    let stats = wall.stats();
    assert_eq!(stats.paid, 2, "{stats:?}");
    assert!(stats.invalid.is_empty(), "{:?}", stats.invalid);

    // curl too (plain HTTPS_PROXY usage).
    let (ok, out, err) = curl(
        &["-i", &wall.url("/paid")],
        &[
            ("HTTPS_PROXY", proxy_url(&pag0)),
            ("CURL_CA_BUNDLE", pag0_ca(&pag0).display().to_string()),
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-pag0-paid: true"),
        "{out}"
    );
    assert_eq!(wall.stats().paid, 3);
}

/// Sends a raw CONNECT and returns the status line and headers of pag0's answer.
fn raw_connect(pag0: &Pag0, target: &str, auth: Option<&str>) -> (u16, String, Value) {
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    raw_exchange(
        pag0.proxy,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_needs_credentials_and_a_public_target() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    // No SSRF allowlist here: loopback is refused too.
    let pag0 = Pag0::start(&format!(
        "{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n{}",
        ca.trust_yaml(),
        demo_project()
    ));
    let target = format!("localhost:{}", up.addr.port());

    let (status, head, body) = raw_connect(&pag0, &target, None);
    assert_eq!(status, 407, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{head}"
    );
    assert_eq!(body["error"]["code"], "PROXY_AUTH_REQUIRED");
    let (status, _, _) = raw_connect(&pag0, &target, Some(&basic("demo", "wrong-key")));
    assert_eq!(status, 407);

    let auth = basic("demo", DEMO_KEY);
    for private in [
        "10.0.0.1:443",
        "169.254.169.254:443",
        "127.0.0.1:443",
        target.as_str(),
    ] {
        let (status, head, body) = raw_connect(&pag0, private, Some(&auth));
        assert_eq!(status, 403, "{private}: {head}");
        assert_eq!(body["error"]["code"], "TARGET_FORBIDDEN", "{private}");
    }
    // IPv6 forms that embed a restricted IPv4 address, and numeric IPv4 host forms.
    for (embedded, reason) in [
        ("[::127.0.0.1]:443", "loopback"),
        ("[::169.254.169.254]:443", "cloud-metadata"),
        ("[::ffff:0:10.0.0.1]:443", "private"),
        ("[64:ff9b:1::a00:1]:443", "private"),
        ("[2001:0:101:101::80ff:fffe]:443", "loopback"),
        ("2130706433:443", "loopback"),
        ("0x7f000001:443", "loopback"),
        ("0177.0.0.1:443", "loopback"),
        ("127.1:443", "loopback"),
    ] {
        let (status, head, body) = raw_connect(&pag0, embedded, Some(&auth));
        assert_eq!(status, 403, "{embedded}: {head}");
        assert_eq!(body["error"]["details"]["reason"], reason, "{embedded}");
    }
    // A port outside connect.ports is refused before the host is looked up: the name below
    // does not resolve, and the answer is about the port, not DNS.
    let (status, head, body) = raw_connect(&pag0, "no-such-host.invalid:22", Some(&auth));
    assert_eq!(status, 403, "{head}");
    assert_eq!(body["error"]["details"]["reason"], "port");
    // The status line says why (clients print it; they do not print a failed CONNECT's body).
    assert!(
        head.starts_with(
            "HTTP/1.1 403 TARGET_FORBIDDEN: CONNECT to port 22 is not allowed (connect.ports)"
        ),
        "{head}"
    );
    let (status, _, body) = raw_connect(&pag0, "no-port.example", Some(&auth));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "INVALID_TARGET");
    assert_eq!(up.seen().connections, 0, "nothing reached the upstream");

    // curl gets the same refusal as a failed CONNECT.
    let (ok, _, err) = curl(
        &[&format!("https://{target}/")],
        &[("HTTPS_PROXY", proxy_url(&pag0))],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    assert_eq!(up.seen().connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_only_hosts_are_relayed_blind() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    let pag0 = Pag0::start(&config(&ca, "  tunnel_only: [localhost]\n"));
    let url = format!("https://localhost:{}/blind", up.addr.port());

    // The agent talks TLS with the upstream itself: it must trust the upstream's CA...
    let client = https_client(&pag0, &ca.file());
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/blind");
    // ...and pag0 added nothing (it cannot see inside).
    assert!(echo["headers"].get("x-pag0-paid").is_none());
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // One tunnel kept alive (reqwest's pool may now and then open a second one).
    let reqwest_tunnels = up.seen().connections;
    assert!((1..=2).contains(&reqwest_tunnels), "{reqwest_tunnels}");

    // curl sees the upstream's own certificate (issued by the test CA, not pag0's).
    let (ok, _, err) = curl(
        &["-v", &url],
        &[
            ("HTTPS_PROXY", proxy_url(&pag0)),
            ("CURL_CA_BUNDLE", ca.file().display().to_string()),
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("pag0 test CA"), "{err}");
    assert!(!err.contains("pag0 local CA"), "{err}");
    // With only pag0's CA trusted, the upstream's certificate is (rightly) rejected.
    let (ok, _, _) = curl(
        &[&url],
        &[
            ("HTTPS_PROXY", proxy_url(&pag0)),
            ("CURL_CA_BUNDLE", pag0_ca(&pag0).display().to_string()),
        ],
    )
    .await;
    assert!(!ok);

    let m = metrics(&pag0).await;
    // reqwest's tunnels plus curl's two.
    let blind = format!(
        r#"pag0_tunnels_total{{kind="blind",outcome="opened"}} {}"#,
        reqwest_tunnels + 2
    );
    assert!(m.contains(&blind), "{m}");
    assert!(m.contains("pag0_tls_leaves_minted_total 0"), "{m}");
}

/// A GET through a tunnel to the TLS upstream `up`, which pag0 cannot verify: asserts the
/// 502 UPSTREAM_TLS_FAILED and returns its message.
async fn tls_failure(pag0: &Pag0, up: &Upstream) -> String {
    let client = https_client(pag0, &pag0_ca(pag0));
    let resp = client
        .get(format!("https://localhost:{}/x", up.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_TLS_FAILED");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_a_502() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    // No upstream.trust: the test CA is not among the system roots.
    let pag0 = Pag0::start(&format!(
        "{}{}{}",
        connect_section(""),
        stages(),
        demo_project()
    ));
    let message = tls_failure(&pag0, &up).await;
    assert!(message.contains("UnknownIssuer"), "says why: {message}");
    assert_eq!(up.seen().requests, 0, "nothing was sent to the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_ca_used_as_the_server_certificate_is_explained() {
    // What `openssl req -x509 -subj /CN=localhost` makes: one self-signed certificate with
    // CA:TRUE, served as the upstream's own certificate and listed in upstream.trust.
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("self-signed.pem");
    std::fs::write(&file, cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let up = Upstream::start_tls(Arc::new(server)).await;
    let pag0 = Pag0::start(&format!(
        "upstream:\n  trust:\n    - hosts: [localhost]\n      ca_file: {}\n{}{}{}",
        file.display(),
        connect_section(""),
        stages(),
        demo_project()
    ));
    let message = tls_failure(&pag0, &up).await;
    assert!(
        message.contains("CA certificate") && message.contains("CA:FALSE"),
        "{message}"
    );
    assert_eq!(up.seen().requests, 0);
}

/// Opens a CONNECT tunnel to `target` and starts TLS inside with `server_name`.
async fn tls_through_tunnel(
    pag0: &Pag0,
    target: &str,
    server_name: rustls::pki_types::ServerName<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let auth = format!("Proxy-Authorization: {}", basic("demo", DEMO_KEY));
    tls_through_tunnel_with(pag0, target, server_name, &auth).await
}

/// Like [`tls_through_tunnel`], with `credentials` as the CONNECT's credentials header line.
/// An answer other than `200 Connection Established` is an error carrying it.
async fn tls_through_tunnel_with(
    pag0: &Pag0,
    target: &str,
    server_name: rustls::pki_types::ServerName<'static>,
    credentials: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tunnel_tls(pag0, target, server_name, credentials, client_config(pag0)).await
}

/// A rustls client trusting pag0's CA (with its own session cache, for resumption).
fn client_config(pag0: &Pag0) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pag0_ca(pag0)).unwrap();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// Opens a CONNECT tunnel and starts TLS inside with `client`.
async fn tunnel_tls(
    pag0: &Pag0,
    target: &str,
    server_name: rustls::pki_types::ServerName<'static>,
    credentials: &str,
    client: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tcp = tokio::net::TcpStream::connect(pag0.proxy).await?;
    tcp.write_all(
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{credentials}\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await?, 1, "pag0 closed the tunnel");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    if head != "HTTP/1.1 200 Connection Established\r\n\r\n" {
        return Err(std::io::Error::other(head));
    }
    tokio_rustls::TlsConnector::from(client)
        .connect(server_name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_must_name_the_connect_host() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    let pag0 = Pag0::start(&config(&ca, ""));
    let target = format!("localhost:{}", up.addr.port());

    // The right name works, and a request inside gets through.
    let mut tls = tls_through_tunnel(&pag0, &target, "localhost".try_into().unwrap())
        .await
        .unwrap();
    let answer = exchange_inside(
        &mut tls,
        "GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Another name than the CONNECT's is refused in the handshake.
    let other = tls_through_tunnel(&pag0, &target, "other.example".try_into().unwrap()).await;
    assert!(other.is_err(), "SNI mismatch accepted");
    // So is a ClientHello without SNI (rustls sends none for an IP address).
    let ip =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    assert!(tls_through_tunnel(&pag0, &target, ip).await.is_err());
    // A request naming another host inside the tunnel is misdirected.
    let mut tls = tls_through_tunnel(&pag0, &target, "localhost".try_into().unwrap())
        .await
        .unwrap();
    let answer = exchange_inside(
        &mut tls,
        "GET /x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert!(answer.contains("MISDIRECTED_REQUEST"), "{answer}");

    assert_eq!(
        up.seen().requests,
        1,
        "only the good request reached the upstream"
    );
    let m = metrics(&pag0).await;
    assert!(
        m.contains(r#"pag0_tunnels_total{kind="intercept",outcome="sni_refused"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_off_is_a_405() {
    let pag0 = Pag0::start(&format!(
        "connect:\n  mode: off\n{}{}",
        stages(),
        demo_project()
    ));
    let (status, _, body) = raw_connect(&pag0, "example.com:443", Some(&basic("demo", DEMO_KEY)));
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "CONNECT_NOT_ALLOWED");
    assert!(!pag0_ca(&pag0).exists(), "no CA without interception");
}

/// Python's standard library (HTTP/1.0 CONNECT) and `requests`, configured through the
/// environment only (HTTPS_PROXY, SSL_CERT_FILE / REQUESTS_CA_BUNDLE).
#[test]
fn raw_tunnel_bytes_are_not_http_parsed_for_tunnel_only_hosts() {
    // A blind tunnel relays whatever the agent sends (here: not TLS at all).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.iter().rev().copied().collect::<Vec<_>>())
                .await
                .unwrap();
        });
        addr
    });
    let pag0 = Pag0::start(&format!(
        "connect:\n  mode: tunnel\n  ports: [\"*\"]\n{}{}",
        stages(),
        demo_project()
    ));
    let mut tcp = std::net::TcpStream::connect(pag0.proxy).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = basic("demo", DEMO_KEY);
    write!(
        tcp,
        "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nProxy-Authorization: {auth}\r\n\r\n"
    )
    .unwrap();
    let mut read_until = |end: &[u8]| {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(end) {
            let n = tcp.read(&mut byte).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.push(byte[0]);
        }
        String::from_utf8(got).unwrap()
    };
    assert_eq!(
        read_until(b"\r\n\r\n"),
        "HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    tcp.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    tcp.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"olleh");
    drop(rt);
}

/// Sends one request inside a TLS tunnel (closing afterwards) and returns the whole answer.
async fn exchange_inside(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: &str,
) -> String {
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_credentials_are_the_only_ones_inside_the_tunnel() {
    const OTHER_KEY: &str = "other-project-key-0123456789";
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    let projects = format!(
        "{}  - id: other\n    keys: [\"sha256:{}\"]\n",
        demo_project(),
        sha256_hex(OTHER_KEY.as_bytes())
    );
    let pag0 = Pag0::start(&format!(
        "{}{}{}{projects}",
        ca.trust_yaml(),
        connect_section(""),
        stages()
    ));
    let target = format!("localhost:{}", up.addr.port());
    let name = || rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // X-Pag0-API-Key on the CONNECT works too; a request inside that carries another
    // project's credentials still counts for the CONNECT's project, and none of them leak.
    let mut tls = tls_through_tunnel_with(
        &pag0,
        &target,
        name(),
        &format!("X-Pag0-API-Key: {DEMO_KEY}"),
    )
    .await
    .unwrap();
    let answer = exchange_inside(
        &mut tls,
        &format!(
            "GET /inside HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: {}\r\nX-Pag0-API-Key: {OTHER_KEY}\r\nConnection: close\r\n\r\n",
            basic("other", OTHER_KEY)
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let echo: Value = serde_json::from_str(body).unwrap();
    let headers = echo["headers"].as_object().unwrap();
    assert!(
        !headers.contains_key("x-pag0-api-key") && !headers.contains_key("proxy-authorization"),
        "{headers:?}"
    );
    let m = metrics(&pag0).await;
    assert!(
        m.contains(r#"pag0_requests_total{project="demo",route="forward",status_class="2xx"} 1"#),
        "{m}"
    );
    assert!(!m.contains(r#"project="other""#), "{m}");

    // Credentials that are wrong on the CONNECT never open a tunnel.
    let refused = tls_through_tunnel_with(
        &pag0,
        &target,
        name(),
        &format!("X-Pag0-API-Key: {OTHER_KEY}x"),
    )
    .await
    .map(|_| ())
    .expect_err("a bad key opened a tunnel")
    .to_string();
    assert!(refused.starts_with("HTTP/1.1 407"), "{refused}");
    assert_eq!(up.seen().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_reload_apply_to_new_tunnels() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    let policy_stages = "stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: policy\n";
    let blocked = format!(
        "{}{}{policy_stages}{}    policy:\n      block_hosts: [localhost]\n",
        ca.trust_yaml(),
        connect_section(""),
        demo_project()
    );
    let pag0 = Pag0::start(&blocked);
    let target = format!("localhost:{}", up.addr.port());
    let (status, head, body) = raw_connect(&pag0, &target, Some(&basic("demo", DEMO_KEY)));
    assert_eq!(status, 403, "{head}");
    assert_eq!(body["error"]["code"], "HOST_BLOCKED");
    assert_eq!(up.seen().connections, 0);
    // Checked before the SSRF guard (listed first) looks the host up: a blocked name that
    // does not resolve is refused by policy, not a DNS failure.
    pag0.rewrite(&format!(
        "{}{}{policy_stages}{}    policy:\n      block_hosts: [\"*.invalid\"]\n",
        ca.trust_yaml(),
        connect_section(""),
        demo_project()
    ));
    assert_eq!(pag0.admin(reqwest::Method::POST, "/reload").await.0, 200);
    let (status, head, body) =
        raw_connect(&pag0, "blocked.invalid:443", Some(&basic("demo", DEMO_KEY)));
    assert_eq!(status, 403, "{head}");
    assert_eq!(body["error"]["code"], "HOST_BLOCKED");

    // Unblocked and intercepted, then moved to tunnel_only by a reload: the next tunnel is
    // blind (the agent sees the upstream's own certificate).
    let url = format!("https://localhost:{}/r", up.addr.port());
    let env = |ca: &Path| {
        vec![
            ("HTTPS_PROXY", proxy_url(&pag0)),
            ("CURL_CA_BUNDLE", ca.display().to_string()),
        ]
    };
    pag0.rewrite(&format!(
        "{}{}{policy_stages}{}",
        ca.trust_yaml(),
        connect_section(""),
        demo_project()
    ));
    assert_eq!(pag0.admin(reqwest::Method::POST, "/reload").await.0, 200);
    let (ok, _, err) = curl(&["-v", &url], &env(&pag0_ca(&pag0))).await;
    assert!(ok && err.contains("pag0 local CA"), "{err}");
    pag0.rewrite(&format!(
        "{}{}{policy_stages}{}",
        ca.trust_yaml(),
        connect_section("  tunnel_only: [localhost]\n"),
        demo_project()
    ));
    assert_eq!(pag0.admin(reqwest::Method::POST, "/reload").await.0, 200);
    let (ok, _, err) = curl(&["-v", &url], &env(&ca.file())).await;
    assert!(ok && err.contains("pag0 test CA"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_for_port_443_unless_configured() {
    let pag0 = Pag0::start(&format!("{}{}", stages(), demo_project()));
    let auth = basic("demo", DEMO_KEY);
    let (status, _, body) = raw_connect(&pag0, "127.0.0.1:25", Some(&auth));
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "TARGET_FORBIDDEN");
    assert_eq!(body["error"]["details"]["reason"], "port");
    // A CONNECT with a body is malformed (the agent waits for the answer before sending):
    // Pingora refuses it with a plain 400 before pag0's hooks (pag0 would too).
    let (status, head, body) = raw_exchange(
        pag0.proxy,
        format!("CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nProxy-Authorization: {auth}\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
    );
    assert_eq!(status, 400, "{head}");
    assert_eq!(body["error"]["code"], "INVALID_TARGET", "{head}");
}

/// Opens a blind tunnel to `echo` on a new connection (after `first`, a request answered on
/// the same connection, if given) with `extra` header lines, and checks it relays.
async fn open_echo_tunnel(
    proxy: std::net::SocketAddr,
    echo: std::net::SocketAddr,
    extra: &str,
    first: Option<&str>,
) -> tokio::net::TcpStream {
    let auth = basic("demo", DEMO_KEY);
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    if let Some(first) = first {
        // Sent and answered before the CONNECT (keep-alive, not pipelining).
        tcp.write_all(first.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1);
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        tcp.read_exact(&mut body).await.unwrap();
    }
    tcp.write_all(
        format!(
            "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nProxy-Authorization: {auth}\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"HTTP/1.1 200 Connection Established\r\n\r\n") {
        let n = tcp.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "closed before the 200: {}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    tcp.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    tcp.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    tcp
}

/// `Connection: close` on the CONNECT, and a connection at its keep-alive request limit, still
/// become tunnels; an idle blind tunnel is closed after `connect.idle_timeout_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_open_whatever_the_keepalive_and_close_when_idle() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let pag0 = Pag0::start_with(
        &format!(
            "connect:\n  mode: tunnel\n  ports: [\"*\"]\n  idle_timeout_seconds: 1\n{}{}",
            stages(),
            demo_project()
        ),
        "  keepalive_request_limit: 1\n",
    );
    open_echo_tunnel(pag0.proxy, echo_addr, "Connection: close\r\n", None).await;
    // A refused CONNECT (407) first uses up the connection's one reuse.
    let refused = format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\n\r\n");
    let mut idle = open_echo_tunnel(pag0.proxy, echo_addr, "", Some(&refused)).await;
    // Nothing moves: pag0 closes the tunnel after about a second.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("the idle tunnel was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_responses_are_cached_inside_the_tunnel() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    let pag0 = Pag0::start(&format!(
        "{}{}{}  - kind: cache\n{}",
        ca.trust_yaml(),
        connect_section(""),
        stages(),
        demo_project()
    ));
    let client = https_client(&pag0, &pag0_ca(&pag0));
    let url = format!("https://localhost:{}/cached", up.addr.port());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        seen.push(resp.headers()["x-pag0-cache"].to_str().unwrap().to_string());
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["path"], "/cached");
    }
    assert_eq!(seen, ["MISS", "HIT", "HIT"]);
    assert_eq!(up.seen().requests, 1, "hits never reach the upstream");
    let m = metrics(&pag0).await;
    assert!(
        m.contains(r#"pag0_cache_requests_total{project="demo",result="hit",tier="memory"} 2"#),
        "{m}"
    );
    assert!(
        !m.contains(r#"result="bypass""#),
        "the CONNECT is no cache request: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interception_switched_on_by_a_reload_waits_for_a_restart() {
    let pag0 = Pag0::start(&format!(
        "connect:\n  mode: off\n{}{}",
        stages(),
        demo_project()
    ));
    pag0.rewrite(&format!("{}{}", stages(), demo_project()));
    let (status, body) = pag0.admin(reqwest::Method::POST, "/reload").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("connect"),
        "the reload says what waits: {body}"
    );
    // No CA was loaded at start: CONNECT is refused, and /health says why.
    let (status, _, body) = raw_connect(&pag0, "127.0.0.1:443", Some(&basic("demo", DEMO_KEY)));
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "CONNECT_NOT_ALLOWED");
    let (status, health) = pag0.admin(reqwest::Method::GET, "/health").await;
    assert_eq!(status, 503, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["dependencies"]["local_ca"]["status"], "down");
}

/// An agent's next tunnel to a host resumes its TLS session (no new certificate, no
/// signature); a session cannot be carried to a tunnel for another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_to_one_host_resume_tls_sessions_and_only_there() {
    let ca = UpstreamCa::new();
    let up = Upstream::start_tls(ca.pki.server_config.clone()).await;
    let pag0 = Pag0::start(&config(&ca, ""));
    let client = client_config(&pag0);
    let auth = format!("Proxy-Authorization: {}", basic("demo", DEMO_KEY));
    let name = || rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let target = format!("localhost:{}", up.addr.port());
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut tls = tunnel_tls(&pag0, &target, name(), &auth, client.clone())
            .await
            .unwrap();
        let answer = exchange_inside(
            &mut tls,
            "GET /resume HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds[0], Some(Full), "{kinds:?}");
    assert!(kinds[1..].iter().all(|k| *k == Some(Resumed)), "{kinds:?}");

    // The client holds sessions for "localhost"; a tunnel to 127.0.0.1 (another host, its own
    // session store) offering them with SNI localhost gets a full handshake, refused on SNI.
    let other = format!("127.0.0.1:{}", up.addr.port());
    assert!(
        tunnel_tls(&pag0, &other, name(), &auth, client.clone())
            .await
            .is_err()
    );
    let m = metrics(&pag0).await;
    assert!(
        m.contains(r#"pag0_tunnels_total{kind="intercept",outcome="sni_refused"} 1"#),
        "{m}"
    );
    assert_eq!(up.seen().requests, 3);
}
