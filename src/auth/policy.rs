//! Policies: which actions a principal may take on which resources.
//!
//! Statements are parsed once, when the configuration is loaded, into [`Resource`]s made of
//! pattern levels, so a request is decided by walking levels, never by re-parsing text. The
//! `${iot:ClientId}` variable stays a separate part of a level and is compared literally, so a
//! client id containing `+`, `#`, `*` or `/` can never widen a pattern.

use std::collections::HashSet;

use super::pattern::Pattern;

/// What a request wants to do, in the words of AWS IoT policy actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `iot:Connect`: resource is the MQTT client id.
    Connect,
    /// `iot:Publish`: resource is the topic name.
    Publish,
    /// `iot:RetainPublish`: resource is the topic name of a retained publish (AWS requires it
    /// in addition to `iot:Publish`).
    RetainPublish,
    /// `iot:Subscribe`: resource is the topic filter (without any `$share/<group>/` prefix).
    Subscribe,
    /// `iot:Receive`: resource is the topic name of a message about to be delivered.
    Receive,
    /// `iot:GetRetainedMessage`: resource is the topic name.
    GetRetainedMessage,
    /// `iot:ListRetainedMessages`: no resource (AWS uses `*`).
    ListRetainedMessages,
    /// `iot:DeleteConnection`: disconnecting an MQTT client over HTTP; resource is its client
    /// id, as for `iot:Connect`.
    DeleteConnection,
    /// `retaind:Metrics`: reading `GET /metrics`; no resource. Not one of `iot:*`.
    Metrics,
    /// `retaind:DeleteRetainedMessages`: deleting every retained message matching a topic
    /// filter at once (`DELETE /retainedMessage?topicFilter=`); resource is that filter, which a
    /// `topicfilter/` pattern must cover. Not one of `iot:*`: it can empty the store in one
    /// request, which no AWS action can.
    DeleteRetainedMessages,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Connect,
        Action::Publish,
        Action::RetainPublish,
        Action::Subscribe,
        Action::Receive,
        Action::GetRetainedMessage,
        Action::ListRetainedMessages,
        Action::DeleteConnection,
        Action::Metrics,
        Action::DeleteRetainedMessages,
    ];

    /// An AWS IoT action, one of those `iot:*` stands for.
    pub fn is_iot(self) -> bool {
        !matches!(self, Action::Metrics | Action::DeleteRetainedMessages)
    }

    /// The policy name, e.g. `iot:Publish`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::RetainPublish => "iot:RetainPublish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::GetRetainedMessage => "iot:GetRetainedMessage",
            Action::ListRetainedMessages => "iot:ListRetainedMessages",
            Action::DeleteConnection => "iot:DeleteConnection",
            Action::Metrics => "retaind:Metrics",
            Action::DeleteRetainedMessages => "retaind:DeleteRetainedMessages",
        }
    }

    /// Parses a policy action; `iot:*` stands for the AWS IoT ones, `*` for all of them.
    /// Case-insensitive, as in AWS.
    pub(super) fn parse_many(raw: &str) -> Option<Vec<Action>> {
        if raw.eq_ignore_ascii_case("iot:*") {
            return Some(Action::ALL.into_iter().filter(|a| a.is_iot()).collect());
        }
        if raw == "*" {
            return Some(Action::ALL.to_vec());
        }
        Action::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(raw))
            .map(|a| vec![a])
    }

    fn resource_kind(self) -> Option<ResourceKind> {
        match self {
            Action::Connect | Action::DeleteConnection => Some(ResourceKind::Client),
            Action::Publish
            | Action::RetainPublish
            | Action::Receive
            | Action::GetRetainedMessage => Some(ResourceKind::Topic),
            Action::Subscribe | Action::DeleteRetainedMessages => Some(ResourceKind::TopicFilter),
            Action::ListRetainedMessages | Action::Metrics => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResourceKind {
    Topic,
    TopicFilter,
    Client,
}

#[derive(Debug, Clone)]
pub(super) enum Resource {
    /// `*`: every resource of every kind.
    Any,
    Typed(ResourceKind, Pattern),
}

impl Resource {
    /// Parses `*`, `topic/…`, `topicfilter/…`, `client/…`, or the same behind
    /// `arn:<partition>:iot:<region>:<account>:`.
    pub(super) fn parse(raw: &str) -> Result<Self, String> {
        let rest = if raw.starts_with("arn:") {
            let parts: Vec<&str> = raw.splitn(6, ':').collect();
            match parts.as_slice() {
                ["arn", partition, "iot", _region, _account, rest]
                    if partition.starts_with("aws") =>
                {
                    *rest
                }
                _ => {
                    return Err(format!(
                        "resource {raw:?}: expected arn:aws:iot:<region>:<account>:<type>/<pattern>"
                    ));
                }
            }
        } else {
            raw
        };
        if rest == "*" {
            return Ok(Resource::Any);
        }
        let (kind, pattern) = if let Some(p) = rest.strip_prefix("topicfilter/") {
            (ResourceKind::TopicFilter, p)
        } else if let Some(p) = rest.strip_prefix("topic/") {
            (ResourceKind::Topic, p)
        } else if let Some(p) = rest.strip_prefix("client/") {
            (ResourceKind::Client, p)
        } else {
            return Err(format!(
                "resource {raw:?}: expected \"*\" or topic/…, topicfilter/…, client/… (or their ARN)"
            ));
        };
        let pattern = match kind {
            ResourceKind::Client => Pattern::parse_single_level(pattern),
            _ => Pattern::parse_levels(pattern),
        }
        .map_err(|e| format!("resource {raw:?}: {e}"))?;
        Ok(Resource::Typed(kind, pattern))
    }

    fn matches(&self, action: Action, resource: &str, client_id: Option<&str>) -> bool {
        let Some(wanted) = action.resource_kind() else {
            // ListRetainedMessages has no resource: any resource in the statement grants it.
            return true;
        };
        match self {
            Resource::Any => true,
            Resource::Typed(kind, _) if *kind != wanted => false,
            Resource::Typed(ResourceKind::Topic, p) => p.matches_topic(resource, client_id),
            Resource::Typed(ResourceKind::TopicFilter, p) => p.covers_filter(resource, client_id),
            Resource::Typed(ResourceKind::Client, p) => p.matches_whole(resource, client_id),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Statement {
    pub(super) effect: Effect,
    pub(super) actions: HashSet<Action>,
    pub(super) resources: Vec<Resource>,
}

impl Statement {
    fn applies(&self, action: Action, resource: &str, client_id: Option<&str>) -> bool {
        self.actions.contains(&action)
            && self
                .resources
                .iter()
                .any(|r| r.matches(action, resource, client_id))
    }
}

/// A principal's own bounds; `None`: no limit of its own. Each is on a node's share of the
/// service except the retained quota, which is the service's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most retained messages it may keep (those its publishes stored).
    pub retained_messages: Option<u64>,
    /// Most of its persistent sessions a node holds offline.
    pub offline_sessions: Option<u64>,
    /// Most bytes its offline sessions' queues may hold on a node, each copy counting its
    /// whole message.
    pub queue_memory_bytes: Option<usize>,
    /// Most MQTT connections it holds on a node at once, by client id.
    pub connections: Option<usize>,
    /// Most watches of the retained set it holds open on a node at once.
    pub watches: Option<usize>,
}

/// An authenticated identity and its policy. Holds no secrets, so it may be logged.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    pub limits: Limits,
    statements: Vec<Statement>,
    allow_all: bool,
    /// See [`Principal::same_mqtt_credentials`].
    mqtt_credentials: [u8; 32],
}

impl Principal {
    pub(super) fn new(
        name: String,
        statements: Vec<Statement>,
        limits: Limits,
        mqtt_credentials: [u8; 32],
    ) -> Self {
        Principal {
            name,
            limits,
            statements,
            allow_all: false,
            mqtt_credentials,
        }
    }

    /// The identity of every client when no principals are configured: everything allowed.
    pub(super) fn anonymous() -> Self {
        Principal {
            name: "anonymous".to_owned(),
            limits: Limits::default(),
            statements: Vec::new(),
            allow_all: true,
            mqtt_credentials: [0; 32],
        }
    }

    /// Whether an MQTT connection that authenticated as `self` would authenticate as `other`
    /// too: the same MQTT username, password hash and client certificate. A reload keeps the
    /// connections whose principal passes this, under the new policy.
    pub fn same_mqtt_credentials(&self, other: &Principal) -> bool {
        self.mqtt_credentials == other.mqtt_credentials
    }

    /// Explicit Deny wins, then any Allow, else denied. `resource` is the topic name (Publish,
    /// RetainPublish, Receive, GetRetainedMessage), the topic filter (Subscribe), the client id
    /// (Connect), or "" (ListRetainedMessages). `client_id` substitutes `${iot:ClientId}`; with
    /// `None`, a resource using the variable never matches (neither to allow nor to deny).
    pub fn allows(&self, action: Action, resource: &str, client_id: Option<&str>) -> bool {
        if self.allow_all {
            return true;
        }
        let applying = |effect: Effect| {
            self.statements
                .iter()
                .filter(move |s| s.effect == effect)
                .any(|s| s.applies(action, resource, client_id))
        };
        !applying(Effect::Deny) && applying(Effect::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(statements: &[(Effect, &[&str], &[&str])]) -> Principal {
        let statements = statements
            .iter()
            .map(|(effect, actions, resources)| Statement {
                effect: *effect,
                actions: actions
                    .iter()
                    .flat_map(|a| Action::parse_many(a).expect("valid action"))
                    .collect(),
                resources: resources
                    .iter()
                    .map(|r| Resource::parse(r).expect("valid resource"))
                    .collect(),
            })
            .collect();
        Principal::new("test".into(), statements, Limits::default(), [0; 32])
    }

    fn allow(actions: &[&str], resources: &[&str]) -> Principal {
        principal(&[(Effect::Allow, actions, resources)])
    }

    #[test]
    fn nothing_is_allowed_without_a_statement() {
        let p = principal(&[]);
        assert!(!p.allows(Action::Publish, "a", None));
        assert!(!p.allows(Action::ListRetainedMessages, "", None));
    }

    #[test]
    fn explicit_deny_wins_over_allow() {
        let p = principal(&[
            (Effect::Allow, &["iot:Publish"], &["topic/#"]),
            (Effect::Deny, &["iot:Publish"], &["topic/secret/#"]),
        ]);
        assert!(p.allows(Action::Publish, "public/x", None));
        assert!(!p.allows(Action::Publish, "secret/x", None));
        assert!(!p.allows(Action::Publish, "secret", None));
    }

    #[test]
    fn deny_of_another_action_does_not_apply() {
        let p = principal(&[
            (Effect::Allow, &["iot:*"], &["*"]),
            (Effect::Deny, &["iot:Publish"], &["topic/#"]),
        ]);
        assert!(!p.allows(Action::Publish, "a", None));
        assert!(p.allows(Action::GetRetainedMessage, "a", None));
    }

    #[test]
    fn client_id_variable_is_substituted() {
        let p = allow(
            &["iot:Publish", "iot:Connect"],
            &["topic/devices/${iot:ClientId}/#", "client/${iot:ClientId}"],
        );
        assert!(p.allows(Action::Publish, "devices/s1/state", Some("s1")));
        assert!(p.allows(Action::Publish, "devices/s1", Some("s1")));
        assert!(!p.allows(Action::Publish, "devices/s2/state", Some("s1")));
        assert!(p.allows(Action::Connect, "s1", Some("s1")));
        assert!(!p.allows(Action::Connect, "s2", Some("s1")));
    }

    #[test]
    fn client_id_variable_without_a_client_id_never_matches() {
        let p = principal(&[
            (
                Effect::Allow,
                &["iot:Publish"],
                &["topic/devices/${iot:ClientId}"],
            ),
            (Effect::Allow, &["iot:Receive"], &["topic/#"]),
            (
                Effect::Deny,
                &["iot:Receive"],
                &["topic/devices/${iot:ClientId}"],
            ),
        ]);
        assert!(!p.allows(Action::Publish, "devices/", None));
        assert!(!p.allows(Action::Publish, "devices/${iot:ClientId}", None));
        assert!(p.allows(Action::Receive, "devices/x", None));
        assert!(!p.allows(Action::Receive, "devices/x", Some("x")));
    }

    #[test]
    fn wildcards_in_a_client_id_stay_literal() {
        let p = allow(
            &["iot:Publish", "iot:Subscribe", "iot:Connect"],
            &[
                "topic/devices/${iot:ClientId}/state",
                "topicfilter/devices/${iot:ClientId}/state",
                "client/${iot:ClientId}",
            ],
        );
        for evil in ["+", "#", "*", "a/b"] {
            assert!(
                !p.allows(Action::Publish, "devices/x/state", Some(evil)),
                "{evil}"
            );
            assert!(
                !p.allows(Action::Subscribe, "devices/+/state", Some(evil)),
                "{evil}"
            );
        }
        assert!(p.allows(Action::Publish, "devices/+/state", Some("+")));
        assert!(p.allows(Action::Connect, "a/b", Some("a/b")));
        assert!(!p.allows(Action::Connect, "other", Some("*")));
    }

    #[test]
    fn topic_patterns_match_like_mqtt_filters() {
        let p = allow(&["iot:Publish"], &["topic/a/+/c", "topic/x/#"]);
        assert!(p.allows(Action::Publish, "a/b/c", None));
        assert!(p.allows(Action::Publish, "a//c", None));
        assert!(!p.allows(Action::Publish, "a/b/c/d", None));
        assert!(!p.allows(Action::Publish, "a/b", None));
        assert!(p.allows(Action::Publish, "x", None));
        assert!(p.allows(Action::Publish, "x/y/z", None));
        assert!(!p.allows(Action::Publish, "xy", None));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        // [MQTT-4.7.2-1]: filters starting with a wildcard do not match topics beginning with $.
        let p = allow(
            &["iot:Publish", "iot:Subscribe"],
            &["topic/#", "topic/+/x", "topicfilter/#"],
        );
        assert!(p.allows(Action::Publish, "a/x", None));
        assert!(!p.allows(Action::Publish, "$SYS/x", None));
        assert!(!p.allows(Action::Subscribe, "$SYS/#", None));
        let sys = allow(&["iot:Publish"], &["topic/$SYS/#"]);
        assert!(sys.allows(Action::Publish, "$SYS/x", None));
        assert!(allow(&["iot:Publish"], &["*"]).allows(Action::Publish, "$SYS/x", None));
    }

    #[test]
    fn subscribe_requires_the_filter_to_be_covered() {
        let p = allow(&["iot:Subscribe"], &["topicfilter/a/#"]);
        assert!(p.allows(Action::Subscribe, "a/#", None));
        assert!(p.allows(Action::Subscribe, "a/+", None));
        assert!(p.allows(Action::Subscribe, "a/b/c", None));
        assert!(p.allows(Action::Subscribe, "a", None));
        assert!(!p.allows(Action::Subscribe, "#", None));
        assert!(!p.allows(Action::Subscribe, "+/b", None));

        let one = allow(&["iot:Subscribe"], &["topicfilter/a/+"]);
        assert!(one.allows(Action::Subscribe, "a/+", None));
        assert!(one.allows(Action::Subscribe, "a/b", None));
        assert!(!one.allows(Action::Subscribe, "a/#", None));
        assert!(!one.allows(Action::Subscribe, "a/b/c", None));
        assert!(!one.allows(Action::Subscribe, "a", None));

        let literal = allow(&["iot:Subscribe"], &["topicfilter/a/b"]);
        assert!(literal.allows(Action::Subscribe, "a/b", None));
        assert!(!literal.allows(Action::Subscribe, "a/+", None));

        let first = allow(&["iot:Subscribe"], &["topicfilter/+/status"]);
        assert!(first.allows(Action::Subscribe, "+/status", None));
        assert!(first.allows(Action::Subscribe, "dev/status", None));
        assert!(!first.allows(Action::Subscribe, "$SYS/status", None));
        assert!(allow(&["iot:Subscribe"], &["topicfilter/#"]).allows(Action::Subscribe, "#", None));
    }

    #[test]
    fn resource_kind_must_fit_the_action() {
        let p = allow(&["iot:*"], &["topic/a"]);
        assert!(p.allows(Action::Publish, "a", None));
        assert!(p.allows(Action::GetRetainedMessage, "a", None));
        assert!(!p.allows(Action::Subscribe, "a", None));
        assert!(!p.allows(Action::Connect, "a", None));
        let f = allow(&["iot:*"], &["topicfilter/a"]);
        assert!(!f.allows(Action::Publish, "a", None));
        assert!(f.allows(Action::Subscribe, "a", None));
    }

    #[test]
    fn connect_matches_the_whole_client_id() {
        let p = allow(&["iot:Connect"], &["client/sensor-*"]);
        assert!(p.allows(Action::Connect, "sensor-1", None));
        assert!(!p.allows(Action::Connect, "actuator-1", None));
        for any in ["client/+", "client/#", "client/*"] {
            let p = allow(&["iot:Connect"], &[any]);
            assert!(
                p.allows(Action::Connect, "whatever/with/slashes", None),
                "{any}"
            );
        }
    }

    #[test]
    fn arn_resources_are_accepted() {
        let p = allow(
            &["iot:Publish", "iot:Subscribe", "iot:Connect"],
            &[
                "arn:aws:iot:us-east-1:123456789012:topic/a/#",
                "arn:aws:iot:*:*:topicfilter/a/+",
                "arn:aws:iot:eu-west-1:123456789012:client/c1",
            ],
        );
        assert!(p.allows(Action::Publish, "a/b", None));
        assert!(p.allows(Action::Subscribe, "a/b", None));
        assert!(p.allows(Action::Connect, "c1", None));
        assert!(!p.allows(Action::Connect, "c2", None));
        let star = allow(&["iot:Publish"], &["arn:aws:iot:*:*:*"]);
        assert!(star.allows(Action::Publish, "anything", None));
    }

    #[test]
    fn star_resource_and_star_action_allow_everything() {
        let p = allow(&["iot:*"], &["*"]);
        for action in Action::ALL.into_iter().filter(|a| a.is_iot()) {
            assert!(p.allows(action, "x/y", Some("c")), "{action:?}");
        }
        assert!(
            !p.allows(Action::Metrics, "", None),
            "iot:* is the AWS IoT actions only"
        );
        let everything = allow(&["*"], &["*"]);
        for action in Action::ALL {
            assert!(everything.allows(action, "x/y", Some("c")), "{action:?}");
        }
    }

    #[test]
    fn list_is_granted_by_any_resource() {
        assert!(allow(&["iot:ListRetainedMessages"], &["*"]).allows(
            Action::ListRetainedMessages,
            "",
            None
        ));
        assert!(allow(&["iot:ListRetainedMessages"], &["topic/x"]).allows(
            Action::ListRetainedMessages,
            "",
            None
        ));
        assert!(!allow(&["iot:GetRetainedMessage"], &["*"]).allows(
            Action::ListRetainedMessages,
            "",
            None
        ));
    }

    #[test]
    fn malformed_resources_are_rejected() {
        for bad in [
            "topic/a/#/b",
            "topic/a+/b",
            "topicfilter/a/b#",
            "queue/x",
            "arn:aws:s3:::bucket",
            "topic/${iot:Thing}/x",
            "topic/${iot:ClientId",
            "client/a+b",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad}");
        }
        assert!(Action::parse_many("iot:Fly").is_none());
        assert_eq!(
            Action::parse_many("IOT:publish"),
            Some(vec![Action::Publish])
        );
    }
}
