-- Durable spend journal: one row per committed payment. Budget windows are rebuilt from it.
-- Amounts are base units as NUMERIC(78,0) (fits any uint256; 18-decimal tokens overflow BIGINT).
CREATE TABLE spend_journal (
    id           TEXT PRIMARY KEY,          -- reservation id (idempotent replays of the spool)
    project      TEXT NOT NULL,
    pool         TEXT NOT NULL,             -- budget pool (asset symbol[@network]); '' without a budget
    network      TEXT NOT NULL,             -- CAIP-2, e.g. eip155:8453
    asset        TEXT NOT NULL,             -- token contract
    pay_to       TEXT NOT NULL,
    payer        TEXT NOT NULL,
    amount       NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
    nonce        TEXT NOT NULL,
    tx_hash      TEXT,
    url          TEXT NOT NULL,
    window_day   TEXT NOT NULL,             -- UTC day the payment counts in (YYYY-MM-DD)
    window_month TEXT NOT NULL,             -- UTC month (YYYY-MM)
    reserved_at  BIGINT NOT NULL,           -- unix seconds
    committed_at BIGINT NOT NULL
);
CREATE INDEX spend_journal_window ON spend_journal (project, pool, window_month, window_day);
CREATE INDEX spend_journal_time ON spend_journal (project, committed_at);
