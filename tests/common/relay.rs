//! A JSON-RPC relay in front of anvil: what pag0 sees as its RPC. It can be switched off (an
//! RPC outage, without losing the chain's state) and it can stop right at a broadcast (for
//! SIGKILL tests at the moment a transaction is sent).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// What the relay does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forwards everything.
    Up = 0,
    /// Closes every connection without an answer (the RPC is down).
    Down = 1,
    /// Forwards, but never answers an `eth_sendRawTransaction` *after* forwarding it (the
    /// node has the transaction; its sender never hears back).
    SwallowAfterSend = 2,
    /// Never forwards nor answers an `eth_sendRawTransaction` (signed and stored, never
    /// broadcast).
    DropSend = 3,
}

pub struct Relay {
    pub url: String,
    mode: Arc<AtomicU8>,
    sends: Arc<AtomicUsize>,
    sent: Arc<Notify>,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Up as u8));
        let sends = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Notify::new());
        let client = reqwest::Client::new();
        let target = target.to_string();
        let (m, n, s) = (mode.clone(), sends.clone(), sent.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                if m.load(Ordering::SeqCst) == Mode::Down as u8 {
                    drop(stream);
                    continue;
                }
                let (m, n, s, client, target) = (
                    m.clone(),
                    n.clone(),
                    s.clone(),
                    client.clone(),
                    target.clone(),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (m, n, s, client, target) = (
                            m.clone(),
                            n.clone(),
                            s.clone(),
                            client.clone(),
                            target.clone(),
                        );
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map_err(std::io::Error::other)?
                                .to_bytes();
                            let mode = m.load(Ordering::SeqCst);
                            let is_send = std::str::from_utf8(&body)
                                .is_ok_and(|b| b.contains("eth_sendRawTransaction"));
                            if mode == Mode::Down as u8 {
                                return Err(std::io::Error::other("down"));
                            }
                            if is_send && mode == Mode::DropSend as u8 {
                                n.fetch_add(1, Ordering::SeqCst);
                                s.notify_waiters();
                                std::future::pending::<()>().await;
                            }
                            let answer = client
                                .post(&target)
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await
                                .map_err(std::io::Error::other)?
                                .bytes()
                                .await
                                .map_err(std::io::Error::other)?;
                            if is_send {
                                n.fetch_add(1, Ordering::SeqCst);
                                s.notify_waiters();
                                if mode == Mode::SwallowAfterSend as u8 {
                                    std::future::pending::<()>().await;
                                }
                            }
                            Ok::<_, std::io::Error>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(answer))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Relay {
            url: format!("http://{addr}"),
            mode,
            sends,
            sent,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// `eth_sendRawTransaction` requests seen.
    pub fn sends(&self) -> usize {
        self.sends.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` `eth_sendRawTransaction` requests were seen.
    pub async fn until_sends(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.sends() < n {
            assert!(tokio::time::Instant::now() < deadline, "no broadcast came");
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(50), self.sent.notified())
                    .await;
        }
    }
}
