//! Which descriptor of the test's process holds the server's end of a TCP connection. The
//! server runs in the test's process, and a socket that moves to another runtime
//! (`tcp::Rehome`) is registered there under a second descriptor, the first closed: the
//! descriptor's number shows whether it moved. Linux only (`/proc`).

use std::net::{IpAddr, SocketAddr};

/// The descriptors of this process whose socket is the server's end of the connection
/// between `server` and `client` (the client's local address): one, while the connection is
/// open and not in the middle of a move.
pub fn server_end(server: SocketAddr, client: SocketAddr) -> Vec<i32> {
    let Some(inode) = inode(server, client) else {
        return Vec::new();
    };
    let target = format!("socket:[{inode}]");
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let link = std::fs::read_link(entry.path()).ok()?;
            (link.to_str() == Some(target.as_str()))
                .then(|| entry.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The inode of the socket whose local address is `server` and remote address `client`, from
/// `/proc/net/tcp` (IPv4: the tests' listeners are on 127.0.0.1).
fn inode(server: SocketAddr, client: SocketAddr) -> Option<String> {
    let (local, remote) = (hex(server)?, hex(client)?);
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(9).map(|s| (*s).to_owned()))
            .flatten()
    })
}

/// An address as `/proc/net/tcp` writes it: the IPv4 address's bytes in the host's order (this
/// is a little-endian machine's view), then the port, both in upper-case hex.
fn hex(addr: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let host_order = u32::from_ne_bytes(ip.octets());
    Some(format!("{host_order:08X}:{:04X}", addr.port()))
}
