//! A small real x402 v2 paywall for tests. It verifies every payment on its own (EIP-712
//! recovery with alloy, not pag0's code), counts payments and answers with a receipt.
//!
//! Routes: `/free`; `/paid` (10000 units); `/multi` (three offers: an unknown asset at 1, 50000,
//! 20000); `/expensive` (500000); `/wrong-network` (eip155:1); `/always402` (verifies, then
//! refuses anyway); `/price-change` (10000, +5000 after every payment on it); `/slow-paid`
//! (10000, answers 800 ms after a valid payment); `/settling` (10000, answers 100–300 ms after a
//! valid payment, like a server that settles before it answers; the delay follows the nonce);
//! `/delayed` (free, answers after 100–300 ms: the same wait without a payment); `/paid-500` (10000, answers 500 without a receipt
//! after a valid payment); `/paid-stale` (10000, 200 with `max-age=1, stale-if-error=60`); `/expensive-empty` (a 402 with an empty body); `/unknown-asset` (an asset pag0 does not allow); `/huge-timeout`, `/zero-payto`, `/zero-amount`,
//! `/wrong-domain`, `/no-domain` (offers pag0 must decline); `/described` (10000, a v2 offer
//! with a description and Bazaar discovery metadata); `/flaky-paid` (20000, every second valid
//! payment gets a 500); `/paid-bad-tx` (10000, its receipt's transaction is
//! [`BAD_TX`], not a hash). Every route also
//! exists as x402 v1 under `/v1/...` (offer in the 402 JSON body, `X-PAYMENT`, network name
//! `base-sepolia`, `X-PAYMENT-RESPONSE`). Every 200 echoes `{method, path, body_len, body_sha256}`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct, sol};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

sol! {
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The test asset (Base Sepolia USDC's address and EIP-712 domain).
pub const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
pub const NETWORK: &str = "eip155:84532";
pub const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
/// Anvil test key #1 and its address (public dev key; never funded).
pub const WALLET_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const WALLET_ADDRESS: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

/// The `payments:` + wallet YAML that lets pag0 pay this paywall (ceiling 0.10 USDC).
/// What `/paid-bad-tx` reports as its settlement transaction.
pub const BAD_TX: &str = "javascript:alert('tx')//<img src=x onerror=alert(1)>";

pub fn payments_yaml() -> String {
    format!(
        "payments:\n  assets:\n    - network: {NETWORK}\n      address: \"{ASSET}\"\n      symbol: USDC\n      decimals: 6\n"
    )
}

#[derive(Debug, Default, Clone)]
pub struct PaywallStats {
    /// Requests that reached the paywall.
    pub requests: usize,
    /// Valid payments accepted (each with a fresh nonce).
    pub paid: usize,
    /// Payment headers that failed verification, with the reason.
    pub invalid: Vec<String>,
    /// Amounts of the accepted payments.
    pub amounts: Vec<U256>,
    /// Every payment header received, as sent (base64; not kept with verification off).
    pub payment_headers: Vec<String>,
    /// The `Idempotency-Key` of each request whose payment was accepted (`""` without one).
    pub paid_keys: Vec<String>,
}

impl PaywallStats {
    /// How many accepted payments carried `Idempotency-Key: key`.
    pub fn paid_for_key(&self, key: &str) -> usize {
        self.paid_keys.iter().filter(|k| *k == key).count()
    }
}

/// A token other than the default test asset (e.g. one deployed on anvil) that the paywall's
/// offers name instead, with their `maxTimeoutSeconds`.
#[derive(Clone)]
pub struct Token {
    /// CAIP-2.
    pub network: String,
    pub chain_id: u64,
    pub asset: String,
    pub max_timeout_seconds: u64,
    /// Settle accepted payments on this chain (anvil's URL) before answering, as a
    /// facilitator would, and report the real transaction. `/paid-unsettled` is never
    /// settled; `/paid-wrong-tx` is settled but reports the previous settlement's transaction.
    pub settle_rpc: Option<String>,
}

/// A payment the paywall accepted, with everything needed to settle it on chain.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
    /// 65 bytes r‖s‖v.
    pub signature: Vec<u8>,
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    accepted: Vec<Accepted>,
    /// Skip signature recovery and nonce tracking (benchmarks: keep the upstream cheap).
    skip_verify: bool,
    stats: PaywallStats,
    price_changes: u64,
    /// Valid payments on `/flaky-paid` so far.
    flaky_paid: u64,
    /// The last settlement made on chain (`Token::settle_rpc`).
    last_settled: Option<B256>,
    nonces: HashSet<(Address, B256)>,
}

pub struct Paywall {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` for a TLS paywall.
    origin: String,
    state: Arc<Mutex<State>>,
    /// The accept loop, which owns every connection: aborting it takes the paywall down.
    server: tokio::task::JoinHandle<()>,
}

fn offer(amount: u64, network: &str, asset: &str) -> Value {
    json!({
        "scheme": "exact", "network": network, "amount": amount.to_string(), "asset": asset,
        "payTo": PAY_TO, "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}
    })
}

/// The v1 form of a v2 offer entry (§2.1).
fn to_v1(offer: &Value, url: &str) -> Value {
    let mut o = offer.clone();
    let amount = o["amount"].take();
    let m = o.as_object_mut().unwrap();
    m.remove("amount");
    m.insert("maxAmountRequired".into(), amount);
    m.insert(
        "network".into(),
        json!(if offer["network"] == NETWORK {
            "base-sepolia"
        } else {
            "ethereum"
        }),
    );
    m.insert("resource".into(), json!(url));
    m.insert("description".into(), json!(""));
    m.insert("mimeType".into(), json!("application/json"));
    m.insert("outputSchema".into(), Value::Null);
    o
}

/// `/described`'s `resource.description`.
pub const DESCRIBED: &str = "Current weather for a city";

/// `/described`'s Bazaar discovery extension (`extensions.bazaar`).
pub fn described_bazaar() -> Value {
    json!({
        "info": {
            "input": {"type": "http", "method": "GET", "queryParams": {"city": "Paris"}},
            "output": {"type": "json", "example": {"temp_c": 21}}
        },
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "routeTemplate": "/described"
    })
}

fn offers_for(path: &str, price_changes: u64) -> Option<Vec<Value>> {
    Some(match path {
        "/price-change" => vec![offer(10_000 + 5_000 * price_changes, NETWORK, ASSET)],
        "/paid" | "/always402" | "/slow-paid" | "/settling" | "/paid-500" | "/paid-stale"
        | "/described" | "/paid-unsettled" | "/paid-wrong-tx" | "/paid-bad-tx" => {
            vec![offer(10_000, NETWORK, ASSET)]
        }
        "/flaky-paid" => vec![offer(20_000, NETWORK, ASSET)],
        "/multi" => vec![
            offer(1, NETWORK, "0x0000000000000000000000000000000000000bad"),
            offer(50_000, NETWORK, ASSET),
            offer(20_000, NETWORK, ASSET),
        ],
        "/expensive" | "/expensive-empty" => vec![offer(500_000, NETWORK, ASSET)],
        "/unknown-asset" => vec![offer(
            1_000,
            NETWORK,
            "0x0000000000000000000000000000000000000bad",
        )],
        "/wrong-network" => vec![offer(10_000, "eip155:1", ASSET)],
        // Offers pag0 must never sign (issue 15): an authorization that never expires, a
        // payment to the zero address, of amount 0, in the wrong or no EIP-712 domain.
        "/huge-timeout" | "/zero-payto" | "/zero-amount" | "/wrong-domain" | "/no-domain" => {
            let mut o = offer(10_000, NETWORK, ASSET);
            match path {
                "/huge-timeout" => o["maxTimeoutSeconds"] = json!(u64::MAX),
                "/zero-payto" => o["payTo"] = json!("0x0000000000000000000000000000000000000000"),
                "/zero-amount" => o["amount"] = json!("0"),
                "/wrong-domain" => o["extra"] = json!({"name": "USD Coin", "version": "2"}),
                _ => {
                    o.as_object_mut().unwrap().remove("extra");
                }
            }
            vec![o]
        }
        _ => return None,
    })
}

impl Paywall {
    pub async fn start() -> Paywall {
        Self::start_on("127.0.0.1:0", true).await
    }

    /// Listens on `addr`; `verify: false` accepts any well-formed payment (benchmarks only).
    pub async fn start_on(addr: &str, verify: bool) -> Paywall {
        Self::start_inner(addr, verify, None).await
    }

    /// A paywall whose offers name `token` instead of the default test asset.
    pub async fn start_for(token: Token) -> Paywall {
        let wall = Self::start().await;
        wall.state.lock().unwrap().token = Some(token);
        wall
    }

    /// Every payment accepted so far, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// An HTTPS paywall (`https://localhost:PORT`, certificate from `tls`).
    pub async fn start_tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Paywall {
        Self::start_inner(
            "127.0.0.1:0",
            true,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
        )
        .await
    }

    async fn start_inner(
        addr: &str,
        verify: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Paywall {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let state = Arc::new(Mutex::new(State {
            skip_verify: !verify,
            ..State::default()
        }));
        let st = state.clone();
        let paywall_origin = origin.clone();
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, origin, tls) = (st.clone(), origin.clone(), tls.clone());
                connections.spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone(), origin.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Paywall {
            addr,
            origin: paywall_origin,
            state,
            server,
        }
    }

    /// Closes the listener and every open connection.
    pub async fn stop(&self) {
        self.server.abort();
        for _ in 0..250 {
            if std::net::TcpStream::connect(self.addr).is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("paywall still listening");
    }

    pub fn stats(&self) -> PaywallStats {
        self.state.lock().unwrap().stats.clone()
    }

    /// Nonces (`0x…` hex) of every payment the paywall accepted.
    pub fn nonces(&self) -> HashSet<String> {
        let state = self.state.lock().unwrap();
        state
            .nonces
            .iter()
            .map(|(_, n)| format!("{n:#x}"))
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    origin: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let full_path = req.uri().path().to_string();
    let v1 = full_path.starts_with("/v1/");
    let path = if v1 {
        full_path[3..].to_string()
    } else {
        full_path.clone()
    };
    let pay_header = if v1 { "x-payment" } else { "payment-signature" };
    let payment = req
        .headers()
        .get(pay_header)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .map_or_else(String::new, |v| v.to_str().unwrap_or("").to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    {
        let mut state = state.lock().unwrap();
        state.stats.requests += 1;
        // Not in benchmarks (no verification): the list would only grow.
        if let Some(p) = payment.as_ref().filter(|_| !state.skip_verify) {
            state.stats.payment_headers.push(p.clone());
        }
    }
    let echo = json!({"method": method, "path": full_path, "body_len": body.len(), "body_sha256": hex::encode(Sha256::digest(&body))});
    let price_changes = state.lock().unwrap().price_changes;
    let Some(mut offers) = offers_for(&path, price_changes) else {
        if path == "/delayed" {
            let n = state.lock().unwrap().stats.requests as u64;
            tokio::time::sleep(std::time::Duration::from_millis(100 + n * 37 % 201)).await;
        }
        return Ok(respond(StatusCode::OK, echo.to_string(), None));
    };
    if let Some(token) = state.lock().unwrap().token.clone() {
        for o in offers.iter_mut().filter(|o| o["asset"] == ASSET) {
            o["network"] = json!(token.network);
            o["asset"] = json!(token.asset);
            o["maxTimeoutSeconds"] = json!(token.max_timeout_seconds);
        }
    }
    let url = format!("{origin}{full_path}");
    let offers: Vec<Value> = if v1 {
        offers.iter().map(|o| to_v1(o, &url)).collect()
    } else {
        offers
    };
    let required = if v1 {
        json!({"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": offers})
    } else if path == "/described" {
        json!({
            "x402Version": 2, "error": "PAYMENT-SIGNATURE header is required",
            "resource": {"url": url, "description": DESCRIBED, "mimeType": "application/json"},
            "accepts": offers,
            "extensions": {"bazaar": described_bazaar()},
        })
    } else {
        json!({
            "x402Version": 2, "error": "PAYMENT-SIGNATURE header is required",
            "resource": {"url": url, "mimeType": "application/json"},
            "accepts": offers,
        })
    };
    let unpaid = |required: &Value| {
        if v1 {
            respond(StatusCode::PAYMENT_REQUIRED, required.to_string(), None)
        } else {
            let body = if path == "/expensive-empty" {
                String::new()
            } else {
                "{}".into()
            };
            respond(
                StatusCode::PAYMENT_REQUIRED,
                body,
                Some(("payment-required", b64(required))),
            )
        }
    };
    let Some(payment) = payment else {
        return Ok(unpaid(&required));
    };
    let verified = verify(&payment, v1, &offers, &state);
    if verified.is_ok() {
        state.lock().unwrap().stats.paid_keys.push(idempotency_key);
    }
    match verified {
        Err(reason) => {
            state.lock().unwrap().stats.invalid.push(reason.clone());
            let mut again = required.clone();
            again["error"] = json!(reason);
            Ok(unpaid(&again))
        }
        Ok(_) if path == "/always402" => Ok(unpaid(&required)),
        Ok(_) if path == "/paid-500" => Ok(respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "{\"error\": \"settlement failed\"}".into(),
            None,
        )),
        Ok(_)
            if path == "/flaky-paid" && {
                let mut state = state.lock().unwrap();
                state.flaky_paid += 1;
                state.flaky_paid.is_multiple_of(2)
            } =>
        {
            Ok(respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "{\"error\": \"flaky\"}".into(),
                None,
            ))
        }
        Ok((payer, nonce)) => {
            if path == "/price-change" {
                state.lock().unwrap().price_changes += 1;
            }
            if path == "/slow-paid" {
                tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            }
            if path == "/settling" {
                let ms = 100 + u64::from(nonce[31]) * 200 / 255;
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let network = if v1 { "base-sepolia" } else { NETWORK };
            let mut transaction = format!("0x{}", hex::encode(Sha256::digest(nonce)));
            if let Some(tx) = settle_on_chain(&state, &path, nonce).await {
                transaction = format!("{tx:#x}");
            }
            if path == "/paid-bad-tx" {
                transaction = BAD_TX.to_string();
            }
            let receipt = json!({"success": true, "transaction": transaction, "network": network, "payer": payer.to_checksum(None)});
            let name = if v1 {
                "x-payment-response"
            } else {
                "payment-response"
            };
            let mut resp = respond(
                StatusCode::OK,
                echo.to_string(),
                Some((name, b64(&receipt))),
            );
            if path == "/paid-stale" {
                resp.headers_mut().insert(
                    "cache-control",
                    "max-age=1, stale-if-error=60".parse().unwrap(),
                );
            }
            Ok(resp)
        }
    }
}

fn respond(
    status: StatusCode,
    body: String,
    header: Option<(&'static str, String)>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if let Some((name, value)) = header {
        resp.headers_mut().insert(name, value.parse().unwrap());
    }
    resp
}

/// Checks a payment against the offers: v2 `accepted` deep-equals an offer (v1: scheme and
/// network match one), value = amount, to = payTo, window contains now, nonce unused, and the
/// EIP-712 signature recovers `from`.
fn verify(
    header: &str,
    v1: bool,
    offers: &[Value],
    state: &Mutex<State>,
) -> Result<(Address, B256), String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(header)
        .map_err(|_| "bad base64")?;
    let p: Value = serde_json::from_slice(&raw).map_err(|_| "bad json")?;
    if p["x402Version"] != if v1 { 1 } else { 2 } {
        return Err("wrong x402Version".into());
    }
    let accepted = if v1 {
        offers
            .iter()
            // v1 payments name only scheme + network; the signed value picks among offers.
            .find(|o| {
                o["scheme"] == p["scheme"]
                    && o["network"] == p["network"]
                    && o["maxAmountRequired"] == p["payload"]["authorization"]["value"]
            })
            .ok_or("No matching payment requirements found")?
    } else {
        offers
            .iter()
            .find(|o| **o == p["accepted"])
            .ok_or("No matching payment requirements found")?
    };
    let amount_field = if v1 { "maxAmountRequired" } else { "amount" };
    let a = &p["payload"]["authorization"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let from: Address = s(&a["from"]).parse().map_err(|_| "bad from")?;
    let to: Address = s(&a["to"]).parse().map_err(|_| "bad to")?;
    let value = U256::from_str_radix(&s(&a["value"]), 10).map_err(|_| "bad value")?;
    let valid_after: u64 = s(&a["validAfter"]).parse().map_err(|_| "bad validAfter")?;
    let valid_before: u64 = s(&a["validBefore"])
        .parse()
        .map_err(|_| "bad validBefore")?;
    let nonce: B256 = s(&a["nonce"]).parse().map_err(|_| "bad nonce")?;
    if value != U256::from_str_radix(&s(&accepted[amount_field]), 10).unwrap() {
        return Err("value differs from amount".into());
    }
    if to != PAY_TO.parse::<Address>().unwrap() {
        return Err("wrong payTo".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if valid_after > now || valid_before < now + 6 {
        return Err("outside the validity window".into());
    }
    if valid_before > now + accepted["maxTimeoutSeconds"].as_u64().unwrap_or(0) {
        return Err("validBefore beyond maxTimeoutSeconds".into());
    }
    let domain = Eip712Domain::new(
        Some(s(&accepted["extra"]["name"]).into()),
        Some(s(&accepted["extra"]["version"]).into()),
        Some(U256::from(
            state
                .lock()
                .unwrap()
                .token
                .as_ref()
                .map_or(84532, |t| t.chain_id),
        )),
        Some(s(&accepted["asset"]).parse().map_err(|_| "bad asset")?),
        None,
    );
    let message = TransferWithAuthorization {
        from,
        to,
        value,
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    if state.lock().unwrap().skip_verify {
        let mut st = state.lock().unwrap();
        st.stats.paid += 1;
        return Ok((from, nonce));
    }
    let sig_hex = s(&p["payload"]["signature"]);
    let sig_bytes =
        hex::decode(sig_hex.trim_start_matches("0x")).map_err(|_| "bad signature hex")?;
    let sig =
        alloy_primitives::Signature::try_from(sig_bytes.as_slice()).map_err(|_| "bad signature")?;
    let signer = sig
        .recover_address_from_prehash(&message.eip712_signing_hash(&domain))
        .map_err(|_| "unrecoverable")?;
    if signer != from {
        return Err(format!(
            "invalid_signature: recovered {signer}, from {from}"
        ));
    }
    let mut st = state.lock().unwrap();
    if !st.nonces.insert((from, nonce)) {
        return Err("nonce already used".into());
    }
    st.accepted.push(Accepted {
        from,
        to,
        value,
        valid_after,
        valid_before,
        nonce,
        signature: sig_bytes,
    });
    st.stats.paid += 1;
    st.stats.amounts.push(value);
    Ok((from, nonce))
}

/// With `Token::settle_rpc`: settles the accepted payment with `nonce` on chain and returns
/// the transaction to report (see [`Token::settle_rpc`] for the special paths).
async fn settle_on_chain(state: &Mutex<State>, path: &str, nonce: B256) -> Option<B256> {
    let (token, accepted) = {
        let st = state.lock().unwrap();
        let token = st.token.clone()?;
        let accepted = st.accepted.iter().rev().find(|a| a.nonce == nonce)?.clone();
        (token, accepted)
    };
    let rpc = token.settle_rpc.as_ref()?;
    if path == "/paid-unsettled" {
        return None;
    }
    let tx = settle_at(rpc, token.asset.parse().unwrap(), &accepted).await;
    let previous = state.lock().unwrap().last_settled.replace(tx);
    if path == "/paid-wrong-tx" {
        return previous;
    }
    Some(tx)
}

mod eip3009 {
    alloy_sol_types::sol! {
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;
    }
}

/// Settles an authorization on the chain at `url` from anvil's first dev account (what a
/// facilitator does with a payment); returns the transaction hash.
pub async fn settle_at(url: &str, token: Address, p: &Accepted) -> B256 {
    use alloy_sol_types::SolCall;
    let sig = &p.signature;
    let call = eip3009::transferWithAuthorizationCall {
        from: p.from,
        to: p.to,
        value: p.value,
        validAfter: U256::from(p.valid_after),
        validBefore: U256::from(p.valid_before),
        nonce: p.nonce,
        v: sig[64],
        r: B256::from_slice(&sig[..32]),
        s: B256::from_slice(&sig[32..64]),
    };
    let rpc = |method: &'static str, params: Value| async move {
        let answer: Value = reqwest::Client::new()
            .post(url)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["result"].clone()
    };
    let facilitator = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
    let tx = json!({"from": facilitator, "to": token.to_string(), "data": format!("0x{}", hex::encode(call.abi_encode())), "gas": "0x1000000"});
    let hash = rpc("eth_sendTransaction", json!([tx])).await;
    let receipt = rpc("eth_getTransactionReceipt", json!([hash])).await;
    assert_eq!(receipt["status"], "0x1", "settlement failed: {receipt}");
    hash.as_str().unwrap().parse().unwrap()
}

/// The agent's own x402 client: signs an offer with its own key (pag0's library as a client).
pub async fn agent_pays(
    offer_source: &reqwest::Response,
    v1_body: Option<&[u8]>,
) -> (String, String) {
    use pag0::x402::{self, PaymentSigner};
    let required = match v1_body {
        Some(body) => x402::parse_v1_body(body).unwrap(),
        None => {
            x402::parse_v2_header(offer_source.headers()["payment-required"].as_bytes()).unwrap()
        }
    };
    let signer = x402::Eip3009Signer::from_hex(WALLET_KEY).unwrap();
    let offer = &required.offers[0];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = signer.sign(offer, now).await.unwrap();
    (
        offer.version.payment_header().to_string(),
        x402::payment_header(&required, offer, &signed),
    )
}
