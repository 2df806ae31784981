//! Draining a node at shutdown (`--mqtt-drain-time`): the connected clients are asked to leave
//! one after another, spread over the drain time, instead of all at once. In a service of
//! many nodes every client of a node stopped for an upgrade reconnects to the others; all at
//! once, that is a storm of CONNECTs whose client-id claims and session resumes all go to
//! Postgres in the same second. Spread out, the others take them a few at a time, and a
//! persistent session is handed over live from this node, which still holds it, as at any
//! take-over. The listeners stop taking connections before the first is asked, so a client
//! cannot come back here; the node goes on answering for the sessions it asked a little
//! longer ([`HAND_OVER_LINGER`]), until their clients have come back elsewhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::registry::{Session, Sessions};
use crate::mqtt::DisconnectReasonCode;

/// How long a node of many, once it has asked its last client to leave, goes on answering
/// for the sessions it asked: a client comes back through another node after its own
/// reconnect delay, and that node asks this one to hand the session over. Stopped before,
/// this node no longer answers, and the other takes the session as stored, without the QoS 2
/// exchanges this node would have handed over (measured with `bench/drain.sh`'s 1,000
/// clients over 1 s on a slow machine: 133 to 577 of them came back to a node already gone).
pub(super) const HAND_OVER_LINGER: Duration = Duration::from_secs(2);

/// Asks the sessions connected now to leave, evenly over `time`. MQTT 5 clients are told why:
/// Use another server (0x9C) when other nodes serve the same clients, else Server shutting
/// down (0x8B). Returns the sessions asked.
pub(super) async fn drain(
    sessions: &Sessions,
    time: Duration,
    others_serve: bool,
) -> Vec<Arc<Session>> {
    let reason = if others_serve {
        DisconnectReasonCode::UseAnotherServer
    } else {
        DisconnectReasonCode::ServerShuttingDown
    };
    let mut connected: Vec<_> = sessions
        .all()
        .into_iter()
        .filter(|s| s.is_online())
        .collect();
    // In client id order: any order spreads the load; this one is the same at every drain.
    connected.sort_by(|a, b| a.key.cmp(&b.key));
    if connected.is_empty() {
        return connected;
    }
    tracing::info!(
        clients = connected.len(),
        over = ?time,
        "draining: asking the connected clients to leave, one after another"
    );
    let started = Instant::now();
    let step = time / u32::try_from(connected.len()).unwrap_or(u32::MAX);
    for (i, session) in connected.iter().enumerate() {
        // Each at its own moment from the start, so a slow wake-up does not push the rest
        // past the drain time.
        let at = started + step * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(at).await;
        session.ask_to_leave(reason);
    }
    connected
}

/// Waits until none of the sessions `asked` is held here any more (each handed over to the
/// node its client reconnected to, or ended with its connection), or [`HAND_OVER_LINGER`]
/// passed.
pub(super) async fn await_hand_overs(sessions: &Sessions, mut asked: Vec<Arc<Session>>) {
    let until = Instant::now() + HAND_OVER_LINGER;
    loop {
        asked.retain(|s| {
            sessions
                .get(&s.key)
                .is_some_and(|held| Arc::ptr_eq(&held, s))
        });
        if asked.is_empty() {
            return;
        }
        if Instant::now() >= until {
            tracing::info!(
                sessions = asked.len(),
                "drained: sessions whose clients did not come back through another node in time are written to the database as this node stops"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
