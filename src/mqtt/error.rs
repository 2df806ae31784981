//! What can go wrong between a socket's bytes and MQTT packets, in the codec or on the socket.

use rmqtt_codec::error::{DecodeError, EncodeError};

use super::validate::Violation;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the client closed the connection")]
    Closed,
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("the first packet was not CONNECT")]
    NotConnect,
    #[error("unsupported protocol name or version")]
    UnsupportedVersion,
    #[error("invalid packet: {0}")]
    Invalid(#[from] Violation),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
