//! A request signed once with botocore (`SigV4Auth(creds, "iotdata", "us-east-1")`): a retained
//! publish to topic `a/b`, as boto3's `iot-data` client sends it. The signature tests in `sigv4`
//! and the authenticator's in `tests` check against it.

pub const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
pub const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
pub const AMZ_DATE: &str = "20261125T192720Z";
pub const PATH: &str = "/topics/a%2Fb";
pub const QUERY: &str = "qos=1&retain=true";
pub const BODY: &[u8] = br#"{"temp":21}"#;
pub const HEADERS: &[(&str, &str)] = &[
    ("host", "localhost:8080"),
    ("content-type", "application/json"),
    ("x-amz-date", AMZ_DATE),
    (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261125/us-east-1/iotdata/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=8eee91bc694346d22a232e093e85d034f0f74d9e0d01b321dd4808a91de7eb63",
    ),
];
