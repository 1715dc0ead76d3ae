-- On-chain audit: the outbox of ERC-8004 feedback transactions, the reconciliation of journaled
-- payments against the chain, and wallet transfers pag0 has no record of (unknown spend).

-- One row per feedback, written before anything is sent. The transaction is signed and stored
-- (nonce, hash, raw bytes) before it is broadcast, so a restart finds it instead of sending a
-- second one. State: pending -> sent -> confirmed, or reverted (terminal, with the reason).
CREATE TABLE audit_feedback (
    id              TEXT PRIMARY KEY,       -- 'p-<journal id>' or 'h-<hour ms>-<tag>-<endpoint digest>'
    created_ms      BIGINT NOT NULL,
    agent_id        TEXT NOT NULL,          -- ERC-8004 agent id (decimal uint256)
    endpoint        TEXT NOT NULL,
    tag1            TEXT NOT NULL,
    tag2            TEXT NOT NULL,
    value           TEXT NOT NULL,          -- int128, decimal
    value_decimals  BIGINT NOT NULL,
    record          TEXT NOT NULL,          -- canonical JSON served at feedbackURI, byte for byte
    feedback_hash   TEXT NOT NULL,          -- keccak-256 of record
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    nonce           BIGINT,                 -- the signer's transaction nonce once signed
    tx_hash         TEXT,
    raw_tx          TEXT,                   -- the signed transaction, rebroadcast if the node lost it
    sent_ms         BIGINT,                 -- when tx_hash was signed (a stuck one is replaced)
    earlier_tx_hashes TEXT,                 -- replaced transactions of the same nonce (space separated)
    block_number    BIGINT,
    error           TEXT,                   -- the revert reason, or the last RPC error
    updated_ms      BIGINT NOT NULL
);
CREATE INDEX audit_feedback_open ON audit_feedback (created_ms) WHERE state IN ('pending', 'sent');

-- Where the planners and the reconciler have got to (journal time, hour, block).
CREATE TABLE audit_cursors (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- What the chain says about each journaled payment.
CREATE TABLE audit_reconciliation (
    payment_id   TEXT PRIMARY KEY,          -- spend_journal.id
    project      TEXT NOT NULL,
    network      TEXT NOT NULL,
    payer        TEXT NOT NULL,
    pay_to       TEXT NOT NULL,
    amount       NUMERIC(78,0) NOT NULL,
    nonce        TEXT NOT NULL,
    tx_hash      TEXT,
    state        TEXT NOT NULL,             -- settled, not_settled, mismatch, pending
    detail       TEXT,
    block_number BIGINT,
    refunded     BIGINT NOT NULL DEFAULT 0, -- 1: the budget was given back (budgets.release_unsettled)
    checked_ms   BIGINT NOT NULL
);
CREATE INDEX audit_reconciliation_state ON audit_reconciliation (state, checked_ms);

-- Outgoing token transfers of a payer wallet that match no journaled payment.
CREATE TABLE audit_unknown_spend (
    network      TEXT NOT NULL,
    tx_hash      TEXT NOT NULL,
    log_index    BIGINT NOT NULL,
    token        TEXT NOT NULL,
    from_address TEXT NOT NULL,
    to_address   TEXT NOT NULL,
    amount       NUMERIC(78,0) NOT NULL,
    block_number BIGINT NOT NULL,
    found_ms     BIGINT NOT NULL,
    alerted      BIGINT NOT NULL DEFAULT 0, -- 1: the anomaly webhook has it (retried until then)
    PRIMARY KEY (network, tx_hash, log_index)
);

-- Corrections of the spend journal: a committed payment that reconciliation proved never
-- settled gives its amount back to its budget windows (budgets.release_unsettled). The journal
-- row stays; budgets are rebuilt from the journal minus these.
CREATE TABLE spend_corrections (
    id           TEXT PRIMARY KEY,          -- the spend_journal.id it corrects
    project      TEXT NOT NULL,
    pool         TEXT NOT NULL,
    window_day   TEXT NOT NULL,
    window_month TEXT NOT NULL,
    amount       NUMERIC(78,0) NOT NULL,            -- base units given back
    reason       TEXT NOT NULL,
    created_at   BIGINT NOT NULL            -- unix seconds
);
CREATE INDEX spend_corrections_window ON spend_corrections (project, pool, window_month);

-- The authorization's validBefore: after it (by the chain's clock) an unused authorization can
-- never settle. NULL in rows written by older versions.
ALTER TABLE spend_journal ADD COLUMN valid_before BIGINT;

-- Per-payment feedback reads the journal by time.
CREATE INDEX spend_journal_committed ON spend_journal (committed_at);
