//! Sessions: a pooled connection checked out for a scope, and transactions on it.

use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};

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

/// Either the caller's error or a Diesel error raised by the transaction itself (commit, rollback).
enum TxError<E> {
    Caller(E),
    Diesel(diesel::result::Error),
}

impl<E> From<diesel::result::Error> for TxError<E> {
    fn from(error: diesel::result::Error) -> Self {
        TxError::Diesel(error)
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

/// Runs `f` in a transaction on `conn` (shared by [`Session`] and [`Repo`]).
///
/// On SQLite a top-level transaction starts with `BEGIN IMMEDIATE`: it takes the write lock at
/// once, waiting up to `busy_timeout` for it. A deferred `BEGIN` would take it at the first write,
/// and a concurrent writer's commit would then fail that upgrade at once ("database is locked"),
/// however long `busy_timeout` is. Nested calls use savepoints on both backends.
pub(crate) fn transaction<T, E, F>(conn: &mut AnyConnection, f: F) -> Result<T, E>
where
    F: FnOnce(&mut Repo<'_>) -> Result<T, E>,
    E: From<Error>,
{
    type Tm = <AnyConnection as Connection>::TransactionManager;
    let began_immediate = match &mut *conn {
        AnyConnection::Sqlite(sqlite) => {
            let depth = AnsiTransactionManager::transaction_manager_status_mut(sqlite)
                .transaction_depth()
                .map_err(|e| E::from(Error::from(e)))?;
            if depth.is_none() {
                AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")
                    .map_err(|e| E::from(Error::from(e)))?;
            }
            depth.is_none()
        }
        AnyConnection::Pg(_) => false,
    };
    if !began_immediate {
        return conn
            .transaction::<T, TxError<E>, _>(|conn| {
                f(&mut Repo::new(conn)).map_err(TxError::Caller)
            })
            .map_err(|e| match e {
                TxError::Caller(e) => e,
                TxError::Diesel(e) => E::from(Error::from(e)),
            });
    }
    match f(&mut Repo::new(conn)) {
        Ok(value) => match Tm::commit_transaction(conn) {
            Ok(()) => Ok(value),
            Err(commit_error) => {
                // A failed COMMIT may leave the transaction open: close it before reporting.
                let _ = Tm::rollback_transaction(conn);
                Err(E::from(Error::from(commit_error)))
            }
        },
        Err(caller_error) => {
            // The caller's error wins; a failed rollback leaves the connection to the pool's
            // check-in, which discards it.
            let _ = Tm::rollback_transaction(conn);
            Err(caller_error)
        }
    }
}
