//! Write-ahead payment intents (table `payment_intents`): every signed payment header is
//! recorded here, durably, before it leaves pag0; its outcome is recorded when known.
//!
//! ```text
//! sent ──▶ committed   the paid response came back (the spend_journal row has the same id)
//!      ──▶ released    proved not paid (never sent, refused by the upstream, or expired unused)
//!      ──▶ in_doubt    sent, outcome unknown (an upstream error, or pag0 stopped: on start every
//!                      `sent` row becomes `in_doubt`); its budget hold stays until
//!                      valid_before + a margin ──▶ unresolved (reported, never dropped)
//! ```
//!
//! Rows the database cannot take right now go to a checksummed spool (like journal rows) and
//! are replayed in order; reads that recovery and budgets depend on add what is spooled.

use std::collections::HashMap;

use alloy_primitives::U256;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Db, Store, StoreError, err};

/// Where an intent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentState {
    Sent,
    Committed,
    Released,
    InDoubt,
    Unresolved,
}

impl IntentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentState::Sent => "sent",
            IntentState::Committed => "committed",
            IntentState::Released => "released",
            IntentState::InDoubt => "in_doubt",
            IntentState::Unresolved => "unresolved",
        }
    }

    pub fn parse(s: &str) -> Option<IntentState> {
        Some(match s {
            "sent" => IntentState::Sent,
            "committed" => IntentState::Committed,
            "released" => IntentState::Released,
            "in_doubt" => IntentState::InDoubt,
            "unresolved" => IntentState::Unresolved,
            _ => return None,
        })
    }
}

/// A payment about to be sent. No signature: what is recorded cannot pay anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The reservation id (the journal row's id once committed).
    pub id: String,
    pub project: String,
    /// Budget pool (`""` without a budget).
    pub pool: String,
    /// CAIP-2.
    pub network: String,
    pub asset: String,
    pub payer: String,
    pub pay_to: String,
    #[serde(with = "super::u256_decimal")]
    pub amount: U256,
    /// `0x` + 64 hex digits.
    pub nonce: String,
    pub valid_after: u64,
    pub valid_before: u64,
    /// Without the query.
    pub url: String,
    pub idempotency_key: Option<String>,
    /// `wallet` (pag0 signed) or `relay` (the agent signed).
    pub source: String,
    pub window_day: String,
    pub window_month: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// An intent with where it stands (what recovery and the admin API read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntentRow {
    #[serde(flatten)]
    pub intent: Intent,
    pub state: IntentState,
    pub reason: Option<String>,
    pub tx_hash: Option<String>,
    pub updated_at: i64,
}

/// The outcome of an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    pub state: IntentState,
    pub reason: Option<String>,
    pub tx_hash: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

/// What the intent spool holds, in the order it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentEvent {
    Sent(Box<Intent>),
    Outcome(Outcome),
}

/// An in-doubt intent's budget hold (see [`crate::budget::SpendHistory::window_totals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubtHold {
    pub id: String,
    pub amount: U256,
    pub day: String,
    pub month: String,
    pub valid_before: u64,
}

const INTENT_COLUMNS: &str = "INSERT INTO payment_intents (id, project, pool, network, asset, payer, pay_to, amount, nonce, valid_after, valid_before, url, idempotency_key, source, window_day, window_month, created_at, state, reason, tx_hash, updated_at) ";
/// Rows per `INSERT` (21 parameters each).
const INTENT_CHUNK: usize = 256;
const SELECT_INTENTS: &str = "SELECT id, project, pool, network, asset, payer, pay_to, CAST(amount AS TEXT) AS amount, nonce, valid_after, valid_before, url, idempotency_key, source, window_day, window_month, created_at, state, reason, tx_hash, updated_at FROM payment_intents";

/// How long after its `validBefore` an in-doubt payment keeps its budget hold (a facilitator
/// may submit an authorization just before it expires; the block lands a little later).
pub const IN_DOUBT_MARGIN_SECONDS: u64 = 120;

/// States the partial index `payment_intents_open` covers, and its predicate word for word.
const OPEN: &[IntentState] = &[
    IntentState::Sent,
    IntentState::InDoubt,
    IntentState::Unresolved,
];
const OPEN_PREDICATE: &str = "state IN ('sent', 'in_doubt', 'unresolved')";

/// States whose amount still holds budget.
pub const HOLDING: &[IntentState] = &[IntentState::Sent, IntentState::InDoubt];

/// Which intents to read.
#[derive(Debug, Clone, Copy)]
pub struct IntentFilter<'a> {
    pub states: &'a [IntentState],
    pub project: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub month: Option<&'a str>,
    /// Only those whose `valid_before` is earlier than this (unix seconds).
    pub expired_before: Option<u64>,
    /// Created in `[from, to)`, unix milliseconds.
    pub created: Option<(i64, i64)>,
}

impl<'a> IntentFilter<'a> {
    /// Every intent in one of `states`.
    pub fn states(states: &'a [IntentState]) -> IntentFilter<'a> {
        IntentFilter {
            states,
            project: None,
            pool: None,
            month: None,
            expired_before: None,
            created: None,
        }
    }

    fn matches(&self, r: &IntentRow) -> bool {
        let i = &r.intent;
        self.states.contains(&r.state)
            && self.project.is_none_or(|p| p == i.project)
            && self.pool.is_none_or(|p| p == i.pool)
            && self.month.is_none_or(|m| m == i.window_month)
            && self.expired_before.is_none_or(|t| i.valid_before < t)
            && self
                .created
                .is_none_or(|(from, to)| i.created_at >= from && i.created_at < to)
    }
}

/// Inserts intent rows (`&[IntentRow]`, each in its state) through `$exec`, in multi-row
/// `INSERT`s; a row already there is left as it is. `$cast` as for `insert_journal!`.
macro_rules! insert_intent_rows {
    ($db:ty, $exec:expr, $rows:expr, $cast:expr) => {{
        for chunk in $rows.chunks(INTENT_CHUNK) {
            let mut q = sqlx::QueryBuilder::<$db>::new(INTENT_COLUMNS);
            q.push_values(chunk, |mut row, r| {
                let i = &r.intent;
                row.push_bind(&i.id)
                    .push_bind(&i.project)
                    .push_bind(&i.pool)
                    .push_bind(&i.network)
                    .push_bind(&i.asset)
                    .push_bind(&i.payer)
                    .push_bind(&i.pay_to)
                    .push_bind(i.amount.to_string())
                    .push_unseparated($cast)
                    .push_bind(&i.nonce)
                    .push_bind(i.valid_after as i64)
                    .push_bind(i.valid_before.min(i64::MAX as u64) as i64)
                    .push_bind(&i.url)
                    .push_bind(&i.idempotency_key)
                    .push_bind(&i.source)
                    .push_bind(&i.window_day)
                    .push_bind(&i.window_month)
                    .push_bind(i.created_at)
                    .push_bind(r.state.as_str())
                    .push_bind(r.reason.as_deref())
                    .push_bind(r.tx_hash.as_deref())
                    .push_bind(r.updated_at);
            });
            q.push(" ON CONFLICT (id) DO NOTHING");
            q.build()
                .execute(&mut *$exec)
                .await
                .map_err(|e| err("intent insert", e))?;
        }
    }};
}

/// Records outcome `$o` through `$exec`. A final state is never left; `in_doubt` may still
/// become anything final.
macro_rules! update_outcome {
    ($exec:expr, $o:expr) => {{
        let o: &Outcome = $o;
        sqlx::query(
            "UPDATE payment_intents SET state = $1, reason = $2, tx_hash = COALESCE($3, tx_hash), updated_at = $4
             WHERE id = $5 AND state IN ('sent', 'in_doubt')",
        )
        .bind(o.state.as_str())
        .bind(o.reason.as_deref())
        .bind(o.tx_hash.as_deref())
        .bind(o.at)
        .bind(o.id.as_str())
        .execute($exec)
        .await
        .map(|_| ())
        .map_err(|e| err("intent update", e))
    }};
}

impl IntentRow {
    /// A new intent, state `sent`.
    pub fn sent(intent: Intent) -> IntentRow {
        IntentRow {
            updated_at: intent.created_at,
            intent,
            state: IntentState::Sent,
            reason: None,
            tx_hash: None,
        }
    }
}

impl Store {
    /// Makes `intents` durable (state `sent`): in the database, or in the spool when the
    /// database cannot take them. Only fails if both fail; then nothing may be sent.
    pub async fn record_intents(&self, intents: &[Intent]) -> Result<(), StoreError> {
        let rows: Vec<IntentRow> = intents.iter().cloned().map(IntentRow::sent).collect();
        match self.insert_intents(&rows).await {
            Ok(()) => Ok(()),
            Err(e) => {
                log::warn!(rows = intents.len(); "intent write failed, spooling: {e}");
                let events: Vec<IntentEvent> = intents
                    .iter()
                    .cloned()
                    .map(|i| IntentEvent::Sent(Box::new(i)))
                    .collect();
                self.intent_spool.append_all(&events).await?;
                self.intents_spooled
                    .store(true, std::sync::atomic::Ordering::Release);
                Ok(())
            }
        }
    }

    async fn insert_intents(&self, rows: &[IntentRow]) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(p) => {
                let mut conn = p.acquire().await.map_err(|e| err("intent insert", e))?;
                insert_intent_rows!(sqlx::Sqlite, conn, rows, "");
            }
            Db::Postgres(p) => {
                let mut conn = p.acquire().await.map_err(|e| err("intent insert", e))?;
                insert_intent_rows!(sqlx::Postgres, conn, rows, "::numeric");
            }
        }
        Ok(())
    }

    /// Writes new intents (each already in its latest state), journal rows and outcomes of
    /// intents written earlier, in one transaction (a committed intent and its journal row
    /// never exist one without the other). What the database cannot take goes to the spools.
    /// Only fails if both fail.
    pub async fn settle(
        &self,
        intents: &[IntentRow],
        records: &[&super::SpendRecord],
        outcomes: &[Outcome],
    ) -> Result<(), StoreError> {
        // Intents spooled while the database was away go in first: an outcome must not reach
        // the table before its intent's row.
        if self
            .intents_spooled
            .load(std::sync::atomic::Ordering::Acquire)
            && let Err(e) = self.replay_intent_spool().await
        {
            log::debug!("spooled payment intents wait for the database: {e}");
        }
        match self.settle_in_db(intents, records, outcomes).await {
            Ok(()) => Ok(()),
            Err(e) => {
                log::warn!(intents = intents.len(), rows = records.len(), outcomes = outcomes.len(); "journal write failed, spooling: {e}");
                for r in records {
                    self.spool.append(r).await?;
                }
                let mut events: Vec<IntentEvent> = Vec::new();
                for r in intents {
                    events.push(IntentEvent::Sent(Box::new(r.intent.clone())));
                    if r.state != IntentState::Sent {
                        events.push(IntentEvent::Outcome(Outcome {
                            id: r.intent.id.clone(),
                            state: r.state,
                            reason: r.reason.clone(),
                            tx_hash: r.tx_hash.clone(),
                            at: r.updated_at,
                        }));
                    }
                }
                events.extend(outcomes.iter().cloned().map(IntentEvent::Outcome));
                if !events.is_empty() {
                    self.intent_spool.append_all(&events).await?;
                    self.intents_spooled
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                Ok(())
            }
        }
    }

    async fn settle_in_db(
        &self,
        intents: &[IntentRow],
        records: &[&super::SpendRecord],
        outcomes: &[Outcome],
    ) -> Result<(), StoreError> {
        if intents.is_empty() && records.is_empty() && outcomes.is_empty() {
            return Ok(());
        }
        macro_rules! settle_in {
            ($pool:expr, $db:ty, $cast:expr) => {{
                let mut tx = $pool.begin().await.map_err(|e| err("journal", e))?;
                insert_intent_rows!($db, &mut *tx, intents, $cast);
                insert_journal!($db, &mut *tx, records, $cast);
                // The common outcome (a paid response) in one statement per chunk; the
                // transaction hash is the journal row's.
                let committed: Vec<&Outcome> = outcomes
                    .iter()
                    .filter(|o| o.state == IntentState::Committed)
                    .collect();
                for chunk in committed.chunks(INTENT_CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE payment_intents SET state = 'committed', updated_at = ",
                    );
                    q.push_bind(chunk[0].at);
                    q.push(
                        ", tx_hash = COALESCE((SELECT j.tx_hash FROM spend_journal j WHERE j.id = payment_intents.id), tx_hash)
                         WHERE state IN ('sent', 'in_doubt') AND id IN (",
                    );
                    let mut ids = q.separated(", ");
                    for o in chunk {
                        ids.push_bind(o.id.as_str());
                    }
                    q.push(")");
                    q.build()
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| err("intent update", e))?;
                }
                for o in outcomes.iter().filter(|o| o.state != IntentState::Committed) {
                    update_outcome!(&mut *tx, o)?;
                }
                tx.commit().await.map_err(|e| err("journal commit", e))
            }};
        }
        match &self.db {
            Db::Sqlite(p) => settle_in!(p, sqlx::Sqlite, ""),
            Db::Postgres(p) => settle_in!(p, sqlx::Postgres, "::numeric"),
        }
    }

    /// Writes spooled intent events to the database in order; keeps the spool if the
    /// database is still away. Returns how many events were moved.
    pub async fn replay_intent_spool(&self) -> Result<usize, StoreError> {
        let mut guard = self.intent_spool.lock().await;
        let events = guard.read()?;
        if events.is_empty() {
            self.intents_spooled
                .store(false, std::sync::atomic::Ordering::Release);
            return Ok(0);
        }
        self.migrate().await?;
        for event in &events {
            match event {
                IntentEvent::Sent(i) => {
                    self.insert_intents(&[IntentRow::sent((**i).clone())])
                        .await?
                }
                IntentEvent::Outcome(o) => with_pool!(&self.db, p => update_outcome!(p, o))?,
            }
        }
        guard.clear()?;
        self.intents_spooled
            .store(false, std::sync::atomic::Ordering::Release);
        Ok(events.len())
    }

    /// On start, before anything is paid: spooled events are written, intents whose journal
    /// row exists are `committed`, and every other `sent` intent (pag0 stopped before its
    /// outcome was known) becomes `in_doubt`. Returns the intents in doubt now.
    pub async fn recover_intents(&self) -> Result<Vec<IntentRow>, StoreError> {
        self.replay_intent_spool().await?;
        self.replay_spool().await?;
        let now = crate::clock::unix_millis() as i64;
        with_pool!(&self.db, p => {
            sqlx::query(
                "UPDATE payment_intents SET state = 'committed', updated_at = $1,
                     tx_hash = (SELECT tx_hash FROM spend_journal j WHERE j.id = payment_intents.id)
                 WHERE state IN ('sent', 'in_doubt') AND state IN ('sent', 'in_doubt', 'unresolved')
                   AND id IN (SELECT id FROM spend_journal)",
            )
            .bind(now)
            .execute(p)
            .await
            .map_err(|e| err("intent recovery", e))?;
            sqlx::query(
                "UPDATE payment_intents SET state = 'in_doubt', updated_at = $1,
                     reason = 'pag0 stopped before the outcome of this payment was known'
                 WHERE state = 'sent' AND state IN ('sent', 'in_doubt', 'unresolved')",
            )
            .bind(now)
            .execute(p)
            .await
            .map_err(|e| err("intent recovery", e))?;
        });
        self.intents(&IntentFilter::states(&[IntentState::InDoubt]), i64::MAX)
            .await
    }

    /// In-doubt (or still `sent`) intents whose authorization expired before `cutoff` (unix
    /// seconds), on a network `unresolvable` accepts (no RPC could tell), become
    /// `unresolved`; returns them.
    pub async fn expire_in_doubt(
        &self,
        cutoff: u64,
        unresolvable: impl Fn(&str) -> bool,
    ) -> Result<Vec<IntentRow>, StoreError> {
        // `sent` too: one whose process stopped after this one's recovery (a graceful upgrade
        // runs both for a while) has no other way out.
        let filter = IntentFilter {
            expired_before: Some(cutoff),
            ..IntentFilter::states(HOLDING)
        };
        let mut rows = self.intents(&filter, 10_000).await?;
        rows.retain(|r| unresolvable(&r.intent.network));
        if rows.is_empty() {
            return Ok(rows);
        }
        let at = crate::clock::unix_millis() as i64;
        let outcomes: Vec<Outcome> = rows
            .iter()
            .map(|r| Outcome {
                id: r.intent.id.clone(),
                state: IntentState::Unresolved,
                reason: Some(format!(
                    "the authorization expired at {} and no RPC could tell whether it was settled",
                    r.intent.valid_before
                )),
                tx_hash: None,
                at,
            })
            .collect();
        self.settle(&[], &[], &outcomes).await?;
        Ok(rows)
    }

    /// Intents that `filter` selects, oldest first, at most `limit`. Spooled intents not in
    /// the database yet are included (as `sent`, or as their spooled outcome says).
    pub async fn intents(
        &self,
        filter: &IntentFilter<'_>,
        limit: i64,
    ) -> Result<Vec<IntentRow>, StoreError> {
        let spool = self.intent_spool.lock().await;
        let spooled = spool.read()?;
        macro_rules! select {
            ($db:ty, $pool:expr) => {{
                let mut q = sqlx::QueryBuilder::<$db>::new(SELECT_INTENTS);
                // Literal states (our own words): the planner must see them to use the
                // partial index of open intents, whose predicate is repeated as is.
                let states: Vec<String> = filter
                    .states
                    .iter()
                    .map(|s| format!("'{}'", s.as_str()))
                    .collect();
                q.push(format!(" WHERE state IN ({})", states.join(", ")));
                if filter.states.iter().all(|s| OPEN.contains(s)) {
                    q.push(format!(" AND {OPEN_PREDICATE}"));
                }
                if let Some(p) = filter.project {
                    q.push(" AND project = ").push_bind(p);
                }
                if let Some(p) = filter.pool {
                    q.push(" AND pool = ").push_bind(p);
                }
                if let Some(m) = filter.month {
                    q.push(" AND window_month = ").push_bind(m);
                }
                if let Some(t) = filter.expired_before {
                    q.push(" AND valid_before < ")
                        .push_bind(t.min(i64::MAX as u64) as i64);
                }
                if let Some((from, to)) = filter.created {
                    q.push(" AND created_at >= ").push_bind(from);
                    q.push(" AND created_at < ").push_bind(to);
                }
                q.push(" ORDER BY created_at, id LIMIT ").push_bind(limit);
                q.build()
                    .fetch_all($pool)
                    .await
                    .map_err(|e| err("intent query", e))?
                    .iter()
                    .map(intent_row)
                    .collect::<Result<Vec<_>, _>>()?
            }};
        }
        let mut rows = match &self.db {
            Db::Sqlite(p) => select!(sqlx::Sqlite, p),
            Db::Postgres(p) => select!(sqlx::Postgres, p),
        };
        if !spooled.is_empty() {
            merge_spooled(&mut rows, spooled);
            rows.retain(|r| filter.matches(r));
            rows.sort_by(|a, b| {
                (a.intent.created_at, &a.intent.id).cmp(&(b.intent.created_at, &b.intent.id))
            });
            rows.truncate(limit.max(0) as usize);
        }
        Ok(rows)
    }

    /// The holds of in-doubt (and still `sent`) intents of one budget in one month, for a
    /// ledger rebuilding its windows.
    pub async fn holding_intents(
        &self,
        project: &str,
        pool: &str,
        month: &str,
    ) -> Result<Vec<InDoubtHold>, StoreError> {
        let filter = IntentFilter {
            project: Some(project),
            pool: Some(pool),
            month: Some(month),
            ..IntentFilter::states(HOLDING)
        };
        Ok(self
            .intents(&filter, 1_000_000)
            .await?
            .into_iter()
            .map(|r| InDoubtHold {
                id: r.intent.id,
                amount: r.intent.amount,
                day: r.intent.window_day,
                month: r.intent.window_month,
                valid_before: r.intent.valid_before,
            })
            .collect())
    }

    /// Count and amount per (project, asset symbol-less pool) of intents in `state`.
    pub async fn intent_totals(
        &self,
        state: IntentState,
    ) -> Result<HashMap<(String, String), (u64, U256)>, StoreError> {
        let rows = self
            .intents(&IntentFilter::states(&[state]), 1_000_000)
            .await?;
        let mut totals: HashMap<(String, String), (u64, U256)> = HashMap::new();
        for r in rows {
            let t = totals
                .entry((r.intent.project, r.intent.pool))
                .or_insert((0, U256::ZERO));
            t.0 += 1;
            t.1 = t.1.saturating_add(r.intent.amount);
        }
        Ok(totals)
    }
}

fn intent_row<R: Row>(row: &R) -> Result<IntentRow, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |c: &str| row.try_get::<String, _>(c).map_err(|e| err(c, e));
    let opt = |c: &str| row.try_get::<Option<String>, _>(c).map_err(|e| err(c, e));
    let int = |c: &str| row.try_get::<i64, _>(c).map_err(|e| err(c, e));
    let amount = text("amount")?;
    let state = text("state")?;
    Ok(IntentRow {
        intent: Intent {
            id: text("id")?,
            project: text("project")?,
            pool: text("pool")?,
            network: text("network")?,
            asset: text("asset")?,
            payer: text("payer")?,
            pay_to: text("pay_to")?,
            amount: U256::from_str_radix(&amount, 10).map_err(|e| err("amount", e))?,
            nonce: text("nonce")?,
            valid_after: int("valid_after")?.max(0) as u64,
            valid_before: int("valid_before")?.max(0) as u64,
            url: text("url")?,
            idempotency_key: opt("idempotency_key")?,
            source: text("source")?,
            window_day: text("window_day")?,
            window_month: text("window_month")?,
            created_at: int("created_at")?,
        },
        state: IntentState::parse(&state).ok_or_else(|| err("state", &state))?,
        reason: opt("reason")?,
        tx_hash: opt("tx_hash")?,
        updated_at: int("updated_at")?,
    })
}

/// Applies spooled events on top of the database rows.
fn merge_spooled(rows: &mut Vec<IntentRow>, spooled: Vec<IntentEvent>) {
    let mut index: HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.intent.id.clone(), i))
        .collect();
    for event in spooled {
        match event {
            IntentEvent::Sent(intent) => {
                if index.contains_key(&intent.id) {
                    continue;
                }
                index.insert(intent.id.clone(), rows.len());
                rows.push(IntentRow {
                    updated_at: intent.created_at,
                    intent: *intent,
                    state: IntentState::Sent,
                    reason: None,
                    tx_hash: None,
                });
            }
            IntentEvent::Outcome(o) => {
                if let Some(&i) = index.get(&o.id) {
                    let r = &mut rows[i];
                    if matches!(r.state, IntentState::Sent | IntentState::InDoubt) {
                        r.state = o.state;
                        r.reason = o.reason;
                        r.tx_hash = o.tx_hash.or(r.tx_hash.take());
                        r.updated_at = o.at;
                    }
                }
            }
        }
    }
}

/// A payment made for an `Idempotency-Key` (see [`Store::key_payment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPayment {
    pub id: String,
    pub state: IntentState,
    pub nonce: String,
}

impl Store {
    /// Where payment `id` stands: committed if it has a journal row, else its intent's state
    /// (`None`: not in the tables yet, e.g. still in the write-ahead file of the process that
    /// sent it).
    pub async fn intent_state(&self, id: &str) -> Result<Option<IntentState>, StoreError> {
        let state: Option<String> = with_pool!(&self.db, p => {
            sqlx::query_scalar(
                "SELECT COALESCE((SELECT 'committed' FROM spend_journal WHERE id = $1),
                                 (SELECT state FROM payment_intents WHERE id = $1))",
            )
            .bind(id)
            .fetch_one(p)
            .await
        })
        .map_err(|e| err("intent query", e))?;
        Ok(state.as_deref().and_then(IntentState::parse))
    }

    /// The latest payment made for `project`'s `Idempotency-Key` since `since_ms` (unix
    /// milliseconds) that is not proved unpaid (released).
    pub async fn key_payment(
        &self,
        project: &str,
        key: &str,
        since_ms: i64,
    ) -> Result<Option<KeyPayment>, StoreError> {
        let row: Option<(String, String, String)> = with_pool!(&self.db, p => {
            sqlx::query_as(
                "SELECT id, state, nonce FROM payment_intents
                 WHERE project = $1 AND idempotency_key = $2 AND idempotency_key IS NOT NULL
                   AND created_at >= $3 AND state <> 'released'
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(project)
            .bind(key)
            .bind(since_ms)
            .fetch_optional(p)
            .await
        })
        .map_err(|e| err("intent query", e))?;
        Ok(row.and_then(|(id, state, nonce)| {
            Some(KeyPayment {
                id,
                state: IntentState::parse(&state)?,
                nonce,
            })
        }))
    }
}
