//! The admin listener: token, /health JSON, /metrics names (the README's metric list).

mod common;

use common::*;
use serde_json::Value;

/// Every metric the README documents.
const DOCUMENTED_METRICS: &[&str] = &[
    "pag0_requests_total",
    "pag0_request_duration_seconds",
    "pag0_stage_rejections_total",
    "pag0_upstream_errors_total",
    "pag0_payments_total",
    "pag0_signatures_total",
    "pag0_payment_intents_total",
    "pag0_payments_in_doubt",
    "pag0_policy_violations_total",
    "pag0_budget_operations_total",
    "pag0_approvals_total",
    "pag0_anomaly_alerts_total",
    "pag0_cache_requests_total",
    "pag0_cache_saved_base_units_total",
    "pag0_cache_tier_errors_total",
    "pag0_tunnels_total",
    "pag0_tls_leaves_minted_total",
    "pag0_header_too_large_total",
    "pag0_connections_refused_total",
    "pag0_connections_open",
    "pag0_header_timeouts_total",
    "pag0_rate_limit_fallbacks_total",
    "pag0_analytics_records_written_total",
    "pag0_analytics_records_spooled_total",
    "pag0_analytics_records_replayed_total",
    "pag0_analytics_records_dropped_total",
    "pag0_analytics_records_rejected_total",
    "pag0_analytics_queue_depth",
    "pag0_analytics_queue_depth_peak",
    "pag0_analytics_batch_seconds",
    "pag0_route_choice_total",
    "pag0_route_breaker_open",
    "pag0_audit_feedback_total",
    "pag0_audit_backlog",
    "pag0_audit_rpc_errors_total",
    "pag0_reconcile_payments",
    "pag0_unknown_spend_total",
    "pag0_config_reloads_total",
    "pag0_config_generation",
    "pag0_build_info",
];

/// The ones the scrape in `metrics_expose_documented_names_with_labels` produces.
const PROXY_METRICS: &[&str] = &[
    "pag0_requests_total",
    "pag0_request_duration_seconds",
    "pag0_stage_rejections_total",
    "pag0_upstream_errors_total",
    "pag0_config_reloads_total",
    "pag0_config_generation",
    "pag0_build_info",
];

/// The README's metric table lists exactly these names (each is asserted on a live
/// `/metrics` scrape by the test that exercises it: here, tests/payment.rs, tests/budget.rs).
#[test]
fn readme_documents_every_metric() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("## Metrics")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let documented: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert_eq!(documented, DOCUMENTED_METRICS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requires_the_token() {
    let pag0 = Pag0::start(&demo_project());
    for path in ["/health", "/metrics", "/reload"] {
        for token in [None, Some("wrong-token-wrong-token")] {
            let mut req = reqwest::Client::new().get(format!("http://{}{path}", pag0.admin));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{path} {token:?}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        }
    }
    let (status, body) = pag0.admin(reqwest::Method::GET, "/nope").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_status_and_dependencies() {
    let pag0 = Pag0::start(&demo_project());
    let (status, body) = pag0.admin(reqwest::Method::GET, "/health").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["dependencies"]["config"]["status"], "up");
    assert_eq!(health["dependencies"]["config"]["generation"], 1);
    assert_eq!(
        health["stages"],
        serde_json::json!(["auth", "ssrf_guard", "rate_limit"])
    );
    assert_eq!(health["dependencies"]["database"]["status"], "up");
    assert_eq!(health["dependencies"]["database"]["kind"], "sqlite");
    assert_eq!(health["dependencies"]["database"]["required"], false);
    let ca = &health["dependencies"]["local_ca"];
    assert_eq!(
        (&ca["status"], &ca["required"]),
        (&"up".into(), &true.into())
    );
    assert!(
        ca["certificate"]
            .as_str()
            .is_some_and(|p| p.ends_with("pag0-ca/ca.crt")),
        "{ca}"
    );
    assert!(
        health["dependencies"].get("redis").is_none(),
        "no Redis configured"
    );
    assert!(!body.contains(ADMIN_TOKEN), "no secret in health output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_documented_names_with_labels() {
    let up = Upstream::start().await;
    let pag0 = Pag0::start(&format!(
        "stages:\n  - kind: auth\n  - kind: ssrf_guard\n    allow: [\"127.0.0.1\"]\n{}",
        demo_project()
    ));
    let client = pag0.client("demo", DEMO_KEY);
    assert_eq!(
        client
            .get(up.url("/m"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        pag0.client("demo", "bad")
            .get(up.url("/m"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        407
    );
    let _ = client
        .get(format!("http://127.0.0.1:{}/", free_port()))
        .send()
        .await
        .unwrap();
    let (_, _) = pag0.admin(reqwest::Method::POST, "/reload").await;

    let (status, text) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    for name in PROXY_METRICS {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
    for line in [
        r#"pag0_requests_total{project="demo",route="forward",status_class="2xx"} 1"#,
        r#"pag0_requests_total{project="-",route="forward",status_class="4xx"} 1"#,
        r#"pag0_requests_total{project="demo",route="forward",status_class="5xx"} 1"#,
        r#"pag0_request_duration_seconds_count{project="demo",route="forward",status_class="2xx"} 1"#,
        r#"pag0_stage_rejections_total{code="PROXY_AUTH_REQUIRED",stage="auth"} 1"#,
        r#"pag0_upstream_errors_total{code="UPSTREAM_CONNECT_FAILED",route="forward"} 1"#,
        r#"pag0_config_reloads_total{result="ok"} 1"#,
        "pag0_config_generation 2",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        !text.contains(DEMO_KEY) && !text.contains(ADMIN_TOKEN),
        "no secret in metrics"
    );
}
