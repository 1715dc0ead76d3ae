-- Spend policies managed through the admin API (they override a project's YAML policy while
-- active). `document` is JSON with the same shape as `projects[].policy` in the YAML.
CREATE TABLE policies (
    project    TEXT PRIMARY KEY,
    version    BIGINT NOT NULL,
    active     BOOLEAN NOT NULL,
    document   TEXT NOT NULL,
    updated_at BIGINT NOT NULL              -- unix seconds
);

-- Every version ever written, deactivations included.
CREATE TABLE policy_versions (
    project    TEXT NOT NULL,
    version    BIGINT NOT NULL,
    active     BOOLEAN NOT NULL,
    document   TEXT NOT NULL,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (project, version)
);
