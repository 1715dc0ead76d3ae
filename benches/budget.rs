//! Spend-firewall cost per paid call: policy evaluation + budget reserve + commit, with the
//! in-process ledger and with the Redis ledger on 127.0.0.1:6379 (keys under a random prefix,
//! deleted afterwards). Run: `cargo bench --bench budget [-- <iterations>]`.
//!
//! Prints p50 / p99 / max per operation, sequentially and with 16 concurrent callers, next to
//! the baseline of the same loop without the ledger (policy evaluation only).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use pag0::budget::{BudgetKey, Ledger, LocalLedger, NoHistory, RedisLedger};
use pag0::policy::{BudgetRule, HostPattern, Policy, Spend};

const CONCURRENCY: usize = 16;

fn policy() -> Policy {
    Policy {
        enforce: true,
        budgets: vec![BudgetRule {
            pool: "USDC".into(),
            symbol: "USDC".into(),
            chain_id: None,
            per_request: Some(U256::from(100_000u64)),
            daily: Some(U256::from(u64::MAX)),
            monthly: Some(U256::from(u64::MAX)),
        }],
        allow_hosts: vec![HostPattern::parse("*.example.com").unwrap()],
        block_hosts: vec![HostPattern::parse("evil.example.com").unwrap()],
        ..Policy::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One paid call's firewall work; `ledger: None` = policy evaluation only (the baseline).
async fn firewall_once(policy: &Policy, ledger: Option<&dyn Ledger>, key: &BudgetKey) {
    let spend = Spend {
        host: "api.example.com",
        chain_id: 84532,
        symbol: "USDC",
        asset: Address::repeat_byte(1),
        pay_to: Address::repeat_byte(2),
        amount: U256::from(10_000u64),
    };
    policy.check_host(spend.host).unwrap();
    let rule = policy.check_spend(&spend).unwrap().unwrap();
    if let Some(ledger) = ledger {
        let r = ledger
            .reserve(key, spend.amount, rule.limits(), now())
            .await
            .unwrap()
            .unwrap();
        ledger.commit(&r).await.unwrap();
    }
    std::hint::black_box(rule);
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "p50 {:>8.1} us   p99 {:>8.1} us   max {:>8.1} us   (n={})",
        us(at(0.50)),
        us(at(0.99)),
        us(*samples.last().unwrap()),
        samples.len()
    )
}

async fn sequential(ledger: Option<Arc<dyn Ledger>>, key: &BudgetKey, n: usize) -> String {
    let policy = policy();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        firewall_once(&policy, ledger.as_deref(), key).await;
        samples.push(t.elapsed());
    }
    summary(samples)
}

async fn concurrent(ledger: Option<Arc<dyn Ledger>>, key: &BudgetKey, n: usize) -> String {
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let ledger = ledger.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let policy = policy();
            let mut samples = Vec::with_capacity(n / CONCURRENCY);
            for _ in 0..n / CONCURRENCY {
                let t = Instant::now();
                firewall_once(&policy, ledger.as_deref(), &key).await;
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    summary(all)
}

/// One Redis round trip, for comparison with the two scripts a paid call runs.
async fn ping(n: usize) -> String {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
        samples.push(t.elapsed());
    }
    summary(samples)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let prefix = format!("pag0bench{}", hex::encode(rand::random::<[u8; 4]>()));
        let local: Arc<dyn Ledger> = Arc::new(LocalLedger::new(
            Arc::new(NoHistory),
            Duration::from_secs(300),
        ));
        let redis: Arc<dyn Ledger> = Arc::new(
            RedisLedger::new(
                "redis://127.0.0.1:6379",
                &prefix,
                Duration::from_secs(1),
                Duration::from_secs(300),
                Arc::new(NoHistory),
            )
            .unwrap(),
        );
        let key = BudgetKey::new("bench", "USDC");
        // Warm-up (connections, seeding).
        sequential(Some(local.clone()), &key, 200).await;
        sequential(Some(redis.clone()), &key, 200).await;
        println!("spend firewall per paid call (policy + reserve + commit), {n} calls each");
        println!(
            "{:<34} {}",
            "baseline: policy only",
            sequential(None, &key, n).await
        );
        println!(
            "{:<34} {}",
            "baseline: one redis PING round trip",
            ping(n / 4).await
        );
        println!(
            "{:<34} {}",
            "in-process ledger",
            sequential(Some(local.clone()), &key, n).await
        );
        println!(
            "{:<34} {}",
            "redis ledger (loopback)",
            sequential(Some(redis.clone()), &key, n / 4).await
        );
        println!(
            "{:<34} {}",
            format!("in-process, {CONCURRENCY} concurrent"),
            concurrent(Some(local), &key, n).await
        );
        println!(
            "{:<34} {}",
            format!("redis, {CONCURRENCY} concurrent"),
            concurrent(Some(redis), &key, n / 4).await
        );
        let keys = std::process::Command::new("redis-cli")
            .args(["--scan", "--pattern", &format!("{prefix}:*")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for k in keys.lines() {
            let _ = std::process::Command::new("redis-cli")
                .args(["DEL", k])
                .output();
        }
    });
}
