//! Pagination tokens for ListRetainedMessages.
//!
//! A token is the last topic of the page it ends, signed with HMAC-SHA256 under a key every
//! node shares through the database. Keyset pagination keeps a token valid while topics come
//! and go; the signature lets the server refuse tokens it did not issue instead of silently
//! starting the listing somewhere a client made up. See docs/decisions/002-pagination-tokens.md.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::topic::TopicName;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

#[derive(Clone)]
pub struct PageTokens {
    key: Arc<[u8]>,
}

impl PageTokens {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.into() }
    }

    pub fn issue(&self, last_topic: &TopicName) -> String {
        let mut raw = Vec::with_capacity(1 + last_topic.as_str().len() + TAG_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(last_topic.as_str().as_bytes());
        let tag = self.mac(&raw).finalize().into_bytes();
        raw.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The topic the token resumes after, or `None` if this server did not issue it.
    pub fn redeem(&self, token: &str) -> Option<TopicName> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() < 1 + TAG_LEN || raw[0] != VERSION {
            return None;
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        self.mac(signed).verify_truncated_left(tag).ok()?;
        let topic = std::str::from_utf8(&signed[1..]).ok()?;
        Some(TopicName::from_stored(topic.to_owned()))
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(data);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicLimits;

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s, TopicLimits::default()).unwrap()
    }

    #[test]
    fn issued_tokens_round_trip() {
        let tokens = PageTokens::new(b"k1");
        for t in ["a", "a/b c", "ünï/çødé", "$SYS/x"] {
            assert_eq!(tokens.redeem(&tokens.issue(&topic(t))), Some(topic(t)));
        }
    }

    #[test]
    fn tokens_from_another_key_are_refused() {
        let token = PageTokens::new(b"k1").issue(&topic("a/b"));
        assert_eq!(PageTokens::new(b"k2").redeem(&token), None);
    }

    #[test]
    fn altered_or_invented_tokens_are_refused() {
        let tokens = PageTokens::new(b"k1");
        let mut raw = URL_SAFE_NO_PAD.decode(tokens.issue(&topic("a/b"))).unwrap();
        raw[1] ^= 1;
        for bad in [
            URL_SAFE_NO_PAD.encode(raw),
            "".into(),
            "not base64!".into(),
            "YWJj".into(),
        ] {
            assert_eq!(tokens.redeem(&bad), None, "{bad}");
        }
    }
}
