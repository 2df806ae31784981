//! MQTT connections that have not yet sent their CONNECT, on every listener (TCP, TLS once its
//! handshake is done, WebSocket once upgraded). Each holds a place from its start until its
//! CONNECT is read. They are few next to the connections a node serves, and shared fairly
//! among addresses ([`Places`]): connections of one address that never send anything cannot
//! use up the node's open files and keep every device out. When the places are full, a
//! newcomer takes the place of one that has waited past its grace, from the address holding
//! the most; if none has, the newcomer is closed at once and retries, as after a refused
//! connection.

use std::time::Duration;

use crate::tcp::slots::Places;

/// How long a connection keeps its place, whatever newcomers arrive: honest clients send
/// their CONNECT within a round trip or two of connecting.
const GRACE: Duration = Duration::from_secs(2);

/// The places of connections awaiting their CONNECT, `max` of them.
pub fn places(max: usize) -> Places {
    Places::new(max, GRACE)
}
