//! Draining a node at shutdown (`--mqtt-drain-time`): the connected clients are asked to leave
//! one after another, spread over the drain time, instead of all at once. In a service of
//! many nodes every client of a node stopped for an upgrade reconnects to the others; all at
//! once, that is a storm of CONNECTs whose client-id claims and session resumes all go to
//! Postgres in the same second. Spread out, the others take them a few at a time, and a
//! persistent session is handed over live from this node, which still holds it, as at any
//! take-over. The listeners stop taking connections before the first is asked, so a client
//! cannot come back here.

use std::time::Duration;

use tokio::time::Instant;

use super::registry::Sessions;
use crate::mqtt::DisconnectReasonCode;

/// Asks the sessions connected now to leave, evenly over `time`. MQTT 5 clients are told why:
/// Use another server (0x9C) when other nodes serve the same clients, else Server shutting
/// down (0x8B).
pub(super) async fn drain(sessions: &Sessions, time: Duration, others_serve: bool) {
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
        return;
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
}
