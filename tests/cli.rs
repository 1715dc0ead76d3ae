//! The `pag0` binary: `-t`, `keys new`, `ca init` / `ca export`, and SIGHUP reload of a
//! running process.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn pag0() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pag0"))
}

#[test]
fn check_flag_exits_0_or_1_with_paths() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ok = pag0()
        .args(["-t", "-c", &format!("{root}/conf/pag0.yaml")])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = pag0()
        .args([
            "-t",
            "-c",
            &format!("{root}/tests/fixtures/config/bad/bad-routes.yaml"),
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("routes[2].upstream: invalid URL \"htp:/x\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[1].path_prefix"),
        "all problems at once: {stderr}"
    );
    let missing = pag0()
        .args(["-t", "-c", "/nonexistent/pag0.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn keys_new_prints_a_key_and_its_hash() {
    let out = pag0().args(["keys", "new"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("key:  ")).unwrap();
    let hash = text.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap();
    assert_eq!(hash, format!("sha256:{}", sha256_hex(key.as_bytes())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_process() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (free_port(), free_port());
    let d = dir.path().display();
    let write = |extra: &str| {
        let yaml = format!(
            "server:\n  listen: [\"127.0.0.1:{proxy}\"]\n  pid_file: {d}/p.pid\n  upgrade_sock: {d}/u.sock\n  grace_period_seconds: 0\nadmin:\n  listen: 127.0.0.1:{admin}\n  token: ${{PAG0_TEST_ADMIN_TOKEN:-{ADMIN_TOKEN}}}\n{}{extra}",
            demo_project()
        );
        std::fs::write(dir.path().join("pag0.yaml"), yaml).unwrap();
    };
    write("");
    let mut child = pag0()
        .args(["-c", &dir.path().join("pag0.yaml").display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://127.0.0.1:{proxy}{path}"))
            .header("x-pag0-api-key", DEMO_KEY)
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = get("/r/x").await {
            assert_eq!(resp.status().as_u16(), 404, "no route yet");
            break;
        }
        assert!(Instant::now() < deadline, "pag0 did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(&format!(
        "routes:\n  - name: r\n    path_prefix: /r\n    upstream: http://{}\n",
        up.addr
    ));
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get("/r/x").await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "route not applied after SIGHUP (still {status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_listeners_without_refusing_requests() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (free_port(), free_port());
    let d = dir.path().display();
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{proxy}\"]\n  pid_file: {d}/p.pid\n  upgrade_sock: {d}/u.sock\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\nadmin:\n  listen: 127.0.0.1:{admin}\n  token: ${{PAG0_TEST_ADMIN_TOKEN:-{ADMIN_TOKEN}}}\n{}routes:\n  - name: r\n    path_prefix: /r\n    upstream: http://{}\n",
        demo_project(),
        up.addr
    );
    let conf = dir.path().join("pag0.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let conf = conf.display().to_string();
    let spawn = |upgrade: bool| {
        let mut cmd = pag0();
        cmd.args(["-c", &conf])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if upgrade {
            cmd.arg("--upgrade");
        }
        cmd.spawn().unwrap()
    };
    let mut old = spawn(false);
    // A fresh connection per request: the listening socket itself must never refuse.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{proxy}/r/x");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(&url)
        .header("x-pag0-api-key", DEMO_KEY)
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "old pag0 did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match client
                    .get(&url)
                    .header("x-pag0-api-key", DEMO_KEY)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }
    });

    let mut new = spawn(true);
    tokio::time::sleep(Duration::from_millis(800)).await; // the new process waits on upgrade_sock
    assert!(
        Command::new("kill")
            .args(["-QUIT", &old.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || old.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exited.success(),
        "old process exits cleanly after handing over: {exited:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process keeps running"
    );
    // The new process serves, including the admin listener it bound next to the old one.
    let health = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{admin}/health"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let _ = Command::new("kill")
        .args(["-INT", &new.id().to_string()])
        .status();
    let _ = new.wait();
    // Pingora closes a connection that is still waiting for its first request when the old
    // process starts shutting down (pingora-proxy `handle_new_request` races `read_request`
    // against shutdown). A connection the old process accepted in that instant can therefore
    // be closed unanswered; at most one such close is tolerated. A refused connection or an
    // HTTP error would be pag0's failure and is not.
    let (closed, other): (Vec<_>, Vec<_>) = failed.iter().partition(|e| {
        !e.contains("ConnectionRefused")
            && !e.contains("Connection refused")
            && e.contains("SendRequest")
    });
    assert!(
        other.is_empty(),
        "{ok} ok, failures during the upgrade: {failed:?}"
    );
    assert!(
        closed.len() <= 1,
        "{ok} ok, connections closed during the upgrade: {closed:?}"
    );
    assert!(ok > 50, "load ran through the upgrade ({ok} requests)");
}

#[test]
fn wallets_from_keystore_key_file_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let created = pag0()
        .args([
            "wallet",
            "new",
            "--dir",
            &d.display().to_string(),
            "--name",
            "agent.json",
        ])
        .env("PAG0_WALLET_PASSWORD", "correct horse battery")
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let out = String::from_utf8(created.stdout).unwrap();
    let keystore_address = out
        .lines()
        .find_map(|l| l.strip_prefix("address:  "))
        .unwrap()
        .to_string();
    assert!(d.join("agent.json").exists());
    // Without a password nothing is created.
    let refused = pag0()
        .args(["wallet", "new", "--dir", &d.display().to_string()])
        .env_remove("PAG0_WALLET_PASSWORD")
        .output()
        .unwrap();
    assert!(!refused.status.success());

    // Anvil key #1 in a key file (owner-only), and the same key from the environment.
    let key_file = d.join("agent.key");
    std::fs::write(&key_file, format!("{}\n", common::paywall::WALLET_KEY)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let yaml = format!(
        "admin:\n  token: ${{PAG0_TEST_ADMIN_TOKEN:-{ADMIN_TOKEN}}}\nprojects:\n  - id: ks\n    keys: [\"{DEMO_HASH}\"]\n    wallet: {{ keystore: agent.json, password: \"${{PAG0_WALLET_PASSWORD}}\" }}\n  - id: kf\n    keys: [\"sha256:{}\"]\n    wallet: {{ key_file: agent.key }}\n  - id: env\n    keys: [\"sha256:{}\"]\n    wallet: {{ private_key: \"${{TEST_AGENT_KEY}}\" }}\n  - id: none\n    keys: [\"sha256:{}\"]\n",
        sha256_hex(b"k2"),
        sha256_hex(b"k3"),
        sha256_hex(b"k4")
    );
    let conf = d.join("pag0.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let conf = conf.display().to_string();
    let listed = pag0()
        .args(["wallet", "address", "-c", &conf])
        .env("PAG0_WALLET_PASSWORD", "correct horse battery")
        .env("TEST_AGENT_KEY", common::paywall::WALLET_KEY)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(text.contains(&format!("ks\t{keystore_address}")), "{text}");
    assert!(
        text.contains(&format!("kf\t{}", common::paywall::WALLET_ADDRESS)),
        "{text}"
    );
    assert!(
        text.contains(&format!("env\t{}", common::paywall::WALLET_ADDRESS)),
        "{text}"
    );
    assert!(text.contains("none\t(no wallet)"), "{text}");

    // Wrong password, and a key file others can read: refused, naming the YAML path, no secret shown.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bad = pag0()
        .args(["-t", "-c", &conf])
        .env("PAG0_WALLET_PASSWORD", "not-the-password-42")
        .env("TEST_AGENT_KEY", common::paywall::WALLET_KEY)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("projects[0].wallet.keystore") && stderr.contains("cannot decrypt"),
        "{stderr}"
    );
    assert!(
        stderr.contains("projects[1].wallet.key_file") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-password-42")
            && !stderr.contains(&common::paywall::WALLET_KEY[2..]),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrate_creates_the_journal_tables_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("pag0.yaml");
    let write = |database: &str| {
        std::fs::write(
            &conf,
            format!("admin:\n  token: ${{T:-a-long-enough-admin-token}}\ndatabase:\n{database}"),
        )
        .unwrap();
    };
    write("  url: sqlite:state/journal.db\n");
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let out = pag0().args(["migrate", "-c"]).arg(&conf).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = dir.path().join("state/journal.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "analytics_hourly",
            "analytics_requests",
            "audit_cursors",
            "audit_feedback",
            "audit_reconciliation",
            "audit_unknown_spend",
            "curation_endpoints",
            "idempotency_records",
            "pag0_instances",
            "payment_intents",
            "policies",
            "policy_versions",
            "relayed_nonces",
            "spend_corrections",
            "spend_journal"
        ]
    );

    let pg = common::services::TempDatabase::create().await;
    write(&format!("  url: {}\n", pg.url()));
    let out = pag0().args(["migrate", "-c"]).arg(&conf).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name IN ('spend_journal', 'policies', 'policy_versions', 'payment_intents', 'analytics_requests', 'analytics_hourly', 'idempotency_records', 'pag0_instances', 'relayed_nonces')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 9);
    pool.close().await;
    pg.drop_now().await;

    // Unreachable server: exit 1, and the password from the environment is never printed.
    write("  url: ${PAG0_TEST_DB_URL}\n  timeout_ms: 500\n");
    let port = free_port();
    let out = pag0()
        .args(["migrate", "-c"])
        .arg(&conf)
        .env(
            "PAG0_TEST_DB_URL",
            format!("postgres://pag0:s3cret-pw@127.0.0.1:{port}/pag0"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("migrate:"), "{all}");
    assert!(!all.contains("s3cret-pw"), "{all}");
}

#[test]
fn ca_init_creates_a_private_ca_once_and_export_prints_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca_arg = ca_dir.to_str().unwrap();
    let init = pag0()
        .args(["ca", "init", "--dir", ca_arg])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = String::from_utf8_lossy(&init.stdout);
    assert!(out.contains("CA created"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let key_mode = std::fs::metadata(ca_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let again = pag0()
        .args(["ca", "init", "--dir", ca_arg])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists"));

    let export = pag0()
        .args(["ca", "export", "--dir", ca_arg])
        .output()
        .unwrap();
    assert!(export.status.success());
    let pem = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    assert_eq!(String::from_utf8_lossy(&export.stdout), pem);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    // Without a CA, export fails with a hint; the default directory is next to the config.
    let conf = dir.path().join("pag0.yaml");
    let missing = pag0()
        .args(["ca", "export", "-c", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("pag0-ca") && stderr.contains("pag0 ca init"),
        "{stderr}"
    );

    // With a config, the CA lives where `connect.ca_dir` says (relative to the file).
    std::fs::write(
        &conf,
        "admin:\n  token: ${PAG0_CLI_TEST_TOKEN:-cli-test-token-0123456789}\nconnect:\n  ca_dir: custom-ca\n",
    )
    .unwrap();
    let init = pag0()
        .args(["ca", "init", "-c", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(dir.path().join("custom-ca/ca.crt").exists());
    assert!(!dir.path().join("pag0-ca").exists());
}
