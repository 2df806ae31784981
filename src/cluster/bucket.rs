//! The interest bucket: one JetStream key-value bucket in which every node keeps one key per
//! filter its sessions subscribe to, `<node>.<digest of the filter>`, holding the filter. It
//! lives in memory with one value per key: it is rebuilt from the nodes themselves whenever
//! it is lost (a NATS restart), so it needs neither disk nor history.

use async_nats::jetstream::{self, kv};
use sha2::{Digest, Sha256};

use crate::topic::TopicFilter;

/// Opens the bucket, creating it if it does not exist (again, after a NATS restart).
///
/// The bucket's stream is made here with JetStream's key-value conventions (stream `KV_<name>`
/// on `$KV.<name>.>`, one message per subject, roll-ups allowed, deletes by marker), rather
/// than by async-nats's `create_key_value`: that reads account fields that nats-server 2.9,
/// the Debian release, does not send, and fails there.
pub async fn open(js: &jetstream::Context, prefix: &str) -> Result<kv::Store, String> {
    let bucket = format!("{prefix}-interest");
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("retaind: which node subscribes to which MQTT filter".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

/// The key for `node`'s interest in `filter`. A digest, because keys allow only a few
/// characters and filters any; the value holds the filter itself.
pub fn key(node: &str, filter: &TopicFilter) -> String {
    let digest = Sha256::digest(filter.as_str().as_bytes());
    format!("{node}.{}", hex::encode(&digest[..16]))
}

/// The node a key belongs to.
pub fn node_of(key: &str) -> Option<&str> {
    key.split_once('.').map(|(node, _)| node)
}
