//! Which host names a server without principals answers for (against DNS rebinding, see
//! `browser`), and how a `Host` or `Origin` authority is read: name and port, normalized.

use std::net::IpAddr;

/// The host names, besides loopback ones, that a server without principals answers for
/// (`--allowed-hosts`): lowercase, without port or trailing dot.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Takes names as the operator wrote them; a port, if given, is ignored.
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        Self(
            names
                .into_iter()
                .map(|name| host_name(name.as_ref()))
                .filter(|name| !name.is_empty())
                .collect(),
        )
    }

    /// Whether `host` (a `Host` header's value) names this server: `localhost` or a name under
    /// it (RFC 6761: never resolved through DNS, so it cannot be rebound), a loopback address,
    /// or a configured name; any port.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host);
        let name = name.as_str();
        name == "localhost"
            || name.ends_with(".localhost")
            || name
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
            || self.0.iter().any(|allowed| allowed == name)
    }
}

/// The host part of a `Host` value, normalized: lowercase, without port, brackets or a final dot.
fn host_name(host: &str) -> String {
    normalized(split_port(host.trim()).0)
}

/// `name:port`, `[v6]:port`, or either without the port.
pub(super) fn split_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, port)) => (ip, port.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
        _ => (authority, None),
    }
}

pub(super) fn normalized(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses_are_allowed_on_any_port() {
        let none = AllowedHosts::default();
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(none.allows(host), "{host}");
        }
        for host in [
            "rebind.evil.example",
            "localhost.evil.example",
            "evillocalhost",
            "10.0.0.1:8080",
            "[::2]:8080",
            "",
        ] {
            assert!(!none.allows(host), "{host}");
        }
    }

    #[test]
    fn configured_names_are_allowed_on_any_port_in_any_case() {
        let allowed = AllowedHosts::new(["Retaind.LAN", "box.example:8080", ""]);
        for host in [
            "retaind.lan",
            "RETAIND.lan:80",
            "box.example",
            "box.example:9",
        ] {
            assert!(allowed.allows(host), "{host}");
        }
        assert!(!allowed.allows("sub.retaind.lan"));
        assert!(!allowed.allows("example"));
    }
}
