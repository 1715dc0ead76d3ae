//! On-chain audit (issue 20): ERC-8004 feedback about the paid APIs pag0 uses, from a durable
//! outbox, on anvil with the test registries (tests/contracts). pag0's RPC is a relay in front
//! of anvil (tests/common/relay.rs) that can go down, or stop right at a broadcast, without
//! the chain losing its state.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{SolCall, SolEvent};
use common::chain::{Anvil, CHAIN_ID};
use common::paywall::{self, Paywall};
use common::process::Process;
use common::relay::{Mode, Relay};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod abi {
    alloy_sol_types::sol! {
        function register(string agentURI) external returns (uint256 agentId);
        event NewFeedback(uint256 indexed agentId, address indexed clientAddress,
            uint64 feedbackIndex, int128 value, uint8 valueDecimals, string indexed indexedTag1,
            string tag1, string tag2, string endpoint, string feedbackURI, bytes32 feedbackHash);
        function getSummary(uint256 agentId, address[] clientAddresses, string tag1, string tag2)
            external view returns (uint64 count, int128 summaryValue, uint8 summaryValueDecimals);
    }
}

/// Anvil's third dev account: pag0's audit key (not the payment wallet, account 1).
const AUDIT_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const AUDIT_ADDRESS: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

struct Registries {
    identity: Address,
    reputation: Address,
}

/// Deploys the test registries and registers agent 0 (owned by anvil's first account).
async fn registries(anvil: &Anvil) -> Registries {
    let (identity, reputation) = anvil.deploy_registries().await;
    let r = Registries {
        identity,
        reputation,
    };
    register(anvil, &r, common::chain::FACILITATOR).await;
    r
}

async fn register(anvil: &Anvil, r: &Registries, owner: &str) {
    let receipt = anvil
        .send_as(
            owner,
            Some(r.identity),
            abi::registerCall {
                agentURI: "https://paywall.example/agent.json".into(),
            }
            .abi_encode(),
        )
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
}

fn audit_yaml(rpc: &str, r: &Registries, mode: &str, agent_id: u64) -> String {
    format!(
        "audit:\n  rpc_url: {rpc}\n  chain_id: {CHAIN_ID}\n  reputation_registry: \"{}\"\n  identity_registry: \"{}\"\n  signer:\n    private_key: ${{PAG0_TEST_AUDIT_KEY:-{AUDIT_KEY}}}\n  agents:\n    - host: \"127.0.0.1\"\n      agent_id: {agent_id}\n  mode: {mode}\n  public_records: true\n",
        r.reputation, r.identity
    )
}

/// A paying project (0.05 USDC per call at most), with `extra` sections.
fn body(extra: &str) -> String {
    format!(
        "{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: policy\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n    policy:\n      budgets:\n        - asset: USDC\n          per_request: \"0.05\"\n          daily: \"100\"\n          monthly: \"1000\"\n{extra}",
        paywall::payments_yaml(),
        paywall::WALLET_KEY,
    )
}

fn start(dir: &tempfile::TempDir, body: &str) -> Process {
    Process::start_env(dir, body, &[("RUST_LOG", "warn")])
}

/// The outbox as the admin API shows it.
async fn outbox(pag0: &Process) -> Vec<Value> {
    pag0.admin_get("/api/audit/feedback?limit=1000").await["feedback"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn all_confirmed(n: usize) -> impl Fn(&Vec<Value>) -> bool {
    move |rows| rows.len() == n && rows.iter().all(|r| r["state"] == "confirmed")
}

/// Every `NewFeedback` the registry emitted.
async fn feedback_events(anvil: &Anvil, registry: Address) -> Vec<abi::NewFeedback> {
    let logs = anvil
        .rpc(
            "eth_getLogs",
            json!([{
                "address": registry.to_string(),
                "fromBlock": "0x0",
                "toBlock": "latest",
                "topics": [format!("{:#x}", abi::NewFeedback::SIGNATURE_HASH)],
            }]),
        )
        .await;
    logs.as_array()
        .unwrap()
        .iter()
        .map(|log| {
            let topics: Vec<B256> = log["topics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().parse().unwrap())
                .collect();
            let data = hex::decode(log["data"].as_str().unwrap().trim_start_matches("0x")).unwrap();
            abi::NewFeedback::decode_raw_log(topics.iter().copied(), &data).unwrap()
        })
        .collect()
}

/// No two events rate the same record.
fn assert_no_duplicates(events: &[abi::NewFeedback]) {
    let hashes: HashSet<B256> = events.iter().map(|e| e.feedbackHash).collect();
    assert_eq!(hashes.len(), events.len(), "a feedback was given twice");
}

/// The record behind an event's `feedbackURI`, fetched without any token: it hashes to the
/// event's `feedbackHash`.
async fn verified_record(event: &abi::NewFeedback) -> Value {
    let resp = reqwest::get(&event.feedbackURI).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", event.feedbackURI);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        keccak256(&bytes),
        event.feedbackHash,
        "the served record does not hash to feedbackHash"
    );
    serde_json::from_slice(&bytes).unwrap()
}

async fn summary(anvil: &Anvil, r: &Registries, agent: u64, tag1: &str) -> (u64, i128, u8) {
    let out = anvil
        .call(
            r.reputation,
            abi::getSummaryCall {
                agentId: U256::from(agent),
                clientAddresses: vec![AUDIT_ADDRESS.parse().unwrap()],
                tag1: tag1.into(),
                tag2: String::new(),
            }
            .abi_encode(),
        )
        .await
        .unwrap();
    let s = abi::getSummaryCall::abi_decode_returns(&out).unwrap();
    (s.count, s.summaryValue, s.summaryValueDecimals)
}

fn endpoint(wall: &Paywall, path: &str) -> String {
    wall.url(path).trim_start_matches("http://").to_string()
}

async fn pay(pag0: &Process, wall: &Paywall, path: &str, n: usize) {
    for _ in 0..n {
        let resp = pag0.client().get(wall.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_payment_feedback_lands_on_chain_and_its_record_hashes_to_the_feedback_hash() {
    per_payment_feedback("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_per_payment_feedback_lands_on_chain() {
    let db = common::services::TempDatabase::create().await;
    per_payment_feedback(&format!("database:\n  url: {}\n", db.url())).await;
    db.drop_now().await;
}

async fn per_payment_feedback(database: &str) {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(
        &dir,
        &body(&(database.to_string() + &audit_yaml(&anvil.url, &r, "per_payment", 0))),
    );
    pay(&pag0, &wall, "/paid", 3).await;

    let rows = until(30, || outbox(&pag0), all_confirmed(3)).await;
    assert!(all_confirmed(3)(&rows), "{rows:#?}");
    let spend = pag0.admin_get("/api/spend?project=demo").await;
    let paid: HashSet<String> = spend["spend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paid.len(), 3, "{spend}");

    let events = feedback_events(&anvil, r.reputation).await;
    assert_eq!(events.len(), 3);
    assert_no_duplicates(&events);
    let audit: Address = AUDIT_ADDRESS.parse().unwrap();
    let mut rated = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.agentId, U256::ZERO);
        assert_eq!(e.clientAddress, audit);
        assert_eq!(e.feedbackIndex, i as u64 + 1);
        assert_eq!((e.value, e.valueDecimals), (100, 0));
        assert_eq!((e.tag1.as_str(), e.tag2.as_str()), ("successRate", "x402"));
        assert_eq!(e.endpoint, endpoint(&wall, "/paid"));
        assert!(
            e.feedbackURI
                .starts_with(&format!("http://{}/api/audit/feedback/p-", pag0.admin)),
            "{}",
            e.feedbackURI
        );
        let record = verified_record(e).await;
        assert_eq!(record["agentId"], "0");
        assert_eq!(
            record["agentRegistry"],
            format!("eip155:{CHAIN_ID}:{}", r.identity)
        );
        assert_eq!(
            record["clientAddress"],
            format!("eip155:{CHAIN_ID}:{AUDIT_ADDRESS}")
        );
        assert_eq!(record["endpoint"], e.endpoint);
        assert_eq!(record["value"], 100);
        assert_eq!(
            record["proofOfPayment"]["fromAddress"],
            paywall::WALLET_ADDRESS
        );
        assert_eq!(record["proofOfPayment"]["toAddress"], paywall::PAY_TO);
        assert_eq!(record["pag0"]["payment"]["amount"], "10000");
        rated.insert(
            record["pag0"]["payment"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(rated, paid, "each journaled payment is rated once");
    assert_eq!(summary(&anvil, &r, 0, "successRate").await, (3, 100, 0));

    // The outbox list stays behind the admin token even with public records.
    let resp = reqwest::get(format!("http://{}/api/audit/feedback", pag0.admin))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let health = pag0.admin_get("/health").await;
    assert_eq!(health["dependencies"]["audit"]["status"], "up", "{health}");
    assert_eq!(health["dependencies"]["audit"]["backlog"], 0, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_feedback_rates_each_closed_hour_once() {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    // An hour of traffic without audit: 4 paid calls that work, 4 to an API that fails
    // every second paid call.
    let plain = body("");
    let pag0 = start(&dir, &plain);
    pay(&pag0, &wall, "/paid", 4).await;
    let mut flaky = (0, 0);
    for _ in 0..4 {
        let resp = pag0
            .client()
            .get(wall.url("/flaky-paid"))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::OK {
            flaky.0 += 1;
        } else {
            flaky.1 += 1;
        }
    }
    assert_eq!(flaky, (2, 2), "every second paid call fails");
    pag0.terminate();
    // As if two hours had passed: the traffic's hours are closed.
    let db = sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("pag0.db").display()))
        .await
        .unwrap();
    let aged = sqlx::query("UPDATE analytics_hourly SET hour_ms = hour_ms - 7200000")
        .execute(&db)
        .await
        .unwrap();
    assert!(aged.rows_affected() > 0);
    db.close().await;

    // Audit is enabled: the closed hours of the last day are rated.
    let with_audit = body(&audit_yaml(&anvil.url, &r, "hourly", 0));
    let pag0 = start(&dir, &with_audit);
    let rows = until(
        30,
        || outbox(&pag0),
        |rows| rows.len() >= 4 && rows.iter().all(|r| r["state"] == "confirmed"),
    )
    .await;
    assert!(rows.iter().all(|r| r["state"] == "confirmed"), "{rows:#?}");
    let events = feedback_events(&anvil, r.reputation).await;
    assert_eq!(events.len(), rows.len());
    assert_no_duplicates(&events);
    // Per endpoint: the hours' calls add up, each hour has both tags, the rate matches.
    let mut totals: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for e in &events {
        let record = verified_record(e).await;
        assert_eq!(record["pag0"]["kind"], "hourly");
        assert_eq!(e.tag2, "hourly");
        let (calls, ok) = (
            record["pag0"]["calls"].as_u64().unwrap(),
            record["pag0"]["successes"].as_u64().unwrap(),
        );
        match e.tag1.as_str() {
            "successRate" => {
                assert_eq!(e.valueDecimals, 2);
                assert_eq!(e.value, ((ok * 10_000 + calls / 2) / calls) as i128);
                let t = totals.entry(e.endpoint.clone()).or_default();
                t.0 += calls;
                t.1 += ok;
            }
            "responseTime" => {
                assert_eq!(e.valueDecimals, 0);
                assert_eq!(
                    e.value,
                    i128::from(record["pag0"]["latencyMeanMs"].as_i64().unwrap())
                );
            }
            other => panic!("unexpected tag {other}"),
        }
    }
    assert_eq!(totals[&endpoint(&wall, "/paid")], (4, 4), "{totals:?}");
    assert_eq!(
        totals[&endpoint(&wall, "/flaky-paid")],
        (4, 2),
        "{totals:?}"
    );

    // A restart rates nothing again.
    let before = events.len();
    pag0.kill();
    let pag0 = start(&dir, &with_audit);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outbox(&pag0).await.len(), before);
    assert_eq!(feedback_events(&anvil, r.reputation).await.len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_rpc_is_down_the_backlog_grows_then_drains_without_duplicates() {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    let relay = Relay::start(&anvil.url).await;
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(&dir, &body(&audit_yaml(&relay.url, &r, "per_payment", 0)));
    pay(&pag0, &wall, "/paid", 2).await;
    let rows = until(30, || outbox(&pag0), all_confirmed(2)).await;
    assert!(all_confirmed(2)(&rows), "{rows:#?}");

    relay.set(Mode::Down);
    pay(&pag0, &wall, "/paid", 4).await;
    let health = until(
        30,
        || pag0.admin_get("/health"),
        |h| h["dependencies"]["audit"]["status"] == "degraded",
    )
    .await;
    let audit = &health["dependencies"]["audit"];
    assert_eq!(audit["status"], "degraded", "{health}");
    assert_eq!(audit["backlog"], 4, "{health}");
    assert_eq!(health["status"], "ok", "the proxy itself is fine: {health}");
    let metrics = pag0
        .metrics_until(|m| m.contains("pag0_audit_backlog 4"))
        .await;
    assert!(metrics.contains("pag0_audit_backlog 4"), "{metrics}");
    assert_eq!(feedback_events(&anvil, r.reputation).await.len(), 2);

    relay.set(Mode::Up);
    let rows = until(60, || outbox(&pag0), all_confirmed(6)).await;
    assert!(all_confirmed(6)(&rows), "{rows:#?}");
    let events = feedback_events(&anvil, r.reputation).await;
    assert_eq!(events.len(), 6);
    assert_no_duplicates(&events);
    let health = until(
        10,
        || pag0.admin_get("/health"),
        |h| h["dependencies"]["audit"]["status"] == "up",
    )
    .await;
    assert_eq!(health["dependencies"]["audit"]["backlog"], 0, "{health}");
}

/// pag0 is killed the moment a feedback transaction is broadcast (`mode`: the node got it, or
/// it never left); after a restart every payment is rated exactly once.
async fn sigkill_at_a_broadcast(mode: Mode) {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    let relay = Relay::start(&anvil.url).await;
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = body(&audit_yaml(&relay.url, &r, "per_payment", 0));
    let pag0 = start(&dir, &config);
    relay.set(mode);
    pay(&pag0, &wall, "/paid", 5).await;
    relay.until_sends(1).await;
    pag0.kill();
    let landed = feedback_events(&anvil, r.reputation).await.len();
    let expected = if mode == Mode::DropSend { 0 } else { 1 };
    assert_eq!(
        landed, expected,
        "only the interrupted broadcast can have landed"
    );

    relay.set(Mode::Up);
    let pag0 = start(&dir, &config);
    let rows = until(60, || outbox(&pag0), all_confirmed(5)).await;
    assert!(all_confirmed(5)(&rows), "{rows:#?}");
    let events = feedback_events(&anvil, r.reputation).await;
    assert_eq!(events.len(), 5, "every payment rated once");
    assert_no_duplicates(&events);
    // The interrupted one kept its transaction: found mined, or broadcast again (the node
    // never had it); never signed anew.
    let metrics = pag0
        .metrics_until(|m| m.contains("pag0_audit_feedback_total{state=\"confirmed\"}"))
        .await;
    assert!(
        !metrics.contains("state=\"requeued\""),
        "no transaction was replaced: {metrics}"
    );
    assert_eq!(
        metrics.contains("pag0_audit_feedback_total{state=\"rebroadcast\"} 1"),
        mode == Mode::DropSend,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_a_broadcast_sends_no_second_transaction() {
    sigkill_at_a_broadcast(Mode::SwallowAfterSend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_signing_before_the_node_has_it_broadcasts_the_same_transaction() {
    sigkill_at_a_broadcast(Mode::DropSend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_feedback_is_recorded_with_its_reason_and_not_retried() {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    // Agent 1 belongs to pag0's audit key: the registry refuses self-feedback.
    register(&anvil, &r, AUDIT_ADDRESS).await;
    let relay = Relay::start(&anvil.url).await;
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let private = audit_yaml(&relay.url, &r, "per_payment", 1)
        .replace("public_records: true", "public_records: false");
    let pag0 = start(&dir, &body(&private));
    pay(&pag0, &wall, "/paid", 1).await;
    let rows = until(
        30,
        || outbox(&pag0),
        |rows| rows.len() == 1 && rows[0]["state"] == "reverted",
    )
    .await;
    assert_eq!(rows[0]["state"], "reverted", "{rows:#?}");
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("Self-feedback not allowed"),
        "{rows:#?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = outbox(&pag0).await;
    assert_eq!(rows[0]["state"], "reverted");
    assert_eq!(rows[0]["attempts"], 0, "never signed nor sent");
    assert_eq!(relay.sends(), 0);
    assert!(feedback_events(&anvil, r.reputation).await.is_empty());
    let health = pag0.admin_get("/health").await;
    assert_eq!(health["dependencies"]["audit"]["status"], "up", "{health}");

    // Records are not public here: the admin token reads them, nobody else.
    let url = format!(
        "http://{}/api/audit/feedback/{}",
        pag0.admin,
        rows[0]["id"].as_str().unwrap()
    );
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        format!("{:#x}", keccak256(&bytes)),
        rows[0]["feedback_hash"].as_str().unwrap()
    );
}

/// `pag0 -t -c FILE` on `body`: (success, stderr).
fn check_config(dir: &tempfile::TempDir, body: &str) -> (bool, String) {
    let config = dir.path().join("check.yaml");
    let proxy = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&config, Pag0::config_text(dir, proxy, admin, body)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pag0"))
        .args(["-t", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_chain_or_an_unreachable_rpc_is_a_clear_error() {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    let dir = tempfile::tempdir().unwrap();
    let good = body(&audit_yaml(&anvil.url, &r, "hourly", 0));
    let (ok, err) = check_config(&dir, &good);
    assert!(ok, "{err}");

    let wrong_chain = good.replace(&format!("chain_id: {CHAIN_ID}"), "chain_id: 8453");
    let (ok, err) = check_config(&dir, &wrong_chain);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "audit.chain_id: the RPC at {} serves chain {CHAIN_ID}, not 8453",
            anvil.url
        )),
        "{err}"
    );
    // pag0 itself refuses to start on it, with the same message.
    let config = dir.path().join("check.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_pag0"))
        .args(["-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serves chain 31337, not 8453"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let closed = format!("http://127.0.0.1:{}", free_port());
    let (ok, err) = check_config(&dir, &good.replace(&anvil.url, &closed));
    assert!(!ok);
    assert!(
        err.contains(&format!("audit.rpc_url: cannot reach {closed}")),
        "{err}"
    );

    // A payment network's RPC that serves another chain is refused the same way.
    let (ok, err) = check_config(
        &dir,
        &good.replace(
            "payments:\n",
            &format!("payments:\n  rpc:\n    eip155:8453: {}\n", anvil.url),
        ),
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "payments.rpc.eip155:8453: the RPC at {} serves chain {CHAIN_ID}, not 8453",
            anvil.url
        )),
        "{err}"
    );
    // Hourly feedback comes from the analytics rollups.
    let (ok, err) = check_config(&dir, &format!("{good}analytics:\n  enabled: false\n"));
    assert!(!ok);
    assert!(
        err.contains(
            "analytics.enabled: audit.mode hourly rates endpoints from the analytics rollups"
        ),
        "{err}"
    );

    // The audit key must not be a payment wallet; every problem is named by its YAML path.
    let (ok, err) = check_config(
        &dir,
        &good
            .replace(AUDIT_KEY, paywall::WALLET_KEY)
            .replace("mode: hourly", "mode: weekly")
            .replace("agent_id: 0", "agent_id: -3"),
    );
    assert!(!ok);
    for expected in [
        "audit.signer: 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 is a project's payment wallet",
        "audit.mode: unknown mode \"weekly\"",
        "audit.agents[0].agent_id: must be the agent's id",
    ] {
        assert!(err.contains(expected), "{expected} in {err}");
    }
    assert!(!err.contains(&AUDIT_KEY[2..]), "no key in messages");
    assert!(
        !err.contains(&paywall::WALLET_KEY[2..]),
        "no key in messages"
    );
}

/// Anvil's fourth and fifth dev accounts: a reviewer the YAML trusts, and one it does not.
const REVIEWER: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
const STRANGER: &str = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65";

async fn review(anvil: &Anvil, r: &Registries, from: &str, value: i128) {
    mod give {
        alloy_sol_types::sol! {
            function giveFeedback(uint256 agentId, int128 value, uint8 valueDecimals,
                string tag1, string tag2, string endpoint, string feedbackURI,
                bytes32 feedbackHash) external;
        }
    }
    let call = give::giveFeedbackCall {
        agentId: U256::ZERO,
        value,
        valueDecimals: 0,
        tag1: "successRate".into(),
        tag2: String::new(),
        endpoint: String::new(),
        feedbackURI: String::new(),
        feedbackHash: B256::ZERO,
    };
    let receipt = anvil
        .send_as(from, Some(r.reputation), call.abi_encode())
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
}

/// The curation entry of `endpoint`.
async fn curated(pag0: &Process, endpoint: &str) -> Value {
    let list = pag0.admin_get("/api/curation/endpoints").await;
    list["endpoints"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["endpoint"] == endpoint).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_reviewers_feedback_moves_the_curation_score() {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = audit_yaml(&anvil.url, &r, "hourly", 0)
        + &format!("  trusted_reviewers: [\"{REVIEWER}\"]\n  reputation_seconds: 1\n")
        + "curation:\n  refresh_seconds: 1\n";
    let pag0 = start(&dir, &body(&audit));
    pay(&pag0, &wall, "/paid", 3).await;
    let paid = endpoint(&wall, "/paid");
    let neutral = until(20, || curated(&pag0, &paid), |e| e["score"].is_number()).await;
    assert_eq!(neutral["components"]["reputation"], 50.0, "{neutral:#}");

    // A trusted reviewer rates the agent badly; a stranger's praise does not count.
    review(&anvil, &r, REVIEWER, 10).await;
    review(&anvil, &r, STRANGER, 100).await;
    let rated = until(
        20,
        || curated(&pag0, &paid),
        |e| e["components"]["reputation"] == 10.0,
    )
    .await;
    assert_eq!(rated["components"]["reputation"], 10.0, "{rated:#}");
    assert!(
        rated["score"].as_f64().unwrap() < neutral["score"].as_f64().unwrap(),
        "{neutral:#} then {rated:#}"
    );
    // Other components did not move: the drop is the reputation's weight (0.10) × 40.
    let drop = neutral["score"].as_f64().unwrap() - rated["score"].as_f64().unwrap();
    assert!((drop - 4.0).abs() < 0.2, "drop {drop}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feedback_stuck_in_the_mempool_is_replaced_with_higher_fees_and_given_once() {
    let anvil = Anvil::start();
    let r = registries(&anvil).await;
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = audit_yaml(&anvil.url, &r, "per_payment", 0) + "  replace_after_seconds: 1\n";
    // Nothing is mined until the test says so: the first transaction sits in the mempool.
    anvil.rpc("evm_setAutomine", json!([false])).await;
    let pag0 = start(&dir, &body(&config));
    pay(&pag0, &wall, "/paid", 1).await;
    let rows = until(
        30,
        || outbox(&pag0),
        |rows| rows.len() == 1 && rows[0]["state"] == "sent",
    )
    .await;
    assert_eq!(rows[0]["state"], "sent", "{rows:#?}");
    let first = rows[0]["tx_hash"].as_str().unwrap().to_string();
    // Priced right, it waits for its turn: no replacement while the market does not move.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(outbox(&pag0).await[0]["tx_hash"], first.as_str());
    // The base fee jumps (a block mined without it): now it is underpriced.
    anvil
        .rpc("anvil_setNextBlockBaseFeePerGas", json!(["0x174876E800"]))
        .await;
    anvil.rpc("evm_mine", json!([])).await;
    let metrics = until(
        30,
        || async {
            pag0.metrics_until(|m| m.contains("state=\"replaced\""))
                .await
        },
        |m| m.contains("state=\"replaced\""),
    )
    .await;
    assert!(metrics.contains("state=\"replaced\""), "{metrics}");
    let rows = outbox(&pag0).await;
    assert_eq!(rows[0]["state"], "sent", "{rows:#?}");
    let replaced = rows[0]["earlier_tx_hashes"].as_str().unwrap().to_string();

    anvil.rpc("evm_mine", json!([])).await;
    let rows = until(30, || outbox(&pag0), all_confirmed(1)).await;
    assert!(all_confirmed(1)(&rows), "{rows:#?}");
    let events = feedback_events(&anvil, r.reputation).await;
    assert_eq!(events.len(), 1, "given once");
    // The replacement was mined; what it replaced never will be (same nonce).
    let mined = rows[0]["tx_hash"].as_str().unwrap();
    let receipt = anvil.rpc("eth_getTransactionReceipt", json!([mined])).await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    for old in replaced.split(' ') {
        assert_ne!(old, mined);
        let receipt = anvil.rpc("eth_getTransactionReceipt", json!([old])).await;
        assert!(receipt.is_null(), "{old} was mined too: {receipt}");
    }
}
