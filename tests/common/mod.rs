//! Test harness: pag0 in-process on ephemeral ports, and small real upstream servers.
#![allow(dead_code)]

pub mod chain;
pub mod facilitator;
pub mod paywall;
pub mod process;
pub mod relay;
pub mod services;
pub mod webhook;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// The demo project's dev-only key (its hash is in conf/pag0.yaml).
pub const DEMO_KEY: &str = "pag0_demo_dev_only_key";
pub const DEMO_HASH: &str =
    "sha256:79f8ca837c673888f582d0c8204f8b6ab31c8b0a7930512e94a4bd0a518bf83a";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Where [`free_port`] hands out ports: below Linux's ephemeral range (32768–60999), so no
/// listener bound to port 0 and no outgoing connection can take one between the check and
/// the bind by pag0 (or a private Redis).
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port that was free a moment ago and that no other call in this process has returned.
///
/// Asking the kernel for port 0 and closing the socket is racy here: two calls can return the
/// same port, and a concurrent test's port-0 listener can take it before pag0 binds it (a
/// test then talks to another test's server). The counter starts at a per-process offset so
/// test binaries run side by side rarely meet.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    let span = usize::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(
        usize::MAX,
        std::process::id() as usize * 97 % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = TEST_PORTS.start + offset as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}")
}

fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct TestShutdown(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for TestShutdown {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A running pag0. Dropping it shuts it down.
pub struct Pag0 {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pag0 {
    /// Starts pag0 with `body` (YAML sections other than `server` and `admin`).
    pub fn start(body: &str) -> Pag0 {
        Self::start_with(body, "")
    }

    /// Like [`start`], with extra keys for the `server:` section (indented by the caller).
    pub fn start_with(body: &str, server_extra: &str) -> Pag0 {
        let dir = tempfile::tempdir().unwrap();
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.path().join("pag0.yaml");
        std::fs::write(
            &config_path,
            Self::yaml(&dir, proxy, admin, body, server_extra),
        )
        .unwrap();
        let config = pag0::config::load(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let built =
            pag0::server::build(config, Some(config_path.clone()), &Default::default()).unwrap();
        let stop = Arc::new(Notify::new());
        let signal = TestShutdown(stop.clone());
        let thread = std::thread::spawn(move || {
            built.run(RunArgs {
                shutdown_signal: Box::new(signal),
            })
        });
        wait_for_port(proxy);
        wait_for_port(admin);
        Pag0 {
            proxy,
            admin,
            config_path,
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// The config file text [`Pag0::start`] writes (for tests that run pag0 as a process).
    pub fn config_text(
        dir: &tempfile::TempDir,
        proxy: SocketAddr,
        admin: SocketAddr,
        body: &str,
    ) -> String {
        Self::yaml(dir, proxy, admin, body, "")
    }

    /// [`Pag0::config_text`] with extra keys for the `server:` section.
    pub fn config_text_with(
        dir: &tempfile::TempDir,
        proxy: SocketAddr,
        admin: SocketAddr,
        body: &str,
        server_extra: &str,
    ) -> String {
        Self::yaml(dir, proxy, admin, body, server_extra)
    }

    /// The keys of `server:` come from `server_extra`; a line `admin:` in it starts the extra
    /// keys of the `admin:` section.
    fn yaml(
        dir: &tempfile::TempDir,
        proxy: SocketAddr,
        admin: SocketAddr,
        body: &str,
        server_extra: &str,
    ) -> String {
        let (server_extra, admin_extra) = server_extra
            .split_once("admin:\n")
            .unwrap_or((server_extra, ""));
        let d = dir.path().display();
        // `server_extra` may set the grace period itself.
        let grace = if server_extra.contains("grace_period_seconds") {
            ""
        } else {
            "  grace_period_seconds: 0\n"
        };
        format!(
            "server:\n  listen: [\"{proxy}\"]\n  threads: 2\n  pid_file: {d}/pag0.pid\n  upgrade_sock: {d}/upgrade.sock\n{grace}  graceful_shutdown_timeout_seconds: 1\n{server_extra}\nadmin:\n  listen: {admin}\n  token: ${{PAG0_TEST_ADMIN_TOKEN:-{ADMIN_TOKEN}}}\n{admin_extra}{body}\n"
        )
    }

    /// Rewrites the config file with a new body (server/admin sections unchanged).
    pub fn rewrite(&self, body: &str) {
        std::fs::write(
            &self.config_path,
            Self::yaml(&self.dir, self.proxy, self.admin, body, ""),
        )
        .unwrap();
    }

    /// A reqwest client using pag0 as its HTTP proxy with `user:key` credentials.
    pub fn client(&self, user: &str, key: &str) -> reqwest::Client {
        let proxy = reqwest::Proxy::all(format!("http://{user}:{key}@{}", self.proxy)).unwrap();
        reqwest::Client::builder()
            .proxy(proxy)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// GET (or POST) an admin endpoint with the admin token.
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// Calls `probe` until `done` accepts its value, for at most about 2.5 s (journal writes and
/// budget commits land just after the responses); returns the last value either way, for the
/// caller's assertion.
pub async fn eventually<T, F: std::future::Future<Output = T>>(
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    for _ in 0..50 {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probe().await
}

/// `probe` until `done` accepts its value, for up to `secs` seconds (for what takes longer
/// than [`eventually`]'s 2.5 s, like a chain); the last value is returned for the caller's
/// assertion.
pub async fn until<T, F: std::future::Future<Output = T>>(
    secs: u64,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let value = probe().await;
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Pag0 {
    /// Calls an admin endpoint with the admin token and an optional JSON body; returns the
    /// status and the JSON answer (`Null` if the body is not JSON).
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Pag0 {
    /// GET an admin endpoint with the admin token; the JSON answer (`Null` if not JSON).
    pub async fn admin_get(&self, path: &str) -> Value {
        self.admin_json(reqwest::Method::GET, path, None).await.1
    }
}

impl Drop for Pag0 {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The project section every test uses unless it needs something else.
pub fn demo_project() -> String {
    format!("projects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n")
}

/// What the echo upstream saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub requests: usize,
    pub connections: usize,
    pub sni: Vec<Option<String>>,
}

/// A real HTTP/1.1 upstream. Every response echoes the request as JSON:
/// `{method, path, headers, body_len, body_sha256}`. `/delay/<ms>` waits first;
/// `/status/<code>` answers with that status.
pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_inner(None, "127.0.0.1:0").await
    }

    /// On a given address (e.g. one that refused connections until now).
    pub async fn start_at(addr: SocketAddr) -> Upstream {
        Self::start_inner(None, &addr.to_string()).await
    }

    pub async fn start_tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Upstream {
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(tls)), "127.0.0.1:0").await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>, bind: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let sni = Arc::new(Mutex::new(Vec::new()));
        let (r, c, s) = (requests.clone(), connections.clone(), sni.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, s, tls) = (r.clone(), s.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| echo(req, r.clone()));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(tls_stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            s.lock()
                                .unwrap()
                                .push(tls_stream.get_ref().1.server_name().map(str::to_string));
                            let _ = builder
                                .serve_connection(TokioIo::new(tls_stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            requests,
            connections,
            sni,
        }
    }

    pub fn seen(&self) -> Seen {
        Seen {
            requests: self.requests.load(Ordering::SeqCst),
            connections: self.connections.load(Ordering::SeqCst),
            sni: self.sni.lock().unwrap().clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn echo(
    req: Request<hyper::body::Incoming>,
    requests: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let json = json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex::encode(Sha256::digest(&body)),
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Sends one raw request to pag0 and reads the (Content-Length framed) response.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, Value) {
    raw_sequence(addr, &[request]).remove(0)
}

/// Sends raw requests one after another on ONE connection, reading each response before
/// writing the next request (keep-alive, not pipelining).
pub fn raw_sequence(addr: SocketAddr, requests: &[&[u8]]) -> Vec<(u16, String, Value)> {
    let mut stream = raw_connection(addr);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for request in requests {
        stream.write_all(request).unwrap();
        out.push(next_response(&mut stream, &mut buf, out.len()));
    }
    out
}

/// Sends raw requests in ONE write (HTTP/1.1 pipelining) and reads as many responses, in the
/// order they arrive.
pub fn raw_pipelined(addr: SocketAddr, requests: &[&[u8]]) -> Vec<(u16, String, Value)> {
    let mut stream = raw_connection(addr);
    stream.write_all(&requests.concat()).unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < requests.len() {
        out.push(next_response(&mut stream, &mut buf, out.len()));
    }
    out
}

fn raw_connection(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The next (Content-Length framed) response on `stream`; `buf` keeps bytes read past it.
fn next_response(stream: &mut TcpStream, buf: &mut Vec<u8>, seen: usize) -> (u16, String, Value) {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some((resp, used)) = parse_response(buf) {
            buf.drain(..used);
            return resp;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed after {seen} responses");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The first (Content-Length framed) response in `buf`: status, head, JSON body (`Null` if it
/// is not JSON), and how many bytes it took; `None` until it is complete.
pub fn parse_response(buf: &[u8]) -> Option<((u16, String, Value), usize)> {
    let text = std::str::from_utf8(buf).ok()?;
    let head_end = text.find("\r\n\r\n")?;
    let head = &text[..head_end];
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let total = head_end + 4 + len;
    if buf.len() < total {
        return None;
    }
    let body = &text[head_end + 4..total];
    Some((
        (
            status,
            head.to_string(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ),
        total,
    ))
}

/// `Basic` credentials for `Proxy-Authorization`.
pub fn basic(user: &str, key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
    )
}

/// A test CA and a `localhost` leaf certificate signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub server_config: Arc<tokio_rustls::rustls::ServerConfig>,
}

pub fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pag0 test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(server_config),
    }
}
