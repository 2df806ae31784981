//! One connection's bytes ⇄ MQTT 5 packets, without I/O.
//!
//! [`Codec`] is everything `Framed` does to bytes: wait for the CONNECT, pick the protocol
//! version from it, decode with that version's rmqtt-codec codec, and translate 3.1.1 packets to
//! and from MQTT 5. Keeping it free of sockets lets the fuzz target (`fuzz/`) and the property
//! tests (`tests/mqtt_codec.rs`) drive the exact path a client's bytes take, and lets
//! `tokio_util::codec::Framed` keep its cancel-safe buffering.

use bytes::BytesMut;
use rmqtt_codec::MqttCodec;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use tokio_util::codec::{Decoder, Encoder};

use super::outgoing::{self, KeyValue, OutgoingPublish};
use super::{Error, Version};
use super::{Packet, v3, validate};

/// The codec of one connection, from its first byte on.
#[derive(Debug)]
pub struct Codec {
    inner: MqttCodec,
    max_packet_size: u32,
    /// The client's Maximum Packet Size (MQTT 5), for the PUBLISH packets written by
    /// `outgoing`; 0 for none.
    max_outbound_size: u32,
}

impl Codec {
    /// A codec waiting for the CONNECT. `max_packet_size` bounds the remaining length of every
    /// packet the client sends, the CONNECT included; 0 would mean no bound, and a 5-byte header
    /// could then make the decoder reserve 256 MB, so callers always pass one.
    pub fn new(max_packet_size: u32) -> Self {
        Self {
            inner: MqttCodec::Version(VersionCodec),
            max_packet_size,
            max_outbound_size: 0,
        }
    }

    /// The version the CONNECT asked for, once it has been seen.
    pub fn version(&self) -> Option<Version> {
        match self.inner {
            MqttCodec::V3(_) => Some(Version::V3),
            MqttCodec::V5(_) => Some(Version::V5),
            MqttCodec::Version(_) => None,
        }
    }

    /// The largest packet the client said it accepts (MQTT 5 Maximum Packet Size); a larger
    /// packet fails to encode. 3.1.1 has no such limit.
    pub fn set_max_outbound_size(&mut self, size: u32) {
        if let MqttCodec::V5(codec) = &mut self.inner {
            codec.set_max_outbound_size(size);
            self.max_outbound_size = size;
        }
    }

    /// Peeks at the CONNECT header and installs the codec for its version. Consumes nothing, so
    /// on an unsupported version the caller can still inspect the buffered CONNECT.
    fn settle_version(&mut self, src: &mut BytesMut) -> Result<bool, Error> {
        let version = match VersionCodec.decode(src) {
            Ok(None) => return Ok(false),
            Ok(Some(ProtocolVersion::MQTT3)) => Version::V3,
            Ok(Some(ProtocolVersion::MQTT5)) => Version::V5,
            // [MQTT-3.1.0-1] the first packet a client sends must be CONNECT.
            Err(DecodeError::UnsupportedPacketType) => return Err(Error::NotConnect),
            Err(DecodeError::InvalidProtocol) => return Err(Error::UnsupportedVersion),
            Err(e) => return Err(e.into()),
        };
        self.inner = match version {
            Version::V3 => MqttCodec::V3(rmqtt_codec::v3::Codec::new(self.max_packet_size)),
            Version::V5 => MqttCodec::V5(rmqtt_codec::v5::Codec::new(self.max_packet_size, 0)),
        };
        Ok(true)
    }
}

impl Decoder for Codec {
    type Item = Packet;
    type Error = Error;

    /// The next whole packet, as MQTT 5. After an error the stream is unusable: the codec's
    /// framing state is lost, and the connection must close.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Error> {
        if matches!(self.inner, MqttCodec::Version(_)) && !self.settle_version(src)? {
            return Ok(None);
        }
        let (decoded, version) = match &mut self.inner {
            MqttCodec::V3(codec) => {
                match validate::frame(src, self.max_packet_size) {
                    validate::Frame::Incomplete => return Ok(None),
                    validate::Frame::Whole => validate::v3_subscribe_options(src)?,
                    // The decoder refuses it from its header alone.
                    validate::Frame::Refused => {}
                }
                let decoded = codec.decode(src)?;
                (decoded.map(|(p, len)| (v3::inbound(p), len)), Version::V3)
            }
            MqttCodec::V5(codec) => (codec.decode(src)?, Version::V5),
            MqttCodec::Version(_) => return Err(Error::NotConnect),
        };
        let Some((packet, len)) = decoded else {
            return Ok(None);
        };
        let packet = bodiless(packet, len)?;
        // The one check of every string and rule the decoder leaves to us.
        validate::packet(&packet, version)?;
        Ok(Some(packet))
    }
}

/// PINGREQ and PINGRESP have no body (no variable header and no payload: sections 3.12.2-3 and
/// 3.13.2-3 of both 3.1.1 and 5.0, which carry no numbered conformance statement); the codec
/// skips whatever follows their header, so the length is checked here, and a body makes the
/// packet malformed.
fn bodiless(packet: Packet, remaining_length: u32) -> Result<Packet, Error> {
    let must_be_empty = matches!(packet, Packet::PingRequest | Packet::PingResponse);
    if must_be_empty && remaining_length != 0 {
        return Err(DecodeError::MalformedPacket.into());
    }
    Ok(packet)
}

impl Encoder<Packet> for Codec {
    type Error = Error;

    /// Packets a 3.1.1 client has no form for (a server DISCONNECT, AUTH) encode to nothing:
    /// for them the connection just closes.
    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), Error> {
        match &mut self.inner {
            MqttCodec::V5(codec) => codec.encode(packet, dst)?,
            MqttCodec::V3(codec) => {
                if let Some(packet) = v3::outbound(packet) {
                    codec.encode(packet, dst)?;
                }
            }
            MqttCodec::Version(_) => return Err(EncodeError::UnsupportedVersion.into()),
        }
        Ok(())
    }
}

impl<U: KeyValue> Encoder<OutgoingPublish<'_, U>> for Codec {
    type Error = Error;

    /// The PUBLISH packets the broker sends, without building the codec's packet for each.
    fn encode(&mut self, publish: OutgoingPublish<'_, U>, dst: &mut BytesMut) -> Result<(), Error> {
        let version = self.version().ok_or(EncodeError::UnsupportedVersion)?;
        outgoing::encode(&publish, version, self.max_outbound_size, dst)?;
        Ok(())
    }
}

/// Decodes `buf` as the start of a connection: the packets it holds, in order, then the error
/// that stopped decoding, if any. Bytes of an incomplete last packet stay in `buf`.
pub fn decode_stream(buf: &mut BytesMut, max_packet_size: u32) -> (Vec<Packet>, Option<Error>) {
    let mut codec = Codec::new(max_packet_size);
    let mut packets = Vec::new();
    loop {
        match codec.decode(buf) {
            Ok(Some(packet)) => packets.push(packet),
            Ok(None) => return (packets, None),
            Err(e) => return (packets, Some(e)),
        }
    }
}
