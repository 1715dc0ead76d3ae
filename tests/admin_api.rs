//! The spend-firewall admin API: policies (CRUD with version history, applied within a second
//! on every instance), budgets and the spend journal.

mod common;

use std::time::{Duration, Instant};

use common::paywall::{self, Paywall};
use common::services::TempDatabase;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A project with a wallet and no YAML policy; `extra` adds top-level sections.
fn config(extra: &str) -> String {
    format!(
        "{}{extra}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: policy\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n",
        paywall::payments_yaml(),
        paywall::WALLET_KEY,
    )
}

/// Repeats a paid call until its status is `want` (another instance's poller runs every
/// 500 ms);
/// returns how long that took.
async fn until_status(client: &reqwest::Client, url: &str, want: StatusCode) -> Duration {
    let start = Instant::now();
    loop {
        let status = client.get(url).send().await.unwrap().status();
        if status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still {status} instead of {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/api/policies` reports demo's database policy as applied.
async fn until_applied(pag0: &Pag0) -> Duration {
    let start = Instant::now();
    loop {
        let (_, list) = pag0.admin_json(Method::GET, "/api/policies", None).await;
        if list["policies"][0]["applied"] == true {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never applied: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn daily(amount: &str) -> Value {
    json!({"budgets": [{"asset": "USDC", "per_request": "0.01", "daily": amount}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_admin_token() {
    let pag0 = Pag0::start(&config(""));
    for (method, path) in [
        (Method::GET, "/api/policies"),
        (Method::POST, "/api/policies"),
        (Method::GET, "/api/budgets/demo"),
        (Method::GET, "/api/spend?project=demo"),
    ] {
        let resp = reqwest::Client::new()
            .request(method.clone(), format!("http://{}{path}", pag0.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_crud_round_trip_keeps_history_and_applies_without_a_restart() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(""));
    let client = pag0.client("demo", DEMO_KEY);
    let paid = wall.url("/paid");

    let (status, body) = pag0
        .admin_json(
            Method::POST,
            "/api/policies",
            Some(json!({"project": "demo", "policy": daily("0.01")})),
        )
        .await;
    assert_eq!((status, &body["version"]), (201, &json!(1)), "{body}");
    let (status, body) = pag0
        .admin_json(
            Method::POST,
            "/api/policies",
            Some(json!({"project": "demo", "policy": daily("0.02")})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("POLICY_EXISTS"))
    );

    // Applied within a second; then one call fits the daily budget and the next is refused.
    let took = until_applied(&pag0).await;
    assert!(took < Duration::from_secs(1), "applied after {took:?}");
    assert_eq!(
        client.get(&paid).send().await.unwrap().status(),
        StatusCode::OK
    );
    let resp = client.get(&paid).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(wall.stats().paid, 1);

    let (status, body) = pag0
        .admin_json(
            Method::PUT,
            "/api/policies/demo",
            Some(json!({"policy": daily("0.03")})),
        )
        .await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");
    let took = until_status(&client, &paid, StatusCode::OK).await;
    assert!(took < Duration::from_secs(1), "picked up after {took:?}");

    // Commits land just after the responses.
    let budgets = eventually(
        || async {
            pag0.admin_json(Method::GET, "/api/budgets/demo", None)
                .await
                .1
        },
        |b| b["budgets"][0]["daily"]["held"] == "0",
    )
    .await;
    assert_eq!(budgets["budgets"][0]["pool"], "USDC");
    assert_eq!(
        budgets["budgets"][0]["daily"]["spent"], "20000",
        "{budgets}"
    );
    assert_eq!(budgets["budgets"][0]["daily"]["remaining"], "10000");

    let (status, body) = pag0
        .admin_json(Method::DELETE, "/api/policies/demo", None)
        .await;
    assert_eq!((status, &body["active"]), (200, &json!(false)));
    let (status, _) = pag0
        .admin_json(Method::DELETE, "/api/policies/demo", None)
        .await;
    assert_eq!(status, 404);
    let (_, body) = pag0
        .admin_json(Method::GET, "/api/policies/demo", None)
        .await;
    assert_eq!(body["source"], "none");
    let versions: Vec<(i64, bool)> = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, [(3, false), (2, true), (1, true)]);
    assert_eq!(body["history"][1]["policy"]["budgets"][0]["daily"], "0.03");

    // Without a policy nothing limits the project any more.
    for _ in 0..3 {
        until_status(&client, &paid, StatusCode::OK).await;
    }
    let (_, list) = pag0.admin_json(Method::GET, "/api/policies", None).await;
    assert_eq!(
        list["policies"][0],
        json!({"project": "demo", "source": "none"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_and_requests_get_clear_4xx_errors() {
    let pag0 = Pag0::start(&config(""));
    let bad = json!({"project": "demo", "policy": {
        "budgets": [{"asset": "USDC", "per_request": "1", "daily": "0.50"}, {"asset": "DOGE", "daily": "1"}],
        "allow_hosts": ["https://nope"],
        "colour": "red",
    }});
    let (status, body) = pag0
        .admin_json(Method::POST, "/api/policies", Some(bad))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("INVALID_POLICY"))
    );
    assert!(
        body["error"]["details"][0]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );

    let bad = json!({"project": "demo", "policy": {
        "budgets": [{"asset": "USDC", "per_request": "1", "daily": "0.50"}, {"asset": "DOGE", "daily": "1"}],
        "allow_hosts": ["https://nope"],
    }});
    let (_, body) = pag0
        .admin_json(Method::POST, "/api/policies", Some(bad))
        .await;
    let details: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("policy.budgets[0]: limits must satisfy")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("policy.budgets[1].asset: no asset \"DOGE\"")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("policy.allow_hosts[0]: invalid host pattern")),
        "{details:?}"
    );

    let (status, body) = pag0
        .admin_json(
            Method::POST,
            "/api/policies",
            Some(json!({"project": "ghost", "policy": {}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("PROJECT_NOT_FOUND"))
    );

    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/policies", pag0.admin))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_JSON");

    // The strict-parameter rule of the analytics API: each error names its parameter.
    for (path, parameter) in [
        ("/api/spend", "project"),
        ("/api/spend?project=demo&from=yesterday", "from"),
        ("/api/spend?project=demo&limit=0", "limit"),
        ("/api/spend?project=demo&projet=demo", "projet"),
        ("/api/spend?project=demo&limit=5&limit=6", "limit"),
        (
            "/api/spend?project=demo&from=2026-12-02&to=2026-12-01",
            "from",
        ),
    ] {
        let (status, body) = pag0.admin_json(Method::GET, path, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("INVALID_PARAMETER")),
            "{path}: {body}"
        );
        assert_eq!(body["error"]["details"]["parameter"], parameter, "{path}");
    }
    let (status, _) = pag0
        .admin_json(Method::GET, "/api/budgets/ghost", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_journal_is_queryable_by_time() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(""));
    let client = pag0.client("demo", DEMO_KEY);
    for _ in 0..2 {
        assert_eq!(
            client.get(wall.url("/paid")).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    let body = eventually(
        || async {
            pag0.admin_json(Method::GET, "/api/spend?project=demo", None)
                .await
                .1
        },
        |b| b["count"] == 2,
    )
    .await;
    assert_eq!(body["count"], 2, "{body}");
    let row = &body["spend"][0];
    assert_eq!(row["amount"], "10000");
    assert_eq!(row["network"], paywall::NETWORK);
    assert_eq!(
        row["pay_to"].as_str().unwrap().to_lowercase(),
        paywall::PAY_TO.to_lowercase()
    );
    assert_eq!(
        row["payer"].as_str().unwrap().to_lowercase(),
        paywall::WALLET_ADDRESS.to_lowercase()
    );
    assert!(row["tx_hash"].as_str().unwrap().starts_with("0x"));
    assert!(row["url"].as_str().unwrap().ends_with("/paid"));
    let (_, none) = pag0
        .admin_json(Method::GET, "/api/spend?project=demo&to=2020-01-01", None)
        .await;
    assert_eq!(none["count"], 0);
    let (_, today) = pag0
        .admin_json(
            Method::GET,
            "/api/spend?project=demo&from=2020-01-01T00:00:00Z&limit=1",
            None,
        )
        .await;
    assert_eq!(today["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_through_the_api_applies_before_the_api_answers() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(""));
    let client = pag0.client("demo", DEMO_KEY);
    let free = wall.url("/free");
    let status = || async { client.get(&free).send().await.unwrap().status() };
    let block = json!({"policy": {"block_hosts": ["127.0.0.1"]}});
    // Each write is followed by exactly one request, at once: no waiting, no retry.
    for round in 0..3 {
        let (code, body) = pag0
            .admin_json(
                Method::POST,
                "/api/policies",
                Some(json!({"project": "demo", "policy": block["policy"]})),
            )
            .await;
        assert_eq!(code, 201, "round {round}: {body}");
        assert_eq!(status().await, StatusCode::FORBIDDEN, "round {round}: POST");
        let (code, _) = pag0
            .admin_json(
                Method::PUT,
                "/api/policies/demo",
                Some(json!({"policy": {}})),
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(status().await, StatusCode::OK, "round {round}: PUT");
        let (code, _) = pag0
            .admin_json(Method::PUT, "/api/policies/demo", Some(block.clone()))
            .await;
        assert_eq!(code, 200);
        assert_eq!(status().await, StatusCode::FORBIDDEN, "round {round}: PUT");
        let (code, _) = pag0
            .admin_json(Method::DELETE, "/api/policies/demo", None)
            .await;
        assert_eq!(code, 200);
        assert_eq!(status().await, StatusCode::OK, "round {round}: DELETE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_on_one_instance_applies_on_another_within_a_second() {
    let wall = Paywall::start().await;
    let db = TempDatabase::create().await;
    let cfg = config(&format!("database:\n  url: {}\n", db.url()));
    let a = Pag0::start(&cfg);
    let b = Pag0::start(&cfg);
    let client_b = b.client("demo", DEMO_KEY);
    let block = json!({"project": "demo", "policy": {"block_hosts": ["127.0.0.1"]}});
    let (status, _) = a
        .admin_json(Method::POST, "/api/policies", Some(block))
        .await;
    assert_eq!(status, 201);
    let took = until_status(&client_b, &wall.url("/free"), StatusCode::FORBIDDEN).await;
    assert!(
        took < Duration::from_secs(1),
        "instance b applied it after {took:?}"
    );
    let (_, body) = b.admin_json(Method::GET, "/api/policies/demo", None).await;
    assert_eq!(body["source"], "database");
    drop((a, b));
    db.drop_now().await;
}
