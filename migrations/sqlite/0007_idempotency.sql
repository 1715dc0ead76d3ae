-- Idempotency records shared by every pag0 process on this database (issue 32): an
-- Idempotency-Key's claim, the payment made for it and its stored response survive restarts and
-- crashes. State: 'running' (claimed, nothing paid yet), 'paying' (a payment header may have left:
-- `payment` is its intent id), 'in_doubt' (the request ended, the payment's outcome unknown) and
-- 'paid' (`response` is the replayed answer; NULL when it was too large to keep).
CREATE TABLE idempotency_records (
    project     TEXT NOT NULL,
    idem_key    TEXT NOT NULL,          -- the agent's Idempotency-Key
    fingerprint TEXT NOT NULL,          -- hex SHA-256 of method, URL and body hash
    owner       TEXT NOT NULL,          -- the pag0 process (pag0_instances.id) that claimed it
    state       TEXT NOT NULL,
    payment     TEXT,                   -- payment_intents.id (= spend_journal.id once committed)
    nonce       TEXT,                   -- the payment's authorization nonce
    response    BLOB,                   -- status, headers and body (see src/idempotency)
    expires_at  BIGINT NOT NULL,        -- unix milliseconds
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (project, idem_key)
)
WITHOUT ROWID;
CREATE INDEX idempotency_records_expiry ON idempotency_records (expires_at);
-- Live pag0 processes: each writes its row every 2 s; a claim whose owner has not been seen
-- for 10 s belongs to a process that died.
CREATE TABLE pag0_instances (
    id      TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL             -- unix milliseconds
)
WITHOUT ROWID;
-- Agent-signed authorizations already relayed (relay mode's replay guard), until they expire.
CREATE TABLE relayed_nonces (
    payer      TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,         -- unix seconds
    PRIMARY KEY (payer, nonce)
)
WITHOUT ROWID;
-- A record lost with Redis is found again from the payment made for its key.
CREATE INDEX payment_intents_key ON payment_intents (project, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
