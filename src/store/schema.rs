//! Which database schemas a release runs on (decision 021).
//!
//! Migrations run at start. A database that a newer release has migrated past the migrations
//! this one knows is still one it can run on when that release says so: every schema records,
//! in `schema_compatibility`, the oldest migration a release must know to run on it. A node can
//! then be rolled back, or restarted on its old release in the middle of a rolling upgrade,
//! without editing the database; and where the newer schema would be misread, the node refuses
//! to start and says which release it needs, rather than running on it.

use sqlx::migrate::Migrator;

use super::Error;

/// The newest migration applied (`_sqlx_migrations` is sqlx's own table, and a migration counts
/// once it succeeded) and the oldest release migration the schema records. Read after this
/// release's migrations ran, so the table exists; a row deleted by hand reads as NULL.
pub(super) const FOUND: &str = "SELECT (SELECT max(version) FROM _sqlx_migrations WHERE success), \
     (SELECT oldest_release_migration FROM schema_compatibility LIMIT 1)";

/// What a database's schema is to this release.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// Migrated as far as this release knows, and no further.
    Current,
    /// Migrated further by a newer release that allows this one to run on it.
    Newer { applied: i64, oldest_release: i64 },
}

/// A migrator for `migrations`, which leaves alone the migrations it does not know: whether
/// this release may run on them is [`judge`]'s to say, after they are read.
pub(super) fn lenient(mut migrations: Migrator) -> Migrator {
    migrations.set_ignore_missing(true);
    migrations
}

/// The newest migration this release knows of each database, as `--version` names them.
pub fn known_migrations() -> String {
    format!(
        "schema: Postgres migration {}, SQLite migration {}",
        newest_known(&sqlx::migrate!("migrations/postgres")),
        newest_known(&sqlx::migrate!("migrations/sqlite"))
    )
}

/// The newest migration `migrations` holds.
pub(super) fn newest_known(migrations: &Migrator) -> i64 {
    migrations.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Whether a release whose newest migration is `known` runs on a database whose newest applied
/// migration is `applied` and which records `oldest_release` (both as [`FOUND`] reads them).
pub(super) fn judge(
    known: i64,
    (applied, oldest_release): (Option<i64>, Option<i64>),
) -> Result<Standing, Error> {
    let applied = applied.unwrap_or(0);
    if applied <= known {
        return Ok(Standing::Current);
    }
    let Some(oldest_release) = oldest_release else {
        return Err(Error::config(format!(
            "the database was migrated by a newer release of retaind (up to migration \
             {applied}; this release knows migrations up to {known}) and does not say which \
             releases can run on it: start a release that knows migration {applied}"
        )));
    };
    if known < oldest_release {
        return Err(Error::config(format!(
            "the database was migrated by a newer release of retaind (up to migration \
             {applied}); releases that do not know migration {oldest_release} cannot run on it, \
             and this release knows migrations up to {known}: start a release that knows \
             migration {oldest_release} or later"
        )));
    }
    tracing::warn!(
        applied,
        known,
        oldest_release,
        "the database was migrated by a newer release of retaind; this release runs on it, as \
         that release allows"
    );
    Ok(Standing::Newer {
        applied,
        oldest_release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(known: i64, applied: i64, recorded: Option<i64>) -> Result<Standing, Error> {
        judge(known, (Some(applied), recorded))
    }

    #[test]
    fn a_schema_no_newer_than_the_release_is_current_whatever_it_records() {
        assert_eq!(judged(12, 12, Some(99)).unwrap(), Standing::Current);
        assert_eq!(judged(12, 3, None).unwrap(), Standing::Current);
        assert_eq!(judge(12, (None, None)).unwrap(), Standing::Current, "new");
    }

    #[test]
    fn a_newer_schema_runs_down_to_the_release_it_names() {
        let newer = Standing::Newer {
            applied: 14,
            oldest_release: 12,
        };
        assert_eq!(judged(12, 14, Some(12)).unwrap(), newer);
        assert!(judged(13, 14, Some(12)).is_ok());
    }

    #[test]
    fn a_newer_schema_past_the_release_is_refused_with_what_to_start() {
        let Error::Config(refusal) = judged(12, 14, Some(13)).unwrap_err() else {
            panic!("a refusal is a configuration error");
        };
        for named in [
            "newer release",
            "up to migration 14",
            "migration 13 or later",
        ] {
            assert!(refusal.contains(named), "{refusal:?} lacks {named:?}");
        }
        assert!(matches!(
            judged(12, 14, None).unwrap_err(),
            Error::Config(text) if text.contains("does not say")
        ));
    }
}
