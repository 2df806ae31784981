//! A publish as it travels between nodes: one NATS message whose body is a version byte, a
//! compact head (postcard) and then the payload, untouched, so a receiver slices the payload
//! out of the NATS buffer instead of copying it. The head holds the exact topic (never rebuilt
//! from the subject), the MQTT 5 properties, the expiry as an absolute time, and where the
//! message comes from: the publishing client, for No Local, and the node with its sequence
//! number, which is what a receiver reached through several overlapping subscriptions uses to
//! handle each message once. The same frame keeps a message queued for an offline session in
//! Postgres, with its [`Stamp`], so that a copy that reached two nodes is delivered once.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{MessageProperties, PayloadFormat, Qos, UserProperty};
use crate::topic::{TopicLimits, TopicName, check_text};

/// Changed whenever the head changes shape; a node drops frames of another version.
pub const VERSION: u8 = 3;

/// The first byte of a NATS message that carries several frames of one topic, sent back to
/// back: each follows as a 4-byte big-endian length and the frame. Under load a node sends
/// what is queued for one subject as one NATS message, which costs NATS and both nodes one
/// message's work instead of many.
const BATCH: u8 = 0xB0;

/// Largest batch a node builds: far below any NATS server's message limit, which is at least
/// the payload limit plus [`super::link::HEAD_ROOM`].
pub const BATCH_BYTES: usize = 64 * 1024;

/// What every node needs besides the payload. Field order is the wire order.
#[derive(Serialize, Deserialize)]
struct Head<'a> {
    topic: &'a str,
    qos: u8,
    retain: bool,
    expires_at_ms: Option<i64>,
    origin_client: Option<&'a str>,
    /// The sending node's [`Stamp::node`], and its number for the message; 0 and 0 for a
    /// message that was never sent between nodes.
    node: u64,
    seq: u64,
    user_properties: Vec<(&'a str, &'a str)>,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    correlation_data: Option<&'a [u8]>,
    utf8: bool,
    shared_done: bool,
}

/// A publish on its way out, borrowed from the broker's message.
pub struct Outgoing<'a> {
    pub topic: &'a TopicName,
    pub payload: &'a Bytes,
    pub qos: Qos,
    pub retain: bool,
    pub properties: &'a MessageProperties,
    pub expires_at_ms: Option<i64>,
    /// The publishing client's id; `None` for HTTP publishes and the broker's own.
    pub origin: Option<&'a str>,
    /// The sending node gave it to members of shared subscriptions itself (it had lost
    /// NATS), so no member elsewhere gets it again.
    pub shared_done: bool,
}

/// Which publish a message is, service-wide: the node that sent it to NATS (a digest of the
/// node's id) and that node's number for it. Only messages sent between nodes have one: no
/// other node can hold a copy of the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub node: u64,
    pub seq: u64,
}

impl Stamp {
    /// The stable digest of a node's id that its stamps carry (FNV-1a; never 0).
    pub fn node_tag(node: &str) -> u64 {
        let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        hash.max(1)
    }
}

/// A publish received from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
    pub properties: MessageProperties,
    pub expires_at_ms: Option<i64>,
    pub origin: Option<Arc<str>>,
    /// See [`Outgoing::shared_done`].
    pub shared_done: bool,
    pub stamp: Option<Stamp>,
}

/// Why a received frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame version {0}, this node reads version {VERSION}")]
    Version(u8),
    #[error("the frame's head does not decode")]
    Head,
    #[error("the frame's topic {0:?} is not a topic this node accepts")]
    Topic(String),
    #[error("the frame carries a string MQTT cannot")]
    Text,
}

/// `m` with its `stamp`, if it has one.
pub fn encode(m: &Outgoing<'_>, stamp: Option<Stamp>) -> Bytes {
    let p = m.properties;
    let head = Head {
        topic: m.topic.as_str(),
        qos: m.qos as u8,
        retain: m.retain,
        expires_at_ms: m.expires_at_ms,
        origin_client: m.origin,
        node: stamp.map_or(0, |s| s.node),
        seq: stamp.map_or(0, |s| s.seq),
        user_properties: p
            .user_properties
            .iter()
            .map(|u| (u.key.as_str(), u.value.as_str()))
            .collect(),
        content_type: p.content_type.as_deref(),
        response_topic: p.response_topic.as_ref().map(TopicName::as_str),
        correlation_data: p.correlation_data.as_deref(),
        utf8: p.payload_format == PayloadFormat::Utf8,
        shared_done: m.shared_done,
    };
    let mut out = Vec::with_capacity(head_room(m) + m.payload.len());
    out.push(VERSION);
    // Serializing plain strings, integers and slices into a Vec cannot fail.
    let mut out = postcard::to_extend(&head, out).unwrap_or_default();
    out.extend_from_slice(m.payload);
    Bytes::from(out)
}

/// At least what the version byte and a head of `m` take, so that the frame is written
/// without growing (and copying) its buffer: 64 bytes cover the fixed fields and their
/// varints, and each string or byte field takes its length and at most 5 bytes more.
fn head_room(m: &Outgoing<'_>) -> usize {
    let p = m.properties;
    let field = |len: usize| len + 5;
    64 + field(m.topic.as_str().len())
        + m.origin.map_or(0, |o| field(o.len()))
        + p.content_type.as_ref().map_or(0, |c| field(c.len()))
        + p.response_topic
            .as_ref()
            .map_or(0, |t| field(t.as_str().len()))
        + p.correlation_data.as_ref().map_or(0, |c| field(c.len()))
        + p.user_properties
            .iter()
            .map(|u| field(u.key.len()) + field(u.value.len()))
            .sum::<usize>()
}

/// Frames of one subject, in order, becoming one NATS message body. The frames are gathered
/// first and copied once into a body of their exact size: a body grown as they arrive would
/// be copied again at each doubling.
pub struct Batch {
    first: Bytes,
    /// The frames after the first; a frame sent alone allocates nothing here.
    rest: Vec<Bytes>,
    /// The body's length if it is a batch: the marker, and each frame with its length.
    joined_len: usize,
}

impl Batch {
    pub fn new(first: Bytes) -> Self {
        Self {
            joined_len: 1 + 4 + first.len(),
            first,
            rest: Vec::new(),
        }
    }

    /// Whether `frame` still fits within [`BATCH_BYTES`].
    pub fn fits(&self, frame: &Bytes) -> bool {
        self.joined_len + 4 + frame.len() <= BATCH_BYTES
    }

    pub fn push(&mut self, frame: Bytes) {
        self.joined_len += 4 + frame.len();
        self.rest.push(frame);
    }

    pub fn count(&self) -> usize {
        1 + self.rest.len()
    }

    /// The body to send: the one frame itself, or the batch.
    pub fn body(self) -> Bytes {
        if self.rest.is_empty() {
            return self.first;
        }
        let mut joined = Vec::with_capacity(self.joined_len);
        joined.push(BATCH);
        for frame in std::iter::once(&self.first).chain(&self.rest) {
            // A frame is below BATCH_BYTES when batched.
            joined.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes());
            joined.extend_from_slice(frame);
        }
        Bytes::from(joined)
    }
}

/// The frames a NATS message body carries: itself, or those of a batch (sliced, not copied).
/// A batch cut short ends with [`FrameError::Head`].
pub fn frames(body: &Bytes) -> impl Iterator<Item = Result<Bytes, FrameError>> + '_ {
    let batch = body.first() == Some(&BATCH);
    let mut at = usize::from(batch);
    let mut single = (!batch).then(|| body.clone());
    std::iter::from_fn(move || {
        if !batch {
            return single.take().map(Ok);
        }
        if at >= body.len() {
            return None;
        }
        let len = body
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let end = len.map(|len| at + 4 + len).filter(|&end| end <= body.len());
        let Some(end) = end else {
            at = body.len();
            return Some(Err(FrameError::Head));
        };
        let frame = body.slice(at + 4..end);
        at = end;
        Some(Ok(frame))
    })
}

/// The publish in `body`, checked as the edge checks a client's: a topic within this node's
/// limits and no string MQTT cannot carry. Another node checked it already; a NATS account
/// shared with other software could still carry anything under the prefix.
pub fn decode(body: &Bytes, limits: TopicLimits) -> Result<Routed, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Head)?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let (head, payload) =
        postcard::take_from_bytes::<Head<'_>>(rest).map_err(|_| FrameError::Head)?;
    let payload = body.slice(body.len() - payload.len()..);
    let topic = TopicName::parse(head.topic, limits)
        .map_err(|_| FrameError::Topic(head.topic.to_owned()))?;
    let response_topic = head
        .response_topic
        .map(|t| TopicName::parse(t, limits).map_err(|_| FrameError::Topic(t.to_owned())))
        .transpose()?;
    let strings = head
        .user_properties
        .iter()
        .flat_map(|(k, v)| [*k, *v])
        .chain(head.content_type)
        .chain(head.origin_client);
    for s in strings {
        check_text(s).map_err(|_| FrameError::Text)?;
    }
    let qos = Qos::from_u8(head.qos).ok_or(FrameError::Head)?;
    let routed = Routed {
        topic,
        payload,
        qos,
        retain: head.retain,
        properties: MessageProperties {
            user_properties: head
                .user_properties
                .iter()
                .map(|(k, v)| UserProperty {
                    key: (*k).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
            content_type: head.content_type.map(str::to_owned),
            response_topic,
            correlation_data: head.correlation_data.map(Bytes::copy_from_slice),
            payload_format: if head.utf8 {
                PayloadFormat::Utf8
            } else {
                PayloadFormat::Unspecified
            },
        },
        expires_at_ms: head.expires_at_ms,
        origin: head.origin_client.map(Arc::from),
        shared_done: head.shared_done,
        stamp: (head.node != 0).then_some(Stamp {
            node: head.node,
            seq: head.seq,
        }),
    };
    Ok(routed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s, TopicLimits::default()).unwrap()
    }

    #[test]
    fn a_publish_with_every_property_arrives_as_sent() {
        let properties = MessageProperties {
            user_properties: vec![
                UserProperty {
                    key: "k".into(),
                    value: "v1".into(),
                },
                UserProperty {
                    key: "k".into(),
                    value: "ü v2".into(),
                },
            ],
            content_type: Some("application/json".into()),
            response_topic: Some(topic("reply/here")),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            payload_format: PayloadFormat::Utf8,
        };
        let payload = Bytes::from_static(b"{\"on\":true}");
        let t = topic("a b/.*>/$x");
        let body = encode(
            &Outgoing {
                topic: &t,
                payload: &payload,
                qos: Qos::ExactlyOnce,
                retain: true,
                properties: &properties,
                expires_at_ms: Some(1_767_225_600_000),
                origin: Some("client-1"),
                shared_done: true,
            },
            Some(Stamp {
                node: Stamp::node_tag("node-a"),
                seq: 42,
            }),
        );
        let routed = decode(&body, TopicLimits::default()).unwrap();
        assert_eq!(
            routed,
            Routed {
                topic: t,
                payload,
                qos: Qos::ExactlyOnce,
                retain: true,
                properties,
                expires_at_ms: Some(1_767_225_600_000),
                origin: Some(Arc::from("client-1")),
                shared_done: true,
                stamp: Some(Stamp {
                    node: Stamp::node_tag("node-a"),
                    seq: 42
                }),
            }
        );
    }

    fn frame_of(t: &TopicName, payload: &'static [u8], seq: u64) -> Bytes {
        encode(
            &Outgoing {
                topic: t,
                payload: &Bytes::from_static(payload),
                qos: Qos::AtLeastOnce,
                retain: false,
                properties: &MessageProperties::default(),
                expires_at_ms: None,
                origin: None,
                shared_done: false,
            },
            Some(Stamp { node: 1, seq }),
        )
    }

    #[test]
    fn a_batch_carries_its_frames_in_order_and_one_frame_goes_alone() {
        let t = topic("a/b");
        let one = frame_of(&t, b"one", 1);
        let alone = Batch::new(one.clone());
        assert_eq!(alone.count(), 1);
        assert_eq!(alone.body(), one, "a batch of one is the frame itself");
        let mut batch = Batch::new(one.clone());
        let rest = [frame_of(&t, b"two", 2), frame_of(&t, b"", 3)];
        for f in &rest {
            assert!(batch.fits(f));
            batch.push(f.clone());
        }
        assert_eq!(batch.count(), 3);
        let body = batch.body();
        let framed: usize = [&one, &rest[0], &rest[1]].iter().map(|f| 4 + f.len()).sum();
        assert_eq!(
            body.len(),
            1 + framed,
            "the marker and each frame with its length"
        );
        let decoded: Vec<(Vec<u8>, u64)> = frames(&body)
            .map(|f| {
                let routed = decode(&f.unwrap(), TopicLimits::default()).unwrap();
                (routed.payload.to_vec(), routed.stamp.unwrap().seq)
            })
            .collect();
        assert_eq!(
            decoded,
            [(b"one".to_vec(), 1), (b"two".to_vec(), 2), (Vec::new(), 3)]
        );
        let single: Vec<_> = frames(&one).collect();
        assert_eq!(single, [Ok(one.clone())]);
    }

    #[test]
    fn a_batch_stops_below_its_size_and_a_cut_one_is_refused() {
        let t = topic("a");
        let big = frame_of(&t, &[0u8; 20_000], 0);
        let mut batch = Batch::new(big.clone());
        let mut count = 1;
        while batch.fits(&big) {
            batch.push(big.clone());
            count += 1;
        }
        assert_eq!(count, 3, "three frames of 20 kB fit in 64 KiB, four do not");
        let body = batch.body();
        assert!(body.len() <= BATCH_BYTES);
        let cut = body.slice(..body.len() - 1);
        let results: Vec<_> = frames(&cut).collect();
        assert_eq!(results.len(), 3);
        assert!(results[..2].iter().all(Result::is_ok));
        assert_eq!(results[2], Err(FrameError::Head));
    }

    #[test]
    fn a_frame_is_written_within_the_room_reserved_for_it() {
        let long = "ü".repeat(30_000);
        let properties = MessageProperties {
            user_properties: (0..50)
                .map(|i| UserProperty {
                    key: format!("k{i}{long}"),
                    value: long.clone(),
                })
                .collect(),
            content_type: Some(long.clone()),
            response_topic: Some(
                TopicName::parse(
                    long.clone(),
                    TopicLimits {
                        max_bytes: 65_535,
                        max_levels: 8,
                    },
                )
                .unwrap(),
            ),
            correlation_data: Some(Bytes::from(vec![7u8; 65_535])),
            payload_format: PayloadFormat::Utf8,
        };
        let t = TopicName::parse(
            long.clone(),
            TopicLimits {
                max_bytes: 65_535,
                max_levels: 8,
            },
        )
        .unwrap();
        let payload = Bytes::from(vec![1u8; 1000]);
        for (properties, origin) in [
            (&properties, Some(long.as_str())),
            (&MessageProperties::default(), None),
        ] {
            let m = Outgoing {
                topic: &t,
                payload: &payload,
                qos: Qos::AtLeastOnce,
                retain: true,
                properties,
                expires_at_ms: Some(i64::MAX),
                origin,
                shared_done: true,
            };
            let body = encode(
                &m,
                Some(Stamp {
                    node: u64::MAX,
                    seq: u64::MAX,
                }),
            );
            assert!(
                body.len() <= head_room(&m) + payload.len(),
                "{} > {}",
                body.len(),
                head_room(&m) + payload.len()
            );
        }
    }

    #[test]
    fn a_nodes_tag_is_fnv_1a_of_its_id_so_every_build_agrees() {
        assert_eq!(Stamp::node_tag("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Stamp::node_tag(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn an_empty_payload_and_no_properties_round_trip() {
        let t = topic("x");
        let body = encode(
            &Outgoing {
                topic: &t,
                payload: &Bytes::new(),
                qos: Qos::AtMostOnce,
                retain: false,
                properties: &MessageProperties::default(),
                expires_at_ms: None,
                origin: None,
                shared_done: false,
            },
            None,
        );
        let routed = decode(&body, TopicLimits::default()).unwrap();
        assert_eq!(routed.stamp, None, "queued without a stamp");
        assert!(routed.payload.is_empty());
        assert_eq!(routed.properties, MessageProperties::default());
        assert_eq!(routed.origin, None);
    }

    #[test]
    fn foreign_or_bad_frames_are_refused() {
        let t = topic("long/topic/name");
        let good = encode(
            &Outgoing {
                topic: &t,
                payload: &Bytes::from_static(b"p"),
                qos: Qos::AtLeastOnce,
                retain: false,
                properties: &MessageProperties::default(),
                expires_at_ms: None,
                origin: Some("c\0"),
                shared_done: false,
            },
            None,
        );
        assert_eq!(decode(&good, TopicLimits::default()), Err(FrameError::Text));
        let mut other = good.to_vec();
        other[0] = 9;
        assert_eq!(
            decode(&Bytes::from(other), TopicLimits::default()),
            Err(FrameError::Version(9))
        );
        assert_eq!(
            decode(&Bytes::new(), TopicLimits::default()),
            Err(FrameError::Head)
        );
        assert_eq!(
            decode(
                &Bytes::from_static(&[VERSION, 0xFF]),
                TopicLimits::default()
            ),
            Err(FrameError::Head)
        );
        let tight = TopicLimits {
            max_bytes: 4,
            max_levels: 8,
        };
        assert_eq!(
            decode(&good, tight),
            Err(FrameError::Topic("long/topic/name".into()))
        );
    }
}
