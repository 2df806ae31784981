//! Who gets in: a CONNECT's credentials and client id checked against the principals, and the
//! publish permission a PUBLISH or a Will needs. Whom a client's retained publishes are charged
//! to is `store::Owner::of`. The CONNACK that refuses a client is sent by `accept`.

use std::net::IpAddr;
use std::sync::Arc;

use super::handle::Broker;
use super::known_credentials::Known;
use super::password_checks::{PasswordChecks, REFUSAL_DELAY};
use crate::auth::{Action, AuthError, Credential, Principal};
use crate::metrics::AuthFailure;
use crate::mqtt::{self, ConnectAckReason};
use crate::tls::CertFingerprint;
use crate::topic::ClientKey;
use crate::topic::TopicName;

/// Who the transport under MQTT proved the client to be, before its CONNECT arrived.
#[derive(Clone)]
pub enum TransportIdentity {
    /// The fingerprint of the TLS client certificate the peer proved it holds (MQTT over TLS,
    /// or WSS): worth the principal whose `client_cert_sha256` it is, if any.
    ClientCert(CertFingerprint),
    /// A principal whose SigV4 signature the WebSocket upgrade request carried in its query (a
    /// presigned `/mqtt` URL), already verified by the HTTP layer, with the access key that
    /// signed it.
    Signed(Arc<Principal>, Credential),
}

impl TransportIdentity {
    /// The credential that let the connection in and that a reload must find still the
    /// principal's: the signing access key. A client certificate needs none, being among the
    /// principal's MQTT credentials ([`Principal::same_mqtt_credentials`]).
    pub(super) fn credential(&self) -> Option<Credential> {
        match self {
            Self::Signed(_, key) => Some(key.clone()),
            Self::ClientCert(_) => None,
        }
    }
}

/// Checks CONNECT's credentials when principals are configured ([MQTT-3.1.4-2]: the server
/// may refuse any client it cannot authenticate), and that the principal may connect with this
/// client id. Password hashes are slow on purpose, so they are checked off the async threads.
///
/// An identity proven by the transport (a mapped TLS client certificate, a presigned WebSocket
/// URL) stands in for the credentials; credentials sent with it must name the same principal.
pub(super) async fn authenticate(
    broker: &Broker,
    connect: &mqtt::Connect,
    client: &ClientKey,
    identity: Option<TransportIdentity>,
    source: Option<IpAddr>,
) -> Result<Option<Arc<Principal>>, ConnectAckReason> {
    let auth = broker.auth().clone();
    if !auth.is_enabled() {
        return Ok(None);
    }
    let by_transport = identity.and_then(|identity| match identity {
        TransportIdentity::ClientCert(digest) => auth.verify_client_cert(&digest).ok(),
        TransportIdentity::Signed(principal, _) => Some(principal),
    });
    if let Some(principal) = &by_transport
        && connect.username.is_none()
        && connect.password.is_none()
    {
        return authorize_connect(principal.clone(), client);
    }
    let (Some(username), Some(password)) = (&connect.username, &connect.password) else {
        // No password, nothing to hash. 3.1.1: 0x05 not authorized; 5: 0x87.
        return Err(ConnectAckReason::NotAuthorized);
    };
    let principal = check_password(broker, username.to_string(), password.clone(), source).await?;
    if by_transport.is_some_and(|by_transport| !Arc::ptr_eq(&by_transport, &principal)) {
        return Err(ConnectAckReason::NotAuthorized);
    }
    authorize_connect(principal, client)
}

/// Verifies a user name and password within the bounds of `password_checks`: a
/// credential checked before is answered as it was; otherwise a slot among the few checks that
/// may run at once, and a source that has not failed too often. A refusal for credentials comes
/// after a delay held on a timer.
async fn check_password(
    broker: &Broker,
    username: String,
    password: bytes::Bytes,
    source: Option<IpAddr>,
) -> Result<Arc<Principal>, ConnectAckReason> {
    let checks = &broker.inner.password_checks;
    let refused = |reason| async move {
        if reason == ConnectAckReason::BadUserNameOrPassword {
            broker.metrics().auth_failure(AuthFailure::mqtt_password);
        }
        tokio::time::sleep(REFUSAL_DELAY).await;
        Err(reason)
    };
    let digest = checks.digest(&username, &password);
    let recalled = |checks: &PasswordChecks| match checks.recall(digest) {
        Some(Known::Verified(principal)) => Some(Ok(principal)),
        // 3.1.1: 0x04 bad user name or password; 5: 0x86.
        Some(Known::Refused) => Some(Err(ConnectAckReason::BadUserNameOrPassword)),
        None => None,
    };
    // Before the budget: known good devices get in from a source that used it up.
    match recalled(checks) {
        Some(Ok(principal)) => return Ok(principal),
        Some(Err(reason)) => return refused(reason).await,
        None => {}
    }
    // 3.1.1 has no such code: 0x03 Server unavailable.
    if checks.over_budget(source) {
        return refused(ConnectAckReason::ConnectionRateExceeded).await;
    }
    // [MQTT-3.2.2-6] 0x89 Server busy (3.1.1: 0x03) when no slot comes free in time.
    let slot = checks.slot().await.ok_or(ConnectAckReason::ServerBusy)?;
    // Again: the same credential may have been checked while this CONNECT waited, and the
    // source may have used up its budget.
    match recalled(checks) {
        Some(Ok(principal)) => return Ok(principal),
        Some(Err(reason)) => {
            // Not through the refusal's delay: a slot held by each CONNECT answered from
            // memory would make a wave of one wrong password hold up every other check.
            drop(slot);
            return refused(reason).await;
        }
        None => {}
    }
    if checks.over_budget(source) {
        drop(slot);
        return refused(ConnectAckReason::ConnectionRateExceeded).await;
    }
    checks.checking();
    let auth = broker.auth().clone();
    let verified =
        tokio::task::spawn_blocking(move || auth.verify_mqtt(Some(&username), Some(&password)))
            .await;
    drop(slot);
    match verified {
        Ok(Ok(principal)) => {
            checks.remember(digest, Some(principal.clone()));
            Ok(principal)
        }
        Ok(Err(AuthError::MissingCredentials)) => Err(ConnectAckReason::NotAuthorized),
        Ok(Err(_)) => {
            checks.remember(digest, None);
            checks.failed(source);
            refused(ConnectAckReason::BadUserNameOrPassword).await
        }
        Err(_) => Err(ConnectAckReason::ServerUnavailable),
    }
}

/// Whether the authenticated `principal` may connect with this client id.
fn authorize_connect(
    principal: Arc<Principal>,
    client: &ClientKey,
) -> Result<Option<Arc<Principal>>, ConnectAckReason> {
    if !principal.allows(Action::Connect, client, Some(client)) {
        return Err(ConnectAckReason::NotAuthorized);
    }
    Ok(Some(principal))
}

/// Whether `principal` may publish to `topic` (and retain there, when `retain`). Nobody may
/// publish under `$SYS`, whatever the policy: those topics are the broker's own status.
pub(super) fn may_publish(
    principal: Option<&Principal>,
    topic: &TopicName,
    retain: bool,
    client: &str,
) -> bool {
    !topic.is_broker_status()
        && principal.is_none_or(|p| {
            let topic = topic.as_str();
            p.allows(Action::Publish, topic, Some(client))
                && (!retain || p.allows(Action::RetainPublish, topic, Some(client)))
        })
}
