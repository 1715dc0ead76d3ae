//! Money guarantees for a fleet (issue 32): several pag0 processes on one Redis and one
//! PostgreSQL, and one process across restarts, never pay twice for one `Idempotency-Key`.
//! Every pag0 here is a real process (SIGTERM and SIGKILL are real), in front of the test
//! paywall, which records the `Idempotency-Key` of every payment it accepts.

mod common;

use std::time::{Duration, Instant};

use common::paywall::{self, Paywall};
use common::process::Process;
use common::services::{PrivateCluster, PrivateRedis, TempDatabase};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// `extra`: `database:` / `redis:` / `budgets:` sections.
fn body(extra: &str) -> String {
    format!(
        "{}{extra}stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n  - kind: idempotency\n  - kind: policy\n  - kind: payment\nprojects:\n  - id: demo\n    keys: [\"{DEMO_HASH}\"]\n    wallet:\n      private_key: ${{PAG0_TEST_WALLET_KEY:-{}}}\n    policy:\n      budgets:\n        - asset: USDC\n          per_request: \"0.01\"\n          daily: \"100\"\n          monthly: \"1000\"\n  - id: relay\n    mode: relay\n    keys: [\"sha256:{}\"]\n",
        paywall::payments_yaml(),
        paywall::WALLET_KEY,
        sha256_hex(RELAY_KEY.as_bytes()),
    )
}

/// A `redis:` section on the shared Redis, under a prefix of this test's own.
fn shared_redis(name: &str) -> String {
    let prefix = format!("{name}{}", hex::encode(rand::random::<[u8; 4]>()));
    format!("redis:\n  url: redis://127.0.0.1:6379\n  key_prefix: {prefix}\n")
}

/// The key of the project `relay` (agents sign their own payments; pag0 relays them).
const RELAY_KEY: &str = "relay-agent-key";

fn start(dir: &tempfile::TempDir, body: &str) -> Process {
    Process::start_env(dir, body, &[("RUST_LOG", "warn")])
}

/// What a keyed call got back.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    replay: bool,
    /// The error code of pag0's own answers.
    code: String,
    body: String,
}

async fn call(pag0: &Process, url: &str, key: &str) -> Answer {
    let resp = pag0
        .client()
        .get(url)
        .header("idempotency-key", key)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let replay = resp.headers().get("x-pag0-idempotent-replay").is_some();
    let code = resp
        .headers()
        .get("x-pag0-error")
        .map_or_else(String::new, |v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap();
    Answer {
        status,
        replay,
        code,
        body,
    }
}

/// A retry as an agent makes it: again while the first is reported in flight (a process
/// that died is known dead within about 10 s), for at most 20 s.
async fn retry(pag0: &Process, url: &str, key: &str) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = call(pag0, url, key).await;
        if a.code != "IDEMPOTENCY_IN_FLIGHT" || Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn until_paid(wall: &Paywall, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while wall.stats().paid_for_key(key) == 0 {
        assert!(Instant::now() < deadline, "{key} was never paid");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_after_a_graceful_restart_a_paid_key_is_replayed_and_a_relayed_authorization_refused()
 {
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(&dir, &body(""));
    let url = wall.url("/paid");
    let first = call(&pag0, &url, "order-1").await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert!(!first.replay);
    let relay = |p: &Process| p.client_as("relay", RELAY_KEY);
    let offer = relay(&pag0).get(&url).send().await.unwrap();
    let (name, value) = paywall::agent_pays(&offer, None).await;
    let relayed = relay(&pag0)
        .get(&url)
        .header(name.as_str(), value.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status(), StatusCode::OK);
    pag0.terminate();

    let pag0 = start(&dir, &body(""));
    let again = call(&pag0, &url, "order-1").await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert!(again.replay, "replayed from the records: {again:?}");
    assert_eq!(again.body, first.body);
    let replayed = relay(&pag0)
        .get(&url)
        .header(name.as_str(), value.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::CONFLICT);
    let stats = wall.stats();
    assert_eq!(stats.paid_for_key("order-1"), 1, "{stats:?}");
    assert_eq!(stats.paid, 2, "{stats:?}");
    // 402 + paid for the key, the relay's 402 and its paid call: neither replay came.
    assert_eq!(stats.requests, 4, "neither replay reached the paywall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_default_sigkill_at_several_instants_never_pays_a_key_twice() {
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Keys 0-3 call /paid (answered at once), 4-7 /slow-paid (the paywall takes the payment
    // and answers 800 ms later). pag0 is killed: early (few paid), once some are paid, and
    // once the fast ones were answered while the slow ones are paid but not answered.
    for (round, instant) in ["early", "some paid", "fast answered"].iter().enumerate() {
        let pag0 = start(&dir, &body(""));
        let keys: Vec<String> = (0..8).map(|i| format!("r{round}-k{i}")).collect();
        let path = |i: usize| if i < 4 { "/paid" } else { "/slow-paid" };
        let calls: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let (client, url, key) = (pag0.client(), wall.url(path(i)), key.clone());
                tokio::spawn(async move {
                    client
                        .get(url)
                        .header("idempotency-key", key)
                        .send()
                        .await
                        .map(|r| r.status())
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        match *instant {
            "early" => tokio::time::sleep(Duration::from_millis(20)).await,
            "some paid" => {
                while wall
                    .stats()
                    .paid_keys
                    .iter()
                    .filter(|k| keys.contains(k))
                    .count()
                    < 2
                {
                    assert!(Instant::now() < deadline);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            _ => {
                for key in &keys[4..] {
                    until_paid(&wall, key).await;
                }
            }
        }
        pag0.kill();
        let mut answered = 0;
        for c in calls {
            if matches!(c.await.unwrap(), Ok(StatusCode::OK)) {
                answered += 1;
            }
        }
        let paid_before: Vec<usize> = keys.iter().map(|k| wall.stats().paid_for_key(k)).collect();

        let pag0 = start(&dir, &body(""));
        for (i, key) in keys.iter().enumerate() {
            let a = retry(&pag0, &wall.url(path(i)), key).await;
            let paid = wall.stats().paid_for_key(key);
            assert!(paid <= 1, "{instant}: {key} paid {paid} times ({a:?})");
            match (a.status, a.replay) {
                (StatusCode::OK, true) => {}
                (StatusCode::OK, false) => assert_eq!(
                    paid_before[i], 0,
                    "{instant}: {key} was paid before the crash and paid again: {a:?}"
                ),
                (StatusCode::CONFLICT, _) => assert!(
                    ["IDEMPOTENCY_IN_DOUBT", "IDEMPOTENCY_ALREADY_PAID"].contains(&a.code.as_str()),
                    "{instant}: {key}: {a:?}"
                ),
                _ => panic!("{instant}: {key}: {a:?}"),
            }
        }
        if *instant == "fast answered" {
            assert!(
                answered >= 4,
                "the fast calls were answered before the kill"
            );
        }
        pag0.kill();
    }
}

/// Three replicas with `shared` (PostgreSQL, and Redis or not): a key paid through A is
/// replayed by B and C; a retry while the first runs is 409 in flight on every replica; the
/// replica holding a paid call dies, and a retry elsewhere is in doubt, never paid again. A
/// relayed authorization accepted by A is refused by B and C.
async fn replicas_never_pay_twice(shared: &str) {
    let wall = Paywall::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfg = body(shared);
    let mut replicas: Vec<Process> = dirs.iter().map(|d| start(d, &cfg)).collect();

    let offer = replicas[0]
        .client_as("relay", RELAY_KEY)
        .get(wall.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(offer.status(), StatusCode::PAYMENT_REQUIRED);
    let (name, value) = paywall::agent_pays(&offer, None).await;
    for (i, r) in replicas.iter().enumerate() {
        let resp = r
            .client_as("relay", RELAY_KEY)
            .get(wall.url("/paid"))
            .header(name.as_str(), value.as_str())
            .send()
            .await
            .unwrap();
        let expected = if i == 0 {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(resp.status(), expected, "replica {i}");
        if i > 0 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "PAYMENT_NONCE_REUSED", "{body}");
        }
    }
    assert_eq!(
        wall.stats().paid,
        1,
        "the replays never reached the paywall"
    );

    let paid = wall.url("/paid");
    let first = call(&replicas[0], &paid, "order-1").await;
    assert_eq!((first.status, first.replay), (StatusCode::OK, false));
    for r in &replicas[1..] {
        let again = call(r, &paid, "order-1").await;
        assert_eq!(
            (again.status, again.replay),
            (StatusCode::OK, true),
            "{again:?}"
        );
        assert_eq!(again.body, first.body);
    }
    assert_eq!(wall.stats().paid_for_key("order-1"), 1);

    // While the first runs (the paywall answers 800 ms after taking the payment).
    let slow = wall.url("/slow-paid");
    let running = tokio::spawn({
        let (client, slow) = (replicas[0].client(), slow.clone());
        async move {
            client
                .get(slow)
                .header("idempotency-key", "slow-1")
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    until_paid(&wall, "slow-1").await;
    for r in &replicas {
        let a = call(r, &slow, "slow-1").await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
        assert_eq!(a.code, "IDEMPOTENCY_IN_FLIGHT", "{a:?}");
    }
    assert_eq!(running.await.unwrap(), StatusCode::OK);
    for r in &replicas[1..] {
        let a = call(r, &slow, "slow-1").await;
        assert_eq!((a.status, a.replay), (StatusCode::OK, true), "{a:?}");
    }

    // The replica holding a paid call dies with the payment taken and not answered.
    let doomed = tokio::spawn({
        let (client, slow) = (replicas[0].client(), slow.clone());
        async move {
            let _ = client
                .get(slow)
                .header("idempotency-key", "slow-2")
                .send()
                .await;
        }
    });
    until_paid(&wall, "slow-2").await;
    replicas.remove(0).kill();
    let _ = doomed.await;
    let nonce = wall.nonces();
    for r in &replicas {
        let a = retry(r, &slow, "slow-2").await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
        assert_eq!(a.code, "IDEMPOTENCY_IN_DOUBT", "{a:?}");
        let details: Value = serde_json::from_str(&a.body).unwrap();
        let n = details["error"]["details"]["nonce"].as_str().unwrap();
        assert!(nonce.contains(n), "the nonce of the payment sent: {a:?}");
    }
    let stats = wall.stats();
    for key in ["order-1", "slow-1", "slow-2"] {
        assert_eq!(stats.paid_for_key(key), 1, "{key}: {stats:?}");
    }
    assert_eq!(
        stats.paid, 4,
        "three keys and one relayed payment: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_redis_and_postgres_never_pay_twice() {
    let db = TempDatabase::create().await;
    replicas_never_pay_twice(&format!(
        "database:\n  url: {}\n{}budgets:\n  ledger: redis\n",
        db.url(),
        shared_redis("fleet")
    ))
    .await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_postgres_alone_never_pay_twice() {
    let db = TempDatabase::create().await;
    replicas_never_pay_twice(&format!("database:\n  url: {}\n", db.url())).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_and_fail_closed_a_keyed_call_that_would_pay_gets_503() {
    let wall = Paywall::start().await;
    let redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(
        &dir,
        &body(&format!(
            "redis:\n  url: {}\n  timeout_ms: 300\nbudgets:\n  redis_down: fail_closed\n",
            redis.url()
        )),
    );
    let paid = wall.url("/paid");
    let a = call(&pag0, &paid, "before").await;
    assert_eq!((a.status, a.replay), (StatusCode::OK, false), "{a:?}");
    drop(redis); // stopped

    let a = call(&pag0, &paid, "during").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
    assert_eq!(a.code, "IDEMPOTENCY_UNAVAILABLE", "{a:?}");
    let a = call(&pag0, &paid, "before").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
    // Free traffic continues, with a key or without.
    let a = call(&pag0, &wall.url("/free"), "free-1").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let resp = pag0.client().get(wall.url("/free")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stats = wall.stats();
    assert_eq!(stats.paid, 1, "nothing paid during the outage: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_redis_lost_is_found_again_from_the_payment_made_for_the_key() {
    let wall = Paywall::start().await;
    let redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(&dir, &body(&format!("redis:\n  url: {}\n", redis.url())));
    let paid = wall.url("/paid");
    let first = call(&pag0, &paid, "order-9").await;
    assert_eq!(
        (first.status, first.replay),
        (StatusCode::OK, false),
        "{first:?}"
    );
    // Once the payment is in the journal, Redis loses everything (a restart without
    // persistence, a flush).
    let spend = eventually(
        || pag0.admin_get("/api/spend?project=demo"),
        |s| s["count"] == 1,
    )
    .await;
    let journal_id = spend["spend"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(redis.cmd(&["FLUSHALL"]), "OK");

    let again = call(&pag0, &paid, "order-9").await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    assert_eq!(again.code, "IDEMPOTENCY_ALREADY_PAID", "{again:?}");
    let details: Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(details["error"]["details"]["payment"], journal_id.as_str());
    assert_eq!(wall.stats().paid_for_key("order-9"), 1);
    // Another key is paid as usual.
    let other = call(&pag0, &paid, "order-10").await;
    assert_eq!(
        (other.status, other.replay),
        (StatusCode::OK, false),
        "{other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_price_one_replica_learnt_lets_another_pay_in_one_round_trip() {
    let wall = Paywall::start().await;
    let cfg = body(&shared_redis("price"));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (start(&da, &cfg), start(&db, &cfg));
    let paid = wall.url("/paid");
    let first = a.client().get(&paid).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(wall.stats().requests, 2, "402, then the paid replay");
    let second = b.client().get(&paid).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let stats = wall.stats();
    assert_eq!(
        (stats.requests, stats.paid),
        (3, 2),
        "signed up front from the shared price: one round trip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_simultaneous_misses_over_three_replicas_pay_once() {
    let wall = Paywall::start().await;
    let cfg = body(&shared_redis("fill")).replace(
        "  - kind: payment\n",
        "  - kind: cache\n  - kind: payment\n",
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<Process> = dirs.iter().map(|d| start(d, &cfg)).collect();
    // The paywall answers 800 ms after taking the payment: all 20 arrive during the fill.
    let url = wall.url("/slow-paid");
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let (client, url) = (replicas[i % 3].client(), url.clone());
            tokio::spawn(async move {
                let resp = client.get(url).send().await.unwrap();
                let cache = resp.headers().get("x-pag0-cache").cloned();
                (resp.status(), cache, resp.text().await.unwrap())
            })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    let mut hits = 0;
    for c in calls {
        let (status, cache, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        hits += usize::from(cache.is_some_and(|c| c == "HIT"));
        bodies.insert(body);
    }
    assert_eq!(bodies.len(), 1, "every agent got the paid body: {bodies:?}");
    let stats = wall.stats();
    assert_eq!(stats.paid, 1, "one payment for the whole fleet: {stats:?}");
    assert_eq!(hits, 19, "the others were answered from the entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_draining_while_a_replica_stops_gracefully() {
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut pag0 = Process::start_server(
        &dir,
        &body(""),
        "  grace_period_seconds: 3\n",
        &[("RUST_LOG", "warn")],
    );
    let health = |p: &Process| {
        let url = format!("http://{}/health", p.admin);
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, before) = health(&pag0).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(before["status"], "ok");
    // A call in flight when the stop begins is answered.
    let in_flight = tokio::spawn({
        let (client, url) = (pag0.client(), wall.url("/delayed"));
        async move { client.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid = pag0.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let (status, during) = eventually(|| health(&pag0), |(s, _)| *s != StatusCode::OK).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{during}");
    assert_eq!(during["status"], "draining", "{during}");
    assert_eq!(in_flight.await.unwrap().unwrap(), StatusCode::OK);
    // Still draining well into the grace period (the balancer's checks see it).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health(&pag0).await.1["status"], "draining");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pag0.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pag0 did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_budgets_rate_limits_cache_and_keys_hold_for_the_fleet() {
    let wall = Paywall::start().await;
    let cluster = PrivateCluster::start();
    // A budget of 5 paid calls a day; the relay project is limited to 3 requests in a burst.
    let cfg = body(&format!(
        "redis:\n  cluster: {}\nbudgets:\n  ledger: redis\n",
        cluster.urls()
    ))
    .replace("daily: \"100\"", "daily: \"0.05\"")
    .replace(
        "  - kind: ssrf_guard",
        "  - kind: rate_limit\n    default: { requests_per_second: 10000, burst: 10000 }\n  - kind: ssrf_guard",
    )
    .replace("  - kind: payment\n", "  - kind: cache\n  - kind: payment\n")
    .replace(
        "    mode: relay\n",
        "    mode: relay\n    rate_limit: { requests_per_second: 1, burst: 3 }\n",
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<Process> = dirs.iter().map(|d| start(d, &cfg)).collect();

    // An Idempotency-Key paid through one replica is replayed by another.
    let keyed = wall.url("/paid?k=1");
    let first = call(&replicas[0], &keyed, "order-1").await;
    assert_eq!(
        (first.status, first.replay),
        (StatusCode::OK, false),
        "{first:?}"
    );
    let again = call(&replicas[1], &keyed, "order-1").await;
    assert_eq!(
        (again.status, again.replay),
        (StatusCode::OK, true),
        "{again:?}"
    );

    // 30 concurrent paid calls (distinct URLs: no cache hits) over the three: exactly the 4
    // the budget has left.
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let (client, url) = (replicas[i % 3].client(), wall.url(&format!("/paid?i={i}")));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    let mut paid = 0;
    for c in calls {
        match c.await.unwrap() {
            StatusCode::OK => paid += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(paid, 4, "the budget's remaining 4 calls, no more");
    assert_eq!(wall.stats().paid, 5, "{:?}", wall.stats());

    // A cache entry written through one replica is a hit on another.
    let url = wall.url("/free?c=1");
    let miss = replicas[0].client().get(&url).send().await.unwrap();
    assert_eq!(miss.headers()["x-pag0-cache"], "MISS");
    let hit = eventually(
        || async {
            let r = replicas[2].client().get(&url).send().await.unwrap();
            r.headers()["x-pag0-cache"].to_str().unwrap().to_string()
        },
        |h| h == "HIT",
    )
    .await;
    assert_eq!(hit, "HIT");
    // A purge by pattern through a third replica walks every primary of the cluster.
    let purged: Value = reqwest::Client::new()
        .post(format!("http://{}/api/cache/purge", replicas[1].admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"pattern": wall.url("/free*")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"]["redis"], 1, "{purged}");
    let after = eventually(
        || async {
            let r = replicas[2].client().get(&url).send().await.unwrap();
            r.headers()["x-pag0-cache"].to_str().unwrap().to_string()
        },
        |h| h == "MISS",
    )
    .await;
    assert_eq!(
        after, "MISS",
        "purged from Redis and from every memory tier"
    );

    // One bucket for the relay project across the fleet: 3 in a burst, not 3 per replica.
    let mut allowed = 0;
    for i in 0..9 {
        let status = replicas[i % 3]
            .client_as("relay", RELAY_KEY)
            .get(wall.url("/free"))
            .send()
            .await
            .unwrap()
            .status();
        allowed += usize::from(status != StatusCode::TOO_MANY_REQUESTS);
    }
    assert!((3..=4).contains(&allowed), "{allowed} of 9 allowed");
    assert!(cluster.keys() > 0, "the state is in the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_payment_was_refused_is_free_again_at_once() {
    let wall = Paywall::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pag0 = start(&dir, &body(""));
    // The paywall answers the paid attempt with 402 again: the payment is refused, not made.
    let url = wall.url("/always402");
    let first = call(&pag0, &url, "order-7").await;
    assert_eq!(first.status, StatusCode::PAYMENT_REQUIRED, "{first:?}");
    let requests = wall.stats().requests;
    let again = call(&pag0, &url, "order-7").await;
    assert_eq!(again.status, StatusCode::PAYMENT_REQUIRED, "{again:?}");
    assert!(
        wall.stats().requests > requests,
        "the retry went upstream again (not 409): {again:?}"
    );
}
