//! pag0 as a child process: for crash tests (SIGKILL) and for reading what it logs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// pag0 as a child process (so it can be killed with SIGKILL, or its log read), on the SQLite
/// file in `dir`.
pub struct Process {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl Process {
    /// Starts `pag0 -c` on a config with `body` in `dir`; its stderr goes to `dir/pag0.log`.
    pub fn start_env(dir: &tempfile::TempDir, body: &str, env: &[(&str, &str)]) -> Process {
        Self::start_server(dir, body, "", env)
    }

    /// Like [`Process::start_env`], with extra keys for the `server:` section (indented).
    pub fn start_server(
        dir: &tempfile::TempDir,
        body: &str,
        server_extra: &str,
        env: &[(&str, &str)],
    ) -> Process {
        Self::start_limited(dir, body, server_extra, env, None)
    }

    /// Like [`Process::start_server`]; with `nofile`, pag0 may open at most that many
    /// descriptors (`RLIMIT_NOFILE`, soft and hard).
    pub fn start_limited(
        dir: &tempfile::TempDir,
        body: &str,
        server_extra: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Process {
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("pag0.yaml");
        let text = Pag0::config_text_with(dir, proxy, admin, body, server_extra);
        std::fs::write(&config, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("pag0.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_pag0"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .args(["-c", config.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(admin).is_err()
            || std::net::TcpStream::connect(proxy).is_err()
        {
            assert!(Instant::now() < deadline, "pag0 did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Process {
            child,
            proxy,
            admin,
        }
    }

    pub fn client(&self) -> reqwest::Client {
        self.client_as("demo", DEMO_KEY)
    }

    /// A client of project `user` with its key `key`.
    pub fn client_as(&self, user: &str, key: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("http://{user}:{key}@{}", self.proxy)).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `/metrics` once `done` accepts it (or after about 2.5 s, for the caller's assertion).
    pub async fn metrics_until(&self, done: impl Fn(&String) -> bool) -> String {
        let url = format!("http://{}/metrics", self.admin);
        eventually(
            || async {
                let resp = reqwest::Client::new()
                    .get(&url)
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                resp.text().await.unwrap()
            },
            done,
        )
        .await
    }

    /// SIGTERM, then waits for the exit (requests in flight finish, queues are drained).
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "pag0 did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown, no flush, nothing drained.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that ends (or fails) never leaves its pag0 running.
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
