//! Where a command's messages are: a running service ([`Service`]) or its database
//! ([`Database`]), chosen by `--endpoint` or `--database-url`; and what both can do for an
//! import (which versions are there, store these).

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt, stream};

use super::Error;
use super::args::ConnectionArgs;
use super::credentials;
use super::database::Database;
use super::service::{Auth, Service};
use crate::store::{Clock, RetainedMessage};
use crate::topic::{FilterSpec, TopicFilter, TopicName};

/// Requests in flight at once against a service (reads and publishes).
pub const CONCURRENCY: usize = 16;

pub enum Connection {
    Service(Service),
    Database(Database),
}

impl Connection {
    pub async fn open(args: &ConnectionArgs) -> Result<Self, Error> {
        match (&args.endpoint, &args.database_url) {
            (Some(endpoint), None) => {
                let auth = if let Some(token) = &args.token {
                    Auth::Bearer(token.clone())
                } else if args.sigv4 {
                    sigv4(args.region.as_deref())?
                } else {
                    Auth::Anonymous
                };
                Ok(Self::Service(Service::new(endpoint, auth)?))
            }
            (None, Some(url)) => {
                if args.sigv4 || args.token.is_some() {
                    return Err(Error::Usage(
                        "--token and --sigv4 go with --endpoint, not --database-url".into(),
                    ));
                }
                Ok(Self::Database(
                    Database::open(url, args.store_timeout).await?,
                ))
            }
            _ => Err(Error::Usage(
                "give exactly one of --endpoint and --database-url".into(),
            )),
        }
    }

    /// The last-modified time of each of `topics` that holds a message now.
    pub async fn versions(
        &self,
        topics: &[TopicName],
        now_ms: i64,
    ) -> Result<HashMap<TopicName, i64>, Error> {
        match self {
            Self::Database(db) => db.versions(topics, now_ms).await,
            Self::Service(service) => {
                stream::iter(topics)
                    .map(|topic| async move {
                        let found = service.get(topic.as_str()).await?;
                        Ok::<_, Error>(found.map(|f| (topic.clone(), f.last_modified_time())))
                    })
                    .buffer_unordered(CONCURRENCY)
                    .try_filter_map(|found| async move { Ok(found) })
                    .try_collect()
                    .await
            }
        }
    }

    /// Stores `messages`: in one transaction with their times (database), or as retained
    /// publishes that the service stamps with its own time (HTTP).
    pub async fn put(&self, messages: Vec<RetainedMessage>, now_ms: i64) -> Result<(), Error> {
        match self {
            Self::Database(db) => db.put(messages, now_ms).await,
            Self::Service(service) => {
                stream::iter(&messages)
                    .map(|m| service.publish(m, now_ms))
                    .buffer_unordered(CONCURRENCY)
                    .try_collect::<()>()
                    .await
            }
        }
    }
}

/// SigV4 with the usual AWS credentials and region.
pub fn sigv4(region: Option<&str>) -> Result<Auth, Error> {
    Ok(Auth::SigV4 {
        credentials: credentials::resolve()?,
        region: credentials::region(region)?,
    })
}

/// A `--topic-filter`, as subscriptions take it (no `$share/`).
pub fn topic_filter(raw: &str) -> Result<TopicFilter, Error> {
    match FilterSpec::parse(raw) {
        Ok(FilterSpec::Plain(filter)) => Ok(filter),
        Ok(FilterSpec::Shared { .. }) => Err(Error::Usage(
            "--topic-filter must be a plain topic filter, not a shared subscription ($share/...)"
                .into(),
        )),
        Err(e) => Err(Error::Usage(format!(
            "--topic-filter is not a valid MQTT topic filter: {e}"
        ))),
    }
}

/// The commands' clock: the machine's, as the server's.
pub fn now_ms() -> i64 {
    Clock::System.now_ms()
}
