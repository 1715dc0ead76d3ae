//! Plans feedback from what SQL already holds into the outbox: committed payments from the
//! spend journal (`per_payment`), closed hours from the analytics rollups (`hourly`). Planning
//! is idempotent (feedback ids are derived from what they rate), so re-reading is harmless.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::Row;

use super::record::{self, Hour, Payment};
use super::{HOUR_MS, Mode, Settings, outbox};
use crate::store::{Db, StoreError, with_pool};

/// Journal rows read per query.
const PAGE: i64 = 1_000;
/// Every this many rounds the journal is re-read from further back: rows journaled late (a
/// request that finished earlier but was written later) are planned too.
const SHORT_SWEEP_ROUNDS: u64 = 60;
const SHORT_SWEEP_SECONDS: i64 = 300;
/// And from a day back, for rows replayed from the journal's spool after a database outage.
const LONG_SWEEP_ROUNDS: u64 = 7_200;
const LONG_SWEEP_SECONDS: i64 = 86_400;
/// A closed hour is rated this long after it ends (its last records reach the rollups).
const HOUR_GRACE_MS: i64 = 60_000;
/// When audit is first enabled, it rates the last day (payments, closed hours).
const FIRST_LOOKBACK_MS: i64 = 24 * HOUR_MS;

const JOURNAL_CURSOR: &str = "feedback.journal";
const HOUR_CURSOR: &str = "feedback.hour";

pub(super) struct Planner {
    db: Db,
    settings: Arc<Settings>,
    rounds: u64,
    /// Whether every request record so far is in the rollups (none waits in a spool): an
    /// hour is rated once, so only from complete data.
    complete: super::Readiness,
}

impl Planner {
    pub fn new(db: Db, settings: Arc<Settings>, complete: super::Readiness) -> Planner {
        Planner {
            db,
            settings,
            rounds: 0,
            complete,
        }
    }

    /// One round; returns how many feedbacks were added to the outbox.
    pub async fn round(&mut self) -> Result<u64, StoreError> {
        self.rounds += 1;
        if self.settings.agents.is_empty() {
            return Ok(0);
        }
        match self.settings.mode {
            Mode::PerPayment => self.payments().await,
            Mode::Hourly => self.hours().await,
        }
    }

    /// Journal rows from the cursor (committed second, id) on, one feedback each.
    async fn payments(&mut self) -> Result<u64, StoreError> {
        let now_ms = crate::clock::unix_millis() as i64;
        let (mut at, mut id) = match outbox::cursor(&self.db, JOURNAL_CURSOR).await? {
            Some(c) => parse_journal_cursor(&c),
            None => ((now_ms - FIRST_LOOKBACK_MS) / 1000, String::new()),
        };
        let back = if self.rounds.is_multiple_of(LONG_SWEEP_ROUNDS) {
            LONG_SWEEP_SECONDS
        } else if self.rounds.is_multiple_of(SHORT_SWEEP_ROUNDS) {
            SHORT_SWEEP_SECONDS
        } else {
            0
        };
        let (mut from_at, mut from_id) = if back > 0 {
            (at - back, String::new())
        } else {
            (at, id.clone())
        };
        let mut added = 0;
        loop {
            let page = journal_after(&self.db, from_at, &from_id).await?;
            let mut planned = Vec::new();
            for p in &page {
                if let Some(agent) = self.settings.agent_of(record::endpoint_of(&p.url)) {
                    planned.push(record::payment(&self.settings, agent, p));
                }
            }
            added += outbox::insert(&self.db, &planned, now_ms).await?;
            let Some(last) = page.last() else { break };
            (from_at, from_id) = (last.committed_at, last.id.clone());
            if (from_at, &from_id) > (at, &id) {
                (at, id) = (from_at, from_id.clone());
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        outbox::set_cursor(&self.db, JOURNAL_CURSOR, &format!("{at} {id}")).await?;
        Ok(added)
    }

    /// Every hour closed since the cursor: two feedbacks per agent endpoint that was called.
    async fn hours(&mut self) -> Result<u64, StoreError> {
        let now_ms = crate::clock::unix_millis() as i64;
        let mut next = match outbox::cursor(&self.db, HOUR_CURSOR).await? {
            Some(c) => c.parse::<i64>().unwrap_or(0),
            None => now_ms - now_ms.rem_euclid(HOUR_MS) - FIRST_LOOKBACK_MS,
        };
        let mut added = 0;
        while next + HOUR_MS + HOUR_GRACE_MS <= now_ms && (self.complete)() {
            let mut planned = Vec::new();
            for (endpoint, hour) in hour_of(&self.db, next).await? {
                if hour.calls == 0 {
                    continue;
                }
                if let Some(agent) = self.settings.agent_of(&endpoint) {
                    planned.extend(record::hourly(
                        &self.settings,
                        agent,
                        &endpoint,
                        next,
                        &hour,
                    ));
                }
            }
            added += outbox::insert(&self.db, &planned, now_ms).await?;
            next += HOUR_MS;
            outbox::set_cursor(&self.db, HOUR_CURSOR, &next.to_string()).await?;
        }
        Ok(added)
    }
}

fn parse_journal_cursor(c: &str) -> (i64, String) {
    let (at, id) = c.split_once(' ').unwrap_or((c, ""));
    (at.parse().unwrap_or(0), id.to_string())
}

/// One page of journal rows after (committed second, id).
async fn journal_after(db: &Db, at: i64, id: &str) -> Result<Vec<Payment>, StoreError> {
    let sql = "SELECT id, url, network, asset, pay_to, payer, CAST(amount AS TEXT) AS amount, tx_hash, committed_at \
               FROM spend_journal WHERE committed_at > $1 OR (committed_at = $1 AND id > $2) \
               ORDER BY committed_at, id LIMIT $3";
    let rows = with_pool!(db, p => {
        let rows = sqlx::query(sql).bind(at).bind(id).bind(PAGE).fetch_all(p).await;
        rows.map(|rows| {
            rows.iter()
                .map(|r| Payment {
                    id: r.get("id"),
                    url: r.get("url"),
                    network: r.get("network"),
                    asset: r.get("asset"),
                    pay_to: r.get("pay_to"),
                    payer: r.get("payer"),
                    amount: r.get("amount"),
                    tx_hash: r.get("tx_hash"),
                    committed_at: r.get("committed_at"),
                })
                .collect::<Vec<_>>()
        })
    });
    rows.map_err(|e| StoreError(format!("audit journal read: {e}")))
}

/// Upstream calls per endpoint in the hour starting at `hour_ms` (calls that reached the
/// upstream; 2xx and 3xx count as successes).
async fn hour_of(db: &Db, hour_ms: i64) -> Result<BTreeMap<String, Hour>, StoreError> {
    let sql = "SELECT endpoint, status_class, CAST(SUM(upstream_calls) AS BIGINT) AS calls, CAST(SUM(upstream_latency_sum_us) AS BIGINT) AS latency \
               FROM analytics_hourly WHERE hour_ms = $1 AND upstream_calls > 0 GROUP BY endpoint, status_class";
    let rows: Vec<(String, String, i64, i64)> = with_pool!(db, p => {
        let rows = sqlx::query(sql).bind(hour_ms).fetch_all(p).await;
        rows.map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r.get::<String, _>("endpoint"),
                        r.get::<String, _>("status_class"),
                        r.get::<i64, _>("calls"),
                        r.get::<i64, _>("latency"),
                    )
                })
                .collect()
        })
    })
    .map_err(|e| StoreError(format!("audit rollup read: {e}")))?;
    let mut out: BTreeMap<String, Hour> = BTreeMap::new();
    for (endpoint, class, calls, latency) in rows {
        let h = out.entry(endpoint).or_default();
        let calls = calls.max(0) as u64;
        h.calls += calls;
        if class == "2xx" || class == "3xx" {
            h.successes += calls;
        }
        h.latency_sum_us += latency.max(0) as u64;
    }
    Ok(out)
}
