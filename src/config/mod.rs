//! Settings: the database URL and the pool knobs, from code or from the environment.
//!
//! [`Settings::from_env`] loads a `.env` file from the current directory or one of its
//! parents (with [`dotenvy`]; variables already set in the environment win) and reads:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | full URL: `postgres://user:pass@host:5432/db`, `sqlite://path/file.db`, a bare file path, or `sqlite::memory:` | unset: the parts below, else [`DEFAULT_SQLITE_PATH`] |
//! | `DB_HOST` | PostgreSQL host, used when `DATABASE_URL` is unset | `localhost` |
//! | `DB_PORT` | PostgreSQL port | `5432` |
//! | `DB_USER` | PostgreSQL user | `postgres` |
//! | `DB_PASS` | PostgreSQL password (never printed) | none |
//! | `DB_NAME` | PostgreSQL database | the value of `DB_USER` |
//! | `DB_POOL_SIZE` | connections kept open in the pool | `5` ([`DEFAULT_POOL_SIZE`]) |
//! | `DB_MAX_OVERFLOW` | extra connections allowed above `DB_POOL_SIZE` under load | `10` ([`DEFAULT_MAX_OVERFLOW`]) |
//! | `DB_POOL_TIMEOUT_SECS` | seconds a checkout waits for a free connection (fractions allowed) | `30` ([`DEFAULT_POOL_TIMEOUT`]) |
//! | `DB_POOL_RECYCLE_SECS` | replace connections older than this many seconds; `-1` or empty: never | never |
//! | `DB_PRE_PING` | test a connection before handing it out (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`) | `true` |
//! | `DB_PRE_PING_BYPASS_MS` | skip the pre-ping for a connection used within this many milliseconds | `500` ([`DEFAULT_PRE_PING_BYPASS`]) |
//! | `DB_ECHO` | log every statement with its binds and duration through `tracing`, target `userbase::sql` (same boolean forms) | `false` |
//! | `DB_HIDE_PARAMETERS` | with `DB_ECHO`, log statements without their bind values | `false` |
//! | `DB_ECHO_POOL` | log checkouts, check-ins, overflow discards, recycles and invalidations, target `userbase::pool` | `false` |
//!
//! The `DB_HOST` … `DB_NAME` parts are used as soon as any of them is set; with none of them and no
//! `DATABASE_URL`, the embedded SQLite file [`DEFAULT_SQLITE_PATH`] is used. A malformed value is an
//! [`Error::Config`](crate::Error::Config) naming the variable.

mod env;
mod pool;
pub(crate) mod url;

pub use self::env::{DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SQLITE_PATH, DEFAULT_USER};
pub use self::pool::{
    PoolConfig, DEFAULT_MAX_OVERFLOW, DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, DEFAULT_PRE_PING,
    DEFAULT_PRE_PING_BYPASS,
};
pub use self::url::{Backend, DbUrl, Secrets, SECRET_QUERY_PARAMS};

/// Everything needed to open a [`Database`](crate::Database): the URL and the pool knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where the database is.
    pub url: DbUrl,
    /// How the pool behaves.
    pub pool: PoolConfig,
}

impl Settings {
    /// Settings for a URL with the default pool.
    pub fn new(url: DbUrl) -> Self {
        Settings {
            url,
            pool: PoolConfig::default(),
        }
    }
}
