//! [`PoolConfig`]: the engine's pool knobs, their defaults and their bounds.

use std::time::Duration;

use super::knobs::{
    check_connections, Source, DEFAULT_MAX_OVERFLOW, DEFAULT_OVERFLOW_IDLE_TIMEOUT,
    DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, DEFAULT_PRE_PING, DEFAULT_PRE_PING_BYPASS, ECHO,
    ECHO_POOL, HIDE_PARAMETERS, IDLE_IN_TRANSACTION_TIMEOUT, LEAK_DETECTION, LOCK_TIMEOUT,
    OPERATION_METRICS, OVERFLOW_IDLE_TIMEOUT, POOL_RECYCLE, POOL_TIMEOUT, PRE_PING_BYPASS,
    STATEMENT_CACHE, STATEMENT_TIMEOUT,
};
#[cfg(doc)]
use super::knobs::{MAX_CONNECTIONS, MAX_DURATION};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;

/// The engine's pool knobs: SQLAlchemy's `create_engine(pool_size=…, max_overflow=…, …)`.
///
/// Every field names its default and its bounds; `PoolConfig::default()` gives the defaults, and
/// the `with_*` setters change one knob each (prefer them to struct literals: fields may be
/// added). [`validate`](PoolConfig::validate) checks the bounds; [`Database::new`](crate::Database::new)
/// calls it.
///
/// ```
/// use std::time::Duration;
/// use userbase::PoolConfig;
///
/// let pool = PoolConfig::default()
///     .with_pool_size(2)
///     .with_max_overflow(8)
///     .with_pool_timeout(Duration::from_secs(5));
/// pool.validate()?;
/// assert_eq!(pool.max_connections(), 10);
/// # Ok::<(), userbase::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Connections kept open once made. Default [`DEFAULT_POOL_SIZE`]; 0 to
    /// [`MAX_CONNECTIONS`] (env `DB_POOL_SIZE`).
    ///
    /// `0` keeps no connection idle: every connection is overflow, closed once idle for
    /// `overflow_idle_timeout`, and `max_overflow` must then be at least 1. (SQLAlchemy's
    /// `pool_size=0` means "no limit"; here the limit is always `pool_size + max_overflow`.)
    pub pool_size: u32,
    /// Connections allowed above `pool_size` under load; at most `pool_size + max_overflow` are
    /// open at once. Default [`DEFAULT_MAX_OVERFLOW`]; 0 to [`MAX_CONNECTIONS`], with
    /// `pool_size + max_overflow` at most [`MAX_CONNECTIONS`] and at least 1 (env
    /// `DB_MAX_OVERFLOW`).
    pub max_overflow: u32,
    /// How long a whole checkout may take: waiting for a free connection, and for a connect
    /// made for it ([`Error::PoolTimeout`] when every slot stayed in use,
    /// [`Error::ConnectTimeout`] when a connect had no answer yet; the pre-ping of an idle
    /// connection is bounded by libpq's TCP timeouts instead).
    /// Default [`DEFAULT_POOL_TIMEOUT`]; above 0, at most [`MAX_DURATION`] (env
    /// `DB_POOL_TIMEOUT_SECS`).
    pub pool_timeout: Duration,
    /// Replace connections older than this. Default `None`: never (SQLAlchemy's
    /// `pool_recycle=-1`); `Some` above 0, at most [`MAX_DURATION`] (env `DB_POOL_RECYCLE_SECS`).
    pub pool_recycle: Option<Duration>,
    /// Test a connection before handing it out. Default [`DEFAULT_PRE_PING`] (env
    /// `DB_PRE_PING`).
    pub pre_ping: bool,
    /// With `pre_ping`, skip the ping for a connection that was in use this recently.
    /// Default [`DEFAULT_PRE_PING_BYPASS`]; 0 (ping on every checkout) to
    /// [`MAX_DURATION`] (env `DB_PRE_PING_BYPASS_MS`).
    pub pre_ping_bypass: Duration,
    /// Log every statement with its bind values, duration and error through `tracing`
    /// (target `userbase::sql`, level INFO; errors at WARN). Default `false` (env `DB_ECHO`).
    pub echo: bool,
    /// With `echo`, leave the bind values out of the log (SQLAlchemy's `hide_parameters`).
    /// Default `false` (env `DB_HIDE_PARAMETERS`).
    pub hide_parameters: bool,
    /// Log pool events through `tracing` (target `userbase::pool`, level DEBUG): checkouts,
    /// check-ins, overflow discards, recycles, invalidations (SQLAlchemy's `echo_pool`).
    /// Default `false` (env `DB_ECHO_POOL`).
    pub echo_pool: bool,
    /// Time every public [`Repo`](crate::Repo) call for `db.client.operation.duration` (the
    /// README's "Metrics and spans"): two clock reads and one histogram sample per call, about 2 %
    /// of the instructions of an SQLite point read (1 % of a PostgreSQL one) whether or not a
    /// recorder is installed (the `metrics` facade cannot tell). `false` leaves that instrument
    /// out and the calls untimed; the pool's own instruments, the retry counters and the spans
    /// (when a subscriber wants them) stay. Default `true` (env `DB_OPERATION_METRICS`).
    pub operation_metrics: bool,
    /// A connection above `pool_size` is closed once it has been idle this long; 0 closes it the
    /// moment it comes back (SQLAlchemy's overflow behaviour), which reconnects constantly under
    /// a load just above `pool_size`. Default [`DEFAULT_OVERFLOW_IDLE_TIMEOUT`]; 0 to
    /// [`MAX_DURATION`] (env `DB_OVERFLOW_IDLE_TIMEOUT_MS`, milliseconds).
    pub overflow_idle_timeout: Duration,
    /// Warn (through `tracing`, naming where the session was checked out) when a session is held
    /// longer than this: HikariCP's `leakDetectionThreshold`. Default `None`: off; `Some` above
    /// 0, at most [`MAX_DURATION`] (env `DB_LEAK_DETECTION_MS`, milliseconds; unset or 0: off).
    pub leak_detection_threshold: Option<Duration>,
    /// Keep diesel's prepared-statement cache on PostgreSQL connections (statements named
    /// `__diesel_stmt_N`, prepared once per connection). Turn it off behind pgbouncer in
    /// transaction mode (before 1.21), where two clients sharing a server connection collide on
    /// those names ("prepared statement … already exists"): statements are then sent unnamed,
    /// parse, bind and execute in one round trip. No effect on SQLite. Default `true` (env
    /// `DB_STATEMENT_CACHE`).
    pub statement_cache: bool,

    // Deadlines and SQLite durability: kept together (see `crate::connection` for how each is
    // applied). Behind pgbouncer in transaction mode the deadlines hold too: each Repo statement
    // outside a transaction then runs in one of its own (see `statement_timeout`).
    /// PostgreSQL's `statement_timeout`: a statement running longer is cancelled with
    /// [`Error::StatementTimeout`]. Default `None`: the server's own setting (unbounded unless
    /// the server or role sets one); `Some(0)`: no limit; at most [`MAX_DURATION`], whole
    /// milliseconds (env `DB_STATEMENT_TIMEOUT_MS`). No effect on SQLite, which cannot bound a
    /// statement's running time. One call may run longer with
    /// [`Repo::with_statement_timeout`](crate::Repo::with_statement_timeout).
    ///
    /// The three deadlines (this one, `lock_timeout` and `idle_in_transaction_timeout`) are set
    /// on each new connection and again as `SET LOCAL`s with the `BEGIN` of every transaction.
    /// Behind a pooler that shares server connections between transactions (pgbouncer's
    /// `pool_mode = transaction`, which drops session settings), found by the pool at its first
    /// checkout, every Repo statement outside a transaction runs in a transaction of its own
    /// begun with them: two more round trips per such statement, there only (nothing changes
    /// on a direct connection or behind a session pooler).
    pub statement_timeout: Option<Duration>,
    /// How long a statement waits for a lock before giving up with [`Error::LockTimeout`]:
    /// PostgreSQL's `lock_timeout`; on SQLite, `busy_timeout` (how long a writer waits for the
    /// database's write lock; it then fails with [`Error::SerializationFailure`]). Default
    /// `None`: the server's own setting on PostgreSQL (no limit by default),
    /// [`DEFAULT_SQLITE_BUSY_TIMEOUT`](super::DEFAULT_SQLITE_BUSY_TIMEOUT) on SQLite;
    /// `Some(0)`: no limit on PostgreSQL, no wait at all on SQLite; at most [`MAX_DURATION`],
    /// whole milliseconds (env `DB_LOCK_TIMEOUT_MS`). Holds behind pgbouncer in transaction
    /// mode as [`statement_timeout`](PoolConfig::statement_timeout) says.
    pub lock_timeout: Option<Duration>,
    /// PostgreSQL's `idle_in_transaction_session_timeout`: the server closes a connection whose
    /// transaction stays open without a statement this long (its locks are released; the pool
    /// replaces the connection). Default `None`: the server's own setting; `Some(0)`: no limit;
    /// at most [`MAX_DURATION`], whole milliseconds (env `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`).
    /// No effect on SQLite. Holds behind pgbouncer in transaction mode as
    /// [`statement_timeout`](PoolConfig::statement_timeout) says.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// SQLite's `synchronous` pragma. Default [`SqliteSynchronous::Normal`]: with WAL, a crash
    /// of the process never loses a committed transaction, but a power loss or an operating
    /// system crash may lose the last ones (never corrupts the file);
    /// [`SqliteSynchronous::Full`] syncs the WAL at every commit, so those survive too, at the
    /// cost of one `fsync` per commit (env `DB_SQLITE_SYNCHRONOUS`: `normal` or `full`). No
    /// effect on PostgreSQL.
    pub sqlite_synchronous: SqliteSynchronous,

    /// The pool's name in its metrics (`db.client.connection.pool.name`, see the README's
    /// metrics section). Default `None`: `host:port/database` of the URL, never the user or the
    /// password (SQLite: the file name). Each replica pool is named `<name>-replica-<index>` (by
    /// default its own URL's `host:port/database`). Give every `Database` of a process its own
    /// name; a blank name counts as unset (env `DB_POOL_NAME`).
    pub pool_name: Option<String>,
}

/// SQLite's `synchronous` setting: how hard a commit waits for the disk (see
/// [`PoolConfig::sqlite_synchronous`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqliteSynchronous {
    /// `NORMAL` (the default): with WAL, committed transactions survive a crash of the
    /// process; the last ones may be lost on a power loss.
    #[default]
    Normal,
    /// `FULL`: every commit is synced to disk before it returns; survives a power loss.
    Full,
}

impl SqliteSynchronous {
    /// Every setting, as `DB_SQLITE_SYNCHRONOUS` lists them.
    pub(crate) const ALL: [SqliteSynchronous; 2] =
        [SqliteSynchronous::Normal, SqliteSynchronous::Full];

    /// The pragma's value: `NORMAL` or `FULL`.
    pub fn as_sql(self) -> &'static str {
        match self {
            SqliteSynchronous::Normal => "NORMAL",
            SqliteSynchronous::Full => "FULL",
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            pool_size: DEFAULT_POOL_SIZE,
            max_overflow: DEFAULT_MAX_OVERFLOW,
            pool_timeout: DEFAULT_POOL_TIMEOUT,
            pool_recycle: POOL_RECYCLE.default_duration(),
            pre_ping: DEFAULT_PRE_PING,
            pre_ping_bypass: DEFAULT_PRE_PING_BYPASS,
            echo: ECHO.default_flag(),
            hide_parameters: HIDE_PARAMETERS.default_flag(),
            echo_pool: ECHO_POOL.default_flag(),
            operation_metrics: OPERATION_METRICS.default_flag(),
            overflow_idle_timeout: DEFAULT_OVERFLOW_IDLE_TIMEOUT,
            leak_detection_threshold: LEAK_DETECTION.default_duration(),
            statement_cache: STATEMENT_CACHE.default_flag(),
            statement_timeout: STATEMENT_TIMEOUT.default_duration(),
            lock_timeout: LOCK_TIMEOUT.default_duration(),
            idle_in_transaction_timeout: IDLE_IN_TRANSACTION_TIMEOUT.default_duration(),
            sqlite_synchronous: SqliteSynchronous::default(),

            pool_name: None,
        }
    }
}

impl PoolConfig {
    /// Sets [`pool_size`](PoolConfig::pool_size) (its default and bounds are there).
    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets [`max_overflow`](PoolConfig::max_overflow) (its default and bounds are there).
    pub fn with_max_overflow(mut self, max_overflow: u32) -> Self {
        self.max_overflow = max_overflow;
        self
    }

    /// Sets [`pool_timeout`](PoolConfig::pool_timeout) (its default and bounds are there).
    pub fn with_pool_timeout(mut self, pool_timeout: Duration) -> Self {
        self.pool_timeout = pool_timeout;
        self
    }

    /// Sets [`pool_recycle`](PoolConfig::pool_recycle) (its default and bounds are there).
    pub fn with_pool_recycle(mut self, pool_recycle: Option<Duration>) -> Self {
        self.pool_recycle = pool_recycle;
        self
    }

    /// Sets [`pre_ping`](PoolConfig::pre_ping) (its default and bounds are there).
    pub fn with_pre_ping(mut self, pre_ping: bool) -> Self {
        self.pre_ping = pre_ping;
        self
    }

    /// Sets [`pre_ping_bypass`](PoolConfig::pre_ping_bypass) (its default and bounds are there).
    pub fn with_pre_ping_bypass(mut self, pre_ping_bypass: Duration) -> Self {
        self.pre_ping_bypass = pre_ping_bypass;
        self
    }

    /// Sets [`echo`](PoolConfig::echo) (its default and bounds are there).
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Sets [`hide_parameters`](PoolConfig::hide_parameters) (its default and bounds are there).
    pub fn with_hide_parameters(mut self, hide_parameters: bool) -> Self {
        self.hide_parameters = hide_parameters;
        self
    }

    /// Sets [`echo_pool`](PoolConfig::echo_pool) (its default and bounds are there).
    pub fn with_echo_pool(mut self, echo_pool: bool) -> Self {
        self.echo_pool = echo_pool;
        self
    }

    /// Sets [`operation_metrics`](PoolConfig::operation_metrics) (its default is there).
    pub fn with_operation_metrics(mut self, operation_metrics: bool) -> Self {
        self.operation_metrics = operation_metrics;
        self
    }

    /// Sets [`overflow_idle_timeout`](PoolConfig::overflow_idle_timeout) (its default and bounds are there).
    pub fn with_overflow_idle_timeout(mut self, overflow_idle_timeout: Duration) -> Self {
        self.overflow_idle_timeout = overflow_idle_timeout;
        self
    }

    /// Sets [`leak_detection_threshold`](PoolConfig::leak_detection_threshold) (its default and bounds are there).
    pub fn with_leak_detection_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.leak_detection_threshold = threshold;
        self
    }

    /// Sets [`statement_cache`](PoolConfig::statement_cache) (its default and bounds are there).
    pub fn with_statement_cache(mut self, statement_cache: bool) -> Self {
        self.statement_cache = statement_cache;
        self
    }

    /// Sets [`statement_timeout`](PoolConfig::statement_timeout) (its default and bounds are there).
    pub fn with_statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`lock_timeout`](PoolConfig::lock_timeout) (its default and bounds are there).
    pub fn with_lock_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Sets [`idle_in_transaction_timeout`](PoolConfig::idle_in_transaction_timeout) (its default and bounds are there).
    pub fn with_idle_in_transaction_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// Sets [`sqlite_synchronous`](PoolConfig::sqlite_synchronous) (its default and bounds are there).
    pub fn with_sqlite_synchronous(mut self, synchronous: SqliteSynchronous) -> Self {
        self.sqlite_synchronous = synchronous;
        self
    }

    /// Sets `pool_name`, the `db.client.connection.pool.name` of the pool's metrics (default
    /// `None`: `host:port/database`, or the SQLite file name).
    pub fn with_pool_name(mut self, pool_name: impl Into<String>) -> Self {
        self.pool_name = Some(pool_name.into());
        self
    }

    /// The most connections open at once: `pool_size + max_overflow`.
    pub fn max_connections(&self) -> u32 {
        self.pool_size.saturating_add(self.max_overflow)
    }

    /// Checks every knob against its bounds (named on each field).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] whose `variable` names the field (`PoolConfig::pool_size`, …) and whose
    /// message states the allowed range: a size above [`MAX_CONNECTIONS`], `pool_size +
    /// max_overflow` of 0 or above [`MAX_CONNECTIONS`], a zero `pool_timeout`, `pool_recycle` or
    /// `leak_detection_threshold`, any duration above [`MAX_DURATION`], or a deadline
    /// (`statement_timeout`, `lock_timeout`, `idle_in_transaction_timeout`) that is not a whole
    /// number of milliseconds.
    pub fn validate(&self) -> Result<()> {
        self.check(Source::Code)
    }

    pub(crate) fn check(&self, source: Source) -> Result<()> {
        check_connections(self.pool_size, self.max_overflow, source)?;
        POOL_TIMEOUT.check_duration(self.pool_timeout, source)?;
        POOL_RECYCLE.check_optional(self.pool_recycle, source)?;
        PRE_PING_BYPASS.check_duration(self.pre_ping_bypass, source)?;
        OVERFLOW_IDLE_TIMEOUT.check_duration(self.overflow_idle_timeout, source)?;
        LEAK_DETECTION.check_optional(self.leak_detection_threshold, source)?;
        STATEMENT_TIMEOUT.check_optional(self.statement_timeout, source)?;
        LOCK_TIMEOUT.check_optional(self.lock_timeout, source)?;
        IDLE_IN_TRANSACTION_TIMEOUT.check_optional(self.idle_in_transaction_timeout, source)
    }
}
