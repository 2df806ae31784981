//! The principals file (TOML): its shape, and the checks that turn it into an [`Authenticator`]'s
//! tables. See `docs/examples/auth.toml` for an annotated example.
//!
//! [`Authenticator`]: super::Authenticator

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use super::password::StoredHash;
use super::policy::{Action, Effect, Limits, Resource, Statement};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    /// AWS credentials (SigV4); both or neither.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Lowercase or uppercase hex SHA-256 digests of bearer tokens.
    #[serde(default)]
    pub api_tokens_sha256: Vec<String>,
    /// MQTT CONNECT credentials; both or neither.
    pub mqtt_username: Option<String>,
    /// An argon2 PHC string, as `retaind hash-password` prints it.
    pub mqtt_password_hash: Option<String>,
    /// Hex SHA-256 of the DER encoding of a TLS client certificate (signed by
    /// `--tls-client-ca`): an MQTT client presenting it is this principal.
    pub client_cert_sha256: Option<String>,
    /// Most retained messages this principal may keep, counting those its publishes stored;
    /// 0 means no limit. Unset: `--max-retained-messages-per-principal`.
    pub max_retained_messages: Option<u64>,
    /// Most persistent sessions of this principal a node holds for clients that are away; past
    /// it the one nearest its end ends. 0 means no limit of its own. Unset:
    /// `--mqtt-max-offline-sessions-per-principal`.
    pub max_offline_sessions: Option<u64>,
    /// Most memory, in MiB, that the queues of this principal's offline sessions may hold on
    /// a node, each queued copy counting its whole message; past it a message for one of them
    /// is dropped. 0 means no limit of its own. Unset:
    /// `--mqtt-max-queue-memory-mib-per-principal`.
    pub max_queue_memory_mib: Option<u64>,
    /// Most MQTT connections of this principal a node holds at once, counted by client id;
    /// past it a CONNECT with a client id not connected already is refused. 0 means no
    /// limit of its own. Unset: `--mqtt-max-connections-per-principal`.
    pub max_connections: Option<u64>,
    /// Most watches of the retained set (`GET /retainedMessage-watch`) this principal may hold
    /// open on a node at once; past it a new one gets 429 ThrottlingException. 0 means no
    /// limit of its own. Unset: `--max-watches-per-principal`.
    pub max_watches: Option<u64>,
    #[serde(default)]
    pub statements: Vec<StatementConfig>,
}

/// Secrets stay out of logs: `Debug` shows which credentials exist, not their values.
impl fmt::Debug for PrincipalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalConfig")
            .field("name", &self.name)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("api_tokens_sha256", &self.api_tokens_sha256.len())
            .field("mqtt_username", &self.mqtt_username)
            .field("client_cert_sha256", &self.client_cert_sha256)
            .field("max_retained_messages", &self.max_retained_messages)
            .field("max_offline_sessions", &self.max_offline_sessions)
            .field("max_queue_memory_mib", &self.max_queue_memory_mib)
            .field("max_connections", &self.max_connections)
            .field("max_watches", &self.max_watches)
            .field("statements", &self.statements)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementConfig {
    pub effect: Effect,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read auth config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid auth config: {0}")]
    Parse(String),
    #[error("invalid auth config: principal {principal:?}: {message}")]
    Invalid { principal: String, message: String },
}

impl AuthConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(toml: &str) -> Result<Self, ConfigError> {
        toml::from_str(toml).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Gives every principal the bounds of `defaults` that it does not set itself (the
    /// `--*-per-principal` flags; 0: no limit).
    pub fn with_defaults(mut self, defaults: &PrincipalDefaults) -> Self {
        for p in &mut self.principals {
            p.max_retained_messages
                .get_or_insert(defaults.max_retained_messages);
            p.max_offline_sessions
                .get_or_insert(defaults.max_offline_sessions);
            p.max_queue_memory_mib
                .get_or_insert(defaults.max_queue_memory_mib);
            p.max_connections.get_or_insert(defaults.max_connections);
            p.max_watches.get_or_insert(defaults.max_watches);
        }
        self
    }
}

/// The bounds of principals whose entries set none of their own, each named as the entry's
/// field; 0: no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrincipalDefaults {
    pub max_retained_messages: u64,
    pub max_offline_sessions: u64,
    pub max_queue_memory_mib: u64,
    pub max_connections: u64,
    pub max_watches: u64,
}

/// One principal's credentials and policy, checked.
pub(super) struct ValidPrincipal {
    pub(super) name: String,
    pub(super) access_key: Option<(String, String)>,
    pub(super) token_hashes: Vec<[u8; 32]>,
    pub(super) mqtt: Option<(String, StoredHash)>,
    pub(super) client_cert: Option<[u8; 32]>,
    pub(super) statements: Vec<Statement>,
    pub(super) limits: Limits,
    /// Digest of the MQTT credentials as written (username, password hash, certificate): a
    /// reload that changes it ends the connections made with the old ones.
    pub(super) mqtt_credentials: [u8; 32],
}

/// Checks every principal and the uniqueness of names and credentials across them.
pub(super) fn validate(config: AuthConfig) -> Result<Vec<ValidPrincipal>, ConfigError> {
    let mut names = HashSet::new();
    let mut keys = std::collections::HashMap::new();
    let mut usernames = std::collections::HashMap::new();
    let mut tokens = std::collections::HashMap::new();
    let mut certs = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(config.principals.len());
    for p in config.principals {
        let invalid = |message: String| ConfigError::Invalid {
            principal: p.name.clone(),
            message,
        };
        if p.name.trim().is_empty() {
            return Err(invalid("name must not be empty".into()));
        }
        if !names.insert(p.name.clone()) {
            return Err(invalid("name is used by another principal".into()));
        }
        let access_key = match (&p.access_key_id, &p.secret_access_key) {
            (None, None) => None,
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                if id.contains(['/', ' ']) {
                    return Err(invalid(format!(
                        "access_key_id {id:?} contains '/' or a space"
                    )));
                }
                if let Some(other) = keys.insert(id.clone(), p.name.clone()) {
                    return Err(invalid(format!(
                        "access_key_id {id:?} is already used by principal {other:?}"
                    )));
                }
                Some((id.clone(), secret.clone()))
            }
            _ => {
                return Err(invalid(
                    "access_key_id and secret_access_key must be given together, non-empty".into(),
                ));
            }
        };
        let mut token_hashes = Vec::with_capacity(p.api_tokens_sha256.len());
        for (i, hex_digest) in p.api_tokens_sha256.iter().enumerate() {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|_| {
                invalid(format!(
                    "api_tokens_sha256[{i}] is not a hex SHA-256 digest (64 hex digits)"
                ))
            })?;
            if let Some(other) = tokens.insert(digest, p.name.clone()) {
                return Err(invalid(format!(
                    "api_tokens_sha256[{i}] is already a token of principal {other:?}"
                )));
            }
            token_hashes.push(digest);
        }
        let mqtt = match (&p.mqtt_username, &p.mqtt_password_hash) {
            (None, None) => None,
            (Some(user), Some(hash)) => {
                if let Some(other) = usernames.insert(user.clone(), p.name.clone()) {
                    return Err(invalid(format!(
                        "mqtt_username {user:?} is already used by principal {other:?}"
                    )));
                }
                let stored = StoredHash::parse(hash).map_err(|e| {
                    invalid(format!(
                        "mqtt_password_hash: {e}; produce one with `retaind hash-password`"
                    ))
                })?;
                Some((user.clone(), stored))
            }
            _ => {
                return Err(invalid(
                    "mqtt_username and mqtt_password_hash must be given together".into(),
                ));
            }
        };
        let client_cert = match &p.client_cert_sha256 {
            None => None,
            Some(hex_digest) => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|_| {
                    invalid("client_cert_sha256 is not a hex SHA-256 digest (64 hex digits)".into())
                })?;
                if let Some(other) = certs.insert(digest, p.name.clone()) {
                    return Err(invalid(format!(
                        "client_cert_sha256 is already the certificate of principal {other:?}"
                    )));
                }
                Some(digest)
            }
        };
        let statements = p
            .statements
            .iter()
            .enumerate()
            .map(|(i, s)| statement(s).map_err(|e| invalid(format!("statements[{i}]: {e}"))))
            .collect::<Result<_, _>>()?;
        let mqtt_credentials = mqtt_credentials_digest(&p);
        out.push(ValidPrincipal {
            mqtt_credentials,
            name: p.name,
            access_key,
            token_hashes,
            mqtt,
            client_cert,
            statements,
            limits: Limits {
                retained_messages: p.max_retained_messages.filter(|&n| n > 0),
                offline_sessions: p.max_offline_sessions.filter(|&n| n > 0),
                queue_memory_bytes: p
                    .max_queue_memory_mib
                    .filter(|&n| n > 0)
                    .map(|mib| usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)),
                connections: count(p.max_connections),
                watches: count(p.max_watches),
            },
        });
    }
    Ok(out)
}

/// A limit as the file gives it: 0 is none.
fn count(n: Option<u64>) -> Option<usize> {
    n.filter(|&n| n > 0)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn mqtt_credentials_digest(p: &PrincipalConfig) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in [
        &p.mqtt_username,
        &p.mqtt_password_hash,
        &p.client_cert_sha256
            .as_ref()
            .map(|c| c.trim().to_ascii_lowercase()),
    ] {
        // Length-prefixed, so that no two different triples hash alike.
        let part = part.as_deref().unwrap_or_default();
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part.as_bytes());
    }
    digest.finalize().into()
}

fn statement(s: &StatementConfig) -> Result<Statement, String> {
    if s.actions.is_empty() {
        return Err("actions must not be empty".into());
    }
    if s.resources.is_empty() {
        return Err("resources must not be empty".into());
    }
    let mut actions = HashSet::new();
    for raw in &s.actions {
        let parsed = Action::parse_many(raw).ok_or_else(|| {
            let known: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
            format!(
                "unknown action {raw:?} (known: {}, or iot:*)",
                known.join(", ")
            )
        })?;
        actions.extend(parsed);
    }
    let resources = s
        .resources
        .iter()
        .map(|r| Resource::parse(r))
        .collect::<Result<_, _>>()?;
    Ok(Statement {
        effect: s.effect,
        actions,
        resources,
    })
}
