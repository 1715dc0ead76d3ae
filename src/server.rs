//! Builds the Pingora server from a validated [`Config`]: Pingora's own settings come from
//! our YAML (no second config file), then the proxy, admin and SIGHUP services are added.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::{AdminService, FacilitatorProbe, SighupReloader};
use crate::config::Config;
use crate::live::{Reloader, Shared};
use crate::proxy::Pag0Proxy;
use crate::proxy::listener::ProxyApp;

/// Default pid file (Pingora needs one for graceful upgrades).
pub const DEFAULT_PID_FILE: &str = "/tmp/pag0.pid";
/// Default socket for handing listeners to a new process on graceful upgrade.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/pag0_upgrade.sock";

/// A built, not yet running pag0.
pub struct Pag0 {
    pub server: Server,
    pub reloader: Arc<Reloader>,
}

/// Options that come from the command line rather than the YAML.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// Take the listeners over from a running pag0 (Pingora graceful upgrade).
    pub upgrade: bool,
}

/// Downstream connection buffers: no read buffer under Pingora's own (its HTTP parser reads
/// into a buffer of its own; the default 64 KiB read buffer per connection would be most of
/// an idle keep-alive connection's memory), Pingora's default write buffer (one segment).
const L4_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| DEFAULT_PID_FILE.to_string()),
        upgrade_sock: s
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| DEFAULT_UPGRADE_SOCK.to_string()),
        // Timeouts of a second or more on Tokio's timers instead of Pingora's timer thread,
        // which, once a timeout has started it, wakes 100 times a second for ever (≈ 4 ms of
        // CPU per second on an idle pag0). pag0's timeouts are seconds long.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    }
}

/// Builds the server. `path` is the config file re-read on reload.
pub fn build(config: Config, path: Option<PathBuf>, opts: &StartOptions) -> anyhow::Result<Pag0> {
    let conf = server_conf(&config);
    let listen = config.server.listen.clone();
    let keepalive_request_limit = config.server.keepalive_request_limit;
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    crate::x402::SigningPool::configure(config.payments.signer_threads);
    let shared = Shared::new(&config)?;
    let reloader = Reloader::new(config, path, shared.clone());
    shared.spawn(crate::live::sync_policies(
        Arc::downgrade(&reloader.live),
        shared.store.clone(),
        shared.policies.clone(),
    ));

    let proxy = Pag0Proxy::new(reloader.live.clone(), shared.clone());
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit = keepalive_request_limit;
    // CONNECT reaches the proxy's hooks (target, auth, SSRF guard); the listener app turns an
    // accepted one into a tunnel. `connect.mode: off` answers 405 in the hooks.
    options.allow_connect_method_proxying = true;
    proxy.server_options = Some(options);
    let app = ProxyApp::new(proxy, reloader.live.clone(), shared);
    let mut service = Service::new("pag0 proxy".to_string(), app);
    for addr in &listen {
        service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(L4_BUFFERS));
    }
    server.add_service(service);

    let admin = AdminService::bind(reloader.clone()).map_err(|e| {
        anyhow::anyhow!(
            "cannot bind the admin listener {}: {e}",
            reloader.live.load().config.admin.listen
        )
    })?;
    let mut admin = background_service("pag0 admin", admin);
    admin.threads = Some(1);
    server.add_service(admin);
    if let Some(facilitator) = reloader.shared.facilitator.clone() {
        let mut probe = background_service("pag0 facilitator", FacilitatorProbe(facilitator));
        probe.threads = Some(1);
        server.add_service(probe);
    }
    let drain = SettleDrain {
        settler: reloader.shared.settler.clone(),
        redis: reloader.shared.redis_ledger.clone(),
        timeout: reloader.live.load().config.server.graceful_shutdown_timeout,
    };
    let mut drain = background_service("pag0 settle", drain);
    drain.threads = Some(1);
    server.add_service(drain);
    let mut hup = background_service("pag0 sighup", SighupReloader(reloader.clone()));
    hup.threads = Some(1);
    server.add_service(hup);
    Ok(Pag0 { server, reloader })
}

/// On graceful shutdown, waits for the journal writes and budget commits of requests that
/// already finished (up to the graceful shutdown timeout).
struct SettleDrain {
    settler: Arc<crate::settle::Settler>,
    /// Commits that wait for Redis are retried every second until the timeout too.
    redis: Option<Arc<crate::budget::RedisLedger>>,
    timeout: std::time::Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SettleDrain {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let left = self.settler.drain(self.timeout).await;
        if left > 0 {
            log::error!("shutting down with {left} payment outcomes not yet journaled/committed");
        }
        if let Some(redis) = &self.redis {
            while redis.pending_commits() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let waiting = redis.pending_commits();
            if waiting > 0 {
                log::error!(
                    "shutting down with {waiting} budget commits not in Redis (they are in the journal; the windows are rebuilt from it only if Redis loses them)"
                );
            }
        }
    }
}

impl Pag0 {
    /// Runs until SIGTERM/SIGINT/SIGQUIT (Pingora's signals), or until `args` says so.
    pub fn run(self, args: RunArgs) {
        self.server.run(args);
        // The proxy has stopped: the last analytics records go to the database (or the
        // spool) before the process exits.
        let shared = &self.reloader.shared;
        shared.retire();
        let timeout = self.reloader.live.load().config.database.timeout * 2;
        if !shared.drain_analytics(timeout) {
            log::error!(
                "analytics: records still queued at exit (the database and the spool were too slow)"
            );
        }
    }
}
