//! The optional x402 facilitator: /supported in /health, verify_before_pay.

mod common;

use common::facilitator::TestFacilitator;
use common::paywall::{self, Paywall};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

fn config(facilitator: &str) -> String {
    format!(
        "{}  facilitator:\n    url: {facilitator}\n    verify_before_pay: true\n    timeout_ms: 1000\nstages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n",
        paywall::payments_yaml(),
        paywall::WALLET_KEY
    )
}

async fn health(pag0: &Pag0) -> (u16, Value) {
    // The probe runs in the background right after start.
    for _ in 0..100 {
        let (status, body) = pag0.admin(reqwest::Method::GET, "/health").await;
        let json: Value = serde_json::from_str(&body).unwrap();
        if json["dependencies"]["facilitator"]["status"] != "unknown" {
            return (status, json);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the facilitator was never probed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_before_pay_checks_each_payment_with_the_facilitator() {
    let wall = Paywall::start().await;
    let facilitator = TestFacilitator::start().await;
    let pag0 = Pag0::start(&config(&format!("http://{}", facilitator.addr)));
    let (status, h) = health(&pag0).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["dependencies"]["facilitator"]["status"], "up");
    assert_eq!(
        h["dependencies"]["facilitator"]["kinds"],
        serde_json::json!(["v2-exact-eip155:84532"])
    );

    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!((facilitator.verifies(), wall.stats().paid), (1, 1));

    // The facilitator says no: pag0 does not send the payment and tells the agent why.
    facilitator.set_valid(false);
    let resp = client.get(wall.url("/multi")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let why = resp.headers()["x-pag0-payment-reason"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(why.contains("insufficient_funds"), "{why}");
    assert_eq!((facilitator.verifies(), wall.stats().paid), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_facilitator_fails_paid_calls_with_502_and_degrades_health() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config(&format!("http://127.0.0.1:{}", free_port())));
    // The first probe runs in the background right after start.
    let (status, h) = eventually(|| health(&pag0), |(status, _)| *status == 503).await;
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["dependencies"]["facilitator"]["status"], "down");

    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "FACILITATOR_UNAVAILABLE");
    let stats = wall.stats();
    assert_eq!(
        (stats.paid, stats.requests),
        (0, 1),
        "the probe only; nothing paid, no retry loop: {stats:?}"
    );
    // Free traffic is unaffected.
    assert_eq!(
        client.get(wall.url("/free")).send().await.unwrap().status(),
        StatusCode::OK
    );
}
