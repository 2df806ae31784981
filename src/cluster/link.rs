//! The node's one NATS connection: made at start with retries for as long as the operator
//! allows, then kept by async-nats, which reconnects and resubscribes by itself. What changes
//! while it runs is logged once per change (not per retry), counted as an epoch that the
//! interest tasks wait on to announce themselves again, and shown by `/readyz`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::watch;

use super::Error;
use super::keys::{KeyFile, Keys};

/// Room for a message's topic, properties and frame head besides its payload.
pub const HEAD_ROOM: usize = 64 * 1024;

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
fn options(urls: &str, tls: &NatsAccess) -> ConnectOptions {
    let mut options = match (&tls.keys, credentials(urls)) {
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
    if let Some(ca) = &tls.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    options
}

/// Whether the connection is up, and how many times it came back.
pub struct Link {
    connected: AtomicBool,
    /// Set once the first connection is made: only later ones are reconnections.
    started: AtomicBool,
    /// Advanced on every reconnection.
    epoch: watch::Sender<u64>,
    /// Messages the NATS server or this client dropped because this node read too slowly.
    pub slow_consumer_events: AtomicU64,
    /// When a slow consumer was last logged (ms since `born`), so that a burst is one line.
    slow_logged_at: AtomicU64,
    born: Instant,
}

/// At most one log line a minute about slow-consumer events.
const SLOW_LOG_EVERY_MS: u64 = 60_000;

impl Link {
    fn new() -> Self {
        Self {
            connected: AtomicBool::new(false),
            started: AtomicBool::new(false),
            epoch: watch::Sender::new(0),
            slow_consumer_events: AtomicU64::new(0),
            slow_logged_at: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// A subscription's buffer in this client was full, so async-nats dropped a message sent
    /// to this node: counted, and logged at most once a minute. Which message, and so which
    /// sessions missed it, nobody can tell any more (decision 014).
    fn slow_consumer(&self, url: &str) {
        let events = self.slow_consumer_events.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.slow_logged_at.load(Ordering::Relaxed);
        let due = events == 1 || now.saturating_sub(last) >= SLOW_LOG_EVERY_MS;
        if due
            && self
                .slow_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                url,
                events,
                "this node reads from NATS too slowly: messages from other nodes were dropped \
                 (slow consumer; count since start)"
            );
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn epochs(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Times the connection came back since the node started.
    pub fn reconnections(&self) -> u64 {
        *self.epoch.borrow()
    }

    fn on(&self, url: &str, event: Event) {
        match event {
            Event::Connected => {
                let was = self.connected.swap(true, Ordering::AcqRel);
                if !was && self.started.load(Ordering::Acquire) {
                    tracing::warn!(url, "NATS connection back: routing between nodes resumes");
                    self.epoch.send_modify(|e| *e += 1);
                }
            }
            Event::Disconnected => {
                if self.connected.swap(false, Ordering::AcqRel) {
                    tracing::error!(
                        url,
                        "NATS connection lost: this node delivers only its own clients' \
                         messages, and /readyz answers 503, until it is back"
                    );
                }
            }
            Event::SlowConsumer(_) => self.slow_consumer(url),
            other => tracing::info!(url, event = %other, "NATS"),
        }
    }
}

/// A second connection for queue subscriptions (members of shared subscriptions): the
/// first one does not receive its own publishes, and NATS would then skip this node's
/// members for them. Made once the first connection works, so it needs no retries of its own;
/// async-nats keeps it up.
/// Its slow consumers count with the first one's (`link`); its connection state is the
/// first one's to report.
pub async fn connect_members(
    url: &str,
    tls: &NatsAccess,
    name: &str,
    link: &Arc<Link>,
) -> Result<Client, Error> {
    let link = link.clone();
    let events_url = redact(url);
    options(url, tls)
        .name(name)
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .event_callback(move |event| {
            let link = link.clone();
            let url = events_url.clone();
            async move {
                if matches!(event, Event::SlowConsumer(_)) {
                    link.slow_consumer(&url);
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| Error::Unreachable {
            url: redact(url),
            cause: e.to_string(),
        })
}

/// Connects to `url`, trying again every half second until `wait` has passed, logging each
/// failure's cause; then checks that the largest payload fits the server's message size.
pub async fn connect(
    url: &str,
    tls: &NatsAccess,
    name: &str,
    wait: Duration,
    max_payload_bytes: usize,
) -> Result<(Client, Arc<Link>), Error> {
    let link = Arc::new(Link::new());
    let deadline = Instant::now() + wait;
    let shown = redact(url);
    let client = loop {
        let events = link.clone();
        let events_url = shown.clone();
        let options = options(url, tls)
            .name(name)
            // A node's own publishes never come back to it: it delivered them locally.
            .no_echo()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = events.clone();
                let url = events_url.clone();
                async move { events.on(&url, event) }
            });
        match options.connect(url).await {
            Ok(client) => break client,
            Err(e) => {
                let cause = e.to_string();
                if Instant::now() >= deadline {
                    return Err(Error::Unreachable { url: shown, cause });
                }
                tracing::warn!(url = %shown, %cause, "cannot reach NATS yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    link.connected.store(true, Ordering::Release);
    link.started.store(true, Ordering::Release);
    let server = client.server_info().max_payload;
    let needed = max_payload_bytes.saturating_add(HEAD_ROOM);
    if server < needed {
        return Err(Error::PayloadTooLarge {
            url: shown,
            server,
            payload: max_payload_bytes,
            needed,
        });
    }
    Ok((client, link))
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
