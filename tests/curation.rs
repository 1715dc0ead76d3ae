//! Endpoint curation: three real endpoints of one category (a fast paid one with a described
//! offer, a flaky paid one, a slow free one) ranked from the traffic pag0 saw; compare,
//! recommend, the catalog's offer metadata and the API's access rules.

mod common;

use std::time::Duration;

use common::paywall::{self, Paywall};
use common::{ADMIN_TOKEN, DEMO_HASH, DEMO_KEY, Pag0, Upstream, sha256_hex};
use serde_json::Value;

const OTHER_KEY: &str = "other-project-key-0123456789";
const CALLS: usize = 20;

fn config(wall: &Paywall, up: &Upstream) -> String {
    format!(
        "{payments}stages:
  - kind: auth
  - kind: ssrf_guard
    allow: [\"127.0.0.0/8\"]
  - kind: payment
projects:
  - id: demo
    keys: [\"{DEMO_HASH}\"]
    wallet:
      private_key: ${{PAG0_TEST_WALLET_KEY:-{key}}}
  - id: other
    keys: [\"sha256:{other}\"]
curation:
  refresh_seconds: 1
catalog:
  - category: weather
    description: Weather by city
    endpoints:
      - \"127.0.0.1:{wall}/described\"
      - \"127.0.0.1:{wall}/flaky-paid\"
      - pattern: \"127.0.0.1:{up}/delay/*\"
        description: Free but slow weather
  - category: empty
    endpoints: [\"nowhere.example/*\"]
",
        payments = paywall::payments_yaml(),
        key = paywall::WALLET_KEY,
        other = sha256_hex(OTHER_KEY.as_bytes()),
        wall = wall.addr.port(),
        up = up.addr.port(),
    )
}

async fn api(pag0: &Pag0, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", pag0.admin));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// Polls `path` (admin) until `done`, for up to 15 s.
async fn until(pag0: &Pag0, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..150 {
        let (status, body) = api(pag0, path, Some(ADMIN_TOKEN)).await;
        if status == 200 && done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} never got there: {:#}",
        api(pag0, path, Some(ADMIN_TOKEN)).await.1
    );
}

fn by_endpoint<'a>(list: &'a Value, endpoint: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("{endpoint} not in {list:#}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_ranked_compared_and_recommended_from_traffic() {
    let wall = Paywall::start().await;
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&wall, &up));
    let client = pag0.client("demo", DEMO_KEY);
    let port = wall.addr.port();
    let described = format!("127.0.0.1:{port}/described");
    let flaky = format!("127.0.0.1:{port}/flaky-paid");
    let slow = format!("127.0.0.1:{}/delay/40", up.addr.port());
    let mut statuses = Vec::new();
    for _ in 0..CALLS {
        for url in [
            wall.url("/described"),
            wall.url("/flaky-paid"),
            up.url("/delay/40"),
        ] {
            statuses.push(client.get(url).send().await.unwrap().status().as_u16());
        }
    }
    // Every second paid call to the flaky endpoint fails after it was paid.
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), CALLS / 2);
    assert_eq!(wall.stats().paid, 2 * CALLS);

    let ranked = until(&pag0, "/api/curation/rankings?category=weather", |b| {
        b["total"] == 3
            && b["rankings"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["calls"] == CALLS)
    })
    .await;
    let list = &ranked["rankings"];
    let order: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(order, [&described, &slow, &flaky], "{ranked:#}");
    assert_eq!(list[0]["rank"], 1);
    let (d, s, fl) = (
        by_endpoint(list, &described),
        by_endpoint(list, &slow),
        by_endpoint(list, &flaky),
    );
    // Reliability: the Wilson lower bound of 20/20 and of 10/20.
    assert_eq!(d["components"]["reliability"], 83.9);
    assert_eq!(s["components"]["reliability"], 83.9);
    assert_eq!(fl["components"]["reliability"], 29.9);
    assert_eq!(fl["success_rate"], 0.5);
    // Cost: 10000 per success; the flaky one 20000 per call paid, half of them in doubt and
    // failed: 40000 per success; the free one costs nothing.
    assert_eq!(d["price_per_success"]["base_units"], "10000");
    assert_eq!(d["price_per_success"]["display"], "0.01 USDC");
    assert_eq!(fl["price_per_success"]["base_units"], "40000");
    assert!(s["price_per_success"].is_null());
    assert_eq!(d["components"]["cost"], 100.0);
    assert_eq!(s["components"]["cost"], 100.0);
    assert!(f(&fl["components"]["cost"]) < 50.0, "{fl:#}");
    // Latency: the 40 ms one is the slowest of the category.
    assert!(f(&s["latency_ms"]["p50"]) >= 40.0);
    assert!(f(&s["components"]["latency"]) < f(&d["components"]["latency"]));
    assert_eq!(d["components"]["reputation"], 50.0);
    assert_eq!(d["projects"], 1);
    assert_eq!(s["description"], "Free but slow weather");
    // The admin sees what was spent.
    assert_eq!(d["spend"][0]["base_units"], "200000");

    // The offer's description and Bazaar metadata are in the catalog.
    let catalog = until(&pag0, "/api/curation/endpoints?category=weather", |b| {
        b["count"] == 3
    })
    .await;
    let entry = by_endpoint(&catalog["endpoints"], &described);
    assert_eq!(entry["description"], paywall::DESCRIBED);
    assert_eq!(entry["offer"]["description"], paywall::DESCRIBED);
    assert_eq!(entry["offer"]["mime_type"], "application/json");
    let bazaar = paywall::described_bazaar();
    assert_eq!(entry["offer"]["bazaar"]["info"], bazaar["info"]);
    assert_eq!(entry["offer"]["bazaar"]["schema"], bazaar["schema"]);
    assert_eq!(entry["offer"]["price"], "10000");
    assert_eq!(entry["offer"]["network"], paywall::NETWORK);
    // Sorted by price: the free one first, the flaky one last.
    let (_, by_price) = api(
        &pag0,
        "/api/curation/endpoints?category=weather&sort=price",
        Some(ADMIN_TOKEN),
    )
    .await;
    let prices: Vec<&str> = by_price["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(prices, [&slow, &described, &flaky]);

    // Compare: the same scores as the rankings, and the best in each component.
    let (status, cmp) = api(
        &pag0,
        &format!("/api/curation/compare?endpoints={flaky},{described},{slow}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{cmp:#}");
    for e in cmp["endpoints"].as_array().unwrap() {
        let ranked = by_endpoint(list, e["endpoint"].as_str().unwrap());
        assert_eq!(e["score"], ranked["score"]);
        assert_eq!(e["components"], ranked["components"]);
    }
    assert_eq!(
        cmp["endpoints"][0]["endpoint"],
        flaky.as_str(),
        "in the order asked"
    );
    assert_eq!(cmp["best"]["score"], described.as_str());
    assert_ne!(cmp["best"]["latency"], slow.as_str());
    assert_eq!(
        cmp["best"]["reliability"],
        described.as_str(),
        "first of a tie"
    );

    // Recommend: the best, then the best under a price cap, then none.
    let (status, rec) = api(
        &pag0,
        "/api/curation/recommend?category=weather",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{rec:#}");
    assert_eq!(rec["recommendation"]["endpoint"], described.as_str());
    assert!(rec["reason"].as_str().unwrap().contains("highest score"));
    let (status, rec) = api(
        &pag0,
        "/api/curation/recommend?category=weather&max_price=5000",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{rec:#}");
    assert_eq!(rec["recommendation"]["endpoint"], slow.as_str());
    assert_eq!(rec["excluded"][0]["endpoint"], described.as_str());
    assert!(
        rec["excluded"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_price 5000")
    );
    let (status, none) = api(
        &pag0,
        "/api/curation/recommend?category=weather&max_price=5000&max_p95_ms=20&min_success=0.9",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 404, "{none:#}");
    assert_eq!(none["error"]["code"], "NO_ENDPOINT_MEETS_CONSTRAINTS");
    assert_eq!(
        none["error"]["details"]["excluded"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (status, empty) = api(
        &pag0,
        "/api/curation/recommend?category=empty",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 404, "{empty:#}");

    // Categories: the means and the best.
    let (_, cats) = api(&pag0, "/api/curation/categories", Some(ADMIN_TOKEN)).await;
    let weather = &cats["categories"][0];
    assert_eq!(weather["name"], "weather");
    assert_eq!(weather["endpoints"], 3);
    assert_eq!(weather["best"], described.as_str());
    assert_eq!(weather["benchmark"]["price_per_success"]["USDC"], "25000");

    // Access: another project's key reads the catalog, but none of demo's calls (fewer than
    // curation.min_shared_projects other projects made them) and never what was spent.
    let (status, theirs) = api(
        &pag0,
        "/api/curation/rankings?category=weather",
        Some(OTHER_KEY),
    )
    .await;
    assert_eq!(status, 200, "{theirs:#}");
    assert_eq!(theirs["rankings"], serde_json::json!([]), "{theirs:#}");
    // demo's own key sees its scores as the admin token does (it made every call).
    let (_, own) = api(
        &pag0,
        "/api/curation/rankings?category=weather",
        Some(DEMO_KEY),
    )
    .await;
    assert_eq!(own["rankings"][0]["score"], list[0]["score"]);
    assert!(own["rankings"][0].get("spend").is_none(), "{own:#}");
    assert!(!theirs.to_string().contains("\"spend\""), "{theirs:#}");
    let (status, _) = api(&pag0, "/api/curation/rankings", None).await;
    assert_eq!(status, 401);
    let (status, _) = api(&pag0, "/api/curation/rankings", Some("not-a-key")).await;
    assert_eq!(status, 401);

    // Bad parameters: a 400 naming the parameter.
    for (path, param) in [
        ("/api/curation/endpoints?sort=fame", "sort"),
        ("/api/curation/endpoints?colour=red", "colour"),
        ("/api/curation/rankings?category=unknown", "category"),
        ("/api/curation/rankings?limit=0", "limit"),
        ("/api/curation/compare?endpoints=a.example/x", "endpoints"),
        ("/api/curation/recommend?max_price=0.5", "max_price"),
        ("/api/curation/recommend?min_success=2", "min_success"),
        ("/api/curation/recommend?max_p95_ms=-1", "max_p95_ms"),
    ] {
        let (status, body) = api(&pag0, path, Some(DEMO_KEY)).await;
        assert_eq!(status, 400, "{path}: {body:#}");
        assert_eq!(
            body["error"]["details"]["parameter"], param,
            "{path}: {body:#}"
        );
    }
    let (status, body) = api(
        &pag0,
        &format!("/api/curation/compare?endpoints={described},nowhere.example/x"),
        Some(DEMO_KEY),
    )
    .await;
    assert_eq!(status, 404, "{body:#}");
    assert_eq!(body["error"]["code"], "UNKNOWN_ENDPOINT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_follow_a_reload_of_the_weights() {
    let wall = Paywall::start().await;
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&config(&wall, &up));
    let client = pag0.client("demo", DEMO_KEY);
    for _ in 0..5 {
        client.get(wall.url("/described")).send().await.unwrap();
        client.get(up.url("/delay/40")).send().await.unwrap();
    }
    let path = "/api/curation/rankings?category=weather";
    let before = until(&pag0, path, |b| b["total"] == 2).await;
    assert_eq!(before["weights"]["cost"], 0.25);
    // Only latency counts now: the slow endpoint scores 0.
    let yaml = config(&wall, &up).replace(
        "  refresh_seconds: 1\n",
        "  refresh_seconds: 1\n  weights: {reliability: 0, latency: 1, cost: 0, volume: 0, reputation: 0}\n",
    );
    pag0.rewrite(&yaml);
    let (status, body) = pag0
        .admin_json(reqwest::Method::POST, "/reload", None)
        .await;
    assert_eq!(status, 200, "{body:#}");
    let after = until(&pag0, path, |b| b["weights"]["cost"] == 0.0).await;
    let slow = format!("127.0.0.1:{}/delay/40", up.addr.port());
    let s = by_endpoint(&after["rankings"], &slow);
    assert_eq!(s["score"], s["components"]["latency"]);
}
