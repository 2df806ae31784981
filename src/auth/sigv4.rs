//! AWS Signature Version 4 verification, as the AWS SDKs sign requests to the IoT data plane.
//!
//! Written from the published algorithm rather than taken from an SDK, because only the
//! verifying half is needed and it is small. Two details matter for compatibility:
//! - botocore sends topic paths already percent-encoded (`/topics/a%2Fb`) and signs the
//!   canonical URI encoded once more (`/topics/a%252Fb`), so the canonical URI is built from the
//!   raw path as received, encoding every byte but unreserved characters and `/`.
//! - the payload hash is computed here from the body; an `x-amz-content-sha256` header, when
//!   sent, must agree with it, so a signature can never cover a body other than the one received.
//!
//! A signature comes either in the `Authorization` header or in the query string (a presigned
//! URL: `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`,
//! `X-Amz-Signature`). Both forms sign the same canonical request, except that the query form
//! leaves `X-Amz-Signature` out of the canonical query and dates the request in the query. Its
//! payload hash is the body's, as botocore's `SigV4QueryAuth` signs for services other than S3
//! (the empty body's hash for a GET or a WebSocket upgrade).

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;
use super::amz_date::parse_basic_iso8601;

/// The parts of an HTTP request a SigV4 signature covers.
pub struct SigV4Request<'a> {
    pub method: &'a str,
    /// The raw request path as received (still percent-encoded).
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// SHA-256 of the body as received.
    pub payload_sha256: [u8; 32],
}

/// Signing names accepted in the credential scope: boto3 and the AWS CLI sign as `iotdata`;
/// older SDKs use `iotdevicegateway`, and some clients sign with the control-plane name `iot`.
pub(super) const IOT_SERVICES: &[&str] = &["iotdata", "iotdevicegateway", "iot"];

/// AWS rejects requests whose time is more than five minutes from its clock.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

pub(super) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The query parameter that carries a presigned URL's signature.
pub(super) const SIGNATURE_PARAM: &str = "X-Amz-Signature";

/// SigV4's URI encoding leaves only the unreserved characters `A-Za-z0-9-_.~` as they are.
const SIGV4_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// In the canonical URI, `/` stays as well.
const SIGV4_PATH_ENCODED: &AsciiSet = &SIGV4_ENCODED.remove(b'/');

/// A SigV4 signature, parsed from the `Authorization` header or from a presigned URL's query.
pub(super) struct Authorization<'h> {
    pub(super) access_key_id: &'h str,
    scope_date: &'h str,
    region: &'h str,
    service: &'h str,
    signed_headers: Vec<&'h str>,
    signature: [u8; 32],
    form: Form<'h>,
}

/// Where the signature came from, which decides how the request is dated.
pub(super) enum Form<'h> {
    /// `Authorization` header: dated by a signed `X-Amz-Date` (or `Date`) header, and good for
    /// five minutes either side of it.
    Header,
    /// Presigned URL: dated by `X-Amz-Date` in the query, and good until `expires` after it.
    Query {
        amz_date: &'h str,
        expires: Duration,
    },
}

pub(super) fn parse_authorization(
    headers: &http::HeaderMap,
) -> Result<Authorization<'_>, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingCredentials)?;
    let value = value
        .to_str()
        .map_err(|_| malformed("Authorization header is not ASCII"))?;
    let fields = value
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
        .ok_or_else(|| malformed("Authorization header is not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in fields.split(',').map(str::trim) {
        if let Some(v) = field.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = field.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = field.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| malformed("Authorization lacks Credential"))?;
    let signed_headers =
        signed_headers.ok_or_else(|| malformed("Authorization lacks SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("Authorization lacks Signature"))?;
    signature_fields(credential, signed_headers, signature, Form::Header)
}

/// The fields both forms share: `<key>/<date>/<region>/<service>/aws4_request`, the signed
/// header names and the hexadecimal signature.
pub(super) fn signature_fields<'h>(
    credential: &'h str,
    signed_headers: &'h str,
    signature: &'h str,
    form: Form<'h>,
) -> Result<Authorization<'h>, AuthError> {
    let [access_key_id, scope_date, region, service, terminator] = credential
        .split('/')
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| {
            malformed("Credential must be <key>/<date>/<region>/<service>/aws4_request")
        })?;
    if terminator != "aws4_request" || access_key_id.is_empty() {
        return Err(malformed(
            "Credential must be <key>/<date>/<region>/<service>/aws4_request",
        ));
    }
    let signed_headers: Vec<&str> = signed_headers.split(';').collect();
    if !signed_headers.contains(&"host") {
        return Err(malformed("SignedHeaders must include host"));
    }
    let mut decoded = [0u8; 32];
    hex::decode_to_slice(signature, &mut decoded)
        .map_err(|_| malformed("Signature must be 64 hexadecimal digits"))?;
    Ok(Authorization {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers,
        signature: decoded,
        form,
    })
}

/// Checks the signature with the secret of the key the request names.
pub(super) fn verify(
    req: &SigV4Request<'_>,
    auth: &Authorization<'_>,
    secret_access_key: &str,
    now: SystemTime,
    services: &[&str],
) -> Result<(), AuthError> {
    if !services.contains(&auth.service) {
        return Err(AuthError::SignatureMismatch);
    }
    let amz_date = match auth.form {
        Form::Header => {
            let (date_header, amz_date) = request_time(req.headers)?;
            if !auth.signed_headers.contains(&date_header) {
                return Err(malformed("the request date header must be signed"));
            }
            let skew = now
                .duration_since(signed_at(amz_date)?)
                .unwrap_or_else(|e| e.duration());
            if skew > MAX_CLOCK_SKEW {
                return Err(AuthError::RequestTimeTooSkewed);
            }
            amz_date
        }
        Form::Query { amz_date, expires } => {
            check_presigned_window(signed_at(amz_date)?, expires, now)?;
            amz_date
        }
    };
    if amz_date[..8] != *auth.scope_date {
        return Err(AuthError::SignatureMismatch);
    }

    let payload_hash = payload_hash(req)?;
    let presigned = matches!(auth.form, Form::Query { .. });
    let canonical = canonical_request(req, &auth.signed_headers, &payload_hash, presigned)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.scope_date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{secret_access_key}").as_bytes(),
        auth.scope_date,
    );
    for part in [auth.region, auth.service, "aws4_request"] {
        key = hmac(&key, part);
    }
    let expected = hmac(&key, &string_to_sign);
    if bool::from(expected.ct_eq(&auth.signature)) {
        Ok(())
    } else {
        Err(AuthError::SignatureMismatch)
    }
}

/// A presigned URL is good from its date (or up to five minutes before it, for clock skew)
/// until `expires` after it.
fn check_presigned_window(
    signed_at: SystemTime,
    expires: Duration,
    now: SystemTime,
) -> Result<(), AuthError> {
    if signed_at > now + MAX_CLOCK_SKEW {
        return Err(AuthError::RequestTimeTooSkewed);
    }
    if now > signed_at + expires {
        return Err(AuthError::PresignedUrlExpired);
    }
    Ok(())
}

fn signed_at(amz_date: &str) -> Result<SystemTime, AuthError> {
    parse_basic_iso8601(amz_date)
        .ok_or_else(|| malformed("request date must be YYYYMMDD'T'HHMMSS'Z'"))
}

pub(super) fn malformed(what: &str) -> AuthError {
    AuthError::Malformed(what.to_owned())
}

fn hmac(key: &[u8], data: &str) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().into()
}

/// `x-amz-date`, else `Date`, both in the basic ISO 8601 form SigV4 signs.
fn request_time(headers: &http::HeaderMap) -> Result<(&'static str, &str), AuthError> {
    for name in ["x-amz-date", "date"] {
        if let Some(v) = headers.get(name) {
            let v = v
                .to_str()
                .map_err(|_| malformed("request date is not ASCII"))?;
            return Ok((name, v.trim()));
        }
    }
    Err(malformed("missing X-Amz-Date header"))
}

fn payload_hash(req: &SigV4Request<'_>) -> Result<String, AuthError> {
    let computed = hex::encode(req.payload_sha256);
    match req.headers.get("x-amz-content-sha256") {
        Some(v) if v.as_bytes() == UNSIGNED_PAYLOAD.as_bytes() => Ok(computed),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(computed.as_bytes()) => Ok(computed),
        Some(_) => Err(AuthError::SignatureMismatch),
        None => Ok(computed),
    }
}

fn canonical_request(
    req: &SigV4Request<'_>,
    signed_headers: &[&str],
    payload_hash: &str,
    presigned: bool,
) -> Result<String, AuthError> {
    let mut out = String::with_capacity(512);
    out.push_str(req.method);
    out.push('\n');
    if req.path.is_empty() {
        out.push('/');
    } else {
        encode_into(&mut out, req.path.as_bytes(), true);
    }
    out.push('\n');
    out.push_str(&canonical_query(req.query.unwrap_or(""), presigned));
    out.push('\n');
    for name in signed_headers {
        let mut values = req.headers.get_all(*name).iter().peekable();
        if values.peek().is_none() {
            return Err(AuthError::SignatureMismatch);
        }
        out.push_str(name);
        out.push(':');
        for (i, value) in values.enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_collapsed(&mut out, value.as_bytes());
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Trims the value and collapses inner runs of spaces and tabs to one space.
fn push_collapsed(out: &mut String, value: &[u8]) {
    let text = String::from_utf8_lossy(value);
    let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
    if let Some(first) = words.next() {
        out.push_str(first);
    }
    for word in words {
        out.push(' ');
        out.push_str(word);
    }
}

/// The sorted, re-encoded query; a presigned URL's own signature is not part of what it signs.
fn canonical_query(raw: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|pair| !(presigned && is_signature_param(pair)))
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let mut key = String::new();
            let mut value = String::new();
            encode_into(&mut key, &percent_decode(k), false);
            encode_into(&mut value, &percent_decode(v), false);
            (key, value)
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(raw.len() + 16);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// SigV4's URI encoding: every byte but `A-Za-z0-9-_.~` (and `/` in paths) as `%XX`.
fn encode_into(out: &mut String, bytes: &[u8], keep_slash: bool) {
    let set = if keep_slash {
        SIGV4_PATH_ENCODED
    } else {
        SIGV4_ENCODED
    };
    out.extend(percent_encode(bytes, set));
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
pub(super) fn percent_decode(raw: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(raw).collect()
}

/// Whether a raw `name=value` query pair is `X-Amz-Signature`.
pub(super) fn is_signature_param(pair: &str) -> bool {
    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
    percent_decode(name) == SIGNATURE_PARAM.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const AWS_SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        map
    }

    fn at(amz_date: &str) -> SystemTime {
        parse_basic_iso8601(amz_date).expect("valid date")
    }

    fn check(
        req: &SigV4Request<'_>,
        secret: &str,
        now: SystemTime,
        services: &[&str],
    ) -> Result<(), AuthError> {
        let auth = parse_authorization(req.headers)?;
        verify(req, &auth, secret, now, services)
    }

    /// "get-vanilla" from the AWS SigV4 test suite.
    #[test]
    fn aws_suite_get_vanilla() {
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
        ]);
        let req = SigV4Request {
            method: "GET",
            path: "/",
            query: None,
            headers: &h,
            payload_sha256: Sha256::digest(b"").into(),
        };
        let now = at("20150830T123600Z");
        assert!(check(&req, AWS_SUITE_SECRET, now, &["service"]).is_ok());
        assert!(matches!(
            check(&req, AWS_SUITE_SECRET, now, IOT_SERVICES),
            Err(AuthError::SignatureMismatch)
        ));
    }

    /// "get-vanilla-query-order-key-case" from the AWS SigV4 test suite.
    #[test]
    fn aws_suite_get_vanilla_query_order_key_case() {
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
        ]);
        let req = SigV4Request {
            method: "GET",
            path: "/",
            query: Some("Param2=value2&Param1=value1"),
            headers: &h,
            payload_sha256: Sha256::digest(b"").into(),
        };
        assert!(check(&req, AWS_SUITE_SECRET, at("20150830T123600Z"), &["service"]).is_ok());
    }

    #[test]
    fn botocore_iotdata_signature_with_double_encoded_path_verifies() {
        use crate::auth::botocore_fixture::*;
        let h = headers(HEADERS);
        let req = SigV4Request {
            method: "POST",
            path: PATH,
            query: Some(QUERY),
            headers: &h,
            payload_sha256: Sha256::digest(BODY).into(),
        };
        assert!(check(&req, SECRET, at(AMZ_DATE), IOT_SERVICES).is_ok());
    }

    #[test]
    fn canonical_uri_encodes_the_received_path_again() {
        let mut out = String::new();
        encode_into(&mut out, b"/topics/a%2Fb c", true);
        assert_eq!(out, "/topics/a%252Fb%20c");
    }

    #[test]
    fn canonical_query_is_decoded_reencoded_and_sorted() {
        assert_eq!(
            canonical_query("b=2&a=x%20y&a=1&c", false),
            "a=1&a=x%20y&b=2&c="
        );
        assert_eq!(canonical_query("k=a+b&z=%7e", false), "k=a%2Bb&z=~");
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed() {
        let mut out = String::new();
        push_collapsed(&mut out, b"  a   b \t c  ");
        assert_eq!(out, "a b c");
    }
}
