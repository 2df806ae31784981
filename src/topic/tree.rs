//! The subscription tree: which sessions a published topic reaches.
//!
//! A trie over topic levels, one node per filter level, with `+` and `#` kept beside the
//! literal children: a publish follows its topic's levels down by hash lookups, branching only
//! where a `+` subscription exists, and never allocates per level. It is pure (no I/O, no async) and knows nothing of sessions: a
//! subscription is a client key, a filter and a value the broker chooses (its options).
//!
//! The walk is iterative and so is dropping a subtree: a client may subscribe to a filter of
//! tens of thousands of empty levels, and neither a publish nor an unsubscribe may overflow the
//! stack because of it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{FilterSpec, Levels, TopicName, levels};

/// Identifies a client (session) in the tree; cheap to clone into every match.
pub type ClientKey = Arc<str>;

/// Every subscription of every client, indexed by filter.
pub struct SubscriptionTree<V> {
    root: Node<V>,
    len: usize,
}

/// One filter level. A filter ending here keeps its subscriptions in `subscribers`; one ending
/// in `/#` keeps them in `hash` of the node before the `#`, which can have no children.
struct Node<V> {
    /// Boxed: most nodes of a fleet's tree have one child (`devices/<id>/config`), and a
    /// map of nodes inline reserves room for several whole nodes (about 800 bytes) to hold one.
    children: HashMap<Box<str>, Box<Node<V>>>,
    plus: Option<Box<Node<V>>>,
    hash: Option<Box<Subscribers<V>>>,
    subscribers: Subscribers<V>,
}

/// The subscriptions of one filter.
struct Subscribers<V> {
    plain: Members<V>,
    /// Keyed by share name: the filter is this node's, so name and node identify the group.
    shared: HashMap<Box<str>, SharedGroup<V>>,
}

struct SharedGroup<V> {
    members: Members<V>,
    /// Advanced by every delivery; `matches` takes `&self`, so readers share the tree.
    next: AtomicUsize,
}

/// Clients and their values: a vector to iterate on every publish, and an index into it so
/// that subscribing and unsubscribing stay O(1) when thousands of clients share a filter.
struct Members<V> {
    entries: Vec<(ClientKey, V)>,
    index: HashMap<ClientKey, usize>,
}

impl<V> SubscriptionTree<V> {
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }

    /// The number of subscriptions (a client with three filters counts three times).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `client`'s subscription to `spec` (its share group included), if it has one.
    pub fn get(&self, client: &ClientKey, spec: &FilterSpec) -> Option<&V> {
        let (path, ends_with_hash) = path(spec);
        let mut node = &self.root;
        for level in path {
            node = node.child(level)?;
        }
        let subscribers = if ends_with_hash {
            node.hash.as_deref()?
        } else {
            &node.subscribers
        };
        let members = match spec.share_group() {
            None => &subscribers.plain,
            Some(group) => &subscribers.shared.get(group)?.members,
        };
        members.get(client)
    }
}

impl<V: Clone> SubscriptionTree<V> {
    /// Adds `client`'s subscription to `spec`, or replaces its value if it exists, and returns
    /// the previous value: MQTT 5 Retain Handling 1 sends retained messages only to a
    /// subscription that did not exist.
    pub fn insert(&mut self, client: &ClientKey, spec: &FilterSpec, value: V) -> Option<V> {
        let (path, ends_with_hash) = path(spec);
        let mut node = &mut self.root;
        for level in path {
            node = node.child_or_insert(level);
        }
        let subscribers = if ends_with_hash {
            node.hash.get_or_insert_with(Box::default)
        } else {
            &mut node.subscribers
        };
        let previous = match spec.share_group() {
            None => subscribers.plain.insert(client, value),
            Some(group) => subscribers
                .shared
                .entry(group.into())
                .or_insert_with(SharedGroup::new)
                .members
                .insert(client, value),
        };
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `client`'s subscription to `spec` and returns its value, pruning the nodes
    /// left without subscriptions so that the tree does not grow with subscription churn.
    pub fn remove(&mut self, client: &ClientKey, spec: &FilterSpec) -> Option<V> {
        let (path, ends_with_hash) = path(spec);
        // The first walk removes the subscription and finds the shallowest node of the path
        // below which nothing else would remain; the second cuts the tree there.
        let mut cut: Option<usize> = None;
        let mut depth = 0;
        let mut node = &mut self.root;
        for (above, level) in path.clone().enumerate() {
            // The root stays whatever happens; below it, a node holding only the path to the
            // subscription goes if the subscription's node goes.
            if above > 0 {
                if node.holds_more_than_one_path() {
                    cut = None;
                } else if cut.is_none() {
                    cut = Some(above);
                }
            }
            node = node.child_mut(level)?;
            depth = above + 1;
        }
        let removed = if ends_with_hash {
            let subscribers = node.hash.as_deref_mut()?;
            let removed = subscribers.remove(client, spec.share_group())?;
            if subscribers.is_empty() {
                node.hash = None;
            }
            removed
        } else {
            node.subscribers.remove(client, spec.share_group())?
        };
        self.len -= 1;

        if depth == 0 || !node.is_empty() {
            return Some(removed);
        }
        let cut = cut.unwrap_or(depth);
        let mut parent = &mut self.root;
        let mut levels = path.take(cut);
        for level in levels.by_ref().take(cut - 1) {
            parent = match parent.child_mut(level) {
                Some(child) => child,
                None => return Some(removed),
            };
        }
        if let Some(level) = levels.next() {
            parent.remove_child(level);
        }
        Some(removed)
    }

    /// Appends every subscription that `topic` reaches: each plain subscription (a client
    /// whose filters overlap appears once per filter), and one member of each shared group
    /// whose filter matches, taken in turn.
    pub fn matches(&self, topic: &TopicName, out: &mut Vec<(ClientKey, V)>) {
        self.walk(topic, out, true);
    }

    /// [`Self::matches`] without shared groups: for a node whose shared groups span nodes,
    /// where another part of the service picks the member.
    pub fn matches_plain(&self, topic: &TopicName, out: &mut Vec<(ClientKey, V)>) {
        self.walk(topic, out, false);
    }

    /// Whether `topic` reaches any subscription, plain or shared: [`Self::matches`] without
    /// collecting, stopping at the first.
    pub fn matches_any(&self, topic: &TopicName) -> bool {
        let mut any = false;
        self.visit(topic, |subscribers| {
            any = !subscribers.is_empty();
            any
        });
        any
    }

    fn walk(&self, topic: &TopicName, out: &mut Vec<(ClientKey, V)>, shared: bool) {
        self.visit(topic, |subscribers| {
            subscribers.collect(out, shared);
            false
        });
    }

    /// Calls `reached` with the subscriptions of each filter `topic` matches, until it
    /// answers that it has seen enough.
    fn visit(&self, topic: &TopicName, mut reached: impl FnMut(&Subscribers<V>) -> bool) {
        // [MQTT-4.7.2-1] a leading wildcard does not match a topic starting with '$'.
        let reserved = topic.is_reserved();
        // Literal children are followed in place; only '+' branches wait here, so a topic that
        // meets no '+' is matched without allocating.
        let mut pending: Vec<(&Node<V>, Levels<'_>)> = Vec::new();
        let mut node = &self.root;
        let mut levels = levels(topic.as_str());
        let mut wildcards = !reserved;
        loop {
            // '#' matches the rest of the topic, including nothing: `a/#` matches `a`.
            if wildcards
                && let Some(hash) = &node.hash
                && reached(hash)
            {
                return;
            }
            let next = match levels.next() {
                None => {
                    if reached(&node.subscribers) {
                        return;
                    }
                    None
                }
                Some(level) => {
                    if wildcards && let Some(plus) = &node.plus {
                        pending.push((plus, levels.clone()));
                    }
                    node.children.get(level).map(Box::as_ref)
                }
            };
            wildcards = true;
            match next {
                Some(child) => node = child,
                None => match pending.pop() {
                    Some((plus, rest)) => (node, levels) = (plus, rest),
                    None => return,
                },
            }
        }
    }
}

impl<V> Default for SubscriptionTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for SubscriptionTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The node levels of a filter and whether it ends in `#`, which lives in the last node's
/// `hash` rather than in a node of its own. `#` alone has no node levels at all.
fn path(spec: &FilterSpec) -> (impl Iterator<Item = &str> + Clone, bool) {
    let filter = spec.filter().as_str();
    let (levels, ends_with_hash) = match filter.strip_suffix('#') {
        // Parsing allows '#' only as the whole last level, so what precedes it is "" or "…/".
        Some(before) => (before.strip_suffix('/'), true),
        None => (Some(filter), false),
    };
    (levels.into_iter().flat_map(super::levels), ends_with_hash)
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: None,
            subscribers: Subscribers::default(),
        }
    }
}

impl<V> Node<V> {
    fn child_or_insert(&mut self, level: &str) -> &mut Node<V> {
        if level == "+" {
            self.plus.get_or_insert_with(Box::default)
        } else {
            self.children.entry(level.into()).or_default()
        }
    }

    fn child(&self, level: &str) -> Option<&Node<V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level).map(Box::as_ref)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level).map(Box::as_mut)
        }
    }

    fn remove_child(&mut self, level: &str) {
        if level == "+" {
            self.plus = None;
        } else {
            self.children.remove(level);
        }
    }

    /// Whether this node holds anything besides one child: then it outlives the removal of
    /// any one subscription below it.
    fn holds_more_than_one_path(&self) -> bool {
        self.hash.is_some()
            || !self.subscribers.is_empty()
            || self.children.len() + usize::from(self.plus.is_some()) > 1
    }

    fn is_empty(&self) -> bool {
        self.hash.is_none()
            && self.subscribers.is_empty()
            && self.children.is_empty()
            && self.plus.is_none()
    }
}

impl<V> Drop for Node<V> {
    /// Drops the subtree from a worklist instead of recursively, so that a deep filter cannot
    /// overflow the stack.
    fn drop(&mut self) {
        fn detach<V>(node: &mut Node<V>, worklist: &mut Vec<Node<V>>) {
            worklist.extend(node.children.drain().map(|(_, child)| *child));
            worklist.extend(node.plus.take().map(|plus| *plus));
        }
        let mut worklist = Vec::new();
        detach(self, &mut worklist);
        while let Some(mut node) = worklist.pop() {
            detach(&mut node, &mut worklist);
        }
    }
}

impl<V> Default for Subscribers<V> {
    fn default() -> Self {
        Self {
            plain: Members::default(),
            shared: HashMap::new(),
        }
    }
}

impl<V> Subscribers<V> {
    fn remove(&mut self, client: &ClientKey, group: Option<&str>) -> Option<V> {
        let Some(group) = group else {
            return self.plain.remove(client);
        };
        let Entry::Occupied(mut shared) = self.shared.entry(group.into()) else {
            return None;
        };
        let removed = shared.get_mut().members.remove(client);
        if shared.get().members.is_empty() {
            shared.remove();
        }
        removed
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }
}

impl<V: Clone> Subscribers<V> {
    fn collect(&self, out: &mut Vec<(ClientKey, V)>, shared: bool) {
        out.extend_from_slice(&self.plain.entries);
        if !shared {
            return;
        }
        for group in self.shared.values() {
            let members = &group.members.entries;
            // Groups are removed when their last member leaves, so `members` is not empty.
            let turn = group.next.fetch_add(1, Ordering::Relaxed) % members.len();
            out.push(members[turn].clone());
        }
    }
}

impl<V> SharedGroup<V> {
    fn new() -> Self {
        Self {
            members: Members::default(),
            next: AtomicUsize::new(0),
        }
    }
}

impl<V> Default for Members<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<V> Members<V> {
    fn get(&self, client: &ClientKey) -> Option<&V> {
        self.index.get(client).map(|&at| &self.entries[at].1)
    }

    fn insert(&mut self, client: &ClientKey, value: V) -> Option<V> {
        match self.index.get(client) {
            Some(&at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            None => {
                self.index.insert(client.clone(), self.entries.len());
                self.entries.push((client.clone(), value));
                None
            }
        }
    }

    fn remove(&mut self, client: &ClientKey) -> Option<V> {
        let at = self.index.remove(client)?;
        let (_, value) = self.entries.swap_remove(at);
        // The last entry moved into the hole; point its index there.
        if let Some((moved, _)) = self.entries.get(at) {
            self.index.insert(moved.clone(), at);
        }
        Some(value)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicLimits;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn key(s: &str) -> ClientKey {
        Arc::from(s)
    }

    fn spec(s: &str) -> FilterSpec {
        FilterSpec::parse(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        let limits = TopicLimits {
            max_bytes: 65_535,
            max_levels: 65_535,
        };
        TopicName::parse(s, limits).unwrap()
    }

    /// A tree whose values are the filters as subscribed, so that a match says which
    /// subscription produced it.
    fn tree(subscriptions: &[(&str, &str)]) -> SubscriptionTree<String> {
        let mut tree = SubscriptionTree::new();
        for (client, filter) in subscriptions {
            tree.insert(&key(client), &spec(filter), filter.to_string());
        }
        tree
    }

    #[test]
    fn a_clients_subscription_is_found_by_its_filter_and_group() {
        let t = tree(&[
            ("a", "x/+/y"),
            ("a", "x/#"),
            ("a", "$share/g/x/#"),
            ("b", "#"),
        ]);
        for filter in ["x/+/y", "x/#", "$share/g/x/#"] {
            assert_eq!(
                t.get(&key("a"), &spec(filter)).map(String::as_str),
                Some(filter)
            );
        }
        assert_eq!(t.get(&key("b"), &spec("#")).map(String::as_str), Some("#"));
        for (client, filter) in [
            ("a", "#"),
            ("a", "x/y"),
            ("a", "x/+"),
            ("a", "$share/h/x/#"),
            ("a", "x/+/y/#"),
            ("b", "x/#"),
            ("c", "x/+/y"),
        ] {
            assert_eq!(
                t.get(&key(client), &spec(filter)),
                None,
                "{client} {filter}"
            );
        }
    }

    fn matched(tree: &SubscriptionTree<String>, topic: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        tree.matches(&name(topic), &mut out);
        let mut found: Vec<_> = out.into_iter().map(|(c, v)| (c.to_string(), v)).collect();
        found.sort();
        found
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = expected
            .iter()
            .map(|(c, f)| (c.to_string(), f.to_string()))
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn literal_filter_matches_its_topic_only() {
        let tree = tree(&[("c1", "a/b")]);
        assert_eq!(matched(&tree, "a/b"), pairs(&[("c1", "a/b")]));
        assert!(matched(&tree, "a").is_empty());
        assert!(matched(&tree, "a/b/c").is_empty());
    }

    #[test]
    fn hash_matches_parent_level() {
        let tree = tree(&[("c1", "sport/#")]);
        assert_eq!(matched(&tree, "sport"), pairs(&[("c1", "sport/#")]));
        assert_eq!(
            matched(&tree, "sport/tennis/x"),
            pairs(&[("c1", "sport/#")])
        );
        assert!(matched(&tree, "sports").is_empty());
    }

    #[test]
    fn plus_matches_one_level_including_an_empty_one() {
        let tree = tree(&[("c1", "a/+/c")]);
        assert_eq!(matched(&tree, "a/b/c"), pairs(&[("c1", "a/+/c")]));
        assert_eq!(matched(&tree, "a//c"), pairs(&[("c1", "a/+/c")]));
        assert!(matched(&tree, "a/c").is_empty());
        assert!(matched(&tree, "a/b/b/c").is_empty());
    }

    #[test]
    fn empty_levels_are_levels() {
        let tree = tree(&[("c1", "a//b"), ("c2", "/#"), ("c3", "+/+")]);
        assert_eq!(matched(&tree, "a//b"), pairs(&[("c1", "a//b")]));
        assert_eq!(matched(&tree, "/"), pairs(&[("c2", "/#"), ("c3", "+/+")]));
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards() {
        let tree = tree(&[
            ("c1", "#"),
            ("c2", "+/uptime"),
            ("c3", "$SYS/#"),
            ("c4", "$SYS/+"),
            ("c5", "$share/g/#"),
        ]);
        assert_eq!(
            matched(&tree, "$SYS/uptime"),
            pairs(&[("c3", "$SYS/#"), ("c4", "$SYS/+")])
        );
        assert_eq!(
            matched(&tree, "x/uptime"),
            pairs(&[("c1", "#"), ("c2", "+/uptime"), ("c5", "$share/g/#")])
        );
    }

    #[test]
    fn overlapping_filters_of_one_client_each_match() {
        let tree = tree(&[("c1", "a/#"), ("c1", "a/+"), ("c1", "a/b"), ("c2", "a/b")]);
        assert_eq!(
            matched(&tree, "a/b"),
            pairs(&[("c1", "a/#"), ("c1", "a/+"), ("c1", "a/b"), ("c2", "a/b")])
        );
    }

    #[test]
    fn insert_reports_an_existing_subscription_and_replaces_its_value() {
        let mut tree = SubscriptionTree::new();
        let c1 = key("c1");
        assert_eq!(tree.insert(&c1, &spec("a/+"), 1), None);
        assert_eq!(tree.insert(&c1, &spec("a/+"), 2), Some(1));
        assert_eq!(tree.insert(&c1, &spec("$share/g/a/+"), 3), None);
        assert_eq!(tree.insert(&c1, &spec("$share/g/a/+"), 4), Some(3));
        assert_eq!(tree.len(), 2);
        let mut out = Vec::new();
        tree.matches(&name("a/x"), &mut out);
        out.sort();
        assert_eq!(out, vec![(c1.clone(), 2), (c1, 4)]);
    }

    #[test]
    fn shared_group_delivers_to_one_member_round_robin() {
        let tree = tree(&[
            ("c1", "$share/g/jobs/#"),
            ("c2", "$share/g/jobs/#"),
            ("c3", "$share/g/jobs/#"),
        ]);
        let mut counts = BTreeMap::new();
        for _ in 0..30 {
            let found = matched(&tree, "jobs/1");
            assert_eq!(found.len(), 1);
            *counts.entry(found[0].0.clone()).or_insert(0) += 1;
        }
        assert_eq!(
            counts,
            BTreeMap::from([("c1".into(), 10), ("c2".into(), 10), ("c3".into(), 10)])
        );
    }

    #[test]
    fn plain_matches_leave_shared_groups_out() {
        let tree = tree(&[("c1", "$share/g/jobs/#"), ("c2", "jobs/+"), ("c3", "#")]);
        let mut out = Vec::new();
        tree.matches_plain(&name("jobs/1"), &mut out);
        let mut found: Vec<_> = out.into_iter().map(|(c, v)| (c.to_string(), v)).collect();
        found.sort();
        assert_eq!(
            found,
            vec![("c2".into(), "jobs/+".into()), ("c3".into(), "#".into())]
        );
    }

    #[test]
    fn shared_groups_are_told_apart_by_name_and_filter() {
        let tree = tree(&[
            ("c1", "$share/g/a/+"),
            ("c2", "$share/g/a/+"),
            ("c3", "$share/h/a/+"),
            ("c4", "$share/g/a/#"),
            ("c5", "a/+"),
        ]);
        let found = matched(&tree, "a/b");
        let mut filters: Vec<_> = found.iter().map(|(_, f)| f.as_str()).collect();
        filters.sort();
        assert_eq!(
            filters,
            ["$share/g/a/#", "$share/g/a/+", "$share/h/a/+", "a/+"]
        );
    }

    #[test]
    fn remove_returns_the_value_once() {
        let mut tree = tree(&[("c1", "a/b"), ("c2", "a/b"), ("c1", "$share/g/a/b")]);
        assert_eq!(tree.remove(&key("c1"), &spec("a/b")), Some("a/b".into()));
        assert_eq!(tree.remove(&key("c1"), &spec("a/b")), None);
        assert_eq!(tree.remove(&key("c3"), &spec("a/b")), None);
        assert_eq!(tree.remove(&key("c1"), &spec("a/c")), None);
        assert_eq!(tree.remove(&key("c1"), &spec("$share/h/a/b")), None);
        assert_eq!(tree.len(), 2);
        assert_eq!(
            matched(&tree, "a/b"),
            pairs(&[("c1", "$share/g/a/b"), ("c2", "a/b")])
        );
    }

    #[test]
    fn removed_shared_member_no_longer_receives() {
        let mut tree = tree(&[("c1", "$share/g/t"), ("c2", "$share/g/t")]);
        tree.remove(&key("c1"), &spec("$share/g/t"));
        for _ in 0..4 {
            assert_eq!(matched(&tree, "t"), pairs(&[("c2", "$share/g/t")]));
        }
    }

    #[test]
    fn remove_prunes_empty_nodes() {
        let filters = [
            "a/b/c",
            "a/b/#",
            "a/+/c",
            "#",
            "+",
            "/",
            "a//",
            "$share/g/a/b/c",
            "$share/g/#",
            "a/b",
        ];
        let mut tree = SubscriptionTree::new();
        for (i, filter) in filters.iter().enumerate() {
            tree.insert(&key(&format!("c{i}")), &spec(filter), ());
        }
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(tree.remove(&key(&format!("c{i}")), &spec(filter)), Some(()));
        }
        assert!(tree.is_empty());
        assert!(tree.root.is_empty(), "nodes left behind");
    }

    #[test]
    fn remove_keeps_nodes_still_in_use() {
        let mut tree = tree(&[
            ("c1", "a/b/c"),
            ("c2", "a/b"),
            ("c3", "a/+/c"),
            ("c4", "a/#"),
        ]);
        tree.remove(&key("c1"), &spec("a/b/c"));
        let a = &tree.root.children["a"];
        assert!(a.children["b"].children.is_empty());
        assert_eq!(
            matched(&tree, "a/b"),
            pairs(&[("c2", "a/b"), ("c4", "a/#")])
        );
        assert_eq!(
            matched(&tree, "a/b/c"),
            pairs(&[("c3", "a/+/c"), ("c4", "a/#")])
        );
        tree.remove(&key("c2"), &spec("a/b"));
        assert!(!tree.root.children["a"].children.contains_key("b"));
        tree.remove(&key("c4"), &spec("a/#"));
        assert!(tree.root.children["a"].hash.is_none());
        tree.remove(&key("c3"), &spec("a/+/c"));
        assert!(tree.root.is_empty());
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        let deep = "/".repeat(65_534);
        let deep_hash = format!("{deep}#");
        let mut tree = tree(&[("c1", deep.as_str()), ("c2", deep_hash.as_str())]);
        assert_eq!(matched(&tree, &deep).len(), 2);
        assert_eq!(tree.remove(&key("c1"), &spec(&deep)), Some(deep.clone()));
        drop(tree);
    }

    /// What the tree must answer for `topic`: every matching plain subscription, and for
    /// each matching shared group the set of members one of whom must be chosen.
    type Expected = (
        BTreeSet<(String, String)>,
        BTreeMap<String, BTreeSet<String>>,
    );

    fn brute_force(subscriptions: &BTreeSet<(String, String)>, topic: &TopicName) -> Expected {
        let mut plain = BTreeSet::new();
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (client, raw) in subscriptions {
            let spec = spec(raw);
            if !spec.filter().matches(topic) {
                continue;
            }
            match spec.share_group() {
                None => {
                    plain.insert((client.clone(), raw.clone()));
                }
                Some(_) => {
                    groups
                        .entry(raw.clone())
                        .or_default()
                        .insert(client.clone());
                }
            }
        }
        (plain, groups)
    }

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "$s", ""]).prop_map(str::to_owned)
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("names are not empty", |name| !name.is_empty())
    }

    fn filter_spec() -> impl Strategy<Value = String> {
        let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
        let filter = (prop::collection::vec(filter_level, 1..=4), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash && let Some(last) = levels.last_mut() {
                    *last = "#".to_owned();
                }
                levels.join("/")
            })
            .prop_filter("filters are not empty", |filter| !filter.is_empty());
        let share =
            prop_oneof![3 => Just(None), 1 => prop::sample::select(vec!["g", "h"]).prop_map(Some)];
        (share, filter).prop_map(|(share, filter)| match share {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter,
        })
    }

    fn client() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["c1", "c2", "c3"]).prop_map(str::to_owned)
    }

    proptest! {
        #[test]
        fn tree_matches_agree_with_brute_force(
            inserted in prop::collection::vec((client(), filter_spec()), 0..24),
            removed in prop::collection::vec((client(), filter_spec()), 0..12),
            topics in prop::collection::vec(topic_name(), 1..16),
        ) {
            let mut tree = SubscriptionTree::new();
            let mut subscriptions = BTreeSet::new();
            for (client, raw) in &inserted {
                let previous = tree.insert(&key(client), &spec(raw), raw.clone());
                let fresh = subscriptions.insert((client.clone(), raw.clone()));
                prop_assert_eq!(previous.is_none(), fresh);
            }
            // Remove some that exist and some that probably do not.
            let existing: Vec<_> = inserted.iter().step_by(2).cloned().collect();
            for (client, raw) in existing.iter().chain(&removed) {
                let was = tree.remove(&key(client), &spec(raw));
                let existed = subscriptions.remove(&(client.clone(), raw.clone()));
                prop_assert_eq!(was.is_some(), existed);
            }
            prop_assert_eq!(tree.len(), subscriptions.len());

            for topic in &topics {
                let topic = name(topic);
                let (plain, groups) = brute_force(&subscriptions, &topic);
                let mut out = Vec::new();
                tree.matches(&topic, &mut out);
                let mut got_plain = BTreeSet::new();
                let mut got_groups: BTreeMap<String, String> = BTreeMap::new();
                for (client, raw) in out {
                    let entry = (client.to_string(), raw.clone());
                    if raw.starts_with("$share/") {
                        prop_assert!(got_groups.insert(raw, entry.0).is_none(), "two members of one group");
                    } else {
                        prop_assert!(got_plain.insert(entry), "one subscription matched twice");
                    }
                }
                prop_assert_eq!(&got_plain, &plain, "plain matches for {:?}", topic);
                prop_assert_eq!(
                    tree.matches_any(&topic),
                    !plain.is_empty() || !groups.is_empty(),
                    "any match for {:?}", topic
                );
                prop_assert_eq!(
                    got_groups.keys().collect::<Vec<_>>(),
                    groups.keys().collect::<Vec<_>>(),
                    "groups matched for {:?}", topic
                );
                for (group, member) in &got_groups {
                    prop_assert!(groups[group].contains(member));
                }
            }

            for (client, raw) in subscriptions {
                prop_assert!(tree.remove(&key(&client), &spec(&raw)).is_some());
            }
            prop_assert!(tree.is_empty());
            prop_assert!(tree.root.is_empty(), "nodes left behind");
        }
    }
}
