-- Endpoint curation: the catalog of every endpoint pag0 has seen (the analytics endpoint key)
-- and what its x402 v2 offer says about it. Scores are computed in memory from the analytics
-- rollups, never stored.
CREATE TABLE curation_endpoints (
    endpoint      TEXT PRIMARY KEY,
    first_seen_ms BIGINT NOT NULL,      -- unix ms (the hour of its first recorded call)
    last_seen_ms  BIGINT NOT NULL,
    description   TEXT,                 -- the offer's resource.description
    mime_type     TEXT,                 -- the offer's resource.mimeType
    bazaar        TEXT,                 -- JSON: extensions.bazaar info and schema
    price         TEXT,                 -- the first offer's amount, base units
    asset         TEXT,
    network       TEXT,                 -- CAIP-2
    described_ms  BIGINT                -- when the offer was read (NULL: no offer seen)
);
CREATE INDEX curation_endpoints_last_seen ON curation_endpoints (last_seen_ms);
