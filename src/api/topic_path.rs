//! Extracts the topic from `/topics/{topic}` and `/retainedMessage/{topic}`.
//!
//! The router matches on the raw path and axum percent-decodes the captured rest exactly once,
//! so SDKs' `a%2Fb%20c` and curl users' literal `a/b c` both arrive as the topic `a/b c`, and a
//! literal `%25` stays a percent sign.

use axum::extract::{FromRef, FromRequestParts, Path};
use axum::http::request::Parts;

use super::ApiError;
use crate::topic::{TopicLimits, TopicName};

pub struct TopicPath(pub TopicName);

impl<S> FromRequestParts<S> for TopicPath
where
    S: Send + Sync,
    TopicLimits: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => raw,
            // The only way a matched catch-all fails to extract is bytes that are not UTF-8.
            Err(_) => {
                return Err(ApiError::invalid(
                    "topic must be valid UTF-8 after percent-decoding",
                ));
            }
        };
        Ok(Self(TopicName::parse(raw, TopicLimits::from_ref(state))?))
    }
}
