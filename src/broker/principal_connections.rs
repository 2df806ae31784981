//! Each principal's MQTT connections on this node, against its `max_connections`.
//!
//! Without it one principal's devices, or a leaked credential, could take every place under
//! `--mqtt-max-connections` and keep every other principal out. They are counted by client id,
//! not by connection: a client id already connected under the principal may always connect
//! again, because the new connection takes the old one over (a device back over a half-open
//! connection must not wait out its keep alive). Two connections of one client id overlap only
//! until the take-over closes the older, and the connect rate per client id paces them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::topic::ClientKey;

/// The count, shared by every listener; a cheap handle.
#[derive(Debug, Clone, Default)]
pub(super) struct PrincipalConnections {
    /// Per principal name, its connected client ids and how many connections each has now.
    /// Only principals with a limit are entered, and an entry goes with its last connection.
    by_principal: Arc<Mutex<HashMap<String, HashMap<ClientKey, u32>>>>,
}

/// One connection counted for its principal; dropping it frees its place. Boxed: a connection
/// holds it for its whole life, in a task kept small (decision 025), and most hold none.
#[derive(Debug)]
pub(super) struct PrincipalPlace {
    _place: Box<Place>,
}

#[derive(Debug)]
struct Place {
    count: PrincipalConnections,
    principal: String,
    client: ClientKey,
}

impl PrincipalConnections {
    /// A place for a connection of `principal` with client id `client`, unless the principal
    /// has `max` other client ids connected already.
    pub fn try_acquire(
        &self,
        principal: &str,
        client: &ClientKey,
        max: usize,
    ) -> Option<PrincipalPlace> {
        let mut by_principal = self.lock();
        let clients = by_principal.entry(principal.to_owned()).or_default();
        if let Some(connections) = clients.get_mut(client) {
            *connections += 1;
        } else if clients.len() < max {
            clients.insert(client.clone(), 1);
        } else {
            if clients.is_empty() {
                by_principal.remove(principal);
            }
            return None;
        }
        Some(PrincipalPlace {
            _place: Box::new(Place {
                count: self.clone(),
                principal: principal.to_owned(),
                client: client.clone(),
            }),
        })
    }

    /// The client ids `principal` has connected now.
    #[cfg(test)]
    pub fn connected(&self, principal: &str) -> usize {
        self.lock().get(principal).map_or(0, HashMap::len)
    }

    /// Principals with a connection counted now.
    #[cfg(test)]
    pub fn principals(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<ClientKey, u32>>> {
        self.by_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut by_principal = self.count.lock();
        let Some(clients) = by_principal.get_mut(&self.principal) else {
            return;
        };
        if let Some(connections) = clients.get_mut(&self.client) {
            *connections -= 1;
            if *connections == 0 {
                clients.remove(&self.client);
            }
        }
        if clients.is_empty() {
            by_principal.remove(&self.principal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> ClientKey {
        ClientKey::from(id)
    }

    #[test]
    fn past_its_limit_a_principal_connects_no_new_client_id_and_others_are_not_counted() {
        let count = PrincipalConnections::default();
        let a = count.try_acquire("fleet", &key("a"), 2).expect("first");
        let _b = count.try_acquire("fleet", &key("b"), 2).expect("second");
        assert!(count.try_acquire("fleet", &key("c"), 2).is_none());
        assert_eq!(count.connected("fleet"), 2);
        // Another principal's count is its own.
        let _other = count.try_acquire("ops", &key("c"), 2).expect("ops");
        drop(a);
        let _c = count
            .try_acquire("fleet", &key("c"), 2)
            .expect("a's place freed");
        assert!(count.try_acquire("fleet", &key("d"), 2).is_none());
    }

    #[test]
    fn a_connected_client_id_connects_again_at_the_limit_and_counts_once() {
        let count = PrincipalConnections::default();
        let old = count.try_acquire("fleet", &key("a"), 1).expect("first");
        let new = count.try_acquire("fleet", &key("a"), 1).expect("take-over");
        assert_eq!(count.connected("fleet"), 1);
        // The old connection closing leaves the new one counted.
        drop(old);
        assert_eq!(count.connected("fleet"), 1);
        assert!(count.try_acquire("fleet", &key("b"), 1).is_none());
        drop(new);
        assert_eq!(count.connected("fleet"), 0);
        let _b = count
            .try_acquire("fleet", &key("b"), 1)
            .expect("free again");
    }

    #[test]
    fn nothing_is_kept_for_a_principal_with_no_connection() {
        let count = PrincipalConnections::default();
        for i in 0..100 {
            let place = count.try_acquire(&format!("p{i}"), &key("a"), 1);
            drop(place);
        }
        // A refusal leaves nothing behind either.
        assert!(count.try_acquire("none", &key("a"), 0).is_none());
        assert_eq!(count.principals(), 0);
    }
}
