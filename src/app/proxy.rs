//! `--proxy-protocol`: which listeners read a PROXY protocol header first ([`crate::tcp::proxy`]),
//! and the check that each one named is on.

use std::net::SocketAddr;

use super::Error;
use super::config::{ProxyListener, ServeConfig};
use crate::metrics::{Listener, Metrics};
use crate::tcp::proxy::ProxyProtocol;

/// Refuses `--proxy-protocol` naming a listener that is off: the operator meant a header to
/// be read somewhere it will not be.
pub(super) fn check(config: &ServeConfig) -> Result<(), Error> {
    for &listener in &config.proxy_protocol {
        let flag = match listener {
            ProxyListener::Mqtts if config.mqtts_addr.is_none() => "--mqtts-addr",
            ProxyListener::Https if config.https_addr.is_none() => "--https-addr",
            _ => continue,
        };
        return Err(Error::ProxyProtocolListenerOff {
            listener: names(listener).0,
            flag,
        });
    }
    Ok(())
}

/// The setting of `listener` when `--proxy-protocol` names it; the connections it refuses are
/// counted at each scrape.
pub(super) fn setting(
    config: &ServeConfig,
    metrics: &Metrics,
    listener: ProxyListener,
) -> Option<ProxyProtocol> {
    if !config.proxy_protocol.contains(&listener) {
        return None;
    }
    let (name, label) = names(listener);
    if let Some(addr) = open_to_anyone(config, listener) {
        tracing::warn!(
            listener = name,
            %addr,
            "PROXY protocol headers are taken from any peer on a listener other hosts can reach: \
             a client reaching it directly can name any address as its own (and spend another's \
             budget of failed password checks). Name the load balancers with \
             --proxy-protocol-from, unless the network lets only them reach this address"
        );
    }
    let setting = ProxyProtocol::new(name, &config.proxy_protocol_from);
    let refused = setting.refused();
    metrics.on_scrape(move |m| {
        m.proxy_headers_refused(label, refused.load(std::sync::atomic::Ordering::Relaxed));
    });
    Some(setting)
}

/// The address of `listener` when it takes a header from any peer (no
/// `--proxy-protocol-from`) and is bound where other hosts can reach it.
fn open_to_anyone(config: &ServeConfig, listener: ProxyListener) -> Option<SocketAddr> {
    let addr = match listener {
        ProxyListener::Mqtt => Some(config.mqtt_addr),
        ProxyListener::Mqtts => config.mqtts_addr,
        ProxyListener::Http => Some(config.http_addr),
        ProxyListener::Https => config.https_addr,
    }?;
    (config.proxy_protocol_from.is_empty() && !addr.ip().to_canonical().is_loopback())
        .then_some(addr)
}

/// The listener's name in logs and errors, and its metrics label.
fn names(listener: ProxyListener) -> (&'static str, Listener) {
    match listener {
        ProxyListener::Mqtt => ("mqtt", Listener::mqtt),
        ProxyListener::Mqtts => ("mqtts", Listener::mqtts),
        ProxyListener::Http => ("http", Listener::http),
        ProxyListener::Https => ("https", Listener::https),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_others_reach_is_open_to_anyone_only_without_a_list_of_balancers() {
        let mut config = ServeConfig::defaults();
        config.mqtt_addr = "127.0.0.1:1883".parse().unwrap();
        config.http_addr = "0.0.0.0:8080".parse().unwrap();
        config.https_addr = Some("[::]:8443".parse().unwrap());
        config.mqtts_addr = Some("[::ffff:127.0.0.1]:8883".parse().unwrap());
        assert_eq!(open_to_anyone(&config, ProxyListener::Mqtt), None);
        assert_eq!(open_to_anyone(&config, ProxyListener::Mqtts), None);
        assert_eq!(
            open_to_anyone(&config, ProxyListener::Http),
            Some(config.http_addr)
        );
        assert_eq!(
            open_to_anyone(&config, ProxyListener::Https),
            config.https_addr
        );
        config.proxy_protocol_from = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(open_to_anyone(&config, ProxyListener::Http), None);
        assert_eq!(open_to_anyone(&config, ProxyListener::Https), None);
    }
}
