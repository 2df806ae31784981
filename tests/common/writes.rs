//! Writes for the store tests: messages, conditional and attributed writes, two handles on one
//! database, and reading the raw rows a Postgres store keeps.

use bytes::Bytes;
use retaind::store::{
    Clock, Condition, MessageProperties, OwnedWrite, Owner, Qos, RetainedMessage, Store,
    StoreOptions, Write,
};

use super::{Backend, FreshDb, T0_MS, fresh_db, open_backend, topic};

/// Applies `write` and returns its revision; panics if it was refused or superseded.
pub async fn written(store: &Store, write: impl Into<OwnedWrite>) -> retaind::store::Revision {
    store
        .write_owned(write.into())
        .await
        .unwrap()
        .expect("applied, not superseded")
}

/// A message on `name` holding `payload`, written at `at_ms`, never expiring.
pub fn message(name: &str, payload: &str, at_ms: i64) -> RetainedMessage {
    RetainedMessage {
        topic: topic(name),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: Qos::AtLeastOnce,
        properties: MessageProperties::default(),
        expires_at_ms: None,
        last_modified_ms: at_ms,
        last_accessed_ms: at_ms,
        revision: 0,
        writer: None,
    }
}

pub fn put(name: &str, payload: &str) -> Write {
    Write::Put(message(name, payload, T0_MS))
}

pub fn delete(name: &str) -> Write {
    Write::Delete(topic(name))
}

/// `write` by `principal` from `client`, under `condition`.
pub fn owned(
    write: Write,
    principal: &str,
    client: &str,
    condition: Option<Condition>,
) -> OwnedWrite {
    OwnedWrite {
        write,
        owner: Owner {
            name: principal.into(),
            max_messages: None,
        },
        client: Some(client.into()),
        condition,
    }
}

/// `write` with no writer and `condition`.
pub fn when(write: Write, condition: Condition) -> OwnedWrite {
    OwnedWrite {
        condition: Some(condition),
        ..OwnedWrite::from(write)
    }
}

/// A handle on `db` as another node would have: its own backend, pool and write lanes.
pub async fn node(db: &FreshDb, clock: Clock, options: StoreOptions) -> Store {
    Store::new(open_backend(&db.url).await, clock, options)
}

/// Two nodes on one fresh Postgres database.
pub async fn two_nodes(clock: Clock) -> (Store, Store, FreshDb) {
    let db = fresh_db(Backend::Postgres).await;
    let a = node(&db, clock.clone(), StoreOptions::default()).await;
    let b = node(&db, clock, StoreOptions::default()).await;
    (a, b, db)
}
