//! The `cache` stage: decides per request whether the response cache takes part, builds the
//! key, decides whether a response may be stored and for how long, and labels the answer.
//!
//! Pingora runs the cache between `request_filter` and `proxy_upstream_filter`, so a hit skips
//! everything that only a trip upstream needs (signing, budgets): a hit costs no payment.
//!
//! * Key: scope + method + normalized URL (+ SHA-256 of the body for POST on routes with
//!   `cache.post`). Scope is `p.<project>`, or `shared` on routes with `cache.shared`.
//!   Headers are not part of the key (payment headers, `Proxy-Authorization` and `X-Pag0-*`
//!   never), except those the upstream names in `Vary`.
//! * Freshness: the upstream's `Cache-Control` (`max-age`, `s-maxage`) or `Expires`; else the
//!   first matching rule; else the route's `ttl_seconds`; else the stage default. Not stored:
//!   `no-store`, `no-cache`, `private` in the shared scope, `Set-Cookie`, `Vary: *`, statuses
//!   other than 2xx (206 excluded; 404 with `cache_404`), bodies over `max_object_bytes`.
//! * Agents bypass with `X-Pag0-Cache: bypass` (nothing read or stored) or
//!   `Cache-Control: no-cache` (not read, the fresh answer is stored); a request that carries
//!   its own payment header is never answered from the cache.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use alloy_primitives::U256;
use async_trait::async_trait;
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, ForcedFreshness, HitHandler, NoCacheReason,
    RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use sha2::{Digest, Sha256};

use super::{Flow, Stage};
use crate::cache::stats::Outcome;
use crate::cache::{
    CacheStats, CacheStore, FillLock, FillStarted, Hit, Prefetched, Tier, primary_key,
};
use crate::config::{CacheRules, RouteCache};
use crate::metrics::Metrics;
use crate::proxy::{RequestCtx, Target, TargetKind};
use crate::x402;

/// Request header agents send to skip the cache; response header with the outcome.
pub const CACHE_HEADER: &str = "x-pag0-cache";
/// Response header on hits: the price the cached response was paid with (not paid again).
pub const SAVED_HEADER: &str = "x-pag0-saved";
/// Kept in the cached copy of a paid response only: what it cost.
const PRICE_HEADER: &str = "x-pag0-cache-price";
/// POST bodies up to this size can be part of a key (Pingora's retry buffer, which must still
/// hold the body to send it upstream on a miss).
const MAX_KEYED_BODY: usize = 64 * 1024;

/// No stale windows unless the upstream grants them (`stale-while-revalidate`/`-if-error`).
static NO_STALE: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// The cache's part of the request context.
#[derive(Debug, Default)]
pub struct CacheState {
    /// Set when the cache takes part in this request.
    pub lookup: Option<Lookup>,
    /// Why it does not.
    pub bypass: Option<&'static str>,
    /// Which tier a lookup found an entry in.
    pub tier: Option<Tier>,
    /// What the agent got (set when the response header is sent).
    pub outcome: Option<Outcome>,
    /// Price of the cached response the agent got for free.
    pub saved: Option<(String, U256)>,
    pub bytes_served: u64,
    /// The upstream answered `304 Not Modified` to a revalidation.
    pub not_modified: bool,
    /// What [`CacheStage::fresh_hit`] found but could not serve, for pingora-cache's lookup.
    pub prefetched: Option<Prefetched>,
    /// The fleet-wide fill lock this request holds (see [`CacheStage::fleet_fill`]).
    pub fill_lock: Option<FillLock>,
}

/// How one request uses the cache.
#[derive(Debug)]
pub struct Lookup {
    pub primary: String,
    pub scope: String,
    pub shared: bool,
    /// `Cache-Control: no-cache` from the agent: do not serve a stored copy, store the answer.
    pub refresh: bool,
    /// Freshness when the upstream says nothing.
    pub ttl: Duration,
}

impl Lookup {
    /// The entry's key (no extensions; [`CacheStage::key`] adds pingora-cache's).
    fn key(&self) -> CacheKey {
        CacheKey::new(self.primary.as_str(), self.scope.as_str())
    }
}

pub struct CacheStage {
    rules: Arc<CacheRules>,
    store: &'static CacheStore,
    lock: &'static CacheKeyLockImpl,
    /// How long a fill lock is held at most (`cache.lock_timeout_ms`).
    lock_timeout: Duration,
    metrics: Arc<Metrics>,
    stats: Arc<CacheStats>,
}

/// How often a request waiting for another process's fill looks for the entry.
const FLEET_FILL_POLL: Duration = Duration::from_millis(20);

/// `scheme://host[:port]/path[?query]` with the scheme and host lowercased, the default port
/// dropped, the fragment removed and query parameters sorted by name (stable, so repeated
/// names keep their order). The path is kept byte for byte: it is what the upstream receives,
/// so two keys never stand for two different upstream requests (no dot-segment or
/// percent-decoding games on shared routes).
pub fn normalize_url(raw: &str) -> Result<String, String> {
    let invalid = |why: &str| format!("invalid URL {raw:?}: {why}");
    if raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(invalid("contains spaces or control characters"));
    }
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| invalid("no scheme"))?;
    let (scheme, default_port) = if scheme.eq_ignore_ascii_case("http") {
        ("http", 80)
    } else if scheme.eq_ignore_ascii_case("https") {
        ("https", 443)
    } else {
        return Err(invalid("scheme must be http or https"));
    };
    let rest = rest.split('#').next().unwrap_or("");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            let port: u16 = p.parse().map_err(|_| invalid("bad port"))?;
            (h, Some(port))
        }
        _ => (authority, None),
    };
    if host.is_empty() || host.contains(['@', '/']) {
        return Err(invalid("no host"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // Built in place: this runs on every request the cache takes part in.
    let mut out = String::with_capacity(raw.len() + 1);
    out.push_str(scheme);
    out.push_str("://");
    out.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    if let Some(port) = port.filter(|p| *p != default_port) {
        let _ = write!(out, ":{port}");
    }
    out.push_str(if path.is_empty() { "/" } else { path });
    if let Some(query) = query {
        let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_by_key(|p| p.split('=').next().unwrap_or(""));
        for (i, param) in params.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(param);
        }
    }
    Ok(out)
}

/// The normalized URL of a request's target.
fn target_url(t: &Target) -> Result<String, String> {
    let scheme = if t.tls { "https" } else { "http" };
    normalize_url(&format!("{scheme}://{}{}", t.host_header(), t.path))
}

/// Scope of the entries of `project` (or of every project on shared routes).
pub fn scope(project: &str, shared: bool) -> String {
    if shared {
        "shared".to_string()
    } else {
        format!("p.{project}")
    }
}

/// The variance of a request for a stored response that has `Vary`.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for value in meta.headers().get_all(http::header::VARY) {
        for name in value.to_str().unwrap_or("").split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            // Credentials and pag0's own headers never become part of a key.
            let never = name == "proxy-authorization"
                || name.starts_with("x-pag0-")
                || name == x402::PAYMENT_SIGNATURE_HEADER
                || name == x402::X_PAYMENT_HEADER;
            let mut value = Vec::new();
            if !never {
                for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
                    if i > 0 {
                        value.push(b',');
                    }
                    value.extend_from_slice(v.as_bytes());
                }
            }
            builder.add_owned_name_value(name, value);
        }
    }
    builder.finalize()
}

impl CacheStage {
    pub fn new(
        rules: Arc<CacheRules>,
        store: &'static CacheStore,
        lock: &'static CacheKeyLockImpl,
        lock_timeout: Duration,
        metrics: Arc<Metrics>,
        stats: Arc<CacheStats>,
    ) -> CacheStage {
        CacheStage {
            rules,
            store,
            lock,
            lock_timeout,
            metrics,
            stats,
        }
    }

    async fn decide(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
    ) -> Result<Lookup, &'static str> {
        let target = ctx.target.as_ref().ok_or("no-target")?;
        let route = match &target.kind {
            TargetKind::Route(r) => r.cache,
            TargetKind::Forward => RouteCache::default(),
            TargetKind::Connect => return Err("connect"),
        };
        if !route.enabled {
            return Err("route");
        }
        let req = session.req_header();
        if req
            .headers
            .get(CACHE_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bypass"))
        {
            return Err("agent");
        }
        let cc = CacheControl::from_req_headers(req);
        if cc.as_ref().is_some_and(|cc| cc.no_store()) {
            return Err("no-store");
        }
        let refresh = cc.as_ref().is_some_and(|cc| cc.no_cache())
            || req
                .headers
                .get(http::header::PRAGMA)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
        if req.headers.contains_key(x402::PAYMENT_SIGNATURE_HEADER)
            || req.headers.contains_key(x402::X_PAYMENT_HEADER)
        {
            return Err("payment-header");
        }
        let method = req.method.clone();
        let url = target_url(target).map_err(|_| "url")?;
        let host_path = format!(
            "{}{}",
            target.host.to_ascii_lowercase(),
            target.path.split('?').next().unwrap_or("/")
        );
        let ttl = match self.rules.rule_for(&host_path) {
            Some(rule) => rule.ttl.ok_or("excluded")?,
            None => route.ttl.unwrap_or(self.rules.default_ttl),
        };
        let body_hash = match method {
            http::Method::GET | http::Method::HEAD => String::new(),
            http::Method::POST if route.post => hash_body(session).await?,
            _ => return Err("method"),
        };
        let scope = scope(ctx.project_label(), route.shared);
        Ok(Lookup {
            primary: primary_key(&scope, method.as_str(), &url, &body_hash),
            scope,
            shared: route.shared,
            refresh,
            ttl,
        })
    }

    /// Runs in `request_cache_filter`: turns Pingora's cache on for requests the stage
    /// accepted.
    pub fn enable(&self, session: &mut Session, ctx: &RequestCtx) {
        if ctx.cache.lookup.is_none() {
            return;
        }
        session
            .cache
            .enable(self.store, None, None, Some(self.lock), None);
        session
            .cache
            .set_max_file_size_bytes(self.rules.max_object_bytes);
    }

    /// Runs in `cache_key_callback` (only for requests [`enable`](Self::enable) accepted).
    pub fn key(&self, ctx: &mut RequestCtx) -> pingora::Result<CacheKey> {
        let prefetched = ctx.cache.prefetched.take();
        let lookup = ctx.cache.lookup.as_ref().ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "cache not decided")
        })?;
        let mut key = lookup.key();
        key.extensions.insert(FillStarted(SystemTime::now()));
        if let Some(lock) = &ctx.cache.fill_lock {
            key.extensions.insert(lock.clone());
        }
        if let Some(prefetched) = prefetched {
            key.extensions.insert(prefetched);
        }
        Ok(key)
    }

    /// Runs at the end of `request_filter`, once every stage let the request through: finds a
    /// fresh entry and returns the response to send (the header as pingora-cache would send
    /// it, the body), without pingora-cache's hit state machine and the meta decoding it does
    /// on every hit. What it could not answer exactly like pingora-cache (a refresh,
    /// conditional and range requests, `Vary`, stale entries) is left to pingora-cache,
    /// which runs next.
    pub async fn fresh_hit(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<(Box<ResponseHeader>, bytes::Bytes)> {
        use http::header::TRANSFER_ENCODING;
        let lookup = ctx.cache.lookup.as_ref()?;
        if !answerable(req, lookup) {
            return None;
        }
        let key = lookup.key();
        let found = self.store.find_entry(&key).await;
        let fresh = found.as_ref().and_then(|(entry, tier)| {
            let ready = entry.ready()?;
            (ready.fresh_until >= SystemTime::now()).then_some((entry, ready, *tier))
        });
        let Some((entry, ready, tier)) = fresh else {
            ctx.cache.prefetched = Some(Prefetched::new(found));
            return None;
        };
        // The header pingora-cache's hit path sends: with `Age`, as HTTP/1.1, chunked when the
        // stored response has no length, `Accept-Ranges` on a 200 of known length.
        let mut header = Box::new(ready.header.clone());
        let age = SystemTime::now()
            .duration_since(ready.epoch)
            .unwrap_or_default();
        header
            .insert_header(http::header::AGE, age.as_secs())
            .ok()?;
        header.set_version(http::Version::HTTP_11);
        let no_body =
            matches!(header.status.as_u16(), 204 | 304) || header.status.is_informational();
        let length = header.headers.get(http::header::CONTENT_LENGTH);
        if length.is_some_and(|l| l.to_str().is_ok_and(|l| l.parse::<usize>().is_ok()))
            && header.status == http::StatusCode::OK
        {
            header
                .insert_header(http::header::ACCEPT_RANGES, "bytes")
                .ok()?;
        } else if !no_body && length.is_none() {
            header.insert_header(TRANSFER_ENCODING, "chunked").ok()?;
        }
        ctx.cache.tier = Some(tier);
        self.observe(CachePhase::Hit, ctx);
        Some((header, entry.body.clone()))
    }

    /// Runs after a miss of [`fresh_hit`](Self::fresh_hit), with a Redis tier: one request
    /// in the whole fleet fills an entry at a time (the one whose `SET NX` on the entry's
    /// lock succeeds: `None`, it goes upstream). The others wait for the entry to appear and
    /// answer from it, or take the lock themselves when it goes without an entry (the fill
    /// failed or was not cacheable), or go upstream after `cache.lock_timeout_ms`. Redis
    /// unreachable: `None` (each process's own cache lock still collapses its misses).
    pub async fn fleet_fill(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<(Box<ResponseHeader>, bytes::Bytes)> {
        let lookup = ctx.cache.lookup.as_ref()?;
        if self.store.redis().is_none() || !answerable(req, lookup) {
            return None;
        }
        let key = lookup.key();
        let token = hex::encode(rand::random::<[u8; 12]>());
        let deadline = tokio::time::Instant::now() + self.lock_timeout;
        loop {
            match self.store.lock_fill(&key, &token, self.lock_timeout).await {
                Ok(true) => {
                    ctx.cache.fill_lock = Some(FillLock {
                        token,
                        handed: Arc::default(),
                    });
                    return None;
                }
                Ok(false) => {}
                Err(_) => return None,
            }
            tokio::time::sleep(FLEET_FILL_POLL).await;
            if let Some(hit) = self.fresh_hit(req, ctx).await {
                return Some(hit);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Runs in `cache_hit_filter` when an entry was found: notes the tier; an agent's refresh
    /// turns the hit into a miss.
    pub fn hit_filter(&self, hit: &HitHandler, ctx: &mut RequestCtx) -> Option<ForcedFreshness> {
        ctx.cache.tier = hit.as_any().downcast_ref::<Hit>().map(|h| h.tier);
        ctx.cache
            .lookup
            .as_ref()
            .is_some_and(|l| l.refresh)
            .then_some(ForcedFreshness::ForceMiss)
    }

    /// Runs in `response_cache_filter` on the upstream's answer (after a paid replay, on the
    /// paid answer; a 402 never gets here as a success).
    /// `stored` is the entry being revalidated, if any.
    pub fn cacheable(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        stored: Option<&CacheMeta>,
        ctx: &RequestCtx,
    ) -> RespCacheable {
        use RespCacheable::Uncacheable;
        let Some(lookup) = &ctx.cache.lookup else {
            return Uncacheable(NoCacheReason::NeverEnabled);
        };
        let status = resp.status.as_u16();
        let status_ok = ((200..300).contains(&status) && status != 206)
            || (status == 404 && self.rules.cache_404);
        if !status_ok {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        if resp.headers.contains_key(http::header::SET_COOKIE) {
            return Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        if resp.headers.get_all(http::header::VARY).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|n| n.trim_ascii() == b"*")
        }) {
            return Uncacheable(NoCacheReason::Custom("vary-star"));
        }
        let cc = CacheControl::from_resp_headers(resp);
        if let Some(cc) = &cc
            && (cc.no_store() || cc.no_cache() || (cc.private() && lookup.shared))
        {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        // On a shared route, an answer to a request with credentials is only kept when the
        // upstream says it may be shared (RFC 9111 §3.5).
        if lookup.shared
            && (req.headers.contains_key(http::header::AUTHORIZATION)
                || req.headers.contains_key(http::header::COOKIE))
            && !cc
                .as_ref()
                .is_some_and(|cc| cc.allow_caching_authorized_req())
        {
            return Uncacheable(NoCacheReason::Custom("credentials"));
        }
        let now = SystemTime::now();
        let fresh_until = cc
            .as_ref()
            .and_then(|cc| cc.fresh_duration())
            .and_then(|ttl| now.checked_add(ttl))
            .or_else(|| calculate_expires_header_time(resp))
            .or_else(|| now.checked_add(lookup.ttl));
        let Some(fresh_until) = fresh_until.filter(|t| *t > now) else {
            return Uncacheable(NoCacheReason::OriginNotCache);
        };
        let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &NO_STALE);
        let mut header = resp.clone();
        for name in x402::RECEIPT_HEADERS {
            header.remove_header(name);
        }
        // The price: of this paid answer, or (a free 304 revalidation) of the stored entry,
        // never from the upstream's own headers.
        header.remove_header(PRICE_HEADER);
        let price = match &ctx.payment.charge {
            Some(charge) => Some(format!("{} {}", charge.amount, charge.symbol)),
            None if ctx.cache.not_modified => stored
                .and_then(|m| m.headers().get(PRICE_HEADER))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            None => None,
        };
        if let Some(price) = price
            && header.insert_header(PRICE_HEADER, price).is_err()
        {
            return Uncacheable(NoCacheReason::InternalError);
        }
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
    }

    /// Runs in the service's `response_filter` before the stages: what the agent is getting.
    pub fn observe(&self, phase: CachePhase, ctx: &mut RequestCtx) {
        let tier = ctx.cache.tier.unwrap_or(Tier::Memory);
        let outcome = match (&ctx.cache.lookup, phase) {
            (None, _) => Outcome::Bypass,
            (Some(_), CachePhase::Hit) => Outcome::Hit(tier),
            (Some(_), CachePhase::Stale | CachePhase::StaleUpdating) => Outcome::Stale(tier),
            (Some(l), _) if l.refresh => Outcome::Bypass,
            (Some(_), _) => Outcome::Miss,
        };
        if matches!(outcome, Outcome::Hit(_) | Outcome::Stale(_)) {
            // A stored copy answers after a paid attempt failed (stale-if-error): nothing was
            // delivered for that payment, so it is not reported or committed (the hold is
            // released in `logging`).
            ctx.payment.charge = None;
        }
        ctx.cache.outcome = Some(outcome);
    }
}

/// SHA-256 of a POST body that fits the retry buffer (it stays there and is sent upstream on
/// a miss). Bodies of unknown or larger size are not cached.
/// Whether the cache stage answers `req` itself from a fresh entry (else pingora-cache's own
/// hit path does: refreshes, methods other than GET/HEAD, conditional and range requests).
fn answerable(req: &RequestHeader, lookup: &Lookup) -> bool {
    use http::header::IF_UNMODIFIED_SINCE;
    use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};
    let conditional = [
        RANGE,
        IF_RANGE,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
    ];
    !lookup.refresh
        && matches!(req.method, http::Method::GET | http::Method::HEAD)
        && !conditional.iter().any(|h| req.headers.contains_key(h))
}

async fn hash_body(session: &mut Session) -> Result<String, &'static str> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    match declared {
        Some(n) if n <= MAX_KEYED_BODY => {}
        _ => return Err("body-size"),
    }
    let body = crate::proxy::upstream::buffered_body(session)
        .await
        .map_err(|_| "body-read")?;
    Ok(hex::encode(Sha256::digest(&body)))
}

#[async_trait]
impl Stage for CacheStage {
    fn name(&self) -> &'static str {
        "cache"
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        match self.decide(session, ctx).await {
            Ok(lookup) => ctx.cache.lookup = Some(lookup),
            Err(reason) => ctx.cache.bypass = Some(reason),
        }
        Flow::Continue
    }

    /// Notes a `304 Not Modified` (a revalidation of a stored entry).
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.cache.not_modified = resp.status == http::StatusCode::NOT_MODIFIED;
        Ok(())
    }

    /// Labels the answer: `X-Pag0-Cache`, and on hits of paid responses `X-Pag0-Saved`.
    async fn response_filter(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let price = resp
            .remove_header(PRICE_HEADER)
            .and_then(|v| v.to_str().ok().map(str::to_string));
        let Some(outcome) = ctx.cache.outcome else {
            return Ok(());
        };
        resp.insert_header(CACHE_HEADER, outcome.header())?;
        if matches!(outcome, Outcome::Hit(_) | Outcome::Stale(_))
            && let Some(price) = price
        {
            resp.insert_header(SAVED_HEADER, price.as_str())?;
            if let Some((amount, symbol)) = price.split_once(' ')
                && let Ok(amount) = amount.parse::<U256>()
            {
                ctx.cache.saved = Some((symbol.to_string(), amount));
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) {
        if matches!(ctx.cache.outcome, Some(Outcome::Hit(_) | Outcome::Stale(_))) {
            ctx.cache.bytes_served += body.as_ref().map_or(0, |b| b.len() as u64);
        }
    }

    async fn logging(&self, ctx: &mut RequestCtx) {
        // A fill lock whose response was never handed over for storing goes now (a stored
        // one goes with the entry's Redis write).
        if let (Some(lock), Some(lookup)) = (ctx.cache.fill_lock.take(), &ctx.cache.lookup)
            && !lock.handed.load(std::sync::atomic::Ordering::Acquire)
        {
            let key = lookup.key();
            self.store.release_fill(&key, &lock).await;
        }
        let outcome = ctx.cache.outcome.unwrap_or(if ctx.cache.lookup.is_some() {
            Outcome::Miss
        } else {
            Outcome::Bypass
        });
        let project = ctx.project_label();
        let (result, tier) = outcome.labels();
        self.metrics
            .cache_requests
            .with_label_values(&[project, result, tier])
            .inc();
        let saved = ctx.cache.saved.as_ref().map(|(s, a)| (s.as_str(), *a));
        if let Some((symbol, amount)) = saved {
            self.metrics
                .cache_saved
                .with_label_values(&[project, symbol])
                .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
        }
        self.stats
            .record(project, outcome, ctx.cache.bytes_served, saved);
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_url;

    #[test]
    fn urls_are_normalized() {
        let cases = [
            (
                "HTTP://API.Example.com:80/A/b?z=1&a=2",
                "http://api.example.com/A/b?a=2&z=1",
            ),
            // The path is what the upstream gets: never resolved or decoded.
            (
                "http://h.io/v1/items/%2e%2e/report",
                "http://h.io/v1/items/%2e%2e/report",
            ),
            ("http://h.io/a/./b/../c", "http://h.io/a/./b/../c"),
            ("http://h.io/p#frag", "http://h.io/p"),
            ("https://h.io:443/x", "https://h.io/x"),
            (
                "https://h.io:8443/x?b=1&a=1&b=0",
                "https://h.io:8443/x?a=1&b=1&b=0",
            ),
            ("http://[::1]:8080/p?", "http://[::1]:8080/p"),
            ("http://h.io", "http://h.io/"),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_url(raw).unwrap(), expected, "{raw}");
        }
        for bad in [
            "not a url",
            "ftp://h/x",
            "http:///x",
            "http://h:99999/",
            "http://h/a b",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
    }
}
