//! What one connection's parts tell each other: the socket wrapper reports bytes read, the
//! service reports requests and finished responses, and the connection's watcher looks at the
//! resulting deadline ([`super::phase`]) from time to time; nobody is woken by these reports.
//!
//! Along the way it keeps the first line of each request head as it arrived, because hyper
//! hands over the request target with any `#fragment` already cut off ([`super::request_line`]).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::phase::{Expired, HttpTimeouts, Phase};

/// The longest request line kept: a method, hyper's longest target (65,534 bytes) and a version.
const MAX_LINE_BYTES: usize = 64 * 1024 + 32;

pub(super) struct Activity {
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    line: Line,
    /// hyper is done with the connection: a socket upgraded to a WebSocket reads on, uncounted.
    retired: bool,
    /// Since when the socket has taken none of what hyper writes, if it is full now.
    write_blocked: Option<Instant>,
}

/// The first line of the head being read.
enum Line {
    /// Bytes of it so far (the line ends with `\n`).
    Reading(Vec<u8>),
    /// Complete, or given up on (too long, or its start was read while busy).
    Done(Option<Vec<u8>>),
}

impl Line {
    fn starting() -> Self {
        Self::Reading(Vec::new())
    }

    fn take_in(&mut self, bytes: &[u8]) {
        let Self::Reading(line) = self else {
            return;
        };
        let end = bytes.iter().position(|&b| b == b'\n');
        let part = &bytes[..end.map_or(bytes.len(), |i| i + 1)];
        if line.len() + part.len() > MAX_LINE_BYTES {
            *self = Self::Done(None);
        } else {
            line.extend_from_slice(part);
            if end.is_some() {
                *self = Self::Done(Some(std::mem::take(line)));
            }
        }
    }
}

impl Activity {
    pub(super) fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                phase: Phase::opened(now),
                line: Line::starting(),
                retired: false,
                write_blocked: None,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    pub(super) fn read(&self, bytes: &[u8], now: Instant) {
        let mut state = self.state();
        if state.retired {
            return;
        }
        let head_began = state.phase.on_read(now);
        if head_began {
            state.line = Line::starting();
        }
        if let Phase::Head { .. } = state.phase {
            state.line.take_in(bytes);
        }
    }

    /// A request's head is complete: returns its first line as it arrived, when it was seen
    /// whole (not for a request read ahead while the previous one was being served).
    pub(super) fn request_started(&self) -> Option<Vec<u8>> {
        let mut state = self.state();
        let was_waiting = !matches!(state.phase, Phase::Busy { .. });
        state.phase.on_request();
        match std::mem::replace(&mut state.line, Line::Done(None)) {
            Line::Done(line) if was_waiting => line,
            _ => None,
        }
    }

    /// A response is complete (or was dropped).
    pub(super) fn response_done(&self, now: Instant) {
        self.state().phase.on_response_done(now);
    }

    /// Whether a request is being served: its connection must not be cut for another's sake.
    pub(super) fn is_busy(&self) -> bool {
        matches!(self.state().phase, Phase::Busy { .. })
    }

    /// The socket took none of a write (it is full): the client has not read for a while.
    pub(super) fn write_blocked(&self, now: Instant) {
        self.state().write_blocked.get_or_insert(now);
    }

    /// The socket took bytes again.
    pub(super) fn write_flowing(&self) {
        self.state().write_blocked = None;
    }

    /// hyper has let go of the connection; what the socket reads from now on is not HTTP.
    pub(super) fn retire(&self) {
        let mut state = self.state();
        state.retired = true;
        state.line = Line::Done(None);
    }

    /// Looks at the connection at `now`: which timeout has run out, or else when to look again
    /// ([`Phase::next_look`]).
    pub(super) fn look(&self, now: Instant, timeouts: &HttpTimeouts) -> Result<Instant, Expired> {
        let state = self.state();
        // A response nobody takes: the same patience as for a client that sends nothing.
        let stalled = state
            .write_blocked
            .filter(|since| !state.retired && *since + timeouts.idle <= now);
        if stalled.is_some() {
            return Err(Expired::Write);
        }
        match state.phase.expired(now, timeouts) {
            Some(why) => Err(why),
            None => Ok(state.phase.next_look(now, timeouts)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_of_each_head_is_kept_across_reads() {
        let now = Instant::now();
        let activity = Activity::new(now);
        activity.read(b"POST /topics/a", now);
        activity.read(b"#b HTTP/1.1\r\nHost: x\r\n", now);
        activity.read(b"\r\nbody", now);
        assert_eq!(
            activity.request_started().as_deref(),
            Some(&b"POST /topics/a#b HTTP/1.1\r\n"[..])
        );
        // The rest of the body, then the next request after the response.
        activity.read(b"more body", now);
        activity.response_done(now);
        activity.read(b"GET /x HTTP/1.1\r\n\r\n", now);
        assert_eq!(
            activity.request_started().as_deref(),
            Some(&b"GET /x HTTP/1.1\r\n"[..])
        );
    }

    #[test]
    fn a_head_read_ahead_while_busy_has_no_line() {
        let now = Instant::now();
        let activity = Activity::new(now);
        activity.read(b"GET /a HTTP/1.1\r\n\r\nGET /b#c HTTP/1.1\r\n\r\n", now);
        assert!(activity.request_started().is_some());
        activity.response_done(now);
        // hyper parses the second request from what it had already read.
        assert_eq!(activity.request_started(), None);
    }

    #[test]
    fn a_retired_connection_keeps_nothing_of_what_it_reads() {
        let now = Instant::now();
        let activity = Activity::new(now);
        activity.read(b"GET /mqtt HTTP/1.1\r\n\r\n", now);
        activity.request_started();
        activity.response_done(now);
        activity.retire();
        activity.read(b"\x10\x0c\x00\x04MQTT", now);
        assert!(matches!(activity.state().line, Line::Done(None)));
        assert!(matches!(activity.state().phase, Phase::Idle { .. }));
    }

    #[test]
    fn an_overlong_line_is_given_up() {
        let now = Instant::now();
        let activity = Activity::new(now);
        activity.read(&vec![b'a'; MAX_LINE_BYTES + 1], now);
        activity.read(b" HTTP/1.1\r\n\r\n", now);
        assert_eq!(activity.request_started(), None);
    }
}
