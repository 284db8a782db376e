//! The engine: an r2d2 pool of [`AnyConnection`](crate::AnyConnection)s with SQLAlchemy's QueuePool semantics, the
//! seed's `create_engine`.
//!
//! - **Lazy**: creating a [`Database`] opens nothing; a connection is opened only for a checkout
//!   that finds none idle.
//! - **`pool_size` / `max_overflow`**: at most `pool_size + max_overflow` connections are open
//!   (or being opened) at any moment. Connections above `pool_size` are closed once more than
//!   `pool_size` have stayed idle for `overflow_idle_timeout` (zero: at once as they come back,
//!   as SQLAlchemy does); `pool_size` idle connections are never closed by a timer.
//! - **`pool_timeout`**: a waiting checkout is woken as soon as a connection comes back (kept or
//!   closed), a connect lands or fails; it fails with [`Error::PoolTimeout`] only when the limit
//!   stayed in use for the whole timeout, and with [`Error::Connect`] (the server's message) as
//!   soon as the connect made for it fails.
//! - **`pool_recycle`**: older connections are replaced at checkout.
//! - **`pre_ping`**: idle connections are pinged at checkout unless used within
//!   `pre_ping_bypass`; a failed ping or a query on a dead connection invalidates every older
//!   connection, each then replaced at its next checkout. [`Database::check`] always pings.
//! - **reset on return**: any open transaction (begun through Diesel or by raw SQL such as
//!   `BEGIN`) is rolled back before the connection is reused.
//! - **leak detection**: with `leak_detection_threshold`, a session held longer is reported once
//!   through `tracing`, naming where it was checked out.
//! - **`echo` / `echo_pool`**: statements and pool events through `tracing`, never the password.
//!
//! How the pieces fit: `gate` keeps the exact figures and is where checkouts wait; `manager`
//! opens connections for the gate's tickets on r2d2's worker threads; r2d2 keeps the idle
//! connections; `keeper` is the thread that closes overflow connections and reports leaks.

mod gate;
mod keeper;
mod manager;
mod pooled;
mod watch;

use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_migrations::{embed_migrations, EmbeddedMigrations};

pub(crate) use self::gate::Gate;
use self::gate::Refusal;
use self::manager::connect_error;
pub(crate) use self::manager::Manager;
pub(crate) use self::pooled::{Invalidation, Pooled};
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
/// ```
/// use userbase::models::{NewLocation, NewUser};
/// use userbase::{Database, DbUrl, Error, Settings};
///
/// // `Settings::from_env()?` in an application; an in-memory SQLite database here.
/// let db = Database::new(Settings::new(DbUrl::parse("sqlite::memory:")?))?;
/// db.run_pending_migrations()?;
/// db.transaction(|repo| {
///     repo.insert_user(&NewUser::new(1, "Ada Lovelace").username("ada"))?;
///     let location = repo.insert_location(&NewLocation::new("Analytical Engine", "12 Dorset St"))?;
///     repo.link(1, location.location_id)?;
///     Ok::<_, Error>(())
/// })?;
/// let mut session = db.session()?;
/// let rows = session.repo().users_with_locations()?;
/// assert_eq!(rows.len(), 1);
/// assert_eq!(rows[0].user.full_name, "Ada Lovelace");
/// assert_eq!(rows[0].locations[0].location_name, "Analytical Engine");
/// # Ok::<(), userbase::Error>(())
/// ```
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// What the clones of a [`Database`] share; dropping the last one stops the pool's threads.
pub(crate) struct Inner {
    pool: r2d2::Pool<Manager>,
    url: DbUrl,
    config: PoolConfig,
    gate: Arc<Gate>,
    invalidation: Arc<Invalidation>,
    /// Read replicas and read-your-writes state (see [`crate::replica`]); `None`: none.
    replicas: Option<Arc<crate::replica::Router>>,
    /// Where migrations run, when not `url`.
    migration_url: Option<Arc<DbUrl>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.gate.close();
    }
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
            .field("url", &self.inner.url)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The read replicas' router, when replicas are configured.
    pub(crate) fn router(&self) -> Option<&crate::replica::Router> {
        self.inner.replicas.as_deref()
    }

    /// Creates the engine for `settings` without opening any connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL or the pool knobs are unusable (see [`DbUrl::validate`] and
    /// [`PoolConfig::validate`]).
    pub fn new(settings: Settings) -> Result<Self> {
        let Settings {
            url,
            pool: config,
            replicas,
            migration_url,
        } = settings;
        url.validate()?;
        config.validate()?;
        if let Some(migration_url) = &migration_url {
            migration_url.validate()?;
        }
        let replicas = crate::replica::Router::start(&replicas, &config)?;
        let gate = Arc::new(Gate::new(&config));
        let manager = Manager::new(url.clone(), config.clone(), gate.clone());
        // r2d2 keeps the idle connections; `min_idle` at the maximum keeps a connect call
        // outstanding for every connection not yet open, each waiting for a checkout's ticket
        // (see `manager`). No reaper: `keeper` closes overflow connections.
        let pool = r2d2::Pool::builder()
            .max_size(config.max_connections())
            .min_idle(None)
            .idle_timeout(None)
            .max_lifetime(None)
            .connection_timeout(config.pool_timeout)
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .event_handler(Box::new(watch::PoolEvents {
                echo_pool: config.echo_pool,
            }))
            .build_unchecked(manager);
        let inner = Arc::new(Inner {
            pool,
            url,
            config,
            gate,
            invalidation: Arc::new(Invalidation::new()),
            replicas,
            migration_url: migration_url.map(Arc::new),
        });
        if inner.gate.needs_keeper() {
            keeper::spawn(&inner);
        }
        Ok(Database { inner })
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
        &self.inner.url
    }

    /// The backend this engine connects to.
    pub fn backend(&self) -> Backend {
        self.inner.url.backend()
    }

    /// The pool knobs in force.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Checks a connection out for a scope: the seed's `with session_pool() as session`.
    ///
    /// The connection goes back to the pool when the [`Session`] is dropped. With
    /// `leak_detection_threshold` set, the caller's location is what a leak warning names.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] with the server's message as soon as the connect made for this
    /// checkout fails; [`Error::PoolTimeout`] when `pool_size + max_overflow` connections stay
    /// checked out for `pool_timeout`.
    #[track_caller]
    pub fn session(&self) -> Result<Session> {
        let location = Location::caller();
        let deadline = Instant::now()
            .checked_add(self.inner.config.pool_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        loop {
            let mut session = self.checkout(deadline, location)?;
            if self.usable(&mut session) {
                return Ok(session);
            }
            session.discard();
        }
    }

    /// Waits in the gate, then pops the reserved idle connection from r2d2.
    fn checkout(&self, deadline: Instant, location: &'static Location<'static>) -> Result<Session> {
        let inner = &self.inner;
        match inner.gate.acquire(deadline) {
            Ok(gate::Grant::Idle) => {}
            Err(Refusal::Connect(message)) => return Err(connect_error(&inner.url, message)),
            Err(Refusal::Timeout {
                open,
                checked_out,
                pending,
            }) => {
                tracing::warn!(target: "userbase::pool", open, checked_out, pending, "checkout timed out");
                return Err(self.pool_timeout(open, checked_out, pending));
            }
        }
        let Some(conn) = keeper::pop_reserved(&inner.pool, inner.config.pool_timeout) else {
            // Unreachable by the gate's bookkeeping; give the reservation back as closed.
            inner.gate.discarded(1);
            let (open, _, checked_out) = inner.gate.figures();
            return Err(self.pool_timeout(open, checked_out, 0));
        };
        let lease = inner.gate.lease(location);
        Ok(Session::new(
            conn,
            inner.gate.clone(),
            inner.invalidation.clone(),
            inner.config.clone(),
            lease,
        ))
    }

    fn pool_timeout(&self, open: u32, checked_out: u32, pending: u32) -> Error {
        let config = &self.inner.config;
        Error::PoolTimeout {
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
            timeout: config.pool_timeout,
            open,
            checked_out,
            pending,
        }
    }

    /// Checkout-time validation, in the caller's thread: invalidation, recycle, pre-ping.
    fn usable(&self, session: &mut Session) -> bool {
        let config = &self.inner.config;
        let now = Instant::now();
        let pooled = session.pooled();
        if self.inner.invalidation.is_invalidated(pooled.created) {
            self.pool_event("replacing a connection invalidated earlier");
            return false;
        }
        if let Some(recycle) = config.pool_recycle {
            if now.duration_since(pooled.created) >= recycle {
                self.pool_event("recycle: replacing a connection older than pool_recycle");
                return false;
            }
        }
        if config.pre_ping && now.duration_since(pooled.last_used) >= config.pre_ping_bypass {
            if let Err(error) = pooled.ping() {
                self.inner.invalidation.invalidate();
                tracing::warn!(target: "userbase::pool", %error, "pre-ping failed: invalidating the pool's older connections");
                return false;
            }
        }
        pooled.last_used = now;
        true
    }

    fn pool_event(&self, event: &'static str) {
        if self.inner.config.echo_pool {
            tracing::debug!(target: "userbase::pool", "{event}");
        }
    }

    /// Checks the server answers: checks a connection out and pings it, always (no bypass
    /// window). When the ping fails, the pool's older connections are invalidated and a fresh
    /// connection is tried, so a server that is down gives its connect error.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] with the server's message (refused, bad password, unknown database);
    /// [`Error::Query`] when a fresh connection fails its ping too.
    #[track_caller]
    pub fn check(&self) -> Result<()> {
        let mut session = self.session()?;
        if session.pooled().ping().is_ok() {
            return Ok(());
        }
        session.discard();
        self.inner.invalidation.invalidate();
        let mut fresh = self.session()?;
        match fresh.pooled().ping() {
            Ok(()) => Ok(()),
            Err(error) => {
                fresh.discard();
                Err(Error::from(error))
            }
        }
    }

    /// The pool's figures: the seed's `engine.pool.status()`.
    pub fn status(&self) -> PoolStatus {
        let (open, idle, checked_out) = self.inner.gate.figures();
        let config = &self.inner.config;
        PoolStatus {
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
            open,
            idle,
            checked_out,
            overflow: i64::from(open) - i64::from(config.pool_size),
        }
    }

    /// Closes every idle connection now, and every checked-out one when it is returned; later
    /// checkouts open fresh connections (the seed's `engine.dispose()`).
    pub fn dispose(&self) {
        self.inner.invalidation.invalidate();
        let count = self.inner.gate.reserve_all_idle();
        keeper::close_reserved(&self.inner.pool, &self.inner.gate, count);
        self.pool_event("dispose: idle connections closed");
    }

    /// Runs `f` in a transaction on a fresh session: commits when it returns `Ok`, rolls back
    /// when it returns `Err` (or panics).
    ///
    /// # Errors
    ///
    /// `f`'s own error, or a checkout/commit failure converted into `E`.
    #[track_caller]
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
    #[track_caller]
    pub fn run_pending_migrations(&self) -> Result<Vec<String>> {
        crate::replica::run_migrations(self, self.inner.migration_url.as_deref())
    }
}

/// Caller SQL is about to run on `conn` (`Repo::load_sql`): the pool watches its statements for
/// transaction control, so a transaction it opens is rolled back at check-in.
pub(crate) fn expect_raw_sql(conn: &mut crate::connection::AnyConnection) {
    use diesel::Connection;
    if let Some(watch) = conn.instrumentation().downcast_mut::<Watch>() {
        watch.expect_raw_sql();
    }
}

/// Whether a statement on `conn` was refused as read-only (SQLSTATE 25006) since the last call.
pub(crate) fn took_read_only_refusal(conn: &mut crate::connection::AnyConnection) -> bool {
    use diesel::Connection;
    conn.instrumentation()
        .downcast_mut::<Watch>()
        .is_some_and(|watch| watch.take_read_only_refusal())
}
