//! x402 v2 end to end: agent → pag0 (forward proxy) → paywall that verifies every payment.

mod common;

use alloy_primitives::U256;
use common::paywall::{self, Paywall, agent_pays};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const NO_WALLET_KEY: &str = "nowallet-key-0123456789";
const RELAY_KEY: &str = "relay-key-0123456789";

fn config() -> String {
    format!(
        "{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: idempotency\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n  - id: nowallet\n    keys: [\"sha256:{}\"]\n  - id: relay\n    mode: relay\n    keys: [\"sha256:{}\"]\n",
        paywall::payments_yaml(),
        paywall::WALLET_KEY,
        sha256_hex(NO_WALLET_KEY.as_bytes()),
        sha256_hex(RELAY_KEY.as_bytes()),
    )
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_paid_once_and_the_agent_sees_the_paid_response() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", wall.stats());
    assert_eq!(header(&resp, "x-pag0-paid").as_deref(), Some("true"));
    assert_eq!(header(&resp, "x-pag0-cost").as_deref(), Some("10000 USDC"));
    assert_eq!(
        header(&resp, "x-pag0-network").as_deref(),
        Some(paywall::NETWORK)
    );
    assert!(header(&resp, "x-pag0-tx").is_some_and(|t| t.starts_with("0x") && t.len() == 66));
    assert!(
        header(&resp, "payment-response").is_some(),
        "the upstream receipt is passed on"
    );
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/paid");
    let stats = wall.stats();
    assert_eq!(
        (stats.paid, stats.requests),
        (1, 2),
        "one 402 probe, one paid replay: {stats:?}"
    );
    assert!(stats.invalid.is_empty(), "{:?}", stats.invalid);

    // A free route is not touched.
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/free"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-pag0-paid").as_deref(), Some("false"));
    assert_eq!(wall.stats().paid, 1);

    let (_, metrics) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert!(
        metrics.contains(r#"pag0_payments_total{outcome="signed",project="demo"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_are_replayed_identically() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let body = serde_json::to_vec(&serde_json::json!({"query": "x".repeat(10_000)})).unwrap();
    let resp = pag0
        .client("demo", DEMO_KEY)
        .post(wall.url("/paid"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["body_sha256"],
        sha256_hex(&body),
        "the paid attempt carried the same body"
    );

    // Chunked request body, over a raw socket.
    let auth = basic("demo", DEMO_KEY);
    let wire = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        wall.url("/paid"),
        wall.addr
    );
    let (status, head, echo) = raw_exchange(pag0.proxy, wire.as_bytes());
    assert_eq!(status, 200, "{head}");
    assert_eq!(echo["body_sha256"], sha256_hex(b"hello world"));
    assert_eq!(wall.stats().paid, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cheapest_acceptable_offer_wins() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "x-pag0-cost").as_deref(),
        Some("20000 USDC"),
        "not the unknown asset at 1, not 50000"
    );
    assert_eq!(wall.stats().amounts, vec![U256::from(20_000)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacceptable_offers_are_declined_with_a_reason() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("demo", DEMO_KEY);
    for (path, reason) in [
        ("/expensive", "exceeds the per-payment ceiling"),
        ("/wrong-network", "not allowed"),
        (
            "/unknown-asset",
            "asset 0x0000000000000000000000000000000000000bad on eip155:84532 not allowed",
        ),
    ] {
        let resp = client.get(wall.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED, "{path}");
        assert_eq!(
            header(&resp, "x-pag0-payment").as_deref(),
            Some("declined"),
            "{path}"
        );
        let why = header(&resp, "x-pag0-payment-reason").unwrap();
        assert!(why.to_lowercase().contains(reason), "{path}: {why}");
        assert!(
            header(&resp, "payment-required").is_some(),
            "the offer reaches the agent"
        );
    }
    // A project without a wallet (mode off) never pays.
    let resp = pag0
        .client("nowallet", NO_WALLET_KEY)
        .get(wall.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(header(&resp, "x-pag0-payment").as_deref(), Some("off"));
    assert_eq!(wall.stats().paid, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_replay_buffer_are_not_paid() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let resp = pag0
        .client("demo", DEMO_KEY)
        .post(wall.url("/paid"))
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        header(&resp, "x-pag0-payment").as_deref(),
        Some("body-too-large")
    );
    assert_eq!(wall.stats().paid, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_402_to_the_paid_attempt_is_never_paid_again() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/always402"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(header(&resp, "x-pag0-payment").as_deref(), Some("rejected"));
    assert_eq!(header(&resp, "x-pag0-paid").as_deref(), Some("false"));
    assert_eq!(header(&resp, "x-pag0-cost"), None, "nothing was spent");
    let stats = wall.stats();
    assert_eq!(
        (stats.paid, stats.requests),
        (1, 2),
        "exactly one signed payment: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_paid_calls_are_each_paid_exactly_once() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let mut tasks = Vec::new();
    for i in 0..50 {
        // Several clients, so several downstream connections.
        let client = pag0.client("demo", DEMO_KEY);
        let url = wall.url("/paid");
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .body(format!("call {i}"))
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, echo) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "call {i}");
        assert_eq!(
            echo["body_sha256"],
            sha256_hex(format!("call {i}").as_bytes())
        );
    }
    let stats = wall.stats();
    assert_eq!(stats.paid, 50, "{stats:?}");
    // One paid attempt each, plus an unpaid probe for every call that started before the
    // first payment was remembered (price memory pre-signs the rest).
    assert!((51..=100).contains(&stats.requests), "{stats:?}");
    assert!(stats.invalid.is_empty(), "{:?}", stats.invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_memory_makes_repeat_calls_one_round_trip() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("demo", DEMO_KEY);
    for call in 1..=3 {
        let resp = client
            .get(wall.url(&format!("/paid?call={call}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "call {call}");
        assert_eq!(header(&resp, "x-pag0-paid").as_deref(), Some("true"));
    }
    let stats = wall.stats();
    assert_eq!(stats.paid, 3, "{stats:?}");
    assert_eq!(
        stats.requests, 4,
        "2 round trips for the first call, then 1 each (query ignored)"
    );

    // Known price: a body over the 64 KiB replay buffer is paid up front, nothing to replay.
    let big = vec![b'y'; 100 * 1024];
    let resp = client
        .post(wall.url("/paid"))
        .body(b"learn".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .post(wall.url("/paid"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["body_sha256"], sha256_hex(&big));
    assert_eq!(wall.stats().paid, 5);

    // Another project does not use demo's memory.
    let other = wall.stats().requests;
    let resp = pag0
        .client("nowallet", NO_WALLET_KEY)
        .get(wall.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(wall.stats().requests, other + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_repeat_calls_is_paid_with_presigned_authorizations() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("demo", DEMO_KEY);
    let calls: usize = 40;
    for call in 1..=calls {
        let resp = client.get(wall.url("/paid")).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "call {call}: {:?}",
            wall.stats()
        );
        assert_eq!(header(&resp, "x-pag0-paid").as_deref(), Some("true"));
    }
    // The paywall recovered every signer and checked each window (never beyond
    // maxTimeoutSeconds, though signed ahead) and that no nonce came twice.
    let stats = wall.stats();
    assert_eq!(
        (stats.paid, stats.requests),
        (calls, calls + 1),
        "{stats:?}"
    );
    assert!(stats.invalid.is_empty(), "{:?}", stats.invalid);
    let (_, metrics) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    let count = |source: &str| -> u64 {
        let line = format!(r#"pag0_signatures_total{{project="demo",source="{source}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(count("stock") + count("fresh"), calls as u64, "{metrics}");
    // The first calls are signed for themselves; once the calls come in a stream, the signing
    // pool keeps a stock ahead of them.
    assert!(count("stock") > 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_price_falls_back_to_the_normal_replay_once() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(wall.url("/price-change")).send().await.unwrap();
    assert_eq!(header(&resp, "x-pag0-cost").as_deref(), Some("10000 USDC"));
    // The price is now 15000: the pre-signed 10000 is refused, pag0 pays the new offer once.
    let resp = client.get(wall.url("/price-change")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-pag0-cost").as_deref(), Some("15000 USDC"));
    let stats = wall.stats();
    assert_eq!(stats.amounts, vec![U256::from(10_000), U256::from(15_000)]);
    assert_eq!(
        stats.invalid.len(),
        1,
        "the stale pre-signed payment: {stats:?}"
    );
    // Call 1: probe + paid replay. Call 2: the stale pre-signed attempt's 402 already carries
    // the new offer, so the fallback pays from it: one more attempt, no extra probe.
    assert_eq!(stats.requests, 2 + 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_pays_itself_is_passed_through() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/paid"))
        .header("payment-signature", "eyJ4NDAyVmVyc2lvbiI6Mn0=")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::PAYMENT_REQUIRED,
        "the agent's own (invalid) payment is its business"
    );
    assert!(header(&resp, "x-pag0-payment").is_none());
    let stats = wall.stats();
    assert_eq!((stats.paid, stats.requests, stats.invalid.len()), (0, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x402_v1_offers_in_the_body_are_paid_via_one_side_request() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(wall.url("/v1/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", wall.stats());
    assert_eq!(header(&resp, "x-pag0-paid").as_deref(), Some("true"));
    assert_eq!(header(&resp, "x-pag0-cost").as_deref(), Some("10000 USDC"));
    assert!(
        header(&resp, "x-pag0-tx").is_some(),
        "X-PAYMENT-RESPONSE is read too"
    );
    let stats = wall.stats();
    assert_eq!(stats.paid, 1);
    assert_eq!(
        stats.requests, 3,
        "first v1 contact: unpaid attempt, unpaid side request, paid attempt"
    );

    // POST with a body: every attempt (side request included) carries the same bytes.
    let body = vec![b'p'; 20_000];
    let resp = client
        .post(wall.url("/v1/multi"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{:?} {:?}",
        header(&resp, "x-pag0-payment-reason"),
        wall.stats()
    );
    assert_eq!(header(&resp, "x-pag0-cost").as_deref(), Some("20000 USDC"));
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["body_sha256"], sha256_hex(&body));

    // Price memory removes the side request for repeat calls.
    let before = wall.stats().requests;
    let resp = client.get(wall.url("/v1/paid")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(wall.stats().requests, before + 1);

    // Declines work the same for v1.
    let resp = client.get(wall.url("/v1/expensive")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(
        header(&resp, "x-pag0-payment-reason")
            .unwrap()
            .contains("ceiling")
    );
    let stats = wall.stats();
    assert_eq!(stats.paid, 3);
    assert!(stats.invalid.is_empty(), "{:?}", stats.invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_gets_the_first_paid_response_and_never_signs_again() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("demo", DEMO_KEY);
    let send = |body: &'static str| {
        client
            .post(wall.url("/paid"))
            .header("idempotency-key", "order-42")
            .body(body)
            .send()
    };
    let first = send("buy 1").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(header(&first, "x-pag0-idempotent-replay").is_none());
    let first_tx = header(&first, "x-pag0-tx");
    let first_body = first.text().await.unwrap();

    let again = send("buy 1").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        header(&again, "x-pag0-idempotent-replay").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&again, "x-pag0-tx"),
        first_tx,
        "the stored paid response, pag0 headers included"
    );
    assert_eq!(again.text().await.unwrap(), first_body);
    let stats = wall.stats();
    assert_eq!(
        (stats.paid, stats.requests),
        (1, 2),
        "the retry never reached the upstream: {stats:?}"
    );

    // Same key, different body: 422, nothing paid.
    let other = send("buy 2").await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    // The key is per project.
    let nowallet = pag0
        .client("nowallet", NO_WALLET_KEY)
        .post(wall.url("/free"))
        .header("idempotency-key", "order-42")
        .body("buy 2")
        .send()
        .await
        .unwrap();
    assert_eq!(nowallet.status(), StatusCode::OK);
    assert_eq!(wall.stats().paid, 1);

    // Unpaid responses are not kept: the key is free again afterwards.
    for _ in 0..2 {
        let resp = client
            .get(wall.url("/free"))
            .header("idempotency-key", "free-1")
            .send()
            .await
            .unwrap();
        assert!(header(&resp, "x-pag0-idempotent-replay").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_during_the_first_request_gets_409() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("demo", DEMO_KEY);
    let first = tokio::spawn({
        let client = client.clone();
        let url = wall.url("/slow-paid");
        async move {
            client
                .get(url)
                .header("idempotency-key", "slow-1")
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let retry = client
        .get(wall.url("/slow-paid"))
        .header("idempotency-key", "slow-1")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::CONFLICT);
    assert!(header(&retry, "retry-after").is_some());
    let body: Value = retry.json().await.unwrap();
    assert_eq!(body["error"]["code"], "IDEMPOTENCY_IN_FLIGHT");
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    let replayed = client
        .get(wall.url("/slow-paid"))
        .header("idempotency-key", "slow-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&replayed, "x-pag0-idempotent-replay").as_deref(),
        Some("true")
    );
    assert_eq!(wall.stats().paid, 1);

    // Bodies over 64 KiB cannot be fingerprinted before forwarding: refused, not hung.
    let big = client
        .post(wall.url("/paid"))
        .header("idempotency-key", "big")
        .body(vec![0u8; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bad = client
        .get(wall.url("/paid"))
        .header("idempotency-key", "")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_mode_checks_agent_payments_and_forwards_them_unchanged() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let client = pag0.client("relay", RELAY_KEY);

    // The 402 reaches the agent (pag0 does not sign in relay mode).
    let offer = client.get(wall.url("/paid")).send().await.unwrap();
    assert_eq!(offer.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(header(&offer, "x-pag0-payment").as_deref(), Some("relay"));
    let (name, value) = agent_pays(&offer, None).await;
    let paid = client
        .get(wall.url("/paid"))
        .header(name.as_str(), value.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::OK, "{:?}", wall.stats());
    assert_eq!(wall.stats().paid, 1);
    // The agent's payment is reported with its settlement transaction from the receipt.
    assert_eq!(header(&paid, "x-pag0-paid").as_deref(), Some("true"));
    assert!(header(&paid, "x-pag0-tx").is_some_and(|t| t.starts_with("0x") && t.len() == 66));

    // Replaying the same authorization is refused by pag0 before the upstream sees it.
    let before = wall.stats().requests;
    let replay = client
        .get(wall.url("/paid"))
        .header(name.as_str(), value.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CONFLICT);
    let body: Value = replay.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYMENT_NONCE_REUSED");
    assert_eq!(wall.stats().requests, before);

    // Undecodable header: 400. Above the ceiling: 403. Forged signature: 403.
    let bad = client
        .get(wall.url("/paid"))
        .header("payment-signature", "not base64!")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["code"],
        "INVALID_PAYMENT_HEADER"
    );
    let expensive_offer = client.get(wall.url("/expensive")).send().await.unwrap();
    let (name, value) = agent_pays(&expensive_offer, None).await;
    let expensive = client
        .get(wall.url("/expensive"))
        .header(name.as_str(), value.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(expensive.status(), StatusCode::FORBIDDEN);
    let body: Value = expensive.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYMENT_NOT_ALLOWED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ceiling")
    );
    let offer = client.get(wall.url("/paid")).send().await.unwrap();
    let (name, value) = agent_pays(&offer, None).await;
    let mut json: Value = serde_json::from_slice(&base64_decode(&value)).unwrap();
    json["payload"]["authorization"]["to"] = serde_json::json!(paywall::WALLET_ADDRESS);
    json["accepted"]["payTo"] = serde_json::json!(paywall::WALLET_ADDRESS);
    let forged = base64_encode(json.to_string().as_bytes());
    let resp = client
        .get(wall.url("/paid"))
        .header(name.as_str(), forged.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "payTo changed after signing"
    );

    // v1: the offer is in the body, the agent answers with X-PAYMENT.
    let offer = client.get(wall.url("/v1/paid")).send().await.unwrap();
    assert_eq!(offer.status(), StatusCode::PAYMENT_REQUIRED);
    let body = offer.bytes().await.unwrap();
    let dummy = client.get(wall.url("/free")).send().await.unwrap();
    let (name, value) = agent_pays(&dummy, Some(&body)).await;
    assert_eq!(name, "x-payment");
    let paid = client
        .get(wall.url("/v1/paid"))
        .header(name.as_str(), value.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::OK);
    let stats = wall.stats();
    assert_eq!(stats.paid, 2, "{stats:?}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_402_without_a_body_gets_a_json_reason() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/expensive-empty"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(header(&resp, "x-pag0-payment").as_deref(), Some("declined"));
    assert!(
        header(&resp, "payment-required").is_some(),
        "the offer is still there for the agent"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYMENT_DECLINED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ceiling"),
        "{body}"
    );
    // A 402 that has a body keeps it.
    let resp = pag0
        .client("demo", DEMO_KEY)
        .get(wall.url("/expensive"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x402_v1_with_a_chunked_body() {
    let wall = Paywall::start().await;
    let pag0 = Pag0::start(&config());
    let auth = basic("demo", DEMO_KEY);
    let wire = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{{\"q\":1}}\r\nb\r\n, \"more\": 2\r\n0\r\n\r\n",
        wall.url("/v1/paid"),
        wall.addr
    );
    let (status, head, echo) = raw_exchange(pag0.proxy, wire.as_bytes());
    assert_eq!(status, 200, "{head} {:?}", wall.stats());
    // All three attempts (unpaid, side request, paid) carried the same 18 bytes.
    assert_eq!(echo["body_sha256"], sha256_hex(b"{\"q\":1}, \"more\": 2"));
    let stats = wall.stats();
    assert_eq!((stats.paid, stats.requests), (1, 3), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_payments_count_against_the_project_budget() {
    let wall = Paywall::start().await;
    let cfg = format!(
        "{}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: payment\nprojects:\n  - id: relay\n    mode: relay\n    keys: [\"sha256:{}\"]\n    policy:\n      budgets:\n        - {{ asset: USDC, daily: \"0.01\" }}\n",
        paywall::payments_yaml(),
        sha256_hex(RELAY_KEY.as_bytes()),
    );
    let pag0 = Pag0::start(&cfg);
    let client = pag0.client("relay", RELAY_KEY);
    let pay = || async {
        let offer = client.get(wall.url("/paid")).send().await.unwrap();
        let (name, value) = agent_pays(&offer, None).await;
        client
            .get(wall.url("/paid"))
            .header(name.as_str(), value.as_str())
            .send()
            .await
            .unwrap()
    };
    let first = pay().await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header(&first, "x-pag0-budget-remaining").as_deref(),
        Some("daily=0; pool=USDC")
    );
    let second = pay().await;
    assert_eq!(second.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        second.json::<Value>().await.unwrap()["error"]["code"],
        "DAILY_BUDGET_EXCEEDED"
    );
    assert_eq!(
        wall.stats().paid,
        1,
        "the refused payment never reached the upstream"
    );
    let journal = eventually(
        || async {
            let path = "/api/spend?project=relay";
            pag0.admin_json(reqwest::Method::GET, path, None).await.1
        },
        |j| j["count"] == 1,
    )
    .await;
    assert_eq!(journal["count"], 1, "{journal}");
    assert_eq!(journal["spend"][0]["pool"], "USDC");
}
