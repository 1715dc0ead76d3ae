//! `pag0 demo` and the README's quickstart: the commands the demo prints, and the ones the
//! README shows (the same lines), run as written in a shell against `pag0 demo` on free ports,
//! give a paid call, a cache hit, a budget refusal, a 407, an SSRF refusal and the spend.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

/// A running `pag0 demo` (killed on drop) and the commands it printed.
struct Demo {
    child: std::process::Child,
    printed: Vec<String>,
    listen: SocketAddr,
    admin: SocketAddr,
    api: SocketAddr,
}

impl Demo {
    fn start() -> Demo {
        let addr = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let (listen, admin, api) = (addr(), addr(), addr());
        let mut child = Command::new(env!("CARGO_BIN_EXE_pag0"))
            .args(["demo", "--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string(), "--api", &api.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        // The commands are the indented lines after "Try, in another terminal:".
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(command) = line.strip_prefix("  ") {
                printed.push(command.to_string());
            } else if !printed.is_empty() {
                break;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(listen).is_err()
            || std::net::TcpStream::connect(api).is_err()
        {
            assert!(Instant::now() < deadline, "pag0 demo did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Demo {
            child,
            printed,
            listen,
            admin,
            api,
        }
    }

    /// Runs `lines` in one bash, each command's output separated; returns the outputs.
    fn run(&self, lines: &[String]) -> Vec<String> {
        let mut script = String::from(
            "unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy NO_PROXY no_proxy\n",
        );
        for line in lines {
            script.push_str(line);
            script.push_str("\necho '<<end>>'\n");
        }
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout
            .split("<<end>>\n")
            .map(|s| s.to_ascii_lowercase())
            .collect()
    }

    /// The README's lines for the default ports, moved to this demo's ports.
    fn localise(&self, line: &str) -> String {
        line.replace("127.0.0.1:8402", &self.listen.to_string())
            .replace("127.0.0.1:9402", &self.admin.to_string())
            .replace("127.0.0.1:8403", &self.api.to_string())
    }
}

impl Drop for Demo {
    /// SIGINT, as a user's Ctrl-C: the demo removes its temporary directory on the way out.
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// What each of the eight commands must answer.
fn check(outputs: &[String]) {
    let has = |i: usize, what: &str| {
        assert!(
            outputs[i].contains(what),
            "command {i} should say {what:?}:\n{}",
            outputs[i]
        )
    };
    // 0, 1: the exports print nothing.
    has(2, "x-pag0-paid: true");
    has(2, "x-pag0-cost: 1000 usdc");
    has(2, "x-pag0-budget-remaining: daily=999000");
    has(3, "x-pag0-cache: hit");
    has(3, "x-pag0-saved: 1000 usdc");
    has(3, "x-pag0-paid: false");
    has(4, "x-pag0-policy: per_request_limit_exceeded");
    has(5, "407");
    has(6, "x-pag0-error: target_forbidden");
    has(7, r#""project":"demo""#);
}

#[test]
fn the_demo_shows_a_paid_call_a_cache_hit_and_a_refusal_as_printed() {
    let demo = Demo::start();
    assert_eq!(demo.printed.len(), 8, "{:?}", demo.printed);
    check(&demo.run(&demo.printed));
}

#[test]
fn the_readme_quickstart_is_true_when_typed() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let quickstart = readme.split("## Quickstart").nth(1).unwrap();
    let block = quickstart
        .split("```sh\n")
        .find(|b| b.starts_with("export HTTP_PROXY"))
        .expect("the quickstart's commands")
        .split("```")
        .next()
        .unwrap();
    let lines: Vec<&str> = block.lines().collect();
    // The README shows exactly what the demo prints (default ports).
    let default = |s: &str| s.parse::<SocketAddr>().unwrap();
    let printed = pag0::demo::commands(
        default("127.0.0.1:8402"),
        default("127.0.0.1:9402"),
        default("127.0.0.1:8403"),
    );
    assert_eq!(lines, printed, "README quickstart and `pag0 demo` differ");
    let demo = Demo::start();
    let local: Vec<String> = lines.iter().map(|l| demo.localise(l)).collect();
    check(&demo.run(&local));
}
