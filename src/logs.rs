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
/// `name=value`, in any case) replaced by `[redacted]`. A value ends at a quote, a line break
/// (raw or escaped as `\r`/`\n`), a comma or a closing brace.
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
            // Separator: optional closing quote, then ':' or '=', then spaces and quotes.
            let mut i = from;
            if matches!(bytes.get(i), Some(b'"' | b'\'')) {
                i += 1;
            }
            if !matches!(bytes.get(i), Some(b':' | b'=')) {
                continue;
            }
            i += 1;
            while matches!(bytes.get(i), Some(b' ' | b'\t' | b'"' | b'\'')) {
                i += 1;
            }
            let end = bytes[i..]
                .iter()
                .position(|&b| matches!(b, b'"' | b'\'' | b'\r' | b'\n' | b'\\' | b',' | b'}'))
                .map_or(bytes.len(), |n| i + n);
            if end > i {
                spans.push((i, end));
            }
        }
    }
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str("[redacted]");
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
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
