//! Presigned URLs: a SigV4 signature carried in the query string (`X-Amz-Algorithm`,
//! `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`,
//! `X-Amz-Signature`) instead of the `Authorization` header, as botocore's `SigV4QueryAuth`
//! builds them. This module is a parser over `sigv4`: it only takes the parameters off the
//! query into a [`sigv4::Authorization`](super::sigv4::Authorization); the signature and the
//! validity window are checked by [`super::sigv4::verify`], over the same canonical request as
//! the header form minus `X-Amz-Signature`. `sigv4` knows nothing of this module.

use std::time::Duration;

use super::AuthError;
use super::sigv4::{
    ALGORITHM, Authorization, Form, SIGNATURE_PARAM, is_signature_param, malformed, percent_decode,
    signature_fields,
};

/// The longest a presigned URL may be valid for: seven days, as AWS allows.
const MAX_PRESIGNED_EXPIRY_SECS: u64 = 7 * 24 * 60 * 60;

/// A presigned URL's signing parameters, decoded from the query string; see
/// [`Presigned::authorization`].
pub(super) struct Presigned {
    credential: String,
    amz_date: String,
    expires: Duration,
    signed_headers: String,
    signature: String,
}

/// Whether the query string carries a SigV4 signature (a presigned URL), whatever its validity.
pub fn is_presigned(query: Option<&str>) -> bool {
    query.is_some_and(|query| query.split('&').any(is_signature_param))
}

/// Takes a presigned URL's `X-Amz-*` parameters off the query string.
pub(super) fn parse_presigned(query: &str) -> Result<Presigned, AuthError> {
    let (mut algorithm, mut credential, mut amz_date, mut expires) = (None, None, None, None);
    let (mut signed_headers, mut signature) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match percent_decode(k).as_slice() {
            b"X-Amz-Algorithm" => &mut algorithm,
            b"X-Amz-Credential" => &mut credential,
            b"X-Amz-Date" => &mut amz_date,
            b"X-Amz-Expires" => &mut expires,
            b"X-Amz-SignedHeaders" => &mut signed_headers,
            b"X-Amz-Signature" => &mut signature,
            // A session token belongs to temporary AWS credentials, which no principal here
            // has: refused as an access key we do not know.
            b"X-Amz-Security-Token" => return Err(AuthError::UnknownAccessKey),
            _ => continue,
        };
        let value = String::from_utf8(percent_decode(v))
            .map_err(|_| malformed("presigned URL parameters must be UTF-8"))?;
        if slot.replace(value).is_some() {
            return Err(malformed("a presigned URL parameter is repeated"));
        }
    }
    let required = |v: Option<String>, name: &str| {
        v.ok_or_else(|| AuthError::Malformed(format!("presigned URL lacks {name}")))
    };
    if required(algorithm, "X-Amz-Algorithm")? != ALGORITHM {
        return Err(malformed("X-Amz-Algorithm must be AWS4-HMAC-SHA256"));
    }
    let expires = required(expires, "X-Amz-Expires")?
        .parse::<u64>()
        .ok()
        .filter(|secs| (1..=MAX_PRESIGNED_EXPIRY_SECS).contains(secs))
        .ok_or_else(|| malformed("X-Amz-Expires must be a number of seconds from 1 to 604800"))?;
    Ok(Presigned {
        credential: required(credential, "X-Amz-Credential")?,
        amz_date: required(amz_date, "X-Amz-Date")?,
        expires: Duration::from_secs(expires),
        signed_headers: required(signed_headers, "X-Amz-SignedHeaders")?,
        signature: required(signature, SIGNATURE_PARAM)?,
    })
}

impl Presigned {
    pub(super) fn authorization(&self) -> Result<Authorization<'_>, AuthError> {
        signature_fields(
            &self.credential,
            &self.signed_headers,
            &self.signature,
            Form::Query {
                amz_date: &self.amz_date,
                expires: self.expires,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, HeaderValue};
    use sha2::{Digest, Sha256};

    use crate::auth::{AuthConfig, AuthError, Authenticator, SigV4Request};

    const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    /// Presigned once with botocore (`SigV4QueryAuth(creds, "iotdata", "us-east-1",
    /// expires=300)`) for `GET http://localhost:8080/retainedMessage/a%2Fb` at
    /// 2026-11-25T19:27:20Z.
    const GET_PATH: &str = "/retainedMessage/a%2Fb";
    const GET_QUERY: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261125%2Fus-east-1%2Fiotdata%2Faws4_request&X-Amz-Date=20261125T192720Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=113cd347615a751e6fe772c548edd75454a9802d9df38e7fd316babb94d7e997";
    /// The same, as `iotdevicegateway`, for the MQTT-over-WebSocket upgrade `GET /mqtt`.
    const MQTT_QUERY: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261125%2Fus-east-1%2Fiotdevicegateway%2Faws4_request&X-Amz-Date=20261125T192720Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=d0e1ec5ed5ebdf7959612b1f04ad1f6ff010144a3483b355b01f741b0f800ecb";

    fn signed_at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_634_840)
    }

    fn authenticator() -> Authenticator {
        let toml = format!(
            "[[principals]]\nname = \"app\"\naccess_key_id = \"{ACCESS_KEY_ID}\"\n\
             secret_access_key = \"{SECRET}\"\n"
        );
        Authenticator::new(AuthConfig::parse(&toml).expect("valid config")).expect("valid config")
    }

    fn host() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("localhost:8080"));
        headers
    }

    fn check(
        path: &str,
        query: &str,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let req = SigV4Request {
            method: "GET",
            path,
            query: Some(query),
            headers,
            payload_sha256: Sha256::digest(b"").into(),
        };
        authenticator()
            .verify_sigv4(&req, now)
            .map(|p| p.name.to_string())
    }

    #[test]
    fn botocore_presigned_get_authenticates_until_it_expires() {
        let h = host();
        for now in [signed_at(), signed_at() + Duration::from_secs(300)] {
            assert_eq!(check(GET_PATH, GET_QUERY, &h, now).unwrap(), "app");
        }
        assert!(matches!(
            check(
                GET_PATH,
                GET_QUERY,
                &h,
                signed_at() + Duration::from_secs(301)
            ),
            Err(AuthError::PresignedUrlExpired)
        ));
    }

    #[test]
    fn botocore_presigned_websocket_url_authenticates() {
        assert_eq!(
            check("/mqtt", MQTT_QUERY, &host(), signed_at()).unwrap(),
            "app"
        );
    }

    #[test]
    fn a_url_dated_over_five_minutes_ahead_is_refused() {
        let h = host();
        let early = |secs| signed_at() - Duration::from_secs(secs);
        assert!(check(GET_PATH, GET_QUERY, &h, early(300)).is_ok());
        assert!(matches!(
            check(GET_PATH, GET_QUERY, &h, early(301)),
            Err(AuthError::RequestTimeTooSkewed)
        ));
    }

    #[test]
    fn a_tampered_signature_path_or_parameter_is_refused() {
        let h = host();
        let tampered = GET_QUERY.replace("e997", "e998");
        let longer = GET_QUERY.replace("Expires=300", "Expires=3000");
        for (path, query) in [
            (GET_PATH, tampered.as_str()),
            ("/retainedMessage/a%2Fc", GET_QUERY),
            (GET_PATH, longer.as_str()),
        ] {
            assert!(matches!(
                check(path, query, &h, signed_at()),
                Err(AuthError::SignatureMismatch)
            ));
        }
    }

    #[test]
    fn expires_must_be_an_integer_from_one_second_to_seven_days() {
        let h = host();
        let without = GET_QUERY.replace("X-Amz-Expires=300&", "");
        for query in [
            without,
            GET_QUERY.replace("Expires=300", "Expires=0"),
            GET_QUERY.replace("Expires=300", "Expires=604801"),
            GET_QUERY.replace("Expires=300", "Expires=5m"),
        ] {
            assert!(matches!(
                check(GET_PATH, &query, &h, signed_at()),
                Err(AuthError::Malformed(_))
            ));
        }
    }

    #[test]
    fn a_session_token_is_refused_as_an_unknown_key() {
        let query = format!("{GET_QUERY}&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE");
        assert!(matches!(
            check(GET_PATH, &query, &host(), signed_at()),
            Err(AuthError::UnknownAccessKey)
        ));
    }

    #[test]
    fn a_presigned_url_with_an_authorization_header_too_is_malformed() {
        let mut h = host();
        h.insert(
            "authorization",
            HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=x"),
        );
        assert!(matches!(
            check(GET_PATH, GET_QUERY, &h, signed_at()),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn only_the_signature_parameter_marks_a_presigned_url() {
        assert!(super::is_presigned(Some("a=1&X-Amz-Signature=00")));
        assert!(super::is_presigned(Some("X%2DAmz%2DSignature=00")));
        assert!(!super::is_presigned(Some(
            "X-Amz-Credential=k&X-Amz-Signatures=1"
        )));
        assert!(!super::is_presigned(None));
    }
}
