//! Sessions: a pooled connection checked out for a scope, and transactions on it.

use crate::config::Backend;
use crate::connection::AnyConnection;
use crate::engine::Manager;
use crate::error::Error;
use crate::repo::Repo;

/// A connection checked out of the pool for a scope: the seed's `with session_pool() as session`.
///
/// Dropping it returns the connection to the pool. Queries go through [`Session::repo`].
pub struct Session {
    conn: r2d2::PooledConnection<Manager>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("backend", &self.conn.backend())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(conn: r2d2::PooledConnection<Manager>) -> Self {
        Session { conn }
    }

    /// The typed queries over this session's connection: the seed's `Repo(session)`.
    pub fn repo(&mut self) -> Repo<'_> {
        Repo::new(self.conn.connection())
    }

    /// The raw connection, for queries the [`Repo`] does not offer.
    ///
    /// A transaction opened here with raw SQL (`BEGIN`) and left open is rolled back when the
    /// session ends, like one opened through Diesel's API.
    pub fn connection(&mut self) -> &mut AnyConnection {
        self.conn.raw_connection()
    }

    /// The connection for the crate's own queries (no raw SQL from callers).
    pub(crate) fn repo_connection(&mut self) -> &mut AnyConnection {
        self.conn.connection()
    }

    /// The backend of this session's connection.
    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// Runs `f` in a transaction: commits when it returns `Ok`, rolls back when it returns `Err`
    /// or panics. Nested calls (through [`Repo::transaction`]) use savepoints.
    ///
    /// # Errors
    ///
    /// `f`'s own error, or a failure to begin or commit converted into `E`.
    pub fn transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Repo<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        self.repo().transaction(f)
    }
}
