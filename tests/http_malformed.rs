//! Requests no HTTP client library would send, over raw TCP: what hyper refuses before any
//! route sees it still gets the AWS error shape, and a raw `#` in a request target (which
//! hyper would cut off with what follows) is refused rather than publishing to the truncated
//! topic.

mod common;

use common::raw_http::{RawResponse, closed, connect, exchange};
use common::{Backend, TestApp, spawn_app};

/// Sends `request` on a new connection; returns the answer, insisting that the connection is
/// closed after it when `closes`.
async fn answer(app: &TestApp, request: &[u8], closes: bool) -> RawResponse {
    let mut stream = connect(app.http_addr).await;
    let res = exchange(&mut stream, request).await;
    if closes {
        closed(&mut stream).await;
    }
    res
}

#[tokio::test]
async fn hyper_refusals_carry_the_aws_error_shape() {
    let app = spawn_app(Backend::Sqlite).await;
    let many_headers: String = (0..=100).map(|i| format!("X-{i}: a\r\n")).collect();
    let long_target = format!("/{}", "a".repeat(65_534));
    for (what, request, status, kind, says) in [
        (
            "a control character in the target",
            b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "InvalidRequestException",
            "not valid HTTP/1.1",
        ),
        (
            "a space in a header name",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(),
            400,
            "InvalidRequestException",
            "not valid HTTP/1.1",
        ),
        (
            "two different Content-Lengths",
            b"POST /topics/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
            "InvalidRequestException",
            "not valid HTTP/1.1",
        ),
        (
            "101 headers",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "RequestEntityTooLargeException",
            "at most 100 headers",
        ),
        (
            "a target over 65,534 bytes",
            format!("GET {long_target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
            "RequestEntityTooLargeException",
            "longer than 65534 bytes",
        ),
    ] {
        let res = answer(&app, &request, true).await;
        println!("{what}");
        res.assert_error(status, kind, says);
    }
    app.stop().await;
}

async fn a_raw_hash_in_the_target_is_refused_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("a", "original").await;
    let before = app.snapshot().await;
    let host = app.http_addr;
    for request in [
        format!(
            "POST /topics/a?retain=true#b HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nnew"
        ),
        format!(
            "POST /topics/a#b?retain=true HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nnew"
        ),
        format!("GET /retainedMessage?topicFilter=a/# HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("GET /retainedMessage/a#b HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    ] {
        let res = answer(&app, request.as_bytes(), false).await;
        println!("{request}");
        res.assert_error(400, "InvalidRequestException", "%23");
    }

    // The same on a kept-alive connection, after a first request.
    let mut stream = connect(app.http_addr).await;
    let first = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(exchange(&mut stream, first.as_bytes()).await.status, 200);
    let second = format!(
        "POST /topics/a?retain=true#b HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nnew"
    );
    let res = exchange(&mut stream, second.as_bytes()).await;
    res.assert_error(400, "InvalidRequestException", "%23");
    assert_eq!(app.snapshot().await, before);

    // Encoded, it is a topic character like any other (and a wildcard: refused in a name).
    let res = answer(
        &app,
        format!("GET /retainedMessage?topicFilter=a%2F%23 HTTP/1.1\r\nHost: {host}\r\n\r\n")
            .as_bytes(),
        false,
    )
    .await;
    assert_eq!(res.status, 200);
    app.stop().await;
}

for_each_backend!(a_raw_hash_in_the_target_is_refused_and_stores_nothing);
