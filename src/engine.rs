//! The engine: a lazily filled r2d2 pool of [`AnyConnection`]s, the seed's `create_engine`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use diesel::connection::{Connection, Instrumentation, InstrumentationEvent};
use diesel::r2d2::R2D2Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::{Backend, DbUrl, PoolConfig, Settings};
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::session::Session;

/// The PostgreSQL migrations (`migrations/postgres`), compiled into the crate.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The SQLite migrations (`migrations/sqlite`), compiled into the crate.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// libpq `connect_timeout` (seconds) added to PostgreSQL URLs that do not set their own, so an
/// unreachable host cannot hang a checkout forever.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u32 = 10;

/// Key of the PostgreSQL advisory lock held while migrations run, so that two processes starting
/// at once do not both apply them.
const MIGRATION_LOCK_KEY: i64 = 0x7573_6572_6261_7365; // "userbase"

/// The r2d2 connection manager: opens the backend the URL names and keeps the real connect error.
pub(crate) struct Manager {
    url: DbUrl,
    /// What the driver is given (with the password); never printed.
    target: String,
    echo: bool,
    /// The latest connect failure, shared with the [`Database`] whose checkouts return it.
    last_error: LastConnectError,
    /// For `sqlite::memory:`, a connection held for the pool's lifetime: the in-memory database
    /// lives as long as one connection to it is open. Opened with the first pooled connection.
    memory_keeper: Mutex<Option<AnyConnection>>,
}

impl std::fmt::Debug for Manager {
    /// Shows the redacted URL; `target` holds the password and is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("url", &self.url)
            .field("echo", &self.echo)
            .finish_non_exhaustive()
    }
}

/// Names the in-memory databases of this process apart.
static MEMORY_DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The latest connect failure and when it happened: r2d2 connects on its own threads and keeps
/// only a string, so the manager records the real error here for the waiting checkout.
#[derive(Debug, Clone, Default)]
struct LastConnectError(Arc<Mutex<Option<(Instant, String)>>>);

impl LastConnectError {
    fn record(&self, error: Option<String>) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = error.map(|message| (Instant::now(), message));
    }

    /// The error recorded at or after `since`, if any.
    fn since(&self, since: Instant) -> Option<String> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, message)| message.clone())
    }
}

impl Manager {
    fn new(url: DbUrl, echo: bool, last_error: LastConnectError) -> Self {
        let target = match url.backend() {
            Backend::Postgres => {
                let mut with_defaults = url.clone();
                if with_defaults.query_value("connect_timeout").is_none() {
                    with_defaults = with_defaults.with_query_param(
                        "connect_timeout",
                        DEFAULT_CONNECT_TIMEOUT_SECS.to_string(),
                    );
                }
                with_defaults.render(false)
            }
            // `memdb` with a name starting with `/` is one database shared by every connection of
            // the process (unlike plain `:memory:`, one per connection), with normal locking.
            Backend::Sqlite if url.is_memory() => format!(
                "file:/userbase-{}-{}?vfs=memdb",
                std::process::id(),
                MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed)
            ),
            Backend::Sqlite => url.database().unwrap_or_default().to_owned(),
        };
        Manager {
            url,
            target,
            echo,
            last_error,
            memory_keeper: Mutex::new(None),
        }
    }

    /// Opens the keeper connection of an in-memory database, once.
    fn keep_memory_alive(&self) -> Result<()> {
        if !self.url.is_memory() {
            return Ok(());
        }
        let mut keeper = self
            .memory_keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if keeper.is_none() {
            let conn = AnyConnection::open(Backend::Sqlite, &self.target)
                .map_err(|e| connect_error(&self.url, e.to_string()))?;
            *keeper = Some(conn);
        }
        Ok(())
    }
}

fn connect_error(url: &DbUrl, message: String) -> Error {
    Error::Connect {
        url: url.to_string(),
        message,
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = Error;

    fn connect(&self) -> Result<AnyConnection> {
        self.keep_memory_alive()?;
        match AnyConnection::open(self.url.backend(), &self.target) {
            Ok(mut conn) => {
                self.last_error.record(None);
                if self.echo {
                    conn.set_instrumentation(Echo::default());
                }
                Ok(conn)
            }
            Err(e) => {
                let message = e.to_string().trim().to_owned();
                self.last_error.record(Some(message.clone()));
                Err(connect_error(&self.url, message))
            }
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<()> {
        conn.ping().map_err(Error::from)
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        conn.is_broken()
    }
}

/// Logs pool-side connect failures through `tracing` (r2d2's default handler uses `log`).
#[derive(Debug)]
struct TracingErrorHandler;

impl r2d2::HandleError<Error> for TracingErrorHandler {
    fn handle_error(&self, error: Error) {
        tracing::warn!(target: "userbase::pool", %error, "connection attempt failed");
    }
}

/// Statement logging for `echo`: SQL with its bind values, duration, and error.
#[derive(Debug, Default)]
struct Echo {
    started: Option<Instant>,
}

impl Instrumentation for Echo {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { .. } => self.started = Some(Instant::now()),
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                let elapsed = self.started.take().map(|s| s.elapsed()).unwrap_or_default();
                match error {
                    None => tracing::info!(target: "userbase::sql", ?elapsed, "{query}"),
                    Some(error) => {
                        tracing::warn!(target: "userbase::sql", ?elapsed, %error, "{query}")
                    }
                }
            }
            _ => {}
        }
    }
}

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
    last_error: LastConnectError,
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
        let Settings { url, pool: config } = settings;
        config.validate()?;
        let last_error = LastConnectError::default();
        let manager = Manager::new(url.clone(), config.echo, last_error.clone());
        let pool = r2d2::Pool::builder()
            .max_size(config.max_connections())
            .min_idle(Some(0))
            .idle_timeout(None)
            .max_lifetime(config.pool_recycle)
            .connection_timeout(config.pool_timeout)
            .test_on_check_out(config.pre_ping)
            .error_handler(Box::new(TracingErrorHandler))
            .build_unchecked(manager);
        Ok(Database {
            pool,
            url,
            config,
            last_error,
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
    /// [`Error::Connect`] with the server's message when no connection could be made within
    /// `pool_timeout` because connecting failed; [`Error::PoolTimeout`] when every connection
    /// stayed busy for `pool_timeout`.
    pub fn session(&self) -> Result<Session> {
        let started = Instant::now();
        // One blocking wait: r2d2 asks for a new connection on every `get` call, so polling in
        // slices would open extra connections while the first one is still being made.
        match self.pool.get_timeout(self.config.pool_timeout) {
            Ok(conn) => Ok(Session::new(conn)),
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
        self.session()?.transaction(f)
    }

    /// Applies the embedded migrations that are not applied yet, returning their versions.
    ///
    /// On PostgreSQL an advisory lock makes concurrent callers wait for each other.
    ///
    /// # Errors
    ///
    /// [`Error::Migration`] when a migration fails (it is rolled back), or a checkout error.
    pub fn run_pending_migrations(&self) -> Result<Vec<String>> {
        let mut session = self.session()?;
        run_migrations(session.connection())
    }
}

/// Applies the embedded migrations of `conn`'s backend.
pub(crate) fn run_migrations(conn: &mut AnyConnection) -> Result<Vec<String>> {
    let migration_error =
        |e: Box<dyn std::error::Error + Send + Sync>| Error::Migration(e.to_string());
    let versions = match conn {
        AnyConnection::Pg(pg) => {
            use diesel::connection::SimpleConnection;
            pg.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
            let applied = pg
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>());
            pg.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
            applied.map_err(migration_error)?
        }
        AnyConnection::Sqlite(sqlite) => sqlite
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect())
            .map_err(migration_error)?,
    };
    Ok(versions)
}
