//! The shipped Grafana dashboard (conf/grafana) and Prometheus config (conf/prometheus) only
//! use metric names a live pag0 exports, and the compose file provisions them.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// Every `expr` of every panel.
fn queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

/// The `pag0_*` names in a PromQL query.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("pag0_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_one_pag0_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("conf/grafana/pag0-dashboard.json")).unwrap(),
    )
    .unwrap();
    let pag0 = Pag0::start(&demo_project());
    let (status, text) = pag0.admin(reqwest::Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    // Every family is listed (by its TYPE line) before its first sample.
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            exported.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for q in &queries {
        for name in metric_names(q) {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which pag0 does not export ({q})"
            );
            used.insert(name);
        }
    }
    // What the issue asks the dashboard to show is there.
    for wanted in [
        "pag0_requests_total",
        "pag0_request_duration_seconds_bucket",
        "pag0_payments_total",
        "pag0_budget_operations_total",
        "pag0_cache_requests_total",
        "pag0_signatures_total",
        "pag0_tunnels_total",
        "pag0_cache_tier_errors_total",
        "pag0_analytics_queue_depth",
        "pag0_audit_backlog",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
}

#[test]
fn compose_provisions_prometheus_and_grafana_with_the_shipped_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .unwrap();
    for service in ["prometheus", "grafana"] {
        let s = &compose["services"][service];
        assert_eq!(s["profiles"][0], "observability", "{service}");
        for volume in s["volumes"].as_sequence().unwrap() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if let Some(path) = source.strip_prefix("./") {
                assert!(root.join(path).exists(), "{service} mounts missing {path}");
            }
        }
    }
    let prometheus: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("conf/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(job["authorization"]["type"], "Bearer");
    assert_eq!(job["static_configs"][0]["targets"][0], "pag0:9402");
}
