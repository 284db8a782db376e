//! The crate's one connection type: PostgreSQL or SQLite behind one enum.
//!
//! The pool, migrations and raw SQL use [`AnyConnection`] as it is; the Repo runs its queries on
//! the concrete connection inside it (see `repo::dispatch`).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::{ConnectionError, PgConnection, SqliteConnection};

use crate::config::Backend;

pub use self::multi::{AnyConnection, MultiBackend};

/// The derive generates undocumented public helper items; this module keeps the lint local.
#[allow(missing_docs)]
mod multi {
    use diesel::{PgConnection, SqliteConnection};

    /// A connection to PostgreSQL or SQLite (Diesel's `MultiConnection`), as the pool holds it
    /// and [`Session::connection`](crate::Session::connection) hands it out for raw queries.
    ///
    /// The derive also defines [`MultiBackend`], the backend that queries written against this
    /// connection are built for (the rows of [`Repo::load_sql`](crate::Repo::load_sql)).
    #[derive(diesel::MultiConnection)]
    pub enum AnyConnection {
        /// A PostgreSQL connection (libpq).
        Pg(PgConnection),
        /// An SQLite connection.
        Sqlite(SqliteConnection),
    }
}

/// Pragmas every SQLite connection gets: without `foreign_keys` SQLite enforces none of the
/// schema's `ON DELETE` rules; WAL lets readers run beside a writer; `busy_timeout` makes a
/// writer wait for the lock instead of failing at once; `synchronous = NORMAL` is safe under WAL.
pub(crate) const SQLITE_PRAGMAS: &str = "PRAGMA foreign_keys = ON; \
     PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL;";

impl AnyConnection {
    /// Opens a connection of the given backend; `target` is the string the driver takes
    /// (a libpq URL, or an SQLite path or `file:` URI). SQLite connections get `foreign_keys = ON`,
    /// `busy_timeout = 5000`, `journal_mode = WAL` and `synchronous = NORMAL`.
    ///
    /// # Errors
    ///
    /// The driver's own [`ConnectionError`] (refused, bad password, unknown database, bad file).
    pub fn open(backend: Backend, target: &str) -> Result<Self, ConnectionError> {
        match backend {
            Backend::Postgres => PgConnection::establish(target).map(AnyConnection::Pg),
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(target)?;
                // Two connections switching a fresh file to WAL at once: SQLite refuses one at
                // once ("database is locked") instead of calling the busy handler, which would
                // deadlock. The pragmas are idempotent: run them again, for up to 5 s.
                let mut attempts = 0;
                while let Err(e) = conn.batch_execute(SQLITE_PRAGMAS) {
                    attempts += 1;
                    if attempts >= 100 || e.to_string() != "database is locked" {
                        return Err(ConnectionError::CouldntSetupConfiguration(e));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(AnyConnection::Sqlite(conn))
            }
        }
    }

    /// Which backend this connection talks to.
    pub fn backend(&self) -> Backend {
        match self {
            AnyConnection::Pg(_) => Backend::Postgres,
            AnyConnection::Sqlite(_) => Backend::Sqlite,
        }
    }
}
