//! MQTT framing: bytes on a socket ⇄ typed packets, for MQTT 3.1.1 and 5.0.
//!
//! Encoding and decoding are rmqtt-codec's (see docs/decisions/004-mqtt-codec.md), except the
//! PUBLISH packets the broker sends, which `outgoing` writes from borrowed parts. This module
//! adds what the codec leaves to its caller: picking the protocol version from the first
//! CONNECT, and presenting both versions as MQTT 5 packets so that the broker has one protocol
//! to reason about. MQTT 3.1.1 packets are translated on the way in and out (`v3`).
//!
//! The byte-level work is `codec` (no I/O, so it can be fuzzed and property-tested); `framed`
//! puts it on a socket. It knows nothing of sessions, subscriptions or storage, except the
//! stored QoS type, which `qos` converts to and from the codec's.

mod codec;
mod error;
mod framed;
mod outgoing;
mod qos;
mod v3;
mod validate;
mod version;

pub use bytestring::ByteString;
pub use codec::{Codec, decode_stream};
pub use error::Error;
pub use framed::{Framed, GOODBYE, handshake};
pub use outgoing::{KeyValue, OutgoingProperties, OutgoingPublish};
pub use rmqtt_codec::error::DecodeError;
pub use rmqtt_codec::types::{Publish, QoS};
pub use rmqtt_codec::v5::Connect;
pub use rmqtt_codec::v5::{
    ConnectAck, ConnectAckReason, Disconnect, DisconnectReasonCode, LastWill, Packet, PublishAck,
    PublishAck2, PublishAck2Reason, PublishAckReason, PublishProperties, RetainHandling, Subscribe,
    SubscribeAck, SubscribeAckReason, SubscriptionOptions, Unsubscribe, UnsubscribeAck,
    UnsubscribeAckReason, UserProperties,
};
pub use validate::Violation;
pub use version::Version;
