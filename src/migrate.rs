//! Applying migrations, one caller at a time across threads and processes, without taking the
//! application down.
//!
//! # Lock retries (PostgreSQL)
//!
//! A migration that alters a table needs a strong lock on it. Waiting for that lock behind a
//! long transaction is what takes applications down: every later query of the table queues
//! behind the waiting `ALTER TABLE`, the pool runs dry, every request times out. So each
//! migration runs with a short `lock_timeout` ([`MIGRATION_LOCK_TIMEOUT`]): when it fires, the
//! migration's transaction is rolled back (the queue behind it drains at once), and it is tried
//! again after a backoff (from [`MIGRATION_RETRY_BACKOFF`], doubling, at most
//! [`MIGRATION_MAX_BACKOFF`]), up to [`MIGRATION_LOCK_ATTEMPTS`] times — GitLab's
//! `with_lock_retries`. Other sessions then wait at most `MIGRATION_LOCK_TIMEOUT` behind a
//! migration. After the last attempt the run stops with [`Error::MigrationLockTimeout`] naming
//! the migration; the migrations applied before it stay applied.
//!
//! While migrations run, `statement_timeout` is lifted on their connection (a migration may
//! rewrite a large table), and so is `lock_timeout` while waiting for another process's
//! migrations to finish (the advisory lock); both are put back afterwards.

use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::migration::Migration;
use diesel::sql_types::Text;
use diesel::{PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// The PostgreSQL migrations (`migrations/postgres`), compiled into the crate.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The SQLite migrations (`migrations/sqlite`), compiled into the crate.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// `lock_timeout` of each attempt of a PostgreSQL migration: 200 ms, the longest other sessions
/// queue behind a migration waiting for a lock.
pub const MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// Attempts of one migration whose `lock_timeout` fires before the run gives up: 10.
pub const MIGRATION_LOCK_ATTEMPTS: u32 = 10;
/// Pause after the first failed attempt: 100 ms, doubled after each further one.
pub const MIGRATION_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two attempts: 2 s (all ten attempts take about 13 s at most).
pub const MIGRATION_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Key of the PostgreSQL advisory lock held while migrations run, so that two processes starting
/// at once do not both apply them.
const MIGRATION_LOCK_KEY: i64 = 0x7573_6572_6261_7365; // "userbase"

/// PostgreSQL's message when `lock_timeout` fires.
const LOCK_TIMEOUT_MESSAGE: &str = "canceling statement due to lock timeout";

/// Applies the embedded migrations of `conn`'s backend that are not applied yet; returns their
/// versions.
pub(crate) fn run(conn: &mut AnyConnection) -> Result<Vec<String>> {
    let source = match conn {
        AnyConnection::Pg(_) => POSTGRES_MIGRATIONS,
        AnyConnection::Sqlite(_) => SQLITE_MIGRATIONS,
    };
    run_migrations(conn, source)
}

/// Applies the migrations of `source` that are not applied yet on `conn`, the way
/// [`Database::run_pending_migrations`](crate::Database::run_pending_migrations) applies the
/// crate's own: one caller at a time (a PostgreSQL advisory lock; an exclusive SQLite
/// transaction), and on PostgreSQL each migration with a short `lock_timeout`, retried with
/// backoff (see the [module docs](self)). For an application's own migrations next to the
/// crate's; returns the versions applied.
///
/// # Errors
///
/// [`Error::MigrationLockTimeout`] naming the migration whose locks stayed taken through every
/// attempt; [`Error::Migration`] naming the migration that failed otherwise (it is rolled back;
/// on SQLite the whole run is); [`Error::Query`] when the advisory lock or a setting cannot be
/// taken.
pub fn run_migrations(conn: &mut AnyConnection, source: EmbeddedMigrations) -> Result<Vec<String>> {
    match conn {
        AnyConnection::Pg(pg) => run_postgres(pg, source),
        AnyConnection::Sqlite(sqlite) => run_sqlite(sqlite, source),
    }
}

/// A `current_setting(…) AS setting` row.
#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    setting: String,
}

fn current_setting(pg: &mut PgConnection, name: &str) -> Result<String> {
    Ok(diesel::sql_query("SELECT current_setting($1) AS setting")
        .bind::<Text, _>(name)
        .get_result::<Setting>(pg)?
        .setting)
}

fn set_setting(pg: &mut PgConnection, name: &str, value: &str) -> Result<()> {
    diesel::sql_query("SELECT set_config($1, $2, false) AS setting")
        .bind::<Text, _>(name)
        .bind::<Text, _>(value)
        .get_result::<Setting>(pg)?;
    Ok(())
}

/// Under the advisory lock, with `lock_timeout` short and `statement_timeout` lifted; both put
/// back afterwards, whatever the outcome.
fn run_postgres(pg: &mut PgConnection, source: EmbeddedMigrations) -> Result<Vec<String>> {
    let saved_lock = current_setting(pg, "lock_timeout")?;
    let saved_statement = current_setting(pg, "statement_timeout")?;
    // Waiting for another process's migrations is not bounded by the pool's deadlines.
    let outcome = set_setting(pg, "statement_timeout", "0")
        .and_then(|()| set_setting(pg, "lock_timeout", "0"))
        .and_then(|()| {
            pg.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
            let applied = set_setting(
                pg,
                "lock_timeout",
                &MIGRATION_LOCK_TIMEOUT.as_millis().to_string(),
            )
            .and_then(|()| apply_with_lock_retries(pg, source));
            let unlocked =
                pg.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
            let applied = applied?;
            unlocked?;
            Ok(applied)
        });
    let restored = set_setting(pg, "lock_timeout", &saved_lock)
        .and_then(|()| set_setting(pg, "statement_timeout", &saved_statement));
    let applied = outcome?;
    restored?;
    Ok(applied)
}

/// Whether a migration error (or one of its causes) is PostgreSQL's `lock_timeout` firing.
fn is_lock_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(diesel::result::Error::DatabaseError(_, info)) =
            e.downcast_ref::<diesel::result::Error>()
        {
            if info.message() == LOCK_TIMEOUT_MESSAGE {
                return true;
            }
        }
        if e.to_string().contains(LOCK_TIMEOUT_MESSAGE) {
            return true;
        }
        current = e.source();
    }
    false
}

/// The pause after failed attempt `attempt` (1-based).
fn backoff(attempt: u32) -> Duration {
    let doubled = MIGRATION_RETRY_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    doubled.min(MIGRATION_MAX_BACKOFF)
}

fn apply_with_lock_retries(
    pg: &mut PgConnection,
    source: EmbeddedMigrations,
) -> Result<Vec<String>> {
    let pending: Vec<Box<dyn Migration<diesel::pg::Pg>>> = pg
        .pending_migrations(source)
        .map_err(|e| Error::migration(None, e))?;
    let mut applied = Vec::with_capacity(pending.len());
    for migration in &pending {
        let name = migration.name().to_string();
        let mut attempt = 1;
        loop {
            match pg.run_migration(migration.as_ref()) {
                Ok(version) => {
                    applied.push(version.to_string());
                    break;
                }
                Err(error) if is_lock_timeout(error.as_ref()) => {
                    if attempt >= MIGRATION_LOCK_ATTEMPTS {
                        return Err(Error::MigrationLockTimeout {
                            migration: name,
                            attempts: attempt,
                            lock_timeout: MIGRATION_LOCK_TIMEOUT,
                        });
                    }
                    let pause = backoff(attempt);
                    tracing::warn!(
                        target: "userbase::migrate",
                        migration = %name,
                        attempt,
                        "lock_timeout fired: another transaction holds a lock this migration \
                         needs; trying again in {pause:?}"
                    );
                    std::thread::sleep(pause);
                    attempt += 1;
                }
                Err(error) => return Err(Error::migration(Some(name), error)),
            }
        }
    }
    Ok(applied)
}

/// SQLite has no advisory lock: the check of what is applied and the migrations run in one
/// `BEGIN EXCLUSIVE` transaction, so a second caller (another connection, another process) waits
/// for the lock (`busy_timeout`), then finds everything applied. Each migration is a savepoint
/// inside it; a failure rolls all of them back.
fn run_sqlite(conn: &mut SqliteConnection, source: EmbeddedMigrations) -> Result<Vec<String>> {
    type Tm = AnsiTransactionManager;
    Tm::begin_transaction_sql(conn, "BEGIN EXCLUSIVE")?;
    let applied = apply_sqlite(conn, source);
    match applied {
        Ok(versions) => {
            <Tm as TransactionManager<SqliteConnection>>::commit_transaction(conn)?;
            Ok(versions)
        }
        Err(error) => {
            let _ = <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(conn);
            Err(error)
        }
    }
}

fn apply_sqlite(conn: &mut SqliteConnection, source: EmbeddedMigrations) -> Result<Vec<String>> {
    let pending: Vec<Box<dyn Migration<diesel::sqlite::Sqlite>>> = conn
        .pending_migrations(source)
        .map_err(|e| Error::migration(None, e))?;
    pending
        .iter()
        .map(|migration| {
            conn.run_migration(migration.as_ref())
                .map(|version| version.to_string())
                .map_err(|e| Error::migration(Some(migration.name().to_string()), e))
        })
        .collect()
}
