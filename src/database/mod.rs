//! The public façade: [`Database`] builds the pool ([`crate::engine`]), hands out
//! [`Session`]s, runs transactions and migrations (here), retries transactions the database
//! aborted (`retry`), and routes reads to replicas ([`replica`]): every `impl Database` is under
//! this folder.
//!
//! The top of the crate: it imports the layers below (engine, session, transaction, repo) and
//! none of them imports it.

pub mod replica;
mod retry;

use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::retry::RetryPolicy;
use crate::config::{Backend, DbUrl, PoolConfig, Settings};
use crate::engine::{Pool, PoolStatus};
use crate::error::{Error, Result};
use crate::metrics::{PoolMetrics, Telemetry};
use crate::repo::Repo;
use crate::session::Session;

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
struct Inner {
    pool: Pool,
    /// Read replicas and read-your-writes state (see [`replica`]); `None`: none.
    replicas: Option<Arc<replica::Router>>,
    /// Where migrations run, when not the pool's URL.
    migration_url: Option<Arc<DbUrl>>,
    /// Whether the pool is behind a transaction pooler (then the statement cache goes off and
    /// statements outside a transaction run in one of their own), once per pool.
    pooler: replica::PoolerCheck,
}

impl AsRef<Pool> for Inner {
    fn as_ref(&self) -> &Pool {
        &self.pool
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.pool().url)
            .field("config", &self.pool().config)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The read replicas' router, when replicas are configured.
    pub(crate) fn router(&self) -> Option<&replica::Router> {
        self.inner.replicas.as_deref()
    }

    /// The pool's parts.
    fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Creates the engine for `settings` without opening any connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the pool knobs are unusable (see [`PoolConfig::validate`]) or the
    /// replica settings are (see
    /// [`ReplicaConfig::validate`](crate::config::ReplicaConfig::validate): a replica URL that is
    /// not a PostgreSQL URL, …). Every [`DbUrl`] is valid already (its builder methods and
    /// [`DbUrl::parse`] refuse what is not).
    pub fn new(settings: Settings) -> Result<Self> {
        let Settings {
            url,
            pool: config,
            replicas,
            migration_url,
        } = settings;
        config.validate()?;
        let replicas = replica::Router::start(&replicas, &config)?;
        let instruments = PoolMetrics::new(&crate::metrics::pool_name(&url, &config), &config);
        let telemetry = Arc::new(Telemetry::new(&url, &config));
        let inner = Arc::new(Inner {
            pool: Pool::new(url, config, Box::new(instruments), telemetry),
            replicas,
            migration_url: migration_url.map(Arc::new),
            pooler: replica::PoolerCheck::default(),
        });
        Pool::start_keeper(&inner);
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
        &self.pool().url
    }

    /// The backend this engine connects to.
    pub fn backend(&self) -> Backend {
        self.pool().url.backend()
    }

    /// The pool knobs in force.
    pub fn config(&self) -> &PoolConfig {
        &self.pool().config
    }

    /// Checks a connection out for a scope: the tutorial's `with session_pool() as session`
    /// (a SQLAlchemy `sessionmaker`).
    ///
    /// The connection goes back to the pool when the [`Session`] is dropped. With
    /// `leak_detection_threshold` set, the caller's location is what a leak warning names.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] with the server's message as soon as the connect made for this
    /// checkout fails; [`Error::ConnectTimeout`] when a connect that would serve it still has no
    /// answer after `pool_timeout` (it goes on, and serves a later checkout if it succeeds);
    /// [`Error::PoolTimeout`] when `pool_size + max_overflow` connections stay checked out for
    /// `pool_timeout`. The whole checkout is bounded by
    /// `pool_timeout`, except the pre-ping of an idle connection, which libpq's TCP timeouts
    /// bound.
    #[track_caller]
    pub fn session(&self) -> Result<Session> {
        let location = Location::caller();
        let started = Instant::now();
        let deadline = started
            .checked_add(self.pool().config.pool_timeout)
            .unwrap_or_else(|| started + Duration::from_secs(86_400 * 365));
        let mut now = started;
        loop {
            let pool = self.pool();
            let conn = pool.checkout(now, deadline)?;
            now = Instant::now();
            let mut session = Session::new(
                conn,
                pool.gate.clone(),
                pool.invalidation.clone(),
                &pool.config,
                pool.lease(location),
                now,
            );
            if pool.validate(session.pooled(), now) {
                // Behind a pooler sharing server connections, the statement cache goes off and
                // the deadlines bound statements outside a transaction too.
                let pooler = &self.inner.pooler;
                pooler.apply(
                    self.url(),
                    self.config(),
                    session.repo_connection(),
                    deadline,
                );
                pool.gate
                    .observer()
                    .waited(now.saturating_duration_since(started));
                return Ok(session);
            }
            session.discard();
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
        self.pool().invalidation.invalidate();
        let mut fresh = self.session()?;
        match fresh.pooled().ping() {
            Ok(()) => Ok(()),
            Err(error) => {
                fresh.discard();
                Err(Error::from(error))
            }
        }
    }

    /// The pool's figures: SQLAlchemy's `engine.pool.status()`.
    pub fn status(&self) -> PoolStatus {
        let figures = self.pool().gate.figures();
        let config = &self.pool().config;
        PoolStatus {
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
            open: figures.open,
            idle: figures.idle,
            checked_out: figures.checked_out,
            overflow: i64::from(figures.open) - i64::from(config.pool_size),
        }
    }

    /// Closes every idle connection now, and every checked-out one when it is returned; later
    /// checkouts open fresh connections (SQLAlchemy's `engine.dispose()`).
    pub fn dispose(&self) {
        self.pool().invalidation.invalidate();
        self.pool().close_idle();
        self.pool().event("dispose: idle connections closed");
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
        // `f` in a transaction, then the replicas' bookkeeping (the commit's WAL position).
        let isolation = crate::transaction::Isolation::Default;
        replica::transaction(self, session.repo_connection(), isolation, f)
    }

    /// Applies the embedded migrations that are not applied yet, returning their versions.
    ///
    /// Concurrent callers, in this process or others, wait for each other: on PostgreSQL
    /// through an advisory lock, on SQLite through an exclusive transaction. They run through
    /// [`Settings::migration_url`] when set (a connection of their own), else on the primary.
    ///
    /// On PostgreSQL each migration runs with a short `lock_timeout` and is retried with backoff
    /// when it fires, so that a migration waiting behind a long transaction never makes every
    /// other query of its table queue behind its lock request (see [`crate::migrate`]).
    ///
    /// # Errors
    ///
    /// [`Error::MigrationLockTimeout`] naming the migration whose locks stayed taken through
    /// every attempt; [`Error::Migration`] when a migration fails (it is rolled back), or a
    /// checkout error;
    /// [`Error::Config`] when the connection goes through a pooler such as pgbouncer (its
    /// session advisory lock would not hold): set [`Settings::migration_url`].
    #[track_caller]
    pub fn run_pending_migrations(&self) -> Result<Vec<String>> {
        replica::run_migrations(self, self.inner.migration_url.as_deref())
    }
}
