//! Request framing pag0 forwards only when it is unambiguous (RFC 9112 §6): one decimal
//! `Content-Length`, or `Transfer-Encoding: chunked` alone. A list (`5, 5`), a repeated field
//! or another coding (`gzip, chunked`, which Pingora would forward as plain `chunked`) could be
//! read one way by pag0 and another by the upstream, so it is refused before any stage runs.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;

use crate::proxy::respond::{ErrorCode, Reply};

/// `Ok` when the request's framing has a single reading.
pub fn check(req: &RequestHeader) -> Result<(), Reply> {
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let decimal = !first.is_empty() && first.as_bytes().iter().all(u8::is_ascii_digit);
        if !decimal || lengths.next().is_some() {
            return Err(Reply::new(
                ErrorCode::BadRequest,
                "ambiguous Content-Length: send one decimal value",
            ));
        }
    }
    let mut codings = req.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let chunked = first
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !chunked || codings.next().is_some() {
            return Err(Reply::new(
                ErrorCode::BadRequest,
                "Transfer-Encoding must be chunked alone (no other coding, no list)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn one_reading_passes_and_every_ambiguous_framing_is_refused() {
        for ok in [
            vec![],
            vec![("content-length", "5")],
            vec![("transfer-encoding", "chunked")],
            vec![("Transfer-Encoding", " Chunked ")],
        ] {
            assert!(check(&req(&ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            vec![("content-length", "5, 5")],
            vec![("content-length", "5"), ("content-length", "5")],
            vec![("content-length", "+5")],
            vec![("content-length", "")],
            vec![("transfer-encoding", "gzip, chunked")],
            vec![
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("transfer-encoding", "identity")],
        ] {
            let e = check(&req(&bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
        }
    }
}
