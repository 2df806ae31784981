//! The background pass that applies expiry and retention, off the request path.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

pub(super) async fn run(
    store: Store,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match store.maintain(retention).await {
            Ok(report) if report.expired + report.idle > 0 => {
                tracing::info!(
                    expired = report.expired,
                    idle = report.idle,
                    "purged retained messages"
                );
            }
            Ok(_) => {}
            // The next pass retries; a store outage must not end the task.
            Err(e) => tracing::warn!(error = %e, "maintenance pass failed"),
        }
    }
}
