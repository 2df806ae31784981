//! Bounds on MQTT password checks. Each one is an argon2 verification (19 MiB, tens of
//! milliseconds of a core) on a blocking thread, which a flood of CONNECTs with bad passwords
//! could otherwise multiply without limit:
//!
//! - at most [`PasswordChecks::limit`] run at once (twice the cores); a CONNECT that waits
//!   longer than [`SLOT_WAIT`] for one is refused with Server busy;
//! - a credential checked before is not checked again (`known_credentials`): one that verified
//!   gets in, one that failed is refused;
//! - each source address (an IPv6 one by its /64) may fail [`FAILURES_PER_WINDOW`] checks per
//!   [`FAILURE_WINDOW`]; past that its CONNECTs with credentials not known yet are refused
//!   without a check, the fail2ban approach. Known good credentials still get in, so one
//!   misconfigured device does not lock out the others behind its NAT address. The table of
//!   addresses is bounded ([`MAX_SOURCES`]);
//! - every refusal for credentials is answered after [`REFUSAL_DELAY`], held on a timer, not a
//!   thread, so one connection can guess at most once a second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::known_credentials::{Digest, Known, KnownCredentials};
use crate::auth::Principal;

/// Longest a CONNECT waits for a password check slot before it is refused as Server busy.
pub(super) const SLOT_WAIT: Duration = Duration::from_secs(2);
/// How long a refusal for credentials waits before its CONNACK.
pub(super) const REFUSAL_DELAY: Duration = Duration::from_secs(1);
/// Failed password checks a source address may cause in one window.
const FAILURES_PER_WINDOW: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked at once; about 64 bytes each.
const MAX_SOURCES: usize = 10_000;

/// Where the broker stands with password checks, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCheckStats {
    /// Checks that may run at once.
    pub limit: usize,
    /// Checks running now.
    pub running: usize,
    /// The most that ever ran at once.
    pub peak: usize,
    /// Checks (argon2 verifications) run so far.
    pub checked: u64,
    /// Credentials answered without a check, because they were checked before.
    pub recalled: u64,
}

pub(super) struct PasswordChecks {
    limit: usize,
    slots: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    checked: AtomicU64,
    recalled: AtomicU64,
    failures: Mutex<FailureBudgets>,
    known: Option<KnownCredentials>,
}

/// A running password check's slot; dropping it frees the slot.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    running: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordChecks {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let limit = 2 * cores;
        Self {
            limit,
            slots: Arc::new(Semaphore::new(limit)),
            running: Arc::default(),
            peak: Arc::default(),
            checked: AtomicU64::default(),
            recalled: AtomicU64::default(),
            failures: Mutex::new(FailureBudgets::default()),
            known: KnownCredentials::new(),
        }
    }

    pub fn stats(&self) -> PasswordCheckStats {
        PasswordCheckStats {
            limit: self.limit,
            running: self.running.load(Ordering::Acquire),
            peak: self.peak.load(Ordering::Acquire),
            checked: self.checked.load(Ordering::Acquire),
            recalled: self.recalled.load(Ordering::Acquire),
        }
    }

    /// A credential's digest, to look it up and remember it by; `None` when credentials are
    /// not remembered (no random key).
    pub fn digest(&self, username: &str, password: &[u8]) -> Option<Digest> {
        Some(self.known.as_ref()?.digest(username, password))
    }

    /// The principals were reloaded: verdicts reached before are forgotten.
    pub fn forget_all(&self) {
        if let Some(known) = &self.known {
            known.forget_all();
        }
    }

    /// What a check of this credential found before, if it ran.
    pub fn recall(&self, digest: Option<Digest>) -> Option<Known> {
        let known = self.known.as_ref()?.get(&digest?)?;
        self.recalled.fetch_add(1, Ordering::AcqRel);
        Some(known)
    }

    /// A check runs now.
    pub fn checking(&self) {
        self.checked.fetch_add(1, Ordering::AcqRel);
    }

    /// What the check of a credential found.
    pub fn remember(&self, digest: Option<Digest>, verified: Option<Arc<Principal>>) {
        let (Some(known), Some(digest)) = (&self.known, digest) else {
            return;
        };
        match verified {
            Some(principal) => known.verified(digest, principal),
            None => known.refused(digest),
        }
    }

    /// A slot to run one check in, waiting up to [`SLOT_WAIT`] (first come, first served);
    /// `None` when none came free in time.
    pub async fn slot(&self) -> Option<Slot> {
        self.slot_within(SLOT_WAIT).await
    }

    async fn slot_within(&self, wait: Duration) -> Option<Slot> {
        let permit = tokio::time::timeout(wait, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let now = self.running.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        Some(Slot {
            _permit: permit,
            running: self.running.clone(),
        })
    }

    /// Whether `source` has failed too often lately to be checked at all.
    pub fn over_budget(&self, source: Option<IpAddr>) -> bool {
        source.is_some_and(|ip| self.budgets().over(ip, Instant::now()))
    }

    pub fn failed(&self, source: Option<IpAddr>) {
        if let Some(ip) = source {
            self.budgets().fail(ip, Instant::now());
        }
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, FailureBudgets> {
        // Whole method calls on plain data; a panic cannot leave it torn.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Failures by source in the current window of each. Pure: the caller passes the time.
#[derive(Debug, Default)]
struct FailureBudgets {
    sources: HashMap<IpAddr, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl FailureBudgets {
    fn over(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources
            .get(&source_key(ip))
            .is_some_and(|w| !w.expired(now) && w.failures >= FAILURES_PER_WINDOW)
    }

    fn fail(&mut self, ip: IpAddr, now: Instant) {
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.sources.retain(|_, w| !w.expired(now));
            if self.sources.len() >= MAX_SOURCES {
                // Full of live windows: this source goes untracked, still bounded by the
                // slots and the refusal delay.
                return;
            }
        }
        let window = self.sources.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if window.expired(now) {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

impl Window {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= FAILURE_WINDOW
    }
}

/// An IPv4 address, or the /64 of an IPv6 one: one host usually holds a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_over_budget_after_its_failures_until_the_window_ends() {
        let mut b = FailureBudgets::default();
        let t0 = Instant::now();
        for _ in 0..FAILURES_PER_WINDOW {
            assert!(!b.over(ip("192.0.2.1"), t0));
            b.fail(ip("192.0.2.1"), t0);
        }
        assert!(b.over(ip("192.0.2.1"), t0));
        assert!(
            !b.over(ip("192.0.2.2"), t0),
            "other sources are not affected"
        );
        assert!(!b.over(ip("192.0.2.1"), t0 + FAILURE_WINDOW));
    }

    #[test]
    fn an_ipv6_source_is_counted_by_its_64_prefix() {
        let mut b = FailureBudgets::default();
        let t0 = Instant::now();
        for i in 0..FAILURES_PER_WINDOW {
            b.fail(ip(&format!("2001:db8::{i:x}")), t0);
        }
        assert!(b.over(ip("2001:db8::ffff:1"), t0));
        assert!(!b.over(ip("2001:db8:0:1::1"), t0));
    }

    #[test]
    fn the_table_is_bounded_and_makes_room_from_expired_windows() {
        let mut b = FailureBudgets::default();
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            b.fail(IpAddr::V4(i.into()), t0);
        }
        b.fail(ip("2001:db8::1"), t0);
        assert_eq!(
            b.sources.len(),
            MAX_SOURCES,
            "full: the newcomer is not tracked"
        );
        b.fail(ip("2001:db8::1"), t0 + FAILURE_WINDOW);
        assert_eq!(
            b.sources.len(),
            1,
            "expired windows were dropped to make room"
        );
    }

    #[tokio::test]
    async fn slots_bound_the_checks_running_at_once() {
        let checks = PasswordChecks::new();
        let held: Vec<Slot> =
            futures_util::future::join_all((0..checks.limit).map(|_| checks.slot()))
                .await
                .into_iter()
                .map(Option::unwrap)
                .collect();
        assert_eq!(checks.stats().running, checks.limit);
        let wait = Duration::from_millis(20);
        assert!(
            checks.slot_within(wait).await.is_none(),
            "none free within the wait"
        );
        drop(held);
        assert_eq!(checks.stats().running, 0);
        assert_eq!(checks.stats().peak, checks.limit);
        assert!(checks.slot().await.is_some());
    }
}
