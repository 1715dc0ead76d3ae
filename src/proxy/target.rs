//! Turns a request line + Host into a [`Target`]: absolute-form → forward proxy,
//! origin-form → the first matching YAML route, `CONNECT host:port` → a tunnel, and any
//! request inside an intercepted tunnel → the tunnel's own host.

use std::sync::Arc;

use http::Uri;
use pingora::http::RequestHeader;

use crate::config::{ConnectMode, ConnectSettings, Route};
use crate::net::ip::parse_numeric_v4;
use crate::policy::normalise;
use crate::proxy::ctx::{Target, TargetKind, TunnelInfo};
use crate::proxy::respond::{ErrorCode, Reply};

/// Resolves the target of `req` (no DNS here; that is the SSRF guard's or the peer's job).
/// `tunnel` is set for requests inside an intercepted `CONNECT`.
pub fn resolve(
    req: &RequestHeader,
    routes: &[Arc<Route>],
    tunnel: Option<&TunnelInfo>,
    connect: &ConnectSettings,
) -> Result<Target, Reply> {
    if req.method == http::Method::CONNECT {
        return match (tunnel, connect.mode) {
            (Some(_), _) => Err(Reply::new(
                ErrorCode::ConnectNotAllowed,
                "CONNECT inside a CONNECT tunnel is not supported",
            )),
            (None, ConnectMode::Off) => Err(Reply::new(
                ErrorCode::ConnectNotAllowed,
                "CONNECT is off on this proxy (connect.mode: off)",
            )),
            (None, _) => connect_target(req),
        };
    }
    if let Some(tunnel) = tunnel {
        return tunnel_target(req, tunnel);
    }
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') {
        return route_target(req, routes);
    }
    absolute_target(raw)
}

/// `CONNECT host:port` (authority-form; the port is required).
fn connect_target(req: &RequestHeader) -> Result<Target, Reply> {
    let bad = || Reply::new(ErrorCode::InvalidTarget, "CONNECT needs a host:port target");
    let authority = std::str::from_utf8(req.raw_path())
        .ok()
        .and_then(|raw| raw.parse::<http::uri::Authority>().ok())
        .ok_or_else(bad)?;
    let port = authority.port_u16().ok_or_else(bad)?;
    if authority.as_str().contains('@') || port == 0 {
        return Err(bad());
    }
    let host = canonical_host(authority.host())?;
    let framed = [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
    ]
    .iter()
    .any(|h| req.headers.contains_key(h));
    if framed {
        // The agent waits for our answer before sending anything: a body would never come.
        return Err(Reply::new(
            ErrorCode::InvalidTarget,
            "a CONNECT request has no body (no Content-Length or Transfer-Encoding)",
        ));
    }
    Ok(Target {
        kind: TargetKind::Connect,
        tls: true,
        host,
        port,
        path: String::new(),
        addr: None,
        candidate: None,
    })
}

/// A request inside an intercepted tunnel goes to the tunnel's host (over TLS when the tunnel
/// is); one that names another host or scheme (absolute-form URL or `Host`) is misdirected
/// (421).
fn tunnel_target(req: &RequestHeader, tunnel: &TunnelInfo) -> Result<Target, Reply> {
    let misdirected = |named: &str| {
        Reply::new(
            ErrorCode::MisdirectedRequest,
            format!(
                "this tunnel goes to {}:{}, not to {named}",
                tunnel.host, tunnel.port
            ),
        )
    };
    let raw = req.raw_path();
    let path = if raw.first() == Some(&b'/') {
        std::str::from_utf8(raw)
            .map_err(|_| Reply::new(ErrorCode::InvalidTarget, "the request target is not UTF-8"))?
            .to_string()
    } else {
        let t = absolute_target(raw)?;
        if t.tls != tunnel.tls || t.host != tunnel.host || t.port != tunnel.port {
            return Err(misdirected(&format!("{}:{}", t.host, t.port)));
        }
        t.path
    };
    if let Some(host) = req.headers.get(http::header::HOST) {
        let named = host.to_str().map(host_without_port).unwrap_or_default();
        let named = canonical_host(&named).unwrap_or(named);
        if named != tunnel.host {
            return Err(misdirected(&named));
        }
    }
    Ok(Target {
        kind: TargetKind::Forward,
        tls: tunnel.tls,
        host: tunnel.host.clone(),
        port: tunnel.port,
        path,
        addr: None,
        candidate: None,
    })
}

/// An absolute-form `http(s)://` request target (forward proxy).
fn absolute_target(raw: &[u8]) -> Result<Target, Reply> {
    let uri = Uri::try_from(raw).map_err(|_| {
        Reply::new(
            ErrorCode::InvalidTarget,
            "the request target is not a valid URL",
        )
    })?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(Reply::new(
                ErrorCode::InvalidTarget,
                "only http:// and https:// targets are proxied",
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| Reply::new(ErrorCode::InvalidTarget, "the request target has no host"))?;
    if authority.as_str().contains('@') {
        return Err(Reply::new(
            ErrorCode::InvalidTarget,
            "the request target has an invalid authority",
        ));
    }
    let host = canonical_host(authority.host())?;
    let port = explicit_port(authority)?.unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = if path.is_empty() { "/" } else { path };
    Ok(Target {
        kind: TargetKind::Forward,
        tls,
        host,
        port,
        path: path.to_string(),
        addr: None,
        candidate: None,
    })
}

/// The port an absolute-form target names, if it names one: `host:` (empty), `:0` and ports
/// over 65535 are refused rather than read as the default port (or as port 0).
fn explicit_port(authority: &http::uri::Authority) -> Result<Option<u16>, Reply> {
    let Some(raw) = authority
        .as_str()
        .strip_prefix(authority.host())
        .and_then(|rest| rest.strip_prefix(':'))
    else {
        return Ok(None);
    };
    match raw.parse::<u16>() {
        Ok(port) if port > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(port)),
        _ => Err(Reply::new(
            ErrorCode::InvalidTarget,
            "the request target's port must be a number from 1 to 65535",
        )),
    }
}

/// An agent-chosen host in the form the rest of pag0 compares and connects to: lowercase,
/// without brackets or a trailing dot; an IPv6 literal in its canonical text; a numeric IPv4
/// form (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`) as the dotted address curl and
/// browsers take it for, so that the SSRF guard and the allow/block lists judge the address
/// and no DNS query is made for it.
fn canonical_host(raw: &str) -> Result<String, Reply> {
    let host = normalise(raw);
    let invalid = |why: &str| {
        Reply::new(ErrorCode::InvalidTarget, format!("the target host {why}"))
            .details(serde_json::json!({"host": raw}))
    };
    if host.is_empty() {
        return Err(invalid("is empty"));
    }
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| invalid("is not a valid IPv6 address"));
    }
    match parse_numeric_v4(&host) {
        Ok(Some(ip)) => Ok(ip.to_string()),
        Ok(None) => Ok(host),
        Err(_) => Err(invalid("ends in a number but is not an IPv4 address")),
    }
}

fn route_target(req: &RequestHeader, routes: &[Arc<Route>]) -> Result<Target, Reply> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_without_port)
        .unwrap_or_default();
    let path_and_query = std::str::from_utf8(req.raw_path()).unwrap_or("/");
    let path = path_and_query.split('?').next().unwrap_or("/");
    let route = routes
        .iter()
        .find(|r| {
            r.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(&host))
                && r.path_prefix.as_deref().is_none_or(|p| prefix_matches(p, path))
        })
        .ok_or_else(|| {
            Reply::new(ErrorCode::NoRoute, "no route matches this request; use an absolute URL to go through the forward proxy")
                .details(serde_json::json!({"host": host, "path": path}))
        })?;
    let rest = match (&route.path_prefix, route.strip_prefix) {
        (Some(prefix), true) => &path_and_query[prefix.len()..],
        _ => path_and_query,
    };
    let mut upstream_path = format!("{}{}", route.upstream.base_path, rest);
    if !upstream_path.starts_with('/') {
        upstream_path.insert(0, '/');
    }
    Ok(Target {
        kind: TargetKind::Route(route.clone()),
        tls: route.upstream.tls,
        host: route.upstream.host.clone(),
        port: route.upstream.port,
        path: upstream_path,
        addr: None,
        candidate: None,
    })
}

/// Segment-wise prefix match: `/v1` matches `/v1` and `/v1/x`, not `/v10`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
}

fn host_without_port(host: &str) -> String {
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    normalise(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream;

    fn route(
        name: &str,
        host: Option<&str>,
        prefix: Option<&str>,
        upstream: &str,
        strip: bool,
    ) -> Arc<Route> {
        Arc::new(Route {
            name: name.into(),
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            upstream: parse_upstream(upstream).unwrap(),
            strip_prefix: strip,
            ca: None,
            ca_file: None,
            trust_group: 0,
            cache: Default::default(),
            smart: None,
        })
    }

    fn req(target: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        r
    }

    fn settings(mode: ConnectMode) -> ConnectSettings {
        ConnectSettings {
            mode,
            ca_dir: Default::default(),
            tunnel_only: Vec::new(),
            handshake_timeout: std::time::Duration::from_secs(1),
            leaf_cache_size: 1,
            ports: None,
            idle_timeout: std::time::Duration::from_secs(1),
        }
    }

    fn resolve_plain(req: &RequestHeader, routes: &[Arc<Route>]) -> Result<Target, Reply> {
        resolve(req, routes, None, &settings(ConnectMode::Intercept))
    }

    fn connect(target: &str) -> RequestHeader {
        RequestHeader::build("CONNECT", target.as_bytes(), None).unwrap()
    }

    #[test]
    fn connect_targets_need_host_and_port() {
        let t = resolve_plain(&connect("API.example.com:8443"), &[]).unwrap();
        assert!(matches!(t.kind, TargetKind::Connect));
        assert_eq!((t.host.as_str(), t.port), ("api.example.com", 8443));
        let t = resolve_plain(&connect("[::1]:443"), &[]).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        let t = resolve_plain(&connect("Bank.Example.:443"), &[]).unwrap();
        assert_eq!(t.host, "bank.example", "a trailing dot names the same host");
        let mut with_body = connect("api.example.com:443");
        with_body.insert_header("content-length", "5").unwrap();
        assert_eq!(
            resolve_plain(&with_body, &[]).unwrap_err().code,
            ErrorCode::InvalidTarget
        );
        for bad in [
            "api.example.com",
            "user@api.example.com:443",
            ":443",
            "a b:443",
        ] {
            assert_eq!(
                resolve_plain(&connect(bad), &[]).unwrap_err().code,
                ErrorCode::InvalidTarget,
                "{bad}"
            );
        }
        let off = resolve(
            &connect("api.example.com:443"),
            &[],
            None,
            &settings(ConnectMode::Off),
        );
        assert_eq!(off.unwrap_err().code, ErrorCode::ConnectNotAllowed);
    }

    #[test]
    fn absolute_targets_with_a_port_out_of_range_or_empty_are_refused() {
        for bad in [
            "http://api.example.com:65536/",
            "http://api.example.com:/",
            "http://api.example.com:0/",
            "https://[::1]:0/",
            "http://api.example.com:99999999999/",
        ] {
            let e = absolute_target(bad.as_bytes()).map(|t| t.port).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidTarget, "{bad}");
        }
        for (good, port) in [
            ("http://api.example.com/", 80),
            ("https://api.example.com/", 443),
            ("http://api.example.com:65535/", 65535),
            ("http://[::1]:8080/x", 8080),
        ] {
            assert_eq!(
                absolute_target(good.as_bytes()).unwrap().port,
                port,
                "{good}"
            );
        }
    }

    #[test]
    fn numeric_and_ipv6_hosts_are_canonical_addresses() {
        for form in [
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "127.0.0.1.",
        ] {
            let t = resolve_plain(&req(&format!("http://{form}:8080/x"), None), &[]).unwrap();
            assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080), "{form}");
            let t = resolve_plain(&connect(&format!("{form}:443")), &[]).unwrap();
            assert_eq!(t.host, "127.0.0.1", "CONNECT {form}");
        }
        let t = resolve_plain(&req("http://[::FFFF:7F00:1]/", None), &[]).unwrap();
        assert_eq!(t.host, "::ffff:127.0.0.1");
        assert_eq!(t.host_header(), "[::ffff:127.0.0.1]");
        for bad in [
            "http://1.2.3.256/",
            "http://example.09/",
            "http://[fe80::1%25eth0]/",
        ] {
            assert_eq!(
                resolve_plain(&req(bad, None), &[]).unwrap_err().code,
                ErrorCode::InvalidTarget,
                "{bad}"
            );
        }
    }

    #[test]
    fn requests_inside_a_tunnel_go_to_its_host_only() {
        let tunnel = TunnelInfo {
            host: "api.example.com".into(),
            port: 8443,
            tls: true,
            credentials: None,
        };
        let intercept = settings(ConnectMode::Intercept);
        let inside = |r: &RequestHeader| resolve(r, &[], Some(&tunnel), &intercept);
        let t = inside(&req("/v1/x?q=1", Some("API.example.com:8443"))).unwrap();
        assert!(matches!(t.kind, TargetKind::Forward));
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "api.example.com", 8443, "/v1/x?q=1")
        );
        let t = inside(&req("https://api.example.com:8443/abs", None)).unwrap();
        assert_eq!(t.path, "/abs");
        for (target, host) in [
            ("/x", Some("evil.example")),
            ("https://evil.example:8443/", None),
            ("http://api.example.com:8443/", None),
        ] {
            assert_eq!(
                inside(&req(target, host)).unwrap_err().code,
                ErrorCode::MisdirectedRequest,
                "{target} {host:?}"
            );
        }
        assert_eq!(
            inside(&connect("other.example:443")).unwrap_err().code,
            ErrorCode::ConnectNotAllowed
        );
    }

    #[test]
    fn requests_inside_a_plain_tunnel_go_to_its_host_in_plain_http() {
        let tunnel = TunnelInfo {
            host: "127.0.0.1".into(),
            port: 8080,
            tls: false,
            credentials: None,
        };
        let intercept = settings(ConnectMode::Intercept);
        let inside = |r: &RequestHeader| resolve(r, &[], Some(&tunnel), &intercept);
        let t = inside(&req("/x", Some("127.0.0.1:8080"))).unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 8080, "/x")
        );
        let t = inside(&req("http://127.0.0.1:8080/abs", None)).unwrap();
        assert_eq!((t.tls, t.path.as_str()), (false, "/abs"));
        // The Host header is read like a target host (numeric forms are the same address).
        assert!(inside(&req("/x", Some("2130706433:8080"))).is_ok());
        assert_eq!(
            inside(&req("https://127.0.0.1:8080/", None))
                .unwrap_err()
                .code,
            ErrorCode::MisdirectedRequest
        );
    }

    #[test]
    fn absolute_form_is_forward() {
        let t = resolve_plain(&req("http://Example.com:8080/a/b?q=1", None), &[]).unwrap();
        assert!(matches!(t.kind, TargetKind::Forward));
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (false, "example.com", 8080, "/a/b?q=1")
        );
        let t = resolve_plain(&req("https://[::1]/", None), &[]).unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "::1", 443));
    }

    #[test]
    fn bad_targets_are_rejected() {
        for bad in ["ftp://example.com/", "http://user:pw@example.com/"] {
            assert_eq!(
                resolve_plain(&req(bad, None), &[]).unwrap_err().code,
                ErrorCode::InvalidTarget,
                "{bad}"
            );
        }
        assert_eq!(
            resolve_plain(&req("/x", Some("a")), &[]).unwrap_err().code,
            ErrorCode::NoRoute
        );
    }

    #[test]
    fn routes_match_host_and_prefix_in_order() {
        let routes = vec![
            route(
                "api",
                Some("api.local"),
                Some("/v1"),
                "https://up.example/base",
                true,
            ),
            route("keep", None, Some("/keep"), "http://10.0.0.9:81", false),
            route(
                "any",
                Some("api.local"),
                None,
                "http://127.0.0.1:9000/",
                true,
            ),
        ];
        let t = resolve_plain(&req("/v1/items?x=1", Some("API.local:8402")), &routes).unwrap();
        assert_eq!(t.route_label(), "api");
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "up.example", 443, "/base/items?x=1")
        );
        assert_eq!(
            resolve_plain(&req("/v1", Some("api.local")), &routes)
                .unwrap()
                .path,
            "/base"
        );
        assert_eq!(
            resolve_plain(&req("/v10", Some("api.local")), &routes)
                .unwrap()
                .route_label(),
            "any"
        );
        let t = resolve_plain(&req("/keep/me", Some("whatever")), &routes).unwrap();
        assert_eq!(
            (t.route_label(), t.path.as_str(), t.port),
            ("keep", "/keep/me", 81)
        );
        assert!(resolve_plain(&req("/v1/items", Some("other")), &routes).is_err());
    }
}
