//! Reconciliation against the chain (issue 20): every journaled payment is settled, not
//! settled (refunded with `budgets.release_unsettled`) or a mismatch; a transfer straight out of
//! the payment wallet is unknown spend and raises the anomaly webhook. On anvil, with the test
//! EIP-3009 token; the paywall settles on chain as a facilitator would.

mod common;

use std::process::Command;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use alloy_sol_types::SolCall;
use common::chain::{Anvil, CHAIN_ID};
use common::paywall::{self, Paywall};
use common::process::Process;
use common::webhook::{Answer, Hook};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

mod abi {
    alloy_sol_types::sol! {
        function transfer(address to, uint256 value) external returns (bool);
    }
}

const AUDIT_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// Where the wallet's unknown spend goes.
const STRANGER: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
const PRICE: u64 = 10_000;

struct Setup {
    anvil: Anvil,
    token: Address,
    wall: Paywall,
    hook: Hook,
    body: String,
}

async fn setup(database: &str) -> Setup {
    let anvil = Anvil::start();
    let token = anvil.deploy_token("USDC").await;
    let wallet: Address = paywall::WALLET_ADDRESS.parse().unwrap();
    anvil.mint(token, wallet, 1_000_000).await;
    let (_, reputation) = anvil.deploy_registries().await;
    let network = format!("eip155:{CHAIN_ID}");
    let wall = Paywall::start_for(paywall::Token {
        network: network.clone(),
        chain_id: CHAIN_ID,
        asset: token.to_string(),
        max_timeout_seconds: 8,
        settle_rpc: Some(anvil.url.clone()),
    })
    .await;
    let hook = Hook::start(Answer::Approve).await;
    let body = format!(
        "payments:\n  assets:\n    - network: {network}\n      address: \"{token}\"\n      symbol: USDC\n      decimals: 6\n      eip712: {{name: USDC, version: \"2\"}}\n  rpc:\n    {network}: {url}\n\
         budgets:\n  release_unsettled: true\n{ledger}\
         stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: policy\n  - kind: payment\n\
         projects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{key}}}\n    policy:\n      budgets:\n        - asset: USDC\n          per_request: \"0.05\"\n          daily: \"100\"\n          monthly: \"1000\"\n      anomaly:\n        webhook: {hook}\n\
         {database}audit:\n  rpc_url: {url}\n  chain_id: {CHAIN_ID}\n  reputation_registry: \"{reputation}\"\n  signer:\n    private_key: ${{PAG0_TEST_AUDIT_KEY:-{AUDIT_KEY}}}\n  reconcile_seconds: 1\n",
        url = anvil.url,
        key = paywall::WALLET_KEY,
        hook = hook.url(),
        ledger = if database.contains("redis:") {
            "  ledger: redis\n"
        } else {
            ""
        },
    );
    Setup {
        anvil,
        token,
        wall,
        hook,
        body,
    }
}

/// The latest block's number and timestamp.
async fn chain_clock(anvil: &Anvil) -> (u64, u64) {
    let block = anvil
        .rpc("eth_getBlockByNumber", serde_json::json!(["latest", false]))
        .await;
    let hex =
        |v: &Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    (hex(&block["number"]), hex(&block["timestamp"]))
}

fn start(dir: &tempfile::TempDir, body: &str) -> Process {
    Process::start_env(dir, body, &[("RUST_LOG", "warn")])
}

async fn pay(pag0: &Process, wall: &Paywall, path: &str) {
    let resp = pag0.client().get(wall.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
}

async fn reconciliation(pag0: &Process) -> Value {
    pag0.admin_get("/api/audit/reconciliation?limit=100").await
}

fn counted(v: &Value, settled: u64, not_settled: u64, mismatch: u64) -> bool {
    v["counts"]["settled"] == settled
        && v["counts"]["not_settled"] == not_settled
        && v["counts"]["mismatch"] == mismatch
        && v["counts"]["pending"] == 0
}

fn daily_spent(budgets: &Value) -> String {
    budgets["budgets"][0]["daily"]["spent"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_classified_refunded_and_unknown_spend_is_alerted() {
    scenario("").await;
}

/// On PostgreSQL, with the budgets in Redis (the refund goes to the shared ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_and_redis_payments_are_classified_refunded_and_unknown_spend_is_alerted() {
    let db = common::services::TempDatabase::create().await;
    let prefix = format!("pag0test{}", hex::encode(rand::random::<[u8; 6]>()));
    scenario(&format!(
        "database:\n  url: {}\nredis:\n  url: redis://127.0.0.1:6379\n  key_prefix: {prefix}\n",
        db.url()
    ))
    .await;
    db.drop_now().await;
    let out = Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .unwrap();
    for key in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Command::new("redis-cli").args(["DEL", key]).output();
    }
}

async fn scenario(database: &str) {
    let s = setup(database).await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(&dir, &s.body);
    // Two payments settled on chain, one the facilitator never submits, one reported with
    // another payment's transaction.
    pay(&pag0, &s.wall, "/paid").await;
    pay(&pag0, &s.wall, "/paid").await;
    pay(&pag0, &s.wall, "/paid-unsettled").await;
    pay(&pag0, &s.wall, "/paid-wrong-tx").await;
    // Someone else spends from the wallet (its key leaked).
    let receipt = s
        .anvil
        .send_as(
            paywall::WALLET_ADDRESS,
            Some(s.token),
            abi::transferCall {
                to: STRANGER.parse().unwrap(),
                value: U256::from(777),
            }
            .abi_encode(),
        )
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    let leak_tx = receipt["transactionHash"].as_str().unwrap().to_string();
    // Blocks are scanned for unknown spend once they are two minutes old (their payments'
    // journal rows may still be on their way before): the chain's clock moves on.
    s.anvil
        .rpc("evm_increaseTime", serde_json::json!([200]))
        .await;
    s.anvil.rpc("evm_mine", serde_json::json!([])).await;
    let spent = until(
        10,
        || pag0.admin_get("/api/budgets/demo"),
        |b| daily_spent(b) == (4 * PRICE).to_string(),
    )
    .await;
    assert_eq!(daily_spent(&spent), (4 * PRICE).to_string(), "{spent}");

    // The unsettled authorization has expired by the chain's clock (200 s ahead now).
    let expiry = s
        .wall
        .accepted()
        .iter()
        .map(|a| a.valid_before)
        .max()
        .unwrap();
    let (_, chain_time) = chain_clock(&s.anvil).await;
    assert!(chain_time > expiry, "{chain_time} <= {expiry}");
    let report = until(
        30,
        || reconciliation(&pag0),
        |v| counted(v, 2, 1, 1) && v["unknown_spend"].as_array().is_some_and(|u| !u.is_empty()),
    )
    .await;
    assert!(counted(&report, 2, 1, 1), "{report:#}");
    let by_state = |state: &str| -> Vec<Value> {
        report["payments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == state)
            .cloned()
            .collect()
    };
    let mismatch = &by_state("mismatch")[0];
    assert!(
        mismatch["detail"]
            .as_str()
            .unwrap()
            .contains("used another authorization"),
        "{mismatch}"
    );
    let unsettled = &by_state("not_settled")[0];
    assert!(
        unsettled["detail"]
            .as_str()
            .unwrap()
            .contains("the money never moved"),
        "{unsettled}"
    );
    for settled in by_state("settled") {
        assert!(settled["block_number"].as_i64().unwrap() > 0, "{settled}");
    }
    let unknown = report["unknown_spend"].as_array().unwrap();
    assert_eq!(unknown.len(), 1, "{report:#}");
    assert_eq!(unknown[0]["tx_hash"], leak_tx);
    assert_eq!(unknown[0]["amount"], "777");
    assert_eq!(unknown[0]["to"], STRANGER);

    // The anomaly webhook heard about it at once.
    let alerts = until(10, || async { s.hook.received() }, |r| !r.is_empty()).await;
    let alert = &alerts
        .iter()
        .find(|(_, b)| b["type"] == "pag0.unknown_spend")
        .expect("an unknown spend alert")
        .1;
    assert_eq!(alert["project"], "demo");
    assert_eq!(alert["amount"], "777");
    assert_eq!(alert["tx_hash"], leak_tx);
    assert_eq!(alert["from"], paywall::WALLET_ADDRESS);

    // The never-settled payment gave its budget back (journaled as a correction).
    let budgets = until(
        10,
        || pag0.admin_get("/api/budgets/demo"),
        |b| daily_spent(b) == (3 * PRICE).to_string(),
    )
    .await;
    assert_eq!(daily_spent(&budgets), (3 * PRICE).to_string(), "{budgets}");
    let report = reconciliation(&pag0).await;
    let refunded: Vec<i64> = report["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["refunded"].as_i64().unwrap())
        .collect();
    assert_eq!(refunded.iter().sum::<i64>(), 1, "{report:#}");
    let metrics = pag0
        .metrics_until(|m| m.contains("pag0_reconcile_payments{state=\"settled\"} 2"))
        .await;
    for line in [
        "pag0_reconcile_payments{state=\"settled\"} 2",
        "pag0_reconcile_payments{state=\"not_settled\"} 1",
        "pag0_reconcile_payments{state=\"mismatch\"} 1",
        "pag0_unknown_spend_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // After a restart the budget is rebuilt from the journal minus the correction, the
    // refund is not given twice and the unknown spend is not alerted again.
    pag0.kill();
    let pag0 = start(&dir, &s.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let budgets = pag0.admin_get("/api/budgets/demo").await;
    assert_eq!(daily_spent(&budgets), (3 * PRICE).to_string(), "{budgets}");
    let alerts = s.hook.received();
    assert_eq!(
        alerts
            .iter()
            .filter(|(_, b)| b["type"] == "pag0.unknown_spend")
            .count(),
        1
    );
    drop(pag0);

    // The command line: the same classes in a table, exit status 3 (findings).
    let out = Command::new(env!("CARGO_BIN_EXE_pag0"))
        .args([
            "reconcile",
            "-c",
            dir.path().join("pag0.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        ("settled", 2, 2 * PRICE),
        ("not_settled", 1, PRICE),
        ("mismatch", 1, PRICE),
    ] {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(row.0))
            .unwrap_or_else(|| panic!("no {} row in\n{table}", row.0));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[1], row.1.to_string(), "{line}");
        assert_eq!(cells[2], row.2.to_string(), "{line}");
        assert_eq!(cells[3], "USDC", "{line}");
    }
    let unknown_line = table
        .lines()
        .find(|l| l.starts_with("unknown_spend"))
        .unwrap();
    assert!(unknown_line.contains("777 USDC"), "{table}");
    assert!(unknown_line.contains(&leak_tx), "{table}");
}
