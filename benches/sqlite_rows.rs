//! SQLite's own CPU per analytics row (`cargo bench --bench sqlite_rows [-- ROWS]`): pag0's
//! `analytics_requests` table as the migration creates it, and leaner variants, each filled
//! with the same pass-through row through a prepared statement in transactions of 1 000 rows,
//! with pag0's settings (WAL, `synchronous=NORMAL`, `mmap_size`). No sqlx in between: this is
//! the floor under what pag0's analytics writer spends per record, whatever the client.
//!
//! Prints CPU µs per row (user + system time of this process) for each variant, 3 rounds.

use rusqlite::{Connection, ToSql};

const MIGRATION: &str = include_str!("../migrations/sqlite/0004_analytics.sql");
const PROJECT_INDEX: &str = "CREATE INDEX analytics_requests_project_time ON analytics_requests (project, at_ms DESC, id DESC);";
const BATCH: usize = 1_000;

/// The columns after `id` in pag0's table, typed as there.
const COLUMNS: &str = "at_ms BIGINT NOT NULL, project TEXT NOT NULL, route TEXT NOT NULL,
    method TEXT NOT NULL, scheme TEXT NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL,
    path TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL, upstream_status INTEGER,
    attempts INTEGER NOT NULL, latency_us BIGINT NOT NULL, upstream_latency_us BIGINT,
    request_bytes BIGINT NOT NULL, response_bytes BIGINT NOT NULL, cache TEXT NOT NULL,
    payment TEXT NOT NULL, payment_reason TEXT, amount TEXT, symbol TEXT, asset TEXT,
    network TEXT, pay_to TEXT, saved TEXT, saved_symbol TEXT, error TEXT, tx_hash TEXT,
    x402_version INTEGER";

struct Variant {
    name: &'static str,
    schema: String,
    /// The id is an integer (else pag0's 32 hex digits).
    integer_id: bool,
    /// Strings as small integers into dictionary tables (17 columns).
    narrow: bool,
}

fn variants() -> Vec<Variant> {
    let integer = |index: &str| {
        format!("CREATE TABLE analytics_requests (id INTEGER PRIMARY KEY, {COLUMNS}); {index}")
    };
    vec![
        Variant {
            name: "pag0 (migration 0004)",
            schema: MIGRATION.to_string(),
            integer_id: false,
            narrow: false,
        },
        Variant {
            name: "without the project index",
            schema: MIGRATION.replace(PROJECT_INDEX, ""),
            integer_id: false,
            narrow: false,
        },
        Variant {
            name: "integer id, (project, at_ms) index",
            schema: integer(
                "CREATE INDEX analytics_requests_project_time ON analytics_requests (project, at_ms DESC);",
            ),
            integer_id: true,
            narrow: false,
        },
        Variant {
            name: "integer id, no index",
            schema: integer(""),
            integer_id: true,
            narrow: false,
        },
        Variant {
            name: "narrow (dictionary ids), index",
            schema: "CREATE TABLE analytics_requests (id INTEGER PRIMARY KEY, at_ms BIGINT NOT NULL,
                project INTEGER NOT NULL, endpoint INTEGER NOT NULL, method INTEGER NOT NULL,
                path TEXT NOT NULL, status INTEGER NOT NULL, upstream_status INTEGER,
                attempts INTEGER NOT NULL, latency_us INTEGER NOT NULL, upstream_latency_us INTEGER,
                request_bytes INTEGER NOT NULL, response_bytes INTEGER NOT NULL,
                cache INTEGER NOT NULL, payment INTEGER NOT NULL, amount TEXT, error INTEGER);
                CREATE INDEX analytics_requests_project_time ON analytics_requests (project, at_ms DESC);"
                .to_string(),
            integer_id: true,
            narrow: true,
        },
    ]
}

/// User + system CPU time of this process, in µs.
fn cpu_us() -> f64 {
    // SAFETY: an all-zero rusage is valid, and getrusage only fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Fills a new database with `rows` rows of `variant`; returns CPU µs per row.
fn run(dir: &std::path::Path, variant: &Variant, rows: usize) -> rusqlite::Result<f64> {
    let path = dir.join("rows.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut db = Connection::open(&path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    db.pragma_update(None, "mmap_size", 268_435_456)?;
    db.execute_batch(&variant.schema)?;
    let placeholders = if variant.narrow { 17 } else { 30 };
    let sql = format!(
        "INSERT INTO analytics_requests VALUES ({}) ON CONFLICT DO NOTHING",
        vec!["?"; placeholders].join(", ")
    );
    // pag0's writer gets its ids made: their text is not SQLite's work.
    let text_ids: Vec<String> = match variant.integer_id {
        true => Vec::new(),
        false => (0..rows)
            .map(|i| format!("{:016x}{:016x}", 0x5eed_u64, i))
            .collect(),
    };
    let base_ms: i64 = 1_780_000_000_000;
    let none: Option<String> = None;
    let started = cpu_us();
    let mut i = 0usize;
    while i < rows {
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(&sql)?;
            for _ in 0..BATCH.min(rows - i) {
                // 20 requests per ms, latencies spread over buckets.
                let at_ms = base_ms + i as i64 / 20;
                let latency = 400 + (i % 300) as i64;
                let upstream_latency = latency - 100;
                let integer_id = i as i64;
                let id: &dyn ToSql = match variant.integer_id {
                    true => &integer_id,
                    false => &text_ids[i],
                };
                let (one, zero, status, bytes, port) = (1, 0, 200, 64, 18_080);
                if variant.narrow {
                    // The last two (amount, error) stay NULL.
                    let mut values: [&dyn ToSql; 17] = [&none; 17];
                    values[..15].copy_from_slice(&[
                        id,
                        &at_ms,
                        &one,
                        &one,
                        &one,
                        &"/",
                        &status,
                        &status,
                        &one,
                        &latency,
                        &upstream_latency,
                        &zero,
                        &bytes,
                        &zero,
                        &zero,
                    ]);
                    insert.execute(&values[..])?;
                } else {
                    // From payment_reason on, a pass-through row is NULL.
                    let mut values: [&dyn ToSql; 30] = [&none; 30];
                    values[..19].copy_from_slice(&[
                        id,
                        &at_ms,
                        &"demo",
                        &"bench",
                        &"GET",
                        &"http",
                        &"127.0.0.1",
                        &port,
                        &"/",
                        &"127.0.0.1:18080/*",
                        &status,
                        &status,
                        &one,
                        &latency,
                        &upstream_latency,
                        &zero,
                        &bytes,
                        &"none",
                        &"none",
                    ]);
                    insert.execute(&values[..])?;
                }
                i += 1;
            }
        }
        tx.commit()?;
    }
    Ok((cpu_us() - started) / rows as f64)
}

fn main() -> rusqlite::Result<()> {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!("SQLite CPU per analytics row, {rows} rows per run, {BATCH} per transaction");
    let variants = variants();
    let mut results = vec![Vec::new(); variants.len()];
    for _ in 0..3 {
        for (v, out) in variants.iter().zip(results.iter_mut()) {
            out.push(run(dir.path(), v, rows)?);
        }
    }
    for (v, r) in variants.iter().zip(&results) {
        let rounds: Vec<String> = r.iter().map(|us| format!("{us:.2}")).collect();
        println!("  {:<38} {} µs/row", v.name, rounds.join(" "));
    }
    Ok(())
}
