//! An operator's disconnect (DeleteConnection over HTTP) of a client connected to another
//! node. The node that took the request finds in Postgres which node holds the client's
//! claim, and asks it over NATS (`<prefix>.d.<node>`); that node closes the connection, if it
//! still has it, and answers whether it did.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::inbox::Inbox;
use super::loops::next_or_stop;

/// How long the asking node waits for the holder's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a disconnect could not be carried out, for the HTTP answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DisconnectError(pub String);

/// What the holder is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub client_id: String,
    /// End the session with the connection, persistent or not.
    pub clean_session: bool,
    /// Do not publish the connection's Will.
    pub prevent_will: bool,
}

impl Disconnect {
    /// `clean prevent client-id`: the id last, whole, whatever it contains.
    pub fn encode(&self) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            u8::from(self.clean_session),
            u8::from(self.prevent_will),
            self.client_id
        ))
    }

    /// Asks `node`, which holds the client's claim, to disconnect it: whether it had the client
    /// connected.
    pub async fn ask(
        &self,
        client: &async_nats::Client,
        prefix: &str,
        node: &str,
    ) -> Result<bool, DisconnectError> {
        let ask = client.request(subject(prefix, node), self.encode());
        match tokio::time::timeout(ANSWER_TIMEOUT, ask).await {
            Ok(Ok(answer)) => Ok(answer.payload.as_ref() == b"1"),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(DisconnectError(format!(
                    "node {node}, which holds the client's connection, takes no disconnect \
                     requests (a release from before them?)"
                )))
            }
            Ok(Err(e)) => Err(DisconnectError(format!(
                "could not ask node {node}, which holds the client's connection: {e}"
            ))),
            Err(_) => Err(DisconnectError(format!(
                "node {node}, which holds the client's connection, did not answer within \
                 {ANSWER_TIMEOUT:?}"
            ))),
        }
    }

    pub fn decode(body: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let mut parts = text.splitn(3, ' ');
        let flag = |part: Option<&str>| match part? {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let clean_session = flag(parts.next())?;
        let prevent_will = flag(parts.next())?;
        Some(Self {
            client_id: parts.next()?.to_owned(),
            clean_session,
            prevent_will,
        })
    }
}

pub fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.d.{node}")
}

/// Answers the other nodes' disconnect requests for this node's clients: `1` if the client was
/// connected here and is now being disconnected, `0` if not.
pub async fn answer(
    mut requests: async_nats::Subscriber,
    client: async_nats::Client,
    inbox: Arc<Inbox>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(request) = next_or_stop(&mut requests, &shutdown).await else {
            return;
        };
        let Some(asked) = Disconnect::decode(&request.payload) else {
            tracing::warn!("dropped a disconnect request that does not decode");
            continue;
        };
        let done = match inbox.events.get() {
            Some(events) => {
                events
                    .disconnect(&asked.client_id, asked.clean_session, asked.prevent_will)
                    .await
            }
            None => false,
        };
        if let Some(reply) = request.reply {
            let answer = Bytes::from_static(if done { b"1" } else { b"0" });
            let _ = client.publish(reply, answer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_its_encoding_whatever_the_client_id() {
        for (id, clean, prevent) in [
            ("dev 1/a", true, false),
            ("x", false, true),
            ("é", true, true),
        ] {
            let asked = Disconnect {
                client_id: id.to_owned(),
                clean_session: clean,
                prevent_will: prevent,
            };
            assert_eq!(Disconnect::decode(&asked.encode()), Some(asked));
        }
        assert_eq!(Disconnect::decode(b"2 0 id"), None);
        assert_eq!(Disconnect::decode(b"1 1"), None);
        assert_eq!(Disconnect::decode(&[0xff, b' ', b'1']), None);
    }
}
