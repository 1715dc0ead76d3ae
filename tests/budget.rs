//! Spend firewall end to end: agent → pag0 → the test paywall, with budgets in the in-process
//! ledger, in a shared Redis (two pag0 instances) and the journal on SQLite or PostgreSQL.

mod common;

use std::time::Duration;

use common::paywall::{self, Paywall};
use common::services::TempDatabase;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Row;

/// One paid call to `/paid` costs 10000 base units = 0.01 USDC.
const PRICE: u64 = 10_000;

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// A config with the paywall's asset, the policy stage, and `policy` (YAML under `policy:`).
fn config(policy: &str, extra: &str) -> String {
    format!(
        "{}{extra}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: policy\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n    policy:\n{policy}",
        paywall::payments_yaml(),
        paywall::WALLET_KEY,
    )
}

fn budget(per_request: &str, daily: &str, monthly: &str) -> String {
    format!(
        "      budgets:\n        - asset: USDC\n          per_request: \"{per_request}\"\n          daily: \"{daily}\"\n          monthly: \"{monthly}\"\n"
    )
}

async fn error_code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sends `total` concurrent paid GETs spread over `instances` (each client opens its own
/// connections); returns (successes, DAILY_BUDGET_EXCEEDED refusals).
async fn storm(instances: &[&Pag0], url: &str, total: usize) -> (usize, usize) {
    let clients: Vec<reqwest::Client> = instances
        .iter()
        .map(|p| p.client("demo", DEMO_KEY))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..total {
        let client = clients[i % clients.len()].clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let resp = client.get(url).send().await.unwrap();
            let status = resp.status();
            let policy = header(&resp, "x-pag0-policy");
            (status, policy)
        }));
    }
    let (mut ok, mut denied) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::FORBIDDEN, Some(code)) if code == "DAILY_BUDGET_EXCEEDED" => denied += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (ok, denied)
}

async fn sqlite_journal(pag0: &Pag0) -> Vec<(String, String)> {
    let db = pag0.dir.path().join("pag0.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::query("SELECT amount, pool FROM spend_journal WHERE project = 'demo'")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("amount"), r.get("pool")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_daily_budget_is_exact_under_a_storm_of_concurrent_paid_calls() {
    const N: usize = 5;
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(&budget("0.01", "0.05", "1"), ""));
    let (ok, denied) = storm(&[&pag0], &wall.url("/paid"), 20 * N).await;
    assert_eq!((ok, denied), (N, 19 * N));
    assert_eq!(
        wall.stats().paid,
        N,
        "exactly N payments reached the upstream"
    );
    // Journaled in `logging`, which may finish just after the response.
    let rows = eventually(|| sqlite_journal(&pag0), |rows| rows.len() >= N).await;
    assert_eq!(rows.len(), N);
    assert!(
        rows.iter()
            .all(|(amount, pool)| amount == "10000" && pool == "USDC")
    );
    // Commits follow the journal writes.
    let committed = format!(r#"pag0_budget_operations_total{{op="committed",project="demo"}} {N}"#);
    let metrics = eventually(
        || async { pag0.admin(reqwest::Method::GET, "/metrics").await.1 },
        |m| m.contains(&committed),
    )
    .await;
    assert!(
        metrics.contains(&format!(
            r#"pag0_policy_violations_total{{code="DAILY_BUDGET_EXCEEDED",enforced="true",project="demo"}} {}"#,
            19 * N
        )),
        "{metrics}"
    );
    for (op, n) in [("reserved", N), ("committed", N), ("denied", 19 * N)] {
        let line = format!(r#"pag0_budget_operations_total{{op="{op}",project="demo"}} {n}"#);
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_budget_is_shared_by_two_instances_and_agrees_with_the_postgres_journal() {
    const N: usize = 4;
    let wall = Paywall::start().await;
    let db = TempDatabase::create().await;
    let prefix = format!("pag0test{}", hex::encode(rand::random::<[u8; 4]>()));
    let shared = format!(
        "database:\n  url: {}\nredis:\n  url: redis://127.0.0.1:6379\n  key_prefix: {prefix}\nbudgets:\n  ledger: redis\n",
        db.url()
    );
    let cfg = config(&budget("0.01", "0.04", "1"), &shared);
    let a = Pag0::start(&cfg);
    let b = Pag0::start(&cfg);
    let (ok, denied) = storm(&[&a, &b], &wall.url("/paid"), 20 * N).await;
    assert_eq!((ok, denied), (N, 19 * N));
    assert_eq!(wall.stats().paid, N);

    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    let (_, total) = eventually(
        || async {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, COALESCE(SUM(amount), 0)::text AS total FROM spend_journal",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (row.get::<i64, _>("n"), row.get::<String, _>("total"))
        },
        |(n, _)| *n == N as i64,
    )
    .await;
    assert_eq!(total, (PRICE * N as u64).to_string());
    // Redis holds the same spent amount for today.
    let day = pag0::budget::Windows::at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .day;
    let out = std::process::Command::new("redis-cli")
        .args([
            "HGET",
            &format!("{prefix}:budget:{{demo/USDC}}:d:{day}"),
            "spent",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), total);
    drop((a, b));
    pool.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_responses_tell_the_remaining_budget_and_denials_explain_themselves() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(&budget("0.01", "0.02", "0.03"), ""));
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "x-pag0-budget-remaining").as_deref(),
        Some("daily=10000; monthly=20000; pool=USDC")
    );
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(
        header(&resp, "x-pag0-budget-remaining").as_deref(),
        Some("daily=0; monthly=10000; pool=USDC")
    );
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        header(&resp, "x-pag0-policy").as_deref(),
        Some("DAILY_BUDGET_EXCEEDED")
    );
    assert_eq!(
        header(&resp, "x-pag0-budget-remaining").as_deref(),
        Some("daily=0; monthly=10000; pool=USDC")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "DAILY_BUDGET_EXCEEDED");
    assert_eq!(body["error"]["details"]["limit"], "20000");
    assert_eq!(body["error"]["details"]["used"], "20000");
    assert_eq!(body["error"]["details"]["amount"], "10000");
    assert_eq!(
        wall.stats().paid,
        2,
        "nothing was signed for the refused call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_limit_host_lists_and_network_rules_refuse_with_their_codes() {
    let wall = Paywall::start().await;
    let policy = format!(
        "{}      block_hosts: [\"blocked.example\"]\n",
        budget("0.005", "1", "1")
    );
    let pag0 = Pag0::start(&config(&policy, ""));
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(resp).await, "PER_REQUEST_LIMIT_EXCEEDED");
    assert_eq!(wall.stats().paid, 0);

    // Allow list without the paywall's host: refused before any upstream contact, free or not.
    let before = wall.stats().requests;
    let policy = format!(
        "{}      allow_hosts: [\"*.example.com\"]\n",
        budget("0.01", "1", "1")
    );
    pag0.rewrite(&config(&policy, ""));
    pag0.admin(reqwest::Method::POST, "/reload").await;
    let resp = client.get(wall.url("/free")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        header(&resp, "x-pag0-policy").as_deref(),
        Some("HOST_NOT_ALLOWED")
    );
    // Block list first, even over an allow-all list.
    let policy = format!(
        "{}      allow_hosts: [\"*\"]\n      block_hosts: [\"127.0.0.1\"]\n",
        budget("0.01", "1", "1")
    );
    pag0.rewrite(&config(&policy, ""));
    pag0.admin(reqwest::Method::POST, "/reload").await;
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "HOST_BLOCKED");
    assert_eq!(
        wall.stats().requests,
        before,
        "refused before reaching the upstream"
    );
    // ... and before the SSRF guard (listed first) looks the host up: a blocked or
    // not-allowed name that does not resolve is refused by policy, not a DNS failure.
    for (lists, code) in [
        ("      block_hosts: [\"*.invalid\"]\n", "HOST_BLOCKED"),
        ("      allow_hosts: [\"127.0.0.1\"]\n", "HOST_NOT_ALLOWED"),
    ] {
        pag0.rewrite(&config(&format!("{}{lists}", budget("0.01", "1", "1")), ""));
        pag0.admin(reqwest::Method::POST, "/reload").await;
        let resp = client
            .get("http://no-such-host.invalid/x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(header(&resp, "x-pag0-policy").as_deref(), Some(code));
    }

    // Only another network is allowed.
    let policy = format!(
        "{}      networks: [\"eip155:8453\"]\n",
        budget("0.01", "1", "1")
    );
    pag0.rewrite(&config(&policy, ""));
    pag0.admin(reqwest::Method::POST, "/reload").await;
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "NETWORK_NOT_ALLOWED");
    assert_eq!(wall.stats().paid, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_blocks_nothing_but_counts() {
    let wall = Paywall::start().await;
    let policy = format!("      enforce: false\n{}", budget("0.01", "0.01", "1"));
    let pag0 = Pag0::start(&config(&policy, ""));
    let client = pag0.client("demo", DEMO_KEY);
    for _ in 0..3 {
        let resp = client.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(wall.stats().paid, 3);
    let (_, metrics) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert!(
        metrics.contains(
            r#"pag0_policy_violations_total{code="DAILY_BUDGET_EXCEEDED",enforced="false",project="demo"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_calls_with_unknown_outcome_stay_in_doubt_and_refused_ones_release() {
    let wall = Paywall::start().await;
    // Budget for four calls; reads time out after 300 ms (/slow-paid answers after 800).
    let cfg = config(
        &budget("0.01", "0.04", "1"),
        "upstream:\n  read_timeout_ms: 300\n",
    );
    let pag0 = Pag0::start(&cfg);
    let client = pag0.client("demo", DEMO_KEY);
    // Refused by the upstream after verifying: proved not paid, the hold is released.
    for _ in 0..3 {
        let resp = client.get(wall.url("/always402")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    }
    // The paywall took these three payments and then failed, timed out, or lost the client:
    // whether they were settled is unknown, so each keeps holding its budget.
    let resp = client.get(wall.url("/paid-500")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&resp, "x-pag0-payment").as_deref(), Some("in-doubt"));
    assert_eq!(header(&resp, "x-pag0-cost"), None, "not known to be spent");
    let resp = client.get(wall.url("/slow-paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let impatient = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://demo:{DEMO_KEY}@{}", pag0.proxy)).unwrap())
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    assert!(impatient.get(wall.url("/slow-paid")).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // One call's budget is left: it goes through, then no more.
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(
        header(&resp, "x-pag0-policy").as_deref(),
        Some("DAILY_BUDGET_EXCEEDED")
    );
    let journal = eventually(|| sqlite_journal(&pag0), |rows| !rows.is_empty()).await;
    assert_eq!(journal.len(), 1, "only the settled payment is journaled");
    let spend = eventually(
        || pag0.admin_get("/api/spend?project=demo"),
        |v| v["in_doubt"]["count"] == 3,
    )
    .await;
    assert_eq!(spend["in_doubt"]["count"], 3, "{spend}");
    let key = format!("{}/{}", paywall::NETWORK, paywall::ASSET);
    assert_eq!(spend["in_doubt"]["amounts"][&key], "30000", "{spend}");
    let reasons: Vec<&str> = spend["in_doubt"]["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("answered 500")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no answer")),
        "{reasons:?}"
    );
    let budgets = pag0.admin_get("/api/budgets/demo").await;
    assert_eq!(
        budgets["budgets"][0]["in_doubt"]["daily"], "30000",
        "{budgets}"
    );
    assert_eq!(
        budgets["budgets"][0]["daily"]["spent"], "10000",
        "{budgets}"
    );
    assert_eq!(budgets["budgets"][0]["daily"]["held"], "30000", "{budgets}");
    assert_eq!(wall.stats().paid, 7, "3 refused + 3 in doubt + 1 settled");
}

fn redis_config(port: u16, redis_down: &str, policy: &str) -> String {
    config(
        policy,
        &format!(
            "redis:\n  url: redis://127.0.0.1:{port}\nbudgets:\n  ledger: redis\n  redis_down: {redis_down}\n"
        ),
    )
}

async fn paid_until_ok(client: &reqwest::Client, url: &str) -> reqwest::Response {
    for _ in 0..50 {
        let resp = client.get(url).send().await.unwrap();
        if resp.status() == StatusCode::OK {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not recover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_paid_calls_closed_keeps_free_traffic_and_recovers_by_itself() {
    use common::services::PrivateRedis;
    let wall = Paywall::start().await;
    let port = free_port();
    let redis = PrivateRedis::start_on(port);
    let pag0 = Pag0::start(&redis_config(
        port,
        "fail_closed",
        &budget("0.01", "1", "1"),
    ));
    let client = pag0.client("demo", DEMO_KEY);
    assert_eq!(
        client.get(wall.url("/paid")).send().await.unwrap().status(),
        StatusCode::OK
    );

    drop(redis);
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(resp).await, "BUDGET_UNAVAILABLE");
    let resp = client.get(wall.url("/free")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "free traffic is unaffected");
    assert_eq!(
        wall.stats().paid,
        1,
        "nothing was paid while the budget was unknown"
    );

    let _redis = PrivateRedis::start_on(port);
    paid_until_ok(&client, &wall.url("/paid")).await;
    assert_eq!(wall.stats().paid, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_can_fall_back_to_the_in_process_ledger() {
    use common::services::PrivateRedis;
    let wall = Paywall::start().await;
    let port = free_port();
    let redis = PrivateRedis::start_on(port);
    let pag0 = Pag0::start(&redis_config(
        port,
        "in_process",
        &budget("0.01", "0.02", "1"),
    ));
    let client = pag0.client("demo", DEMO_KEY);
    drop(redis);
    // The in-process ledger starts from the journal, and enforces the same budget.
    for _ in 0..2 {
        let resp = client.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "DAILY_BUDGET_EXCEEDED");
    assert_eq!(wall.stats().paid, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_rebuilt_from_the_journal_without_overspending() {
    use common::services::PrivateRedis;
    let wall = Paywall::start().await;
    let redis = PrivateRedis::start();
    let pag0 = Pag0::start(&redis_config(
        redis.port,
        "fail_closed",
        &budget("0.01", "0.05", "1"),
    ));
    let client = pag0.client("demo", DEMO_KEY);
    for _ in 0..3 {
        assert_eq!(
            client.get(wall.url("/paid")).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    // Let the last journal write land, then lose every key.
    eventually(|| sqlite_journal(&pag0), |rows| rows.len() == 3).await;
    assert_eq!(redis.cmd(&["FLUSHALL"]), "OK");
    let (ok, denied) = storm(&[&pag0], &wall.url("/paid"), 20).await;
    assert_eq!(
        (ok, denied),
        (2, 18),
        "3 spent before the flush + 2 = the budget of 5"
    );
    assert_eq!(wall.stats().paid, 5);
}

fn approval_policy(hook: &common::webhook::Hook, timeout_ms: u64) -> String {
    format!(
        "{}      approval:\n        threshold: \"0.005 USDC\"\n        webhook: {}\n        token: ${{PAG0_TEST_APPROVAL_TOKEN:-approval-token-123}}\n        timeout_ms: {timeout_ms}\n",
        budget("0.01", "1", "1"),
        hook.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_over_the_threshold_wait_for_the_approval_webhook() {
    use common::webhook::{Answer, Hook};
    let wall = Paywall::start().await;

    let approve = Hook::start(Answer::Approve).await;
    let pag0 = Pag0::start(&config(&approval_policy(&approve, 2000), ""));
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let received = approve.received();
    assert_eq!(received.len(), 1);
    let (auth, request) = &received[0];
    assert_eq!(auth.as_deref(), Some("Bearer approval-token-123"));
    assert_eq!(request["type"], "pag0.approval_request");
    assert_eq!(request["project"], "demo");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["amount"], "10000");
    assert_eq!(request["threshold"], "5000");
    assert!(request["url"].as_str().unwrap().ends_with("/paid"));
    assert_eq!(wall.stats().paid, 1);

    for (answer, expect_reason) in [
        (Answer::Deny("not today"), "not today"),
        (
            Answer::Slow(Duration::from_millis(1500)),
            "no answer within",
        ),
        (Answer::Status(500), "HTTP 500"),
    ] {
        let hook = Hook::start(answer).await;
        pag0.rewrite(&config(&approval_policy(&hook, 300), ""));
        let (status, _) = pag0.admin(reqwest::Method::POST, "/reload").await;
        assert_eq!(status, 200);
        let resp = client.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "APPROVAL_DENIED");
        let reason = body["error"]["details"]["reason"].as_str().unwrap();
        assert!(reason.contains(expect_reason), "{reason}");
        assert_eq!(hook.received().len(), 1);
    }
    assert_eq!(wall.stats().paid, 1, "nothing paid without approval");
    // The denied reservations were released: the budget shows one payment.
    let budgets = eventually(
        || async {
            let path = "/api/budgets/demo";
            pag0.admin_json(reqwest::Method::GET, path, None).await.1
        },
        |b| b["budgets"][0]["daily"]["held"] == "0",
    )
    .await;
    assert_eq!(budgets["budgets"][0]["daily"]["spent"], "10000");
    assert_eq!(budgets["budgets"][0]["daily"]["held"], "0");
    let (_, metrics) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    for result in ["approved", "denied", "timeout", "error"] {
        assert!(
            metrics.contains(&format!(
                r#"pag0_approvals_total{{project="demo",result="{result}"}} 1"#
            )),
            "{result}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_anomaly_alerts_once_per_window_and_blocks_nothing() {
    use common::webhook::{Answer, Hook};
    let wall = Paywall::start().await;
    let hook = Hook::start(Answer::Approve).await;
    let policy = format!(
        "{}      anomaly:\n        factor: 3\n        trailing_hours: 2\n        webhook: {}\n",
        budget("0.01", "1", "1"),
        hook.url()
    );
    let pag0 = Pag0::start(&config(&policy, ""));
    // History: 0.01 USDC in each of the two hours before the last one (journal rows, as
    // a previous run would have left them).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let db = pag0.dir.path().join("pag0.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    for (i, age) in [5400i64, 9000].iter().enumerate() {
        sqlx::query("INSERT INTO spend_journal (id, project, pool, network, asset, pay_to, payer, amount, nonce, url, window_day, window_month, reserved_at, committed_at) VALUES ($1, 'demo', 'USDC', 'eip155:84532', 'a', 'b', 'c', '10000', $1, 'u', 'd', 'm', $2, $2)")
            .bind(format!("past{i}"))
            .bind(now - age)
            .execute(&pool)
            .await
            .unwrap();
    }
    let client = pag0.client("demo", DEMO_KEY);
    // Average 10000/h; 3 payments = 30000 is not above 3×; the 4th is.
    for _ in 0..6 {
        let resp = client.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "alerts never block");
    }
    eventually(|| async { hook.received() }, |r| !r.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alerts = hook
        .received()
        .into_iter()
        .map(|(_, v)| v)
        .collect::<Vec<_>>();
    assert_eq!(alerts.len(), 1, "once per window: {alerts:?}");
    assert_eq!(alerts[0]["type"], "pag0.spend_anomaly");
    assert_eq!(alerts[0]["last_hour"], "40000");
    assert_eq!(alerts[0]["trailing_hourly_average"], "10000");
    let (_, metrics) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert!(
        metrics.contains(r#"pag0_anomaly_alerts_total{project="demo",result="sent"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pag0_remembers_todays_spending_from_the_journal() {
    let wall = Paywall::start().await;
    let state = tempfile::tempdir().unwrap();
    let cfg = config(
        &budget("0.01", "0.02", "1"),
        &format!(
            "database:\n  url: sqlite:{}\n",
            state.path().join("journal.db").display()
        ),
    );
    let first = Pag0::start(&cfg);
    let client = first.client("demo", DEMO_KEY);
    for _ in 0..2 {
        assert_eq!(
            client.get(wall.url("/paid")).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    // The request is finished (and its journal write queued) only after `logging`, which runs
    // after the agent got the response; wait for both rows, then restart.
    let (_, spend) = eventually(
        || first.admin_json(reqwest::Method::GET, "/api/spend?project=demo", None),
        |(_, v)| v["count"] == 2,
    )
    .await;
    assert_eq!(spend["count"], 2, "{spend}");
    drop(first);
    let second = Pag0::start(&cfg);
    let resp = second
        .client("demo", DEMO_KEY)
        .get(wall.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        header(&resp, "x-pag0-policy").as_deref(),
        Some("DAILY_BUDGET_EXCEEDED")
    );
    assert_eq!(wall.stats().paid, 2);
}
