//! The crate's one connection type: PostgreSQL or SQLite behind one enum.
//!
//! Repo code is written once against [`AnyConnection`]; where Diesel needs a backend-specific form
//! (upsert, batch forms, `COPY`) the Repo matches on the variant in one small place.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::{ConnectionError, PgConnection, SqliteConnection};

use crate::config::Backend;

pub use self::multi::{AnyConnection, MultiBackend, MultiField, MultiRawValue, MultiRow};

/// The derive generates undocumented public helper items; this module keeps the lint local.
#[allow(missing_docs)]
mod multi {
    use diesel::{PgConnection, SqliteConnection};

    /// A connection to PostgreSQL or SQLite (Diesel's `MultiConnection`).
    ///
    /// The derive also defines [`MultiBackend`], the backend that queries written against this
    /// connection are built for.
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
pub const SQLITE_PRAGMAS: &str = "PRAGMA foreign_keys = ON; \
     PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL;";

impl AnyConnection {
    /// Opens a connection of the given backend; `target` is the string the driver takes
    /// (a libpq URL, or an SQLite path or `file:` URI). SQLite connections get [`SQLITE_PRAGMAS`].
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
