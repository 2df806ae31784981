//! Arbitrary bytes as the start of a client connection, through the decoding path the broker
//! runs (`retaind::mqtt::Codec`: version detection, the version's codec, 3.1.1 → 5).
//!
//! Input layout: `[mode, split_hi, split_lo, bytes...]`. The low two bits of `mode` put a valid
//! CONNECT in front of `bytes` (none, 3.1.1, 5.0, 5.0), so the fuzzer spends its time on the
//! packets after the handshake instead of rediscovering CONNECT; the next two bits pick the
//! maximum packet size. The split point cuts the stream into two reads, as a socket might.
//!
//! Checked: no panic; the read buffer never grows much past what the input and the packet-size
//! limit justify; two reads give the same packets and outcome as one; and in an MQTT 5 session
//! every decoded packet re-encodes to bytes that decode to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use retaind::mqtt::{Codec, Packet, Version, decode_stream};
use tokio_util::codec::{Decoder, Encoder};

const V3_CONNECT: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
const V5_CONNECT: &[u8] = b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02c1";

/// Small limits make the over-limit path easy to reach; 256 KiB is the broker's default.
const MAX_PACKET_SIZES: [u32; 4] = [16, 1024, 64 * 1024, 256 * 1024];

/// The codecs keep room for the next fixed header (5 bytes) on top of what they read.
const SLACK: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [mode, split_hi, split_lo, rest @ ..] = data else {
        return;
    };
    let prefix = match mode & 0b11 {
        0 => &[][..],
        1 => V3_CONNECT,
        _ => V5_CONNECT,
    };
    let max = MAX_PACKET_SIZES[usize::from((mode >> 2) & 0b11)];
    let input = [prefix, rest].concat();
    let split = usize::from(u16::from_be_bytes([*split_hi, *split_lo])) % (input.len() + 1);

    let mut buf = BytesMut::from(&input[..]);
    let (packets, error) = decode_stream(&mut buf, max);
    assert_bounded(&buf, input.len(), max);

    let (version, split_packets, split_error) = decode_in_two_reads(&input, split, max);
    assert_eq!(packets, split_packets);
    assert_eq!(format!("{error:?}"), format!("{split_error:?}"));

    if version == Some(Version::V5) {
        for packet in packets {
            assert_reencodes(packet);
        }
    }
});

/// Decoding may reserve room for the packet a header announces, but only up to the limit:
/// without one, a 5-byte header would make it reserve 256 MB. Doubling on growth is allowed.
fn assert_bounded(buf: &BytesMut, input_len: usize, max: u32) {
    let bound = 2 * (input_len + max as usize + SLACK);
    assert!(
        buf.capacity() <= bound,
        "read buffer capacity {} over {bound} (input {input_len} bytes, limit {max})",
        buf.capacity()
    );
}

fn decode_in_two_reads(
    input: &[u8],
    split: usize,
    max: u32,
) -> (Option<Version>, Vec<Packet>, Option<retaind::mqtt::Error>) {
    let mut codec = Codec::new(max);
    let mut buf = BytesMut::from(&input[..split]);
    let mut packets = Vec::new();
    for next in [&input[split..], &[][..]] {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => break,
                Err(e) => return (codec.version(), packets, Some(e)),
            }
            assert_bounded(&buf, input.len(), max);
        }
        buf.extend_from_slice(next);
    }
    (codec.version(), packets, None)
}

/// A packet the broker decoded can be encoded again (the broker forwards PUBLISH fields as it
/// got them), and those bytes decode to the same packet.
fn assert_reencodes(packet: Packet) {
    let mut codec = Codec::new(0);
    let mut connect = BytesMut::from(V5_CONNECT);
    assert!(matches!(codec.decode(&mut connect), Ok(Some(_))));

    let mut buf = BytesMut::new();
    if codec.encode(packet.clone(), &mut buf).is_err() {
        return;
    }
    match codec.decode(&mut buf) {
        Ok(Some(decoded)) => assert_eq!(decoded, packet),
        other => panic!("{packet:?} encoded to bytes that decode to {other:?}"),
    }
    assert!(buf.is_empty());
}
