//! [`PoolConfig`]: the engine's pool knobs, their defaults and their bounds.

use std::time::Duration;

use crate::error::{Error, Result};

/// Default `pool_size`: connections kept open (SQLAlchemy's default).
pub const DEFAULT_POOL_SIZE: u32 = 5;
/// Default `max_overflow`: connections allowed above `pool_size` (SQLAlchemy's default).
pub const DEFAULT_MAX_OVERFLOW: u32 = 10;
/// Default `pool_timeout`: how long a checkout waits (SQLAlchemy's default, 30 s).
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `pre_ping`: test connections before handing them out.
pub const DEFAULT_PRE_PING: bool = true;
/// Default `pre_ping_bypass`: a connection used this recently is handed out without a ping
/// (HikariCP's "alive bypass window").
pub const DEFAULT_PRE_PING_BYPASS: Duration = Duration::from_millis(500);
/// Default `overflow_idle_timeout`: an overflow connection idle this long is closed.
///
/// 1 s: ten times the shortest value that showed no reconnects under a steady load just above
/// `pool_size` (16 threads on 5 + 10, see BENCHMARKS.md).
pub const DEFAULT_OVERFLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most connections one pool may allow: `pool_size + max_overflow` is at most 10 000.
///
/// r2d2 allocates room for `max_size` connections up front, so an absurd size aborts the
/// process (4 294 967 295 asks for about a terabyte); 10 000 is far above what one PostgreSQL
/// server accepts (`max_connections` defaults to 100).
pub const MAX_CONNECTIONS: u32 = 10_000;
/// The longest any duration knob may be: one day.
///
/// Every duration is added to an `Instant` somewhere (a checkout deadline, an idle or leak
/// deadline); bounding them keeps that addition from overflowing, and a wait longer than a day
/// is a configuration mistake rather than a wish.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

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
    /// Connections kept open once made. Default [`DEFAULT_POOL_SIZE`] (5); 0 to
    /// [`MAX_CONNECTIONS`] (env `DB_POOL_SIZE`).
    ///
    /// `0` keeps no connection idle: every connection is overflow, closed once idle for
    /// `overflow_idle_timeout`, and `max_overflow` must then be at least 1. (SQLAlchemy's
    /// `pool_size=0` means "no limit"; here the limit is always `pool_size + max_overflow`.)
    pub pool_size: u32,
    /// Connections allowed above `pool_size` under load; at most `pool_size + max_overflow` are
    /// open at once. Default [`DEFAULT_MAX_OVERFLOW`] (10); 0 to [`MAX_CONNECTIONS`], with
    /// `pool_size + max_overflow` at most [`MAX_CONNECTIONS`] and at least 1 (env
    /// `DB_MAX_OVERFLOW`).
    pub max_overflow: u32,
    /// How long a whole checkout may take: waiting for a free connection, and for a connect
    /// made for it ([`Error::PoolTimeout`] when every slot stayed in use,
    /// [`Error::ConnectTimeout`] when a connect had no answer yet; the pre-ping of an idle
    /// connection is bounded by libpq's TCP timeouts instead).
    /// Default [`DEFAULT_POOL_TIMEOUT`] (30 s); above 0, at most [`MAX_DURATION`] (env
    /// `DB_POOL_TIMEOUT_SECS`).
    pub pool_timeout: Duration,
    /// Replace connections older than this. Default `None`: never (SQLAlchemy's
    /// `pool_recycle=-1`); `Some` above 0, at most [`MAX_DURATION`] (env `DB_POOL_RECYCLE_SECS`).
    pub pool_recycle: Option<Duration>,
    /// Test a connection before handing it out. Default [`DEFAULT_PRE_PING`] (`true`) (env
    /// `DB_PRE_PING`).
    pub pre_ping: bool,
    /// With `pre_ping`, skip the ping for a connection that was in use this recently.
    /// Default [`DEFAULT_PRE_PING_BYPASS`] (500 ms); 0 (ping on every checkout) to
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
    // applied).
    /// PostgreSQL's `statement_timeout`: a statement running longer is cancelled with
    /// [`Error::StatementTimeout`]. Default `None`: the server's own setting (unbounded unless
    /// the server or role sets one); `Some(0)`: no limit; at most [`MAX_DURATION`], whole
    /// milliseconds (env `DB_STATEMENT_TIMEOUT_MS`). No effect on SQLite, which cannot bound a
    /// statement's running time. One call may run longer with
    /// [`Repo::with_statement_timeout`](crate::Repo::with_statement_timeout).
    pub statement_timeout: Option<Duration>,
    /// How long a statement waits for a lock before giving up with [`Error::LockTimeout`]:
    /// PostgreSQL's `lock_timeout`; on SQLite, `busy_timeout` (how long a writer waits for the
    /// database's write lock; it then fails with [`Error::SerializationFailure`]). Default
    /// `None`: the server's own setting on PostgreSQL (no limit by default), 5 s on SQLite;
    /// `Some(0)`: no limit on PostgreSQL, no wait at all on SQLite; at most [`MAX_DURATION`],
    /// whole milliseconds (env `DB_LOCK_TIMEOUT_MS`).
    pub lock_timeout: Option<Duration>,
    /// PostgreSQL's `idle_in_transaction_session_timeout`: the server closes a connection whose
    /// transaction stays open without a statement this long (its locks are released; the pool
    /// replaces the connection). Default `None`: the server's own setting; `Some(0)`: no limit;
    /// at most [`MAX_DURATION`], whole milliseconds (env `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`).
    /// No effect on SQLite.
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
            pool_recycle: None,
            pre_ping: DEFAULT_PRE_PING,
            pre_ping_bypass: DEFAULT_PRE_PING_BYPASS,
            echo: false,
            hide_parameters: false,
            echo_pool: false,
            overflow_idle_timeout: DEFAULT_OVERFLOW_IDLE_TIMEOUT,
            leak_detection_threshold: None,
            statement_cache: true,
            statement_timeout: None,
            lock_timeout: None,
            idle_in_transaction_timeout: None,
            sqlite_synchronous: SqliteSynchronous::Normal,

            pool_name: None,
        }
    }
}

/// Where a knob's value came from, for the variable an error names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Set in code: errors name the field (`PoolConfig::pool_size`).
    Code,
    /// Read from the environment: errors name the variable (`DB_POOL_SIZE`).
    Env,
}

/// A knob: its field, its environment variable and its allowed range in words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knob {
    field: &'static str,
    pub(crate) env: &'static str,
    code_range: &'static str,
    env_range: &'static str,
}

impl Knob {
    /// A knob set in milliseconds, whose range reads the same in code and in the environment.
    pub(crate) const fn millis_knob(
        field: &'static str,
        env: &'static str,
        range: &'static str,
    ) -> Knob {
        Knob {
            field,
            env,
            code_range: range,
            env_range: range,
        }
    }

    pub(crate) fn error(&self, source: Source, shown: impl std::fmt::Display) -> Error {
        match source {
            Source::Code => Error::config(
                self.field,
                format!("{shown} is not allowed; allowed: {}", self.code_range),
            ),
            Source::Env => Error::config(
                self.env,
                format!("`{shown}` is not allowed; allowed: {}", self.env_range),
            ),
        }
    }
}

pub(crate) const POOL_SIZE: Knob = Knob {
    field: "PoolConfig::pool_size",
    env: "DB_POOL_SIZE",
    code_range: "0 to 10000, with pool_size + max_overflow at most 10000",
    env_range: "a whole number from 0 to 10000, with DB_POOL_SIZE + DB_MAX_OVERFLOW at most 10000",
};
pub(crate) const MAX_OVERFLOW: Knob = Knob {
    field: "PoolConfig::max_overflow",
    env: "DB_MAX_OVERFLOW",
    code_range: "0 to 10000, with pool_size + max_overflow from 1 to 10000",
    env_range: "a whole number from 0 to 10000, with DB_POOL_SIZE + DB_MAX_OVERFLOW from 1 to \
                10000",
};
pub(crate) const POOL_TIMEOUT: Knob = Knob {
    field: "PoolConfig::pool_timeout",
    env: "DB_POOL_TIMEOUT_SECS",
    code_range: "above 0 and at most 1 day",
    env_range: "seconds above 0 and at most 86400 (fractions allowed)",
};
pub(crate) const POOL_RECYCLE: Knob = Knob {
    field: "PoolConfig::pool_recycle",
    env: "DB_POOL_RECYCLE_SECS",
    code_range: "None (never) or above 0 and at most 1 day",
    env_range: "-1 (never) or seconds above 0 and at most 86400 (fractions allowed)",
};
pub(crate) const PRE_PING_BYPASS: Knob = Knob {
    field: "PoolConfig::pre_ping_bypass",
    env: "DB_PRE_PING_BYPASS_MS",
    code_range: "0 to 1 day",
    env_range: "whole milliseconds from 0 to 86400000",
};
pub(crate) const OVERFLOW_IDLE_TIMEOUT: Knob = Knob {
    field: "PoolConfig::overflow_idle_timeout",
    env: "DB_OVERFLOW_IDLE_TIMEOUT_MS",
    code_range: "0 to 1 day",
    env_range: "whole milliseconds from 0 to 86400000",
};
pub(crate) const LEAK_DETECTION: Knob = Knob {
    field: "PoolConfig::leak_detection_threshold",
    env: "DB_LEAK_DETECTION_MS",
    code_range: "None (off) or above 0 and at most 1 day",
    env_range: "whole milliseconds from 0 (off) to 86400000",
};

pub(crate) const STATEMENT_TIMEOUT: Knob = Knob {
    field: "PoolConfig::statement_timeout",
    env: "DB_STATEMENT_TIMEOUT_MS",
    code_range: "None (the server's setting), or 0 (no limit) to 1 day",
    env_range: "whole milliseconds from 0 (no limit) to 86400000",
};
pub(crate) const LOCK_TIMEOUT: Knob = Knob {
    field: "PoolConfig::lock_timeout",
    env: "DB_LOCK_TIMEOUT_MS",
    code_range: "None (the server's setting), or 0 (no limit) to 1 day",
    env_range: "whole milliseconds from 0 (no limit) to 86400000",
};
pub(crate) const IDLE_IN_TRANSACTION_TIMEOUT: Knob = Knob {
    field: "PoolConfig::idle_in_transaction_timeout",
    env: "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    code_range: "None (the server's setting), or 0 (no limit) to 1 day",
    env_range: "whole milliseconds from 0 (no limit) to 86400000",
};

impl PoolConfig {
    /// Sets `pool_size` (default 5; 0 to 10 000, see the field).
    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets `max_overflow` (default 10; `pool_size + max_overflow` from 1 to 10 000).
    pub fn with_max_overflow(mut self, max_overflow: u32) -> Self {
        self.max_overflow = max_overflow;
        self
    }

    /// Sets `pool_timeout` (default 30 s; above 0, at most 1 day).
    pub fn with_pool_timeout(mut self, pool_timeout: Duration) -> Self {
        self.pool_timeout = pool_timeout;
        self
    }

    /// Sets `pool_recycle` (default `None`: never; `Some` above 0, at most 1 day).
    pub fn with_pool_recycle(mut self, pool_recycle: Option<Duration>) -> Self {
        self.pool_recycle = pool_recycle;
        self
    }

    /// Sets `pre_ping` (default `true`).
    pub fn with_pre_ping(mut self, pre_ping: bool) -> Self {
        self.pre_ping = pre_ping;
        self
    }

    /// Sets `pre_ping_bypass` (default 500 ms; 0 to 1 day).
    pub fn with_pre_ping_bypass(mut self, pre_ping_bypass: Duration) -> Self {
        self.pre_ping_bypass = pre_ping_bypass;
        self
    }

    /// Sets `echo` (default `false`).
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Sets `hide_parameters` (default `false`).
    pub fn with_hide_parameters(mut self, hide_parameters: bool) -> Self {
        self.hide_parameters = hide_parameters;
        self
    }

    /// Sets `echo_pool` (default `false`).
    pub fn with_echo_pool(mut self, echo_pool: bool) -> Self {
        self.echo_pool = echo_pool;
        self
    }

    /// Sets `overflow_idle_timeout` (default [`DEFAULT_OVERFLOW_IDLE_TIMEOUT`]; 0 to 1 day).
    pub fn with_overflow_idle_timeout(mut self, overflow_idle_timeout: Duration) -> Self {
        self.overflow_idle_timeout = overflow_idle_timeout;
        self
    }

    /// Sets `leak_detection_threshold` (default `None`: off; `Some` above 0, at most 1 day).
    pub fn with_leak_detection_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.leak_detection_threshold = threshold;
        self
    }

    /// Sets `statement_cache` (default `true`; `false` behind pgbouncer in transaction mode).
    pub fn with_statement_cache(mut self, statement_cache: bool) -> Self {
        self.statement_cache = statement_cache;
        self
    }

    /// Sets `statement_timeout` (default `None`: the server's setting; `Some(0)`: no limit; at
    /// most 1 day, whole milliseconds).
    pub fn with_statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets `lock_timeout` (default `None`: the server's setting, 5 s on SQLite; at most 1 day,
    /// whole milliseconds).
    pub fn with_lock_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Sets `idle_in_transaction_timeout` (default `None`: the server's setting; `Some(0)`: no
    /// limit; at most 1 day, whole milliseconds).
    pub fn with_idle_in_transaction_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// Sets `sqlite_synchronous` (default [`SqliteSynchronous::Normal`]).
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
        let max = u64::from(MAX_CONNECTIONS);
        if u64::from(self.pool_size) > max {
            return Err(POOL_SIZE.error(source, self.pool_size));
        }
        let total = u64::from(self.pool_size) + u64::from(self.max_overflow);
        if total == 0 || total > max {
            return Err(MAX_OVERFLOW.error(source, self.max_overflow));
        }
        let in_range = |d: Duration, zero_ok: bool| d <= MAX_DURATION && (zero_ok || !d.is_zero());
        if !in_range(self.pool_timeout, false) {
            return Err(POOL_TIMEOUT.error(source, shown(self.pool_timeout, source, Unit::Secs)));
        }
        if let Some(recycle) = self.pool_recycle.filter(|d| !in_range(*d, false)) {
            return Err(POOL_RECYCLE.error(source, shown(recycle, source, Unit::Secs)));
        }
        if !in_range(self.pre_ping_bypass, true) {
            return Err(
                PRE_PING_BYPASS.error(source, shown(self.pre_ping_bypass, source, Unit::Millis))
            );
        }
        if !in_range(self.overflow_idle_timeout, true) {
            return Err(OVERFLOW_IDLE_TIMEOUT.error(
                source,
                shown(self.overflow_idle_timeout, source, Unit::Millis),
            ));
        }
        if let Some(threshold) = self
            .leak_detection_threshold
            .filter(|d| !in_range(*d, false))
        {
            return Err(LEAK_DETECTION.error(source, shown(threshold, source, Unit::Millis)));
        }
        for (knob, deadline) in [
            (STATEMENT_TIMEOUT, self.statement_timeout),
            (LOCK_TIMEOUT, self.lock_timeout),
            (
                IDLE_IN_TRANSACTION_TIMEOUT,
                self.idle_in_transaction_timeout,
            ),
        ] {
            if let Some(d) = deadline
                .filter(|d| !in_range(*d, true) || !d.subsec_nanos().is_multiple_of(1_000_000))
            {
                return Err(knob.error(source, shown(d, source, Unit::Millis)));
            }
        }
        Ok(())
    }
}

/// The unit of a knob's environment variable.
#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Millis,
}

/// A duration as its source wrote it: `{:?}` in code, the variable's unit from the environment.
fn shown(d: Duration, source: Source, unit: Unit) -> String {
    match (source, unit) {
        (Source::Code, _) => format!("{d:?}"),
        (Source::Env, Unit::Secs) => d.as_secs_f64().to_string(),
        (Source::Env, Unit::Millis) => d.as_millis().to_string(),
    }
}
