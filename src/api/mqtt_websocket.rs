//! MQTT over WebSocket at `/mqtt`: the upgraded socket is presented to the broker as a byte
//! stream. Binary frames carry MQTT bytes, and a packet may span frames or share one.
//!
//! Over HTTPS the connection's client certificate goes to the broker with the stream, so a
//! WSS client authenticates by it exactly as an MQTT-over-TLS client does.

use std::io;

use axum::Extension;
use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::ready;
use futures_util::{SinkExt, StreamExt};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use super::{ApiState, Peer};
use crate::broker::Broker;
use crate::tls::CertFingerprint;

/// Room for the WebSocket framing around the largest MQTT packet we accept.
const FRAME_OVERHEAD: usize = 16;

pub async fn upgrade(
    State(state): State<ApiState>,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    ws: WebSocketUpgrade,
) -> Response {
    let (name, client_cert) = match peer {
        Some(Extension(ConnectInfo(peer))) => (peer.websocket_name(), peer.client_cert()),
        None => ("websocket".to_owned(), None),
    };
    let broker = state.broker.clone();
    let max = broker.config().max_packet_bytes as usize + FRAME_OVERHEAD;
    // [MQTT-6.0.0-3] the sub-protocol is "mqtt"; older clients ask for "mqttv3.1".
    ws.protocols(["mqtt", "mqttv3.1"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(broker, socket, name, client_cert))
}

async fn serve(
    broker: Broker,
    socket: WebSocket,
    peer: String,
    client_cert: Option<CertFingerprint>,
) {
    let (sink, stream) = socket.split();
    let reader = StreamReader::new(stream.filter_map(|frame| {
        ready(match frame {
            Ok(Frame::Binary(bytes)) => Some(Ok(bytes)),
            // [MQTT-6.0.0-1] MQTT travels in binary frames; text frames are not MQTT.
            Ok(Frame::Text(_)) => Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "MQTT over WebSocket uses binary frames",
            ))),
            Ok(Frame::Close(_)) => None,
            Ok(Frame::Ping(_) | Frame::Pong(_)) => None,
            Err(e) => Some(Err(io::Error::other(e))),
        })
    }));
    let writer = SinkWriter::new(CopyToBytes::new(
        sink.sink_map_err(io::Error::other)
            .with(|bytes: Bytes| ready(Ok::<_, io::Error>(Frame::Binary(bytes)))),
    ));
    broker
        .serve_connection_with_cert(tokio::io::join(reader, writer), peer, client_cert)
        .await;
}
