//! Many nodes as one service (decision 014). Live routing between nodes over core NATS:
//! each node subscribes to the subjects of its sessions' filters and announces them in a
//! JetStream key-value bucket, which every node watches so that it sends a publish to NATS
//! only when another node wants it. Publishes travel as frames (`frame`) on subjects made
//! from their topics (`subject`), and each arrives once however many overlapping
//! subscriptions it matches (`seen`). Client ids are claimed in Postgres, and the previous
//! holder told over NATS to let go (`claims`).

mod access;
mod adoption;
mod bucket;
mod budget;
mod claims;
mod disconnect;
mod frame;
mod handle;
mod inbox;
mod keys;
mod link;
mod local;
mod loops;
mod nodes;
mod remote;
mod seen;
mod sessions;
mod status;
mod subject;

pub use access::{NatsAccess, url_has_credentials};
pub use adoption::Adopted;
pub use budget::Budget;
pub use claims::{ClaimError, TakeOver};
pub use disconnect::DisconnectError;
pub use frame::{
    FrameError, Outgoing, Routed, Stamp, VERSION as FRAME_VERSION, decode as decode_frame,
    encode as encode_frame,
};
pub use handle::{Cluster, ClusterConfig, ClusterStats, Heard};
pub use inbox::Events;
pub use keys::{KeyFile, check as check_key_file};
pub use nodes::{BEAT, Liveness};
pub use sessions::{
    HeldSession, Holder, LetGoHeld, Queued, Restored, SessionError, SessionRow, StoredSubscription,
    StoredWill, WrittenBack,
};
pub use status::{NodeStatus, Status, StatusError, read as read_status};
pub use subject::{filter_subjects, queue_group, topic_subject};

/// Why a node could not join the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach NATS at {url}: {cause}. A node started with --cluster-url must reach \
         NATS: without it, it could not route messages between nodes or take client ids \
         over, and would serve as an island"
    )]
    Unreachable { url: String, cause: String },
    #[error(
        "NATS at {url} carries messages of at most {server} bytes, and --max-payload-bytes \
         {payload} needs {needed} with room for a message's topic and properties: raise \
         max_payload in nats-server's configuration, or lower --max-payload-bytes"
    )]
    PayloadTooLarge {
        url: String,
        server: usize,
        payload: usize,
        needed: usize,
    },
    #[error("JetStream at {url} does not answer ({cause}): start nats-server with -js")]
    JetStream { url: String, cause: String },
    #[error("--cluster-prefix {0:?} must be letters, digits, '_' and '-'")]
    Prefix(String),
    #[error("--cluster-jetstream-domain {0:?} must be letters, digits, '_' and '-'")]
    Domain(String),
    #[error("{flag} {}: {cause}", path.display())]
    KeyFile {
        flag: &'static str,
        path: std::path::PathBuf,
        cause: String,
    },
    #[error("cannot open the cluster's connections to the database: {0}")]
    Database(String),
}
