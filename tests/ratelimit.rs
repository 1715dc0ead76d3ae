//! Rate limits shared by every instance: two pag0 instances on one Redis enforce one limit per
//! project (GCRA in one atomic script per request); with Redis gone, each instance decides
//! in-process and says so in a metric, and traffic goes on.

mod common;

use std::time::{Duration, Instant};

use common::services::PrivateRedis;
use common::*;
use reqwest::StatusCode;

const RATE: u32 = 10;
const BURST: u32 = 5;

fn config(redis_url: &str, prefix: &str) -> String {
    format!(
        "redis:\n  url: {redis_url}\n  key_prefix: {prefix}\nstages:\n  - kind: auth\n  - kind: rate_limit\n    default: {{ requests_per_second: {RATE}, burst: {BURST} }}\n  - kind: ssrf_guard\n    allow: [\"127.0.0.0/8\"]\n{}",
        demo_project()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_enforce_one_limit() {
    let up = Upstream::start().await;
    let prefix = format!("pag0test{}", rand::random::<u32>());
    let a = Pag0::start(&config("redis://127.0.0.1:6379", &prefix));
    let b = Pag0::start(&config("redis://127.0.0.1:6379", &prefix));
    let clients = [a.client("demo", DEMO_KEY), b.client("demo", DEMO_KEY)];
    let started = Instant::now();
    let mut admitted = [0u32; 2];
    let mut refused = 0;
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let resp = clients[i % 2].get(up.url("/")).send().await.unwrap();
        match resp.status() {
            StatusCode::OK => admitted[i % 2] += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("{other}"),
        }
        i += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = admitted[0] + admitted[1];
    // One bucket: a burst, then the rate. Two separate buckets would admit about twice that.
    let expected = f64::from(BURST) + f64::from(RATE) * elapsed;
    assert!(
        (f64::from(total) - expected).abs() <= f64::from(BURST),
        "admitted {total} ({admitted:?}) in {elapsed:.2} s; one shared limit admits about {expected:.0}"
    );
    assert!(refused > 0 && admitted[0] > 0 && admitted[1] > 0);
    for pag0 in [&a, &b] {
        let (_, m) = pag0.admin(reqwest::Method::GET, "/metrics").await;
        assert!(
            m.contains("pag0_rate_limit_fallbacks_total 0"),
            "Redis decided every request"
        );
    }
    let _ = std::process::Command::new("redis-cli")
        .args(["DEL", &format!("{prefix}:rl:demo")])
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_instance_limits_in_process() {
    let up = Upstream::start().await;
    let redis = PrivateRedis::start();
    let pag0 = Pag0::start(&config(&redis.url(), "pag0test"));
    let client = pag0.client("demo", DEMO_KEY);
    let resp = client.get(up.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        !redis.cmd(&["GET", "pag0test:rl:demo"]).is_empty(),
        "the bucket is in Redis"
    );
    drop(redis);
    // Redis is gone: requests are limited in-process, and free traffic goes on.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut statuses = Vec::new();
    for _ in 0..(BURST + 3) {
        let resp = client.get(up.url("/")).send().await.unwrap();
        assert!(resp.headers().contains_key("x-ratelimit-remaining") || resp.status() == 429);
        statuses.push(resp.status().as_u16());
    }
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        admitted >= BURST as usize && statuses.contains(&429),
        "the in-process bucket admits a burst, then refuses: {statuses:?}"
    );
    let (_, m) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    let fallbacks: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("pag0_rate_limit_fallbacks_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(fallbacks, u64::from(BURST + 3), "{m}");
}
