//! MQTT over WebSocket at `/mqtt`: the upgraded socket is presented to the broker as a byte
//! stream. Binary frames carry MQTT bytes, and a packet may span frames or share one.

use std::io;
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::ready;
use futures_util::{SinkExt, StreamExt};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use super::ApiState;
use crate::broker::Broker;

/// Room for the WebSocket framing around the largest MQTT packet we accept.
const FRAME_OVERHEAD: usize = 16;

pub async fn upgrade(
    State(state): State<ApiState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = peer.map_or_else(
        || "websocket".to_owned(),
        |Extension(ConnectInfo(addr))| format!("ws://{addr}"),
    );
    let broker = state.broker.clone();
    let max = broker.config().max_packet_bytes as usize + FRAME_OVERHEAD;
    // [MQTT-6.0.0-3] the sub-protocol is "mqtt"; older clients ask for "mqttv3.1".
    ws.protocols(["mqtt", "mqttv3.1"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(broker, socket, peer))
}

async fn serve(broker: Broker, socket: WebSocket, peer: String) {
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
        .serve_connection(tokio::io::join(reader, writer), peer)
        .await;
}
