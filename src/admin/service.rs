//! A running service over the AWS IoT data-plane HTTP API, as a client: retaind, or AWS IoT
//! Core itself. Requests carry a bearer token, a SigV4 signature (aws-sigv4, as the AWS SDKs
//! sign for `iotdata`) or nothing; a throttled or unavailable answer (429, 503, or a
//! `ThrottlingException` under any status) is retried with exponential backoff and jitter, as
//! the SDKs do, and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::Error;
use super::credentials::AwsCredentials;
use super::fetched::Fetched;
use crate::store::{PayloadFormat, RetainedMessage};

/// Everything but RFC 3986's unreserved characters is encoded: the canonical form SigV4 signs,
/// and a topic's `/` becomes `%2F`, keeping it one path segment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Attempts of one request before a throttle or outage is reported as an error (about two
/// minutes of backing off).
const MAX_ATTEMPTS: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// The signing name of the AWS IoT data plane.
const SIGNING_NAME: &str = "iotdata";
/// Page size of ListRetainedMessages: the most AWS allows.
const PAGE: u32 = 200;

/// How requests prove who sends them.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    Bearer(String),
    SigV4 {
        credentials: AwsCredentials,
        region: String,
    },
}

pub struct Service {
    base: String,
    http: reqwest::Client,
    auth: Auth,
    throttled: AtomicU64,
}

/// One page of ListRetainedMessages.
pub struct ListPage {
    pub topics: Vec<String>,
    pub next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListBody {
    #[serde(default)]
    retained_topics: Vec<ListedTopic>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
struct ListedTopic {
    topic: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkDeleteBody {
    matched_count: u64,
    deleted_count: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

/// A request, rebuilt for each attempt (a signature carries its time).
struct Request<'a> {
    operation: &'static str,
    method: Method,
    path_and_query: String,
    headers: Vec<(&'static str, String)>,
    body: &'a [u8],
}

impl Service {
    pub fn new(endpoint: &str, auth: Auth) -> Result<Self, Error> {
        let base = endpoint.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!(
                "endpoint {endpoint:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Transport {
                what: "starting the HTTP client".into(),
                cause: e.to_string(),
            })?;
        Ok(Self {
            base,
            http,
            auth,
            throttled: AtomicU64::new(0),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// How many answers so far said to slow down (each was retried after a pause).
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// One page of ListRetainedMessages after `next_token`, narrowed to `topic_filter` (a
    /// retaind extension; the caller matches again, for services without it).
    pub async fn list(
        &self,
        topic_filter: Option<&str>,
        next_token: Option<&str>,
    ) -> Result<ListPage, Error> {
        let mut query = vec![("maxResults", PAGE.to_string())];
        if let Some(token) = next_token {
            query.push(("nextToken", token.to_owned()));
        }
        if let Some(filter) = topic_filter {
            query.push(("topicFilter", filter.to_owned()));
        }
        let request = Request {
            operation: "ListRetainedMessages",
            method: Method::GET,
            path_and_query: format!("/retainedMessage{}", query_string(&query)),
            headers: Vec::new(),
            body: &[],
        };
        let body: ListBody = json(self.send(&request).await?, "ListRetainedMessages").await?;
        Ok(ListPage {
            topics: body.retained_topics.into_iter().map(|t| t.topic).collect(),
            next_token: body.next_token.filter(|t| !t.is_empty()),
        })
    }

    /// GetRetainedMessage; `None` when the topic has none (404).
    pub async fn get(&self, topic: &str) -> Result<Option<Fetched>, Error> {
        let request = Request {
            operation: "GetRetainedMessage",
            method: Method::GET,
            path_and_query: format!("/retainedMessage/{}", utf8_percent_encode(topic, COMPONENT)),
            headers: Vec::new(),
            body: &[],
        };
        match self.send(&request).await {
            Ok(res) => Ok(Some(json(res, "GetRetainedMessage").await?)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A retained Publish of `m` with its properties. The service stamps it with its own time;
    /// its expiry is sent as what remains of it at `now_ms`, rounded up to a second.
    pub async fn publish(&self, m: &RetainedMessage, now_ms: i64) -> Result<(), Error> {
        let p = &m.properties;
        let mut query = vec![
            ("qos", m.qos.as_u8().to_string()),
            ("retain", "true".to_owned()),
        ];
        if let Some(c) = &p.content_type {
            query.push(("contentType", c.clone()));
        }
        if let Some(r) = &p.response_topic {
            query.push(("responseTopic", r.to_string()));
        }
        if let Some(at) = m.expires_at_ms {
            // Rounded up, so that a message never expires earlier than it would have.
            let secs = ((at - now_ms).max(1) + 999) / 1000;
            query.push(("messageExpiry", secs.to_string()));
        }
        let mut headers = Vec::new();
        if !p.user_properties.is_empty() {
            let objects: Vec<serde_json::Value> = p
                .user_properties
                .iter()
                .map(|u| serde_json::json!({ u.key.as_str(): u.value.as_str() }))
                .collect();
            let json = serde_json::to_vec(&objects).expect("JSON values always serialize");
            headers.push(("x-amz-mqtt5-user-properties", STANDARD.encode(json)));
        }
        if p.payload_format == PayloadFormat::Utf8 {
            headers.push(("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA".into()));
        }
        if let Some(c) = &p.correlation_data {
            headers.push(("x-amz-mqtt5-correlation-data", STANDARD.encode(c)));
        }
        let request = Request {
            operation: "Publish",
            method: Method::POST,
            path_and_query: format!(
                "/topics/{}{}",
                utf8_percent_encode(m.topic.as_str(), COMPONENT),
                query_string(&query)
            ),
            headers,
            body: &m.payload,
        };
        self.send(&request).await.map(drop)
    }

    /// retaind's bulk delete: with `expected: None` a dry run (how many match), else the delete
    /// of exactly that many; returns (matched, deleted).
    pub async fn delete_matching(
        &self,
        topic_filter: &str,
        expected: Option<u64>,
    ) -> Result<(u64, u64), Error> {
        let mut query = vec![("topicFilter", topic_filter.to_owned())];
        match expected {
            None => query.push(("dryRun", "true".into())),
            Some(n) => query.push(("expectedCount", n.to_string())),
        }
        let request = Request {
            operation: "DeleteRetainedMessages",
            method: Method::DELETE,
            path_and_query: format!("/retainedMessage{}", query_string(&query)),
            headers: Vec::new(),
            body: &[],
        };
        let body: BulkDeleteBody =
            json(self.send(&request).await?, "DeleteRetainedMessages").await?;
        Ok((body.matched_count, body.deleted_count))
    }

    /// Sends `request` until it is answered with success or an error that waiting does not
    /// cure (returned as [`Error::Api`]).
    async fn send(&self, request: &Request<'_>) -> Result<reqwest::Response, Error> {
        let url = format!("{}{}", self.base, request.path_and_query);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Signed afresh each time: a signature is only good for minutes.
            let auth = self.authorization(request, &url)?;
            let res = match self.attempt(request, &url, auth).await {
                Ok(res) => res,
                // Refused or reset connections are an outage's symptoms, like a 503.
                Err(e) if attempt < MAX_ATTEMPTS && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(attempt, None)).await;
                    continue;
                }
                Err(e) => {
                    return Err(Error::Transport {
                        what: format!("{} {}", request.operation, self.base),
                        cause: e.to_string(),
                    });
                }
            };
            let status = res.status();
            if status.is_success() {
                return Ok(res);
            }
            let kind = error_kind(&res);
            let throttled =
                status == StatusCode::TOO_MANY_REQUESTS || kind == "ThrottlingException";
            let transient = throttled || status == StatusCode::SERVICE_UNAVAILABLE;
            if transient && attempt < MAX_ATTEMPTS {
                if throttled {
                    self.throttled.fetch_add(1, Ordering::Relaxed);
                }
                let pause = backoff(attempt, retry_after(&res));
                tracing::debug!(operation = request.operation, %status, ?pause, "backing off");
                tokio::time::sleep(pause).await;
                continue;
            }
            let message = res
                .json::<ErrorBody>()
                .await
                .map(|b| b.message)
                .unwrap_or_default();
            return Err(Error::Api {
                operation: request.operation.into(),
                status: status.as_u16(),
                kind,
                message,
            });
        }
    }

    /// The headers that say who sends `request`.
    fn authorization(
        &self,
        request: &Request<'_>,
        url: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        match &self.auth {
            Auth::Anonymous => Ok(Vec::new()),
            Auth::Bearer(token) => Ok(vec![("authorization".into(), format!("Bearer {token}"))]),
            Auth::SigV4 {
                credentials,
                region,
            } => {
                sigv4_headers(request, url, credentials, region).map_err(|cause| Error::Transport {
                    what: format!("signing {} for {url}", request.operation),
                    cause,
                })
            }
        }
    }

    async fn attempt(
        &self,
        request: &Request<'_>,
        url: &str,
        auth: Vec<(String, String)>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .body(request.body.to_vec());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        for (name, value) in auth {
            builder = builder.header(name, value);
        }
        builder.send().await
    }
}

/// The headers a SigV4 signature adds (`authorization`, `x-amz-date`, and the session token
/// when there is one), made now.
fn sigv4_headers(
    request: &Request<'_>,
    url: &str,
    credentials: &AwsCredentials,
    region: &str,
) -> Result<Vec<(String, String)>, String> {
    let identity = Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "retaind",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let headers = request.headers.iter().map(|(n, v)| (*n, v.as_str()));
    let signable = SignableRequest::new(
        request.method.as_str(),
        url,
        headers,
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect())
}

/// `?a=1&b=2`, each value encoded as SigV4's canonical query encodes it; "" when empty.
fn query_string(params: &[(&str, String)]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, COMPONENT)))
        .collect();
    format!("?{}", pairs.join("&"))
}

/// The AWS error name of an answer (`x-amzn-ErrorType`, before any `:`).
fn error_kind(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned())
        .unwrap_or_default()
}

fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

/// Exponential from [`FIRST_BACKOFF`], capped at [`MAX_BACKOFF`], with "equal jitter" (half
/// fixed, half random) so that clients throttled together do not retry together; a
/// `Retry-After` the service sent wins.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(pause) = retry_after {
        return pause;
    }
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = ceiling / 2;
    let random = uuid::Uuid::new_v4().as_u128() as u64 % (half.as_millis() as u64 + 1);
    half + Duration::from_millis(random)
}

async fn json<T: serde::de::DeserializeOwned>(
    res: reqwest::Response,
    operation: &str,
) -> Result<T, Error> {
    res.json().await.map_err(|e| Error::Transport {
        what: format!("reading the answer to {operation}"),
        cause: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        for attempt in 1..=20 {
            let pause = backoff(attempt, None);
            let ceiling = (FIRST_BACKOFF * 2u32.pow((attempt - 1).min(16))).min(MAX_BACKOFF);
            assert!(
                pause >= ceiling / 2 && pause <= ceiling,
                "{attempt}: {pause:?}"
            );
        }
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_topic_is_one_canonically_encoded_path_segment() {
        assert_eq!(
            utf8_percent_encode("a/b c+#~é", COMPONENT).to_string(),
            "a%2Fb%20c%2B%23~%C3%A9"
        );
        assert_eq!(
            query_string(&[("topicFilter", "a/+/#".into()), ("dryRun", "true".into())]),
            "?topicFilter=a%2F%2B%2F%23&dryRun=true"
        );
    }
}
