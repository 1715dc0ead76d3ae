//! Fuzzing on stable Rust: every decoder that reads what an agent, an upstream or an operator
//! wrote runs for a bounded time on generated input and must never panic:
//!
//! | target | input |
//! |---|---|
//! | `v2_payment_required` | the `PAYMENT-REQUIRED` header |
//! | `v1_body` | a 402's JSON body |
//! | `offer_selection` | any decodable offer, through the payment guards |
//! | `relayed_payment` | an agent's payment header (relay mode), decoded then checked |
//! | `receipt` | the upstream's `PAYMENT-RESPONSE` |
//! | `request_target` | absolute-form, origin-form and `CONNECT` request targets |
//! | `yaml_config` | the YAML configuration |
//!
//! Inputs come from proptest: raw bytes, text built from each format's vocabulary, random JSON
//! trees, and mutations (flips, inserts, deletions, token splices) of valid seeds. A failing
//! input is shrunk and printed; it then becomes an ordinary test of the decoder it broke.
//!
//! Each target runs `FUZZ_SECONDS` (default 2; `.ci/run` sets 30) and prints its executions:
//! `FUZZ_SECONDS=30 cargo test --test fuzz -- --nocapture`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use pag0::config::{ConnectMode, ConnectSettings, Payments};
use pag0::proxy::ctx::TunnelInfo;
use pag0::x402;
use pingora::http::RequestHeader;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// Runs `target` on values of `strategy` for `FUZZ_SECONDS`; panics with the shrunk input if
/// any run panics. `target` says whether the input got past the decoder (counted and printed,
/// to show the generated inputs reach the code behind it).
fn fuzz<S: Strategy>(name: &str, strategy: S, target: impl Fn(S::Value) -> bool)
where
    S::Value: std::fmt::Debug,
{
    let seconds: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let mut runs: u64 = 0;
    let accepted = std::cell::Cell::new(0u64);
    while start.elapsed() < budget {
        for _ in 0..32 {
            let case = strategy
                .new_tree(&mut runner)
                .unwrap_or_else(|e| panic!("fuzz target {name}: no input: {e}"));
            if let Err(e) = runner.run_one(case, |v| {
                if target(v) {
                    accepted.set(accepted.get() + 1);
                }
                Ok(())
            }) {
                panic!("fuzz target {name} failed: {e}");
            }
            runs += 1;
        }
    }
    eprintln!(
        "fuzz {name}: {runs} executions in {:.1} s, {} decoded",
        start.elapsed().as_secs_f64(),
        accepted.get()
    );
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Words of the x402 formats (field names, typical and hostile values).
const X402_WORDS: &[&str] = &[
    "x402Version",
    "accepts",
    "accepted",
    "scheme",
    "exact",
    "upto",
    "network",
    "eip155:84532",
    "eip155:8453",
    "base-sepolia",
    "solana:devnet",
    "amount",
    "maxAmountRequired",
    "asset",
    "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    "payTo",
    "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    "0x0000000000000000000000000000000000000000",
    "maxTimeoutSeconds",
    "extra",
    "name",
    "USDC",
    "version",
    "2",
    "resource",
    "url",
    "extensions",
    "payload",
    "signature",
    "authorization",
    "from",
    "to",
    "value",
    "validAfter",
    "validBefore",
    "nonce",
    "success",
    "transaction",
    "errorReason",
    "payer",
    "error",
    "115792089237316195423570985008687907853269984665640564039457584007913129639936",
    "18446744073709551615",
    "-1",
    "0x",
    "",
];

/// A JSON tree whose keys and strings mostly come from the x402 vocabulary.
fn json_tree() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(X402_WORDS).prop_map(str::to_string);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word.clone().prop_map(Value::String),
        "\\PC{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        let key = prop_oneof![
            3 => prop::sample::select(X402_WORDS).prop_map(str::to_string),
            1 => "\\PC{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Byte mutations of `seed`: flips, inserts, deletions, splices of vocabulary words,
/// truncation.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let op = (0u8..5, any::<prop::sample::Index>(), any::<u8>(), 0usize..8);
    prop::collection::vec(op, 1..5).prop_map(move |ops| {
        let mut out = seed.clone();
        for (kind, at, byte, len) in ops {
            let i = if out.is_empty() {
                0
            } else {
                at.index(out.len())
            };
            match kind {
                0 if !out.is_empty() => out[i] ^= byte | 1,
                1 => out.insert(i, byte),
                2 if !out.is_empty() => {
                    let end = (i + len).min(out.len());
                    out.drain(i..end);
                }
                3 => {
                    let word = X402_WORDS[byte as usize % X402_WORDS.len()];
                    out.splice(i..i, word.bytes());
                }
                _ => out.truncate(i),
            }
        }
        out
    })
}

/// A valid v2 offer entry, a v2 header, a v1 body, a v2 payment, a receipt (seeds).
fn entry() -> Value {
    serde_json::json!({
        "scheme": "exact", "network": "eip155:84532", "amount": "10000",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}
    })
}

fn v2_seed() -> Vec<u8> {
    serde_json::json!({"x402Version": 2, "resource": {"url": "http://x/"}, "accepts": [entry()]})
        .to_string()
        .into_bytes()
}

fn v1_seed() -> Vec<u8> {
    let mut e = entry();
    e["network"] = "base-sepolia".into();
    e["maxAmountRequired"] = e["amount"].take();
    serde_json::json!({"x402Version": 1, "accepts": [e], "error": "pay"})
        .to_string()
        .into_bytes()
}

fn payment_seed() -> Vec<u8> {
    serde_json::json!({
        "x402Version": 2, "accepted": entry(),
        "payload": {"signature": format!("0x{}", "ab".repeat(65)), "authorization": {
            "from": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "value": "10000",
            "validAfter": "0", "validBefore": "99999999999", "nonce": format!("0x{}", "11".repeat(32))}}
    })
    .to_string()
    .into_bytes()
}

fn receipt_seed() -> Vec<u8> {
    serde_json::json!({"success": true, "transaction": format!("0x{}", "22".repeat(32)),
        "network": "eip155:84532", "payer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"})
    .to_string()
    .into_bytes()
}

/// Input for a base64-JSON header: raw bytes, base64 of bytes, of a JSON tree, of a mutated
/// seed, or a mutated base64 seed.
fn header_input(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let encoded_seed = b64(&seed).into_bytes();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| b64(&b).into_bytes()),
        2 => json_tree().prop_map(|v| b64(v.to_string().as_bytes()).into_bytes()),
        4 => mutated(seed).prop_map(|b| b64(&b).into_bytes()),
        2 => mutated(encoded_seed),
    ]
}

/// Input for a JSON body: raw bytes, a JSON tree, a mutated seed.
fn body_input(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => json_tree().prop_map(|v| v.to_string().into_bytes()),
        4 => mutated(seed),
    ]
}

/// The `payments:` settings of a typical deployment (USDC with its pinned EIP-712 domain).
fn payments() -> Payments {
    let yaml = "admin:\n  token: ${T:-fuzz-admin-token-0123}\npayments:\n  assets:\n    - network: eip155:84532\n      address: \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\"\n      symbol: USDC\n      decimals: 6\n      max_per_payment: \"1\"\n";
    pag0::config::parse(yaml, Path::new("."), |_| None)
        .expect("valid payments")
        .payments
}

#[test]
fn v2_payment_required() {
    fuzz("v2_payment_required", header_input(v2_seed()), |input| {
        x402::parse_v2_header(&input).is_ok()
    });
}

#[test]
fn v1_body() {
    fuzz("v1_body", body_input(v1_seed()), |input| {
        x402::parse_v1_body(&input).is_ok()
    });
}

#[test]
fn offer_selection() {
    let payments = payments();
    let input = prop_oneof![
        header_input(v2_seed()).prop_map(|h| (true, h)),
        body_input(v1_seed()).prop_map(|b| (false, b)),
    ];
    fuzz("offer_selection", input, |(v2, input)| {
        let parsed = if v2 {
            x402::parse_v2_header(&input)
        } else {
            x402::parse_v1_body(&input)
        };
        parsed.is_ok_and(|required| pag0::stages::payment_candidates(&payments, &required).is_ok())
    });
}

#[test]
fn relayed_payment() {
    let payments = payments();
    let now = pag0::clock::unix_now();
    fuzz("relayed_payment", header_input(payment_seed()), |input| {
        x402::decode_payment_header(&input).is_ok_and(|decoded| {
            let _ = pag0::stages::check_relayed(&payments, &decoded, now);
            true
        })
    });
}

#[test]
fn receipt() {
    fuzz("receipt", header_input(receipt_seed()), |input| {
        x402::parse_receipt(&input).is_ok()
    });
}

#[test]
fn request_target() {
    let connect = ConnectSettings {
        mode: ConnectMode::Intercept,
        ca_dir: Default::default(),
        tunnel_only: Vec::new(),
        handshake_timeout: Duration::from_secs(1),
        leaf_cache_size: 1,
        ports: Some(vec![443, 80]),
        idle_timeout: Duration::from_secs(1),
    };
    let tunnel = TunnelInfo {
        host: "api.example.com".into(),
        port: 443,
        tls: true,
        credentials: None,
    };
    let host = prop_oneof![
        "[a-z0-9.-]{0,20}",
        "[0-9x.]{1,20}",
        "\\[[0-9a-f:.%]{0,40}\\]",
        "[0-9]{1,12}",
        "\\PC{0,16}",
    ];
    let structured = (
        prop::sample::select(&["http://", "https://", "ftp://", "", "//", "HTTP://"][..]),
        prop::option::of("[a-z]{0,6}(:[a-z]{0,6})?@"),
        host,
        prop::option::of(":[0-9]{0,6}"),
        "(/[\\PC]{0,12}){0,3}(\\?[\\PC]{0,12})?",
    )
        .prop_map(|(scheme, user, host, port, path)| {
            format!(
                "{scheme}{}{host}{}{path}",
                user.unwrap_or_default(),
                port.unwrap_or_default()
            )
            .into_bytes()
        });
    let target = prop_oneof![
        structured.clone(),
        prop::collection::vec(any::<u8>(), 0..64),
        mutated(b"http://api.example.com:8080/v1/x?q=1".to_vec()),
    ];
    let input = (
        prop::sample::select(&["GET", "CONNECT", "POST"][..]),
        target,
        any::<bool>(),
        prop::option::of("\\PC{0,24}"),
    );
    fuzz(
        "request_target",
        input,
        |(method, target, in_tunnel, host_header)| {
            let Ok(mut req) = RequestHeader::build(method, &target, None) else {
                return false;
            };
            if let Some(h) = host_header {
                let _ = req.insert_header("host", h);
            }
            let tunnel = in_tunnel.then_some(&tunnel);
            let routes: Vec<Arc<pag0::config::Route>> = Vec::new();
            pag0::proxy::target::resolve(&req, &routes, tunnel, &connect).is_ok()
        },
    );
}

/// Keys and values of pag0's YAML, for generated documents.
const YAML_WORDS: &[&str] = &[
    "server:",
    "listen:",
    "threads:",
    "admin:",
    "token:",
    "stages:",
    "- kind: auth",
    "- kind: payment",
    "- kind: cache",
    "- kind: policy",
    "- kind: ssrf_guard",
    "allow:",
    "projects:",
    "- id: demo",
    "keys:",
    "wallet:",
    "private_key:",
    "policy:",
    "budgets:",
    "- asset: USDC",
    "per_request:",
    "daily:",
    "monthly:",
    "payments:",
    "assets:",
    "network: eip155:84532",
    "decimals: 6",
    "max_per_payment:",
    "routes:",
    "- name: r",
    "upstream: http://127.0.0.1:1",
    "path_prefix: /v1",
    "connect:",
    "ports: [443]",
    "redis:",
    "url: redis://127.0.0.1:1",
    "cache:",
    "ttl_seconds:",
    "rpc:",
    "${PAG0_X}",
    "${A:-b}",
    "\"0.01\"",
    "1e999",
    "-1",
    "18446744073709551616",
    "~",
    "[]",
    "{}",
    "&a",
    "*a",
    "!!binary",
    "? ",
    ": ",
    "- ",
    "  ",
    "\n",
    "'",
    "\"",
    "#",
];

#[test]
fn yaml_config() {
    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/pag0.yaml"))
        .expect("conf/pag0.yaml");
    let generated =
        prop::collection::vec(prop::sample::select(YAML_WORDS), 0..40).prop_map(|words| {
            let mut text = String::new();
            for w in words {
                text.push_str(w);
                text.push(if w.ends_with(':') { ' ' } else { '\n' });
            }
            text.into_bytes()
        });
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        generated,
        mutated(example),
    ];
    let dir = tempfile::tempdir().unwrap();
    fuzz("yaml_config", input, |input| {
        let text = String::from_utf8_lossy(&input);
        pag0::config::parse(&text, dir.path(), |_| None).is_ok()
    });
}
