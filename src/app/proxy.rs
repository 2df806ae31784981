//! `--proxy-protocol`: which listeners read a PROXY protocol header first ([`crate::tcp::proxy`]),
//! and the check that each one named is on.

use super::Error;
use super::config::{ProxyListener, ServeConfig};
use crate::metrics::{Listener, Metrics};
use crate::tcp::proxy::ProxyProtocol;

/// Refuses `--proxy-protocol` naming a listener that is off: the operator meant a header to
/// be read somewhere it will not be.
pub(super) fn check(config: &ServeConfig) -> Result<(), Error> {
    for listener in &config.proxy_protocol {
        let (off, flag) = match listener {
            ProxyListener::Mqtts => (config.mqtts_addr.is_none(), "--mqtts-addr"),
            ProxyListener::Https => (config.https_addr.is_none(), "--https-addr"),
            ProxyListener::Mqtt | ProxyListener::Http => (false, ""),
        };
        if off {
            return Err(Error::ProxyProtocolListenerOff {
                listener: name(*listener),
                flag,
            });
        }
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
    let setting = ProxyProtocol::new(name(listener), &config.proxy_protocol_from);
    let refused = setting.refused();
    let label = match listener {
        ProxyListener::Mqtt => Listener::mqtt,
        ProxyListener::Mqtts => Listener::mqtts,
        ProxyListener::Http => Listener::http,
        ProxyListener::Https => Listener::https,
    };
    metrics.on_scrape(move |m| {
        m.proxy_headers_refused(label, refused.load(std::sync::atomic::Ordering::Relaxed));
    });
    Some(setting)
}

fn name(listener: ProxyListener) -> &'static str {
    match listener {
        ProxyListener::Mqtt => "mqtt",
        ProxyListener::Mqtts => "mqtts",
        ProxyListener::Http => "http",
        ProxyListener::Https => "https",
    }
}
