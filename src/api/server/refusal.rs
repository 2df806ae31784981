//! hyper answers requests it cannot parse by itself, before any service sees them: a bare
//! `400 Bad Request`, `414 URI Too Long` or `431 Request Header Fields Too Large` with an empty
//! body, and then closes the connection. It offers no hook for that answer, so the connection's
//! socket wrapper recognizes those bytes on their way out and writes this module's answer
//! instead: the same status with the AWS error shape every other refusal has
//! (`x-amzn-ErrorType`, `x-amzn-RequestId`, a JSON `{"message": ...}`).
//!
//! Only hyper's own answers match: they are the whole of a write (their head is written in one
//! piece, with `content-length: 0`), and every response retaind itself sends carries
//! `x-amzn-RequestId`. Pure: bytes in, bytes out.

use bytes::Bytes;

use crate::api::{ApiError, ErrorBody};

/// hyper's longest request target (`http::uri`'s limit).
const MAX_TARGET_BYTES: usize = 65_534;
/// Most header lines in a request head (hyper's default); the connection sets it, and a head
/// with more is refused here.
pub(super) const MAX_HEADERS: usize = 100;
/// Most bytes of a request head: request line and headers (about hyper's default). Bounds what
/// a connection buffers while its head arrives; the connection sets it, and a longer head is
/// refused here.
pub(super) const MAX_HEAD_BYTES: usize = 400 * 1024;

/// What goes out instead of one of hyper's refusals.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Replacement {
    pub(super) answer: Bytes,
    pub(super) request_id: String,
    pub(super) status: u16,
}

/// The replacement for `written` when it is one of hyper's own refusals.
pub(super) fn rewrite(written: &[u8]) -> Option<Replacement> {
    let rest = written.strip_prefix(b"HTTP/1.1 ")?;
    let err = if rest.starts_with(b"400 ") {
        ApiError::invalid(
            "the request is not valid HTTP/1.1: its request line or a header is malformed",
        )
    } else if rest.starts_with(b"414 ") {
        ApiError::UriTooLong {
            limit: MAX_TARGET_BYTES,
        }
    } else if rest.starts_with(b"431 ") {
        ApiError::HeadTooLarge {
            max_headers: MAX_HEADERS,
            max_bytes: MAX_HEAD_BYTES,
        }
    } else {
        return None;
    };
    let head_end = find(written, b"\r\n\r\n")? + 4;
    let head = written[..head_end].to_ascii_lowercase();
    if head_end != written.len()
        || find(&head, b"\r\nx-amzn-requestid:").is_some()
        || find(&head, b"\r\ncontent-length: 0\r\n").is_none()
    {
        return None;
    }
    let status_line_end = find(written, b"\r\n")?;
    let date = head
        .split(|&b| b == b'\n')
        .zip(written[..head_end].split(|&b| b == b'\n'))
        .find(|(lower, _)| lower.starts_with(b"date:"))
        .map(|(_, line)| line);
    let request_id = uuid::Uuid::new_v4().to_string();
    Some(Replacement {
        answer: answer(&written[..status_line_end], date, &err, &request_id),
        status: err.parts().0.as_u16(),
        request_id,
    })
}

/// A complete response: `status_line`, the AWS error headers, hyper's `date` line if any, and
/// the JSON body. The connection closes after it, as hyper's own answer said.
fn answer(status_line: &[u8], date: Option<&[u8]>, err: &ApiError, request_id: &str) -> Bytes {
    let (_, name) = err.parts();
    let body = serde_json::to_vec(&ErrorBody {
        message: err.to_string(),
    })
    .expect("a string always serializes");
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(status_line);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\nx-amzn-errortype: {name}\r\n\
             x-amzn-requestid: {request_id}\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        )
        .as_bytes(),
    );
    if let Some(date) = date {
        out.extend_from_slice(date);
        out.push(b'\n');
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Bytes::from(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hyper 1.x writes, byte for byte.
    fn hyper_says(status: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n\
             date: Wed, 02 Dec 2026 03:08:47 GMT\r\n\r\n"
        )
        .into_bytes()
    }

    fn parsed(answer: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn hyper_refusals_get_the_aws_error_shape() {
        for (status, name, says) in [
            (
                "400 Bad Request",
                "InvalidRequestException",
                "not valid HTTP/1.1",
            ),
            (
                "414 URI Too Long",
                "RequestEntityTooLargeException",
                "65534 bytes",
            ),
            (
                "431 Request Header Fields Too Large",
                "RequestEntityTooLargeException",
                "at most 100 headers",
            ),
        ] {
            let Replacement {
                answer,
                request_id: id,
                status: code,
            } = rewrite(&hyper_says(status)).expect(status);
            assert_eq!(code.to_string(), status[..3]);
            let (head, body) = parsed(&answer);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(
                head.contains(&format!("\r\nx-amzn-errortype: {name}\r\n")),
                "{head}"
            );
            assert!(
                head.contains(&format!("\r\nx-amzn-requestid: {id}\r\n")),
                "{head}"
            );
            assert!(
                head.contains("\r\ndate: Wed, 02 Dec 2026 03:08:47 GMT"),
                "{head}"
            );
            let length = format!("\r\ncontent-length: {}\r\n", answer.len() - head.len() - 4);
            assert!(head.contains(&length), "{head}");
            assert!(body["message"].as_str().unwrap().contains(says), "{body}");
        }
    }

    #[test]
    fn responses_of_retaind_itself_pass_unchanged() {
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
            x-amzn-errortype: InvalidRequestException\r\nx-amzn-requestid: 1\r\n\
            content-length: 0\r\n\r\n";
        assert_eq!(rewrite(own), None);
        // Other statuses, a head with a body after it, part of a head, other bytes.
        assert_eq!(rewrite(&hyper_says("200 OK")), None);
        let mut with_body = hyper_says("400 Bad Request");
        with_body.extend_from_slice(b"{}");
        assert_eq!(rewrite(&with_body), None);
        assert_eq!(rewrite(b"HTTP/1.1 400 Bad Request\r\n"), None);
        assert_eq!(rewrite(&[0x82, 0x02, 0x20, 0x02]), None);
    }
}
