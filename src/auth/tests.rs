//! Authenticator-level tests: configuration checks and each credential path end to end.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use super::botocore_fixture as boto;
use super::*;

fn config(toml: &str) -> Result<Authenticator, ConfigError> {
    Authenticator::new(AuthConfig::parse(toml)?)
}

fn invalid_message(toml: &str) -> String {
    match config(toml) {
        Ok(_) => panic!("config accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

fn boto_headers() -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in boto::HEADERS {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

fn boto_request<'a>(headers: &'a HeaderMap, body: &[u8]) -> SigV4Request<'a> {
    SigV4Request {
        method: "POST",
        path: boto::PATH,
        query: Some(boto::QUERY),
        headers,
        payload_sha256: Sha256::digest(body).into(),
    }
}

/// The moment botocore signed the fixture (`boto::AMZ_DATE`, 2026-11-25T19:27:20Z).
fn signed_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_634_840)
}

fn with_boto_key(secret: &str) -> Authenticator {
    config(&format!(
        r#"
        [[principals]]
        name = "app"
        access_key_id = "{}"
        secret_access_key = "{secret}"
        "#,
        boto::ACCESS_KEY_ID
    ))
    .expect("valid config")
}

#[test]
fn botocore_signed_publish_authenticates_the_principal() {
    let auth = with_boto_key(boto::SECRET);
    let h = boto_headers();
    let principal = auth
        .verify_sigv4(&boto_request(&h, boto::BODY), signed_at())
        .expect("botocore signature verifies");
    assert_eq!(principal.name, "app");
}

/// A reload that keeps an access key's id but gives it a new secret takes away what the old
/// secret signed: a watch or a presigned MQTT connection opened with it must end.
#[test]
fn an_access_key_holds_its_principal_only_while_its_secret_stays() {
    let auth = with_boto_key(boto::SECRET);
    let h = boto_headers();
    let (_, credential) = auth
        .verify_sigv4_with_key(&boto_request(&h, boto::BODY), signed_at())
        .expect("botocore signature verifies");
    let credential = credential.expect("a signed request's credential");
    assert_eq!(
        auth.holder(&credential).map(|p| p.name.clone()),
        Some("app".into())
    );

    let rotated = format!(
        "[[principals]]\nname = \"app\"\naccess_key_id = \"{}\"\nsecret_access_key = \"rotated\"\n",
        boto::ACCESS_KEY_ID
    );
    auth.reload(AuthConfig::parse(&rotated).unwrap()).unwrap();
    assert!(auth.holder(&credential).is_none());
}

#[test]
fn wrong_secret_is_a_signature_mismatch() {
    let auth = with_boto_key("not-the-secret");
    let h = boto_headers();
    let err = auth
        .verify_sigv4(&boto_request(&h, boto::BODY), signed_at())
        .unwrap_err();
    assert!(matches!(err, AuthError::SignatureMismatch), "{err:?}");
    assert_eq!(
        (err.http_status(), err.aws_error_type()),
        (403, "ForbiddenException")
    );
}

#[test]
fn unknown_access_key_is_refused() {
    let auth = config(
        r#"
        [[principals]]
        name = "other"
        access_key_id = "AKIAOTHER"
        secret_access_key = "x"
        "#,
    )
    .unwrap();
    let h = boto_headers();
    let err = auth
        .verify_sigv4(&boto_request(&h, boto::BODY), signed_at())
        .unwrap_err();
    assert!(matches!(err, AuthError::UnknownAccessKey), "{err:?}");
    assert_eq!(err.http_status(), 403);
}

#[test]
fn clock_skew_over_five_minutes_is_refused_either_way() {
    let auth = with_boto_key(boto::SECRET);
    let h = boto_headers();
    let req = boto_request(&h, boto::BODY);
    let five = Duration::from_secs(300);
    assert!(auth.verify_sigv4(&req, signed_at() + five).is_ok());
    assert!(auth.verify_sigv4(&req, signed_at() - five).is_ok());
    for now in [
        signed_at() + five + Duration::from_secs(1),
        signed_at() - five - Duration::from_secs(1),
    ] {
        let err = auth.verify_sigv4(&req, now).unwrap_err();
        assert!(matches!(err, AuthError::RequestTimeTooSkewed), "{err:?}");
        assert_eq!(err.http_status(), 403);
        assert!(err.to_string().contains("skew"), "{err}");
    }
}

#[test]
fn missing_authorization_is_missing_credentials() {
    let auth = with_boto_key(boto::SECRET);
    let mut h = boto_headers();
    h.remove(http::header::AUTHORIZATION);
    let err = auth
        .verify_sigv4(&boto_request(&h, boto::BODY), signed_at())
        .unwrap_err();
    assert!(matches!(err, AuthError::MissingCredentials), "{err:?}");
    assert_eq!(
        (err.http_status(), err.aws_error_type()),
        (401, "UnauthorizedException")
    );
}

#[test]
fn a_body_other_than_the_signed_one_is_refused() {
    let auth = with_boto_key(boto::SECRET);
    let h = boto_headers();
    let err = auth
        .verify_sigv4(&boto_request(&h, br#"{"temp":99}"#), signed_at())
        .unwrap_err();
    assert!(matches!(err, AuthError::SignatureMismatch), "{err:?}");
}

#[test]
fn a_content_sha256_header_disagreeing_with_the_body_is_refused() {
    let auth = with_boto_key(boto::SECRET);
    let mut h = boto_headers();
    h.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static(
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
    );
    let err = auth
        .verify_sigv4(&boto_request(&h, boto::BODY), signed_at())
        .unwrap_err();
    assert!(matches!(err, AuthError::SignatureMismatch), "{err:?}");
    // Agreeing with the body (any hex case) is fine, even unsigned.
    let hex = hex::encode_upper(Sha256::digest(boto::BODY));
    h.insert("x-amz-content-sha256", HeaderValue::from_str(&hex).unwrap());
    assert!(
        auth.verify_sigv4(&boto_request(&h, boto::BODY), signed_at())
            .is_ok()
    );
}

#[test]
fn a_tampered_path_or_query_is_refused() {
    let auth = with_boto_key(boto::SECRET);
    let h = boto_headers();
    let mut req = boto_request(&h, boto::BODY);
    req.path = "/topics/a%2Fc";
    assert!(matches!(
        auth.verify_sigv4(&req, signed_at()),
        Err(AuthError::SignatureMismatch)
    ));
    let mut req = boto_request(&h, boto::BODY);
    req.query = Some("qos=0&retain=true");
    assert!(matches!(
        auth.verify_sigv4(&req, signed_at()),
        Err(AuthError::SignatureMismatch)
    ));
}

#[test]
fn malformed_authorization_is_a_bad_request() {
    let auth = with_boto_key(boto::SECRET);
    let mut h = boto_headers();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261125"),
    );
    let err = auth
        .verify_sigv4(&boto_request(&h, boto::BODY), signed_at())
        .unwrap_err();
    assert!(matches!(err, AuthError::Malformed(_)), "{err:?}");
    assert_eq!(
        (err.http_status(), err.aws_error_type()),
        (400, "InvalidRequestException")
    );
}

#[test]
fn bearer_tokens_are_matched_by_digest() {
    let digest = hex::encode(Sha256::digest(b"tok-123"));
    let auth = config(&format!(
        r#"
        [[principals]]
        name = "ci"
        api_tokens_sha256 = ["{digest}"]
        "#
    ))
    .unwrap();
    assert_eq!(auth.verify_bearer("tok-123").unwrap().name, "ci");
    assert!(matches!(
        auth.verify_bearer("tok-124"),
        Err(AuthError::BadCredentials)
    ));
    assert!(matches!(
        auth.verify_bearer(""),
        Err(AuthError::MissingCredentials)
    ));
}

#[test]
fn mqtt_password_is_checked_against_the_argon2_hash() {
    let hash = hash_password("s3cret");
    let auth = config(&format!(
        r#"
        [[principals]]
        name = "device"
        mqtt_username = "sensor"
        mqtt_password_hash = "{hash}"
        "#
    ))
    .unwrap();
    assert_eq!(
        auth.verify_mqtt(Some("sensor"), Some(b"s3cret"))
            .unwrap()
            .name,
        "device"
    );
    assert!(matches!(
        auth.verify_mqtt(Some("sensor"), Some(b"wrong")),
        Err(AuthError::BadCredentials)
    ));
    assert!(matches!(
        auth.verify_mqtt(Some("nobody"), Some(b"s3cret")),
        Err(AuthError::BadCredentials)
    ));
    assert!(matches!(
        auth.verify_mqtt(None, None),
        Err(AuthError::MissingCredentials)
    ));
    assert!(matches!(
        auth.verify_mqtt(Some("sensor"), None),
        Err(AuthError::MissingCredentials)
    ));
}

#[test]
fn disabled_authenticator_lets_everyone_in_with_everything_allowed() {
    let auth = Authenticator::disabled();
    assert!(!auth.is_enabled());
    let anonymous = auth.verify_mqtt(None, None).unwrap();
    assert!(anonymous.allows(Action::Publish, "any/topic", None));
    assert!(anonymous.allows(Action::ListRetainedMessages, "", None));
    assert!(
        !Authenticator::new(AuthConfig::default())
            .unwrap()
            .is_enabled()
    );
    assert!(with_boto_key("x").is_enabled());
}

#[test]
fn duplicate_access_keys_are_rejected_naming_both_principals() {
    let message = invalid_message(
        r#"
        [[principals]]
        name = "a"
        access_key_id = "AKIADUP"
        secret_access_key = "one"
        [[principals]]
        name = "b"
        access_key_id = "AKIADUP"
        secret_access_key = "two"
        "#,
    );
    assert!(
        message.contains("AKIADUP") && message.contains("\"a\"") && message.contains("\"b\""),
        "{message}"
    );
    assert!(
        !message.contains("two"),
        "secrets stay out of messages: {message}"
    );
}

#[test]
fn duplicate_names_and_usernames_are_rejected() {
    let hash = hash_password("p");
    assert!(
        invalid_message("[[principals]]\nname = \"a\"\n[[principals]]\nname = \"a\"\n")
            .contains("name")
    );
    let message = invalid_message(&format!(
        "[[principals]]\nname = \"a\"\nmqtt_username = \"u\"\nmqtt_password_hash = \"{hash}\"\n\
         [[principals]]\nname = \"b\"\nmqtt_username = \"u\"\nmqtt_password_hash = \"{hash}\"\n"
    ));
    assert!(message.contains("mqtt_username \"u\""), "{message}");
}

#[test]
fn bad_password_hash_is_rejected() {
    let message = invalid_message(
        r#"
        [[principals]]
        name = "d"
        mqtt_username = "d"
        mqtt_password_hash = "hunter2"
        "#,
    );
    assert!(
        message.contains("mqtt_password_hash") && message.contains("hash-password"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn half_given_credentials_are_rejected() {
    assert!(
        invalid_message("[[principals]]\nname = \"a\"\naccess_key_id = \"K\"\n")
            .contains("together")
    );
    assert!(
        invalid_message("[[principals]]\nname = \"a\"\nmqtt_username = \"u\"\n")
            .contains("together")
    );
    assert!(
        invalid_message("[[principals]]\nname = \"a\"\napi_tokens_sha256 = [\"abc\"]\n")
            .contains("api_tokens_sha256")
    );
}

#[test]
fn unknown_action_is_rejected() {
    let message = invalid_message(
        r#"
        [[principals]]
        name = "a"
        [[principals.statements]]
        effect = "Allow"
        actions = ["iot:Publish", "iot:UpdateThingShadow"]
        resources = ["*"]
        "#,
    );
    assert!(
        message.contains("iot:UpdateThingShadow") && message.contains("statements[0]"),
        "{message}"
    );
}

#[test]
fn bad_resource_and_effect_are_rejected() {
    let message = invalid_message(
        "[[principals]]\nname = \"a\"\n[[principals.statements]]\neffect = \"Allow\"\nactions = [\"iot:*\"]\nresources = [\"topic/a/#/b\"]\n",
    );
    assert!(message.contains("topic/a/#/b"), "{message}");
    let message = invalid_message(
        "[[principals]]\nname = \"a\"\n[[principals.statements]]\neffect = \"Maybe\"\nactions = [\"iot:*\"]\nresources = [\"*\"]\n",
    );
    assert!(message.contains("Maybe"), "{message}");
}

#[test]
fn secrets_do_not_appear_in_debug_output() {
    let config = AuthConfig::parse(
        "[[principals]]\nname = \"a\"\naccess_key_id = \"K\"\nsecret_access_key = \"very-secret\"\n",
    )
    .unwrap();
    assert!(!format!("{config:?}").contains("very-secret"));
    let auth = Authenticator::new(config).unwrap();
    assert!(!format!("{auth:?}").contains("very-secret"));
}

#[test]
fn a_principals_bound_that_is_not_a_count_is_refused_by_name() {
    for field in ["max_queue_memory_mib", "max_connections", "max_watches"] {
        for value in ["-1", "\"64\"", "1.5"] {
            let message = invalid_message(&format!(
                "[[principals]]\nname = \"d\"\napi_tokens_sha256 = [\"{}\"]\n{field} = {value}\n",
                "a".repeat(64)
            ));
            assert!(message.contains(field), "{field} = {value}: {message}");
        }
    }
}

#[test]
fn example_config_loads_and_grants_what_it_says() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/auth.toml");
    let auth = Authenticator::new(AuthConfig::load(&path).expect("example parses"))
        .expect("example is valid");
    assert!(auth.is_enabled());

    let device = auth
        .verify_mqtt(Some("sensor-1"), Some(b"change-me-sensor-1"))
        .expect("example device password");
    assert_eq!(
        device.limits,
        Limits {
            retained_messages: Some(100),
            offline_sessions: Some(20),
            queue_memory_bytes: Some(64 << 20),
            connections: Some(1),
            watches: Some(4),
        }
    );
    assert!(device.allows(Action::Connect, "sensor-1", Some("sensor-1")));
    assert!(!device.allows(Action::Connect, "sensor-2", Some("sensor-2")));
    assert!(device.allows(Action::Publish, "devices/sensor-1/state", Some("sensor-1")));
    assert!(device.allows(
        Action::RetainPublish,
        "devices/sensor-1/state",
        Some("sensor-1")
    ));
    assert!(!device.allows(Action::Publish, "devices/sensor-2/state", Some("sensor-1")));
    assert!(device.allows(
        Action::Subscribe,
        "devices/sensor-1/config/#",
        Some("sensor-1")
    ));
    assert!(device.allows(
        Action::Receive,
        "devices/sensor-1/config/led",
        Some("sensor-1")
    ));
    assert!(!device.allows(
        Action::GetRetainedMessage,
        "devices/sensor-1/state",
        Some("sensor-1")
    ));

    let ops = auth
        .verify_mqtt(Some("ops"), Some(b"change-me-ops"))
        .expect("example ops password");
    assert_eq!(ops.name, "ops");
    for action in [
        Action::Publish,
        Action::RetainPublish,
        Action::GetRetainedMessage,
    ] {
        assert!(ops.allows(action, "any/topic", None), "{action:?}");
    }
    assert!(ops.allows(Action::ListRetainedMessages, "", None));
    assert!(ops.allows(Action::Metrics, "", None));
    assert!(!device.allows(Action::Metrics, "", Some("sensor-1")));
    assert!(ops.allows(Action::Subscribe, "#", Some("console")));
    assert!(ops.allows(Action::Connect, "console", Some("console")));
    let by_token = auth
        .verify_bearer("change-me-ops-token")
        .expect("example ops token");
    assert_eq!(by_token.name, "ops");
}

#[test]
fn client_certificates_are_matched_by_digest() {
    let digest: [u8; 32] = Sha256::digest(b"a DER certificate").into();
    let auth = config(&format!(
        r#"
        [[principals]]
        name = "sensor"
        client_cert_sha256 = "{}"
        "#,
        hex::encode_upper(digest)
    ))
    .unwrap();
    assert_eq!(auth.verify_client_cert(&digest).unwrap().name, "sensor");
    assert!(matches!(
        auth.verify_client_cert(&[0; 32]),
        Err(AuthError::UnmappedCertificate)
    ));
}

#[test]
fn client_cert_digests_must_be_hex_and_unique() {
    assert!(
        invalid_message("[[principals]]\nname = \"a\"\nclient_cert_sha256 = \"abc\"\n")
            .contains("client_cert_sha256")
    );
    let digest = hex::encode([7u8; 32]);
    let message = invalid_message(&format!(
        "[[principals]]\nname = \"a\"\nclient_cert_sha256 = \"{digest}\"\n\
         [[principals]]\nname = \"b\"\nclient_cert_sha256 = \"{digest}\"\n"
    ));
    assert!(
        message.contains("already") && message.contains("\"a\""),
        "{message}"
    );
}

#[test]
fn metrics_are_granted_by_their_own_action_or_by_star_but_not_by_iot_star() {
    let grant = |actions: &str| {
        let auth = config(&format!(
            "[[principals]]\nname = \"p\"\napi_tokens_sha256 = [\"{}\"]\n\
             [[principals.statements]]\neffect = \"Allow\"\nactions = [{actions}]\nresources = [\"*\"]\n",
            hex::encode(Sha256::digest(b"t"))
        ))
        .unwrap();
        auth.verify_bearer("t")
            .unwrap()
            .allows(Action::Metrics, "", None)
    };
    assert!(grant("\"retaind:Metrics\""));
    assert!(
        grant("\"RETAIND:metrics\""),
        "case-insensitive, as the iot: actions"
    );
    assert!(grant("\"*\""));
    assert!(!grant("\"iot:*\""));
}

#[test]
fn deleting_by_filter_needs_its_own_action_on_a_covering_filter_not_iot_star() {
    let principal = |actions: &str, resource: &str| {
        let auth = config(&format!(
            "[[principals]]\nname = \"p\"\napi_tokens_sha256 = [\"{}\"]\n\
             [[principals.statements]]\neffect = \"Allow\"\nactions = [{actions}]\nresources = [\"{resource}\"]\n",
            hex::encode(Sha256::digest(b"t"))
        ))
        .unwrap();
        auth.verify_bearer("t").unwrap()
    };
    let del = Action::DeleteRetainedMessages;
    let admin = principal(
        "\"retaind:DeleteRetainedMessages\"",
        "topicfilter/devices/#",
    );
    assert!(admin.allows(del, "devices/+/config", None));
    assert!(admin.allows(del, "devices/#", None));
    assert!(
        !admin.allows(del, "#", None),
        "a wider filter is not covered"
    );
    assert!(!admin.allows(del, "other/#", None));
    assert!(!principal("\"iot:*\"", "*").allows(del, "devices/#", None));
    assert!(principal("\"*\"", "*").allows(del, "#", None));
    assert!(
        !principal("\"retaind:DeleteRetainedMessages\"", "topic/devices/#").allows(
            del,
            "devices/#",
            None
        ),
        "a topic/ resource does not grant a filter action"
    );
}
