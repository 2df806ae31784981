//! Many nodes as one service (decision 014). So far: how MQTT topics and filters become NATS
//! subjects. Pure; the NATS connection, routing and the durable cluster state come with the
//! rest of issue 15.

mod subject;

pub use subject::{filter_subjects, topic_subject};
