//! What reaches pag0's process log, whoever logs it (pag0 or a dependency):
//!
//! * **No secrets.** Pingora prints request heads in some records (`Fail to proxy: …
//!   InvalidHTTPHeader … buf: …` at debug, `Request header: …` at trace). The value of every
//!   credential-carrying header ([`SENSITIVE_HEADERS`]) is replaced by `[redacted]` in every
//!   record, at every level, before it is written.
//! * **No per-request noise at the default level.** Pingora reports each request it could not
//!   proxy as a WARN or ERROR (a paid call is a 402 pag0 retries; a declined offer is a 402
//!   pag0 answers; a client that went away, an upstream that refused). pag0 answers each of
//!   these with a JSON error code and counts it in `/metrics`, so Pingora's per-request and
//!   per-connection records are demoted to debug. Startup, listener and runtime records keep
//!   their level: those are for an operator to act on.

use std::borrow::Cow;

use log::{Level, Log, Metadata, Record};

/// Headers whose values are secrets: agent credentials, upstream credentials, x402 payment
/// signatures (v2 and v1), cookies.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "proxy-authorization",
    "authorization",
    "x-pag0-api-key",
    "payment-signature",
    "x-payment",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Log targets whose warnings and errors are about one request or connection.
const PER_REQUEST_TARGETS: &[&str] = &[
    "pingora_proxy",
    "pingora_core::protocols",
    "pingora_core::connectors",
    "pingora_core::apps",
];

/// A logger that redacts secrets and demotes per-request records, then hands them to `inner`.
pub struct Filtered<L> {
    inner: L,
}

impl<L: Log> Filtered<L> {
    pub fn new(inner: L) -> Filtered<L> {
        Filtered { inner }
    }
}

/// The level a record is written at.
fn level_of(metadata: &Metadata) -> Level {
    let per_request = PER_REQUEST_TARGETS
        .iter()
        .any(|t| metadata.target().starts_with(t));
    if per_request && metadata.level() < Level::Debug {
        Level::Debug
    } else {
        metadata.level()
    }
}

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let metadata = Metadata::builder()
            .level(level_of(metadata))
            .target(metadata.target())
            .build();
        self.inner.enabled(&metadata)
    }

    fn log(&self, record: &Record) {
        let level = level_of(record.metadata());
        let metadata = Metadata::builder()
            .level(level)
            .target(record.target())
            .build();
        if !self.inner.enabled(&metadata) {
            return;
        }
        let text = record.args().to_string();
        let text = redact(&text);
        self.inner.log(
            &Record::builder()
                .metadata(metadata)
                .args(format_args!("{text}"))
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .key_values(record.key_values())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// `text` with the value after every sensitive header name (`name: value`, `"name": "value"`,
/// `name=value`, in any case, also as printed escaped by `Debug`) and the credentials of every
/// `scheme://user:password@` URL replaced by `[redacted]`. A quoted value ends at its closing
/// quote; any other value at a line break (raw, or escaped as `\r` / `\n`). Redacting too much
/// of a line is preferred to printing a secret.
pub fn redact(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for name in SENSITIVE_HEADERS {
        let mut from = 0;
        while let Some(found) = lower[from..].find(name) {
            let start = from + found;
            from = start + name.len();
            // A name starts a token: at the start, after a non-name byte, or after an escaped
            // line break (`\r\n` as printed by `Debug`).
            let bounded = start == 0
                || !is_name_byte(bytes[start - 1])
                || (start >= 2 && bytes[start - 2] == b'\\');
            if !bounded || bytes.get(from).is_some_and(|&b| is_name_byte(b)) {
                continue;
            }
            if let Some(span) = value_after(bytes, from) {
                spans.push(span);
            }
        }
    }
    spans.extend(url_credentials(&lower));
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        if end <= at {
            continue;
        }
        let start = start.max(at);
        out.push_str(&text[at..start]);
        out.push_str("[redacted]");
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// The span of the value after a header name ending at `i`: optional closing quote and
/// spaces, `:` or `=`, then spaces, tabs and quotes (raw or escaped) before the value.
fn value_after(bytes: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let at = |i: usize| bytes.get(i).copied();
    let escaped = |i: usize, c: u8| at(i) == Some(b'\\') && at(i + 1) == Some(c);
    if matches!(at(i), Some(b'"' | b'\'')) {
        i += 1;
    } else if escaped(i, b'"') {
        i += 2;
    }
    while at(i) == Some(b' ') {
        i += 1;
    }
    if !matches!(at(i), Some(b':' | b'=')) {
        return None;
    }
    i += 1;
    let mut quoted = false;
    loop {
        match at(i) {
            Some(b' ' | b'\t') => i += 1,
            Some(b'"' | b'\'') => {
                quoted = true;
                i += 1;
            }
            Some(b'\\') if matches!(at(i + 1), Some(b't' | b'"')) => i += 2,
            _ => break,
        }
    }
    let start = i;
    while let Some(b) = at(i) {
        match b {
            b'\r' | b'\n' => break,
            b'"' | b'\'' if quoted => break,
            b'\\' if matches!(at(i + 1), Some(b'r' | b'n')) => break,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    let end = i.min(bytes.len());
    (end > start).then_some((start, end))
}

/// The `user:password` spans of `scheme://user:password@host` URLs in `lower`.
fn url_credentials(lower: &str) -> Vec<(usize, usize)> {
    let bytes = lower.as_bytes();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find("://") {
        let start = from + found + 3;
        from = start;
        let authority_end = bytes[start..]
            .iter()
            .position(|&b| {
                matches!(
                    b,
                    b'/' | b' ' | b'"' | b'\'' | b'\\' | b'\r' | b'\n' | b'?' | b'#'
                )
            })
            .map_or(bytes.len(), |n| start + n);
        if let Some(at) = bytes[start..authority_end].iter().rposition(|&b| b == b'@') {
            spans.push((start, start + at));
        }
    }
    spans
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_redacted_in_every_form() {
        let raw = r#"Fail to proxy: Downstream InvalidHTTPHeader context: buf: b"GET http://x/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic ZGVtbzpzZWNyZXQ=\r\nX-Pag0-API-Key: pag0_live_abc\r\nBad\x01: y\r\n\r\n""#;
        let out = redact(raw);
        assert!(!out.contains("ZGVtbzpzZWNyZXQ="), "{out}");
        assert!(!out.contains("pag0_live_abc"), "{out}");
        assert!(out.contains("Host: x"), "other headers stay: {out}");
        let debug = r#"headers: {"host": "x", "proxy-authorization": "Basic ZGVtbzpzZWNyZXQ=", "payment-signature": "eyJ4NDAy", "cookie": "a=1; b=2"}"#;
        let out = redact(debug);
        for secret in ["ZGVtbzpzZWNyZXQ=", "eyJ4NDAy", "a=1", "b=2"] {
            assert!(!out.contains(secret), "{secret}: {out}");
        }
        assert!(out.contains(r#""host": "x""#));
        let line = "X-PAYMENT: eyJzaWduYXR1cmUiOiIweGFiIn0=\nnext line";
        assert_eq!(redact(line), "X-PAYMENT: [redacted]\nnext line");
        assert_eq!(redact("authorization=abc def"), "authorization=[redacted]");
    }

    #[test]
    fn escaped_quoted_and_odd_forms_are_redacted_too() {
        let cases = [
            // A tab before the value, escaped by Debug.
            (
                r#"buf: b"Proxy-Authorization:\tBasic c2VjcmV0\r\nHost: x""#,
                "c2VjcmV0",
            ),
            // An escaped quote at the start of a quoted value.
            (r#"{"cookie": "\"abc\"; d=e"}"#, "abc"),
            // A Digest credential with commas and quotes.
            (
                r#"Authorization: Digest username="u", response="6629fae4", nonce="x""#,
                "6629fae4",
            ),
            // Space before the colon.
            ("Proxy-Authorization : Basic c2VjcmV0", "c2VjcmV0"),
            // Non-ASCII bytes printed escaped.
            (r#"buf: b"X-Pag0-API-Key: k\xc3\xa9y-secret\r\n""#, "secret"),
            // Credentials in a URL.
            (
                "Request header: GET http://demo:pag0_key@127.0.0.1:1/x",
                "pag0_key",
            ),
        ];
        for (text, secret) in cases {
            let out = redact(text);
            assert!(!out.contains(secret), "{text} -> {out}");
        }
        assert_eq!(
            redact(r#"b"Cookie: a\r\nHost: h""#),
            r#"b"Cookie: [redacted]\r\nHost: h""#
        );
        assert_eq!(
            redact("see https://example.com/x@y"),
            "see https://example.com/x@y"
        );
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "the authorization expired unused",
            "EIP-3009 authorization (validBefore 10)",
            "cookies: none",
            "x-pag0-api-keys are hashed",
            "",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn per_request_pingora_records_are_debug() {
        let meta =
            |target: &'static str, level| Metadata::builder().target(target).level(level).build();
        assert_eq!(level_of(&meta("pingora_proxy", Level::Error)), Level::Debug);
        assert_eq!(
            level_of(&meta("pingora_proxy::proxy_h1", Level::Warn)),
            Level::Debug
        );
        assert_eq!(level_of(&meta("pingora_proxy", Level::Trace)), Level::Trace);
        assert_eq!(
            level_of(&meta("pingora_core::server", Level::Error)),
            Level::Error
        );
        assert_eq!(level_of(&meta("pag0::settle", Level::Warn)), Level::Warn);
    }
}
