//! Where an HTTP/1.1 connection is in its life, and so which timeout governs it. Pure: events
//! come in with the time they happened, deadlines go out.
//!
//! - **Head**: from accept, or from the first byte after an idle spell, until the request's head
//!   is complete: `header`. A client that connects and sends nothing is cut here too.
//! - **Busy**: a request is being served. The connection has no deadline of its own: the body
//!   has one (`body`, see `body::Deadline`), and the handler's time is bounded by the store's.
//!   A response the client takes none of for as long as `idle` ends it, whatever the phase
//!   (`activity`): a stream (a watch) would otherwise hold its place for ever.
//! - **Idle**: a response is complete and nothing of the next request has arrived: `idle`.
//!
//! A connection upgraded to a WebSocket leaves hyper, and with it this machine: MQTT keep alive
//! governs it from then on.

use std::time::Duration;

use tokio::time::Instant;

/// The three HTTP timeouts (`--http-header-timeout`, `--http-body-timeout`,
/// `--http-idle-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// For the whole head of a request, from its first byte (from accept for the first request).
    pub header: Duration,
    /// For the whole body of a request, from the end of its head.
    pub body: Duration,
    /// Between a response and the first byte of the next request.
    pub idle: Duration,
}

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    Header,
    Idle,
    /// The client took none of a response for as long as `idle` (see `activity`).
    Write,
}

impl Expired {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
            Self::Write => "write",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Head {
        since: Instant,
    },
    /// `in_flight` requests are being served (hyper serves one at a time; counting keeps a
    /// response that finishes after the next request starts from ending the next one's Busy).
    Busy {
        in_flight: u32,
    },
    Idle {
        since: Instant,
    },
}

impl Phase {
    /// A connection just accepted: waiting for its first head.
    pub(super) fn opened(now: Instant) -> Self {
        Self::Head { since: now }
    }

    /// Bytes arrived. Returns whether the phase changed (an idle connection's next head began).
    pub(super) fn on_read(&mut self, now: Instant) -> bool {
        if let Self::Idle { .. } = self {
            *self = Self::Head { since: now };
            return true;
        }
        false
    }

    /// A request's head is complete and its handler starts.
    pub(super) fn on_request(&mut self) {
        *self = match *self {
            Self::Busy { in_flight } => Self::Busy {
                in_flight: in_flight + 1,
            },
            Self::Head { .. } | Self::Idle { .. } => Self::Busy { in_flight: 1 },
        };
    }

    /// A response has been handed over whole (or dropped with its connection).
    pub(super) fn on_response_done(&mut self, now: Instant) {
        if let Self::Busy { in_flight } = *self {
            *self = match in_flight {
                0 | 1 => Self::Idle { since: now },
                n => Self::Busy { in_flight: n - 1 },
            };
        }
    }

    /// When the connection is to be closed if nothing happens, and why.
    pub(super) fn deadline(&self, timeouts: &HttpTimeouts) -> Option<(Instant, Expired)> {
        match *self {
            Self::Head { since } => Some((since + timeouts.header, Expired::Header)),
            Self::Idle { since } => Some((since + timeouts.idle, Expired::Idle)),
            Self::Busy { .. } => None,
        }
    }

    /// When to look at the connection again, having looked at `now`: at its deadline, or
    /// sooner. Whatever happens after `now` (a head begins, a response finishes) sets a deadline
    /// at least the shorter of the header and idle timeouts after it, so looking again within
    /// that span sees every deadline before it passes, and nothing has to announce the events.
    pub(super) fn next_look(&self, now: Instant, timeouts: &HttpTimeouts) -> Instant {
        // A zero timeout is refused by the flags; the floor keeps a hand-made one from spinning.
        let horizon = now
            + timeouts
                .header
                .min(timeouts.idle)
                .max(Duration::from_millis(1));
        match self.deadline(timeouts) {
            Some((at, _)) => at.min(horizon),
            None => horizon,
        }
    }

    /// Whether this phase's deadline has passed at `now`.
    pub(super) fn expired(&self, now: Instant, timeouts: &HttpTimeouts) -> Option<Expired> {
        self.deadline(timeouts)
            .filter(|(at, _)| *at <= now)
            .map(|(_, why)| why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: HttpTimeouts = HttpTimeouts {
        header: Duration::from_secs(10),
        body: Duration::from_secs(30),
        idle: Duration::from_secs(60),
    };

    fn at(secs: u64) -> Instant {
        // Any fixed origin will do: only differences matter.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_secs(secs)
    }

    #[test]
    fn a_new_connection_has_the_header_timeout_from_accept() {
        let phase = Phase::opened(at(0));
        assert_eq!(phase.deadline(&TIMEOUTS), Some((at(10), Expired::Header)));
        assert_eq!(phase.expired(at(9), &TIMEOUTS), None);
        assert_eq!(phase.expired(at(10), &TIMEOUTS), Some(Expired::Header));
    }

    #[test]
    fn bytes_of_a_head_do_not_extend_the_header_timeout() {
        let mut phase = Phase::opened(at(0));
        assert!(!phase.on_read(at(5)));
        assert!(!phase.on_read(at(9)));
        assert_eq!(phase.expired(at(10), &TIMEOUTS), Some(Expired::Header));
    }

    #[test]
    fn a_request_in_progress_has_no_connection_deadline() {
        let mut phase = Phase::opened(at(0));
        phase.on_request();
        assert!(!phase.on_read(at(100)));
        assert_eq!(phase.deadline(&TIMEOUTS), None);
        assert_eq!(phase.expired(at(1_000), &TIMEOUTS), None);
    }

    #[test]
    fn after_a_response_the_idle_timeout_runs_until_the_next_byte() {
        let mut phase = Phase::opened(at(0));
        phase.on_request();
        phase.on_response_done(at(2));
        assert_eq!(phase.deadline(&TIMEOUTS), Some((at(62), Expired::Idle)));
        // Longer than the header timeout, shorter than the idle one: still open.
        assert_eq!(phase.expired(at(30), &TIMEOUTS), None);
        assert_eq!(phase.expired(at(62), &TIMEOUTS), Some(Expired::Idle));
        // The next request's first byte starts its header timeout, which may come sooner.
        assert!(phase.on_read(at(30)));
        assert_eq!(phase.deadline(&TIMEOUTS), Some((at(40), Expired::Header)));
    }

    #[test]
    fn the_next_look_is_the_deadline_or_sooner() {
        let mut phase = Phase::opened(at(0));
        assert_eq!(phase.next_look(at(0), &TIMEOUTS), at(10));
        assert_eq!(phase.next_look(at(4), &TIMEOUTS), at(10));
        phase.on_request();
        // No deadline while busy, but the response may finish at any moment.
        assert_eq!(phase.next_look(at(5), &TIMEOUTS), at(15));
        phase.on_response_done(at(7));
        // Idle until 67, but a head beginning at 8 would be due at 18.
        assert_eq!(phase.next_look(at(7), &TIMEOUTS), at(17));
        assert_eq!(phase.next_look(at(60), &TIMEOUTS), at(67));
    }

    #[test]
    fn no_deadline_set_after_a_look_comes_before_the_next_look() {
        // Every phase, every event after the look, with either timeout the shorter.
        let idle_short = HttpTimeouts {
            idle: Duration::from_secs(5),
            ..TIMEOUTS
        };
        for timeouts in [TIMEOUTS, idle_short] {
            let phases = [
                Phase::opened(at(0)),
                Phase::Busy { in_flight: 1 },
                Phase::Idle { since: at(0) },
            ];
            for phase in phases {
                let look = phase.next_look(at(1), &timeouts);
                for event_at in 1..200 {
                    let mut after = phase;
                    after.on_read(at(event_at));
                    after.on_request();
                    after.on_response_done(at(event_at));
                    for changed in [phase_after_read(phase, event_at), after] {
                        if let Some((due, _)) = changed.deadline(&timeouts) {
                            assert!(due >= look, "{phase:?} -> {changed:?} due before the look");
                        }
                    }
                }
            }
        }
    }

    fn phase_after_read(mut phase: Phase, secs: u64) -> Phase {
        phase.on_read(at(secs));
        phase
    }

    #[test]
    fn the_connection_is_idle_only_when_every_response_is_done() {
        let mut phase = Phase::opened(at(0));
        phase.on_request();
        phase.on_request();
        phase.on_response_done(at(1));
        assert_eq!(phase.deadline(&TIMEOUTS), None);
        phase.on_response_done(at(2));
        assert_eq!(phase.deadline(&TIMEOUTS), Some((at(62), Expired::Idle)));
        // A stray completion changes nothing.
        phase.on_response_done(at(3));
        assert_eq!(phase.deadline(&TIMEOUTS), Some((at(62), Expired::Idle)));
    }
}
