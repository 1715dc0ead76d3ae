//! Helper for `benches/connect.sh` (run with `cargo bench --bench connect -- <command>`):
//!
//! * `upstream <addr> <ca-file>`: an HTTPS upstream for `localhost` (its own test CA, written to
//!   `ca-file`) answering every request with 64 bytes, cacheable for 5 minutes; until killed.
//! * `plain-upstream <addr>`: the same in plain HTTP.
//! * `load <url> <ca-file> <conns> <seconds> <pace-ms> [<proxy> <project:key> [absolute]]`:
//!   keep-alive HTTPS GETs on `conns` connections, each through its own CONNECT tunnel when a
//!   proxy is given (else straight to the upstream), each waiting `pace-ms` between requests
//!   (0: closed loop). With `absolute`, plain HTTP to the proxy with absolute-form
//!   `https://` targets instead (pag0 does TLS upstream only). Prints `req/s p99_ms errors`.
//!   One thread, like `wrk -t1`; one TLS client configuration (and session cache) for all
//!   connections, like one agent process. With `BENCH_FRESH=1` every request opens its own
//!   connection (and tunnel), and its latency includes opening it. An `http://` URL is loaded
//!   in plain HTTP: inside the CONNECT tunnel (what Node's proxy agents do), or absolute-form
//!   to the proxy with `absolute` (`ca-file` is then unused).
//! * `mint <n>`: time to mint one leaf certificate with pag0's local CA.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;

const BODY: &str = "0123456789012345678901234567890123456789012345678901234567890123";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("upstream") => runtime().block_on(upstream(arg(1), Some(arg(2)))),
        Some("plain-upstream") => runtime().block_on(upstream(arg(1), None)),
        Some("load") => {
            let pace = Duration::from_millis(arg(5).parse().unwrap_or(0));
            let proxy = args.get(6).map(|p| Proxy {
                addr: p.clone(),
                credentials: arg(7),
                absolute: arg(8) == "absolute",
            });
            let (rps, p99, errors) = runtime().block_on(load(
                arg(1),
                arg(2),
                arg(3).parse().unwrap_or(50),
                Duration::from_secs(arg(4).parse().unwrap_or(10)),
                pace,
                proxy,
            ));
            println!("{rps:.0} {p99:.3} {errors}");
        }
        Some("mint") => mint(arg(1).parse().unwrap_or(200)),
        _ => eprintln!(
            "usage: connect upstream <addr> <ca-file> | connect load <url> <ca-file> <conns> <seconds> <pace-ms> [<proxy> <project:key>] | connect mint <n>"
        ),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves the 64-byte answer on `addr`: over TLS for `localhost` when `ca_file` is given (the
/// test CA is written there), in plain HTTP otherwise.
async fn upstream(addr: String, ca_file: Option<String>) {
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let Some(ca_file) = ca_file else {
        eprintln!("HTTP upstream on {}", listener.local_addr().unwrap());
        loop {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(answer(tcp));
            }
        }
    };
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    eprintln!("HTTPS upstream on {}", listener.local_addr().unwrap());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            if let Ok(tls) = acceptor.accept(tcp).await {
                answer(tls).await;
            }
        });
    }
}

/// Answers every (bodiless GET) request on `stream` with the 64-byte body.
async fn answer(stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite) {
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: max-age=300\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut line = String::new();
    loop {
        // Requests are bodiless GETs: read the head, answer.
        loop {
            line.clear();
            match read.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[derive(Clone)]
struct Proxy {
    addr: String,
    credentials: String,
    /// Plain HTTP to the proxy with absolute-form targets (no CONNECT).
    absolute: bool,
}

impl Proxy {
    fn authorization(&self) -> String {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(&self.credentials);
        format!("Basic {auth}")
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One keep-alive connection: through a CONNECT tunnel when `proxy` is set; TLS inside unless
/// `client` is `None` (plain HTTP).
async fn open(
    host: &str,
    port: u16,
    client: Option<&Arc<rustls::ClientConfig>>,
    proxy: Option<&Proxy>,
) -> std::io::Result<Box<dyn Io>> {
    let mut tcp = match proxy {
        Some(proxy) => tokio::net::TcpStream::connect(&proxy.addr).await?,
        None => tokio::net::TcpStream::connect((host, port)).await?,
    };
    tcp.set_nodelay(true)?;
    if let Some(proxy) = proxy {
        if proxy.absolute {
            return Ok(Box::new(tcp));
        }
        let auth = proxy.authorization();
        tcp.write_all(
            format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: {auth}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&head).to_string(),
            ));
        }
    }
    let Some(client) = client else {
        return Ok(Box::new(tcp));
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// Sends one GET and reads the (Content-Length framed) answer; returns its status.
async fn get(tls: &mut BufReader<Box<dyn Io>>, request: &[u8]) -> std::io::Result<u16> {
    tls.get_mut().write_all(request).await?;
    let mut line = String::new();
    let mut status = 0;
    let mut length = 0usize;
    loop {
        line.clear();
        if tls.read_line(&mut line).await? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        if status == 0 {
            status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if line == "\r\n" {
            break;
        } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).await?;
    Ok(status)
}

async fn load(
    url: String,
    ca_file: String,
    conns: usize,
    duration: Duration,
    pace: Duration,
    proxy: Option<Proxy>,
) -> (f64, f64, usize) {
    let url = url::Url::parse(&url).unwrap();
    let host = url.host_str().unwrap().to_string();
    let port = url.port_or_known_default().unwrap();
    let request = match &proxy {
        Some(p) if p.absolute => format!(
            "GET {url} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: {}\r\n\r\n",
            p.authorization()
        ),
        _ => format!(
            "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n",
            &url[url::Position::BeforePath..]
        ),
    }
    .into_bytes();
    let client = (url.scheme() == "https").then(|| {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&ca_file).unwrap();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    let fresh = std::env::var("BENCH_FRESH").is_ok_and(|v| v == "1");
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (host, client, proxy, request) =
            (host.clone(), client.clone(), proxy.clone(), request.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let opened = Instant::now();
                let Ok(tls) = open(&host, port, client.as_ref(), proxy.as_ref()).await else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut tls = BufReader::new(tls);
                while Instant::now() < deadline {
                    let sent = if fresh { opened } else { Instant::now() };
                    match get(&mut tls, &request).await {
                        Ok(200) => latencies.push(sent.elapsed().as_micros() as u32),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                    if fresh {
                        break;
                    }
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (latencies, e) = done.unwrap();
        all.extend(latencies);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let p99 = all
        .get((all.len() * 99 / 100).min(all.len().saturating_sub(1)))
        .map_or(0.0, |us| *us as f64 / 1000.0);
    (all.len() as f64 / elapsed, p99, errors)
}

fn mint(n: u32) {
    let dir = tempfile::tempdir().unwrap();
    let (interceptor, _) = pag0::intercept::Interceptor::load_or_create(dir.path(), 16).unwrap();
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(interceptor.mint(&format!("host{i}.example.com")).unwrap());
    }
    let per = start.elapsed() / n;
    println!(
        "leaf mint per host: {:.1} us ({n} iterations)",
        per.as_secs_f64() * 1e6
    );
}
