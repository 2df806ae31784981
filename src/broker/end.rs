//! Why a connection ends, as the loop and the packet handling report it to the close.

use crate::mqtt::{self, DecodeError, DisconnectReasonCode};

/// Why a connection ends.
#[derive(Debug)]
pub(super) enum End {
    /// The client sent DISCONNECT; with reason 0x04 it still wants its Will published.
    ClientDisconnect { keep_will: bool },
    /// The socket closed or failed.
    Lost,
    /// The client took nothing of the output waiting for it for `--mqtt-write-timeout`.
    Stalled,
    /// We close it, telling an MQTT 5 client why.
    Close(DisconnectReasonCode),
}

impl End {
    /// A packet that could not be read: a closed or failed socket is lost; a packet the codec
    /// refused closes the connection with the reason the codec found.
    pub fn from_read_error(e: mqtt::Error) -> Self {
        match e {
            mqtt::Error::Closed | mqtt::Error::Io(_) => End::Lost,
            mqtt::Error::Decode(DecodeError::MaxSizeExceeded { .. }) => {
                End::Close(DisconnectReasonCode::PacketTooLarge)
            }
            mqtt::Error::Decode(DecodeError::Io(_)) => End::Lost,
            mqtt::Error::Invalid(violation) => End::Close(violation.reason()),
            _ => End::Close(DisconnectReasonCode::MalformedPacket),
        }
    }

    /// Whether the client's Will is published, unless the broker is shutting down.
    pub fn publishes_will(&self) -> bool {
        !matches!(self, End::ClientDisconnect { keep_will: false })
    }
}
