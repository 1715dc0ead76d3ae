//! Private instances of the services tests break on purpose (never the shared ones).

use std::time::Duration;

/// A private redis-server on a free port, killed on drop.
pub struct PrivateRedis {
    child: std::process::Child,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        Self::start_on(super::free_port())
    }

    pub fn start_on(port: u16) -> PrivateRedis {
        Self::start_with(port, &[])
    }

    /// A private redis-server on `port` with extra command-line options.
    pub fn start_with(port: u16, options: &[&str]) -> PrivateRedis {
        let mut child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(options)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/test)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return PrivateRedis { child, port };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let exited = child.try_wait().ok().flatten();
        let _ = child.kill();
        let _ = child.wait();
        panic!("private redis-server on port {port} did not start (exited: {exited:?})");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL database on the shared server, dropped at the end.
pub struct TempDatabase {
    name: String,
}

impl TempDatabase {
    pub async fn create() -> TempDatabase {
        let name = format!("pag0_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (see .ci/test)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        TempDatabase { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    pub async fn drop_now(self) {
        let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await;
    }
}

/// A TCP relay to a real server that a test can cut (every connection closed, new ones
/// refused) and restore: the server behind it "goes away" for pag0 without being touched.
pub struct Relay {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_up, conns) = (up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !is_up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay {
            port,
            up,
            connections,
            accept,
        }
    }

    /// Closes every relayed connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A Redis Cluster of three primaries on loopback ports, private to one test (each node a
/// `redis-server --cluster-enabled yes`, joined with `redis-cli --cluster create`).
pub struct PrivateCluster {
    nodes: Vec<PrivateRedis>,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<PrivateRedis> = (0..3)
            .map(|_| {
                let port = super::free_port();
                // The bus port is handed out by the same allocator: the default (port + 10 000)
                // may be a port another test of this binary was given.
                let bus = super::free_port().to_string();
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                PrivateRedis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--dir",
                        dir.path().to_str().unwrap(),
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (see .ci/test)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for _ in 0..200 {
            if nodes
                .iter()
                .all(|n| n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return PrivateCluster { nodes, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the private Redis Cluster never became ok");
    }

    /// The YAML list of seed node URLs.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        format!("[{}]", urls.join(", "))
    }

    /// Keys held by all primaries together.
    pub fn keys(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.cmd(&["DBSIZE"]).parse::<usize>().unwrap_or(0))
            .sum()
    }
}
