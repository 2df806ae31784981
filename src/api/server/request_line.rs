//! The request target as the client sent it. hyper (through the `http` crate) cuts a `#fragment`
//! off the target without a trace, so `POST /topics/a#b` would publish to `a`. Clients never
//! send fragments (they are for the browser's own use), so a `#` in a request line is a topic or
//! filter that should have been percent-encoded as `%23`.

use axum::http::{Method, Uri};

/// The `#...` that followed the target hyper parsed, when `line` is that request's line as it
/// arrived. `None` when there is none, or when `line` is not this request's (then nothing is
/// known, and nothing is refused).
pub(super) fn cut_fragment(line: &[u8], method: &Method, uri: &Uri) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.trim_end().split(' ');
    let (sent_method, target) = (parts.next()?, parts.next()?);
    let (before, after) = target.split_once('#')?;
    let parsed = uri.path_and_query().map_or("", |pq| pq.as_str());
    (sent_method == method.as_str() && before == parsed).then(|| format!("#{after}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(line: &str, method: &str, uri: &str) -> Option<String> {
        cut_fragment(
            line.as_bytes(),
            &method.parse().unwrap(),
            &uri.parse().unwrap(),
        )
    }

    #[test]
    fn a_fragment_in_the_path_or_query_is_found() {
        assert_eq!(
            of("POST /topics/a#b HTTP/1.1\r\n", "POST", "/topics/a"),
            Some("#b".into())
        );
        assert_eq!(
            of(
                "GET /retainedMessage?topicFilter=a/# HTTP/1.1\r\n",
                "GET",
                "/retainedMessage?topicFilter=a/"
            ),
            Some("#".into())
        );
    }

    #[test]
    fn targets_without_a_fragment_have_none() {
        assert_eq!(
            of("POST /topics/a%23b HTTP/1.1\r\n", "POST", "/topics/a%23b"),
            None
        );
    }

    #[test]
    fn a_line_of_another_request_says_nothing() {
        assert_eq!(
            of("POST /topics/a#b HTTP/1.1\r\n", "GET", "/topics/a"),
            None
        );
        assert_eq!(
            of("POST /topics/x#b HTTP/1.1\r\n", "POST", "/topics/a"),
            None
        );
        assert_eq!(of("X-Header: a#b\r\n", "POST", "/topics/a"), None);
        assert_eq!(of("\u{fffd}\r\n", "POST", "/"), None);
    }
}
