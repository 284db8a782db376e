//! The one error type of the crate, and the single place where database errors are classified.

use std::time::Duration;

use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind};

/// The underlying error an [`enum@Error`] variant keeps as its `source()`.
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`enum@Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `userbase`.
///
/// Constraint violations come back as their own variants whatever the backend, so callers can
/// match on them. No variant ever carries a password: URLs inside errors are rendered redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The row that was asked for does not exist.
    #[error("row not found")]
    NotFound,

    /// An insert or update would duplicate a unique key (primary key or `UNIQUE` column).
    #[error("unique violation{}: {message}", on_constraint(.constraint))]
    UniqueViolation {
        /// The violated constraint, when the backend names it (PostgreSQL does).
        constraint: Option<String>,
        /// The backend's message.
        message: String,
    },

    /// A foreign key does not hold: a link to a missing row, or (PostgreSQL reports
    /// `ON DELETE RESTRICT` this way) a delete of a row that other rows still point to.
    #[error("foreign key violation{}: {message}", on_constraint(.constraint))]
    ForeignKeyViolation {
        /// The violated constraint, when the backend names it (PostgreSQL does).
        constraint: Option<String>,
        /// The backend's message, with its detail line when there is one.
        message: String,
    },

    /// A `NOT NULL` column was given no value.
    #[error("not-null violation{}: {message}", on_column(.column))]
    NotNullViolation {
        /// The column, when the backend names it.
        column: Option<String>,
        /// The backend's message.
        message: String,
    },

    /// A `CHECK` constraint does not hold.
    #[error("check violation{}: {message}", on_constraint(.constraint))]
    CheckViolation {
        /// The violated constraint, when the backend names it.
        constraint: Option<String>,
        /// The backend's message.
        message: String,
    },

    /// No connection became available within `pool_timeout`. The figures are those at the
    /// moment the checkout gave up: `open` (connections to the server), how many of them were
    /// `checked_out` by sessions, and `pending` connects still under way.
    #[error(
        "timed out after {} s waiting for a connection (pool size {pool_size}, overflow {max_overflow}: \
         {open} open, {checked_out} checked out, {pending} being opened)",
        timeout.as_secs_f64()
    )]
    PoolTimeout {
        /// `PoolConfig::pool_size` of the pool.
        pool_size: u32,
        /// `PoolConfig::max_overflow` of the pool.
        max_overflow: u32,
        /// How long the checkout waited.
        timeout: Duration,
        /// Connections open to the server (checked out or idle).
        open: u32,
        /// Connections checked out by sessions.
        checked_out: u32,
        /// Connects under way or asked for.
        pending: u32,
    },

    /// A checkout waited `pool_timeout` for a connect that had no answer from the server yet (a
    /// server that accepts the TCP connection and never answers, a network partition): the
    /// connect opened for it, or one holding the last free slot. The connect goes on in the
    /// background, bounded by libpq's `connect_timeout`, and serves a later checkout if it
    /// succeeds. [`Error::PoolTimeout`] is the other way a checkout times out: every slot in use.
    #[error(
        "timed out after {} s waiting for a connection: the connect to {url} had no answer yet",
        timeout.as_secs_f64()
    )]
    ConnectTimeout {
        /// The URL, password hidden.
        url: String,
        /// `PoolConfig::pool_timeout` of the pool: how long the checkout waited.
        timeout: Duration,
    },

    /// A connection could not be opened: refused, bad password, unknown database, bad file.
    ///
    /// `source()` is the driver's error (Diesel's `ConnectionError`), or the I/O error when the
    /// connect could not even start; `message` is its text, kept in the `Display` so that a log
    /// line printing only the error still says why.
    #[error("could not connect to {url}: {message}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// The server's (or SQLite's) own message.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxedCause>,
    },

    /// Applying or reverting a migration failed: names the migration; its `source()` is the
    /// underlying error (the failed statement's, for one).
    #[error(transparent)]
    Migration(MigrationFailure),

    /// The library could not do its own work at run time: a thread of its own that would not
    /// start, a connection of a backend it did not expect. Neither the caller's settings nor the
    /// database's answer; `source()` is the cause when there is one.
    #[error("{message}")]
    Runtime {
        /// What could not be done.
        message: String,
        /// The underlying error (the operating system's, for a thread).
        #[source]
        source: Option<BoxedCause>,
    },

    /// A setting or URL is malformed.
    #[error("invalid configuration{}: {message}", on_variable(.variable))]
    Config {
        /// The environment variable (or URL part) at fault, when there is one.
        variable: Option<String>,
        /// What is wrong with it.
        message: String,
    },

    /// Setting this referrer would make a referral cycle (a user referring themselves, directly
    /// or through others).
    #[error("user {referrer_id} cannot refer user {user_id}: that would make a referral cycle")]
    ReferralCycle {
        /// The user whose referrer was being set.
        user_id: i64,
        /// The referrer that was refused.
        referrer_id: i64,
    },

    /// Input was rejected before it reached the database.
    #[error("invalid {field}: {message}")]
    Validation {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },

    /// A statement of this transaction failed earlier, so it cannot commit (SQLAlchemy's
    /// `PendingRollbackError`): the transaction was rolled back, on both backends.
    ///
    /// Returned by a transaction whose closure returned `Ok` after a failed statement, and by
    /// every later statement of that transaction. To go on after an expected failure, run the
    /// statement that may fail in a nested transaction (a savepoint): see
    /// [`Repo::transaction`](crate::Repo::transaction).
    #[error("transaction aborted by an earlier failed statement, nothing was committed")]
    TransactionAborted {
        /// The first statement failure of the transaction.
        #[source]
        first: Box<Error>,
    },

    /// PostgreSQL broke a deadlock by aborting this transaction (`40P01`). Retryable: see
    /// [`Database::transaction_with_retry`](crate::Database::transaction_with_retry).
    #[error("deadlock detected: {message}")]
    Deadlock {
        /// The server's message, with its detail line.
        message: String,
    },

    /// The transaction could not be serialized with a concurrent one and was aborted:
    /// PostgreSQL's `40001`, or SQLite's `SQLITE_BUSY` ("database is locked": the write lock
    /// stayed taken for `busy_timeout`, or a deferred transaction's snapshot went stale).
    /// Retryable: see [`Database::transaction_with_retry`](crate::Database::transaction_with_retry).
    #[error("serialization failure: {message}")]
    SerializationFailure {
        /// The backend's message, with its detail line.
        message: String,
    },

    /// A write was refused because the transaction is read-only (PostgreSQL's `25006`, "cannot
    /// execute … in a read-only transaction"): a write through
    /// [`Database::read`](crate::Database::read) or on a replica session, or on a primary that has
    /// been demoted (see [`crate::replica`]). On SQLite (`SQLITE_READONLY`) also a database file
    /// that cannot be written (read-only file, directory or mount); the message says so.
    #[error("read-only transaction: {message}")]
    ReadOnly {
        /// The server's message.
        message: String,
    },

    /// An upsert lost its race with concurrent writes at every attempt: between its `UPDATE`
    /// (no row) and its `INSERT … ON CONFLICT DO NOTHING` (a row again), other sessions kept
    /// inserting and deleting the user. Running it again may succeed.
    #[error("upsert of user {user_id} lost its race with concurrent inserts and deletes {attempts} times")]
    UpsertContended {
        /// The user being upserted.
        user_id: i64,
        /// How many times the upsert tried.
        attempts: u32,
    },

    // Deadlines (`PoolConfig::statement_timeout`, `lock_timeout`): the connection stays usable
    // after either; a transaction in which one fired is rolled back like after any failure.
    /// A statement ran longer than its `statement_timeout` and was cancelled (PostgreSQL's
    /// `57014` "canceling statement due to statement timeout"): see
    /// [`PoolConfig::statement_timeout`](crate::PoolConfig::statement_timeout) and
    /// [`Repo::with_statement_timeout`](crate::Repo::with_statement_timeout).
    #[error("statement_timeout fired: {message}")]
    StatementTimeout {
        /// The server's message.
        message: String,
    },

    /// A statement waited for a lock longer than its `lock_timeout` (PostgreSQL's `55P03`
    /// "canceling statement due to lock timeout", also raised by `NOWAIT`): see
    /// [`PoolConfig::lock_timeout`](crate::PoolConfig::lock_timeout). SQLite reports its
    /// `busy_timeout` running out as [`Error::SerializationFailure`] instead.
    #[error("lock_timeout fired: {message}")]
    LockTimeout {
        /// The server's message.
        message: String,
    },

    /// A PostgreSQL migration could not take the locks it needs: its short `lock_timeout` fired
    /// on every attempt, because other transactions kept holding them (see
    /// [`Database::run_pending_migrations`](crate::Database::run_pending_migrations)). Nothing
    /// of this migration was applied; the ones before it were. Running the migrations again
    /// once the long transactions are gone applies it.
    #[error(
        "migration {migration} could not take its locks: lock_timeout ({} ms) fired on each of \
         {attempts} attempts (another transaction holds a lock on a table it changes)",
        lock_timeout.as_millis()
    )]
    MigrationLockTimeout {
        /// The migration's name (`2024-06-19-000001_create_users`).
        migration: String,
        /// How many times it was tried.
        attempts: u32,
        /// The `lock_timeout` of each attempt.
        lock_timeout: Duration,
    },

    /// The database has no room left for the write: SQLite's `SQLITE_FULL` (the disk is full,
    /// or the file reached `max_page_count`), PostgreSQL's `53100` (`No space left on device`).
    /// The statement was not applied; what was committed before is intact. Free space and run
    /// it again.
    #[error("storage full, the write was not applied (committed data is intact): {message}")]
    StorageFull {
        /// The backend's message.
        message: String,
    },

    /// Any other error reported by Diesel or the database (its `source()`).
    #[error("database error")]
    Query(#[source] diesel::result::Error),
}

/// The cause of an [`Error::Migration`]: which migration failed, and why (as `source()`).
#[derive(Debug)]
pub struct MigrationFailure {
    migration: Option<String>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl MigrationFailure {
    /// The failed migration's name (`2024-06-19-000001_create_users`): the first one still
    /// pending after the failure.
    pub fn migration(&self) -> Option<&str> {
        self.migration.as_deref()
    }
}

impl std::fmt::Display for MigrationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.migration {
            Some(name) => write!(f, "migration {name} failed"),
            None => f.write_str("migration failed"),
        }
    }
}

impl std::error::Error for MigrationFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl Error {
    /// An [`Error::Migration`] for migration `migration` (when known), keeping the error of
    /// Diesel's migration harness as `source()`.
    pub(crate) fn migration(
        migration: Option<String>,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        Error::Migration(MigrationFailure { migration, source })
    }
}

impl Error {
    /// Whether running the whole transaction again may succeed: [`Error::Deadlock`],
    /// [`Error::SerializationFailure`], and [`Error::TransactionAborted`] when its first failure
    /// was one of them. These are exactly the errors
    /// [`Database::transaction_with_retry`](crate::Database::transaction_with_retry) retries.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Deadlock { .. } | Error::SerializationFailure { .. } => true,
            Error::TransactionAborted { first } => first.is_retryable(),
            _ => false,
        }
    }

    /// A connect to `url` failed with `cause`.
    pub(crate) fn connect(url: &crate::DbUrl, cause: impl Into<BoxedCause>) -> Self {
        let source = cause.into();
        Error::Connect {
            url: url.to_string(),
            message: source.to_string().trim().to_owned(),
            source: Some(source),
        }
    }

    /// The variant's name (`"NotFound"`, `"UniqueViolation"`, `"PoolTimeout"`, …): the
    /// `error.type` of the crate's metrics and spans. Never carries a value of the error.
    ///
    /// ```
    /// assert_eq!(userbase::Error::NotFound.variant_name(), "NotFound");
    /// ```
    pub fn variant_name(&self) -> &'static str {
        match self {
            Error::NotFound => "NotFound",
            Error::UniqueViolation { .. } => "UniqueViolation",
            Error::ForeignKeyViolation { .. } => "ForeignKeyViolation",
            Error::NotNullViolation { .. } => "NotNullViolation",
            Error::CheckViolation { .. } => "CheckViolation",
            Error::PoolTimeout { .. } => "PoolTimeout",
            Error::ConnectTimeout { .. } => "ConnectTimeout",
            Error::Connect { .. } => "Connect",
            Error::Migration(_) => "Migration",
            Error::Config { .. } => "Config",
            Error::Runtime { .. } => "Runtime",
            Error::ReferralCycle { .. } => "ReferralCycle",
            Error::Validation { .. } => "Validation",
            Error::TransactionAborted { .. } => "TransactionAborted",
            Error::Deadlock { .. } => "Deadlock",
            Error::SerializationFailure { .. } => "SerializationFailure",
            Error::ReadOnly { .. } => "ReadOnly",
            Error::UpsertContended { .. } => "UpsertContended",
            Error::StatementTimeout { .. } => "StatementTimeout",
            Error::LockTimeout { .. } => "LockTimeout",
            Error::MigrationLockTimeout { .. } => "MigrationLockTimeout",
            Error::StorageFull { .. } => "StorageFull",
            Error::Query(_) => "Query",
        }
    }

    /// A configuration error about one variable.
    pub(crate) fn config(variable: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            variable: Some(variable.into()),
            message: message.into(),
        }
    }
}

fn on_constraint(constraint: &Option<String>) -> String {
    constraint
        .as_deref()
        .map(|c| format!(" on constraint `{c}`"))
        .unwrap_or_default()
}

fn on_column(column: &Option<String>) -> String {
    column
        .as_deref()
        .map(|c| format!(" on column `{c}`"))
        .unwrap_or_default()
}

fn on_variable(variable: &Option<String>) -> String {
    variable
        .as_deref()
        .map(|v| format!(" in {v}"))
        .unwrap_or_default()
}

/// The backend's message with its detail line (PostgreSQL says which rows block a delete there).
fn full_message(info: &dyn DatabaseErrorInformation) -> String {
    match info.details() {
        Some(details) => format!("{} ({details})", info.message()),
        None => info.message().to_owned(),
    }
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::Error as D;
        match error {
            D::NotFound => Error::NotFound,
            D::DatabaseError(kind, info) => {
                // SQLite names no constraint; its message does ("…: locations.location_name").
                let detail = sqlite_detail(info.message());
                let constraint = info.constraint_name().map(str::to_owned).or(detail.clone());
                let message = full_message(info.as_ref());
                let kind = match kind {
                    DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::RestrictViolation
                    | DatabaseErrorKind::NotNullViolation
                    | DatabaseErrorKind::CheckViolation => kind,
                    other => sqlite_kind(info.message()).unwrap_or(other),
                };
                match kind {
                    DatabaseErrorKind::UniqueViolation => Error::UniqueViolation {
                        constraint,
                        message,
                    },
                    // PostgreSQL reports ON DELETE RESTRICT and NO ACTION as 23503; 23001
                    // (restrict_violation, which core PostgreSQL never raises) is taken alike.
                    DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::RestrictViolation => Error::ForeignKeyViolation {
                        constraint,
                        message,
                    },
                    DatabaseErrorKind::NotNullViolation => Error::NotNullViolation {
                        column: info.column_name().map(str::to_owned).or(detail),
                        message,
                    },
                    DatabaseErrorKind::CheckViolation => Error::CheckViolation {
                        constraint,
                        message,
                    },
                    DatabaseErrorKind::SerializationFailure => {
                        Error::SerializationFailure { message }
                    }
                    DatabaseErrorKind::ReadOnlyTransaction => Error::ReadOnly { message },
                    // Diesel gives no kind for 40P01 and hides the SQLSTATE: the server's
                    // message names it (in English unless `lc_messages` says otherwise).
                    DatabaseErrorKind::Unknown if info.message().starts_with(DEADLOCK) => {
                        Error::Deadlock { message }
                    }
                    // 57014 and 55P03: Diesel hides these SQLSTATEs too.
                    DatabaseErrorKind::Unknown if info.message() == STATEMENT_TIMEOUT => {
                        Error::StatementTimeout { message }
                    }
                    DatabaseErrorKind::Unknown
                        if info.message() == LOCK_TIMEOUT
                            || info.message().starts_with(LOCK_NOT_AVAILABLE) =>
                    {
                        Error::LockTimeout { message }
                    }
                    DatabaseErrorKind::Unknown if info.message() == SQLITE_READONLY => {
                        Error::ReadOnly {
                            message: format!(
                                "{message} (SQLite: the session is read-only, or the database \
                                 file, its -wal/-shm files or their directory cannot be written)"
                            ),
                        }
                    }
                    DatabaseErrorKind::Unknown
                        if info.message() == SQLITE_FULL
                            || info.message().contains(NO_SPACE_LEFT) =>
                    {
                        Error::StorageFull { message }
                    }
                    DatabaseErrorKind::Unknown if info.message() == SQLITE_BUSY => {
                        Error::SerializationFailure { message }
                    }
                    other => Error::Query(D::DatabaseError(other, info)),
                }
            }
            other => Error::Query(other),
        }
    }
}

/// The start of PostgreSQL's message for `40P01`.
const DEADLOCK: &str = "deadlock detected";
/// PostgreSQL's message for `57014` raised by `statement_timeout` (not by a cancel request,
/// "… due to user request").
const STATEMENT_TIMEOUT: &str = "canceling statement due to statement timeout";
/// PostgreSQL's message for `55P03` raised by `lock_timeout`.
const LOCK_TIMEOUT: &str = "canceling statement due to lock timeout";
/// The start of PostgreSQL's other `55P03` messages (`NOWAIT`, `SKIP LOCKED` cannot wait):
/// "could not obtain lock on row in relation …", "could not obtain lock on relation …".
const LOCK_NOT_AVAILABLE: &str = "could not obtain lock on ";
/// SQLite's message for `SQLITE_READONLY` (a write under `PRAGMA query_only`).
const SQLITE_READONLY: &str = "attempt to write a readonly database";
/// SQLite's message for `SQLITE_FULL`.
const SQLITE_FULL: &str = "database or disk is full";
/// The end of PostgreSQL's message for `53100` (`could not extend file …: No space left on
/// device`), from the operating system's `ENOSPC`.
const NO_SPACE_LEFT: &str = "No space left on device";
/// SQLite's message for `SQLITE_BUSY` (SQLite's messages are not translated).
const SQLITE_BUSY: &str = "database is locked";

/// What SQLite's constraint messages name after the colon: `users.full_name` in
/// `NOT NULL constraint failed: users.full_name`, a `CHECK` constraint's name.
fn sqlite_detail(message: &str) -> Option<String> {
    let (head, detail) = message.split_once(": ")?;
    head.ends_with("constraint failed")
        .then(|| detail.to_owned())
}

/// The kind of SQLite's constraint messages, where Diesel reports none (SQLite gives, for
/// example, `FOREIGN KEY constraint failed` for an `ON DELETE RESTRICT`).
fn sqlite_kind(message: &str) -> Option<DatabaseErrorKind> {
    let head = message.split_once(": ").map_or(message, |(head, _)| head);
    Some(match head {
        "UNIQUE constraint failed" | "PRIMARY KEY constraint failed" => {
            DatabaseErrorKind::UniqueViolation
        }
        "FOREIGN KEY constraint failed" => DatabaseErrorKind::ForeignKeyViolation,
        "NOT NULL constraint failed" => DatabaseErrorKind::NotNullViolation,
        "CHECK constraint failed" => DatabaseErrorKind::CheckViolation,
        _ => return None,
    })
}
