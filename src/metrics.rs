//! Prometheus metrics: defined and registered in one place, served on the admin listener.
//!
//! Metric names are a public contract (listed in the README and checked by a test).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets (seconds): sub-millisecond proxying up to slow paid APIs.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All of pag0's metrics, owned by one registry (so several instances can share a process).
pub struct Metrics {
    registry: Registry,
    /// Every registered family (name, help, type): listed in `/metrics` before its first
    /// sample too, so dashboards and scrapers see every name from the start.
    families: Vec<(String, String, &'static str)>,
    /// `pag0_requests_total{project,route,status_class}`
    pub requests: IntCounterVec,
    /// `pag0_request_duration_seconds{project,route,status_class}`
    pub request_duration: HistogramVec,
    /// `pag0_stage_rejections_total{stage,code}`: requests a stage answered itself.
    pub stage_rejections: IntCounterVec,
    /// `pag0_upstream_errors_total{route,code}`: failures talking to upstreams.
    pub upstream_errors: IntCounterVec,
    /// `pag0_route_choice_total{route,candidate,reason}`: where smart routes sent requests
    /// (`best`, `explore`, `failover`).
    pub route_choices: IntCounterVec,
    /// `pag0_route_breaker_open{route,candidate}`: 1 while a candidate's breaker is open.
    pub route_breakers: IntGaugeVec,
    /// `pag0_payments_total{project,outcome}`: 402s paid (`signed`), `declined`, or whose paid
    /// attempt was refused again (`rejected`).
    pub payments: IntCounterVec,
    /// `pag0_signatures_total{project,source}`: payment signatures pag0 made, taken from the
    /// pre-signed `stock` or signed `fresh` for the call.
    pub signatures: IntCounterVec,
    /// `pag0_payment_intents_total{project,state}`: payment intents written ahead (`sent`) and
    /// their outcomes (`committed`, `released`, `in_doubt`, `unresolved`).
    pub payment_intents: IntCounterVec,
    /// `pag0_payments_in_doubt{project}`: payments sent whose outcome is unknown (in doubt,
    /// still holding budget) right now.
    pub payments_in_doubt: IntGaugeVec,
    /// `pag0_policy_violations_total{project,code,enforced}`: policy decisions that refused
    /// (`enforced="false"`: dry run, the request went on).
    pub policy_violations: IntCounterVec,
    /// `pag0_budget_operations_total{project,op}`: ledger `reserved`, `denied`, `committed`,
    /// `released`, `unavailable` (ledger down), `journal_failed` (journal and spool failed).
    pub budget_operations: IntCounterVec,
    /// `pag0_approvals_total{project,result}`: approval webhook outcomes (`approved`,
    /// `denied`, `timeout`, `error`).
    pub approvals: IntCounterVec,
    /// `pag0_anomaly_alerts_total{project,result}`: spend anomaly alerts (`sent`, `failed`).
    pub anomaly_alerts: IntCounterVec,
    /// `pag0_cache_requests_total{project,result,tier}`: `hit`/`stale` (tier `memory` or
    /// `redis`), `miss`, `bypass` (tier `none`).
    pub cache_requests: IntCounterVec,
    /// `pag0_cache_saved_base_units_total{project,asset}`: payments not made thanks to hits.
    pub cache_saved: IntCounterVec,
    /// `pag0_cache_tier_errors_total{tier,op,kind}`: failed (`error`) or skipped (`skipped`,
    /// tier cooling down or too busy) cache tier calls; the request went on without them.
    pub cache_tier_errors: IntCounterVec,
    /// `pag0_tunnels_total{kind,outcome}`: CONNECT tunnels after the agent got its `200`:
    /// kind `intercept` or `blind`; outcome `opened` (TLS done, or relay started),
    /// `sni_refused` (missing or mismatched SNI), `handshake_failed`.
    pub tunnels: IntCounterVec,
    /// `pag0_tls_leaves_minted_total`: leaf certificates minted by the local CA.
    pub leaves_minted: prometheus::IntCounter,
    /// `pag0_rate_limit_fallbacks_total`: rate-limit decisions made in-process because the
    /// shared Redis buckets were unreachable.
    pub rate_limit_fallbacks: prometheus::IntCounter,
    /// `pag0_header_timeouts_total`: downstream connections closed because a request header
    /// was not complete `server.header_timeout_ms` after its first byte (slowloris).
    pub header_timeouts: prometheus::IntCounter,
    /// `pag0_connections_refused_total{listener}`: connections closed at once because their
    /// listener (`proxy`, `admin`) held its cap (`*.max_connections`).
    pub connections_refused: IntCounterVec,
    /// `pag0_connections_open{listener}`: connections held, set when `/metrics` is read.
    pub connections_open: IntGaugeVec,
    /// `pag0_header_too_large_total`: requests answered 431 because their header was over
    /// `server.max_header_bytes` (or the memory all unfinished headers may hold).
    pub headers_too_large: prometheus::IntCounter,
    /// The analytics writer's counters (`pag0_analytics_*`).
    pub analytics: crate::analytics::Counters,
    /// The on-chain audit's counters (`pag0_audit_*`).
    pub audit: crate::audit::Counters,
    /// Reconciliation against the chain (`pag0_reconcile_payments`, `pag0_unknown_spend_total`).
    pub reconcile: crate::audit::reconcile::Counters,
    /// `pag0_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `pag0_config_generation`: increments on every applied config.
    pub config_generation: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "pag0_requests_total",
                "Requests handled, by project, route and response status class",
            ),
            &["project", "route", "status_class"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "pag0_request_duration_seconds",
                "Time from request start to end of logging",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["project", "route", "status_class"],
        )
        .expect("valid metric");
        let stage_rejections = IntCounterVec::new(
            Opts::new(
                "pag0_stage_rejections_total",
                "Requests answered by a pipeline stage instead of the upstream",
            ),
            &["stage", "code"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "pag0_upstream_errors_total",
                "Upstream failures (DNS, connect, timeout, protocol)",
            ),
            &["route", "code"],
        )
        .expect("valid metric");
        let route_choices = IntCounterVec::new(
            Opts::new(
                "pag0_route_choice_total",
                "Requests of smart routes by the candidate chosen and why",
            ),
            &["route", "candidate", "reason"],
        )
        .expect("valid metric");
        let route_breakers = IntGaugeVec::new(
            Opts::new(
                "pag0_route_breaker_open",
                "1 while a smart route candidate's circuit breaker is open",
            ),
            &["route", "candidate"],
        )
        .expect("valid metric");
        let payments = IntCounterVec::new(
            Opts::new(
                "pag0_payments_total",
                "x402 payment decisions by project and outcome",
            ),
            &["project", "outcome"],
        )
        .expect("valid metric");
        let signatures = IntCounterVec::new(
            Opts::new(
                "pag0_signatures_total",
                "Payment signatures by project and source (stock: pre-signed, fresh)",
            ),
            &["project", "source"],
        )
        .expect("valid metric");
        let payment_intents = IntCounterVec::new(
            Opts::new(
                "pag0_payment_intents_total",
                "Payment intents written ahead of sending (sent) and their outcomes",
            ),
            &["project", "state"],
        )
        .expect("valid metric");
        let payments_in_doubt = IntGaugeVec::new(
            Opts::new(
                "pag0_payments_in_doubt",
                "Payments sent whose outcome is unknown (holding budget until they expire)",
            ),
            &["project"],
        )
        .expect("valid metric");
        let policy_violations = IntCounterVec::new(
            Opts::new(
                "pag0_policy_violations_total",
                "Spend-policy refusals by project and code (enforced=false: dry run)",
            ),
            &["project", "code", "enforced"],
        )
        .expect("valid metric");
        let budget_operations = IntCounterVec::new(
            Opts::new(
                "pag0_budget_operations_total",
                "Budget ledger operations by project and outcome",
            ),
            &["project", "op"],
        )
        .expect("valid metric");
        let approvals = IntCounterVec::new(
            Opts::new(
                "pag0_approvals_total",
                "Approval webhook outcomes by project",
            ),
            &["project", "result"],
        )
        .expect("valid metric");
        let anomaly_alerts = IntCounterVec::new(
            Opts::new(
                "pag0_anomaly_alerts_total",
                "Spend anomaly alerts by project and delivery result",
            ),
            &["project", "result"],
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "pag0_cache_requests_total",
                "Response cache outcomes by project, result and tier",
            ),
            &["project", "result", "tier"],
        )
        .expect("valid metric");
        let cache_saved = IntCounterVec::new(
            Opts::new(
                "pag0_cache_saved_base_units_total",
                "Payments not made because the response came from the cache, in base units",
            ),
            &["project", "asset"],
        )
        .expect("valid metric");
        let cache_tier_errors = IntCounterVec::new(
            Opts::new(
                "pag0_cache_tier_errors_total",
                "Cache tier calls that failed or were skipped (requests went on without them)",
            ),
            &["tier", "op", "kind"],
        )
        .expect("valid metric");
        let tunnels = IntCounterVec::new(
            Opts::new(
                "pag0_tunnels_total",
                "CONNECT tunnels by kind (intercept, blind) and outcome",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let rate_limit_fallbacks = prometheus::IntCounter::new(
            "pag0_rate_limit_fallbacks_total",
            "Rate-limit decisions made in-process because Redis was unreachable",
        )
        .expect("valid metric");
        let header_timeouts = prometheus::IntCounter::new(
            "pag0_header_timeouts_total",
            "Downstream connections closed because a request header arrived too slowly",
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "pag0_connections_refused_total",
                "Connections closed at once because their listener held its cap",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let connections_open = IntGaugeVec::new(
            Opts::new("pag0_connections_open", "Connections held, by listener"),
            &["listener"],
        )
        .expect("valid metric");
        let headers_too_large = prometheus::IntCounter::new(
            "pag0_header_too_large_total",
            "Requests answered 431 because their header was over server.max_header_bytes",
        )
        .expect("valid metric");
        let leaves_minted = prometheus::IntCounter::new(
            "pag0_tls_leaves_minted_total",
            "Leaf certificates minted by the local CA for intercepted hosts",
        )
        .expect("valid metric");
        let counter =
            |name: &str, help: &str| prometheus::IntCounter::new(name, help).expect("valid metric");
        let analytics = crate::analytics::Counters {
            written: counter(
                "pag0_analytics_records_written_total",
                "Analytics records written to the database by the writer",
            ),
            spooled: counter(
                "pag0_analytics_records_spooled_total",
                "Analytics records put in the local spool (database down or slow, queue full)",
            ),
            replayed: counter(
                "pag0_analytics_records_replayed_total",
                "Analytics records written from the spool to the database",
            ),
            dropped: counter(
                "pag0_analytics_records_dropped_total",
                "Analytics records lost because the database and the spool both failed",
            ),
            rejected: counter(
                "pag0_analytics_records_rejected_total",
                "Analytics records the database refused, kept in the rejected file",
            ),
            queue_depth: IntGauge::new(
                "pag0_analytics_queue_depth",
                "Analytics records waiting for the writer",
            )
            .expect("valid metric"),
            queue_peak: IntGauge::new(
                "pag0_analytics_queue_depth_peak",
                "Most analytics records seen waiting for the writer since start",
            )
            .expect("valid metric"),
            batch_seconds: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "pag0_analytics_batch_seconds",
                    "Time to write one batch of analytics records (rows and rollups)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        };
        let audit = crate::audit::Counters {
            feedback: IntCounterVec::new(
                Opts::new(
                    "pag0_audit_feedback_total",
                    "ERC-8004 feedback transactions by step (planned, sent, rebroadcast, confirmed, reverted, requeued)",
                ),
                &["state"],
            )
            .expect("valid metric"),
            backlog: IntGauge::new(
                "pag0_audit_backlog",
                "ERC-8004 feedbacks in the outbox not confirmed yet",
            )
            .expect("valid metric"),
            rpc_errors: counter(
                "pag0_audit_rpc_errors_total",
                "Failed calls to the audit chain's JSON-RPC",
            ),
        };
        let reconcile = crate::audit::reconcile::Counters {
            payments: IntGaugeVec::new(
                Opts::new(
                    "pag0_reconcile_payments",
                    "Journaled payments by what the chain says (settled, not_settled, mismatch, pending)",
                ),
                &["state"],
            )
            .expect("valid metric"),
            unknown_spend: counter(
                "pag0_unknown_spend_total",
                "Transfers out of a payment wallet that match no payment pag0 made",
            ),
        };
        let config_reloads = IntCounterVec::new(
            Opts::new("pag0_config_reloads_total", "Config reload attempts"),
            &["result"],
        )
        .expect("valid metric");
        let config_generation = IntGauge::new(
            "pag0_config_generation",
            "Generation of the config in use (1 = as started)",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("pag0_build_info", "Always 1; labelled with the version"),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let mut families = Vec::new();
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(stage_rejections.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(route_choices.clone()),
            Box::new(route_breakers.clone()),
            Box::new(payments.clone()),
            Box::new(signatures.clone()),
            Box::new(payment_intents.clone()),
            Box::new(payments_in_doubt.clone()),
            Box::new(policy_violations.clone()),
            Box::new(budget_operations.clone()),
            Box::new(approvals.clone()),
            Box::new(anomaly_alerts.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_saved.clone()),
            Box::new(cache_tier_errors.clone()),
            Box::new(tunnels.clone()),
            Box::new(leaves_minted.clone()),
            Box::new(header_timeouts.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_open.clone()),
            Box::new(headers_too_large.clone()),
            Box::new(rate_limit_fallbacks.clone()),
            Box::new(analytics.written.clone()),
            Box::new(analytics.spooled.clone()),
            Box::new(analytics.replayed.clone()),
            Box::new(analytics.dropped.clone()),
            Box::new(analytics.rejected.clone()),
            Box::new(analytics.queue_depth.clone()),
            Box::new(analytics.queue_peak.clone()),
            Box::new(analytics.batch_seconds.clone()),
            Box::new(audit.feedback.clone()),
            Box::new(audit.backlog.clone()),
            Box::new(audit.rpc_errors.clone()),
            Box::new(reconcile.payments.clone()),
            Box::new(reconcile.unknown_spend.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_generation.clone()),
            Box::new(build_info),
        ] {
            for mf in c.collect() {
                let kind = match mf.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => "counter",
                    prometheus::proto::MetricType::GAUGE => "gauge",
                    prometheus::proto::MetricType::HISTOGRAM => "histogram",
                    prometheus::proto::MetricType::SUMMARY => "summary",
                    prometheus::proto::MetricType::UNTYPED => "untyped",
                };
                families.push((mf.name().to_string(), mf.help().to_string(), kind));
            }
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            families,
            requests,
            request_duration,
            stage_rejections,
            upstream_errors,
            route_choices,
            route_breakers,
            payments,
            signatures,
            payment_intents,
            payments_in_doubt,
            policy_violations,
            budget_operations,
            approvals,
            anomaly_alerts,
            cache_requests,
            cache_saved,
            cache_tier_errors,
            tunnels,
            leaves_minted,
            header_timeouts,
            connections_refused,
            connections_open,
            headers_too_large,
            rate_limit_fallbacks,
            analytics,
            audit,
            reconcile,
            config_reloads,
            config_generation,
        }
    }

    /// The Prometheus text exposition of every metric; families without a sample yet (a
    /// labelled counter nothing has counted) are listed by their `HELP` and `TYPE` lines.
    pub fn render(&self) -> String {
        let gathered = self.registry.gather();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&gathered, &mut buf)
            .expect("text encoding cannot fail");
        let mut text = String::from_utf8(buf).expect("prometheus text is UTF-8");
        let present: std::collections::HashSet<&str> = gathered.iter().map(|f| f.name()).collect();
        for (name, help, kind) in &self.families {
            if !present.contains(name.as_str()) {
                let help = help.replace('\\', "\\\\").replace('\n', "\\n");
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `"2xx"`, `"4xx"`, …; `"none"` when no response was sent (client went away).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}
