//! Applying the embedded migrations, one caller at a time across threads and processes.

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// The PostgreSQL migrations (`migrations/postgres`), compiled into the crate.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The SQLite migrations (`migrations/sqlite`), compiled into the crate.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Key of the PostgreSQL advisory lock held while migrations run, so that two processes starting
/// at once do not both apply them.
const MIGRATION_LOCK_KEY: i64 = 0x7573_6572_6261_7365; // "userbase"

/// The harness's `error` as [`Error::Migration`], naming the migration that failed: the first
/// one still pending (the harness applies them in order and stops at the failure).
fn migration_error<DB: diesel::backend::Backend>(
    conn: &mut impl MigrationHarness<DB>,
    source: EmbeddedMigrations,
    error: Box<dyn std::error::Error + Send + Sync>,
) -> Error {
    let failed = conn
        .pending_migrations(source)
        .ok()
        .and_then(|pending| pending.first().map(|m| m.name().to_string()));
    Error::migration(failed, error)
}

/// Applies the embedded migrations of `conn`'s backend that are not applied yet; returns their
/// versions.
pub(crate) fn run(conn: &mut AnyConnection) -> Result<Vec<String>> {
    match conn {
        AnyConnection::Pg(pg) => {
            pg.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
            let applied = pg
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
                .map_err(|e| migration_error(pg, POSTGRES_MIGRATIONS, e));
            pg.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
            applied
        }
        AnyConnection::Sqlite(sqlite) => run_sqlite(sqlite),
    }
}

/// SQLite has no advisory lock: the check of what is applied and the migrations run in one
/// `BEGIN EXCLUSIVE` transaction, so a second caller (another connection, another process) waits
/// for the lock (`busy_timeout`), then finds everything applied. Each migration is a savepoint
/// inside it; a failure rolls all of them back.
fn run_sqlite(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    type Tm = AnsiTransactionManager;
    Tm::begin_transaction_sql(conn, "BEGIN EXCLUSIVE")?;
    let applied = conn
        .run_pending_migrations(SQLITE_MIGRATIONS)
        .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>());
    match applied {
        Ok(versions) => {
            <Tm as TransactionManager<SqliteConnection>>::commit_transaction(conn)?;
            Ok(versions)
        }
        Err(error) => {
            let error = migration_error(conn, SQLITE_MIGRATIONS, error);
            let _ = <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(conn);
            Err(error)
        }
    }
}
