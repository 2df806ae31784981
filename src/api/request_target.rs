//! A raw `#` in the request target. hyper cuts the `#...` off before the router sees the target
//! (`server::request_line` notices it and marks the request with [`RawFragment`]), so
//! `POST /topics/a#b` would publish to `a` and `?topicFilter=a/#` would list `a/`. Clients do
//! not send fragments; a `#` there is a topic or filter character that was not percent-encoded.

use axum::extract::Request;

use super::ApiError;

/// Marks a request whose target, as sent, had a `#` that hyper cut off with what followed it.
#[derive(Debug, Clone, Copy)]
pub struct RawFragment;

/// The refusal of a request marked with [`RawFragment`]: 400 `InvalidRequestException`, before
/// any route runs, so nothing is stored.
pub fn fragment_refusal(req: &Request) -> Option<ApiError> {
    req.extensions().get::<RawFragment>()?;
    Some(ApiError::invalid(
        "the request target contains a raw '#', which would end it there (HTTP reads what \
         follows as a fragment); percent-encode '#' as %23 in topics and topic filters",
    ))
}
