//! Never lose a payment (issue 15): every payment header pag0 sends is recorded before it
//! leaves, a SIGKILL at any instant loses none of them, and after a restart the payments whose
//! outcome is unknown are in doubt, hold their budget and cannot be paid again through a retry.
//! Also: offers pag0 must never sign are declined.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::paywall::{self, Paywall};
use common::process::Process;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// One paid call to `/paid` or `/slow-paid` costs 10000 base units = 0.01 USDC.
const PRICE: u64 = 10_000;

fn body() -> String {
    format!(
        "{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: idempotency\n  - kind: policy\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n    policy:\n      budgets:\n        - asset: USDC\n          per_request: \"0.01\"\n          daily: \"100\"\n          monthly: \"1000\"\n",
        paywall::payments_yaml(),
        paywall::WALLET_KEY,
    )
}

fn start(dir: &tempfile::TempDir) -> Process {
    start_with(dir, &body())
}

fn start_with(dir: &tempfile::TempDir, body: &str) -> Process {
    Process::start_env(dir, body, &[("RUST_LOG", "warn")])
}

/// Paid calls in flight from `tasks` agents, each calling `path` in a loop until stopped.
fn load(
    pag0: &Process,
    wall: &Paywall,
    path: &str,
    tasks: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|_| {
            let client = pag0.client();
            let url = wall.url(path);
            tokio::spawn(async move {
                // Errors are expected: the proxy dies under them.
                while client.get(&url).send().await.is_ok() {}
            })
        })
        .collect()
}

/// Sends `n` calls to `/slow-paid` (the paywall takes the payment, then answers 800 ms later)
/// and SIGKILLs pag0 once the paywall has taken all `n`: their outcome is unknown to pag0.
async fn kill_with_payments_in_flight(pag0: Process, wall: &Paywall, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (pag0.client(), wall.url("/slow-paid"));
            tokio::spawn(async move {
                let _ = client.get(url).send().await;
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while wall.stats().paid < n {
        assert!(Instant::now() < deadline, "the paid attempts never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pag0.kill();
    for c in calls {
        let _ = c.await;
    }
}

fn nonces(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["nonce"].as_str().unwrap().to_string())
        .collect()
}

fn amount_sum(rows: &Value) -> u64 {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount"].as_str().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_payment_and_counts_none_twice() {
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Killed at several instants while paid calls are in flight: fast ones (/paid, signed up
    // front from price memory after the first) and slow ones (/slow-paid: the paywall has taken
    // the payment and answers 800 ms later).
    for kill_after in [60, 300, 450, 900] {
        let pag0 = start(&dir);
        let mut tasks = load(&pag0, &wall, "/paid", 8);
        tasks.extend(load(&pag0, &wall, "/slow-paid", 12));
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        pag0.kill();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let accepted = wall.nonces();
    assert!(accepted.len() >= 20, "the load paid: {}", accepted.len());

    let pag0 = start(&dir);
    let spend = pag0.admin_get("/api/spend?project=demo&limit=10000").await;
    let journal = nonces(&spend["spend"]);
    let in_doubt = nonces(&spend["in_doubt"]["payments"]);
    let journal_set: HashSet<&String> = journal.iter().collect();
    let doubt_set: HashSet<&String> = in_doubt.iter().collect();
    assert_eq!(
        journal_set.len(),
        journal.len(),
        "a payment journaled twice"
    );
    assert_eq!(doubt_set.len(), in_doubt.len(), "an intent listed twice");
    assert!(
        journal_set.is_disjoint(&doubt_set),
        "a payment both committed and in doubt"
    );
    let recorded: HashSet<&String> = journal_set.union(&doubt_set).copied().collect();
    let lost: Vec<&String> = accepted.iter().filter(|n| !recorded.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "payments the paywall took that pag0 lost: {lost:?}"
    );
    println!(
        "paywall accepted {}, journaled {}, in doubt {}",
        accepted.len(),
        journal.len(),
        in_doubt.len()
    );
    assert!(
        !in_doubt.is_empty(),
        "some payments were in flight at a kill"
    );
    assert!(!journal.is_empty(), "some payments completed before a kill");
    // Every intent of the crashed runs has an outcome or is in doubt: none is left `sent`.
    assert_eq!(
        spend["in_doubt"]["count"].as_u64().unwrap() as usize,
        in_doubt.len()
    );

    // The rebuilt budget counts the journal as spent and the payments in doubt as held.
    let budgets = pag0.admin_get("/api/budgets/demo").await;
    let daily = &budgets["budgets"][0]["daily"];
    assert_eq!(
        daily["spent"].as_str().unwrap().parse::<u64>().unwrap(),
        amount_sum(&spend["spend"]),
        "{budgets}"
    );
    assert_eq!(
        daily["held"].as_str().unwrap().parse::<u64>().unwrap(),
        amount_sum(&spend["in_doubt"]["payments"]),
        "{budgets}"
    );
    assert_eq!(
        amount_sum(&spend["spend"]) + amount_sum(&spend["in_doubt"]["payments"]),
        PRICE * recorded.len() as u64
    );
    let gauge = format!(
        "pag0_payments_in_doubt{{project=\"demo\"}} {}",
        in_doubt.len()
    );
    let metrics = pag0.metrics_until(|m| m.contains(&gauge)).await;
    assert!(metrics.contains(&gauge), "{gauge} in\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_with_the_same_idempotency_key_is_not_paid_again() {
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(&dir);
    let client = pag0.client();
    let url = wall.url("/slow-paid");
    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            let _ = client
                .get(url)
                .header("idempotency-key", "order-42")
                .send()
                .await;
        }
    });
    // The paywall has taken the payment and will answer 800 ms later: pag0 dies now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wall.stats().paid == 0 {
        assert!(Instant::now() < deadline, "the paid attempt never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pag0.kill();
    let _ = first.await;
    let paid_nonce = wall.nonces().into_iter().next().unwrap();

    let pag0 = start(&dir);
    let resp = pag0
        .client()
        .get(&url)
        .header("idempotency-key", "order-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "IDEMPOTENCY_IN_DOUBT", "{body}");
    assert_eq!(body["error"]["details"]["nonce"], paid_nonce, "{body}");
    assert_eq!(wall.stats().paid, 1, "nothing was signed again");
    assert_eq!(
        wall.stats().requests,
        2,
        "the retry never reached the paywall"
    );
    // Another key is a new request and is paid.
    let resp = pag0
        .client()
        .get(wall.url("/paid"))
        .header("idempotency-key", "order-43")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(wall.stats().paid, 2);
    let metrics = pag0
        .metrics_until(|m| {
            m.contains(r#"pag0_payment_intents_total{project="demo",state="committed"} 1"#)
        })
        .await;
    for line in [
        r#"pag0_payment_intents_total{project="demo",state="sent"} 1"#,
        r#"pag0_payment_intents_total{project="demo",state="committed"} 1"#,
        r#"pag0_payments_in_doubt{project="demo"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_must_never_be_signed_are_declined() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&body());
    let client = pag0.client("demo", DEMO_KEY);
    for (path, why) in [
        (
            "/huge-timeout",
            "maxTimeoutSeconds 18446744073709551615 is outside 1..=600",
        ),
        ("/zero-payto", "payTo is the zero address"),
        ("/zero-amount", "amount 0"),
        ("/wrong-domain", "EIP-712 domain"),
        ("/no-domain", "EIP-712 domain"),
    ] {
        let resp = client.get(wall.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED, "{path}");
        assert_eq!(
            resp.headers()["x-pag0-payment"].to_str().unwrap(),
            "declined",
            "{path}"
        );
        let reason = resp.headers()["x-pag0-payment-reason"].to_str().unwrap();
        assert!(reason.contains(why), "{path}: {reason}");
    }
    let stats = wall.stats();
    assert_eq!(
        stats.requests, 5,
        "one unpaid request each, no paid attempt"
    );
    assert_eq!(stats.paid, 0);
    assert!(stats.invalid.is_empty(), "{:?}", stats.invalid);
    let spend = pag0.admin_get("/api/spend?project=demo").await;
    assert_eq!(spend["in_doubt"]["count"], 0);
    assert_eq!(spend["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_max_authorization_lets_a_longer_offer_through_and_bounds_valid_before() {
    let wall = Paywall::start().await;
    // The paywall's offers ask for 60 s; a cap below that declines them.
    let tight = body().replace(
        "payments:\n",
        "payments:\n  max_authorization_seconds: 30\n",
    );
    let pag0 = Pag0::start(&tight);
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let reason = resp.headers()["x-pag0-payment-reason"].to_str().unwrap();
    assert!(
        reason.contains("maxTimeoutSeconds 60 is outside 1..=30"),
        "{reason}"
    );
    drop(pag0);
    let pag0 = Pag0::start(&body());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let spend = eventually(
        || pag0.admin_get("/api/spend?project=demo"),
        |v| v["count"] == 1,
    )
    .await;
    assert_eq!(spend["count"], 1, "{spend}");
    // The signed window ends within maxTimeoutSeconds of the call.
    let accepted = wall.accepted();
    assert_eq!(accepted.len(), 1);
    assert!(
        accepted[0].valid_before <= before + 2 + 60,
        "{}",
        accepted[0].valid_before
    );
    // A committed payment is its journal row (same id): no intent row is left open for it.
    let db = pag0.dir.path().join("pag0.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM payment_intents WHERE state IN ('sent', 'in_doubt')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_in_doubt_are_resolved_from_the_chain_after_a_crash() {
    use common::chain::{Anvil, CHAIN_ID};
    let anvil = Anvil::start();
    let token = anvil.deploy_token("USDC").await;
    let wallet: alloy_primitives::Address = paywall::WALLET_ADDRESS.parse().unwrap();
    anvil.mint(token, wallet, 1_000_000).await;
    let network = format!("eip155:{CHAIN_ID}");
    let wall = Paywall::start_for(paywall::Token {
        network: network.clone(),
        chain_id: CHAIN_ID,
        asset: token.to_string(),
        max_timeout_seconds: 8,
        settle_rpc: None,
    })
    .await;
    let body = body()
        .replace(
            &paywall::payments_yaml(),
            &format!(
                "payments:\n  assets:\n    - network: {network}\n      address: \"{token}\"\n      symbol: USDC\n      decimals: 6\n      eip712: {{name: USDC, version: \"2\"}}\n  rpc:\n    {network}: {}\n",
                anvil.url
            ),
        );
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start_with(&dir, &body);
    // Two paid calls the paywall takes; pag0 dies before either answer comes back.
    kill_with_payments_in_flight(pag0, &wall, 2).await;
    // The facilitator settles one of them; the other is never settled and expires.
    let accepted = wall.accepted();
    assert_eq!(accepted.len(), 2);
    let settled_tx = anvil.settle(token, &accepted[0]).await;
    let expiry = accepted[1].valid_before;
    while pag0::clock::unix_now() <= expiry {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anvil.mine().await;

    let pag0 = start_with(&dir, &body);
    let spend = eventually(
        || pag0.admin_get("/api/spend?project=demo"),
        |v| v["in_doubt"]["count"] == 0 && v["count"] == 1,
    )
    .await;
    assert_eq!(spend["count"], 1, "{spend}");
    assert_eq!(spend["in_doubt"]["count"], 0, "{spend}");
    let row = &spend["spend"][0];
    assert_eq!(row["nonce"], format!("{:#x}", accepted[0].nonce));
    assert_eq!(row["tx_hash"], format!("{settled_tx:#x}"), "{row}");
    let db = dir.path().join("pag0.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let states: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT nonce, state, tx_hash FROM payment_intents ORDER BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        vec![
            (
                format!("{:#x}", accepted[0].nonce),
                "committed".to_string(),
                Some(format!("{settled_tx:#x}"))
            ),
            (
                format!("{:#x}", accepted[1].nonce),
                "released".to_string(),
                None
            ),
        ]
    );
    // The budget counts the settled payment as spent and holds nothing for the released one.
    let budgets = pag0.admin_get("/api/budgets/demo").await;
    assert_eq!(
        budgets["budgets"][0]["daily"]["spent"],
        PRICE.to_string(),
        "{budgets}"
    );
    assert_eq!(budgets["budgets"][0]["daily"]["held"], "0", "{budgets}");
    let pay_to: alloy_primitives::Address = paywall::PAY_TO.parse().unwrap();
    assert_eq!(
        anvil.balance(token, pay_to).await,
        alloy_primitives::U256::from(PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_redis_ledger_payments_in_doubt_keep_their_hold_across_a_crash() {
    let wall = Paywall::start().await;
    let prefix = format!("pag0test{}", hex::encode(rand::random::<[u8; 6]>()));
    // Budget for three calls, shared in Redis.
    let body = body().replace("daily: \"100\"", "daily: \"0.03\"")
        + &format!(
            "redis:\n  url: redis://127.0.0.1:6379\n  key_prefix: {prefix}\nbudgets:\n  ledger: redis\n"
        );
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start_with(&dir, &body);
    kill_with_payments_in_flight(pag0, &wall, 2).await;
    let pag0 = start_with(&dir, &body);
    let spend = pag0.admin_get("/api/spend?project=demo").await;
    assert_eq!(spend["in_doubt"]["count"], 2, "{spend}");
    // The two payments in doubt still hold their budget: one more call fits, then none.
    let resp = pag0.client().get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = pag0.client().get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        resp.headers()["x-pag0-policy"].to_str().unwrap(),
        "DAILY_BUDGET_EXCEEDED"
    );
    // The third call's commit is batched by the settler after its answer: wait for it.
    let budgets = eventually(
        || pag0.admin_get("/api/budgets/demo"),
        |v| v["budgets"][0]["daily"]["spent"] == "10000",
    )
    .await;
    assert_eq!(budgets["ledger"], "redis", "{budgets}");
    assert_eq!(
        budgets["budgets"][0]["daily"]["spent"],
        PRICE.to_string(),
        "{budgets}"
    );
    assert_eq!(budgets["budgets"][0]["daily"]["held"], "20000", "{budgets}");
    assert_eq!(
        budgets["budgets"][0]["in_doubt"]["daily"], "20000",
        "{budgets}"
    );
    // Leave nothing behind in the shared Redis.
    let out = Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .unwrap();
    for key in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Command::new("redis-cli").args(["DEL", key]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_url_with_an_api_key_never_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "v2/secretKEY0123456789";
    // Nothing listens there: every resolution attempt fails (and is logged).
    let url = format!("http://127.0.0.1:{}/{secret}", free_port());
    let body = body().replace(
        "payments:\n",
        "payments:\n  rpc:\n    eip155:84532: ${PAG0_TEST_RPC}\n",
    );
    let env = [("RUST_LOG", "trace"), ("PAG0_TEST_RPC", url.as_str())];
    // A payment in doubt for the resolver to ask the RPC about.
    Process::start_env(&dir, &body, &env).kill();
    let db = dir.path().join("pag0.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let now = pag0::clock::unix_now() as i64;
    sqlx::query(
        "INSERT INTO payment_intents (id, project, pool, network, asset, payer, pay_to, amount, nonce, valid_after, valid_before, url, source, window_day, window_month, created_at, state, updated_at)
         VALUES ('x1', 'demo', '', 'eip155:84532', $1, $2, $3, '10', $4, $5, $6, 'http://x/', 'wallet', '2026-12-03', '2026-12', 0, 'in_doubt', 0)",
    )
    .bind(paywall::ASSET)
    .bind(paywall::WALLET_ADDRESS)
    .bind(paywall::PAY_TO)
    .bind(format!("0x{}", "11".repeat(32)))
    .bind(now - 600)
    .bind(now + 60)
    .execute(&pool)
    .await
    .unwrap();
    let pag0 = Process::start_env(&dir, &body, &env);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    pag0.kill();
    let log = std::fs::read_to_string(dir.path().join("pag0.log")).unwrap();
    assert!(
        log.contains("cannot resolve a payment in doubt yet"),
        "the resolver ran: {log}"
    );
    assert!(log.contains("<rpc url>"), "errors name the URL redacted");
    assert!(
        !log.contains(secret),
        "the RPC URL's key leaked into the log"
    );
}
