//! Which nodes are alive, by heartbeats in Postgres (`cluster_nodes`), written with the
//! database's clock at the pace of [`Liveness`]. A node silent for its own dead time
//! (`--cluster-dead-after`, recorded in its row, so that nodes need not agree on one) is
//! dead: the first survivor to see it removes its client-id claims and its announced
//! interest, so that the others stop sending it messages. Only a node that has itself written
//! its heartbeat all along for that long judges: after an outage of the database every
//! heartbeat is old, and the first node back would otherwise bury all the others. A node that finds its own row gone was taken for
//! dead (a partition, a pause) and gives up what the others adopted. The count of live nodes
//! divides per-principal rates. Each
//! heartbeat records the version of the frames the node sends (`frame::VERSION`): a node of
//! another release that sends another version drops this node's live messages and has its own
//! dropped here, which the survivors say, for an operator in the middle of a rolling upgrade.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::adoption::{self, Adopted, Adopting, Ledger};
use super::frame;
use super::sessions::{SessionError, Sessions};
use tokio_util::sync::CancellationToken;

/// The pace of the cluster's retries that wait for the database or NATS to come back, and
/// the heartbeats' at the default dead time.
pub const BEAT: Duration = Duration::from_secs(2);

/// How long a node may be silent before the others take it for dead (`--cluster-dead-after`),
/// and what follows from it for its own heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    dead_after: Duration,
}

impl Liveness {
    /// The dead time of releases that did not record one, and the default.
    pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(10);
    /// Below it, a pause of the node's runtime or a slow commit would bury it.
    pub const MIN_DEAD_AFTER: Duration = Duration::from_secs(1);
    /// Above it (1 h), a dead node's clients would wait for their sessions past reason.
    pub const MAX_DEAD_AFTER: Duration = Duration::from_secs(3600);

    /// `dead_after` within [`Self::MIN_DEAD_AFTER`]..=[`Self::MAX_DEAD_AFTER`], or `None`.
    pub fn new(dead_after: Duration) -> Option<Self> {
        (Self::MIN_DEAD_AFTER..=Self::MAX_DEAD_AFTER)
            .contains(&dead_after)
            .then_some(Self { dead_after })
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// How often the node writes its heartbeat (and looks for dead nodes): five times within
    /// its dead time, and at least every 2 s ([`BEAT`]), so that releases before dead times
    /// were recorded, which take any node silent for 10 s for dead, never bury a node with a
    /// longer one for the length of its beat.
    pub fn beat(&self) -> Duration {
        (self.dead_after / 5).min(BEAT)
    }

    /// Whether this node was itself silent before a heartbeat whose previous one was `gap`
    /// old (by the database's clock): longer than its beat and a whole pass allow. The node,
    /// or the node and the database, were paused (a stopped process, a suspended host, a VM
    /// migrated), and every other node's heartbeat aged as much; so its own time heard starts
    /// again there.
    pub fn silent_for(&self, gap: Duration) -> bool {
        gap > self.beat() + self.pass_span()
    }

    /// How long one pass may wait for the database: the store timeout, but never more than
    /// half the dead time, so that a pass that waits it out and the beat after it still leave
    /// the node heard in time.
    pub fn pass_limit(&self, store_timeout: Duration) -> Duration {
        store_timeout.min(self.dead_after / 2)
    }

    /// How long a pass goes on starting adoptions before the next beat: a tenth of the dead
    /// time, at most 1 s.
    pub fn adopt_budget(&self) -> Duration {
        (self.dead_after / 10).min(Duration::from_secs(1))
    }

    /// How long a whole pass may take, adoptions and their settling included (each given up
    /// at its end, to be taken up again at the next pass): three fifths of the dead time, so
    /// that with the beat after it the node is heard again within 0.8 of it, however slow the
    /// database.
    pub fn pass_span(&self) -> Duration {
        self.dead_after * 3 / 5
    }

    /// As `cluster_nodes.dead_after_ms` records it; the default stands for rows without one.
    pub(super) fn dead_after_ms(&self) -> i32 {
        // At most an hour: fits.
        i32::try_from(self.dead_after.as_millis()).unwrap_or(i32::MAX)
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            dead_after: Self::DEFAULT_DEAD_AFTER,
        }
    }
}

/// Writes this node's heartbeat, once, with the version of the frames it sends and its dead
/// time, and returns how old its previous heartbeat was then, by the database's clock. Sets
/// `missing` (and returns `None`) if its row was not there: the node is new, or the others
/// took it for dead and removed it. Set before the row is written again, so that a call that
/// fails after that still tells.
pub async fn beat(
    pool: &PgPool,
    node: &str,
    liveness: Liveness,
    missing: &mut bool,
) -> Result<Option<Duration>, sqlx::Error> {
    let version = i16::from(frame::VERSION);
    let dead_after = liveness.dead_after_ms();
    // A burial deleting the row at the same time makes the lock wait for it, then find
    // nothing.
    let gap_ms: Option<i64> = sqlx::query_scalar(
        "WITH before AS (SELECT heartbeat_at FROM cluster_nodes WHERE node = $1 FOR UPDATE) \
         UPDATE cluster_nodes n \
         SET heartbeat_at = now(), frame_version = $2, dead_after_ms = $3 \
         FROM before WHERE n.node = $1 \
         RETURNING (extract(epoch FROM now() - before.heartbeat_at) * 1000)::int8",
    )
    .bind(node)
    .bind(version)
    .bind(dead_after)
    .fetch_optional(pool)
    .await?;
    if let Some(ms) = gap_ms {
        return Ok(Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))));
    }
    *missing = true;
    sqlx::query(
        "INSERT INTO cluster_nodes (node, frame_version, dead_after_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (node) DO UPDATE \
         SET heartbeat_at = now(), frame_version = $2, dead_after_ms = $3",
    )
    .bind(node)
    .bind(version)
    .bind(dead_after)
    .execute(pool)
    .await?;
    Ok(None)
}

/// What a pass of [`bury`] found.
pub struct Census {
    /// Nodes found dead and removed by this pass.
    pub dead: Vec<String>,
    /// Live nodes, this one included.
    pub live: Vec<String>,
    /// Live nodes whose heartbeat records a frame version other than this node's, with it.
    /// Nodes of releases that do not record one are not among them.
    pub other_frames: Vec<(String, i16)>,
    /// Nodes gone (dead, or stopped) whose sessions are left to adopt.
    pub orphans: Vec<String>,
    /// This node's own row was gone: the others took it for dead, removed its claims and
    /// interest, and adopted its sessions.
    pub taken_for_dead: bool,
}

/// How long this node has been heard, as a judge of the others' silence.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    /// Since when every pass has written its heartbeat in time.
    pub for_: Duration,
    /// How long before this pass's heartbeat its previous one was written (by the database's
    /// clock). Nothing says this node was running in between: the others may have been
    /// paused with it, so only a node's silence before that heartbeat counts.
    pub gap: Duration,
}

/// Removes the nodes silent for their dead time, with their claims, if this node has been
/// heard for at least as long (`heard`: it could have been silent itself otherwise, and
/// so could they), and finds the nodes gone (dead, or stopped) whose sessions are left to
/// adopt ([`adoption::adopt`]).
pub async fn bury(
    pool: &PgPool,
    sessions: &Sessions,
    heard: Option<Heard>,
) -> Result<Census, SessionError> {
    let mut tx = pool.begin().await?;
    let dead: Vec<String> = if let Some(heard) = heard {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        // A row without a dead time is a release's from before they were recorded ($2).
        sqlx::query_scalar(
            "DELETE FROM cluster_nodes \
             WHERE heartbeat_at < now() \
                   - (coalesce(dead_after_ms, $2) + $3) * interval '1 millisecond' \
               AND coalesce(dead_after_ms, $2) <= $1 \
             RETURNING node",
        )
        .bind(ms(heard.for_))
        .bind(Liveness::default().dead_after_ms())
        .bind(ms(heard.gap))
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    if !dead.is_empty() {
        sqlx::query("DELETE FROM cluster_clients WHERE node = ANY($1)")
            .bind(&dead)
            .execute(&mut *tx)
            .await?;
    }
    let live: Vec<String> = sqlx::query_scalar("SELECT node FROM cluster_nodes")
        .fetch_all(&mut *tx)
        .await?;
    let other_frames: Vec<(String, i16)> = sqlx::query_as(
        "SELECT node, frame_version FROM cluster_nodes \
         WHERE frame_version <> $1 ORDER BY node",
    )
    .bind(i16::from(frame::VERSION))
    .fetch_all(&mut *tx)
    .await?;
    let orphans = sessions.orphan_nodes(&mut tx).await?;
    tx.commit().await?;
    Ok(Census {
        dead,
        live,
        other_frames,
        orphans,
        taken_for_dead: false,
    })
}

/// Leaves the service: this node's row and claims go at once, not after its dead time.
pub async fn leave(pool: &PgPool, node: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM cluster_clients WHERE node = $1")
        .bind(node)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM cluster_nodes WHERE node = $1")
        .bind(node)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// What the heartbeats last said of the service; [`run`] keeps it current.
pub struct Headcount {
    live: AtomicUsize,
    other_frames: AtomicUsize,
    /// Adoptions in doubt after the last pass.
    in_doubt: AtomicUsize,
    /// Passes that failed or did not finish within the database timeout.
    failures: AtomicU64,
    /// Adoptions, and questions about those in doubt, that failed or went unanswered.
    adoption_failures: AtomicU64,
    /// Passes that found this node's row gone.
    taken_for_dead: AtomicU64,
    /// Passes that wrote this node's heartbeat (and so would have found its row gone).
    written: AtomicU64,
}

impl Default for Headcount {
    fn default() -> Self {
        Self {
            live: AtomicUsize::new(1),
            other_frames: AtomicUsize::new(0),
            in_doubt: AtomicUsize::new(0),
            failures: AtomicU64::new(0),
            adoption_failures: AtomicU64::new(0),
            taken_for_dead: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }
}

impl Headcount {
    /// Live nodes, this one included (at least 1).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// Adoptions whose commit went unanswered, as the last heartbeat pass left them.
    pub fn in_doubt(&self) -> usize {
        self.in_doubt.load(Ordering::Relaxed)
    }

    /// Live nodes that send another frame version than this node's (see [`Census`]).
    pub fn other_frames(&self) -> usize {
        self.other_frames.load(Ordering::Relaxed)
    }

    /// Heartbeats not written: past its dead time of them, the others take this node for
    /// dead while it still serves.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Adoptions, and questions about those in doubt, that failed or went unanswered.
    pub fn adoption_failures(&self) -> u64 {
        self.adoption_failures.load(Ordering::Relaxed)
    }

    /// Times the others took this node for dead, as its heartbeats found out.
    pub fn taken_for_dead(&self) -> u64 {
        self.taken_for_dead.load(Ordering::Acquire)
    }

    /// Heartbeat passes that succeeded: each one after a moment tells whether the others took
    /// this node for dead before it ([`Headcount::taken_for_dead`] is counted first).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }
}

/// A node's heartbeats: where they go, whose they are and their pace.
pub struct Heartbeats {
    pub pool: PgPool,
    /// Where the sessions they find orphaned are adopted: a connection of its own.
    pub adoptions: PgPool,
    pub node: Arc<str>,
    pub liveness: Liveness,
    /// Whether it still adopts: not once the node stops.
    pub adopting: Arc<Adopting>,
}

/// Beats until `shutdown`, keeping `headcount` current, handing each pass's census to
/// `counted` (the dead nodes, the live ones) and the sessions adopted to `adopted`.
pub async fn run(
    heartbeats: Heartbeats,
    headcount: Arc<Headcount>,
    sessions: Arc<Sessions>,
    mut counted: impl FnMut(&Census) + Send,
    adopted: impl Fn(Vec<Adopted>) + Send,
    shutdown: CancellationToken,
) {
    let Heartbeats {
        pool,
        adoptions,
        node,
        liveness,
        adopting,
    } = heartbeats;
    let mut failing = false;
    // Since when every pass has written this node's heartbeat in time (`None`: the last one
    // failed). Another node's silence means death only if this node could be heard all that
    // time.
    let mut heard_since: Option<Instant> = None;
    // This node's row was found gone by a pass, and no pass has finished since to say so.
    let mut missing = false;
    // A heartbeat has been written by this loop (the first was written at start).
    let mut written = false;
    // Nodes of another frame version already reported, so each is reported once.
    let mut reported = std::collections::HashSet::new();
    let mut ledger = Ledger::default();
    loop {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + liveness.pass_span();
        // Bounded like any database call: a pass that hangs would leave this node silent
        // without its knowing, and the others would bury it.
        let pass = async {
            let gap = beat(&pool, &node, liveness, &mut missing).await?;
            let first = !std::mem::replace(&mut written, true);
            if first {
                // Gone before this loop wrote a heartbeat: buried while it started (NATS
                // took longer than its dead time), when it held nothing to adopt.
                missing = false;
            }
            let silent = gap.is_none_or(|gap| liveness.silent_for(gap));
            if silent
                && !first
                && let Some(gap) = gap
            {
                tracing::warn!(
                    previous_heartbeat_age = ?gap,
                    "this node's previous heartbeat is older than its beat and a pass allow (the \
                     node, or the node and its database, were paused, or the database was slow to \
                     take it): it takes no other node for dead until it has been heard for that \
                     node's dead time again"
                );
            }
            let heard = match (heard_since, gap) {
                (Some(since), Some(gap)) if !silent => Some(Heard {
                    for_: since.elapsed(),
                    gap,
                }),
                _ => None,
            };
            let census = bury(&pool, &sessions, heard).await?;
            Ok::<_, SessionError>((census, silent))
        };
        let limit = liveness.pass_limit(sessions.timeout);
        let result = sessions.bounded_by(limit, pass).await;
        match result {
            Ok((mut census, silent)) => {
                census.taken_for_dead = std::mem::take(&mut missing);
                // Heard from the end of this pass: its heartbeat was written by then.
                if silent {
                    heard_since = Some(Instant::now());
                } else {
                    heard_since.get_or_insert_with(Instant::now);
                }
                if failing {
                    tracing::info!("node heartbeats written again");
                    failing = false;
                }
                if census.taken_for_dead {
                    headcount.taken_for_dead.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(
                        dead_after = ?liveness.dead_after(),
                        "the other nodes took this node for dead (its heartbeat was not written \
                         for its dead time) and adopted its sessions: closing the connections \
                         and dropping the sessions that are no longer this node's"
                    );
                }
                headcount.written.fetch_add(1, Ordering::AcqRel);
                headcount.live.store(census.live.len(), Ordering::Relaxed);
                for node in &census.dead {
                    tracing::warn!(%node, "a node stopped beating; its claims and interest are removed");
                }
                counted(&census);
                headcount
                    .other_frames
                    .store(census.other_frames.len(), Ordering::Relaxed);
                // Only the nodes still live stay remembered: node ids are new at every start,
                // so the set would otherwise grow with every upgrade the node lives through.
                reported.retain(|n| census.other_frames.iter().any(|(o, _)| o == n));
                for (node, version) in census.other_frames {
                    if reported.insert(node.clone()) {
                        tracing::warn!(
                            %node,
                            frame_version = version,
                            this_node = frame::VERSION,
                            "a node of another release sends live messages in another frame version: \
                             it drops this node's and this node drops its own until both run releases \
                             of the same version (retained messages are shared through the database)"
                        );
                    }
                }
                let within = adoption::Within {
                    budget: liveness.adopt_budget(),
                    deadline,
                    adopting: &adopting,
                };
                // Not once the node stops (the guard is `None`), and not while it waits to.
                if let Some(_pass) = adopting.start().await {
                    if ledger.in_doubt() > 0 {
                        let ledger = &mut ledger;
                        adoption::settle(&adoptions, &node, &sessions, &within, ledger, &adopted)
                            .await;
                    }
                    if !census.orphans.is_empty() {
                        let orphans = &census.orphans;
                        let ledger = &mut ledger;
                        adoption::adopt(
                            &adoptions, &node, orphans, &sessions, &within, ledger, &adopted,
                        )
                        .await;
                    }
                }
                if census.orphans.is_empty() && ledger.in_doubt() == 0 {
                    ledger.idle();
                }
                headcount
                    .in_doubt
                    .store(ledger.in_doubt(), Ordering::Relaxed);
                headcount
                    .adoption_failures
                    .store(ledger.failures(), Ordering::Relaxed);
            }
            Err(e) => {
                heard_since = None;
                headcount.failures.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(error = %e, "cannot write this node's heartbeat");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(liveness.beat()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_time_sets_the_beat_and_bounds_what_a_pass_may_wait() {
        let secs = Duration::from_secs;
        let default = Liveness::default();
        assert_eq!(default.dead_after(), secs(10));
        // The defaults of the releases before the flag.
        assert_eq!(default.beat(), BEAT);
        assert_eq!(default.pass_limit(secs(5)), secs(5));
        assert_eq!(default.adopt_budget(), secs(1));

        let short = Liveness::new(secs(2)).unwrap();
        assert_eq!(short.beat(), Duration::from_millis(400));
        assert_eq!(short.pass_limit(secs(5)), secs(1));
        assert_eq!(short.adopt_budget(), Duration::from_millis(200));
        // A pass that waits out its limit, its adoptions, and the beat after it: within it.
        assert_eq!(short.pass_span(), Duration::from_millis(1_200));
        assert!(short.pass_limit(secs(30)) + short.adopt_budget() <= short.pass_span());
        let worst = short.pass_span() + short.beat();
        assert_eq!(worst, Duration::from_millis(1_600));
        assert_eq!(default.pass_span(), secs(6));

        let long = Liveness::new(secs(60)).unwrap();
        assert_eq!(long.pass_limit(secs(5)), secs(5));
        // Never slower than the releases that judge every node by 10 s.
        assert_eq!(long.beat(), BEAT);

        // A heartbeat later than a beat and a whole pass allow: the node was paused.
        assert!(!default.silent_for(secs(8)));
        assert!(default.silent_for(Duration::from_millis(8_001)));
        assert!(!short.silent_for(Duration::from_millis(1_600)));
        assert!(short.silent_for(Duration::from_millis(1_601)));
        assert!(Liveness::new(Duration::from_millis(999)).is_none());
        assert!(Liveness::new(secs(3600)).is_some());
        assert!(Liveness::new(secs(3601)).is_none());
        assert_eq!(
            Liveness::new(secs(3600)).unwrap().dead_after_ms(),
            3_600_000
        );
    }
}
