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

/// `op!(self, Variant, { body })`: the body of a public Repo method, run in the method's span
/// and reporting one sample of `db.client.operation.duration` (with `error.type` on failure),
/// named by [`Op::Variant`](crate::metrics::Op). The body is the method's own code: `self`,
/// `?` and `return` keep their meaning.
///
/// `op!(self, Variant, typed ExportError { body })`: the same for a method with an error type of
/// the crate's own other than [`Error`] (one that names its `error.type`, see
/// `metrics::ErrorType`).
///
/// `op!(self, Variant, any_error { body })`: the same for a method whose error type is the
/// caller's (`E: From<Error>`): its failures report `error.type` `_OTHER`, the conventions' value
/// for an error of no known type.
macro_rules! op {
    ($repo:ident, $op:ident, $body:block) => {{
        let call = $repo.begin($crate::metrics::Op::$op);
        #[allow(clippy::redundant_closure_call)]
        let result = (|| -> $crate::error::Result<_> { $body })();
        $repo.end(
            call,
            result
                .as_ref()
                .err()
                .map($crate::error::Error::variant_name),
        );
        result
    }};
    ($repo:ident, $op:ident, typed $error:ty $body:block) => {{
        let call = $repo.begin($crate::metrics::Op::$op);
        #[allow(clippy::redundant_closure_call)]
        let result = (|| -> std::result::Result<_, $error> { $body })();
        $repo.end(
            call,
            result
                .as_ref()
                .err()
                .map($crate::metrics::ErrorType::error_type),
        );
        result
    }};
    ($repo:ident, $op:ident, any_error $body:block) => {{
        let call = $repo.begin($crate::metrics::Op::$op);
        #[allow(clippy::redundant_closure_call)]
        let result = (|| -> std::result::Result<_, _> { $body })();
        $repo.end(call, result.as_ref().err().map(|_| "_OTHER"));
        result
    }};
}

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
use crate::failures::Failures;
use crate::metrics::{Call, Op};

/// Typed queries over one connection: the tutorial's `Repo(session)`.
///
/// Get one from [`Session::repo`](crate::Session::repo) or inside
/// [`Database::transaction`](crate::Database::transaction).
pub struct Repo<'c> {
    conn: &'c mut AnyConnection,
    /// A public method is running (the `op!` macro): the public methods it calls report no
    /// operation of their own.
    in_op: bool,
    /// The failure record of a connection the application opened (see `crate::transaction`);
    /// unused on a pooled connection, whose pool keeps the record.
    own: OwnRecord<'c>,
}

/// Where a [`Repo`] keeps the failure record of a connection outside a pool: its own, or (for
/// the Repo of a transaction's closure) the enclosing Repo's.
enum OwnRecord<'c> {
    Here(Failures),
    Outer(&'c mut Failures),
}

impl OwnRecord<'_> {
    fn get(&mut self) -> &mut Failures {
        match self {
            OwnRecord::Here(failures) => failures,
            OwnRecord::Outer(failures) => failures,
        }
    }
}

impl std::fmt::Debug for Repo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("backend", &self.conn.backend())
            .finish_non_exhaustive()
    }
}

impl<'c> Repo<'c> {
    /// A Repo over a connection: a pooled one, or one the application opened itself.
    ///
    /// On a connection the application opened, the Repo keeps the record of failed statements
    /// that makes a failed transaction refuse to go on and to commit (see
    /// [`transaction`](Repo::transaction)) beside the connection: the connection's own
    /// [`Instrumentation`](diesel::connection::Instrumentation), if the application set one,
    /// stays in place and keeps receiving every event.
    pub fn new(conn: &'c mut AnyConnection) -> Self {
        Repo {
            conn,
            in_op: false,
            own: OwnRecord::Here(Failures::default()),
        }
    }

    /// A Repo over `conn` inside a transaction the crate's helper opened, sharing the failure
    /// record `own` of the enclosing level.
    pub(crate) fn within(conn: &'c mut AnyConnection, own: &'c mut Failures) -> Self {
        Repo {
            conn,
            in_op: false,
            own: OwnRecord::Outer(own),
        }
    }

    /// The start of public method `op` (see [`op!`]): `None` inside another method's body, so
    /// each call of a public method reports exactly one operation, and on a connection outside
    /// a pool.
    #[inline]
    fn begin(&mut self, op: Op) -> Option<Call> {
        if self.in_op {
            return None;
        }
        let call = Call::start(self.conn, op)?;
        self.in_op = true;
        Some(call)
    }

    /// The end of the public method begun with `call`, which failed with the error named
    /// `error` (`error.type`), if it did.
    #[inline]
    fn end(&mut self, call: Option<Call>, error: Option<&'static str>) {
        if let Some(call) = call {
            self.in_op = false;
            call.finish(self.conn, error);
        }
    }

    /// The backend of the connection.
    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// `Ok` when the open transaction level can take another statement, else
    /// [`Error::TransactionAborted`] (see [`run`](Repo::run)).
    fn check_usable(&mut self) -> Result<()> {
        crate::transaction::check_usable(self.conn, self.own.get())
    }

    /// Runs one statement and records its failure in the open transaction level (`statement`
    /// picks the concrete connection with `dispatch!`). Every statement of the Repo that returns
    /// its whole result goes through here; the streaming reads (`users_iter`, the exports) check
    /// the level the same way before they start. A failure while `users_iter` streams is recorded
    /// by the stream on a connection the application opened, and as far as Diesel's
    /// instrumentation reports it on a pooled one (on PostgreSQL every failed statement; on SQLite
    /// not an error met while stepping through rows); one while an export streams fails the
    /// export's own transaction.
    ///
    /// Refused with [`Error::TransactionAborted`] when a statement of the open transaction level
    /// already failed (PostgreSQL would refuse it with an untyped error, SQLite would run it).
    /// Diesel's instrumentation reports most failures already; SQLite's errors while stepping
    /// through rows (an `INSERT … RETURNING` that violates a constraint) it does not.
    ///
    /// Behind a pooler that shares server connections between transactions, on a pool with
    /// deadlines, a statement outside a transaction runs in one of its own (`BEGIN; SET LOCAL …`
    /// in one round trip, the statement, `COMMIT`; rolled back when it fails), so that the
    /// deadlines hold on whichever server connection the pooler runs it: see
    /// `crate::connection`.
    fn run<T>(
        &mut self,
        statement: impl FnOnce(&mut AnyConnection) -> QueryResult<T>,
    ) -> Result<T> {
        if crate::transaction::before_statement(self.conn, self.own.get())? {
            return crate::transaction::transaction(self.conn, self.own.get(), |conn, _| {
                statement(conn).map_err(Error::from)
            });
        }
        let result = statement(self.conn);
        if let Err(error) = &result {
            crate::transaction::record(self.conn, self.own.get(), error);
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
        let in_op = self.in_op;
        crate::transaction::transaction(self.conn, self.own.get(), |conn, own| {
            f(&mut Repo {
                conn,
                in_op,
                own: OwnRecord::Outer(own),
            })
        })
    }
}
