//! Which MQTT version a connection speaks, as its CONNECT settled it: what the codec, the
//! checks in `validate` and the broker's answers depend on.

/// The protocol a client speaks; MQTT 3.1 clients are served as 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V5,
}
