//! Transactions: the one helper behind every `transaction` of the crate, the record of failed
//! statements that keeps a failed transaction from committing, and the retry loop.
//!
//! # A failed statement poisons its transaction
//!
//! PostgreSQL aborts a transaction at its first failed statement: every later statement fails
//! and `COMMIT` is answered with `ROLLBACK`. SQLite only undoes the failed statement. So that both
//! backends behave alike and a transaction never reports success for work the database
//! discarded, every connection records the first failed statement of each open transaction level
//! (from Diesel's [`Instrumentation`] events); a level with a failure refuses further statements
//! and cannot commit: it is rolled back and [`Error::TransactionAborted`] carries the failure.
//! Rolling back a savepoint (a nested transaction that returned `Err`) clears its level.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use diesel::connection::{
    AnsiTransactionManager, Connection, Instrumentation, InstrumentationEvent, TransactionManager,
};
use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};

use crate::connection::AnyConnection;
use crate::engine::{Database, Watch};
use crate::error::{Error, Result};
use crate::repo::Repo;

type Tm = <AnyConnection as Connection>::TransactionManager;

/// A copy of a failed statement's database error, kept to be reported when the transaction
/// tries to go on or to commit.
#[derive(Debug, Clone)]
struct Failure {
    kind: DatabaseErrorKind,
    message: String,
    details: Option<String>,
    hint: Option<String>,
    table_name: Option<String>,
    column_name: Option<String>,
    constraint_name: Option<String>,
    statement_position: Option<i32>,
}

impl Failure {
    fn copy(kind: DatabaseErrorKind, info: &dyn DatabaseErrorInformation) -> Self {
        Failure {
            kind,
            message: info.message().to_owned(),
            details: info.details().map(str::to_owned),
            hint: info.hint().map(str::to_owned),
            table_name: info.table_name().map(str::to_owned),
            column_name: info.column_name().map(str::to_owned),
            constraint_name: info.constraint_name().map(str::to_owned),
            statement_position: info.statement_position(),
        }
    }

    /// The failure as the crate's typed error (the same variant the statement returned).
    fn to_error(&self) -> Error {
        Error::from(DieselError::DatabaseError(
            self.kind,
            Box::new(self.clone()),
        ))
    }
}

impl DatabaseErrorInformation for Failure {
    fn message(&self) -> &str {
        &self.message
    }
    fn details(&self) -> Option<&str> {
        self.details.as_deref()
    }
    fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    fn table_name(&self) -> Option<&str> {
        self.table_name.as_deref()
    }
    fn column_name(&self) -> Option<&str> {
        self.column_name.as_deref()
    }
    fn constraint_name(&self) -> Option<&str> {
        self.constraint_name.as_deref()
    }
    fn statement_position(&self) -> Option<i32> {
        self.statement_position
    }
}

/// The first failed statement of each open transaction level of one connection (index 0: the
/// top level). Levels are opened and closed by [`transaction`]; statements that fail outside
/// any level (autocommit) are not kept.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    levels: Vec<Option<Failure>>,
}

impl Failures {
    /// Records a failed statement in the innermost open level, unless that level already has
    /// its first failure. Called for every event of the connection's instrumentation.
    pub(crate) fn observe(&mut self, event: &InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery {
            error: Some(error), ..
        } = event
        {
            self.record(error);
        }
    }

    /// Records `error` in the innermost open level when it is the database's (not a client-side
    /// error such as a missing row) and the level has no failure yet.
    fn record(&mut self, error: &DieselError) {
        if let (Some(level @ None), DieselError::DatabaseError(kind, info)) =
            (self.levels.last_mut(), error)
        {
            *level = Some(Failure::copy(*kind, info.as_ref()));
        }
    }

    /// Forgets levels deeper than `depth` (left behind by a closure that panicked, or closed by
    /// raw SQL).
    fn sync(&mut self, depth: usize) {
        self.levels.truncate(depth);
    }
}

/// For connections that do not come from a [`Database`] (which installs its own
/// instrumentation, holding a [`Failures`]).
impl Instrumentation for Failures {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        self.observe(&event);
    }
}

/// The failure record of `conn`, if its instrumentation keeps one.
fn failures(conn: &mut AnyConnection) -> Option<&mut Failures> {
    let instrumentation = conn.instrumentation();
    if instrumentation.is::<Watch>() {
        return instrumentation.downcast_mut::<Watch>().map(Watch::failures);
    }
    instrumentation.downcast_mut::<Failures>()
}

/// Records a failed statement of `conn` that its instrumentation did not report (Diesel's SQLite
/// connection reports no error met while stepping through rows).
pub(crate) fn record(conn: &mut AnyConnection, error: &DieselError) {
    if let Some(failures) = failures(conn) {
        failures.record(error);
    }
}

/// Diesel's transaction depth of `conn` (0: none open).
fn depth(conn: &mut AnyConnection) -> Result<usize> {
    let depth = Tm::transaction_manager_status_mut(conn).transaction_depth()?;
    Ok(depth.map_or(0, |d| usize::try_from(d.get()).unwrap_or(usize::MAX)))
}

/// `Ok` when the innermost open transaction level of `conn` had no failed statement, else
/// [`Error::TransactionAborted`] with its first failure. The [`Repo`] calls this before every
/// statement, so both backends refuse to go on alike.
pub(crate) fn check_usable(conn: &mut AnyConnection) -> Result<()> {
    let depth = depth(conn)?;
    let Some(failures) = failures(conn) else {
        return Ok(());
    };
    failures.sync(depth);
    match failures.levels.last() {
        Some(Some(first)) => Err(Error::TransactionAborted {
            first: Box::new(first.to_error()),
        }),
        _ => Ok(()),
    }
}

/// How a top-level transaction begins. Nested ones are savepoints either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// PostgreSQL's default (`READ COMMITTED`).
    Default,
    /// `SERIALIZABLE` on PostgreSQL.
    Serializable,
    /// `READ ONLY` on PostgreSQL; a deferred `BEGIN` on SQLite (see [`read_only`]).
    ReadOnly,
}

/// Begins a transaction (a savepoint when one is open); returns its depth.
///
/// On SQLite a top-level transaction starts with `BEGIN IMMEDIATE`: it takes the write lock at
/// once, waiting up to `busy_timeout` for it. A deferred `BEGIN` would take it at the first
/// write, and a concurrent writer's commit would then fail that upgrade at once ("database is
/// locked"), however long `busy_timeout` is. SQLite's transactions are serializable, so
/// [`Isolation::Serializable`] changes nothing there.
fn begin(conn: &mut AnyConnection, isolation: Isolation) -> Result<usize> {
    match (depth(conn)?, &mut *conn, isolation) {
        (0, AnyConnection::Sqlite(sqlite), Isolation::ReadOnly) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN")?;
        }
        (0, AnyConnection::Pg(pg), Isolation::ReadOnly) => {
            AnsiTransactionManager::begin_transaction_sql(pg, "BEGIN READ ONLY")?;
        }
        (0, AnyConnection::Sqlite(sqlite), _) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
        }
        (0, AnyConnection::Pg(pg), Isolation::Serializable) => {
            AnsiTransactionManager::begin_transaction_sql(
                pg,
                "BEGIN ISOLATION LEVEL SERIALIZABLE",
            )?;
        }
        _ => Tm::begin_transaction(conn)?,
    }
    let depth = depth(conn)?;
    if failures(conn).is_none() {
        conn.set_instrumentation(Failures::default());
    }
    if let Some(failures) = failures(conn) {
        failures.sync(depth.saturating_sub(1));
        failures.levels.resize(depth, None);
    }
    Ok(depth)
}

/// Closes the level `depth` of the failure record; returns its first failure.
fn leave(conn: &mut AnyConnection, depth: usize) -> Option<Failure> {
    let failures = failures(conn)?;
    let first = failures.levels.get_mut(depth.checked_sub(1)?)?.take();
    failures.sync(depth.saturating_sub(1));
    first
}

/// Runs `f` in a transaction on `conn` (a savepoint when one is open): the helper behind
/// [`Database::transaction`], [`Session::transaction`](crate::Session::transaction) and
/// [`Repo::transaction`].
///
/// Commits when `f` returns `Ok` and none of its statements failed; rolls back when `f` returns
/// `Err` (that error is returned) or when a statement failed (then
/// [`Error::TransactionAborted`]).
pub(crate) fn transaction<T, E, F>(conn: &mut AnyConnection, f: F) -> Result<T, E>
where
    F: FnOnce(&mut Repo<'_>) -> Result<T, E>,
    E: From<Error>,
{
    run(conn, Isolation::Default, f)
}

/// Runs the read `f` in a read-only transaction on `conn`: `BEGIN READ ONLY` on PostgreSQL; on
/// SQLite a deferred `BEGIN` (no write lock) under `PRAGMA query_only`, switched off again after.
/// A write in `f` is [`Error::ReadOnly`] on both.
pub(crate) fn read_only<T, F>(conn: &mut AnyConnection, f: &mut F) -> Result<T>
where
    F: FnMut(&mut Repo<'_>) -> Result<T>,
{
    use diesel::connection::SimpleConnection;
    if conn.backend() == crate::config::Backend::Sqlite {
        conn.batch_execute("PRAGMA query_only = ON")?;
        let outcome = run(conn, Isolation::ReadOnly, |repo| f(repo));
        conn.batch_execute("PRAGMA query_only = OFF")?;
        return outcome;
    }
    run(conn, Isolation::ReadOnly, |repo| f(repo))
}

fn run<T, E, F>(conn: &mut AnyConnection, isolation: Isolation, f: F) -> Result<T, E>
where
    F: FnOnce(&mut Repo<'_>) -> Result<T, E>,
    E: From<Error>,
{
    // A level that already failed takes no savepoint either (PostgreSQL would refuse it).
    check_usable(conn)?;
    let depth = begin(conn, isolation)?;
    let outcome = f(&mut Repo::new(conn));
    let first = leave(conn, depth);
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

/// How [`Database::transaction_with_retry`] retries: at most `max_attempts` runs, waiting
/// between them an exponential backoff (`base_backoff`, doubled at each retry, at most
/// `max_backoff`) with jitter.
///
/// ```
/// use std::time::Duration;
/// use userbase::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(10)
///     .with_backoff(Duration::from_millis(5), Duration::from_millis(500));
/// assert_eq!(policy.max_attempts, 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Runs of the closure at most, the first included; at least 1. Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled at each further retry. Default 10 ms.
    pub base_backoff: Duration,
    /// Longest wait between two runs; at least `base_backoff`. Default 1 s.
    pub max_backoff: Duration,
    /// Wait a random time between half the backoff and the full backoff, so that transactions
    /// that collided do not collide again. Default `true`.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// This policy with at most `max_attempts` runs (at least 1).
    pub fn with_max_attempts(self, max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..self
        }
    }

    /// This policy with the backoff starting at `base` and growing to at most `max`.
    pub fn with_backoff(self, base: Duration, max: Duration) -> Self {
        RetryPolicy {
            base_backoff: base,
            max_backoff: max,
            ..self
        }
    }

    /// This policy with jitter on or off.
    pub fn with_jitter(self, jitter: bool) -> Self {
        RetryPolicy { jitter, ..self }
    }

    /// Checks the bounds.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `max_attempts` is 0 or `base_backoff` exceeds `max_backoff`.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if self.base_backoff > self.max_backoff {
            return Err(Error::config(
                "base_backoff",
                format!(
                    "{:?} exceeds max_backoff {:?}",
                    self.base_backoff, self.max_backoff
                ),
            ));
        }
        Ok(())
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let full = self
            .base_backoff
            .saturating_mul(1_u32 << doublings)
            .min(self.max_backoff);
        if !self.jitter {
            return full;
        }
        let half = full / 2;
        half + (full - half).mul_f64(random_fraction())
    }
}

/// A random number in `[0, 1)`, from the standard library's randomly keyed hasher (no crate
/// needed for jitter).
fn random_fraction() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 53 random bits: exactly representable.
    (bits >> 11) as f64 / (1_u64 << 53) as f64
}

impl Database {
    /// Runs `f` in a top-level transaction and runs it again, on a fresh session after a
    /// backoff, when it fails with a retryable error ([`Error::is_retryable`]: a deadlock or a
    /// serialization failure, also when they aborted the transaction): CockroachDB's client-side
    /// retry loop. Other errors are returned at once; after `policy.max_attempts` runs the last
    /// retryable error is returned.
    ///
    /// The transaction runs at `SERIALIZABLE` on PostgreSQL (SQLite's transactions always are),
    /// so a concurrent transaction it would race with makes it fail and run again instead of
    /// committing a result no serial order gives. `f` may run several times: keep side effects
    /// outside the database out of it.
    ///
    /// Use it for referral changes that may run concurrently: [`Repo::set_referrer`] (and an
    /// upsert overwriting the referrer) check for cycles and then write, so at `READ COMMITTED`
    /// two concurrent changes (A refers B, B refers A) can each pass their check and together
    /// make a cycle; at `SERIALIZABLE` one of them fails and its retry sees the other.
    ///
    /// ```no_run
    /// use userbase::{Database, RetryPolicy};
    ///
    /// let db = Database::from_env()?;
    /// db.transaction_with_retry(RetryPolicy::default(), |repo| {
    ///     repo.set_referrer(1824, Some(1)).map(drop)
    /// })?;
    /// # Ok::<(), userbase::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad `policy` ([`RetryPolicy::validate`]); `f`'s error or the
    /// commit's (the last retryable one after `max_attempts` runs); a checkout error.
    pub fn transaction_with_retry<T, F>(&self, policy: RetryPolicy, mut f: F) -> Result<T>
    where
        F: FnMut(&mut Repo<'_>) -> Result<T>,
    {
        policy.validate()?;
        let mut attempt = 1;
        loop {
            let outcome = {
                let mut session = self.session()?;
                let outcome = run(session.repo_connection(), Isolation::Serializable, &mut f);
                crate::replica::after_transaction(self, session.repo_connection(), outcome.is_ok());
                outcome
            };
            match outcome {
                Err(error) if error.is_retryable() && attempt < policy.max_attempts => {
                    let wait = policy.backoff(attempt);
                    tracing::debug!(
                        target: "userbase::sql",
                        attempt,
                        wait_us = wait.as_micros(),
                        %error,
                        "retrying transaction"
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = RetryPolicy::default()
            .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .with_jitter(false);
        let waits: Vec<u128> = (1..=5).map(|r| policy.backoff(r).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        assert_eq!(
            policy.backoff(u32::MAX),
            Duration::from_millis(50),
            "no overflow"
        );
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let policy = RetryPolicy::default()
            .with_backoff(Duration::from_millis(100), Duration::from_millis(100));
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(1)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(50) && *w <= Duration::from_millis(100)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{} distinct waits", distinct.len());
    }

    #[test]
    fn bad_policies_are_config_errors() {
        assert!(matches!(
            RetryPolicy::default().with_max_attempts(0).validate(),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            RetryPolicy::default()
                .with_backoff(Duration::from_secs(2), Duration::from_secs(1))
                .validate(),
            Err(Error::Config { .. })
        ));
    }
}
