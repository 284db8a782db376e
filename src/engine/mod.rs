//! The engine: an r2d2 pool of [`AnyConnection`](crate::AnyConnection)s with SQLAlchemy's QueuePool semantics, the
//! seed's `create_engine`.
//!
//! - **Lazy**: creating a [`Database`] opens nothing; [`Database::check`] opens one connection.
//! - **`pool_size` / `max_overflow`**: at most `pool_size + max_overflow` connections are open; a
//!   connection returned while `pool_size` are idle is closed at once, and idle connections are
//!   never closed by a timer.
//! - **`pool_timeout`**: a checkout that waits longer fails with [`Error::PoolTimeout`]; a
//!   failure to connect is [`Error::Connect`] with the server's message as soon as it happens.
//! - **`pool_recycle`**: older connections are replaced at checkout.
//! - **`pre_ping`**: idle connections are pinged at checkout unless used within
//!   `pre_ping_bypass`; a failed ping or a query on a dead connection invalidates every older
//!   connection, each then replaced at its next checkout.
//! - **reset on return**: an open transaction is rolled back and the connection reused.
//! - **`echo` / `echo_pool`**: statements and pool events through `tracing`, never the password.

mod manager;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use diesel_migrations::{embed_migrations, EmbeddedMigrations};

pub(crate) use self::manager::Manager;
use self::manager::{connect_error, LastConnectError, Shared};
pub(crate) use self::watch::Watch;
pub use crate::config::url::LIBPQ_SAFETY_DEFAULTS;

use crate::config::{Backend, DbUrl, PoolConfig, Settings};
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::session::Session;

/// The PostgreSQL migrations (`migrations/postgres`), compiled into the crate.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The SQLite migrations (`migrations/sqlite`), compiled into the crate.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// The engine: owns the connection pool and hands out [`Session`]s.
///
/// Like SQLAlchemy's `create_engine`, creating it opens no connection: connections are made as
/// sessions need them, up to `pool_size + max_overflow`. Cloning is cheap and shares the pool.
///
/// ```no_run
/// use userbase::{Database, Settings};
///
/// let db = Database::new(Settings::from_env()?)?;
/// db.run_pending_migrations()?;
/// let mut session = db.session()?;
/// for row in session.repo().users_with_locations()? {
///     println!("{} has {} locations", row.user.full_name, row.locations.len());
/// }
/// # Ok::<(), userbase::Error>(())
/// ```
#[derive(Clone)]
pub struct Database {
    pool: r2d2::Pool<Manager>,
    url: DbUrl,
    config: PoolConfig,
    shared: Arc<Shared>,
    last_error: LastConnectError,
    /// Read replicas and read-your-writes state (see [`crate::replica`]); `None`: none.
    pub(crate) replicas: Option<Arc<crate::replica::Router>>,
    /// Where migrations run, when not `url`.
    migration_url: Option<Arc<DbUrl>>,
}

/// The pool's figures: the seed's `engine.pool.status()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// `pool_size`: connections kept open once made.
    pub pool_size: u32,
    /// `max_overflow`: connections allowed above `pool_size`.
    pub max_overflow: u32,
    /// Open connections (idle and checked out).
    pub open: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections checked out by sessions.
    pub checked_out: u32,
    /// `open - pool_size`: above zero, the overflow in use; negative, room below `pool_size`
    /// (as SQLAlchemy reports it).
    pub overflow: i64,
}

impl fmt::Display for PoolStatus {
    /// SQLAlchemy's format: `Pool size: 5  Connections in pool: 1 Current Overflow: -4 Current Checked out connections: 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pool size: {}  Connections in pool: {} Current Overflow: {} Current Checked out connections: {}",
            self.pool_size, self.idle, self.overflow, self.checked_out
        )
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Creates the engine for `settings` without opening any connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the pool knobs are unusable (see [`PoolConfig::validate`]).
    pub fn new(settings: Settings) -> Result<Self> {
        let Settings {
            url,
            pool: config,
            replicas,
            migration_url,
        } = settings;
        config.validate()?;
        let replicas = crate::replica::Router::start(&replicas, &config)?;
        let last_error = LastConnectError::default();
        let shared = Arc::new(Shared::new(config.pool_size));
        let manager = Manager::new(
            url.clone(),
            config.clone(),
            shared.clone(),
            last_error.clone(),
        );
        // r2d2 gives the hooks; `Manager` gives the semantics (see the module docs). No reaper:
        // idle connections are only closed by overflow discard, recycle and invalidation.
        let pool = r2d2::Pool::builder()
            .max_size(config.max_connections())
            .min_idle(Some(0))
            .idle_timeout(None)
            .max_lifetime(None)
            .connection_timeout(config.pool_timeout)
            .test_on_check_out(true)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .event_handler(Box::new(watch::PoolEvents {
                echo_pool: config.echo_pool,
            }))
            .build_unchecked(manager);
        Ok(Database {
            pool,
            url,
            config,
            shared,
            last_error,
            replicas,
            migration_url: migration_url.map(Arc::new),
        })
    }

    /// Creates the engine from `.env` and the environment ([`Settings::from_env`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable when a setting is malformed.
    pub fn from_env() -> Result<Self> {
        Database::new(Settings::from_env()?)
    }

    /// The URL this engine connects to (its `Display` hides the password).
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// The backend this engine connects to.
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The pool knobs in force.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Checks a connection out for a scope: the seed's `with session_pool() as session`.
    ///
    /// The connection goes back to the pool when the [`Session`] is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] with the server's message as soon as a connect attempt fails;
    /// [`Error::PoolTimeout`] when every connection stays busy for `pool_timeout`.
    pub fn session(&self) -> Result<Session> {
        let started = Instant::now();
        // One blocking wait: a failed connect wakes it with a placeholder (see `manager`).
        match self.pool.get_timeout(self.config.pool_timeout) {
            Ok(conn) => match conn.failure() {
                // Dropping the placeholder discards it.
                Some(message) => Err(connect_error(&self.url, message.to_owned())),
                None => Ok(Session::new(conn)),
            },
            Err(_) => match self.last_error.since(started) {
                Some(message) => Err(connect_error(&self.url, message)),
                None => Err(Error::PoolTimeout {
                    pool_size: self.config.pool_size,
                    max_overflow: self.config.max_overflow,
                    timeout: self.config.pool_timeout,
                }),
            },
        }
    }

    /// Opens (or checks out and pings) one connection, to fail fast on bad configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] with the server's message (refused, bad password, unknown database).
    pub fn check(&self) -> Result<()> {
        self.session().map(drop)
    }

    /// The pool's figures: the seed's `engine.pool.status()`.
    pub fn status(&self) -> PoolStatus {
        let state = self.pool.state();
        PoolStatus {
            pool_size: self.config.pool_size,
            max_overflow: self.config.max_overflow,
            open: state.connections,
            idle: state.idle_connections,
            checked_out: state.connections.saturating_sub(state.idle_connections),
            overflow: i64::from(state.connections) - i64::from(self.config.pool_size),
        }
    }

    /// Closes every idle connection now, and every checked-out one when it is returned; later
    /// checkouts open fresh connections (the seed's `engine.dispose()`).
    pub fn dispose(&self) {
        self.shared.invalidate();
        // Checking out runs the manager's validity test, which drops every invalidated idle
        // connection; it hands back only a connection made after the invalidation, if any.
        drop(self.pool.try_get());
        if self.config.echo_pool {
            tracing::debug!(target: "userbase::pool", "dispose: idle connections closed");
        }
    }

    /// Runs `f` in a transaction on a fresh session: commits when it returns `Ok`, rolls back
    /// when it returns `Err` (or panics).
    ///
    /// # Errors
    ///
    /// `f`'s own error, or a checkout/commit failure converted into `E`.
    pub fn transaction<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Repo<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        let mut session = self.session()?;
        let outcome = session.transaction(f);
        crate::replica::after_transaction(self, session.repo_connection(), outcome.is_ok());
        outcome
    }

    /// Applies the embedded migrations that are not applied yet, returning their versions.
    ///
    /// Concurrent callers, in this process or others, wait for each other: on PostgreSQL
    /// through an advisory lock, on SQLite through an exclusive transaction. They run through
    /// [`Settings::migration_url`] when set (a connection of their own), else on the primary.
    ///
    /// # Errors
    ///
    /// [`Error::Migration`] when a migration fails (it is rolled back), or a checkout error;
    /// [`Error::Config`] when the connection goes through a pooler such as pgbouncer (its
    /// session advisory lock would not hold): set [`Settings::migration_url`].
    pub fn run_pending_migrations(&self) -> Result<Vec<String>> {
        crate::replica::run_migrations(self, self.migration_url.as_deref())
    }
}
