//! Every common agent runtime works through pag0 unchanged. Each client is pointed at pag0 the
//! way its users normally do it (environment variables where it reads them) and trusts pag0's
//! CA the usual way; it fetches a free `http://` API, a free `https://` API and a paid x402
//! API over both (the test paywall, plain and TLS), then the free `https://` one again. For
//! each client: 200 with the right body, each paid call paid exactly once at the paywall, the
//! free calls never paid, and one tunnel per host where the client keeps connections alive.
//!
//! The clients live in `tests/clients/` (Python, Node.js, Go); curl and reqwest run from here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::paywall::{self, Paywall};
use common::*;

/// pag0 with the payment stage, trusting the TLS paywall's CA, any CONNECT port (the test
/// APIs listen on random ports).
struct Setup {
    pag0: Pag0,
    plain: Paywall,
    tls: Paywall,
    _upstream_ca: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let pki = test_pki();
        let upstream_ca = tempfile::tempdir().unwrap();
        let ca_file = upstream_ca.path().join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let plain = Paywall::start().await;
        let tls = Paywall::start_tls(pki.server_config.clone()).await;
        let body = format!(
            "upstream:\n  trust:\n    - hosts: [localhost]\n      ca_file: {}\nconnect:\n  ports: [\"*\"]\n{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n",
            ca_file.display(),
            paywall::payments_yaml(),
            paywall::WALLET_KEY,
        );
        Setup {
            pag0: Pag0::start(&body),
            plain,
            tls,
            _upstream_ca: upstream_ca,
        }
    }

    /// Free http, free https, paid http, paid https, free https again.
    fn urls(&self) -> Vec<String> {
        vec![
            self.plain.url("/free"),
            self.tls.url("/free"),
            self.plain.url("/paid"),
            self.tls.url("/paid"),
            self.tls.url("/free"),
        ]
    }

    fn proxy_url(&self) -> String {
        format!("http://demo:{DEMO_KEY}@{}", self.pag0.proxy)
    }

    fn pag0_ca(&self) -> PathBuf {
        self.pag0.dir.path().join("pag0-ca/ca.crt")
    }

    /// The environment a user sets: proxy variables in both cases, every usual CA variable.
    fn env(&self) -> Vec<(&'static str, String)> {
        let proxy = self.proxy_url();
        let ca = self.pag0_ca().display().to_string();
        vec![
            ("HTTP_PROXY", proxy.clone()),
            ("HTTPS_PROXY", proxy.clone()),
            ("http_proxy", proxy.clone()),
            ("https_proxy", proxy),
            ("NO_PROXY", String::new()),
            ("no_proxy", String::new()),
            ("CURL_CA_BUNDLE", ca.clone()),
            ("REQUESTS_CA_BUNDLE", ca.clone()),
            ("SSL_CERT_FILE", ca.clone()),
            ("NODE_EXTRA_CA_CERTS", ca),
        ]
    }

    /// TLS tunnels opened so far (the https requests' connections).
    async fn tls_tunnels(&self) -> u64 {
        let (_, m) = self.pag0.admin(reqwest::Method::GET, "/metrics").await;
        m.lines()
            .find_map(|l| {
                l.strip_prefix(r#"pag0_tunnels_total{kind="intercept",outcome="opened"} "#)
            })
            .map_or(0, |v| v.parse().unwrap())
    }

    /// Runs one client (`lines` produces its output lines) and checks what it got and what
    /// it cost. `reuses`: the client keeps connections alive, so its three https requests to
    /// one host share tunnels (undici opens a second connection while its first is still
    /// settling: at most two).
    async fn check<F>(&self, name: &str, reuses: bool, lines: F)
    where
        F: std::future::Future<Output = Vec<String>>,
    {
        let (paid_before, tls_paid_before) = (self.plain.stats().paid, self.tls.stats().paid);
        let headers_before =
            self.plain.stats().payment_headers.len() + self.tls.stats().payment_headers.len();
        let tunnels_before = self.tls_tunnels().await;
        let got = lines.await;
        let expected = [
            "200 false /free",
            "200 false /free",
            "200 true /paid",
            "200 true /paid",
            "200 false /free",
        ];
        assert_eq!(got, expected, "{name}");
        assert_eq!(
            (
                self.plain.stats().paid - paid_before,
                self.tls.stats().paid - tls_paid_before
            ),
            (1, 1),
            "{name}: each paid call paid exactly once"
        );
        let headers =
            self.plain.stats().payment_headers.len() + self.tls.stats().payment_headers.len();
        assert_eq!(
            headers - headers_before,
            2,
            "{name}: only the paid calls carried a payment"
        );
        let tunnels = self.tls_tunnels().await - tunnels_before;
        if reuses {
            assert!(
                (1..=2).contains(&tunnels),
                "{name}: {tunnels} tunnels for 3 https requests to one host (keep-alive)"
            );
        } else {
            assert_eq!(tunnels, 3, "{name}: a tunnel per https request");
        }
    }

    /// Runs `program args` with the user environment; its stdout lines.
    async fn run(&self, program: &str, args: &[&str], extra: &[(&str, String)]) -> Vec<String> {
        let out = tokio::process::Command::new(program)
            .args(args)
            .envs(self.env())
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("{program} is not installed (.ci/bootstrap): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().map(str::to_string).collect()
    }
}

fn script(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn node_modules() -> String {
    script("target/tools/node_modules")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl() {
    let s = Setup::start().await;
    let urls = s.urls();
    let mut args = vec![
        "-sS",
        "--write-out",
        "\n%{http_code} %header{x-pag0-paid}\n",
    ];
    args.extend(urls.iter().map(String::as_str));
    s.check("curl", true, async {
        // curl prints each body, then our line: status and the header.
        let out = s.run("curl", &args, &[]).await;
        out.chunks(2)
            .map(|pair| {
                let body: serde_json::Value = serde_json::from_str(&pair[0]).unwrap();
                format!("{} {}", pair[1], body["path"].as_str().unwrap())
            })
            .collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients() {
    let s = Setup::start().await;
    let urls = s.urls();
    let py = script("tests/clients/python.py");
    for (client, reuses) in [
        ("requests", true),
        ("httpx", true),
        ("aiohttp", true),
        ("urllib", false),
    ] {
        let mut args = vec![py.as_str(), client];
        args.extend(urls.iter().map(String::as_str));
        s.check(client, reuses, s.run("python3", &args, &[])).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_clients() {
    let s = Setup::start().await;
    let urls = s.urls();
    let js = script("tests/clients/node.js");
    let env = [("NODE_PATH", node_modules())];
    for client in ["undici-proxy-agent", "undici-env", "node-http"] {
        let mut args = vec![js.as_str(), client];
        args.extend(urls.iter().map(String::as_str));
        s.check(client, true, s.run("node", &args, &env)).await;
    }
    // undici tunnels http:// URLs too (CONNECT, then plain HTTP inside): once per client.
    let (_, m) = s.pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert!(
        m.contains(r#"pag0_tunnels_total{kind="plain",outcome="opened"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http() {
    let s = Setup::start().await;
    let urls = s.urls();
    let main = script("tests/clients/go/main.go");
    let mut args = vec!["run", main.as_str()];
    args.extend(urls.iter().map(String::as_str));
    let env = [
        ("GOCACHE", script("target/tools/go-cache")),
        ("GOPATH", script("target/tools/go")),
        ("GO111MODULE", "off".to_string()),
    ];
    s.check("go", true, s.run("go", &args, &env)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_reqwest() {
    let s = Setup::start().await;
    let ca = std::fs::read(s.pag0_ca()).unwrap();
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(s.proxy_url()).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    s.check("reqwest", true, async {
        let mut lines = Vec::new();
        for url in s.urls() {
            let resp = client.get(&url).send().await.unwrap();
            let status = resp.status().as_u16();
            let paid = resp
                .headers()
                .get("x-pag0-paid")
                .map_or("-".to_string(), |v| v.to_str().unwrap().to_string());
            let body: serde_json::Value = resp.json().await.unwrap();
            lines.push(format!(
                "{status} {paid} {}",
                body["path"].as_str().unwrap()
            ));
        }
        lines
    })
    .await;
}
