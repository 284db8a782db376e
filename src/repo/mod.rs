//! The Repo: the one place that runs queries, over a session's connection.
//!
//! Methods mirror the `Repo` of the SQLAlchemy tutorial under Rust names; each carries the
//! tutorial's name as a doc alias. Queries are built by the functions in
//! [`models`](crate::models) and run on the concrete connection of the backend (see `dispatch`).
//! One `impl Repo` block per concern:
//!
//! - `reports`: the tutorial's reports (users with their locations, counts, the raw `SELECT`);
//! - `users`: reading and writing users, the upsert;
//! - `referrals`: who referred whom, with cycle checks;
//! - `locations`: locations and the links between users and locations;
//! - `import`: bulk loads in chunks under the bind limit (and PostgreSQL's `COPY`);
//! - `pages`: large reads, keyset pages and streaming;
//! - `stream`: streaming imports from any iterator, in batches;
//! - `export`: streaming exports as CSV or rows;
//! - `deadline`: a statement deadline of its own for one call.

mod deadline;
mod dispatch;
mod export;
mod import;
mod locations;
mod pages;
mod referrals;
mod reports;
mod stream;
mod support;
mod users;

use diesel::QueryResult;

pub use self::users::UpsertOptions;
use crate::config::Backend;
use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// Typed queries over one connection: the tutorial's `Repo(session)`.
///
/// Get one from [`Session::repo`](crate::Session::repo) or inside
/// [`Database::transaction`](crate::Database::transaction).
pub struct Repo<'c> {
    conn: &'c mut AnyConnection,
}

impl std::fmt::Debug for Repo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("backend", &self.conn.backend())
            .finish_non_exhaustive()
    }
}

impl<'c> Repo<'c> {
    /// A Repo over a raw connection.
    pub fn new(conn: &'c mut AnyConnection) -> Self {
        Repo { conn }
    }

    /// The backend of the connection.
    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// `Ok` when the open transaction level can take another statement, else
    /// [`Error::TransactionAborted`] (see [`run`](Repo::run)).
    fn check_usable(&mut self) -> Result<()> {
        crate::transaction::check_usable(self.conn)
    }

    /// Runs one statement and records its failure in the open transaction level: every
    /// statement of the Repo goes through here (`statement` picks the concrete connection with
    /// `dispatch!`).
    ///
    /// Refused with [`Error::TransactionAborted`] when a statement of the open transaction level
    /// already failed (PostgreSQL would refuse it with an untyped error, SQLite would run it).
    /// Diesel's instrumentation reports most failures already; SQLite's errors while stepping
    /// through rows (an `INSERT … RETURNING` that violates a constraint) it does not.
    fn run<T>(
        &mut self,
        statement: impl FnOnce(&mut AnyConnection) -> QueryResult<T>,
    ) -> Result<T> {
        self.check_usable()?;
        let result = statement(self.conn);
        if let Err(error) = &result {
            crate::transaction::record(self.conn, error);
        }
        Ok(result?)
    }

    /// Runs `f` in a transaction (a savepoint when one is already open): commits on `Ok`,
    /// rolls back on `Err`.
    ///
    /// A transaction in which a statement failed cannot commit, on PostgreSQL and SQLite alike
    /// (SQLAlchemy's `PendingRollbackError`): once a statement fails, every later statement of
    /// that transaction returns [`Error::TransactionAborted`], and so does the transaction itself
    /// even if `f` returns `Ok`, after rolling everything back. To go on after a failure you
    /// expect, run the statement that may fail in a nested transaction: a savepoint, rolled back
    /// alone when it fails.
    ///
    /// ```no_run
    /// use userbase::models::NewUser;
    /// use userbase::{Database, Error};
    ///
    /// let db = Database::from_env()?;
    /// db.transaction(|repo| {
    ///     repo.insert_user(&NewUser::new(1, "Ann"))?;
    ///     // User 2 may exist already: try it in a savepoint.
    ///     match repo.transaction(|repo| repo.insert_user(&NewUser::new(2, "Bob"))) {
    ///         Ok(_) | Err(Error::UniqueViolation { .. }) => {}
    ///         Err(other) => return Err(other),
    ///     }
    ///     // Still usable: Ann and this link are committed.
    ///     repo.link(1, 1).map(drop)
    /// })?;
    /// # Ok::<(), userbase::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `f`'s own error; [`Error::TransactionAborted`] when one of its statements failed (or one
    /// of the enclosing level had failed already); a failure to begin or commit converted into
    /// `E`.
    pub fn transaction<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Repo<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        crate::transaction::transaction(self.conn, |conn| f(&mut Repo::new(conn)))
    }
}
