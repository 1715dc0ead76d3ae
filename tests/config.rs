//! Every shipped config validates; every bad fixture fails with the expected YAML paths.
//!
//! A bad fixture lists what it must report in `# expect: <text>` lines; each text must appear
//! in the error output (one line per problem, `path: message`).

use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Env lookup for tests: every referenced variable is "set": wallet keys to a public dev key,
/// everything else to a long dummy value.
fn any_env(name: &str) -> Option<String> {
    Some(if name.ends_with("_WALLET_KEY") {
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".to_string()
    } else if name.ends_with("_AUDIT_KEY") {
        "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a".to_string()
    } else if name.ends_with("_RPC") {
        "https://rpc.example.com".to_string()
    } else if name.ends_with("DATABASE_URL") {
        "postgres://pag0:pw@db:5432/pag0".to_string()
    } else if name.ends_with("REDIS_URL") {
        "redis://redis:6379".to_string()
    } else {
        "dummy-secret-value-for-validation".to_string()
    })
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["conf", "conf/examples"] {
        for file in yaml_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            if let Err(e) = pag0::config::parse(&text, file.parent().unwrap(), any_env) {
                panic!("{} is invalid:\n{e}", file.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "found only {checked} config files");
}

#[test]
fn bad_fixtures_report_every_expected_path() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/bad");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 5,
        "expected bad fixtures in {}",
        dir.display()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no '# expect:' line",
            file.display()
        );
        // Wallet keys get a valid dev key, except PAG0_TEST_BAD_KEY, which a fixture expects to fail.
        let env = |name: &str| match name {
            "UNSET_FOR_TEST" => None,
            "PAG0_TEST_BAD_KEY" => Some("dummy-secret-value-for-validation".to_string()),
            other => any_env(other),
        };
        let errors = match pag0::config::parse(&text, &dir, env) {
            Ok(_) => panic!("{} validated but must fail", file.display()),
            Err(e) => e.to_string(),
        };
        for want in &expected {
            assert!(
                errors.contains(want),
                "{}: expected {want:?} in:\n{errors}",
                file.display()
            );
        }
        assert_eq!(
            errors.lines().count(),
            expected.len(),
            "{}: unexpected extra problems:\n{errors}",
            file.display()
        );
    }
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let text = "admin:\n  token: ${PAG0_X_TOKEN}\nprojects:\n  - id: demo\n    keys: [\"sha256:79f8ca837c673888f582d0c8204f8b6ab31c8b0a7930512e94a4bd0a518bf83a\"]\n";
    let config = pag0::config::parse(text, Path::new("."), |_| {
        Some("super-secret-admin-token".into())
    })
    .unwrap();
    assert_eq!(config.admin.token.expose(), "super-secret-admin-token");
    let debug = format!("{config:?}");
    assert!(!debug.contains("super-secret-admin-token"), "{debug}");
    assert!(debug.contains("${PAG0_X_TOKEN}"));
}

#[test]
fn defaults_are_the_named_constants() {
    use pag0::config::file::*;
    let text = "admin:\n  token: ${T}\n";
    let c = pag0::config::parse(text, Path::new("."), any_env).unwrap();
    assert_eq!(c.server.listen, vec![DEFAULT_PROXY_LISTEN.parse().unwrap()]);
    assert_eq!(c.admin.listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
    assert_eq!(c.server.threads, DEFAULT_THREADS);
    assert_eq!(
        c.upstream.read_timeout.as_millis() as u64,
        DEFAULT_READ_TIMEOUT_MS
    );
    let kinds: Vec<_> = c.stages.iter().map(|s| s.kind()).collect();
    assert_eq!(kinds, ["auth", "ssrf_guard", "rate_limit"]);
    assert_eq!(c.connect.mode, pag0::config::ConnectMode::Intercept);
    assert_eq!(DEFAULT_CONNECT_MODE, "intercept");
    assert_eq!(c.connect.ca_dir, Path::new(".").join(DEFAULT_CA_DIR));
    assert_eq!(
        c.connect.handshake_timeout.as_millis() as u64,
        DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS
    );
    assert_eq!(c.connect.leaf_cache_size, DEFAULT_LEAF_CACHE_SIZE);
    assert_eq!(c.connect.ports.as_deref(), Some(DEFAULT_CONNECT_PORTS));
    assert_eq!(
        c.connect.idle_timeout.as_secs(),
        DEFAULT_TUNNEL_IDLE_TIMEOUT_SECONDS
    );
    assert!(c.connect.tunnel_only.is_empty() && c.upstream.trust.is_empty());
}
