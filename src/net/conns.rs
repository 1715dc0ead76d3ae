//! Caps on the connections each listener holds at once. The proxy listener, the admin
//! listener, upstream connections, the database, Redis and files all draw on one per-process
//! descriptor limit: without a cap, one listener (or a client opening thousands of idle
//! sockets on it) could use them all and leave the others unable to accept or connect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors kept for what is not a downstream connection (files, the write-ahead files,
/// database and Redis connections, listeners, DNS), at most an eighth of the limit.
const RESERVED: u64 = 256;
/// The admin listener's default share of the descriptors: 1/64, between these bounds.
const ADMIN_DEFAULT_MIN: u64 = 16;
const ADMIN_DEFAULT_MAX: u64 = 256;
/// The smallest default proxy cap, however low the limit.
const PROXY_DEFAULT_MIN: u64 = 16;

/// How many connections a listener may hold at once, and how many it holds.
#[derive(Debug)]
pub struct ConnectionCap {
    open: AtomicUsize,
    max: usize,
}

/// One accepted connection counted against its listener's cap until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<ConnectionCap>);

impl ConnectionCap {
    pub fn new(max: usize) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Counts a new connection, or `None` when the listener already holds `max`.
    pub fn try_open(self: &Arc<Self>) -> Option<OpenConnection> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenConnection(self.clone()))
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Raises the soft descriptor limit to the hard one (as nginx and Go do) and returns the
/// limit now in force (`RLIMIT_NOFILE`).
pub fn raise_descriptor_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// The caps of both listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub proxy: usize,
    pub admin: usize,
}

/// The caps for a process that may open `limit` descriptors and keeps up to `upstream_pool`
/// idle upstream connections: the configured ones, or defaults that leave room for the rest
/// (each agent connection may hold an upstream connection too, so counts twice). An explicit
/// cap that does not fit is an error naming its YAML path.
pub fn caps(
    limit: u64,
    proxy: Option<usize>,
    admin: Option<usize>,
    upstream_pool: usize,
) -> Result<Caps, String> {
    let reserved = RESERVED.min(limit / 8);
    let budget = limit.saturating_sub(reserved);
    let admin_cap = match admin {
        Some(n) => n as u64,
        None => (budget / 64).clamp(ADMIN_DEFAULT_MIN, ADMIN_DEFAULT_MAX),
    };
    let pool = (upstream_pool as u64).min(budget / 4);
    let proxy_cap = match proxy {
        Some(n) => n as u64,
        None => (budget.saturating_sub(admin_cap + pool) / 2).max(PROXY_DEFAULT_MIN),
    };
    let needed = admin_cap + 2 * proxy_cap + reserved;
    if (proxy.is_some() || admin.is_some()) && needed > limit {
        let paths = match (proxy.is_some(), admin.is_some()) {
            (true, true) => "server.max_connections and admin.max_connections",
            (true, false) => "server.max_connections",
            _ => "admin.max_connections",
        };
        return Err(format!(
            "{paths}: {proxy_cap} proxy connections (2 descriptors each: agent and upstream) and {admin_cap} admin connections, plus {reserved} for files and databases, need {needed} descriptors; this process may open {limit} (RLIMIT_NOFILE): lower the caps or raise the limit"
        ));
    }
    Ok(Caps {
        proxy: proxy_cap as usize,
        admin: admin_cap as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_counts_open_connections_and_refuses_over_it() {
        let cap = ConnectionCap::new(2);
        let a = cap.try_open().unwrap();
        let b = cap.try_open().unwrap();
        assert!(cap.try_open().is_none());
        assert_eq!(cap.open(), 2);
        drop(a);
        let c = cap.try_open().unwrap();
        drop((b, c));
        assert_eq!(cap.open(), 0);
    }

    #[test]
    fn defaults_leave_room_for_everything_else() {
        let c = caps(20_000, None, None, 1024).unwrap();
        assert_eq!(c.admin, 256);
        assert_eq!(c.proxy, (20_000 - 256 - 256 - 1024) / 2);
        assert!(c.admin + 2 * c.proxy + 256 + 1024 <= 20_000);
        let small = caps(1024, None, None, 1024).unwrap();
        assert_eq!(small.admin, 16);
        assert!(small.admin + 2 * small.proxy + 128 <= 1024, "{small:?}");
        assert!(small.proxy >= 16);
    }

    #[test]
    fn explicit_caps_that_do_not_fit_name_their_paths() {
        assert_eq!(
            caps(20_000, Some(5_000), Some(100), 1024),
            Ok(Caps {
                proxy: 5_000,
                admin: 100
            })
        );
        let e = caps(1024, Some(5_000), None, 1024).unwrap_err();
        assert!(e.starts_with("server.max_connections:"), "{e}");
        assert!(e.contains("1024"), "{e}");
        let e = caps(1024, None, Some(5_000), 1024).unwrap_err();
        assert!(e.starts_with("admin.max_connections:"), "{e}");
    }
}
