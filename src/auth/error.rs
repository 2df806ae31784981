//! Why a credential check failed, and how the HTTP layer answers it.

/// A failed credential check. The `Display` text is safe to send to the client: it never holds
/// a secret, a signature or a password.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Missing authentication")]
    MissingCredentials,
    #[error("The security token included in the request is invalid")]
    UnknownAccessKey,
    #[error(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method."
    )]
    SignatureMismatch,
    #[error(
        "Signature expired: the request time is more than 5 minutes from the server time \
         (clock skew)"
    )]
    RequestTimeTooSkewed,
    #[error("Signature expired: the presigned URL's X-Amz-Date plus X-Amz-Expires has passed")]
    PresignedUrlExpired,
    #[error("Malformed authorization: {0}")]
    Malformed(String),
    #[error("Bad credentials")]
    BadCredentials,
    /// A CA-signed certificate that no principal lists: as good as no credentials at all.
    #[error("The client certificate is not mapped to a principal")]
    UnmappedCertificate,
}

impl AuthError {
    /// The HTTP status for this failure.
    ///
    /// botocore's `iot-data` service model knows `UnauthorizedException` (401),
    /// `ForbiddenException` (403) and `InvalidRequestException` (400), so each of these is raised
    /// by boto3 as the matching modeled exception (`client.exceptions.ForbiddenException`, a
    /// `ClientError` with that code). A malformed `Authorization` header is the client's bug
    /// rather than a credential it lacks, hence 400 `InvalidRequestException`.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::MissingCredentials | AuthError::UnmappedCertificate => 401,
            AuthError::Malformed(_) => 400,
            AuthError::UnknownAccessKey
            | AuthError::SignatureMismatch
            | AuthError::RequestTimeTooSkewed
            | AuthError::PresignedUrlExpired
            | AuthError::BadCredentials => 403,
        }
    }

    /// The AWS error name (`x-amzn-ErrorType`) matching [`AuthError::http_status`].
    pub fn aws_error_type(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials | AuthError::UnmappedCertificate => {
                "UnauthorizedException"
            }
            AuthError::Malformed(_) => "InvalidRequestException",
            AuthError::UnknownAccessKey
            | AuthError::SignatureMismatch
            | AuthError::RequestTimeTooSkewed
            | AuthError::PresignedUrlExpired
            | AuthError::BadCredentials => "ForbiddenException",
        }
    }
}
