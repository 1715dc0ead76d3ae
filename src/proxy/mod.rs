//! The Pingora side: the thin `ProxyHttp` impl, the request context, targets and replies.

pub mod ctx;
pub mod framing;
pub mod header_guard;
pub mod listener;
pub mod logging;
pub mod respond;
pub mod service;
pub mod smart;
pub mod target;
pub mod tunnel;
pub mod upstream;

pub use ctx::{RequestCtx, Target, TargetKind};
pub use service::Pag0Proxy;
