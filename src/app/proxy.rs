//! `--proxy-protocol`: which listeners read a PROXY protocol header first ([`crate::tcp::proxy`]),
//! and the check that each one named is on.

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
    let setting = ProxyProtocol::new(name, &config.proxy_protocol_from);
    let refused = setting.refused();
    metrics.on_scrape(move |m| {
        m.proxy_headers_refused(label, refused.load(std::sync::atomic::Ordering::Relaxed));
    });
    Some(setting)
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
