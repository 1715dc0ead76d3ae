//! A small real x402 facilitator for tests: `GET /supported`, and `POST /verify` that checks the
//! payload against the requirements (value = amount, accepted = requirements) and answers
//! `isValid` (or, when told to, `insufficient_funds`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub struct TestFacilitator {
    pub addr: SocketAddr,
    verifies: Arc<AtomicUsize>,
    valid: Arc<AtomicBool>,
}

impl TestFacilitator {
    pub async fn start() -> TestFacilitator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let verifies = Arc::new(AtomicUsize::new(0));
        let valid = Arc::new(AtomicBool::new(true));
        let (v, ok) = (verifies.clone(), valid.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (v, ok) = (v.clone(), ok.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, v.clone(), ok.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestFacilitator {
            addr,
            verifies,
            valid,
        }
    }

    pub fn verifies(&self) -> usize {
        self.verifies.load(Ordering::SeqCst)
    }

    pub fn set_valid(&self, valid: bool) {
        self.valid.store(valid, Ordering::SeqCst);
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    verifies: Arc<AtomicUsize>,
    valid: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = match path.as_str() {
        "/supported" => {
            json!({"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:84532"}]})
        }
        "/verify" => {
            verifies.fetch_add(1, Ordering::SeqCst);
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let payload = &v["paymentPayload"];
            let reqs = &v["paymentRequirements"];
            let consistent = payload["payload"]["authorization"]["value"] == reqs["amount"]
                && payload["accepted"] == *reqs;
            if !consistent {
                json!({"isValid": false, "invalidReason": "invalid_payload"})
            } else if valid.load(Ordering::SeqCst) {
                json!({"isValid": true, "payer": payload["payload"]["authorization"]["from"]})
            } else {
                json!({"isValid": false, "invalidReason": "insufficient_funds"})
            }
        }
        _ => json!({"error": "not found"}),
    };
    let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}
