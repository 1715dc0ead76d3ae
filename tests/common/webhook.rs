//! A small real HTTP webhook receiver for approval and alert tests: records every JSON body
//! and answers according to its [`Answer`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Approve,
    Deny(&'static str),
    /// Answers approve, but only after this long.
    Slow(Duration),
    Status(u16),
}

/// Received bodies with their Authorization header.
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

pub struct Hook {
    pub addr: SocketAddr,
    received: Received,
}

impl Hook {
    pub async fn start(answer: Answer) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Received = Arc::default();
        let seen = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        let answer = answer.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap_or("").to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            seen.lock().unwrap().push((auth, value));
                            let (status, body) = match answer {
                                Answer::Approve => (200, json!({"approved": true})),
                                Answer::Deny(reason) => {
                                    (200, json!({"approved": false, "reason": reason}))
                                }
                                Answer::Slow(d) => {
                                    tokio::time::sleep(d).await;
                                    (200, json!({"approved": true}))
                                }
                                Answer::Status(s) => (s, json!({"error": "nope"})),
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every body received so far, with its Authorization header.
    pub fn received(&self) -> Vec<(Option<String>, Value)> {
        self.received.lock().unwrap().clone()
    }
}
