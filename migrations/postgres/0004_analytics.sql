-- Request analytics: one row per request pag0 answered, and hourly rollups kept incrementally.
-- Rows are keyed by (at_ms, id): replays of the spool never duplicate a row. Raw rows are
-- partitioned by UTC day (pag0 creates the daily partitions ahead and drops expired ones with
-- DROP TABLE); the default partition takes anything outside them.
-- Latency histogram buckets h00..h25 (upper bounds in microseconds, last one unbounded):
-- 100 250 500 1000 2000 3000 5000 7500 10000 15000 20000 30000 50000 75000 100000 150000
-- 200000 300000 500000 750000 1000000 2000000 5000000 10000000 30000000 +inf.
CREATE TABLE analytics_requests (
    id                  TEXT NOT NULL,      -- instance id + sequence (idempotent replays)
    at_ms               BIGINT NOT NULL,    -- unix milliseconds, when the request arrived
    project             TEXT NOT NULL,      -- '' when pag0 answered before knowing the project
    route               TEXT NOT NULL,      -- route name, 'forward', 'connect' ('' without a target)
    method              TEXT NOT NULL,
    scheme              TEXT NOT NULL,      -- 'http' or 'https'
    host                TEXT NOT NULL,
    port                INTEGER NOT NULL,
    path                TEXT NOT NULL,      -- never the query string (it can hold secrets)
    endpoint            TEXT NOT NULL,      -- host[:port] + path; a route's: upstream host + base path + '*'
    status              INTEGER NOT NULL,   -- what the agent got (0: the agent left first)
    upstream_status     INTEGER,            -- the upstream's last answer (NULL: none)
    attempts            INTEGER NOT NULL,   -- requests sent upstream (a paid replay counts)
    latency_us          BIGINT NOT NULL,
    upstream_latency_us BIGINT,             -- sum over attempts, request sent to header received
    request_bytes       BIGINT NOT NULL,    -- body bytes read from the agent
    response_bytes      BIGINT NOT NULL,    -- body bytes sent to the agent
    cache               TEXT NOT NULL,      -- HIT, MISS, BYPASS, STALE or none
    payment             TEXT NOT NULL,      -- paid, declined, rejected, in-doubt, relay, off, body-too-large, none
    payment_reason      TEXT,               -- why declined / rejected
    amount              NUMERIC(78, 0),           -- base units, when paid (or relayed)
    symbol              TEXT,
    asset               TEXT,               -- token contract
    network             TEXT,               -- CAIP-2
    pay_to              TEXT,
    saved               NUMERIC(78, 0),           -- price of a paid response served from the cache
    saved_symbol        TEXT,
    error               TEXT,               -- pag0's error code
    tx_hash             TEXT,
    x402_version        INTEGER,
    PRIMARY KEY (at_ms, id)
) PARTITION BY RANGE (at_ms);
CREATE TABLE analytics_requests_default PARTITION OF analytics_requests DEFAULT;
CREATE INDEX analytics_requests_project_time ON analytics_requests (project, at_ms DESC, id DESC);

CREATE TABLE analytics_hourly (
    hour_ms                 BIGINT NOT NULL,    -- start of the UTC hour, unix milliseconds
    project                 TEXT NOT NULL,
    endpoint                TEXT NOT NULL,
    status_class            TEXT NOT NULL,      -- 1xx..5xx, or 'none' (the agent left first)
    cache                   TEXT NOT NULL,
    payment                 TEXT NOT NULL,
    symbol                  TEXT NOT NULL,      -- asset of spend / saved ('' when neither)
    error                   TEXT NOT NULL,      -- pag0's error code ('' when none)
    calls                   BIGINT NOT NULL,
    latency_sum_us          BIGINT NOT NULL,
    upstream_latency_sum_us BIGINT NOT NULL,
    upstream_calls          BIGINT NOT NULL,    -- calls with an upstream latency
    request_bytes           BIGINT NOT NULL,
    response_bytes          BIGINT NOT NULL,
    spend                   NUMERIC(78, 0) NOT NULL,  -- base units paid
    saved                   NUMERIC(78, 0) NOT NULL,  -- base units not paid thanks to the cache
    h00 BIGINT NOT NULL DEFAULT 0,
    h01 BIGINT NOT NULL DEFAULT 0,
    h02 BIGINT NOT NULL DEFAULT 0,
    h03 BIGINT NOT NULL DEFAULT 0,
    h04 BIGINT NOT NULL DEFAULT 0,
    h05 BIGINT NOT NULL DEFAULT 0,
    h06 BIGINT NOT NULL DEFAULT 0,
    h07 BIGINT NOT NULL DEFAULT 0,
    h08 BIGINT NOT NULL DEFAULT 0,
    h09 BIGINT NOT NULL DEFAULT 0,
    h10 BIGINT NOT NULL DEFAULT 0,
    h11 BIGINT NOT NULL DEFAULT 0,
    h12 BIGINT NOT NULL DEFAULT 0,
    h13 BIGINT NOT NULL DEFAULT 0,
    h14 BIGINT NOT NULL DEFAULT 0,
    h15 BIGINT NOT NULL DEFAULT 0,
    h16 BIGINT NOT NULL DEFAULT 0,
    h17 BIGINT NOT NULL DEFAULT 0,
    h18 BIGINT NOT NULL DEFAULT 0,
    h19 BIGINT NOT NULL DEFAULT 0,
    h20 BIGINT NOT NULL DEFAULT 0,
    h21 BIGINT NOT NULL DEFAULT 0,
    h22 BIGINT NOT NULL DEFAULT 0,
    h23 BIGINT NOT NULL DEFAULT 0,
    h24 BIGINT NOT NULL DEFAULT 0,
    h25 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_ms, project, endpoint, status_class, cache, payment, symbol, error)
);
CREATE INDEX analytics_hourly_project ON analytics_hourly (project, hour_ms);
