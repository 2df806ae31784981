//! Reload without restart (SIGHUP): the principals file (credentials and policies) and the TLS
//! files are read again and swapped in together, or not at all.

use std::path::PathBuf;

use super::{Error, ServeConfig, load_auth_config, load_tls};
use crate::auth::{Authenticator, ReloadError};
use crate::broker::{Broker, Reauthorized};
use crate::tls::LiveAcceptor;

/// What a reload reads again, and where it puts it.
pub(super) struct Reloader {
    config: ServeConfig,
    auth: Authenticator,
    broker: Broker,
    /// The MQTT-over-TLS and HTTPS listeners' acceptors, when they run.
    mqtts: Option<LiveAcceptor>,
    https: Option<LiveAcceptor>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The principals file read, if there is one.
    pub principals: Option<PathBuf>,
    /// The TLS certificate file read, if TLS is on.
    pub tls_cert: Option<PathBuf>,
    pub sessions: Reauthorized,
}

#[derive(Debug, thiserror::Error)]
pub enum RefusedReload {
    #[error(transparent)]
    Files(#[from] Error),
    #[error("--principals {}: {source}", path.display())]
    Principals { path: PathBuf, source: ReloadError },
}

impl Reloader {
    pub fn new(
        config: &ServeConfig,
        auth: Authenticator,
        broker: Broker,
        mqtts: Option<LiveAcceptor>,
        https: Option<LiveAcceptor>,
    ) -> Self {
        Self {
            config: config.clone(),
            auth,
            broker,
            mqtts,
            https,
        }
    }

    /// Reads every file first; a problem in any leaves everything as it was.
    pub fn reload(&self) -> Result<Reloaded, RefusedReload> {
        let principals = self.config.principals_file().map(|path| path.to_owned());
        let auth = load_auth_config(&self.config)?;
        let tls = match (&self.mqtts, &self.https) {
            (None, None) => None,
            _ => load_tls(&self.config)?,
        };
        if let (Some(config), Some(path)) = (auth, &principals) {
            self.auth
                .reload(config)
                .map_err(|source| RefusedReload::Principals {
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(tls) = &tls {
            if let Some(live) = &self.mqtts {
                live.replace(tls.mqtt.clone());
            }
            if let Some(live) = &self.https {
                live.replace(tls.https.clone());
            }
        }
        Ok(Reloaded {
            principals,
            tls_cert: tls.and(self.config.tls_cert.clone()),
            sessions: self.broker.reauthorize(),
        })
    }
}
