//! Smart routes: a route naming a category and candidate upstreams sends each request to the
//! best-scoring candidate (with a bounded share of exploration), fails over once before
//! anything was paid and never after, and skips a failing candidate while its breaker is open.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::paywall::{self, Paywall};
use common::{DEMO_HASH, DEMO_KEY, Pag0, Upstream, free_port};

/// A pag0 whose route `/weather` goes to the best of `candidates` (base URLs).
fn config(candidates: &[String], breaker: &str) -> String {
    let list: String = candidates
        .iter()
        .map(|c| format!("      - upstream: {c}\n"))
        .collect();
    format!(
        "{payments}stages:
  - kind: auth
  - kind: payment
projects:
  - id: demo
    keys: [\"{DEMO_HASH}\"]
    wallet:
      private_key: ${{PAG0_TEST_WALLET_KEY:-{key}}}
curation:
  refresh_seconds: 1
routes:
  - name: weather
    path_prefix: /weather
    category: weather
{breaker}    candidates:
{list}",
        payments = paywall::payments_yaml(),
        key = paywall::WALLET_KEY,
    )
}

/// GET /weather through pag0: status and the candidate that answered (`X-Pag0-Endpoint`).
async fn call(pag0: &Pag0) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/weather", pag0.proxy))
        .header("X-Pag0-API-Key", DEMO_KEY)
        .send()
        .await
        .unwrap();
    let endpoint = resp
        .headers()
        .get("x-pag0-endpoint")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (resp.status().as_u16(), endpoint)
}

fn key(addr: SocketAddr, base: &str) -> String {
    format!("{addr}{base}/*")
}

async fn metric(pag0: &Pag0, line_start: &str) -> f64 {
    let (_, text) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_route_converges_on_the_best_candidate() {
    let (slow, fast, medium) = (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    );
    let bases = [
        (slow.addr, "/delay/60"),
        (fast.addr, "/delay/1"),
        (medium.addr, "/delay/15"),
    ];
    let candidates: Vec<String> = bases
        .iter()
        .map(|(a, b)| format!("http://{a}{b}"))
        .collect();
    let pag0 = Pag0::start(&config(&candidates, ""));
    // Warm-up: every candidate is new, so they take turns until scores exist.
    let mut warm = std::collections::HashMap::new();
    for _ in 0..30 {
        let (status, endpoint) = call(&pag0).await;
        assert_eq!(status, 200);
        *warm.entry(endpoint).or_insert(0) += 1;
    }
    assert_eq!(warm.len(), 3, "each candidate is tried: {warm:?}");
    // Once the curation refresh has scored all three, the fastest takes the traffic.
    let fast_key = key(fast.addr, "/delay/1");
    for _ in 0..100 {
        let (_, body) = pag0
            .admin(
                reqwest::Method::GET,
                "/api/curation/rankings?category=weather",
            )
            .await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["total"] == 3 && v["rankings"][0]["endpoint"] == fast_key.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut counts = std::collections::HashMap::new();
    for _ in 0..200 {
        let (status, endpoint) = call(&pag0).await;
        assert_eq!(status, 200);
        *counts.entry(endpoint).or_insert(0usize) += 1;
    }
    let best = counts.get(&fast_key).copied().unwrap_or(0);
    assert!(best >= 180, "≥ 90 % to the best: {counts:?}");
    assert!(best <= 195, "5 % explore the others: {counts:?}");
    assert_eq!(counts.len(), 3, "the others stay explored: {counts:?}");
    let chosen = metric(
        &pag0,
        &format!(
            "pag0_route_choice_total{{candidate=\"{fast_key}\",reason=\"best\",route=\"weather\"}}"
        ),
    )
    .await;
    assert!(chosen >= best as f64 - 5.0, "{chosen} best choices counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_fails_over_before_payment_and_its_breaker_opens_and_closes() {
    let good = Upstream::start().await;
    let broken = Upstream::start().await;
    // Nothing listens here yet: connections are refused.
    let refused: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let candidates = vec![
        format!("http://{}/status/503", broken.addr),
        format!("http://{}/delay/1", good.addr),
        format!("http://{refused}/delay/1"),
    ];
    let breaker = "    breaker: {failures: 1, open_seconds: 2}\n    explore: 0\n";
    let pag0 = Pag0::start(&config(&candidates, breaker));
    let good_key = key(good.addr, "/delay/1");
    let broken_key = key(broken.addr, "/status/503");
    let refused_key = key(refused, "/delay/1");
    // All three are new and take turns: the 503 one first, then the good one, then the
    // refused one. Each failure fails over to the good one, and the agent gets its 200.
    for _ in 0..6 {
        assert_eq!(call(&pag0).await, (200, good_key.clone()));
    }
    assert_eq!(broken.seen().requests, 1, "tried once");
    let failovers = metric(
        &pag0,
        &format!("pag0_route_choice_total{{candidate=\"{good_key}\",reason=\"failover\",route=\"weather\"}}"),
    )
    .await;
    assert_eq!(failovers, 2.0);
    // One failure each opens their breakers: they are no longer asked.
    for k in [&broken_key, &refused_key] {
        let open = metric(
            &pag0,
            &format!("pag0_route_breaker_open{{candidate=\"{k}\",route=\"weather\"}}"),
        )
        .await;
        assert_eq!(open, 1.0, "{k}");
    }
    for _ in 0..10 {
        assert_eq!(call(&pag0).await, (200, good_key.clone()));
    }
    assert_eq!(
        broken.seen().requests,
        1,
        "skipped while its breaker is open"
    );
    // The refused candidate comes up; after open_seconds its probe succeeds and closes it.
    let revived = Upstream::start_at(refused).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut answered_by = Vec::new();
    for _ in 0..3 {
        let (status, endpoint) = call(&pag0).await;
        assert_eq!(status, 200);
        answered_by.push(endpoint);
    }
    assert!(
        answered_by.contains(&refused_key),
        "a probe reached the revived candidate: {answered_by:?}"
    );
    assert!(revived.seen().requests >= 1);
    assert_eq!(
        broken.seen().requests,
        2,
        "probed once more, and open again"
    );
    let open = metric(
        &pag0,
        &format!("pag0_route_breaker_open{{candidate=\"{refused_key}\",route=\"weather\"}}"),
    )
    .await;
    assert_eq!(open, 0.0, "closed after a successful probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_a_signed_payment_is_not_retried() {
    let wall = Paywall::start().await;
    let other = Upstream::start().await;
    // The first candidate takes the payment, then answers 500.
    let candidates = vec![
        format!("http://{}/paid-500", wall.addr),
        format!("http://{}/delay/1", other.addr),
    ];
    let pag0 = Pag0::start(&config(&candidates, "    explore: 0\n"));
    let (status, endpoint) = call(&pag0).await;
    assert_eq!(status, 500, "the agent gets the failure");
    assert_eq!(endpoint, key(wall.addr, "/paid-500"));
    assert_eq!(wall.stats().paid, 1, "exactly one payment");
    assert_eq!(
        other.seen().requests,
        0,
        "never sent elsewhere after paying"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_times_out_fails_over_with_the_whole_body() {
    let slow = Upstream::start().await;
    let good = Upstream::start().await;
    // New candidates take turns: the first request goes to the slow one, which does not
    // answer within the upstream read timeout.
    let candidates = vec![
        format!("http://{}/delay/3000", slow.addr),
        format!("http://{}/delay/1", good.addr),
    ];
    let yaml = format!(
        "{}upstream:\n  read_timeout_ms: 300\n",
        config(&candidates, "    explore: 0\n")
    );
    let pag0 = Pag0::start(&yaml);
    let resp = reqwest::Client::new()
        .post(format!("http://{}/weather", pag0.proxy))
        .header("X-Pag0-API-Key", DEMO_KEY)
        .body("a body to send twice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let endpoint = resp.headers()["x-pag0-endpoint"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(endpoint, key(good.addr, "/delay/1"));
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/delay/1");
    assert_eq!(echo["body_len"], 20, "the same body, whole");
    assert_eq!(slow.seen().requests, 1);
}
