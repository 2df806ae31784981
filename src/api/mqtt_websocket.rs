//! MQTT over WebSocket at `/mqtt`: the upgraded socket is presented to the broker as a byte
//! stream. Binary frames carry MQTT bytes, and a packet may span frames or share one. The
//! stream cannot reach the socket under the upgrade, so it moves the socket, when its
//! connection moves to the background threads and back, by asking (`tcp::AskToMove`).
//!
//! Over HTTPS the connection's client certificate goes to the broker with the stream, so a
//! WSS client authenticates by it exactly as an MQTT-over-TLS client does. An upgrade request
//! whose query carries a SigV4 signature (a presigned URL, as the AWS IoT device SDKs build it
//! with the service name `iotdevicegateway`) is verified before the upgrade and refused with the
//! AWS error if bad; its principal then goes to the broker the same way, so the CONNECT needs
//! no credentials. The signature wins over a certificate, as the Authorization header does for
//! the HTTP API.
//!
//! A browser presents its client certificate to any page's WebSocket, as it sends cookies, so
//! the certificate does not go to the broker when the upgrade is cross-site ([`cross_site`]):
//! the connection is upgraded without it, and its CONNECT needs credentials like any other.
//! Refusing the upgrade instead would also stop a page on another site that signs in properly.
//! A presigned URL is a bearer credential (whoever holds the URL may use it), so it counts
//! from any page. Without principals, cross-site upgrades are refused before this handler runs
//! (`browser::refuse_cross_site`).

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Extension;
use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::ready;
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use super::browser::cross_site;
use super::{ApiError, ApiState, Peer};
use crate::auth::{self, AuthError, Credential, Principal, SigV4Request};
use crate::broker::{Broker, Remote, TransportIdentity};
use crate::tcp::{AskToMove, MoveRequest};

/// Room for the WebSocket framing around the largest MQTT packet we accept.
const FRAME_OVERHEAD: usize = 16;
/// The WebSocket read buffer of each connection, which tungstenite holds for as long as the
/// connection lasts: small, as most devices send little. A larger frame grows it.
const WS_READ_BUFFER: usize = 4 * 1024;

pub async fn upgrade(
    State(state): State<ApiState>,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let (mut remote, client_cert, acks, move_request) = match peer {
        Some(Extension(ConnectInfo(peer))) => {
            let remote = Remote {
                name: peer.websocket_name(),
                addr: Some(peer.addr),
                identity: None,
                uptake: Some(peer.uptake.clone()),
                proxy_header: None,
            };
            (
                remote,
                peer.client_cert(),
                peer.acks,
                Some(peer.move_request),
            )
        }
        None => {
            let remote = Remote {
                name: "websocket".to_owned(),
                addr: None,
                identity: None,
                uptake: None,
                proxy_header: None,
            };
            (remote, None, None, None)
        }
    };
    // A certificate only exists over TLS, so this server's origin is https.
    let client_cert = client_cert.filter(|_| !cross_site(&headers, "https"));
    remote.identity = match presigned_principal(&state, &method, &uri, &headers) {
        Ok(Some((principal, key))) => Some(TransportIdentity::Signed(principal, key)),
        Ok(None) => client_cert.map(TransportIdentity::ClientCert),
        Err(err) => {
            // The kind only: the cause could quote the credentials the client sent.
            tracing::debug!(
                kind = err.aws_error_type(),
                "presigned WebSocket URL refused"
            );
            return ApiError::from(err).into_response();
        }
    };
    let broker = state.broker.clone();
    let max = broker.config().max_packet_bytes as usize + FRAME_OVERHEAD;
    // [MQTT-6.0.0-3] the sub-protocol is "mqtt"; older clients ask for "mqttv3.1".
    ws.protocols(["mqtt", "mqttv3.1"])
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite reads into a buffer it allocates whole up front, 128 KiB unless told:
        // that much for every WebSocket device, idle or not (decision 025).
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| {
            // From here on the connection carries MQTT: its publishes wait for their commits.
            if let Some(acks) = acks {
                acks.turn_on();
            }
            serve(broker, socket, remote, move_request)
        })
}

/// The principal a presigned upgrade URL names, with its access key, once its signature checks
/// out; `None` when the query carries no signature or principals are not configured (the
/// CONNECT decides then).
fn presigned_principal(
    state: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<(Arc<Principal>, Credential)>, AuthError> {
    if !state.auth.is_enabled() || !auth::is_presigned(uri.query()) {
        return Ok(None);
    }
    let req = SigV4Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query(),
        headers,
        // An upgrade request has no body.
        payload_sha256: Sha256::digest(b"").into(),
    };
    let (principal, key) = state.auth.verify_sigv4_with_key(&req, SystemTime::now())?;
    Ok(key.map(|key| (principal, key)))
}

/// `move_request` moves the socket under the upgrade with the connection, when a large
/// retained delivery takes it to the background threads and back (`tcp::Rehome`).
async fn serve(
    broker: Broker,
    socket: WebSocket,
    remote: Remote,
    move_request: Option<MoveRequest>,
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
    let io = AskToMove::new(tokio::io::join(reader, writer), move_request);
    broker.serve_connection(io, remote).await;
}
