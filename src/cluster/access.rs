//! How a node proves itself to NATS, beyond the address: the credentials of its URL (which
//! async-nats parses but does not send), TLS of the operator's own, and an identity from a
//! credentials or NKey file (`keys`); and how its URLs appear in logs, without secrets.

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::ConnectOptions;

use super::Error;
use super::keys::{KeyFile, Keys};

/// How the node reaches NATS beyond what its URL says: TLS with a CA of the operator's own
/// to verify the servers with, a certificate for servers that verify their clients, and an
/// identity from a credentials or NKey file (which takes the place of the URL's credentials).
#[derive(Clone, Default)]
pub struct NatsAccess {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    keys: Option<Arc<Keys>>,
}

impl NatsAccess {
    /// Reads `key_file`, if any: an unusable one is an error now rather than at every
    /// connection.
    pub fn new(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        key_file: Option<KeyFile>,
    ) -> Result<Self, Error> {
        let keys = key_file.map(Keys::load).transpose()?.map(Arc::new);
        Ok(Self {
            ca,
            cert,
            key,
            keys,
        })
    }
}

/// Shows which key file, never what it holds.
impl std::fmt::Debug for NatsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAccess")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("key_file", &self.keys.as_ref().map(|k| k.file()))
            .finish()
    }
}

/// Whether `urls` carry credentials of their own, which a key file would silently replace.
pub fn url_has_credentials(urls: &str) -> bool {
    credentials(urls).is_some()
}

/// Credentials carried by a URL's user info, as NATS's own clients read them.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `nats://user:password@host`
    UserPassword(String, String),
    /// `nats://token@host`
    Token(String),
}

/// The credentials in the user info of the first of the comma-separated `urls` that has any,
/// percent-decoded. async-nats parses them but does not send them.
fn credentials(urls: &str) -> Option<Credentials> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    urls.split(',').find_map(|url| {
        let (userinfo, _) = authority(url)?.rsplit_once('@')?;
        Some(match userinfo.split_once(':') {
            Some((user, password)) => Credentials::UserPassword(decode(user), decode(password)),
            None => Credentials::Token(decode(userinfo)),
        })
    })
}

/// The authority of `url` (between `scheme://` and the path), if it has a scheme.
fn authority(url: &str) -> Option<&str> {
    let (_, rest) = url.trim().split_once("://")?;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// `urls` as logs and errors show them: the credentials of each replaced by `***`.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(
            |url| match authority(url).and_then(|a| a.rsplit_once('@')) {
                Some((userinfo, _)) => url.replacen(&format!("{userinfo}@"), "***@", 1),
                None => url.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// What every connection of the node to NATS starts from: its identity (a key file's, read
/// again at each connection, or the URL's credentials) and the TLS settings.
pub(super) fn options(urls: &str, access: &NatsAccess) -> ConnectOptions {
    let mut options = match (&access.keys, credentials(urls)) {
        (Some(keys), _) => {
            let keys = keys.clone();
            ConnectOptions::with_auth_callback(move |nonce| {
                let answer = keys.auth(&nonce);
                async move { answer }
            })
        }
        (None, Some(Credentials::UserPassword(user, password))) => {
            ConnectOptions::new().user_and_password(user, password)
        }
        (None, Some(Credentials::Token(token))) => ConnectOptions::new().token(token),
        (None, None) => ConnectOptions::new(),
    };
    if let Some(ca) = &access.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&access.cert, &access.key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_first_url_that_has_them_percent_decoded() {
        assert_eq!(credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(
            credentials("nats://a:4222,nats://svc:p%40ss%3Aw%2Frd@b:4222/x?y"),
            Some(Credentials::UserPassword("svc".into(), "p@ss:w/rd".into()))
        );
        assert_eq!(
            credentials("tls://t0ken@nats.example:4222"),
            Some(Credentials::Token("t0ken".into()))
        );
    }

    #[test]
    fn logs_show_urls_without_their_credentials() {
        assert_eq!(
            redact("nats://svc:secret@a:4222,nats://b:4222,tls://tok@c"),
            "nats://***@a:4222,nats://b:4222,tls://***@c"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
