//! The one typed per-request context that every hook and stage reads and writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Project, Route};
use crate::live::Live;
use crate::proxy::respond::ErrorCode;

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum TargetKind {
    /// Forward proxy: the agent named the URL (absolute-form request target).
    Forward,
    /// Reverse proxy: a YAML route matched an origin-form request.
    Route(Arc<Route>),
}

/// The upstream of one request.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: TargetKind,
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Origin-form path and query to send upstream.
    pub path: String,
    /// The address to connect to, once a stage (the SSRF guard) has resolved and vetted it.
    pub addr: Option<SocketAddr>,
}

impl Target {
    /// The Host header the upstream gets: always the target's own authority (for absolute-form
    /// requests RFC 9112 §3.2.2 makes the proxy replace whatever Host the client sent).
    pub fn host_header(&self) -> String {
        crate::config::host_header(&self.host, self.port, self.tls)
    }

    /// Label used in metrics: the route name, or `forward`.
    pub fn route_label(&self) -> &str {
        match &self.kind {
            TargetKind::Forward => "forward",
            TargetKind::Route(r) => &r.name,
        }
    }
}

/// Per-request state, created in `new_ctx` and turned into metrics in `logging`.
pub struct RequestCtx {
    /// The configuration snapshot this request runs under (a reload never changes it mid-request).
    pub live: Arc<Live>,
    pub started: Instant,
    pub target: Option<Target>,
    pub project: Option<Arc<Project>>,
    /// Set when pag0 answered (or failed) the request itself.
    pub error: Option<ErrorCode>,
}

impl RequestCtx {
    pub fn new(live: Arc<Live>) -> RequestCtx {
        RequestCtx {
            live,
            started: Instant::now(),
            target: None,
            project: None,
            error: None,
        }
    }

    pub fn project_label(&self) -> &str {
        self.project.as_ref().map_or("-", |p| p.id.as_str())
    }

    pub fn route_label(&self) -> &str {
        self.target.as_ref().map_or("-", Target::route_label)
    }
}
