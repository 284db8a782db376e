//! The crate's one connection type: PostgreSQL or SQLite behind one enum.
//!
//! The pool, migrations and raw SQL use [`AnyConnection`] as it is; the Repo runs its queries on
//! the concrete connection inside it (see `repo::dispatch`).
//!
//! # Deadlines
//!
//! [`PoolConfig`]'s `statement_timeout`, `lock_timeout` and `idle_in_transaction_timeout` reach
//! PostgreSQL twice, so that they hold directly and behind pgbouncer in transaction mode (which
//! drops the startup `options` and runs each transaction on whichever server connection is free,
//! so a session `SET` may not be where the next statement runs):
//!
//! - as session `SET`s when the pool opens a connection: every statement of a direct connection
//!   is bounded, inside a transaction or not;
//! - as `SET LOCAL`s sent with the `BEGIN` of every top-level transaction (one round trip, see
//!   `crate::transaction`): whichever server connection runs the transaction, its statements are
//!   bounded, and the settings end with it.
//!
//! Behind a pooler that shares server connections between transactions, a statement outside
//! any transaction would run with the settings of whichever server connection it lands on. So a
//! pool that finds itself there (its pooler probe, at its first checkout: see the `replica`
//! module's pgbouncer notes) and has deadlines runs every Repo statement outside a transaction in
//! a transaction of its own: `BEGIN; SET LOCAL …` (one round trip), the statement, `COMMIT` (or
//! `ROLLBACK` when it failed). That costs two more round trips per such statement, behind such a
//! pooler only; statements inside a transaction, and every statement of a pool without a pooler,
//! a session pooler, or no deadlines, run as they are. [`Repo::users_iter`](crate::Repo::users_iter)
//! reads in keyset pages there, each page such a statement. SQL run on
//! [`Session::connection`](crate::Session::connection) itself is the caller's: outside a
//! transaction it gets no deadline there (set the same limits on the role, `ALTER ROLE app SET
//! statement_timeout = '5s'`, or run it in a transaction).
//!
//! On SQLite, `lock_timeout` is `busy_timeout`: how long a writer waits for the write lock. SQLite
//! cannot bound a statement's running time or an idle transaction: `statement_timeout` and
//! `idle_in_transaction_timeout` have no effect there.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::{ConnectionError, PgConnection, SqliteConnection};

use crate::config::DEFAULT_SQLITE_BUSY_TIMEOUT;
use crate::config::{Backend, PoolConfig};

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
/// writer wait for the lock instead of failing at once; `synchronous = NORMAL` never loses a
/// commit to a crash of the process under WAL (`FULL` also survives a power loss).
fn sqlite_pragmas(config: &PoolConfig) -> String {
    format!(
        "PRAGMA foreign_keys = ON; \
         PRAGMA busy_timeout = {}; \
         PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = {};",
        config
            .lock_timeout
            .unwrap_or(DEFAULT_SQLITE_BUSY_TIMEOUT)
            .as_millis(),
        config.sqlite_synchronous.as_sql()
    )
}

/// Creates the SQLite database file `target` when it does not exist yet, readable and writable
/// by its owner only (mode 0600, whatever the umask): SQLite then gives its `-wal` and `-shm`
/// files the same mode. A `file:` URI (the in-memory databases) is left alone, and so is a
/// file that exists; when the file cannot be made here, SQLite's own open reports why.
fn create_private_file(target: &str) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if target.is_empty() || target.starts_with("file:") || target == ":memory:" {
        return;
    }
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target);
    if let Ok(file) = created {
        // The umask may have taken bits off 0600; put them back.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
}

/// A failed TLS handshake under `sslmode=verify-ca` / `verify-full` that OpenSSL reports without
/// naming the certificate (a CA with the right name but another key gives "SSL error: EVP lib"):
/// the message says what was being checked.
fn tls_context(target: &str, error: ConnectionError) -> ConnectionError {
    match error {
        ConnectionError::BadConnection(message)
            if target.contains("sslmode=verify-")
                && message.contains("SSL error")
                && !message.contains("certificate") =>
        {
            ConnectionError::BadConnection(format!(
                "{} (the server's certificate did not verify against sslrootcert)",
                message.trim_end()
            ))
        }
        other => other,
    }
}

/// Whether a setting lasts for the server session or for the current transaction only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `SET`: until the connection closes (or another `SET`).
    Session,
    /// `SET LOCAL`: until the current transaction ends.
    Transaction,
}

/// A pool's PostgreSQL deadlines (see the [module docs](self)): `None` leaves the server's own
/// setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) statement: Option<Duration>,
    pub(crate) lock: Option<Duration>,
    pub(crate) idle_in_transaction: Option<Duration>,
}

impl Deadlines {
    pub(crate) fn of(config: &PoolConfig) -> Self {
        Deadlines {
            statement: config.statement_timeout,
            lock: config.lock_timeout,
            idle_in_transaction: config.idle_in_transaction_timeout,
        }
    }

    /// `SET [LOCAL] name = milliseconds` for every deadline that is set, `; `-separated; empty
    /// when none is.
    pub(crate) fn sql(&self, scope: Scope) -> String {
        let set = match scope {
            Scope::Session => "SET",
            Scope::Transaction => "SET LOCAL",
        };
        [
            ("statement_timeout", self.statement),
            ("lock_timeout", self.lock),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction,
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some(format!("{set} {name} = {}", value?.as_millis())))
        .collect::<Vec<_>>()
        .join("; ")
    }
}

impl AnyConnection {
    /// Opens a connection of the given backend; `target` is the string the driver takes
    /// (a libpq URL, or an SQLite path or `file:` URI). SQLite connections get `foreign_keys = ON`,
    /// `busy_timeout = 5000`, `journal_mode = WAL` and `synchronous = NORMAL`, and a file that
    /// does not exist yet is created readable by its owner only (0600, as are its `-wal` and
    /// `-shm`); PostgreSQL connections keep the server's settings.
    ///
    /// # Errors
    ///
    /// The driver's own [`ConnectionError`] (refused, bad password, unknown database, bad file).
    pub fn open(backend: Backend, target: &str) -> Result<Self, ConnectionError> {
        AnyConnection::open_with(backend, target, &PoolConfig::default())
    }

    /// [`open`](AnyConnection::open) with the per-connection settings of `config`: on
    /// PostgreSQL its deadlines as session `SET`s (see the module docs), on SQLite its
    /// `lock_timeout` as `busy_timeout` and its `sqlite_synchronous`. A SQLite file that does
    /// not exist yet is created with mode 0600.
    pub(crate) fn open_with(
        backend: Backend,
        target: &str,
        config: &PoolConfig,
    ) -> Result<Self, ConnectionError> {
        match backend {
            Backend::Postgres => {
                let mut conn =
                    PgConnection::establish(target).map_err(|e| tls_context(target, e))?;
                let settings = Deadlines::of(config).sql(Scope::Session);
                if !settings.is_empty() {
                    conn.batch_execute(&settings)
                        .map_err(ConnectionError::CouldntSetupConfiguration)?;
                }
                Ok(AnyConnection::Pg(conn))
            }
            Backend::Sqlite => {
                create_private_file(target);
                let mut conn = SqliteConnection::establish(target)?;
                let pragmas = sqlite_pragmas(config);
                // Two connections switching a fresh file to WAL at once: SQLite refuses one at
                // once ("database is locked") instead of calling the busy handler, which would
                // deadlock. The pragmas are idempotent: run them again, for up to 5 s.
                let mut attempts = 0;
                while let Err(e) = conn.batch_execute(&pragmas) {
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
