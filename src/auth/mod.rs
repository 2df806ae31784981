//! Authentication and authorization: who is calling, and what they may do.
//!
//! This module is pure: no async, no sockets, no knowledge of HTTP routing or MQTT sessions. Its
//! only I/O is reading the principals file in [`AuthConfig::load`]. It owns:
//! - the principals file and its validation ([`AuthConfig`], [`Authenticator::new`]);
//! - credential checks: AWS SigV4 ([`Authenticator::verify_sigv4`]), bearer tokens stored as
//!   SHA-256 digests, MQTT username/password stored as argon2 hashes;
//! - policies in the spirit of AWS IoT ([`Principal::allows`]).
//!
//! The HTTP layer turns [`AuthError`] into a response through [`AuthError::http_status`] and
//! [`AuthError::aws_error_type`]; the broker turns it into a CONNACK reason code.
//!
//! With no principals configured ([`Authenticator::disabled`]), every credential check succeeds
//! with an anonymous principal that may do everything; the application restricts listeners to
//! loopback in that mode.

mod amz_date;
#[cfg(test)]
mod botocore_fixture;
mod config;
mod error;
mod password;
mod pattern;
mod policy;
mod presigned;
mod sigv4;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use config::{AuthConfig, ConfigError, PrincipalConfig, PrincipalDefaults, StatementConfig};
pub use error::AuthError;
pub use password::hash_password;
pub use policy::{Action, Effect, Limits, Principal};
pub use presigned::is_presigned;
pub use sigv4::SigV4Request;

use password::StoredHash;

/// Checks credentials against the configured principals. A cheap `Clone` handle: every clone
/// sees a [`Authenticator::reload`] at once.
#[derive(Clone)]
pub struct Authenticator {
    // A lock held only to clone an `Arc`: a check never waits on a reload's parsing, and each
    // check sees the whole old or the whole new set of principals.
    inner: Arc<RwLock<Arc<Inner>>>,
}

/// Why a reload was refused; the principals in force stay.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "the file has no principals: a reload cannot turn authentication off (anonymous access); \
         restart without --principals for that"
    )]
    WouldDisable,
    #[error("authentication is off (no --principals at start): a reload cannot turn it on")]
    Disabled,
}

struct Inner {
    /// Every principal by name, for moving connections to their new entry on a reload.
    by_name: HashMap<String, Arc<Principal>>,
    /// Present only when no principals are configured.
    anonymous: Option<Arc<Principal>>,
    access_keys: HashMap<String, AccessKey>,
    tokens: HashMap<[u8; 32], Arc<Principal>>,
    mqtt_users: HashMap<String, MqttUser>,
    /// By the SHA-256 of a TLS client certificate's DER encoding.
    client_certs: HashMap<[u8; 32], Arc<Principal>>,
    /// Verified against when the username is unknown, so that unknown and known usernames
    /// take the same (argon2) time to refuse.
    decoy_hash: Option<StoredHash>,
}

/// The credential a request was authenticated with, kept by what outlives the request (a
/// watch, an MQTT connection let in by a presigned URL) to check it again after a reload:
/// [`Authenticator::holder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A SigV4 access key id, with the SHA-256 of the secret that signed: a reload that gives
    /// the id a new secret takes this credential away, as one that removes the id does.
    AccessKey { id: String, secret_sha256: [u8; 32] },
    /// The SHA-256 of a bearer token.
    Token([u8; 32]),
    /// The SHA-256 of a TLS client certificate's DER encoding.
    ClientCert([u8; 32]),
}

impl Credential {
    /// A bearer token, as [`Authenticator::verify_bearer`] compares it.
    pub fn token(token: &str) -> Self {
        Self::Token(Sha256::digest(token.as_bytes()).into())
    }
}

struct AccessKey {
    secret: String,
    secret_sha256: [u8; 32],
    principal: Arc<Principal>,
}

struct MqttUser {
    hash: StoredHash,
    principal: Arc<Principal>,
}

impl Authenticator {
    /// Validates the configuration: unique names, access keys, tokens and usernames, parseable
    /// password hashes, known actions and well-formed resources. An empty configuration gives
    /// [`Authenticator::disabled`].
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        if config.principals.is_empty() {
            return Ok(Self::disabled());
        }
        let mut inner = Inner {
            by_name: HashMap::new(),
            anonymous: None,
            access_keys: HashMap::new(),
            tokens: HashMap::new(),
            mqtt_users: HashMap::new(),
            client_certs: HashMap::new(),
            decoy_hash: None,
        };
        for valid in config::validate(config)? {
            let principal = Arc::new(Principal::new(
                valid.name.clone(),
                valid.statements,
                valid.limits,
                valid.mqtt_credentials,
            ));
            inner.by_name.insert(valid.name, principal.clone());
            if let Some((id, secret)) = valid.access_key {
                let key = AccessKey {
                    secret_sha256: Sha256::digest(secret.as_bytes()).into(),
                    secret,
                    principal: principal.clone(),
                };
                inner.access_keys.insert(id, key);
            }
            for digest in valid.token_hashes {
                inner.tokens.insert(digest, principal.clone());
            }
            if let Some(digest) = valid.client_cert {
                inner.client_certs.insert(digest, principal.clone());
            }
            if let Some((username, hash)) = valid.mqtt {
                inner.decoy_hash.get_or_insert_with(|| hash.clone());
                inner
                    .mqtt_users
                    .insert(username, MqttUser { hash, principal });
            }
        }
        Ok(Self::holding(inner))
    }

    fn holding(inner: Inner) -> Self {
        Authenticator {
            inner: Arc::new(RwLock::new(Arc::new(inner))),
        }
    }

    /// The principals in force, whole: one check never mixes two generations.
    fn current(&self) -> Arc<Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `config`'s principals in force for every clone of this handle, atomically; on an
    /// error those in force stay. Connections already authenticated are the caller's to
    /// re-check ([`Authenticator::principal`], [`Principal::same_mqtt_credentials`]).
    pub fn reload(&self, config: AuthConfig) -> Result<(), ReloadError> {
        if !self.is_enabled() {
            return Err(ReloadError::Disabled);
        }
        let next = Authenticator::new(config)?;
        if !next.is_enabled() {
            return Err(ReloadError::WouldDisable);
        }
        let next = next.current();
        *self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// The principal `credential` stands for now; `None` once a reload has removed it.
    pub fn holder(&self, credential: &Credential) -> Option<Arc<Principal>> {
        let inner = self.current();
        match credential {
            Credential::AccessKey { id, secret_sha256 } => inner
                .access_keys
                .get(id)
                .filter(|k| bool::from(k.secret_sha256.ct_eq(secret_sha256)))
                .map(|k| k.principal.clone()),
            Credential::Token(digest) => inner.tokens.get(digest).cloned(),
            Credential::ClientCert(digest) => inner.client_certs.get(digest).cloned(),
        }
    }

    /// The principal in force under this name.
    pub fn principal(&self, name: &str) -> Option<Arc<Principal>> {
        self.current().by_name.get(name).cloned()
    }

    /// No principals configured: everyone is anonymous and everything is allowed.
    pub fn disabled() -> Self {
        Self::holding(Inner {
            by_name: HashMap::new(),
            anonymous: Some(Arc::new(Principal::anonymous())),
            access_keys: HashMap::new(),
            tokens: HashMap::new(),
            mqtt_users: HashMap::new(),
            client_certs: HashMap::new(),
            decoy_hash: None,
        })
    }

    /// True iff at least one principal is configured.
    pub fn is_enabled(&self) -> bool {
        self.current().anonymous.is_none()
    }

    /// The allow-everything principal of a disabled authenticator; `None` when enabled.
    pub fn anonymous(&self) -> Option<Arc<Principal>> {
        self.current().anonymous.clone()
    }

    /// SigV4 as the AWS SDKs sign, in the `Authorization` header or in the query string (a
    /// presigned URL). Ok → the principal. `now` is the server's clock (injected so
    /// tests can sign at fixed times).
    pub fn verify_sigv4(
        &self,
        req: &SigV4Request<'_>,
        now: SystemTime,
    ) -> Result<Arc<Principal>, AuthError> {
        self.verify_sigv4_with_key(req, now)
            .map(|(principal, _)| principal)
    }

    /// [`Self::verify_sigv4`], with the access key that signed (`None` when authentication is
    /// off).
    pub fn verify_sigv4_with_key(
        &self,
        req: &SigV4Request<'_>,
        now: SystemTime,
    ) -> Result<(Arc<Principal>, Option<Credential>), AuthError> {
        if let Some(anonymous) = self.anonymous() {
            return Ok((anonymous, None));
        }
        // A request signed both ways is ambiguous about which signature counts.
        let presigned = match req.query {
            Some(query) if presigned::is_presigned(Some(query)) => {
                if req.headers.contains_key(http::header::AUTHORIZATION) {
                    return Err(AuthError::Malformed(
                        "a request carries either an Authorization header or X-Amz-Signature \
                         in its query, not both"
                            .into(),
                    ));
                }
                Some(presigned::parse_presigned(query)?)
            }
            _ => None,
        };
        let auth = match &presigned {
            Some(presigned) => presigned.authorization()?,
            None => sigv4::parse_authorization(req.headers)?,
        };
        let inner = self.current();
        let key = inner
            .access_keys
            .get(auth.access_key_id)
            .ok_or(AuthError::UnknownAccessKey)?;
        sigv4::verify(req, &auth, &key.secret, now, sigv4::IOT_SERVICES)?;
        let credential = Credential::AccessKey {
            id: auth.access_key_id.to_owned(),
            secret_sha256: key.secret_sha256,
        };
        Ok((key.principal.clone(), Some(credential)))
    }

    /// A bearer token (`Authorization: Bearer <token>`), compared by its SHA-256 digest.
    pub fn verify_bearer(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if let Some(anonymous) = self.anonymous() {
            return Ok(anonymous);
        }
        if token.is_empty() {
            return Err(AuthError::MissingCredentials);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // The map lookup is keyed by the digest, so its timing reveals nothing usable about the
        // token; the final comparison is constant-time anyway.
        match self.current().tokens.get_key_value(&digest) {
            Some((stored, principal)) if bool::from(stored.ct_eq(&digest)) => Ok(principal.clone()),
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// MQTT CONNECT credentials (argon2 verify: slow by design; callers run it on a blocking
    /// thread). No username or no password → `MissingCredentials`; wrong ones → `BadCredentials`.
    pub fn verify_mqtt(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Arc<Principal>, AuthError> {
        if let Some(anonymous) = self.anonymous() {
            return Ok(anonymous);
        }
        let (Some(username), Some(password)) = (username, password) else {
            return Err(AuthError::MissingCredentials);
        };
        let inner = self.current();
        match inner.mqtt_users.get(username) {
            Some(user) if user.hash.verify(password) => Ok(user.principal.clone()),
            Some(_) => Err(AuthError::BadCredentials),
            None => {
                if let Some(decoy) = &inner.decoy_hash {
                    decoy.verify(password);
                }
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// The principal a TLS client certificate stands for, by the SHA-256 of its DER encoding.
    /// The caller has already checked, in the TLS handshake, that the client holds the
    /// certificate's key and that a trusted CA signed it. Unknown → `UnmappedCertificate`.
    pub fn verify_client_cert(&self, sha256: &[u8; 32]) -> Result<Arc<Principal>, AuthError> {
        if let Some(anonymous) = self.anonymous() {
            return Ok(anonymous);
        }
        self.current()
            .client_certs
            .get(sha256)
            .cloned()
            .ok_or(AuthError::UnmappedCertificate)
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.current();
        f.debug_struct("Authenticator")
            .field("enabled", &inner.anonymous.is_none())
            .field("access_keys", &inner.access_keys.len())
            .field("tokens", &inner.tokens.len())
            .field("mqtt_users", &inner.mqtt_users.len())
            .field("client_certs", &inner.client_certs.len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
