//! Transactions: the one helper behind every `transaction` of the crate, and how it uses the
//! record of failed statements (`crate::failures`) to keep a failed transaction from committing.
//!
//! # A failed statement poisons its transaction
//!
//! PostgreSQL aborts a transaction at its first failed statement: every later statement fails
//! and `COMMIT` is answered with `ROLLBACK`. SQLite only undoes the failed statement. So that both
//! backends behave alike and a transaction never reports success for work the database
//! discarded, every connection records the first failed statement of each open transaction level:
//! a pooled connection from Diesel's [`Instrumentation`](diesel::connection::Instrumentation)
//! events (the pool's instrumentation keeps the record), a connection the application opened from
//! the results of the statements its [`Repo`](crate::Repo) runs (the Repo keeps the record, and the
//! application's own instrumentation stays in place). A level with a failure refuses further
//! statements and cannot commit: it is rolled back and [`Error::TransactionAborted`] carries the
//! failure.
//! Rolling back a savepoint (a nested transaction that returned `Err`) clears its level.

use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::result::Error as DieselError;

use crate::connection::AnyConnection;
use crate::engine::Watch;
use crate::error::{Error, Result};
use crate::failures::{Failure, Failures};

type Tm = <AnyConnection as Connection>::TransactionManager;

/// The failure record of `conn`: the one its pool's instrumentation keeps (every pooled
/// connection), else `own`, the record its [`Repo`](crate::Repo) keeps beside a connection the
/// application opened (whose own instrumentation, if any, stays in place).
fn failures<'a>(conn: &'a mut AnyConnection, own: &'a mut Failures) -> &'a mut Failures {
    match pooled(conn) {
        Some(failures) => failures,
        None => own,
    }
}

/// The failure record the pool's instrumentation keeps for `conn`; `None` for a connection
/// outside a pool.
fn pooled(conn: &mut AnyConnection) -> Option<&mut Failures> {
    conn.instrumentation()
        .downcast_mut::<Watch>()
        .map(Watch::failures)
}

/// Records a failed statement of `conn` in its failure record (see [`failures`]). The pool's
/// instrumentation records most failures itself; this catches the ones it does not see (Diesel's
/// SQLite connection reports no error met while stepping through rows) and every failure on a
/// connection outside a pool.
pub(crate) fn record(conn: &mut AnyConnection, own: &mut Failures, error: &DieselError) {
    failures(conn, own).record(error);
}

/// Sets whether the Repo's statements outside a transaction on `conn` run in a transaction of
/// their own, begun with the connection's deadlines (see [`before_statement`]): `bound` when
/// its pool is behind a pooler that shares server connections between transactions. The pool
/// calls this at every checkout, from its pooler verdict.
pub(crate) fn bound_autocommit(conn: &mut AnyConnection, bound: bool) {
    if let Some(failures) = pooled(conn) {
        failures.set_bound_autocommit(bound);
    }
}

/// `begin`, followed by the connection's `SET LOCAL` deadlines when it has some.
fn begin_sql(conn: &mut AnyConnection, own: &mut Failures, begin: &str) -> String {
    let settings = failures(conn, own).transaction_settings();
    if settings.is_empty() {
        begin.to_owned()
    } else {
        format!("{begin}; {settings}")
    }
}

/// Diesel's transaction depth of `conn` (0: none open).
fn depth(conn: &mut AnyConnection) -> Result<usize> {
    let depth = Tm::transaction_manager_status_mut(conn).transaction_depth()?;
    Ok(depth.map_or(0, |d| usize::try_from(d.get()).unwrap_or(usize::MAX)))
}

/// Whether a transaction is open on `conn` (through Diesel's transaction manager).
pub(crate) fn is_open(conn: &mut AnyConnection) -> Result<bool> {
    Ok(depth(conn)? > 0)
}

/// `Ok` when the innermost open transaction level of `conn` had no failed statement, else
/// [`Error::TransactionAborted`] with its first failure. The [`Repo`](crate::Repo) calls this before every
/// statement, so both backends refuse to go on alike.
pub(crate) fn check_usable(conn: &mut AnyConnection, own: &mut Failures) -> Result<()> {
    before_statement(conn, own).map(drop)
}

/// Before a Repo statement on `conn`, in one look at its failure record: whether the statement
/// must run in a transaction of its own (`BEGIN; SET LOCAL …` in one round trip, the statement,
/// `COMMIT`) for the connection's deadlines to hold: its pool is behind a transaction pooler,
/// which dropped the session `SET`s, the pool has deadlines, and no transaction is open.
/// Elsewhere it is `false` at the cost of one flag read.
///
/// # Errors
///
/// [`Error::TransactionAborted`] with the first failure of the innermost open level, when it
/// has one (see [`check_usable`]).
pub(crate) fn before_statement(conn: &mut AnyConnection, own: &mut Failures) -> Result<bool> {
    let depth = depth(conn)?;
    let failures = failures(conn, own);
    failures.sync(depth);
    if let Some(first) = failures.innermost() {
        return Err(Error::TransactionAborted {
            first: Box::new(first.to_error()),
        });
    }
    Ok(depth == 0 && failures.bounds_autocommit())
}

/// How a top-level transaction begins. Nested ones are savepoints either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// PostgreSQL's default (`READ COMMITTED`).
    Default,
    /// `SERIALIZABLE` on PostgreSQL.
    Serializable,
    /// `READ ONLY` on PostgreSQL; a deferred `BEGIN` on SQLite (reads under `PRAGMA
    /// query_only`, see `replica`).
    ReadOnly,
}

/// Begins a transaction (a savepoint when one is open); returns its depth.
///
/// On SQLite a top-level transaction starts with `BEGIN IMMEDIATE`: it takes the write lock at
/// once, waiting up to `busy_timeout` for it. A deferred `BEGIN` would take it at the first
/// write, and a concurrent writer's commit would then fail that upgrade at once ("database is
/// locked"), however long `busy_timeout` is. SQLite's transactions are serializable, so
/// [`Isolation::Serializable`] changes nothing there.
fn begin(conn: &mut AnyConnection, own: &mut Failures, isolation: Isolation) -> Result<usize> {
    match (depth(conn)?, &mut *conn, isolation) {
        (0, AnyConnection::Sqlite(sqlite), Isolation::ReadOnly) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN")?;
        }
        (0, AnyConnection::Pg(_), _) => {
            let begin = match isolation {
                Isolation::Default => "BEGIN",
                Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
                Isolation::ReadOnly => "BEGIN READ ONLY",
            };
            let sql = begin_sql(conn, own, begin);
            if let AnyConnection::Pg(pg) = conn {
                AnsiTransactionManager::begin_transaction_sql(pg, &sql)?;
            }
        }
        (0, AnyConnection::Sqlite(sqlite), _) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
        }
        _ => Tm::begin_transaction(conn)?,
    }
    let depth = depth(conn)?;
    failures(conn, own).open(depth);
    Ok(depth)
}

/// Closes the level `depth` of the failure record; returns its first failure.
fn leave(conn: &mut AnyConnection, own: &mut Failures, depth: usize) -> Option<Failure> {
    failures(conn, own).close(depth)
}

/// Runs `f` in a transaction on `conn` (a savepoint when one is open): the helper behind
/// [`Database::transaction`](crate::Database::transaction),
/// [`Session::transaction`](crate::Session::transaction) and
/// [`Repo::transaction`](crate::Repo::transaction).
///
/// Commits when `f` returns `Ok` and none of its statements failed; rolls back when `f` returns
/// `Err` (that error is returned) or when a statement failed (then
/// [`Error::TransactionAborted`]). `own` is the failure record of a connection outside a pool
/// (see [`failures`]), handed on to `f` with the connection.
pub(crate) fn transaction<T, E, F>(
    conn: &mut AnyConnection,
    own: &mut Failures,
    f: F,
) -> Result<T, E>
where
    F: FnOnce(&mut AnyConnection, &mut Failures) -> Result<T, E>,
    E: From<Error>,
{
    run(conn, own, Isolation::Default, f)
}

/// [`transaction`] beginning at `isolation` when it is a top-level one.
pub(crate) fn run<T, E, F>(
    conn: &mut AnyConnection,
    own: &mut Failures,
    isolation: Isolation,
    f: F,
) -> Result<T, E>
where
    F: FnOnce(&mut AnyConnection, &mut Failures) -> Result<T, E>,
    E: From<Error>,
{
    // A level that already failed takes no savepoint either (PostgreSQL would refuse it).
    check_usable(conn, own)?;
    let depth = begin(conn, own, isolation)?;
    let outcome = f(conn, own);
    let first = leave(conn, own, depth);
    match (outcome, first) {
        (Ok(value), None) => match Tm::commit_transaction(conn) {
            Ok(()) => Ok(value),
            Err(commit_error) => {
                // A failed COMMIT or RELEASE may leave the level open: close it.
                if matches!(self::depth(conn), Ok(open) if open == depth) {
                    let _ = Tm::rollback_transaction(conn);
                }
                Err(E::from(Error::from(commit_error)))
            }
        },
        (Ok(_), Some(first)) => {
            let _ = Tm::rollback_transaction(conn);
            Err(E::from(Error::TransactionAborted {
                first: Box::new(first.to_error()),
            }))
        }
        (Err(caller_error), _) => {
            // The caller's error wins; a failed top-level rollback leaves the connection to the
            // pool's check-in, which discards it (and a failed savepoint rollback poisons the
            // enclosing level).
            let _ = Tm::rollback_transaction(conn);
            Err(caller_error)
        }
    }
}
