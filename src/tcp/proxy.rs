//! The PROXY protocol (HAProxy's; version 1, text, and version 2, binary): a load balancer that
//! forwards TCP connections (HAProxy, AWS Network Load Balancer, nginx's stream module, Envoy)
//! writes, before anything of the client's, a header naming the client's address. Without it
//! every connection has the balancer's address, and what retaind shares out by address (the
//! places of connections that have not said who they are, the budget of failed password checks)
//! would treat a whole fleet as one client.
//!
//! A listener set to expect it reads the header first from every connection of the configured
//! sources (all, unless `--proxy-protocol-from` names some), and closes a connection whose
//! header is missing, malformed, over [`MAX_HEADER_BYTES`] or late. It never guesses whether one
//! is there, as the protocol's specification requires: a client that could choose would choose
//! its own address. Connections from other sources are served as direct clients.
//!
//! The header is read to its last byte and no further, so what follows (a TLS ClientHello, an
//! MQTT CONNECT, an HTTP request) stays on the socket for the protocol above. Parsing is the
//! `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ipnet::IpNet;
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest header read. Version 1 headers are at most 107 bytes; version 2 headers carry
/// type-length-values after the addresses (AWS adds its VPC endpoint id, HAProxy may add the
/// TLS details of the client's connection), which are ignored. 4 KiB is far above what any
/// balancer sends, and bounds what a connection can make us hold before it is known.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Version 1's most: "PROXY TCP6 " plus two IPv6 addresses, two ports and CRLF.
const MAX_V1_BYTES: usize = 107;
const V1_START: &[u8] = b"PROXY ";
/// The fixed part of a version 2 header: the 12-byte signature, version and command, family and
/// protocol, and the length of what follows.
const V2_FIXED: usize = 16;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection did not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("PROXY protocol header of {0} bytes, over the {MAX_HEADER_BYTES} accepted")]
    TooLong(usize),
    #[error("PROXY protocol header for a datagram (UDP) connection on a stream listener")]
    Datagram,
    #[error("no PROXY protocol header in time")]
    Late,
    #[error("connection failed while reading its PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// A listener's setting: which peers must start their connections with a header. A cheap
/// handle; it also counts the connections refused for their header, for the metrics.
#[derive(Clone, Debug)]
pub struct ProxyProtocol {
    /// The listener's name in logs: `mqtt`, `mqtts`, `http`, `https`.
    listener: &'static str,
    /// Empty: every peer.
    from: Arc<[IpNet]>,
    refused: Arc<AtomicU64>,
    warned: Arc<AtomicBool>,
}

impl ProxyProtocol {
    pub fn new(listener: &'static str, from: &[IpNet]) -> Self {
        Self {
            listener,
            from: from.into(),
            refused: Arc::default(),
            warned: Arc::default(),
        }
    }

    /// Whether a connection from `peer` starts with a header.
    pub fn expects(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.from.is_empty() || self.from.iter().any(|net| net.contains(&peer))
    }

    /// Connections refused for their header since the start.
    pub fn refused(&self) -> Arc<AtomicU64> {
        self.refused.clone()
    }

    /// The client's address for a connection from `peer`: read from its header, by
    /// `deadline`, when `peer` is expected to send one, else `peer` itself. A refusal (a late
    /// header included) is counted and logged here; the caller closes the connection.
    pub async fn client<S: AsyncRead + Unpin>(
        &self,
        io: &mut S,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Result<SocketAddr, ProxyHeaderError> {
        if !self.expects(peer.ip()) {
            return Ok(peer);
        }
        let read = tokio::time::timeout_at(deadline, read_header(io)).await;
        match read.unwrap_or(Err(ProxyHeaderError::Late)) {
            Ok(said) => Ok(said.unwrap_or(peer)),
            Err(e) => {
                self.refuse(peer, &e);
                Err(e)
            }
        }
    }

    /// Counts and logs a connection closed for its header: the first at warning level, since
    /// it usually means the balancer does not send headers, the others at debug level.
    fn refuse(&self, peer: SocketAddr, why: &ProxyHeaderError) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let listener = self.listener;
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(%peer, listener, "closed: {why}");
        } else {
            tracing::warn!(
                %peer,
                listener,
                "closed a connection: {why}. The listener expects one (--proxy-protocol) from \
                 this address: is the load balancer set to send it? Later ones are logged at \
                 debug level and counted in retaind_proxy_headers_refused_total"
            );
        }
    }
}

/// Reads a PROXY protocol header from the start of `io`, up to its last byte: the client's
/// address, or `None` when the header gives none the listener can use (version 2 LOCAL, sent
/// by the balancer's own health checks; version 1 UNKNOWN; a version 2 UNSPEC or UNIX family),
/// in which case the connection's own address stands.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; V2_FIXED];
    // The first six bytes tell the versions apart, and neither header is shorter.
    io.read_exact(&mut start[..V1_START.len()]).await?;
    if &start[..V1_START.len()] == V1_START {
        read_v1(io, &start[..V1_START.len()]).await
    } else if v2::PROTOCOL_PREFIX.starts_with(&start[..V1_START.len()]) {
        io.read_exact(&mut start[V1_START.len()..]).await?;
        read_v2(io, &start).await
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

/// The rest of a version 1 line, a byte at a time: what follows the line is not ours to read,
/// and the line is short (version 2 is what balancers send by default now).
async fn read_v1<S: AsyncRead + Unpin>(
    io: &mut S,
    start: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= MAX_V1_BYTES {
            return Err(ProxyHeaderError::Malformed(format!(
                "version 1 header without CRLF in its first {MAX_V1_BYTES} bytes"
            )));
        }
        line.push(io.read_u8().await?);
    }
    let header = ppp::v1::Header::try_from(line.as_slice())
        .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

async fn read_v2<S: AsyncRead + Unpin>(
    io: &mut S,
    fixed: &[u8; V2_FIXED],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if !fixed.starts_with(v2::PROTOCOL_PREFIX) {
        return Err(ProxyHeaderError::Missing);
    }
    let rest = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let total = V2_FIXED + rest;
    if total > MAX_HEADER_BYTES {
        return Err(ProxyHeaderError::TooLong(total));
    }
    let mut header = Vec::with_capacity(total);
    header.extend_from_slice(fixed);
    header.resize(total, 0);
    io.read_exact(&mut header[V2_FIXED..]).await?;
    let header = v2::Header::try_from(header.as_slice())
        .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    if header.command == v2::Command::Local {
        return Ok(None);
    }
    if header.protocol == v2::Protocol::Datagram {
        return Err(ProxyHeaderError::Datagram);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MQTT_CONNECT_START: &[u8] = &[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T'];

    fn v2(command: u8, family_protocol: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(family_protocol);
        let len = u16::try_from(addresses.len() + tlvs.len()).unwrap();
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn v2_tcp4(source: [u8; 4], port: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut addresses = source.to_vec();
        addresses.extend_from_slice(&[10, 0, 0, 1]);
        addresses.extend_from_slice(&port.to_be_bytes());
        addresses.extend_from_slice(&8883u16.to_be_bytes());
        v2(1, 0x11, &addresses, tlvs)
    }

    /// Reads a header from `bytes` followed by an MQTT CONNECT's first bytes; checks those are
    /// left unread.
    async fn read(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let mut input = bytes.to_vec();
        input.extend_from_slice(MQTT_CONNECT_START);
        let mut io = input.as_slice();
        let said = read_header(&mut io).await;
        if said.is_ok() {
            assert_eq!(io, MQTT_CONNECT_START, "read past the header");
        }
        said
    }

    #[tokio::test]
    async fn version_1_gives_the_client_address_and_leaves_what_follows() {
        let said = read(b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 1883\r\n").await;
        assert_eq!(said.unwrap(), Some("198.51.100.7:51234".parse().unwrap()));
        let said = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 1883\r\n").await;
        assert_eq!(said.unwrap(), Some("[2001:db8::7]:51234".parse().unwrap()));
        assert_eq!(read(b"PROXY UNKNOWN\r\n").await.unwrap(), None);
    }

    #[tokio::test]
    async fn version_2_gives_the_client_address_and_skips_its_tlvs() {
        // An AWS VPC endpoint id (type 0xEA) and a NOOP.
        let tlvs = [
            &[0xEA, 0x00, 0x05, 0x01][..],
            b"vpce",
            &[0x04, 0x00, 0x01, 0x00],
        ]
        .concat();
        let said = read(&v2_tcp4([198, 51, 100, 7], 51234, &tlvs)).await;
        assert_eq!(said.unwrap(), Some("198.51.100.7:51234".parse().unwrap()));

        let mut addresses = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)
            .octets()
            .to_vec();
        addresses.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        addresses.extend_from_slice(&[0xC8, 0x22, 0x07, 0x5B]);
        let said = read(&v2(1, 0x21, &addresses, &[])).await;
        assert_eq!(said.unwrap(), Some("[2001:db8::7]:51234".parse().unwrap()));
    }

    #[tokio::test]
    async fn version_2_local_and_unspecified_keep_the_connection_s_address() {
        // A health check of the balancer's own: LOCAL, addresses (if any) ignored.
        let mut addresses = vec![192, 0, 2, 1, 10, 0, 0, 1];
        addresses.extend_from_slice(&[0, 80, 0, 80]);
        assert_eq!(read(&v2(0, 0x11, &addresses, &[])).await.unwrap(), None);
        assert_eq!(read(&v2(0, 0x00, &[], &[])).await.unwrap(), None);
        assert_eq!(read(&v2(1, 0x00, &[], &[])).await.unwrap(), None);
    }

    #[tokio::test]
    async fn what_is_not_a_header_is_refused() {
        let connect = [MQTT_CONNECT_START, MQTT_CONNECT_START].concat();
        assert!(matches!(
            read(&connect).await,
            Err(ProxyHeaderError::Missing)
        ));
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n").await,
            Err(ProxyHeaderError::Missing)
        ));
        // The signature's first six bytes, then something else.
        let mut bent = v2_tcp4([198, 51, 100, 7], 1, &[]);
        bent[8] = b'X';
        assert!(matches!(read(&bent).await, Err(ProxyHeaderError::Missing)));
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        for line in [
            &b"PROXY TCP4 198.51.100.7 10.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 not.an.address 10.0.0.1 1 2\r\n",
            b"PROXY TCP5 198.51.100.7 10.0.0.1 1 2\r\n",
        ] {
            let said = read(line).await;
            assert!(
                matches!(said, Err(ProxyHeaderError::Malformed(_))),
                "{said:?}"
            );
        }
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read(&endless).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        // Version 3.
        let mut bad = v2_tcp4([198, 51, 100, 7], 1, &[]);
        bad[12] = 0x31;
        assert!(matches!(
            read(&bad).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        // IPv4 family with fewer bytes than two addresses and ports.
        let short = v2(1, 0x11, &[1, 2, 3, 4], &[]);
        assert!(matches!(
            read(&short).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let udp = v2(1, 0x12, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], &[]);
        assert!(matches!(read(&udp).await, Err(ProxyHeaderError::Datagram)));
    }

    #[tokio::test]
    async fn a_header_over_the_limit_is_refused_before_it_is_read() {
        let tlv_len = MAX_HEADER_BYTES - V2_FIXED - 12 - 3 + 1;
        let mut tlv = vec![0x04];
        tlv.extend_from_slice(&u16::try_from(tlv_len).unwrap().to_be_bytes());
        tlv.resize(3 + tlv_len, 0);
        let header = v2_tcp4([198, 51, 100, 7], 1, &tlv);
        assert_eq!(header.len(), MAX_HEADER_BYTES + 1);
        // Only the fixed part is there: the length alone refuses it.
        let mut io = &header[..V2_FIXED];
        let said = read_header(&mut io).await;
        assert!(
            matches!(said, Err(ProxyHeaderError::TooLong(n)) if n == MAX_HEADER_BYTES + 1),
            "{said:?}"
        );
        // One byte less is read whole.
        tlv.pop();
        tlv[1..3].copy_from_slice(&u16::try_from(tlv_len - 1).unwrap().to_be_bytes());
        let header = v2_tcp4([198, 51, 100, 7], 1, &tlv);
        assert_eq!(header.len(), MAX_HEADER_BYTES);
        assert!(read(&header).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_header_cut_short_is_an_error() {
        let header = b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 1883\r\n";
        let mut io = &header[..20];
        assert!(matches!(
            read_header(&mut io).await,
            Err(ProxyHeaderError::Io(_))
        ));
        let header = v2_tcp4([198, 51, 100, 7], 1, &[]);
        let mut io = &header[..20];
        assert!(matches!(
            read_header(&mut io).await,
            Err(ProxyHeaderError::Io(_))
        ));
    }

    #[tokio::test]
    async fn only_the_configured_sources_must_send_one() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let setting = ProxyProtocol::new("mqtt", &nets);
        assert!(setting.expects(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))));
        assert!(setting.expects("fd12::1".parse().unwrap()));
        // An IPv4 peer on a dual-stack socket.
        assert!(setting.expects("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!setting.expects(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));

        // A direct client is read from nothing and keeps its address.
        let direct: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mut io = MQTT_CONNECT_START;
        let soon = || tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        assert_eq!(
            setting.client(&mut io, direct, soon()).await.unwrap(),
            direct
        );
        assert_eq!(io, MQTT_CONNECT_START);
        assert_eq!(setting.refused().load(Ordering::Relaxed), 0);

        // A balancer that sends none is refused, and counted.
        let balancer: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut io = MQTT_CONNECT_START;
        assert!(setting.client(&mut io, balancer, soon()).await.is_err());
        assert_eq!(setting.refused().load(Ordering::Relaxed), 1);

        // One whose header stops half way is refused at the deadline, and counted.
        let (mut io, mut balancer_side) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut balancer_side, b"PROXY TCP4 10.")
            .await
            .unwrap();
        let late = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let said = setting.client(&mut io, balancer, late).await;
        assert!(matches!(said, Err(ProxyHeaderError::Late)), "{said:?}");
        assert_eq!(setting.refused().load(Ordering::Relaxed), 2);

        let every = ProxyProtocol::new("mqtt", &[]);
        assert!(every.expects(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    }
}
