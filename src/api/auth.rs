//! Who is calling the HTTP API, and whether they may: [`authenticate`] runs as middleware on the
//! AWS operations' routes, and each handler checks its policy through [`Caller`].
//!
//! Credentials and policies are judged by [`crate::auth`]; this module only takes them off the
//! request (the Authorization header or a presigned URL's query, or else the HTTPS connection's
//! client certificate, see [`Peer`]) and turns failures into AWS errors. The Authorization header
//! and the query string (and anything derived from them) are never logged: the access log names
//! the route template, not the URI. Health probes, the OpenAPI document and the console's files are
//! not behind this middleware: see [`super::router`].

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::browser::{self, cross_site};
use super::payload::{drain, read_limited};
use super::{ApiError, ApiState, Peer};
use crate::auth::{Action, AuthError, Credential, Principal, SigV4Request};
use crate::metrics::AuthFailure;
use crate::store::Owner;
use crate::tls::CertFingerprint;
use crate::topic::{TopicFilter, TopicName};

/// The principal the middleware authenticated, as a request extension.
#[derive(Clone)]
struct Authenticated(Arc<Principal>);

/// How the request says who it is.
enum Credentials<'a> {
    /// `Authorization: AWS4-HMAC-SHA256 Credential=...`, as the AWS SDKs and CLI sign, or the
    /// same signature in the query string (a presigned URL).
    SigV4,
    /// `Authorization: Bearer <token>`, an API token from the config file.
    Bearer(&'a str),
    /// No Authorization header, over HTTPS with a client certificate the CA signed.
    ClientCert(CertFingerprint),
    Missing,
    Unsupported,
}

impl<'a> Credentials<'a> {
    fn of(headers: &'a HeaderMap, query: Option<&str>, peer: Option<&Peer>) -> Self {
        // The header wins over a certificate: a client that signs or sends a token means to be
        // that caller, whatever certificate its TLS stack happens to present. A bad header is
        // therefore an error even on a connection with a good certificate. A presigned URL
        // counts as signing; with an Authorization header too, the SigV4 check refuses it as
        // malformed.
        if crate::auth::is_presigned(query) {
            return Self::SigV4;
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return peer
                .and_then(Peer::client_cert)
                .map_or(Self::Missing, Self::ClientCert);
        };
        let Ok(value) = value.to_str() else {
            return Self::Unsupported;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("AWS4-HMAC-SHA256") {
            Self::SigV4
        } else if scheme.eq_ignore_ascii_case("Bearer") {
            Self::Bearer(rest.trim())
        } else {
            Self::Unsupported
        }
    }
}

/// Authenticates a request to an AWS operation when principals are configured, and passes it
/// on with its principal attached; otherwise answers with the AWS error (401 or 403). Without
/// principals it applies the cross-site rule instead (`browser`), in this one layer.
pub async fn authenticate(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if !state.auth.is_enabled() {
        if let Some(err) = browser::cross_site_refusal(&state, &req) {
            drain(req.into_body()).await;
            return err.into_response();
        }
        return next.run(req).await;
    }
    match authenticated(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(err) => {
            // The kind only: the cause could quote the credentials the client sent.
            tracing::debug!(kind = err_kind(&err), "authentication failed");
            if let ApiError::Unauthenticated(e) = &err {
                state.metrics.auth_failure(failure_kind(e));
            }
            err.into_response()
        }
    }
}

/// How `/metrics` counts a refusal of credentials.
fn failure_kind(e: &AuthError) -> AuthFailure {
    match e {
        AuthError::MissingCredentials => AuthFailure::missing,
        AuthError::UnknownAccessKey
        | AuthError::BadCredentials
        | AuthError::UnmappedCertificate => AuthFailure::unknown_credentials,
        AuthError::SignatureMismatch
        | AuthError::RequestTimeTooSkewed
        | AuthError::PresignedUrlExpired => AuthFailure::bad_signature,
        AuthError::Malformed(_) => AuthFailure::malformed,
    }
}

fn err_kind(err: &ApiError) -> &'static str {
    err.parts().1
}

async fn authenticated(state: &ApiState, req: Request) -> Result<Request, ApiError> {
    let mut credential = None;
    let verified =
        match Credentials::of(req.headers(), req.uri().query(), Peer::of(req.extensions())) {
            Credentials::SigV4 => return verify_sigv4(state, req).await,
            Credentials::Bearer(token) => {
                credential = Some(Credential::token(token));
                state.auth.verify_bearer(token).map_err(ApiError::from)
            }
            // Browsers present a certificate to any site that asks, as they send cookies, so
            // a page elsewhere could make one publish as the certificate's principal.
            Credentials::ClientCert(_) if cross_site(req.headers(), "https") => {
                Err(ApiError::Forbidden(
                    "a client certificate does not authenticate a cross-site browser request; \
             send credentials (SigV4 or a bearer token)"
                        .into(),
                ))
            }
            Credentials::ClientCert(digest) => {
                credential = Some(Credential::ClientCert(digest));
                state
                    .auth
                    .verify_client_cert(&digest)
                    .map_err(ApiError::from)
            }
            Credentials::Missing => Err(AuthError::MissingCredentials.into()),
            Credentials::Unsupported => Err(AuthError::Malformed(
                "the Authorization header must be AWS4-HMAC-SHA256 (SigV4) or Bearer".into(),
            )
            .into()),
        };
    let (mut parts, body) = req.into_parts();
    match verified {
        Ok(principal) => {
            parts.extensions.insert(Authenticated(principal));
            // For what outlives the request (a watch) to check again after a reload.
            if let Some(credential) = credential {
                parts.extensions.insert(credential);
            }
            Ok(Request::from_parts(parts, body))
        }
        Err(err) => {
            // Answering before the client has sent its body would break its connection under
            // its next request: see `payload`.
            drain(body).await;
            Err(err)
        }
    }
}

/// SigV4 signs the body's hash, so the body is read (within the payload limit) before anything
/// else, and handed on to the handler from memory.
async fn verify_sigv4(state: &ApiState, req: Request) -> Result<Request, ApiError> {
    let (mut parts, body) = req.into_parts();
    let body = read_limited(&parts.headers, body, state.max_payload_bytes).await?;
    let (principal, credential) = state.auth.verify_sigv4_with_key(
        &SigV4Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            payload_sha256: Sha256::digest(&body).into(),
        },
        SystemTime::now(),
    )?;
    parts.extensions.insert(Authenticated(principal));
    if let Some(credential) = credential {
        parts.extensions.insert(credential);
    }
    Ok(Request::from_parts(parts, Body::from(body)))
}

/// The name of the principal [`authenticate`] attached to a request; `None` when
/// authentication is off (every caller is the anonymous principal).
pub(super) fn principal_name(extensions: &Extensions) -> Option<&str> {
    extensions
        .get::<Authenticated>()
        .map(|Authenticated(principal)| principal.name.as_str())
}

/// Who is calling, for a handler to check against its policy: the authenticated principal, or
/// anyone at all when no principals are configured.
pub struct Caller(Option<Arc<Principal>>);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match parts.extensions.get::<Authenticated>() {
            Some(Authenticated(principal)) => Ok(Self(Some(principal.clone()))),
            // A route outside the middleware: refuse rather than let it through unchecked.
            None if state.auth.is_enabled() => Err(AuthError::MissingCredentials.into()),
            None => Ok(Self(None)),
        }
    }
}

impl Caller {
    /// The authenticated principal; `None` when authentication is off.
    pub fn principal(&self) -> Option<&Principal> {
        self.0.as_deref()
    }

    /// Whom the caller's retained publishes are charged to.
    pub fn owner(&self) -> Owner {
        Owner::of(self.principal())
    }

    /// Whether the caller's policy allows `action` on `topic` (on nothing in particular for
    /// account-wide actions such as listing); 403 `ForbiddenException` if not.
    pub fn authorize(&self, action: Action, topic: Option<&TopicName>) -> Result<(), ApiError> {
        let Some(principal) = &self.0 else {
            return Ok(());
        };
        if principal.allows(action, topic.map_or("", TopicName::as_str), None) {
            return Ok(());
        }
        let action = action.name();
        Err(ApiError::Forbidden(match topic {
            Some(topic) => format!("not authorized to perform {action} on topic {topic}"),
            None => format!("not authorized to perform {action}"),
        }))
    }

    /// Whether the caller's policy allows `action` on the MQTT client `client_id` (a
    /// `client/` resource); 403 `ForbiddenException` if not.
    pub fn authorize_client(&self, action: Action, client_id: &str) -> Result<(), ApiError> {
        let Some(principal) = &self.0 else {
            return Ok(());
        };
        if principal.allows(action, client_id, None) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "not authorized to perform {} on client {client_id}",
            action.name()
        )))
    }

    /// Whether the caller's policy allows `action` on the topic filter `filter` (a
    /// `topicfilter/` resource must cover it); 403 `ForbiddenException` if not.
    pub fn authorize_filter(&self, action: Action, filter: &TopicFilter) -> Result<(), ApiError> {
        let Some(principal) = &self.0 else {
            return Ok(());
        };
        if principal.allows(action, filter.as_str(), None) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "not authorized to perform {} on topic filter {filter}",
            action.name()
        )))
    }
}

#[cfg(test)]
mod tests {
    //! Which credentials a request is taken to carry; each kind is then checked by its
    //! `crate::auth::Authenticator` method, whose tests are in `crate::auth`.

    use axum::http::HeaderValue;

    use super::*;

    fn with_authorization(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn a_sigv4_authorization_header_is_sigv4() {
        let headers = with_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/iotdata/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=00",
        );
        assert!(matches!(
            Credentials::of(&headers, None, None),
            Credentials::SigV4
        ));
    }

    #[test]
    fn a_presigned_url_is_sigv4_with_or_without_an_authorization_header() {
        let query = Some("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00");
        assert!(matches!(
            Credentials::of(&HeaderMap::new(), query, None),
            Credentials::SigV4
        ));
        // With a header too, it is still judged as SigV4, which refuses it as malformed.
        let headers = with_authorization("Bearer tok-123");
        assert!(matches!(
            Credentials::of(&headers, query, None),
            Credentials::SigV4
        ));
    }

    #[test]
    fn a_bearer_header_carries_its_token_trimmed() {
        let headers = with_authorization("Bearer  tok-123 ");
        assert!(matches!(
            Credentials::of(&headers, None, None),
            Credentials::Bearer("tok-123")
        ));
    }

    #[test]
    fn no_header_no_signature_and_no_certificate_is_missing() {
        assert!(matches!(
            Credentials::of(&HeaderMap::new(), Some("topic=a"), None),
            Credentials::Missing
        ));
    }

    #[test]
    fn another_scheme_is_unsupported() {
        let headers = with_authorization("Basic dXNlcjpwYXNz");
        assert!(matches!(
            Credentials::of(&headers, None, None),
            Credentials::Unsupported
        ));
    }
}
