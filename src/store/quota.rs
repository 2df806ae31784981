//! Which writes of a batch fit the quotas on the number of retained messages.
//!
//! Pure: a backend reads the counts and the current owners of the batch's topics while holding
//! the lock that orders quota decisions, asks [`admit`], and applies only what it admits. The
//! counts themselves are kept by triggers in the database (migrations 0003 and 0004), so every
//! node, and every path that adds or removes messages, agrees on them.

use std::collections::HashMap;
use std::sync::Arc;

use super::{OwnedWrite, QuotaExceeded, Write};

/// The counts as they stand before the batch.
#[derive(Debug, Default)]
pub(super) struct Standing {
    /// Retained messages in the whole service.
    pub total: u64,
    /// Messages per owner, for the owners [`owners_with_quota`] named (missing: none).
    pub by_owner: HashMap<Arc<str>, u64>,
    /// The owner of each of the batch's topics that has a message now.
    pub owner_of: HashMap<String, Arc<str>>,
}

/// Whether a batch needs a quota decision at all: only puts can add messages.
pub(super) fn applies(writes: &[OwnedWrite], max_total: Option<u64>) -> bool {
    writes.iter().any(|w| {
        matches!(w.write, Write::Put(_)) && (max_total.is_some() || w.owner.max_messages.is_some())
    })
}

/// The distinct owners in the batch that have a quota of their own.
pub(super) fn owners_with_quota(writes: &[OwnedWrite]) -> Vec<&str> {
    let mut names: Vec<&str> = writes
        .iter()
        .filter(|w| w.owner.max_messages.is_some())
        .map(|w| &*w.owner.name)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The writes that `admissions` (one per write, as [`admit`] answers) let through, in order.
pub(super) fn admitted<'a>(
    writes: &'a [OwnedWrite],
    admissions: &[Result<(), QuotaExceeded>],
) -> Vec<&'a OwnedWrite> {
    writes
        .iter()
        .zip(admissions)
        .filter_map(|(w, v)| v.is_ok().then_some(w))
        .collect()
}

/// One answer per write, in order, as if the writes were applied one after another: a put that
/// would add a message beyond the service's quota, or give its owner one more message than its
/// quota, is refused and changes nothing. Rewriting a message one already owns never counts;
/// taking over another owner's topic counts for the new owner only; deletes are always let
/// through. A quota lowered below what is stored therefore refuses new messages without
/// touching existing ones.
pub(super) fn admit(
    writes: &[OwnedWrite],
    max_total: Option<u64>,
    mut standing: Standing,
) -> Vec<Result<(), QuotaExceeded>> {
    let mut owner_of: HashMap<&str, Option<Arc<str>>> = HashMap::new();
    writes
        .iter()
        .map(|w| {
            let topic = w.write.topic().as_str();
            let current = owner_of
                .entry(topic)
                .or_insert_with(|| standing.owner_of.remove(topic))
                .clone();
            match &w.write {
                Write::Delete(_) => {
                    if let Some(previous) = current {
                        standing.total = standing.total.saturating_sub(1);
                        if let Some(n) = standing.by_owner.get_mut(&previous) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    owner_of.insert(topic, None);
                    Ok(())
                }
                Write::Put(_) => {
                    let owner = &w.owner.name;
                    let adds_message = current.is_none();
                    let gains = current.as_ref() != Some(owner);
                    if let Some(limit) = max_total
                        && adds_message
                        && standing.total >= limit
                    {
                        return Err(QuotaExceeded::Service { limit });
                    }
                    if let Some(limit) = w.owner.max_messages
                        && gains
                        && standing.by_owner.get(owner).copied().unwrap_or(0) >= limit
                    {
                        return Err(QuotaExceeded::Owner {
                            owner: owner.clone(),
                            limit,
                        });
                    }
                    if adds_message {
                        standing.total += 1;
                    }
                    if gains {
                        *standing.by_owner.entry(owner.clone()).or_insert(0) += 1;
                        if let Some(n) = current.and_then(|c| standing.by_owner.get_mut(&c)) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    owner_of.insert(topic, Some(owner.clone()));
                    Ok(())
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MessageProperties, Owner, Qos, RetainedMessage};
    use crate::topic::TopicName;

    fn put(topic: &str, owner: &str, max: Option<u64>) -> OwnedWrite {
        OwnedWrite {
            write: Write::Put(RetainedMessage {
                topic: TopicName::from_stored(topic.to_owned()),
                payload: bytes::Bytes::from_static(b"v"),
                qos: Qos::AtMostOnce,
                properties: MessageProperties::default(),
                expires_at_ms: None,
                last_modified_ms: 0,
                last_accessed_ms: 0,
                revision: 0,
                writer: None,
            }),
            owner: Owner {
                name: owner.into(),
                max_messages: max,
            },
            client: None,
            condition: None,
        }
    }

    fn delete(topic: &str) -> OwnedWrite {
        Write::Delete(TopicName::from_stored(topic.to_owned())).into()
    }

    fn standing(total: u64, by_owner: &[(&str, u64)], owner_of: &[(&str, &str)]) -> Standing {
        Standing {
            total,
            by_owner: by_owner.iter().map(|(o, n)| ((*o).into(), *n)).collect(),
            owner_of: owner_of
                .iter()
                .map(|(t, o)| ((*t).to_owned(), (*o).into()))
                .collect(),
        }
    }

    fn service(limit: u64) -> Result<(), QuotaExceeded> {
        Err(QuotaExceeded::Service { limit })
    }

    fn owner(name: &str, limit: u64) -> Result<(), QuotaExceeded> {
        Err(QuotaExceeded::Owner {
            owner: name.into(),
            limit,
        })
    }

    #[test]
    fn new_topics_fill_the_service_quota_then_are_refused() {
        let writes = [put("a", "", None), put("b", "", None), put("c", "", None)];
        let got = admit(&writes, Some(3), standing(1, &[], &[]));
        assert_eq!(got, vec![Ok(()), Ok(()), service(3)]);
    }

    #[test]
    fn rewriting_a_stored_topic_is_allowed_at_the_limit() {
        let writes = [put("a", "", None), put("b", "", None)];
        let got = admit(&writes, Some(1), standing(1, &[], &[("a", "")]));
        assert_eq!(got, vec![Ok(()), service(1)]);
    }

    #[test]
    fn a_delete_earlier_in_the_batch_makes_room() {
        let writes = [put("b", "", None), delete("a"), put("b", "", None)];
        let got = admit(&writes, Some(1), standing(1, &[], &[("a", "")]));
        assert_eq!(got, vec![service(1), Ok(()), Ok(())]);
    }

    #[test]
    fn a_refused_put_does_not_count() {
        let writes = [put("x", "", None), delete("a"), put("y", "", None)];
        let got = admit(&writes, Some(1), standing(1, &[], &[("a", "")]));
        assert_eq!(got, vec![service(1), Ok(()), Ok(())]);
    }

    #[test]
    fn an_owner_is_held_to_its_own_quota() {
        let writes = [
            put("a", "p", Some(2)),
            put("b", "p", Some(2)),
            put("c", "q", Some(5)),
        ];
        let got = admit(&writes, None, standing(10, &[("p", 1), ("q", 0)], &[]));
        assert_eq!(got, vec![Ok(()), owner("p", 2), Ok(())]);
    }

    #[test]
    fn taking_over_a_topic_counts_for_the_new_owner_and_frees_the_old_one() {
        // p is full; q takes p's topic "a", which makes room for p again.
        let writes = [
            put("b", "p", Some(1)),
            put("a", "q", Some(1)),
            put("b", "p", Some(1)),
            put("c", "q", Some(1)),
        ];
        let got = admit(
            &writes,
            Some(100),
            standing(1, &[("p", 1), ("q", 0)], &[("a", "p")]),
        );
        assert_eq!(got, vec![owner("p", 1), Ok(()), Ok(()), owner("q", 1)]);
    }

    #[test]
    fn a_lowered_quota_refuses_new_messages_but_not_rewrites() {
        let writes = [put("a", "p", Some(1)), put("new", "p", Some(1))];
        let got = admit(&writes, Some(1), standing(5, &[("p", 3)], &[("a", "p")]));
        assert_eq!(got, vec![Ok(()), service(1)]);
    }

    #[test]
    fn only_puts_with_a_quota_need_a_decision() {
        assert!(!applies(&[delete("a")], Some(1)));
        assert!(!applies(&[put("a", "p", None)], None));
        assert!(applies(&[put("a", "p", None)], Some(1)));
        assert!(applies(&[put("a", "p", Some(1))], None));
    }
}
