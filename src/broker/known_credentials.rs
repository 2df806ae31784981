//! MQTT credentials this process has already checked, so that a known one costs no argon2 run.
//!
//! A credential is a user name and password, remembered only as a keyed digest: HMAC-SHA256
//! under a key drawn from the operating system at start, never the password itself, so the
//! table is of no use outside this process. Two bounded tables, so that a flood of wrong
//! passwords cannot push out the good ones:
//! - one that verified is let in without a check, even from a source over its failure budget:
//!   devices behind one NAT address keep connecting while a misconfigured neighbour uses up
//!   that address's budget;
//! - one that failed is refused without a check, and does not count against its source again:
//!   a device retrying a wrong password costs one argon2 run, not one per attempt.
//!
//! A reload of the principals makes every verdict stale: [`KnownCredentials::forget_all`] empties
//! both tables and starts a new generation, which is part of every digest, so that a verdict
//! reached under the old principals while the reload ran is remembered where no one looks.
//! A credential pushed out of a full table is simply checked again next time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use quick_cache::sync::Cache;
use sha2::Sha256;

use crate::auth::Principal;

/// Credentials that verified; about 100 bytes each.
pub(super) const MAX_VERIFIED: usize = 10_000;
/// Credentials that failed.
pub(super) const MAX_REFUSED: usize = 10_000;

/// What is known of a credential.
#[derive(Clone)]
pub(super) enum Known {
    Verified(Arc<Principal>),
    Refused,
}

/// A credential's keyed digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Digest([u8; 32]);

pub(super) struct KnownCredentials {
    key: [u8; 32],
    generation: AtomicU64,
    verified: Cache<Digest, Arc<Principal>>,
    refused: Cache<Digest, ()>,
}

impl KnownCredentials {
    /// `None` when the operating system gives no random key: then every credential is checked.
    pub fn new() -> Option<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).ok()?;
        Some(Self::with_key(key))
    }

    fn with_key(key: [u8; 32]) -> Self {
        Self {
            key,
            generation: AtomicU64::new(0),
            verified: Cache::new(MAX_VERIFIED),
            refused: Cache::new(MAX_REFUSED),
        }
    }

    pub fn digest(&self, username: &str, password: &[u8]) -> Digest {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&self.generation.load(Ordering::Acquire).to_be_bytes());
        // The user name's length first, so that ("ab", "c") and ("a", "bc") differ.
        mac.update(&(username.len() as u64).to_be_bytes());
        mac.update(username.as_bytes());
        mac.update(password);
        Digest(mac.finalize().into_bytes().into())
    }

    /// The principals changed: nothing known holds any more.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.clear();
        self.refused.clear();
    }

    pub fn get(&self, digest: &Digest) -> Option<Known> {
        if let Some(principal) = self.verified.get(digest) {
            return Some(Known::Verified(principal));
        }
        self.refused.get(digest).map(|()| Known::Refused)
    }

    pub fn verified(&self, digest: Digest, principal: Arc<Principal>) {
        self.verified.insert(digest, principal);
    }

    pub fn refused(&self, digest: Digest) {
        self.refused.insert(digest, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Authenticator};

    fn principal() -> Arc<Principal> {
        let hash = crate::auth::hash_password("pw");
        let config = AuthConfig::parse(&format!(
            "[[principals]]\nname = \"d\"\nmqtt_username = \"d\"\nmqtt_password_hash = \"{hash}\"\n"
        ))
        .unwrap();
        let auth = Authenticator::new(config).unwrap();
        auth.verify_mqtt(Some("d"), Some(b"pw")).unwrap()
    }

    #[test]
    fn a_credential_is_known_by_its_digest_once_checked() {
        let known = KnownCredentials::with_key([7; 32]);
        let good = known.digest("d", b"pw");
        let bad = known.digest("d", b"wrong");
        assert!(known.get(&good).is_none());
        known.verified(good, principal());
        known.refused(bad);
        assert!(matches!(known.get(&good), Some(Known::Verified(p)) if p.name == "d"));
        assert!(matches!(known.get(&bad), Some(Known::Refused)));
        assert!(known.get(&known.digest("d", b"other")).is_none());
    }

    /// A verdict reached under the old principals, remembered after the reload forgot them
    /// all, is never recalled.
    #[test]
    fn after_forget_all_nothing_is_known_and_late_verdicts_are_not_recalled() {
        let known = KnownCredentials::with_key([7; 32]);
        let before = known.digest("d", b"pw");
        known.verified(before, principal());
        known.forget_all();
        assert!(known.get(&before).is_none());
        known.verified(before, principal());
        assert!(known.get(&known.digest("d", b"pw")).is_none());
        let after = known.digest("d", b"pw");
        known.verified(after, principal());
        assert!(matches!(known.get(&after), Some(Known::Verified(_))));
    }

    #[test]
    fn the_digest_depends_on_the_key_and_on_where_the_name_ends() {
        let a = KnownCredentials::with_key([1; 32]);
        let b = KnownCredentials::with_key([2; 32]);
        assert_ne!(a.digest("ab", b"c"), a.digest("a", b"bc"));
        assert_ne!(a.digest("d", b"pw"), b.digest("d", b"pw"));
        assert_eq!(a.digest("d", b"pw"), a.digest("d", b"pw"));
    }

    #[test]
    fn refused_credentials_cannot_push_out_verified_ones() {
        let known = KnownCredentials::with_key([3; 32]);
        let good = known.digest("d", b"pw");
        known.verified(good, principal());
        for i in 0..(2 * MAX_REFUSED) {
            known.refused(known.digest("d", format!("guess {i}").as_bytes()));
        }
        assert!(matches!(known.get(&good), Some(Known::Verified(_))));
        assert!(known.refused.len() <= MAX_REFUSED);
    }
}
