//! The payment intent table against real SQLite and PostgreSQL: recovery after a crash,
//! outcomes in one transaction with the journal, expiry to `unresolved`, the spool while the
//! database is away, and budget holds rebuilt from payments in doubt.

mod common;

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::U256;
use common::services::TempDatabase;
use pag0::budget::{BudgetKey, Ledger, Limits, LocalLedger, SpendHistory, Windows};
use pag0::config::Secret;
use pag0::store::{
    DatabaseConfig, DatabaseKind, Intent, IntentFilter, IntentState, Outcome, SpendRecord, Store,
};

fn now() -> u64 {
    pag0::clock::unix_now()
}

fn intent(id: &str, amount: u64, valid_before: u64, key: Option<&str>) -> Intent {
    let w = Windows::at(now());
    Intent {
        id: id.to_string(),
        project: "demo".into(),
        pool: "USDC".into(),
        network: "eip155:84532".into(),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        payer: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into(),
        pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
        amount: U256::from(amount),
        nonce: format!("0x{}", hex::encode([id.len() as u8; 32])),
        valid_after: now() - 600,
        valid_before,
        url: "http://127.0.0.1:1/paid".into(),
        idempotency_key: key.map(str::to_string),
        source: "wallet".into(),
        window_day: w.day,
        window_month: w.month,
        created_at: pag0::clock::unix_millis() as i64,
    }
}

fn journal_row(i: &Intent) -> SpendRecord {
    SpendRecord {
        id: i.id.clone(),
        project: i.project.clone(),
        pool: i.pool.clone(),
        network: i.network.clone(),
        asset: i.asset.clone(),
        pay_to: i.pay_to.clone(),
        payer: i.payer.clone(),
        amount: i.amount,
        nonce: i.nonce.clone(),
        tx_hash: Some("0xabc".into()),
        url: i.url.clone(),
        window_day: i.window_day.clone(),
        window_month: i.window_month.clone(),
        reserved_at: now() as i64,
        committed_at: now() as i64,
        valid_before: Some(i.valid_before as i64),
    }
}

fn states(rows: &[pag0::store::IntentRow]) -> Vec<(String, IntentState)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|r| (r.intent.id.clone(), r.state))
        .collect();
    v.sort();
    v
}

const ALL: &[IntentState] = &[
    IntentState::Sent,
    IntentState::Committed,
    IntentState::Released,
    IntentState::InDoubt,
    IntentState::Unresolved,
];

/// The life of intents across a crash, on `store`.
async fn recovery_and_expiry(store: Store) {
    let store = Arc::new(store);
    let t = now();
    let fresh = |id| intent(id, 10, t + 60, None);
    let (a, b, c, d, e) = (
        fresh("a-committed"),
        fresh("b-released"),
        fresh("c-crashed"),
        intent("d-expired", 20, t - 3600, Some("order-1")),
        fresh("e-journaled-then-crash"),
    );
    store
        .record_intents(&[a.clone(), b.clone(), c.clone(), d.clone(), e.clone()])
        .await
        .unwrap();
    store
        .record_intents(std::slice::from_ref(&a))
        .await
        .unwrap(); // a replay writes nothing twice
    let at = pag0::clock::unix_millis() as i64;
    // a committed with its journal row in one transaction; b released.
    store
        .settle(
            &[],
            &[&journal_row(&a)],
            &[
                Outcome {
                    id: a.id.clone(),
                    state: IntentState::Committed,
                    reason: None,
                    tx_hash: Some("0xabc".into()),
                    at,
                },
                Outcome {
                    id: b.id.clone(),
                    state: IntentState::Released,
                    reason: Some("402".into()),
                    tx_hash: None,
                    at,
                },
            ],
        )
        .await
        .unwrap();
    // e's journal row landed (spool or an older version) but its outcome did not.
    store.record_spend(&journal_row(&e)).await.unwrap();
    // A final state is never left.
    store
        .settle(
            &[],
            &[],
            &[Outcome {
                id: b.id.clone(),
                state: IntentState::InDoubt,
                reason: None,
                tx_hash: None,
                at,
            }],
        )
        .await
        .unwrap();

    // The crash: c, d (and e) are still `sent`. Recovery.
    let in_doubt = store.recover_intents().await.unwrap();
    assert_eq!(
        states(&in_doubt),
        vec![
            ("c-crashed".into(), IntentState::InDoubt),
            ("d-expired".into(), IntentState::InDoubt)
        ]
    );
    let all = store
        .intents(&IntentFilter::states(ALL), 100)
        .await
        .unwrap();
    assert_eq!(
        states(&all),
        vec![
            ("a-committed".into(), IntentState::Committed),
            ("b-released".into(), IntentState::Released),
            ("c-crashed".into(), IntentState::InDoubt),
            ("d-expired".into(), IntentState::InDoubt),
            ("e-journaled-then-crash".into(), IntentState::Committed),
        ]
    );
    assert_eq!(
        all.iter()
            .find(|r| r.intent.id == "e-journaled-then-crash")
            .unwrap()
            .tx_hash
            .as_deref(),
        Some("0xabc")
    );

    // Budgets rebuilt: journal rows spent, the in-doubt ones held until they expire.
    let key = BudgetKey::new("demo", "USDC");
    let w = Windows::at(t);
    let (day, _) = store.window_totals(&key, &w).await.unwrap();
    assert_eq!(day, U256::from(20), "a and e are spent");
    let holds = store.pending_holds(&key, &w).await.unwrap();
    assert_eq!(holds.len(), 2);
    let ledger = LocalLedger::new(store.clone(), Duration::from_secs(60));
    let usage = ledger.usage(&key, t).await.unwrap();
    assert_eq!(usage.day.spent, U256::from(20));
    assert_eq!(
        usage.day.held,
        U256::from(10),
        "c holds; d's authorization expired long ago"
    );
    let limits = Limits {
        daily: Some(U256::from(35)),
        monthly: None,
    };
    assert!(
        ledger
            .reserve(&key, U256::from(6), limits, t)
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        ledger
            .reserve(&key, U256::from(5), limits, t)
            .await
            .unwrap()
            .is_ok()
    );

    // Expiry: d is past valid_before + margin, c is not.
    let cutoff = t.saturating_sub(pag0::store::IN_DOUBT_MARGIN_SECONDS);
    let expired = store.expire_in_doubt(cutoff, |_| true).await.unwrap();
    assert_eq!(
        states(&expired),
        vec![("d-expired".into(), IntentState::InDoubt)]
    );
    let unresolved = store
        .intents(&IntentFilter::states(&[IntentState::Unresolved]), 100)
        .await
        .unwrap();
    assert_eq!(unresolved.len(), 1);
    assert!(
        unresolved[0].reason.as_deref().unwrap().contains("expired"),
        "{:?}",
        unresolved[0].reason
    );
    assert_eq!(
        unresolved[0].intent.idempotency_key.as_deref(),
        Some("order-1")
    );
    // A second recovery changes nothing.
    assert_eq!(
        states(&store.recover_intents().await.unwrap()),
        vec![("c-crashed".into(), IntentState::InDoubt)]
    );
}

#[tokio::test]
async fn sqlite_intents_recover_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DatabaseConfig {
        url: Secret::plain(format!("sqlite:{}", dir.path().join("pag0.db").display())),
        kind: DatabaseKind::Sqlite,
        spool_file: dir.path().join("spool.jsonl"),
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    recovery_and_expiry(store).await;
}

#[tokio::test]
async fn postgres_intents_recover_and_expire() {
    let db = TempDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DatabaseConfig {
        url: Secret::plain(db.url()),
        kind: DatabaseKind::Postgres,
        spool_file: dir.path().join("spool.jsonl"),
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    recovery_and_expiry(store).await;
    db.drop_now().await;
}

#[tokio::test]
async fn intents_spool_while_postgres_is_away_and_count_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: every write goes to the spool.
    let away = format!("postgres://postgres@127.0.0.1:{}/none", common::free_port());
    let store = Store::open(&DatabaseConfig {
        url: Secret::plain(away),
        kind: DatabaseKind::Postgres,
        spool_file: dir.path().join("spool.jsonl"),
        timeout: Duration::from_millis(300),
    })
    .await
    .unwrap();
    let t = now();
    let (a, b) = (intent("a", 10, t + 60, None), intent("b", 7, t + 60, None));
    store.record_intents(&[a.clone(), b.clone()]).await.unwrap();
    let at = pag0::clock::unix_millis() as i64;
    store
        .settle(
            &[],
            &[&journal_row(&a)],
            &[Outcome {
                id: a.id.clone(),
                state: IntentState::Committed,
                reason: None,
                tx_hash: None,
                at,
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        store.spooled().await,
        4,
        "2 intents, 1 outcome, 1 journal row"
    );
    // The spool survives a restart of pag0 (a new store on the same files) and is replayed
    // into the database once it is back.
    drop(store);
    let db = TempDatabase::create().await;
    let store = Store::open(&DatabaseConfig {
        url: Secret::plain(db.url()),
        kind: DatabaseKind::Postgres,
        spool_file: dir.path().join("spool.jsonl"),
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    // Before the replay, reads merge the spool: b still holds its budget, a is committed.
    let open = store
        .intents(&IntentFilter::states(pag0::store::HOLDING), 100)
        .await
        .unwrap();
    assert_eq!(states(&open), vec![("b".into(), IntentState::Sent)]);
    let holds = store
        .pending_holds(&BudgetKey::new("demo", "USDC"), &Windows::at(t))
        .await
        .unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].amount, U256::from(7));
    let in_doubt = store.recover_intents().await.unwrap();
    assert_eq!(states(&in_doubt), vec![("b".into(), IntentState::InDoubt)]);
    assert_eq!(store.spooled().await, 0);
    let all = store
        .intents(&IntentFilter::states(ALL), 100)
        .await
        .unwrap();
    assert_eq!(
        states(&all),
        vec![
            ("a".into(), IntentState::Committed),
            ("b".into(), IntentState::InDoubt)
        ]
    );
    db.drop_now().await;
}
