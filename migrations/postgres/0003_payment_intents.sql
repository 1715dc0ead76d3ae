-- Write-ahead payment intents whose outcome is not (or not yet) a payment; a paid call's record
-- is its spend_journal row (same id). Every intent is durable before its header
-- leaves pag0 (pag0's own signatures and relayed agent signatures). State: 'sent' (written
-- ahead), then 'committed' (paid response; its spend_journal row has the same id), 'released'
-- (proved not paid), 'in_doubt' (the outcome is unknown: it keeps its budget hold until
-- valid_before + a margin) and 'unresolved' (in doubt past that: reported, never dropped).
CREATE TABLE payment_intents (
    id              TEXT PRIMARY KEY,       -- reservation id (= spend_journal.id once committed)
    project         TEXT NOT NULL,
    pool            TEXT NOT NULL,          -- budget pool; '' without a budget
    network         TEXT NOT NULL,          -- CAIP-2
    asset           TEXT NOT NULL,
    payer           TEXT NOT NULL,
    pay_to          TEXT NOT NULL,
    amount          NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
    nonce           TEXT NOT NULL,          -- EIP-3009 nonce (0x + 64 hex)
    valid_after     BIGINT NOT NULL,
    valid_before    BIGINT NOT NULL,
    url             TEXT NOT NULL,          -- without the query
    idempotency_key TEXT,                   -- the agent's Idempotency-Key, if it sent one
    source          TEXT NOT NULL,          -- 'wallet' (pag0 signed) or 'relay' (the agent did)
    window_day      TEXT NOT NULL,
    window_month    TEXT NOT NULL,
    created_at      BIGINT NOT NULL,        -- unix milliseconds
    state           TEXT NOT NULL,
    reason          TEXT,                   -- why released / in doubt
    tx_hash         TEXT,
    updated_at      BIGINT NOT NULL         -- unix milliseconds
);
-- Only the few open intents are indexed (most rows arrive committed and never touch it); a
-- query uses it by repeating this predicate word for word.
CREATE INDEX payment_intents_open ON payment_intents (valid_before)
    WHERE state IN ('sent', 'in_doubt', 'unresolved');
