//! `pag0 demo`: pag0's main job on one machine, without a chain or the internet. A small x402
//! API on loopback answers 402 with a v2 offer (Base Sepolia USDC) and verifies the EIP-712
//! signature of the payment it receives, like a real x402 server would before settling; it
//! settles nothing. pag0 runs next to it with a throwaway wallet, a budget, the cache and the
//! payment stage, and the commands to try are printed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256, U256};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use crate::x402;

/// Where the demo's payments go (a fixed address; nothing reaches it: nothing is settled).
pub const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
/// Base Sepolia USDC: its EIP-712 domain is pinned in pag0.
pub const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
pub const NETWORK: &str = "eip155:84532";
/// The demo project's dev-only key (as in `conf/pag0.yaml`).
pub const DEMO_KEY: &str = "pag0_demo_dev_only_key";
/// The admin token of the demo (dev only).
pub const ADMIN_TOKEN: &str = "dev-only-admin-token-change-me";

/// The priced endpoints: path → price in base units (USDC has 6 decimals).
const PRICES: &[(&str, u64)] = &[("weather", 1_000), ("premium", 50_000)];

/// The YAML pag0 runs with in the demo; `${PAG0_DEMO_WALLET_KEY}` is the throwaway key.
pub fn config_yaml(listen: SocketAddr, admin: SocketAddr, api: SocketAddr, dir: &str) -> String {
    format!(
        r#"server:
  listen: ["{listen}"]
  threads: 2
  pid_file: {dir}/pag0.pid
  upgrade_sock: {dir}/upgrade.sock
admin:
  listen: {admin}
  token: ${{PAG0_DEMO_ADMIN_TOKEN:-{ADMIN_TOKEN}}}
database:
  url: sqlite:{dir}/pag0.db
  spool_file: {dir}/pag0-spool.jsonl
connect:
  ca_dir: {dir}/pag0-ca
payments:
  assets:
    - network: {NETWORK}
      address: "{ASSET}"
      symbol: USDC
      decimals: 6
      max_per_payment: "0.10"
stages:
  - kind: auth
  - kind: ssrf_guard
    allow: ["{api_ip}/{prefix}"]
  - kind: policy
  - kind: cache
  - kind: payment
projects:
  - id: demo
    keys: ["sha256:{key_hash}"]
    wallet:
      private_key: ${{PAG0_DEMO_WALLET_KEY}}
    policy:
      budgets:
        - asset: USDC
          per_request: "0.01"
          daily: "1.00"
          monthly: "10.00"
"#,
        api_ip = api.ip(),
        prefix = if api.is_ipv4() { 32 } else { 128 },
        key_hash = hex::encode(crate::stages::key_digest(DEMO_KEY)),
    )
}

/// The commands to try, as printed (and as the README's quickstart shows them).
pub fn commands(listen: SocketAddr, admin: SocketAddr, api: SocketAddr) -> Vec<String> {
    vec![
        format!("export HTTP_PROXY=http://demo:{DEMO_KEY}@{listen}"),
        "export http_proxy=$HTTP_PROXY   # curl reads the lowercase one".to_string(),
        format!(
            "curl -si http://{api}/weather | grep -i '^x-pag0'   # paid: X-Pag0-Paid, X-Pag0-Cost, X-Pag0-Budget-Remaining"
        ),
        format!(
            "curl -si http://{api}/weather | grep -i '^x-pag0'   # again: from the cache, X-Pag0-Saved"
        ),
        format!(
            "curl -si http://{api}/premium | grep -i '^x-pag0'   # 0.05 USDC, over the 0.01 per-request budget: refused"
        ),
        format!(
            "curl -si -x http://{listen} http://{api}/weather | head -n1   # 407: no credentials"
        ),
        "curl -si http://169.254.169.254/ | grep -i '^x-pag0-error'   # 403 TARGET_FORBIDDEN: the SSRF guard"
            .to_string(),
        format!(
            "curl -s -H 'Authorization: Bearer {ADMIN_TOKEN}' http://{admin}/api/spend?project=demo   # what was spent"
        ),
    ]
}

/// The demo x402 API's state: nonces already used (a replay is refused).
#[derive(Default)]
struct Api {
    used: Mutex<HashSet<(Address, B256)>>,
}

/// Serves the demo x402 API on `listener` until the runtime stops.
pub async fn serve_api(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/{endpoint}", axum::routing::get(priced))
        .with_state(Arc::new(Api::default()));
    axum::serve(listener, app).await
}

/// `GET /{endpoint}`: 402 with an offer, or the content for a valid payment.
async fn priced(
    State(api): State<Arc<Api>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(&(_, price)) = PRICES.iter().find(|(p, _)| *p == endpoint) else {
        return (StatusCode::NOT_FOUND, "no such endpoint\n").into_response();
    };
    let entry = offer_entry(price);
    let required = json!({
        "x402Version": 2,
        "resource": {"url": format!("/{endpoint}"), "description": "pag0 demo", "mimeType": "application/json"},
        "accepts": [entry],
    });
    let Some(payment) = headers.get(x402::PAYMENT_SIGNATURE_HEADER) else {
        return payment_required(&required, "payment required");
    };
    let payer = match api.verify(payment.as_bytes(), &required, price) {
        Ok(payer) => payer,
        Err(why) => return payment_required(&required, &why),
    };
    let receipt = json!({"success": true, "network": NETWORK, "payer": x402::checksummed(&payer)});
    let body = json!({
        "endpoint": endpoint,
        "forecast": "sunny, 21 °C",
        "paid_base_units": price,
        "note": "pag0 demo: the signature was verified; nothing was settled",
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=60"),
    );
    if let Ok(v) = HeaderValue::from_str(&b64(&receipt)) {
        h.insert("payment-response", v);
    }
    resp
}

impl Api {
    /// Checks a v2 payment header as an x402 server would before settling: the accepted offer
    /// is ours, the EIP-3009 authorization pays it in full, is valid now, was signed by its
    /// `from` (EIP-712), and its nonce is new.
    fn verify(&self, header: &[u8], required: &Value, price: u64) -> Result<Address, String> {
        let paid = x402::decode_payment_header(header).map_err(|e| e.to_string())?;
        if paid.accepted.as_ref() != required["accepts"].get(0) {
            return Err("the payment accepts another offer".into());
        }
        let auth = &paid.authorization;
        let now = crate::clock::unix_now();
        let pay_to: Address = PAY_TO.parse().expect("constant address");
        if auth.to != pay_to || auth.value != U256::from(price) {
            return Err("the payment does not pay this offer".into());
        }
        if auth.valid_after > now || auth.valid_before <= now {
            return Err("the authorization is not valid now".into());
        }
        let offer = x402::parse_v2_header(b64(required).as_bytes()).map_err(|e| e.to_string())?;
        let domain = x402::sign::TokenDomain::of(&offer.offers[0]).ok_or("no EIP-712 domain")?;
        if x402::sign::recover_signer(&domain, auth, &paid.signature) != Some(auth.from) {
            return Err("the signature is not the payer's".into());
        }
        let fresh = self
            .used
            .lock()
            .map_err(|_| "state poisoned")?
            .insert((auth.from, auth.nonce));
        if !fresh {
            return Err("this authorization was already used".into());
        }
        Ok(auth.from)
    }
}

fn offer_entry(price: u64) -> Value {
    json!({
        "scheme": "exact",
        "network": NETWORK,
        "amount": price.to_string(),
        "asset": ASSET,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2"},
    })
}

fn payment_required(required: &Value, why: &str) -> Response {
    let mut resp = (
        StatusCode::PAYMENT_REQUIRED,
        axum::Json(json!({"error": why})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&b64(required)) {
        resp.headers_mut().insert(x402::PAYMENT_REQUIRED_HEADER, v);
    }
    resp
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}
