//! Budget ledgers and the spend journal against real Redis, SQLite and PostgreSQL.
//!
//! Tests that flush or stop Redis run their own private `redis-server` on a free port.

mod common;

use common::services::PrivateRedis;

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::U256;
use pag0::budget::{
    BudgetKey, FallbackLedger, Ledger, Limits, LocalLedger, NoHistory, RedisLedger, SpendHistory,
    Window, Windows,
};
use pag0::config::Secret;
use pag0::store::{DatabaseConfig, DatabaseKind, SpendRecord, Store};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// 2026-11-30T23:59:59Z.
const NOV_30_LAST_SECOND: u64 = 1_796_083_199;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 6]>()))
}

fn redis_ledger(url: &str, prefix: &str, history: Arc<dyn SpendHistory>) -> RedisLedger {
    RedisLedger::new(
        url,
        prefix,
        Duration::from_millis(500),
        Duration::from_secs(60),
        history,
    )
    .unwrap()
}

/// A Redis ledger that falls back to an in-process one (`redis_down: in_process`).
fn fallback_ledger(url: &str, history: Arc<dyn SpendHistory>) -> FallbackLedger {
    FallbackLedger::new(
        Arc::new(redis_ledger(url, "pag0", history.clone())),
        Some(LocalLedger::new(history, Duration::from_secs(60))),
    )
}

fn limits(daily: u64, monthly: u64) -> Limits {
    Limits {
        daily: Some(U256::from(daily)),
        monthly: Some(U256::from(monthly)),
    }
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    Store::open(&DatabaseConfig {
        url: Secret::plain(format!("sqlite:{}", dir.path().join("pag0.db").display())),
        kind: DatabaseKind::Sqlite,
        spool_file: dir.path().join("spool.jsonl"),
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap()
}

fn record(id: &str, key: &BudgetKey, amount: u64, now: u64) -> SpendRecord {
    let w = Windows::at(now);
    SpendRecord {
        id: id.into(),
        project: key.project.clone(),
        pool: key.pool.clone(),
        network: "eip155:84532".into(),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
        payer: "0x857b06519E91e3A54538791bDbb0E22373e36b66".into(),
        amount: U256::from(amount),
        nonce: format!("0x{id}"),
        tx_hash: None,
        url: "http://127.0.0.1/paid".into(),
        window_day: w.day,
        window_month: w.month,
        reserved_at: now as i64,
        committed_at: now as i64,
        valid_before: Some(now as i64 + 60),
    }
}

/// Fires `tries` concurrent reserve+commit cycles at `ledgers` (round robin) for a budget
/// that allows exactly `allowed` of them; returns how many were granted.
async fn race(ledgers: &[Arc<dyn Ledger>], key: &BudgetKey, allowed: u64, tries: usize) -> usize {
    let price = 7u64;
    let budget = limits(price * allowed, price * allowed * 10);
    let mut tasks = Vec::new();
    for i in 0..tries {
        let ledger = ledgers[i % ledgers.len()].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            match ledger
                .reserve(&key, U256::from(price), budget, NOV_30_LAST_SECOND - 60)
                .await
            {
                Ok(Ok(r)) => {
                    tokio::task::yield_now().await;
                    ledger.commit(&r).await.unwrap();
                    true
                }
                Ok(Err(d)) => {
                    assert_eq!(d.window, Window::Daily);
                    false
                }
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap() as usize;
    }
    granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_budget_is_exact_across_two_instances_under_concurrency() {
    let prefix = unique("pag0test");
    let a: Arc<dyn Ledger> = Arc::new(redis_ledger(SHARED_REDIS, &prefix, Arc::new(NoHistory)));
    let b: Arc<dyn Ledger> = Arc::new(redis_ledger(SHARED_REDIS, &prefix, Arc::new(NoHistory)));
    let key = BudgetKey::new("race", "USDC");
    let granted = race(&[a.clone(), b.clone()], &key, 10, 200).await;
    assert_eq!(granted, 10);
    let usage = a.usage(&key, NOV_30_LAST_SECOND - 60).await.unwrap();
    assert_eq!(usage.day.spent, U256::from(70));
    assert_eq!(usage.day.held, U256::ZERO);
    assert_eq!(b.usage(&key, NOV_30_LAST_SECOND - 60).await.unwrap(), usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_budget_is_exact_under_concurrency() {
    let local: Arc<dyn Ledger> = Arc::new(LocalLedger::new(
        Arc::new(NoHistory),
        Duration::from_secs(60),
    ));
    let key = BudgetKey::new("race", "USDC");
    assert_eq!(race(std::slice::from_ref(&local), &key, 10, 200).await, 10);
}

#[tokio::test]
async fn redis_amounts_beyond_64_bits_are_exact() {
    let ledger = redis_ledger(SHARED_REDIS, &unique("pag0test"), Arc::new(NoHistory));
    let key = BudgetKey::new("dai", "DAI");
    let one = U256::from(10).pow(U256::from(18)) + U256::from(1); // 1.000000000000000001 DAI
    let budget = Limits {
        daily: Some(one * U256::from(30)),
        monthly: None,
    };
    for _ in 0..30 {
        let r = ledger
            .reserve(&key, one, budget, NOV_30_LAST_SECOND)
            .await
            .unwrap()
            .unwrap();
        ledger.commit(&r).await.unwrap();
    }
    let denied = ledger
        .reserve(&key, U256::from(1), budget, NOV_30_LAST_SECOND)
        .await
        .unwrap();
    let denied = denied.unwrap_err();
    assert_eq!(denied.used, one * U256::from(30));
    assert_eq!(denied.used.to_string(), "30000000000000000030");
}

#[tokio::test]
async fn redis_windows_roll_over_and_commit_is_idempotent() {
    let ledger = redis_ledger(SHARED_REDIS, &unique("pag0test"), Arc::new(NoHistory));
    let key = BudgetKey::new("roll", "USDC");
    let r = ledger
        .reserve(&key, U256::from(100), limits(100, 150), NOV_30_LAST_SECOND)
        .await;
    let r = r.unwrap().unwrap();
    ledger.commit(&r).await.unwrap();
    ledger.commit(&r).await.unwrap();
    let same_day = ledger
        .reserve(&key, U256::from(1), limits(100, 150), NOV_30_LAST_SECOND)
        .await;
    assert_eq!(same_day.unwrap().unwrap_err().window, Window::Daily);
    // The next second is a new day and a new month.
    let next = ledger
        .reserve(
            &key,
            U256::from(100),
            limits(100, 150),
            NOV_30_LAST_SECOND + 1,
        )
        .await;
    let next = next.unwrap().unwrap();
    assert_eq!(next.windows.month, "2026-12");
    ledger.release(&next).await.unwrap();
    let nov = ledger.usage(&key, NOV_30_LAST_SECOND).await.unwrap();
    assert_eq!(
        nov.day.spent,
        U256::from(100),
        "a repeated commit counts once"
    );
    let dec = ledger.usage(&key, NOV_30_LAST_SECOND + 1).await.unwrap();
    assert_eq!((dec.day.spent, dec.day.held), (U256::ZERO, U256::ZERO));
}

#[tokio::test]
async fn redis_reclaims_expired_reservations() {
    let ledger = redis_ledger(SHARED_REDIS, &unique("pag0test"), Arc::new(NoHistory));
    let key = BudgetKey::new("exp", "USDC");
    let now = NOV_30_LAST_SECOND - 3600;
    let crashed = ledger
        .reserve(&key, U256::from(100), limits(100, 1000), now)
        .await
        .unwrap();
    assert!(crashed.is_ok());
    let held = ledger
        .reserve(&key, U256::from(1), limits(100, 1000), now + 30)
        .await
        .unwrap();
    assert!(held.is_err(), "the hold counts while the reservation lives");
    // The reservation TTL is 60 s: then its hold is reclaimed.
    let after = ledger
        .reserve(&key, U256::from(100), limits(100, 1000), now + 61)
        .await
        .unwrap();
    assert!(after.is_ok());
}

#[tokio::test]
async fn redis_flushed_budgets_are_rebuilt_from_the_journal() {
    let redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(sqlite_store(&dir).await);
    let ledger = redis_ledger(&redis.url(), "pag0", store.clone());
    let key = BudgetKey::new("flush", "USDC");
    let now = NOV_30_LAST_SECOND - 600;
    for i in 0..6 {
        let r = ledger
            .reserve(&key, U256::from(10), limits(100, 1000), now)
            .await
            .unwrap()
            .unwrap();
        store
            .record_spend(&record(&r.id, &key, 10, now))
            .await
            .unwrap();
        ledger.commit(&r).await.unwrap();
        assert_eq!(r.usage.day.held, U256::from(10), "round {i}");
    }
    assert_eq!(redis.cmd(&["FLUSHALL"]), "OK");
    // Rebuilt: 60 spent, so 4 more fit and the 5th is refused.
    let mut granted = 0;
    while let Ok(r) = ledger
        .reserve(&key, U256::from(10), limits(100, 1000), now)
        .await
        .unwrap()
    {
        store
            .record_spend(&record(&r.id, &key, 10, now))
            .await
            .unwrap();
        ledger.commit(&r).await.unwrap();
        granted += 1;
        assert!(granted <= 4, "overspend after the flush");
    }
    assert_eq!(granted, 4);
    let (day, month) = store.window_totals(&key, &Windows::at(now)).await.unwrap();
    assert_eq!((day, month), (U256::from(100), U256::from(100)));
}

#[tokio::test]
async fn redis_outage_fails_closed_or_falls_back_and_recovers_without_a_restart() {
    let port = common::free_port();
    let redis = PrivateRedis::start_on(port);
    let url = format!("redis://127.0.0.1:{port}");
    let strict = redis_ledger(&url, "pag0", Arc::new(NoHistory));
    let lenient = fallback_ledger(&url, Arc::new(NoHistory));
    let key = BudgetKey::new("outage", "USDC");
    let now = NOV_30_LAST_SECOND - 600;
    let r = strict
        .reserve(&key, U256::from(10), limits(100, 1000), now)
        .await
        .unwrap()
        .unwrap();
    strict.commit(&r).await.unwrap();

    drop(redis); // stops it
    let err = strict
        .reserve(&key, U256::from(10), limits(100, 1000), now)
        .await;
    assert!(err.is_err(), "fail closed while Redis is down");
    let fell_back = lenient
        .reserve(&key, U256::from(10), limits(100, 1000), now)
        .await;
    let fell_back = fell_back.unwrap().unwrap();
    assert!(fell_back.fallback);
    // Its commit waits for Redis.
    lenient.commit(&fell_back).await.unwrap();
    assert_eq!(lenient.primary.pending_commits(), 1);

    let redis = PrivateRedis::start_on(port);
    // The same ledger objects recover by themselves.
    let mut recovered = None;
    for _ in 0..50 {
        if let Ok(Ok(r)) = strict
            .reserve(&key, U256::from(10), limits(100, 1000), now)
            .await
        {
            recovered = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = recovered.expect("the ledger did not recover after Redis came back");
    strict.release(&r).await.unwrap();
    let primary = lenient.primary.clone();
    tokio::spawn(async move { primary.maintain(Duration::from_millis(100)).await });
    for _ in 0..50 {
        if lenient.primary.pending_commits() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lenient.primary.pending_commits(), 0);
    // The restarted Redis lost everything (no persistence); the spent amount of the fallback
    // commit is back (the journal would add the earlier one when rebuilding).
    let usage = strict.usage(&key, now).await.unwrap();
    assert_eq!(usage.day.spent, U256::from(10));
    drop(redis);
}

#[tokio::test]
async fn sqlite_journal_spools_while_the_database_is_unwritable_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let key = BudgetKey::new("journal", "USDC");
    let now = NOV_30_LAST_SECOND - 600;
    store
        .record_spend(&record("a1", &key, 5, now))
        .await
        .unwrap();
    store
        .record_spend(&record("a1", &key, 5, now))
        .await
        .unwrap(); // same id: once
    // Break the table under the store (as a failing database would): the row goes to the
    // spool, still counts for budgets, and is written once the table is back.
    let db = dir.path().join("pag0.db");
    let raw = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE spend_journal RENAME TO spend_journal_away")
        .execute(&raw)
        .await
        .unwrap();
    store
        .record_spend(&record("b2", &key, 7, now))
        .await
        .unwrap();
    assert_eq!(store.spooled().await, 1);
    sqlx::query("ALTER TABLE spend_journal_away RENAME TO spend_journal")
        .execute(&raw)
        .await
        .unwrap();
    assert_eq!(store.replay_spool().await.unwrap(), 1);
    assert_eq!(store.spooled().await, 0);
    let (day, month) = store.window_totals(&key, &Windows::at(now)).await.unwrap();
    assert_eq!((day, month), (U256::from(12), U256::from(12)));
    let rows = store.spend("journal", 0, i64::MAX, 100).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a1", "b2"]
    );
}

/// A journal whose totals the test sets.
#[derive(Default)]
struct FakeJournal(std::sync::Mutex<U256>);

#[async_trait::async_trait]
impl SpendHistory for FakeJournal {
    async fn window_totals(&self, _: &BudgetKey, _: &Windows) -> Result<(U256, U256), String> {
        let v = *self.0.lock().unwrap();
        Ok((v, v))
    }
}

#[tokio::test]
async fn each_fallback_episode_starts_from_the_journal() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let journal = Arc::new(FakeJournal::default());
    *journal.0.lock().unwrap() = U256::from(10);
    let ledger = fallback_ledger(&url, journal.clone());
    let key = BudgetKey::new("episodes", "USDC");
    let now = NOV_30_LAST_SECOND - 600;
    // Outage 1 (no Redis yet): the local ledger starts from the journal's 10.
    let r = ledger
        .reserve(&key, U256::from(10), limits(100, 1000), now)
        .await
        .unwrap()
        .unwrap();
    assert!(r.fallback);
    ledger.release(&r).await.unwrap();
    // Redis comes up; 80 more are spent through it (and journaled).
    let redis = PrivateRedis::start_on(port);
    let mut through_redis = None;
    for _ in 0..50 {
        if let Ok(Ok(r)) = ledger
            .reserve(&key, U256::from(80), limits(100, 1000), now)
            .await
            && !r.fallback
        {
            through_redis = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = through_redis.expect("Redis was not used after it came up");
    *journal.0.lock().unwrap() = U256::from(90);
    ledger.commit(&r).await.unwrap();
    // Outage 2: the local ledger must not reuse its stale 10.
    drop(redis);
    let denied = ledger
        .reserve(&key, U256::from(20), limits(100, 1000), now)
        .await
        .unwrap();
    assert_eq!(denied.unwrap_err().used, U256::from(90));
}

#[tokio::test]
async fn commits_that_reach_a_lost_window_before_its_rebuild_are_kept() {
    let redis = PrivateRedis::start();
    let journal = Arc::new(FakeJournal::default());
    let ledger = redis_ledger(&redis.url(), "pag0", journal.clone());
    let key = BudgetKey::new("race", "USDC");
    let now = NOV_30_LAST_SECOND - 600;
    let r = ledger
        .reserve(&key, U256::from(10), limits(100, 1000), now)
        .await
        .unwrap()
        .unwrap();
    // Redis loses everything; the commit lands before any reserve rebuilds the window, and the
    // journal read for the rebuild does not include it yet (50 from earlier payments).
    assert_eq!(redis.cmd(&["FLUSHALL"]), "OK");
    ledger.commit(&r).await.unwrap();
    *journal.0.lock().unwrap() = U256::from(50);
    let denied = ledger
        .reserve(&key, U256::from(41), limits(100, 1000), now)
        .await
        .unwrap();
    assert_eq!(
        denied.unwrap_err().used,
        U256::from(60),
        "50 from the journal + the 10 commit"
    );
    assert!(
        ledger
            .reserve(&key, U256::from(40), limits(100, 1000), now)
            .await
            .unwrap()
            .is_ok()
    );
}
