//! What the SQLite store keeps beside its rows, in the same transaction: how many messages are
//! stored, in all and per owner (quotas, `count`), and the change log (`changes`, watches).
//!
//! Every write runs on the one writer thread (`sqlite_writer`), so the writer keeps these books
//! itself (migration 0006 says why triggers no longer do): it reads what a row was before
//! changing it, logs the change at once, and adds up the counts to settle them once per batch.
//! The rules are the ones the triggers had: a message counts for its owner while it is not a
//! tombstone (expired or not), and the log holds one entry per row, under its revision.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

/// What the books need to know of a row before it changes.
pub(super) struct Prior {
    owner: String,
    live: bool,
    revision: i64,
}

impl Prior {
    /// A message of `owner` under `revision`.
    pub(super) fn live(owner: String, revision: i64) -> Self {
        Self {
            owner,
            live: true,
            revision,
        }
    }
}

/// The row of `topic` as it is now, if there is one.
pub(super) fn prior(tx: &Connection, topic: &str) -> rusqlite::Result<Option<Prior>> {
    tx.prepare_cached("SELECT owner, deleted, revision FROM retained_messages WHERE topic = ?")?
        .query_row([topic], |r| {
            Ok(Prior {
                owner: r.get(0)?,
                live: !r.get::<_, bool>(1)?,
                revision: r.get(2)?,
            })
        })
        .optional()
}

/// The counts a transaction has changed so far, settled by [`Books::settle`] before it commits.
#[derive(Default)]
pub(super) struct Books {
    by_owner: HashMap<String, i64>,
    total: i64,
}

impl Books {
    /// The row of `topic`, `before` this, now holds `revision` (always a new one: a write
    /// ticket is never reused): a message of `owner`, or a tombstone (`live` false; a
    /// tombstone's owner does not count). Logs the change and counts it.
    pub(super) fn changed(
        &mut self,
        tx: &Connection,
        topic: &str,
        before: Option<&Prior>,
        owner: &str,
        live: bool,
        revision: i64,
    ) -> rusqlite::Result<()> {
        if let Some(before) = before {
            if before.live {
                self.count(&before.owner, -1);
            }
            forget(tx, before.revision)?;
        }
        if live {
            self.count(owner, 1);
        }
        tx.prepare_cached("INSERT INTO retained_changes (revision, topic) VALUES (?, ?)")?
            .execute(params![revision, topic])?;
        Ok(())
    }

    fn count(&mut self, owner: &str, n: i64) {
        self.total += n;
        match self.by_owner.get_mut(owner) {
            Some(count) => *count += n,
            None => {
                self.by_owner.insert(owner.to_owned(), n);
            }
        }
    }

    /// Writes the counts; the transaction commits after.
    pub(super) fn settle(self, tx: &Connection) -> rusqlite::Result<()> {
        let mut owner = tx.prepare_cached(
            "INSERT INTO retained_owner_counts (owner, messages) VALUES (?1, ?2)
             ON CONFLICT (owner) DO UPDATE SET messages = messages + ?2",
        )?;
        for (name, n) in self.by_owner.iter().filter(|(_, n)| **n != 0) {
            owner.execute(params![name, n])?;
        }
        if self.total != 0 {
            tx.prepare_cached("UPDATE retained_total SET messages = messages + ?")?
                .execute([self.total])?;
        }
        Ok(())
    }
}

/// Drops the log entry of a revision no row holds any more (rewritten or purged).
pub(super) fn forget(tx: &Connection, revision: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM retained_changes WHERE revision = ?")?
        .execute([revision])?;
    Ok(())
}
